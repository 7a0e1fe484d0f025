//! Snapshot/restore of a warm VM in the builtin engine, on this machine's real KVM: a pool boots a VM and
//! saves it at READY into a snapshot cache (a temporary directory here); the booted VM still serves; a
//! second pool restores its VM from the snapshot instead of booting, and that VM runs a program correctly
//! and says it was restored. One boot and two runs: about 90-140 s on PVM (2026-11-29: boot + save 50 s, first run
//! 18 s; restore + first run 20 s). Needs `/dev/kvm`, `SANDBOX_KERNEL` and `SANDBOX_AGENT` (an agent built from
//! this checkout: the VMM process is the agent binary); it fails without them, and says SKIPPED when this
//! user cannot open `/dev/kvm`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use common::TempDir;
use sandbox::{PoolOptions, Sandbox, SnapshotCache, Status, VmEngine, VmPool};

fn sh(pool: &VmPool, script: &str) -> sandbox::Outcome {
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
    if !common::kvm_usable() {
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
