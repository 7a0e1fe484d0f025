//! Warm VMs (`VmPool`): one boot serves many runs, each in fresh guest namespaces and cgroup. QEMU engine (TCG
//! here); needs `SANDBOX_KERNEL` and `SANDBOX_AGENT` like the other VM tests.

use std::io::Write;
use std::time::Duration;

use sandkasten::{Policy, PoolOptions, PoolShare, Sandbox, Status, Stdio, VmPool};
use testkit::TempDir;

fn sh(pool: &VmPool, script: &str) -> sandkasten::Outcome {
    Sandbox::new("/bin/sh")
        .args(["-c", script])
        .vm_pool(pool)
        .output()
        .expect("run")
}

#[test]
fn one_boot_serves_many_runs() {
    let pool = VmPool::new(PoolOptions::default()).unwrap();
    for i in 0..5 {
        let o = sh(&pool, &format!("echo run {i}; echo err {i} >&2; exit {i}"));
        assert_eq!(o.status, Status::Exited(i), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("run {i}\n"));
        assert_eq!(String::from_utf8_lossy(&o.stderr), format!("err {i}\n"));
        let vm = o.vm.as_ref().expect("vm info");
        assert_eq!(vm.warm, i > 0, "{vm:?}");
    }
    let st = pool.stats();
    assert_eq!(
        (st.boots, st.runs, st.warm_runs, st.discarded),
        (1, 5, 4, 0),
        "{st:?}"
    );
}

#[test]
fn runs_are_isolated_from_each_other() {
    let pool = VmPool::new(PoolOptions::default()).unwrap();
    // The first run leaves a file in its /tmp, a background process and a changed hostname-free state.
    let o = sh(
        &pool,
        "echo secret > /tmp/left; (sleep 1000 &) ; echo started",
    );
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let o = sh(
        &pool,
        "ls /tmp; for p in /proc/[0-9]*; do cat $p/comm; done | sort | tr '\\n' ' '",
    );
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !text.contains("left"),
        "the earlier run's /tmp leaked: {text}"
    );
    assert!(
        !text.contains("sleep"),
        "the earlier run's process survived: {text}"
    );
    assert!(o.vm.as_ref().unwrap().warm);
}

#[test]
fn stdin_belongs_to_its_run() {
    let pool = VmPool::new(PoolOptions::default()).unwrap();
    for word in ["first", "second"] {
        let mut child = Sandbox::new("/bin/sh")
            .args(["-c", "read x; echo got $x"])
            .vm_pool(&pool)
            .stdin(Stdio::Piped)
            .stdout(Stdio::Piped)
            .spawn()
            .unwrap();
        // More than the program reads: the rest must not reach the next run.
        writeln!(child.stdin.as_mut().unwrap(), "{word}\nleftover {word}").unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("got {word}\n"),
            "{o:?}"
        );
    }
    // A run whose caller never closes its stdin still ends with the program.
    let (r, _w) = std::io::pipe().unwrap();
    let o = Sandbox::new("/bin/echo")
        .arg("done")
        .vm_pool(&pool)
        .stdin(Stdio::Fd(r.into()))
        .output()
        .unwrap();
    assert_eq!(o.stdout, b"done\n", "{o:?}");
    assert_eq!(pool.stats().boots, 1);
}

#[test]
fn large_output_arrives_whole() {
    let pool = VmPool::new(PoolOptions::default()).unwrap();
    let o = sh(&pool, "head -c 3000000 /dev/zero | tr '\\0' x; echo");
    assert_eq!(o.status, Status::Exited(0));
    assert_eq!(o.stdout.len(), 3_000_001);
    assert!(o.stdout[..3_000_000].iter().all(|&b| b == b'x'));
    let o = sh(&pool, "echo small");
    assert_eq!(o.stdout, b"small\n");
}

#[test]
fn timeouts_and_kills() {
    let pool = VmPool::new(PoolOptions::default()).unwrap();
    // The guest enforces the run's timeout: a verdict, and the VM serves on.
    let o = Sandbox::new("/bin/sleep")
        .arg("100")
        .vm_pool(&pool)
        .policy(Policy::default().timeout(Duration::from_secs(1)))
        .output()
        .unwrap();
    assert!(matches!(o.status, Status::TimedOut(_)), "{o:?}");
    assert_eq!(sh(&pool, "echo after").stdout, b"after\n");
    assert_eq!(pool.stats().boots, 1);
    // Killing a run ends its VM; the next run boots a fresh one.
    let mut child = Sandbox::new("/bin/sleep")
        .arg("100")
        .vm_pool(&pool)
        .spawn()
        .unwrap();
    child.kill().unwrap();
    let o = child.wait().unwrap();
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(sh(&pool, "echo fresh").stdout, b"fresh\n");
    let st = pool.stats();
    assert_eq!((st.boots, st.discarded), (2, 1), "{st:?}");
}

#[test]
fn binds_come_from_the_pool_shares() {
    let dir = TempDir::new("pool-share");
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::set_permissions(
        dir.path().join("out"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(dir.path().join("in.txt"), "input\n").unwrap();
    let pool = VmPool::new(PoolOptions {
        shares: vec![PoolShare {
            path: dir.path().to_path_buf(),
            writable: true,
        }],
        ..Default::default()
    })
    .unwrap();
    let policy = Policy::default()
        .ro_bind(dir.path().join("in.txt"), "/in.txt")
        .bind(dir.path().join("out"), "/out");
    let o = Sandbox::new("/bin/sh")
        .args([
            "-c",
            "cat /in.txt; echo written > /out/result; echo x > /in.txt",
        ])
        .vm_pool(&pool)
        .policy(policy)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "input\n", "{o:?}");
    assert!(!o.status.success(), "a read-only bind was writable: {o:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/result")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("in.txt")).unwrap(),
        "input\n"
    );
    // A bind from outside the pool's shares is refused with a reason, before any VM is used.
    let o = Sandbox::new("/bin/true")
        .vm_pool(&pool)
        .policy(Policy::default().ro_bind("/var", "/var"))
        .output()
        .unwrap();
    assert!(
        matches!(&o.status, Status::SetupFailed(f) if f.message.contains("not inside")),
        "{o:?}"
    );
}

#[test]
fn a_bounded_pool_shares_its_vm_between_threads() {
    let pool = VmPool::new(PoolOptions {
        max_vms: 1,
        max_idle: 1,
        ..Default::default()
    })
    .unwrap();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..2 {
                    let o = sh(&pool, &format!("echo {t}-{i}"));
                    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{t}-{i}\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = pool.stats();
    assert_eq!((st.boots, st.runs), (1, 6), "{st:?}");
}

#[test]
fn a_later_run_sees_the_hosts_files_as_they_are_then() {
    // Read-only shares are mounted with a page cache for file data (cache=mmap): a warm VM must still show
    // each run the host's files as they are at that run, not as an earlier run saw them.
    let dir = TempDir::new("pool-fresh");
    let file = dir.path().join("data.txt");
    std::fs::write(&file, "first\n").unwrap();
    std::fs::write(dir.path().join("gone.txt"), "here\n").unwrap();
    let pool = VmPool::new(PoolOptions {
        shares: vec![PoolShare {
            path: dir.path().to_path_buf(),
            writable: false,
        }],
        max_vms: 1,
        ..Default::default()
    })
    .unwrap();
    let policy = Policy::default().ro_bind(dir.path(), "/data");
    let look = || {
        let o = Sandbox::new("/bin/sh")
            .args(["-c", "cat /data/data.txt; ls /data"])
            .vm_pool(&pool)
            .policy(policy.clone())
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(look(), "first\ndata.txt\ngone.txt\n");
    // Rewritten in place with the same size (the same mtime second, likely), another file removed, one added.
    std::fs::write(&file, "again\n").unwrap();
    std::fs::remove_file(dir.path().join("gone.txt")).unwrap();
    std::fs::write(dir.path().join("new.txt"), "new\n").unwrap();
    assert_eq!(look(), "again\ndata.txt\nnew.txt\n");
    // Replaced by a new file renamed over it (how package managers update files).
    std::fs::write(dir.path().join("next.tmp"), "replaced\n").unwrap();
    std::fs::rename(dir.path().join("next.tmp"), &file).unwrap();
    assert_eq!(look(), "replaced\ndata.txt\nnew.txt\n");
    assert_eq!(pool.stats().boots, 1, "one warm VM served every run");
}
