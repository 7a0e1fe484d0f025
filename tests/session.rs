//! Sessions on the namespace backend: commands run one after another and at once in one live sandbox, each
//! with its own streams and verdict and exactly the session's layers; stop, kill and drop end everything.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use sandkasten::{Policy, Session, Stage, Status, Stdio};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn session() -> Session {
    Session::start(Policy::default().timeout(Duration::from_secs(30))).expect("session starts")
}

#[test]
fn files_written_by_one_command_are_seen_by_the_next() {
    let s = session();
    let o = s
        .command("/bin/sh")
        .args(["-c", "echo kept > /tmp/note; echo done; exit 4"])
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(4), "{o:?}");
    assert_eq!(text(&o.stdout), "done\n");
    let o = s.command("cat").arg("/tmp/note").output().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(text(&o.stdout), "kept\n");
    let v = s.stop(Duration::from_secs(1)).unwrap();
    assert_eq!(v.status, Status::Exited(0), "{v:?}");
}

#[test]
fn commands_run_at_once_with_their_own_streams() {
    let s = session();
    // The first waits for a file only the second makes: they must run at the same time.
    let mut first = s
        .command("/bin/sh")
        .args([
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; read line; echo got $line",
        ])
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let second = s
        .command("/bin/sh")
        .args(["-c", "touch /tmp/go; echo second >&2"])
        .output()
        .unwrap();
    assert_eq!(text(&second.stderr), "second\n", "{second:?}");
    first.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(text(&o.stdout), "got piped\n");
}

#[test]
fn a_command_has_exactly_the_sessions_layers() {
    let s = session();
    let probe = "grep -E '^(Uid|CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status; \
                 for n in user mnt pid net ipc uts cgroup; do readlink /proc/self/ns/$n; done; \
                 cat /proc/self/cgroup; hostname; (echo x > /proc/self/comm) 2>/dev/null && echo WROTE; true";
    let a = s.command("/bin/sh").args(["-c", probe]).output().unwrap();
    let b = s.command("/bin/sh").args(["-c", probe]).output().unwrap();
    assert_eq!(a.status, Status::Exited(0), "{a:?}");
    let (a, b) = (text(&a.stdout), text(&b.stdout));
    assert_eq!(
        a, b,
        "two commands of one session share every namespace and layer"
    );
    for want in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "\nsandbox\n",
    ] {
        assert!(a.contains(want), "{want:?} in {a}");
    }
    assert!(!a.contains("WROTE"), "landlock holds in a command: {a}");
    // Not the host's namespaces.
    for n in ["user", "mnt", "pid", "net"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert!(!a.contains(&*host.to_string_lossy()), "{n}: {a}");
    }
    // Every command is a child of the sandbox's init, not of a host process.
    let o = s
        .command("/bin/sh")
        .args(["-c", "echo $PPID; cat /proc/1/comm"])
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), "1\nsandbox-init\n");
}

#[test]
fn nothing_of_the_host_reaches_a_command() {
    // A descriptor this process leaves inheritable, and one that is close-on-exec: neither gets in.
    let f = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY: dup of a descriptor we own; the copy is closed below.
    let leaky = unsafe { libc::dup(f.as_raw_fd()) };
    assert!(leaky > 2);
    let s = session();
    let o = s
        .command("/bin/sh")
        .args(["-c", "ls /proc/self/fd; readlink /proc/self/cwd; env"])
        .output()
        .unwrap();
    // SAFETY: closing our own duplicate.
    unsafe { libc::close(leaky) };
    let out = text(&o.stdout);
    let mut lines = out.lines();
    let fds: Vec<&str> = lines.by_ref().take_while(|l| *l != "/").collect();
    // ls's own directory descriptor is 3.
    assert_eq!(fds, ["0", "1", "2", "3"], "{out}");
    let env: Vec<&str> = lines
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .collect();
    assert_eq!(env, [format!("PATH={}", sandkasten::DEFAULT_PATH)], "{out}");
}

#[test]
fn a_command_that_cannot_start_is_a_clear_error_and_the_session_lives_on() {
    let s = session();
    // spawn() reports it the one way every setup failure is reported: a child that has already ended,
    // whose verdict says why.
    let mut child = s.command("/no/such/program").spawn().unwrap();
    let o = child.try_wait().unwrap().expect("ended at once");
    let Status::SetupFailed(f) = &o.status else {
        panic!("{o:?}")
    };
    assert_eq!(f.stage, Stage::Exec, "{f:?}");
    assert!(f.message.contains("/no/such/program"), "{f:?}");
    let o = s
        .command("true")
        .current_dir("/no/such/dir")
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        matches!(o.status, Status::SetupFailed(ref f) if f.stage == Stage::Cwd),
        "{o:?}"
    );
    // output() turns it into a verdict, like a one-shot run.
    let o = s.command("no-such-program").output().unwrap();
    assert_eq!(o.status.exit_code(), 127, "{o:?}");
    // A changed policy is refused.
    let e = s
        .command("true")
        .policy(Policy::default().hostname("other"))
        .spawn()
        .unwrap_err();
    assert!(e.to_string().contains("session's policy"), "{e}");
    let o = s.command("true").output().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
}

#[test]
fn stop_terminates_then_kills_everything() {
    let s = session();
    let mut polite = s.command("sleep").arg("1000").spawn().unwrap();
    let mut stubborn = s
        .command("/bin/sh")
        .args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    std::io::Read::read_exact(stubborn.stdout.as_mut().unwrap(), &mut line).unwrap();
    // A background process started by a command outlives that command, inside the session.
    s.command("/bin/sh")
        .args(["-c", "sleep 1000 >/dev/null 2>&1 &"])
        .status()
        .unwrap();
    let v = s.stop(Duration::from_millis(500)).unwrap();
    assert_eq!(v.status, Status::Exited(0), "{v:?}");
    assert_eq!(
        polite.wait().unwrap().status,
        Status::Signaled(libc::SIGTERM)
    );
    assert_eq!(
        stubborn.wait().unwrap().status,
        Status::Signaled(libc::SIGKILL)
    );
}

#[test]
fn dropping_the_session_ends_its_commands() {
    let s = session();
    let mut c = s.command("sleep").arg("1000").spawn().unwrap();
    let init = s.id();
    assert!(s.is_running());
    drop(s);
    let o = c.wait().unwrap();
    assert_eq!(o.status, Status::Signaled(libc::SIGKILL), "{o:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{init}")).exists() || {
            // Reaped by now: a zombie would still show its status.
            let st = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
            !st.contains("sandbox-init")
        }
    );
}

#[test]
fn a_command_gets_its_own_timeout_and_signals() {
    let s = Session::start(Policy::default().timeout(Duration::from_millis(600))).unwrap();
    let o = s.command("sleep").arg("100").output().unwrap();
    assert_eq!(
        o.status,
        Status::TimedOut(sandkasten::outcome::TimeLimit::Wall),
        "{o:?}"
    );
    let mut c = s.command("sleep").arg("100").spawn().unwrap();
    c.signal(libc::SIGINT).unwrap();
    assert_eq!(c.wait().unwrap().status, Status::Signaled(libc::SIGINT));
    // The session outlived both.
    assert!(s.is_running());
    assert_eq!(
        s.command("true").output().unwrap().status,
        Status::Exited(0)
    );
}

#[test]
fn output_ends_with_the_command_not_with_what_it_left_running() {
    let s = session();
    // The background sleep keeps the command's stdout open; the command itself ends at once.
    let o = s
        .command("/bin/sh")
        .args(["-c", "sleep 1000 & echo started"])
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(text(&o.stdout), "started\n");
    // It still runs in the session.
    let o = s
        .command("/bin/sh")
        .args(["-c", "pgrep -x sleep >/dev/null && echo alive"])
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), "alive\n", "{o:?}");
}

#[test]
fn denied_system_calls_are_counted_per_command() {
    let mut p = Policy::default();
    p.audit_denials = true;
    let s = Session::start(p).unwrap();
    let o = s
        .command("/bin/sh")
        .args(["-c", "unshare -U true; echo rc=$?"])
        .output()
        .unwrap();
    assert!(text(&o.stdout).contains("rc=1"), "{o:?}");
    assert!(
        o.denied_syscalls.iter().any(|d| d.syscall == "unshare"),
        "{:?}",
        o.denied_syscalls
    );
    let clean = s.command("true").output().unwrap();
    assert!(clean.denied_syscalls.is_empty(), "{clean:?}");
    let v = s.stop(Duration::from_secs(1)).unwrap();
    assert!(
        v.denied_syscalls.iter().any(|d| d.syscall == "unshare"),
        "the session's verdict counts its commands' denials: {v:?}"
    );
}

/// Reaps a detached session's init (this test process created it) and returns its wait status.
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is writable.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(r, pid as i32, "the init is our child");
    status
}

#[test]
fn a_detached_session_is_reached_again_through_its_socket() {
    use sandkasten::{Detach, DetachedState};
    let dir = testkit::TempDir::new("session-detached");
    let d = Session::create(
        Policy::default(),
        Detach::new(dir.path().join("ctl.sock"), dir.path().join("status")),
    )
    .unwrap();
    assert_eq!(d.state(), DetachedState::Running);
    // A second session on the same socket is refused; the first is untouched.
    let e = Session::create(
        Policy::default(),
        Detach::new(dir.path().join("ctl.sock"), dir.path().join("status2")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("ctl.sock"), "{e}");
    // What it holds survives between attachments, as JSON in between.
    let json = serde_json::to_string(&d).unwrap();
    {
        let s = Session::attach(&serde_json::from_str(&json).unwrap()).unwrap();
        let o = s
            .command("/bin/sh")
            .args(["-c", "echo first > /tmp/f"])
            .output()
            .unwrap();
        assert_eq!(o.status, Status::Exited(0), "{o:?}");
    }
    let s = Session::attach(&d).unwrap();
    assert_eq!(s.id(), d.pid);
    let o = s.command("cat").arg("/tmp/f").output().unwrap();
    assert_eq!(text(&o.stdout), "first\n", "{o:?}");
    let v = s.stop(Duration::from_secs(1)).unwrap();
    assert_eq!(v.status, Status::Exited(0), "{v:?}");
    assert_eq!(reap(d.pid), 0);
    assert_eq!(d.state(), DetachedState::Ended(Status::Exited(0)));
    let e = Session::attach(&d).unwrap_err();
    assert!(e.to_string().contains("has ended"), "{e}");
    d.remove().unwrap();
    assert!(!dir.path().join("ctl.sock").exists());
    assert!(!dir.path().join("status").exists());
}

#[test]
fn a_detached_sessions_program_waits_for_start_and_ends_the_session() {
    use sandkasten::{Detach, DetachedState};
    let dir = testkit::TempDir::new("session-program");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let d = Session::create(
        Policy::default(),
        Detach::new(dir.path().join("ctl.sock"), dir.path().join("status"))
            .program([
                "/bin/sh",
                "-c",
                "echo started > /tmp/x; echo to the log; exec sleep 1000",
            ])
            .stdio(Stdio::Null, Stdio::Fd(log.into()), Stdio::Null)
            .wait_start(),
    )
    .unwrap();
    let s = Session::attach(&d).unwrap();
    // Not started yet.
    let o = s
        .command("/bin/sh")
        .args(["-c", "cat /tmp/x || echo none"])
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), "none\n", "{o:?}");
    assert!(s.start_program().unwrap() > 1);
    let e = s.start_program().unwrap_err();
    assert!(e.to_string().contains("started already"), "{e}");
    let o = s
        .command("/bin/sh")
        .args([
            "-c",
            "while [ ! -s /tmp/x ]; do sleep 0.05; done; cat /tmp/x",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), "started\n", "{o:?}");
    // The program's end is the session's, and its exit code the init's (for whoever reaps it).
    s.signal(libc::SIGTERM).unwrap();
    let status = reap(d.pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 128 + libc::SIGTERM,
        "{status}"
    );
    assert_eq!(
        d.state(),
        DetachedState::Ended(Status::Signaled(libc::SIGTERM))
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log")).unwrap(),
        "to the log\n"
    );
    d.remove().unwrap();
}
