//! Leaks: runs leave nothing behind on the host — no processes, mounts, cgroups, descriptors or temp
//! directories — after 1,000 sequential runs, 1,000 runs from 8 threads, and supervisors killed with SIGKILL
//! at random points (setup, running, teardown).
//!
//! The kill test runs the `sandbox` CLI: `SANDBOX_BIN`, else `sandbox` in the cargo profile directory above
//! this test binary (`target/debug/sandbox`, built by `cargo test --workspace` or
//! `cargo build -p sandbox-examples`). `SANDBOX_TEST_SEED` replays a run's random delays.
//! `SANDBOX_TEST_BACKEND=namespace|vm|builtin|auto` picks the backend (namespace by default). On the VM backend
//! (a QEMU run takes about 1.2 s here) the counts are 20 sequential runs, 10 concurrent ones and 10 killed
//! supervisors, with kills spread over 0-2 s (boot, run, teardown); the same host state is compared, and the
//! VM's own temp files (the initramfs cache `$TMPDIR/sandbox-vm-<uid>/`) must not grow either. With
//! `builtin` every run is a cold boot of our own VMM (about a minute on this machine's software KVM): 3
//! sequential runs, 2 concurrent ones and 4 killed supervisors with kills spread over 0-60 s.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandkasten::{Backend, Outcome, Policy, Sandbox, Status};

use common::backend;

/// One test at a time: each compares the host's state before and after.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/bin/true` in a sandbox; every tenth run with a pids limit, so that it gets a cgroup where one can be made.
fn run_true(i: usize) -> Outcome {
    let mut policy = Policy::default();
    if i.is_multiple_of(10) {
        policy = policy.pids(64);
    }
    let mut s = Sandbox::new("/bin/true");
    s.backend(backend());
    if common::builtin() {
        s.vm_engine(sandkasten::VmEngine::Builtin);
    }
    let o = s.policy(policy).output().expect("valid policy");
    assert_eq!(o.status, Status::Exited(0), "run {i}: {o:?}");
    o
}

/// What a run could leave behind, as this process sees it.
#[derive(Debug, PartialEq)]
struct HostState {
    fds: usize,
    mounts: String,
    /// Entries of the temp directory whose names start with `sandbox`, not another live process's.
    temp: BTreeSet<String>,
    /// Run cgroups of this process (`sandbox-<our pid>-*`).
    cgroups: Vec<PathBuf>,
    /// Processes descended from this one.
    descendants: Vec<u32>,
    /// Entries of the VM backend's cache directory (`$TMPDIR/sandbox-vm-<euid>`).
    vm_cache: BTreeSet<String>,
}

impl HostState {
    fn now() -> HostState {
        HostState {
            fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
            mounts: common::host_mounts(),
            temp: temp_entries(),
            cgroups: run_cgroups(std::process::id()),
            descendants: common::descendants(),
            vm_cache: vm_cache_entries(),
        }
    }

    /// Panics with what differs from `before`.
    fn assert_unchanged_since(&self, before: &HostState, what: &str) {
        let mut diffs = Vec::new();
        // More is a leak; fewer is not (a descriptor the harness or an earlier test still held when `before`
        // was taken, closed since: seen once in CI, 7 before and 6 after).
        if self.fds > before.fds {
            diffs.push(format!(
                "descriptors: {} before, {} after",
                before.fds, self.fds
            ));
        }
        if self.mounts != before.mounts {
            diffs.push("the mount table changed".to_string());
        }
        let new: Vec<_> = self.temp.difference(&before.temp).collect();
        if !new.is_empty() {
            diffs.push(format!("new temp entries: {new:?}"));
        }
        if !self.cgroups.is_empty() {
            diffs.push(format!("run cgroups left: {:?}", self.cgroups));
        }
        let new: Vec<_> = self.vm_cache.difference(&before.vm_cache).collect();
        if !new.is_empty() {
            diffs.push(format!("new entries in the VM cache directory: {new:?}"));
        }
        if !self.descendants.is_empty() {
            diffs.push(format!("processes left: {:?}", self.descendants));
        }
        assert!(diffs.is_empty(), "{what} left things behind: {diffs:#?}");
    }
}

/// `sandbox*` entries of the temp directory, except those that name another live process's pid (fixtures of
/// tests running elsewhere on the machine).
fn temp_entries() -> BTreeSet<String> {
    let me = std::process::id();
    let live: BTreeSet<u32> = common::pids().collect();
    let others = |name: &str| {
        name.split(['-', '.', '_'])
            .filter_map(|t| t.parse::<u32>().ok())
            .any(|p| p != me && live.contains(&p))
    };
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("sandbox") && !others(n))
        .collect()
}

/// Entries of the VM backend's per-user cache directory, if it exists.
fn vm_cache_entries() -> BTreeSet<String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("sandbox-vm-{uid}"));
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn vm() -> bool {
    backend() == Backend::Vm
}

/// Run cgroups created by process `pid` (`sandbox-<pid>-<n>`) anywhere under /sys/fs/cgroup.
fn run_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("sandbox-{pid}-");
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), &prefix, 6, &mut found);
    found
}

fn walk(dir: &Path, prefix: &str, depth: u32, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if !kind.is_dir() {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(prefix) {
            found.push(e.path());
        }
        if depth > 0 {
            walk(&e.path(), prefix, depth - 1, found);
        }
    }
}

#[test]
fn a_thousand_sequential_runs_leave_nothing() {
    let _one = serial();
    run_true(0); // the first run reaps stale cgroups and loads what the library loads once
    let before = HostState::now();
    let runs = match (vm(), common::builtin()) {
        (true, true) => 6,
        (true, false) => 20,
        (false, _) => 1000,
    };
    let start = Instant::now();
    for i in 0..runs {
        run_true(i);
    }
    let took = start.elapsed();
    eprintln!(
        "{runs} sequential runs in {took:?} ({:?} each)",
        took / runs as u32
    );
    HostState::now().assert_unchanged_since(&before, &format!("{runs} sequential runs"));
}

#[test]
fn a_thousand_runs_from_eight_threads_leave_nothing() {
    let _one = serial();
    run_true(0);
    let before = HostState::now();
    // 10 VMs at once, each thread one run; or 8 threads of 125 namespace runs.
    let (threads, each) = match (vm(), common::builtin()) {
        (true, true) => (2, 2),
        (true, false) => (10, 1),
        (false, _) => (8, 125),
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..each {
                    run_true(t * each + i);
                }
            });
        }
    });
    let took = start.elapsed();
    let what = format!("{} runs from {threads} threads", threads * each);
    eprintln!("{what} in {took:?}");
    HostState::now().assert_unchanged_since(&before, &what);
}

/// The CLI: `SANDBOX_BIN`, else `sandbox` in the profile directory above this test binary.
fn cli() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile.join("sandbox");
    assert!(
        bin.is_file(),
        "the sandbox CLI is not at {bin:?}: build it (`cargo build -p sandbox-examples`, or run \
         `cargo test --workspace`) or set SANDBOX_BIN to its path"
    );
    bin
}

/// xorshift64*: enough randomness for delays, replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Makes this process the reaper of its orphaned descendants: a killed CLI's QEMU, or its sandbox's init,
/// would otherwise be adopted by the system's init, out of sight of [`common::descendants`].
fn become_subreaper(on: bool) {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            libc::c_ulong::from(on),
            0,
            0,
            0,
        )
    };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// Reaps the orphans that ended; waits up to two seconds for those still alive (they are then reported).
fn reap_orphans() {
    let start = Instant::now();
    loop {
        // SAFETY: waitpid with a null status pointer only reaps; WNOHANG never blocks. Every other test of
        // this file holds `serial()`, so no Child of theirs is reaped here.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        if common::descendants().is_empty() || start.elapsed() > Duration::from_secs(2) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn supervisors_killed_at_random_points_leave_nothing() {
    let _one = serial();
    let bin = cli();
    become_subreaper(true);
    let seed = match std::env::var("SANDBOX_TEST_SEED") {
        Ok(s) => s.parse().expect("SANDBOX_TEST_SEED is a number"),
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
    };
    eprintln!("seed {seed} (SANDBOX_TEST_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let before = HostState::now();
    let tag = format!("4242{}", std::process::id());
    let backend = match backend() {
        Backend::Namespace => "namespace",
        Backend::Vm => "vm",
        Backend::Auto => "auto",
    };
    let mut stale = Vec::new();
    let mut exited_first = 0;
    // A VM boots in about a second: kills spread over 2 s land in boot, run and teardown.
    // Our VMM restores its snapshot of the booted guest in seconds (boots in about a minute when there is
    // none) and runs a program in about 15 s on this machine's software KVM.
    let (kills, spread) = match (vm(), common::builtin()) {
        (true, true) => (6, 30_001),
        (true, false) => (10, 2001),
        (false, _) => (40, 51),
    };
    let engine: &[&str] = if common::builtin() {
        &["--vm-engine", "builtin"]
    } else {
        &[]
    };
    for i in 0..kills {
        let marker = format!("{tag}{i:03}");
        let delay = Duration::from_millis(rng.next() % spread);
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--backend", backend])
            .args(engine)
            .args(["--pids", "64", "--"]);
        if i % 2 == 0 {
            // Long-running: the kill lands in setup or while the program runs.
            cmd.args(["/bin/sleep", &marker]);
        } else {
            // Short-lived: the kill may land while the CLI tears the run down.
            let pause = format!(": {marker}; sleep 0.0{}", rng.next() % 5);
            cmd.args(["/bin/sh", "-c", &pause]);
        }
        let mut child = cmd
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::null())
            .stderr(ProcStdio::null())
            .spawn()
            .expect("the CLI starts");
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            exited_first += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // A CLI killed between making and removing its run cgroup leaves it; the next process that makes a
        // run cgroup (the next CLI here) reaps it.
        stale.extend(run_cgroups(child.id()));
    }
    eprintln!(
        "{kills} CLIs killed after 0-{} ms ({exited_first} had already finished); {} run cgroups left behind",
        spread - 1,
        stale.len()
    );
    // Every sandbox (and every VM) ends with its supervisor.
    reap_orphans();
    testkit::assert_no_processes_with(&tag);
    let status = Command::new(&bin)
        .args(["run", "--backend", backend])
        .args(engine)
        .args(["--pids", "64", "--", "/bin/true"])
        .stdout(ProcStdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the next CLI run failed: {status}");
    let left: Vec<PathBuf> = stale.into_iter().filter(|p| p.exists()).collect();
    assert!(
        left.is_empty(),
        "stale run cgroups not reaped by the next run: {left:?}"
    );
    reap_orphans();
    become_subreaper(false);
    HostState::now().assert_unchanged_since(&before, "killed supervisors");
}
