//! Snapshot/restore of cold runs on QEMU (TCG here: seconds), and in the builtin engine (a warm VM of a pool,
//! and cold runs), on this machine's real KVM: a pool boots a VM and
//! saves it at READY into a snapshot cache (a temporary directory here); the booted VM still serves; a
//! second pool restores its VM from the snapshot instead of booting, and that VM runs a program correctly
//! and says it was restored. One boot and two runs: about 90-140 s on PVM (2026-11-29: boot + save 50 s, first run
//! 18 s; restore + first run 20 s). Needs `/dev/kvm`, `SANDBOX_KERNEL` and `SANDBOX_AGENT` (an agent built from
//! this checkout: the VMM process is the agent binary); it fails without them, and says SKIPPED when this
//! user cannot open `/dev/kvm`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use sandkasten::{PoolOptions, Sandbox, SnapshotCache, Status, VmEngine, VmPool};
use testkit::TempDir;

fn sh(pool: &VmPool, script: &str) -> sandkasten::Outcome {
    Sandbox::new("/bin/sh")
        .args(["-c", script])
        .vm_pool(pool)
        .output()
        .expect("run")
}

fn options(cache: &std::path::Path) -> PoolOptions {
    PoolOptions {
        engine: VmEngine::Builtin,
        max_vms: 1,
        max_idle: 1,
        snapshots: SnapshotCache::Dir(cache.to_path_buf()),
        ..Default::default()
    }
}

fn snapshots(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_restored_pool_vm_runs_without_booting() {
    if !testkit::kvm_usable()
        || !testkit::builtin_battery("a pool of builtin-engine VMs restored from snapshots")
    {
        return;
    }
    let cache = TempDir::new("pool-snapshot");
    let dir = cache.path().join("snapshots");

    let booted = Instant::now();
    let pool = VmPool::new(options(&dir)).unwrap();
    pool.prewarm(1).unwrap();
    let boot = booted.elapsed();
    let files = snapshots(&dir);
    assert_eq!(files.len(), 1, "one snapshot after the boot: {files:?}");
    let meta = std::fs::metadata(&files[0]).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let ran = Instant::now();
    let o = sh(&pool, "echo booted; exit 4");
    let booted_run = ran.elapsed();
    assert_eq!(o.status, Status::Exited(4), "{o:?}");
    assert_eq!(o.stdout, b"booted\n");
    assert!(!o.vm.as_ref().unwrap().restored);
    drop(pool);

    let restored = Instant::now();
    let pool = VmPool::new(options(&dir)).unwrap();
    let o = sh(&pool, "echo hi; exit 3");
    let first_run = restored.elapsed();
    assert_eq!(o.status, Status::Exited(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{o:?}");
    let vm = o.vm.as_ref().expect("vm info");
    assert!(vm.restored, "the second pool's VM was not restored: {vm:?}");
    assert_eq!(vm.engine, "builtin");
    assert_eq!(
        pool.stats().boots,
        1,
        "one VM start (a restore), no boot fallback"
    );
    drop(pool);
    eprintln!(
        "cold: boot + save {:.1} s, then first run {:.1} s; restored: restore + first run {:.1} s; \
         snapshot {} bytes apparent, {} KiB on disk",
        boot.as_secs_f64(),
        booted_run.as_secs_f64(),
        first_run.as_secs_f64(),
        meta.len(),
        std::os::unix::fs::MetadataExt::blocks(&meta) / 2
    );
}

fn cold(
    engine: VmEngine,
    cache: &std::path::Path,
    script: &str,
    stdin: Option<&str>,
) -> (sandkasten::Outcome, f64) {
    let start = Instant::now();
    let mut s = Sandbox::new("/bin/sh");
    s.args(["-c", script])
        .backend(sandkasten::Backend::Vm)
        .vm_engine(engine)
        .vm_snapshots(SnapshotCache::Dir(cache.to_path_buf()));
    let o = match stdin {
        None => s.output().expect("run"),
        Some(text) => {
            s.stdin(sandkasten::Stdio::Piped)
                .stdout(sandkasten::Stdio::Piped);
            let mut child = s.spawn().expect("spawn");
            let mut w = child.stdin.take().unwrap();
            std::io::Write::write_all(&mut w, text.as_bytes()).unwrap();
            drop(w);
            child.wait_with_output().expect("wait")
        }
    };
    (o, start.elapsed().as_secs_f64())
}

/// Cold runs (no pool) on our VMM: the first boots and saves the guest before it reads its specification,
/// the next ones are restored from that snapshot (with and without stdin: different guests, so one more boot).
#[test]
fn a_cold_run_is_restored_from_the_snapshot_of_its_guest() {
    if !testkit::kvm_usable()
        || !testkit::builtin_battery("a pool of builtin-engine VMs restored from snapshots")
    {
        return;
    }
    cold_runs_are_restored(VmEngine::Builtin);
}

/// The same on QEMU (TCG here: a few seconds in all), whose snapshots are its own migration stream saved
/// and loaded over its monitor (src/vm/snapshot_cache/qmp.rs).
#[test]
fn a_cold_qemu_run_is_restored_from_the_snapshot_of_its_guest() {
    cold_runs_are_restored(VmEngine::Qemu);
    // A snapshot QEMU cannot load is deleted and the run boots; the next run boots and saves a good one again,
    // which the one after restores.
    let cache = TempDir::new("cold-snapshot-bad");
    let dir = cache.path().join("snapshots");
    let (o, _) = cold(VmEngine::Qemu, &dir, "echo first", None);
    assert_eq!(o.stdout, b"first\n", "{o:?}");
    let files = snapshots(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let len = std::fs::metadata(&files[0]).unwrap().len();
    std::fs::write(&files[0], vec![0x5a; len as usize]).unwrap();
    let (o, _) = cold(VmEngine::Qemu, &dir, "echo second", None);
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(o.stdout, b"second\n", "{o:?}");
    assert!(!o.vm.as_ref().unwrap().restored, "{o:?}");
    assert!(snapshots(&dir).is_empty(), "{:?}", snapshots(&dir));
    for (said, restored) in [("third", false), ("fourth", true)] {
        let (o, _) = cold(VmEngine::Qemu, &dir, &format!("echo {said}"), None);
        assert_eq!(o.stdout, format!("{said}\n").as_bytes(), "{o:?}");
        assert_eq!(o.vm.as_ref().unwrap().restored, restored, "{o:?}");
    }
}

fn cold_runs_are_restored(engine: VmEngine) {
    let cache = TempDir::new("cold-snapshot");
    let dir = cache.path().join("snapshots");
    let (o, boot) = cold(engine, &dir, "echo booted; exit 5", None);
    assert_eq!(o.status, Status::Exited(5), "{o:?}");
    assert_eq!(o.stdout, b"booted\n");
    assert!(!o.vm.as_ref().unwrap().restored);
    assert_eq!(snapshots(&dir).len(), 1, "{:?}", snapshots(&dir));

    let (o, restore) = cold(engine, &dir, "echo restored; exit 6", None);
    assert_eq!(o.status, Status::Exited(6), "{o:?}");
    assert_eq!(o.stdout, b"restored\n");
    let vm = o.vm.as_ref().unwrap();
    assert!(vm.restored, "not restored: {vm:?}");
    // Twice from the same snapshot: each restore is a copy, the file is unchanged by the first. Restored
    // guests must not share their random numbers (the kernel's generator state is in the snapshot): the host
    // gives each restored agent fresh entropy and has it reseed the generator.
    let random = "echo again; od -An -tx1 -N32 /dev/urandom | tr -d ' \n'";
    let (o, again) = cold(engine, &dir, random, None);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (said, first) = out.split_once('\n').unwrap_or_else(|| panic!("{o:?}"));
    assert_eq!(said, "again", "{o:?}");
    assert!(o.vm.as_ref().unwrap().restored);
    let (o, _) = cold(engine, &dir, random, None);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (_, second) = out.split_once('\n').unwrap_or_else(|| panic!("{o:?}"));
    assert_eq!(
        (first.len(), second.len()),
        (64, 64),
        "{first:?} {second:?}"
    );
    assert_ne!(
        first, second,
        "two guests restored from one snapshot drew the same random bytes"
    );

    // A run with stdin has one more port: another guest, booted and saved, then restored.
    let (o, _) = cold(engine, &dir, "tr a-z A-Z", Some("piped\n"));
    assert_eq!(o.stdout, b"PIPED\n", "{o:?}");
    assert!(!o.vm.as_ref().unwrap().restored);
    let (o, stdin_restore) = cold(engine, &dir, "tr a-z A-Z", Some("again\n"));
    assert_eq!(o.stdout, b"AGAIN\n", "{o:?}");
    assert!(o.vm.as_ref().unwrap().restored);
    assert_eq!(snapshots(&dir).len(), 2, "{:?}", snapshots(&dir));
    common::assert_no_descendants();
    eprintln!(
        "cold runs: boot + save + run {boot:.1} s; restore + run {restore:.1} s, {again:.1} s; \
         with stdin {stdin_restore:.1} s"
    );
}

/// Sessions from a builtin-engine pool: the first session's VM boots and saves the guest at READY; a second
/// pool's session VM is restored from that snapshot (the same guest as the pool's run VMs), reseeded, and runs
/// its session's commands. One boot and one restore (minutes on PVM: `--full` only).
#[test]
fn a_pools_session_vm_is_restored_from_the_snapshot() {
    if !testkit::kvm_usable()
        || !testkit::builtin_battery("a pool's builtin-engine session VMs restored from snapshots")
    {
        return;
    }
    let cache = TempDir::new("pool-session-snapshot");
    let dir = cache.path().join("snapshots");
    let session = |pool: &VmPool| {
        let s = sandkasten::Session::start_pooled(sandkasten::Policy::default(), pool)
            .expect("a pooled session");
        let o = s
            .command("/bin/sh")
            .args([
                "-c",
                "echo kept > /tmp/f; cat /tmp/f; head -c 16 /dev/urandom | od -An -tx1",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status, Status::Exited(0), "{o:?}");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(text.starts_with("kept\n"), "{text}");
        let verdict = s.stop(std::time::Duration::from_secs(1)).unwrap();
        (text, verdict)
    };
    let booted = Instant::now();
    let pool = VmPool::new(options(&dir)).unwrap();
    pool.prewarm_sessions(1).unwrap();
    let boot = booted.elapsed();
    assert_eq!(snapshots(&dir).len(), 1, "one snapshot after the boot");
    let (first, verdict) = session(&pool);
    let vm = verdict.vm.expect("vm info");
    assert!(!vm.restored && vm.warm, "{vm:?}");
    assert_eq!(vm.engine, "builtin");
    drop(pool);

    let restored = Instant::now();
    let pool = VmPool::new(options(&dir)).unwrap();
    let (second, verdict) = session(&pool);
    let took = restored.elapsed();
    let vm = verdict.vm.expect("vm info");
    assert!(
        vm.restored && !vm.warm,
        "the second pool's session VM was not restored: {vm:?}"
    );
    assert_eq!(pool.stats().boots, 1);
    assert_ne!(
        first, second,
        "a restored guest drew the snapshot's random numbers"
    );
    eprintln!(
        "a pool's session VM: boot + save {:.1} s; restore + session + first command {:.1} s",
        boot.as_secs_f64(),
        took.as_secs_f64()
    );
}
