//! Isolation properties of the namespace backend, each proven from inside the sandbox.
//! These run as root and, in CI, again as an unprivileged user (see README.md).

mod common;

use std::time::{Duration, Instant};

use common::marker;
use sandkasten::{Backend, BackendKind, Network, Policy, Sandbox, Stage, Status, Stdio};
use testkit::{TempDir, assert_no_processes_with};

fn sh(script: &str) -> Sandbox {
    let mut s = Sandbox::new("/bin/sh");
    s.args(["-c", script]).backend(Backend::Namespace);
    s
}

fn run(script: &str) -> sandkasten::Outcome {
    sh(script).output().expect("valid policy")
}

fn stdout(o: &sandkasten::Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn hello_and_verdict() {
    let o = run("echo hello from $(hostname)");
    assert_eq!(
        o.status,
        Status::Exited(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "hello from sandbox\n");
    assert_eq!(o.backend, BackendKind::Namespace);
    assert!(o.usage.wall > Duration::ZERO);
}

#[test]
fn pid_one_is_our_init_and_host_pids_are_invisible() {
    let host_pid = std::process::id();
    let o = run(&format!(
        "echo $$; cat /proc/1/comm; tr '\\0' ' ' </proc/1/cmdline; echo; \
         test -e /proc/{host_pid} && echo host-visible; ls /proc | grep -c '^[0-9]'"
    ));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2", "the program is pid 2, under our init: {out}");
    assert_eq!(lines[1], "sandbox-init", "{out}");
    assert_eq!(
        lines[2].trim(),
        "sandbox-init",
        "the host's command line must not leak: {out}"
    );
    assert!(!out.contains("host-visible"), "{out}");
    let procs: u32 = lines[3].trim().parse().unwrap();
    assert!(
        procs <= 5,
        "only the sandbox's own processes are visible, saw {procs}: {out}"
    );
}

#[test]
fn hostname_is_set() {
    assert_eq!(stdout(&run("hostname")), "sandbox\n");
    let o = sh("hostname")
        .policy(Policy::default().hostname("judge-7"))
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "judge-7\n");
}

#[test]
fn only_loopback_without_network() {
    let o = run(
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/operstate 2>/dev/null; ping -c1 -W1 127.0.0.1 >/dev/null 2>&1; true",
    );
    let ifaces: Vec<&str> = o
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(ifaces, ["lo"], "only loopback: {ifaces:?}");
    // Loopback is up: a TCP listener on it accepts a connection from inside.
    let o = sh("exec 3<>/dev/tcp/127.0.0.1/1 2>/dev/null; echo $?")
        .output()
        .unwrap();
    let _ = o; // /bin/sh (dash) has no /dev/tcp; the flags check below is the real one.
    let o = run("cat /proc/net/if_inet6 2>/dev/null; grep -c . /proc/net/dev");
    assert!(o.status.success());
}

#[test]
fn host_network_shares_interfaces() {
    let host: usize = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    let o = sh("cat /proc/net/dev")
        .policy(Policy::default().network(Network::Host))
        .output()
        .unwrap();
    assert_eq!(stdout(&o).lines().count(), host);
}

#[test]
fn environment_is_cleared() {
    let o = Sandbox::new("/usr/bin/env").output().unwrap();
    assert_eq!(stdout(&o), format!("PATH={}\n", sandkasten::DEFAULT_PATH));
    let o = Sandbox::new("env").env("GREETING", "hi").output().unwrap();
    let out = stdout(&o);
    assert!(
        out.contains("GREETING=hi\n") && out.lines().count() == 2,
        "{out}"
    );
}

#[test]
fn read_only_bind_rejects_writes_and_host_is_unchanged() {
    let dir = TempDir::new("ro");
    let file = dir.path().join("f");
    std::fs::write(&file, "original").unwrap();
    let o = sh("echo changed > /data/f; echo rc=$?; touch /data/new; cat /data/f")
        .policy(Policy::default().ro_bind(dir.path(), "/data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    assert!(
        stdout(&o).starts_with("rc=2\noriginal") || stdout(&o).contains("original"),
        "{}",
        stdout(&o)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "original");
    assert!(!dir.path().join("new").exists());
}

#[test]
fn read_write_bind_writes_land_on_host() {
    let dir = TempDir::new("rw");
    let o = sh("echo from-inside > /data/out && mkdir /data/sub")
        .policy(Policy::default().bind(dir.path(), "/data"))
        .output()
        .unwrap();
    assert_eq!(
        o.status,
        Status::Exited(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "from-inside\n"
    );
    assert!(dir.path().join("sub").is_dir());
}

#[test]
fn system_view_is_read_only_and_home_is_absent() {
    let o = run(
        "touch /usr/x 2>&1; touch /x 2>&1; touch /etc/x 2>&1; ls /home /root 2>&1; touch /tmp/ok && echo tmp-ok",
    );
    let out = stdout(&o);
    // Refused by the read-only mount (EROFS) or, checked first on some paths, by landlock (EACCES).
    let refused =
        out.matches("Read-only file system").count() + out.matches("Permission denied").count();
    assert_eq!(refused, 3, "{out}");
    assert!(
        out.contains("/home") && out.contains("No such file"),
        "{out}"
    );
    assert!(out.contains("tmp-ok"), "{out}");
}

#[test]
fn tmpfs_is_private_and_sized() {
    let o = sh("df -k /scratch | tail -1; touch /scratch/f && echo ok")
        .policy(Policy::default().tmpfs_sized("/scratch", 1 << 20))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(out.contains(" 1024 "), "size 1 MiB: {out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn exit_codes_and_signals() {
    assert_eq!(run("exit 3").status, Status::Exited(3));
    assert_eq!(run("kill -9 $$").status, Status::Signaled(9));
    assert_eq!(run("kill -TERM $$").status, Status::Signaled(15));
    let o = Sandbox::new("no-such-program-anywhere").output().unwrap();
    match &o.status {
        Status::SetupFailed(f) => {
            assert_eq!(f.stage, Stage::Exec);
            assert_eq!(o.status.exit_code(), 127);
        }
        s => panic!("{s:?}"),
    }
    let o = Sandbox::new("/etc/passwd").output().unwrap();
    assert_eq!(o.status.exit_code(), 126, "{:?}", o.status);
}

#[test]
fn missing_bind_source_names_the_path() {
    let o = sh("true")
        .policy(Policy::default().ro_bind("/nonexistent/sandbox-src", "/x"))
        .output()
        .unwrap();
    match o.status {
        Status::SetupFailed(f) => {
            assert_eq!(f.stage, Stage::Mounts);
            assert!(
                f.message.contains("/nonexistent/sandbox-src"),
                "{}",
                f.message
            );
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn timeout_kills_grandchildren_and_daemons() {
    let m = marker();
    let start = Instant::now();
    let o = sh(&format!(
        "sleep {m} & (setsid sh -c 'sleep {m} &' &); sh -c 'sleep {m}'"
    ))
    .policy(Policy::default().timeout(Duration::from_millis(500)))
    .output()
    .unwrap();
    assert_eq!(
        o.status,
        Status::TimedOut(sandkasten::outcome::TimeLimit::Wall)
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_no_processes_with(&format!("sleep {m}"));
}

#[test]
fn program_exit_ends_the_whole_tree() {
    let m = marker();
    let o = run(&format!("(setsid sleep {m} &); sleep {m} & echo started"));
    assert_eq!(o.status, Status::Exited(0));
    assert_no_processes_with(&format!("sleep {m}"));
}

#[test]
fn drop_kills_the_tree() {
    let m = marker();
    let mut cmd = sh(&format!("sleep {m} & sleep {m}"));
    cmd.stdout(Stdio::Null);
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!testkit::processes_with(&format!("sleep {m}")).is_empty());
    drop(child);
    assert_no_processes_with(&format!("sleep {m}"));
}

#[test]
fn stdin_is_piped_and_signals_are_forwarded() {
    use std::io::{Read, Write};
    let mut cmd = Sandbox::new("cat");
    cmd.stdin(Stdio::Piped).stdout(Stdio::Piped);
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the pipe")
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "through the pipe");
    assert_eq!(child.wait().unwrap().status, Status::Exited(0));

    let mut child = sh("trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done")
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    child.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    child.signal(libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().status, Status::Exited(42));
}

#[test]
fn inherited_descriptors_are_not_visible() {
    let file = std::fs::File::open("/etc/hostname").unwrap();
    // Without CLOEXEC, as a careless host would leave it.
    let fd = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD(40)).unwrap();
    let o = run("ls /proc/self/fd");
    // SAFETY: closing the duplicate made above.
    unsafe { libc::close(fd) };
    let fds: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "only stdio (and ls's own directory fd)"
    );
}

#[test]
fn no_mounts_leak_to_the_host() {
    let before = common::host_mounts();
    let dir = TempDir::new("mounts");
    let o = sh("true")
        .policy(
            Policy::default()
                .bind(dir.path(), "/data")
                .tmpfs("/scratch"),
        )
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(common::host_mounts(), before);
}

#[test]
fn working_directory() {
    let o = sh("pwd").current_dir("/tmp").output().unwrap();
    assert_eq!(stdout(&o), "/tmp\n");
    let o = sh("pwd").current_dir("/nonexistent").output().unwrap();
    assert!(
        matches!(o.status, Status::SetupFailed(ref f) if f.stage == Stage::Cwd),
        "{:?}",
        o.status
    );
}

#[test]
fn the_sandbox_user_is_not_host_root() {
    // uid 0 inside, but the kernel sees an unprivileged host uid: a root-owned host file stays unwritable
    // even through a read-write bind.
    let dir = TempDir::new("owner");
    let o = sh("id -u; cat /proc/self/uid_map")
        .policy(Policy::default().bind(dir.path(), "/data"))
        .output()
        .unwrap();
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_ne!(map[1], 0, "sandbox uid 0 must not be host root: {out}");
    if testkit::is_root() {
        let f = dir.path().join("root-owned");
        std::fs::write(&f, "keep").unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let o = sh("echo gotcha > /data/root-owned")
            .policy(Policy::default().bind(dir.path(), "/data"))
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep");
    }
}

#[test]
fn spawn_from_many_threads() {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..12 {
                    let o = Sandbox::new("/bin/echo")
                        .arg(format!("{t}-{i}"))
                        .output()
                        .unwrap();
                    assert_eq!(o.status, Status::Exited(0), "{t}-{i}: {:?}", o);
                    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{t}-{i}\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn passed_descriptors_arrive_at_their_numbers() {
    use std::io::Read;
    let (mut r3, w3) = std::io::pipe().unwrap();
    let (mut r4, w4) = std::io::pipe().unwrap();
    let o = sh("echo three >&3; echo four >&4; ls /proc/self/fd | tr '\\n' ' '")
        .inherit_fd(w4.into(), 3)
        .inherit_fd(w3.into(), 4)
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let (mut a, mut b) = (String::new(), String::new());
    r4.read_to_string(&mut a).unwrap();
    r3.read_to_string(&mut b).unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("three\n", "four\n"));
    assert_eq!(
        stdout(&o),
        "0 1 2 3 4 5 ",
        "only stdio, the passed ones and ls's own"
    );
    let o = sh("true")
        .inherit_fd(std::fs::File::open("/dev/null").unwrap().into(), 1)
        .output()
        .unwrap();
    assert!(matches!(o.status, Status::SetupFailed(_)), "{:?}", o.status);
}

#[test]
fn extra_devices_are_shown_and_checked() {
    let with = |d: &str| {
        let mut p = Policy::default();
        p.devices = vec![d.into()];
        p
    };
    let o = sh("true")
        .policy(with("/dev/nonexistent-device"))
        .output()
        .unwrap();
    assert!(
        matches!(o.status, Status::SetupFailed(ref f) if f.message.contains("character device")),
        "{:?}",
        o.status
    );
    assert!(
        sh("true").policy(with("/etc/passwd")).output().is_err(),
        "outside /dev: a policy error"
    );
    let o = sh("true").policy(with("/dev/ptmx")).output().unwrap();
    assert!(
        matches!(o.status, Status::SetupFailed(_)),
        "ptmx is ours: {:?}",
        o.status
    );
    let dev = ["/dev/kvm", "/dev/fuse", "/dev/autofs"]
        .into_iter()
        .find(|d| std::path::Path::new(d).exists())
        .expect("one of /dev/kvm, /dev/fuse, /dev/autofs exists on our machines");
    let o = sh(&format!("test -c {dev} && echo yes"))
        .policy(with(dev))
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "yes\n", "{o:?}");
    let o = sh(&format!("test -e {dev} || echo absent"))
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "absent\n");
}

/// The controlling terminal of the program's session (field 7 of /proc/self/stat, `tty_nr`; 0: none), as
/// a script prints it.
const TTY_NR: &str = "cut -d' ' -f7 /proc/self/stat";

/// A fresh pseudo-terminal as stdin (as an OCI runtime's console socket gets) becomes the controlling terminal
/// of the program's session, in a one-shot run and in a session's command: job control and ^C work. A
/// terminal that is already another session's, or no terminal, leaves the program without one.
#[test]
fn a_fresh_terminal_becomes_the_programs_controlling_terminal() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = || Stdio::Fd(pty.slave.try_clone().unwrap());
    let o = sh(TTY_NR).stdin(slave()).output().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_ne!(stdout(&o).trim(), "0", "no controlling terminal: {o:?}");
    // ^C on the terminal reaches the program's process group.
    let child = sh(
        "trap 'echo interrupted; exit 3' INT; printf x > /dev/tty; while :; do sleep 0.05; done",
    )
    .stdin(slave())
    .stdout(Stdio::Piped)
    .spawn()
    .unwrap();
    let mut byte = [0u8; 1];
    nix::unistd::read(&pty.master, &mut byte).unwrap();
    assert_eq!(&byte, b"x");
    nix::unistd::write(&pty.master, &[3]).unwrap(); // ^C
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status, Status::Exited(3), "{o:?}");
    assert_eq!(stdout(&o), "interrupted\n");

    // A session's command gets its terminal the same way.
    let session = sandkasten::Session::start(Policy::default()).unwrap();
    let pty2 = nix::pty::openpty(None, None).expect("openpty");
    let o = session
        .command("/bin/sh")
        .args(["-c", TTY_NR])
        .stdin(Stdio::Fd(pty2.slave.try_clone().unwrap()))
        .output()
        .unwrap();
    assert_ne!(stdout(&o).trim(), "0", "{o:?}");
    session.stop(Duration::from_secs(1)).unwrap();

    // Without a terminal: none.
    assert_eq!(stdout(&run(TTY_NR)).trim(), "0");
    // The terminal of another session (here: one this test made its own) is never taken over.
    let pty3 = nix::pty::openpty(None, None).expect("openpty");
    let slave3 = pty3.slave.try_clone().unwrap();
    let mut holder = std::process::Command::new("/bin/sh");
    holder.args(["-c", "exec sleep 30"]).stdin(slave3);
    // SAFETY: setsid and ioctl are async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut holder, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = holder.spawn().unwrap();
    let o = sh(TTY_NR)
        .stdin(Stdio::Fd(pty3.slave.try_clone().unwrap()))
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(
        stdout(&o).trim(),
        "0",
        "took another session's terminal: {o:?}"
    );
}

/// A builder is reusable and cloneable: its streams are duplicated for each spawn (never used up), a clone
/// changed afterwards leaves the original alone; envs, env_remove, env_clear and the getters.
#[test]
fn a_builder_spawns_again_with_the_same_streams_and_clones() {
    let dir = TempDir::new("builder");
    let log = dir.join("log");
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut b = sh("echo $A-$B");
    b.stdout(file.into())
        .envs([("A", "1"), ("B", "2"), ("C", "3")])
        .env_remove("C");
    assert!(b.status().unwrap().status.success());
    assert!(b.status().unwrap().status.success(), "the second spawn");
    let mut c = b.clone();
    c.env("A", "x").arg("ignored");
    assert!(c.status().unwrap().status.success());
    assert!(b.status().unwrap().status.success());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "1-2\n1-2\nx-2\n1-2\n"
    );
    assert_eq!(b.get_program(), "/bin/sh");
    assert_eq!(b.get_args().collect::<Vec<_>>(), ["-c", "echo $A-$B"]);
    assert_eq!(
        b.get_envs().collect::<Vec<_>>(),
        [("A".as_ref(), "1".as_ref()), ("B".as_ref(), "2".as_ref())]
    );
    assert_eq!(c.get_args().count(), 3);
    b.env_clear();
    assert_eq!(b.get_envs().count(), 0);
    // Piped output of a reused builder: each spawn gets pipes of its own.
    let mut p = sh("echo piped");
    for _ in 0..2 {
        assert_eq!(stdout(&p.output().unwrap()), "piped\n");
    }
}
