//! The async API (cargo feature `tokio`): children driven by tokio's reactor on the namespace backend, a
//! session's commands, a cold VM and a pool's warm VMs (QEMU engine; `SANDBOX_KERNEL` and `SANDBOX_AGENT` as
//! for the other VM tests).

use std::time::Duration;

use sandkasten::tokio::AsyncChild;
use sandkasten::{OutputLimit, Policy, Sandbox, Session, Stage, Status, Stdio};
use testkit::{assert_no_processes_with, processes_with, text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/mod.rs"]
mod common;

/// A runtime on this thread whose blocking pool (where sandboxes start) has at most `blocking` threads.
fn runtime(blocking: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .build()
        .unwrap()
}

#[test]
fn output_and_streams_as_async_read_and_write() {
    runtime(2).block_on(async {
        let o = Sandbox::new("/bin/sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .output_async()
            .await
            .unwrap();
        assert_eq!(o.status, Status::Exited(3), "{o:?}");
        assert_eq!(
            (text(&o.stdout), text(&o.stderr)),
            ("out\n".into(), "err\n".into())
        );

        // stdin and stdout as AsyncWrite and AsyncRead: a line in, its upper case out.
        let mut child = Sandbox::new("/usr/bin/tr")
            .args(["a-z", "A-Z"])
            .stdin(Stdio::Piped)
            .stdout(Stdio::Piped)
            .spawn_async()
            .await
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello async\n").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, "HELLO ASYNC\n");
        assert_eq!(child.wait().await.unwrap().status, Status::Exited(0));
    });
}

/// Sixteen sandboxes wait at once on one thread, with a blocking pool of one thread: no thread per child. A
/// wait that took a thread (the runtime's or the blocking pool's) would hold it for the first child, which
/// never ends on its own, and the others' waits could not finish.
#[test]
fn many_children_without_a_thread_each() {
    let marker = common::marker();
    runtime(1).block_on(async {
        let mut waits = tokio::task::JoinSet::new();
        let mut forever = Sandbox::new("/bin/sleep")
            .arg(format!("{marker}.5"))
            .spawn_async()
            .await
            .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        waits.spawn(async move {
            tokio::select! {
                o = forever.wait() => panic!("ended on its own: {o:?}"),
                _ = stop_rx => {}
            }
            forever.kill().unwrap();
            forever.wait().await.unwrap()
        });
        // Fifteen that end when their stdin closes.
        let mut inputs = Vec::new();
        for i in 0..15 {
            let mut child = Sandbox::new("/bin/sh")
                .args(["-c", &format!("read x; exit {i} # {marker}")])
                .stdin(Stdio::Piped)
                .spawn_async()
                .await
                .unwrap();
            inputs.push(child.stdin.take().unwrap());
            waits.spawn(async move { child.wait().await.unwrap() });
        }
        tokio::task::yield_now().await;
        // All sixteen are alive (`sleep 700123.5` would run for days).
        assert_eq!(processes_with(&marker).len(), 16);
        drop(inputs);
        let mut codes = Vec::new();
        while codes.len() < 15 {
            let o = tokio::time::timeout(Duration::from_secs(120), waits.join_next())
                .await
                .expect("the waits are stuck behind the one that does not end")
                .unwrap()
                .unwrap();
            codes.push(o.status.exit_code());
        }
        codes.sort();
        assert_eq!(codes, (0..15).collect::<Vec<_>>());
        stop_tx.send(()).unwrap();
        let o = waits.join_next().await.unwrap().unwrap();
        assert_eq!(o.status, Status::Signaled(libc::SIGKILL), "{o:?}");
    });
    assert_no_processes_with(&marker);
}

/// Dropping the future of a run, or the child, kills the whole tree.
#[test]
fn dropping_the_future_or_the_child_kills_the_tree() {
    let marker = common::marker();
    runtime(2).block_on(async {
        let script = format!("sleep {marker}.1 & sleep {marker}.2; wait");
        let mut cmd = Sandbox::new("/bin/sh");
        cmd.args(["-c", &script]);
        let run = cmd.output_async();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), run)
                .await
                .is_err()
        );
        assert_no_processes_with(&marker);

        let child = cmd.spawn_async().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!processes_with(&marker).is_empty());
        drop(child);
        assert_no_processes_with(&marker);
    });
}

/// The policy's timeout, an output limit that kills, and a setup failure, through the async paths.
#[test]
fn limits_and_failures_in_the_verdict() {
    runtime(2).block_on(async {
        let o = Sandbox::new("/bin/sleep")
            .arg("30")
            .policy(Policy::default().timeout(Duration::from_millis(300)))
            .status_async()
            .await
            .unwrap();
        assert!(matches!(o.status, Status::TimedOut(_)), "{o:?}");

        let o = Sandbox::new("/bin/cat")
            .arg("/dev/zero")
            .output_limits(OutputLimit::kill_after(64 << 10), OutputLimit::default())
            .output_async()
            .await
            .unwrap();
        assert_eq!(o.stdout.len(), 64 << 10);
        assert!(
            o.capture.killed_for_output && o.capture.stdout_truncated,
            "{o:?}"
        );
        assert_eq!(o.status, Status::Signaled(libc::SIGKILL), "{:?}", o.status);

        let mut child = Sandbox::new("no-such-program").spawn_async().await.unwrap();
        let o = child.wait().await.unwrap();
        assert!(
            matches!(&o.status, Status::SetupFailed(f) if f.stage == Stage::Exec),
            "{o:?}"
        );
    });
}

/// A session's commands, and a child started by the blocking `spawn` taken over by the reactor.
#[test]
fn session_commands_and_adopted_children() {
    let session = Session::start(Policy::default()).unwrap();
    runtime(2).block_on(async {
        let o = session
            .command("/bin/sh")
            .args(["-c", "echo one > /tmp/f; (sleep 100 &); cat /tmp/f"])
            .output_async()
            .await
            .unwrap();
        assert_eq!(
            (o.status.clone(), text(&o.stdout)),
            (Status::Exited(0), "one\n".into())
        );
        let child = Sandbox::new("/bin/echo")
            .arg("adopted")
            .stdout(Stdio::Piped)
            .spawn()
            .unwrap();
        let o = AsyncChild::new(child)
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        assert_eq!(text(&o.stdout), "adopted\n");
    });
    session.stop(Duration::from_secs(1)).unwrap();
}

/// A cold VM, and a pool's warm VMs shared by concurrent runs (QEMU engine).
#[cfg(feature = "vm")]
#[test]
fn vm_and_pool_runs() {
    use sandkasten::{Backend, PoolOptions, VmEngine, VmPool};
    let pool = VmPool::new(PoolOptions {
        engine: VmEngine::Qemu,
        max_vms: 2,
        max_idle: 2,
        ..Default::default()
    })
    .unwrap();
    runtime(4).block_on(async {
        let o = Sandbox::new("/bin/sh")
            .args(["-c", "echo cold; exit 5"])
            .backend(Backend::Vm)
            .vm_engine(VmEngine::Qemu)
            .output_async()
            .await
            .unwrap();
        assert_eq!(
            (o.status.clone(), text(&o.stdout)),
            (Status::Exited(5), "cold\n".into()),
            "{o:?}"
        );

        // Each run a task of its own (the futures are Send), all at once on the pool's two VMs.
        let mut runs = tokio::task::JoinSet::new();
        for i in 0..6 {
            let mut cmd = Sandbox::new("/bin/sh");
            cmd.args(["-c", &format!("echo run {i}; exit {i}")])
                .vm_pool(&pool);
            runs.spawn(async move { (i, cmd.output_async().await.unwrap()) });
        }
        while let Some(r) = runs.join_next().await {
            let (i, o) = r.unwrap();
            assert_eq!(o.status, Status::Exited(i), "{o:?}");
            assert_eq!(text(&o.stdout), format!("run {i}\n"));
            assert!(o.vm.is_some(), "{o:?}");
        }
    });
    let st = pool.stats();
    assert!(st.boots <= 2 && st.runs == 6, "{st:?}");
}
