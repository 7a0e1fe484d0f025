//! Sessions on the VM backend (QEMU engine): one VM whose agent keeps the session's sandbox up in the guest;
//! commands one after another and at once, each with its own streams, signals and verdict.
#![cfg(feature = "vm")]

use std::io::{Read, Write};
use std::time::Duration;

use sandkasten::{BackendKind, Policy, Session, Status, Stdio, VmEngine};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn session(policy: Policy) -> Session {
    Session::start_vm(policy.timeout(Duration::from_secs(60)), VmEngine::Qemu)
        .expect("a VM session starts")
}

#[test]
fn a_vm_session_keeps_files_runs_commands_at_once_and_stops() {
    let s = session(Policy::default());
    assert!(s.is_running());
    assert!(
        s.enforced().namespaces.iter().any(|n| n == "user"),
        "{:?}",
        s.enforced()
    );
    let o = s
        .command("/bin/sh")
        .args([
            "-c",
            "echo kept > /tmp/note; echo out; echo err >&2; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(3), "{o:?}");
    assert_eq!(o.backend, BackendKind::Vm);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr)),
        ("out\n".into(), "err\n".into())
    );
    let o = s.command("cat").arg("/tmp/note").output().unwrap();
    assert_eq!(text(&o.stdout), "kept\n", "{o:?}");

    // Two at once: the first waits for a file only the second makes, then for its stdin.
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
        .env("X", "y")
        .output()
        .unwrap();
    assert_eq!(text(&second.stderr), "second\n", "{second:?}");
    first.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(text(&o.stdout), "got piped\n");

    // A signal reaches the command (not the VM), and a kill ends only that command.
    let mut sleeper = s
        .command("/bin/sh")
        .args([
            "-c",
            "trap 'echo term; exit 7' TERM; echo up; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    sleeper
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut up)
        .unwrap();
    sleeper.signal(libc::SIGTERM).unwrap();
    let o = sleeper.wait_with_output().unwrap();
    assert_eq!(o.status, Status::Exited(7), "{o:?}");
    assert_eq!(text(&o.stdout), "term\n");
    let mut hung = s.command("sleep").arg("1000").spawn().unwrap();
    hung.kill().unwrap();
    assert_eq!(hung.wait().unwrap().status, Status::Signaled(libc::SIGKILL));
    assert!(s.is_running());

    // A missing program is a setup failure of that command only.
    let o = s.command("/no/such").output().unwrap();
    assert!(matches!(o.status, Status::SetupFailed(_)), "{o:?}");
    let v = s.stop(Duration::from_secs(2)).unwrap();
    assert_eq!(v.status, Status::Exited(0), "{v:?}");
    assert_eq!(v.backend, BackendKind::Vm);
}

/// Reaps a process this test created; its wait status.
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is writable.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(r, pid as i32, "the keeper is our child");
    status
}

/// Kills and reaps a detached session's keeper (and with it its VM) when a test panics before it ended it.
/// `None` once the test reaped it.
struct KeeperGuard(Option<u32>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0
            && std::thread::panicking()
        {
            // SAFETY: signals and reaps this test's own unreaped child; no memory is passed.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

#[test]
fn a_detached_vm_session_is_reached_through_its_socket_and_ends_with_its_program() {
    use sandkasten::{Detach, DetachedState};
    let dir = testkit::TempDir::new("vm-session-detached");
    let out = dir.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let d = Session::create(
        Policy::default(),
        Detach::new(dir.path().join("ctl.sock"), dir.path().join("status"))
            .vm(VmEngine::Qemu)
            .program(["/bin/sh", "-c", "echo main; exec sleep 1000"])
            .wait_start()
            .stdio(Stdio::Null, Stdio::Fd(file.into()), Stdio::Null),
    )
    .expect("a detached VM session");
    let mut guard = KeeperGuard(Some(d.pid));
    assert_eq!(d.state(), DetachedState::Running);
    let s = Session::attach(&d).unwrap();
    // Before the program starts, commands run already (an OCI runtime's exec before start).
    let o = s
        .command("/bin/sh")
        .args(["-c", "echo exec; echo more >&2; exit 5"])
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(5), "{o:?}");
    assert_eq!(
        (text(&o.stdout), text(&o.stderr)),
        ("exec\n".into(), "more\n".into())
    );
    let missing = s.command("/no/such").output().unwrap();
    assert!(
        matches!(missing.status, Status::SetupFailed(_)),
        "{missing:?}"
    );
    s.start_program().unwrap();
    assert!(s.start_program().is_err(), "started once only");
    // A second attach reaches the same session; a signal for the program ends it, and the session with it.
    let again = Session::attach(&d).unwrap();
    let o = again.command("cat").arg("/proc/1/comm").output().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    std::thread::sleep(Duration::from_millis(300));
    again.signal(libc::SIGTERM).unwrap();
    let status = reap(d.pid);
    guard.0 = None;
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 128 + libc::SIGTERM,
        "{status:#x}"
    );
    assert_eq!(
        d.state(),
        DetachedState::Ended(Status::Signaled(libc::SIGTERM))
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "main\n");
    d.remove().unwrap();
    assert!(!dir.path().join("ctl.sock").exists());
}

/// Whether the host process `pid` still runs (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != Some('Z'))
}

/// A pool hands out sessions: booted ahead (`prewarm_sessions`), one VM each, never reused; binds only from
/// the pool's shares (refused before a VM is taken); at `max_vms` an idle VM of runs makes room; the VM ends
/// and frees its place when the session stops.
#[test]
fn a_pool_hands_out_sessions_on_vms_booted_ahead() {
    use sandkasten::{PoolOptions, PoolShare, Sandbox, VmPool};
    let dir = testkit::TempDir::new("pool-session");
    std::fs::write(dir.path().join("in.txt"), "shared\n").unwrap();
    let pool = VmPool::new(PoolOptions {
        shares: vec![PoolShare {
            path: dir.path().to_path_buf(),
            writable: false,
        }],
        max_vms: 2,
        max_idle: 2,
        engine: VmEngine::Qemu,
        ..Default::default()
    })
    .unwrap();
    pool.prewarm_sessions(1).unwrap();
    assert_eq!(pool.idle_sessions(), 1);
    assert_eq!(pool.idle(), 0, "a session's VM is not a VM of runs");
    let spare = pool.pids();
    assert_eq!(spare.len(), 1, "{spare:?}");

    // Outside the pool's shares: refused, and the VM booted ahead still waits.
    let e = Session::start_pooled(Policy::default().ro_bind("/var", "/var"), &pool)
        .expect_err("a bind outside the pool's shares");
    assert!(e.to_string().contains("not inside"), "{e}");
    assert_eq!(pool.idle_sessions(), 1);

    let policy = Policy::default()
        .ro_bind(dir.path().join("in.txt"), "/in.txt")
        .timeout(Duration::from_secs(60));
    let s = Session::start_pooled_with(
        policy.clone(),
        &[("FROM".into(), "pool".into())],
        Some(std::path::Path::new("/tmp")),
        &pool,
    )
    .expect("a pooled session starts");
    assert_eq!(s.id(), spare[0], "the session got the VM booted ahead");
    assert_eq!(pool.idle_sessions(), 0);
    let o = s
        .command("/bin/sh")
        .args(["-c", "cat /in.txt; echo $FROM; pwd; echo kept > note"])
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), "shared\npool\n/tmp\n", "{o:?}");
    assert_eq!(o.backend, BackendKind::Vm);
    let o = s.command("cat").arg("/tmp/note").output().unwrap();
    assert_eq!(text(&o.stdout), "kept\n", "{o:?}");

    // A second session boots its own VM (the limit is 2); an idle VM of runs then holds the last place,
    // and a third session takes it over.
    let second = Session::start_pooled(policy.clone(), &pool).expect("a second session");
    assert_ne!(second.id(), s.id());
    let o = second
        .command("/bin/sh")
        .args(["-c", "cat /tmp/note"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "sessions share a guest: {o:?}");
    let stats = pool.stats();
    assert_eq!(
        (stats.sessions, stats.warm_sessions, stats.boots),
        (2, 1, 2),
        "{stats:?}"
    );

    let first_vm = s.id();
    let verdict = s.stop(Duration::from_secs(1)).unwrap();
    assert_eq!(verdict.status, Status::Exited(0), "{verdict:?}");
    let vm = verdict.vm.as_ref().expect("the VM in the verdict");
    assert!(vm.warm && vm.engine == "qemu", "{vm:?}");
    assert!(!alive(first_vm), "the session's VM outlived it");
    assert!(!pool.pids().contains(&first_vm), "{:?}", pool.pids());
    let o = Sandbox::new("/bin/true").vm_pool(&pool).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(pool.idle(), 1);
    let run_vm = *pool.pids().iter().find(|&&p| p != second.id()).unwrap();
    let third = Session::start_pooled(policy, &pool).expect("a third session at the limit");
    assert_eq!(pool.idle(), 0, "the idle VM of runs made room");
    assert!(!alive(run_vm));
    let o = third.command("/bin/echo").arg("third").output().unwrap();
    assert_eq!(text(&o.stdout), "third\n", "{o:?}");
    third.kill().unwrap();
    let verdict = second.stop(Duration::from_secs(1)).unwrap();
    assert!(
        !verdict.vm.expect("the VM in the verdict").warm,
        "booted when asked"
    );
    assert!(pool.pids().is_empty(), "{:?}", pool.pids());
    assert_eq!(pool.stats().sessions, 3);
}
