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
