//! Resource attacks from inside the sandbox: fork and thread bombs, a memory bomb, filling a tmpfs with bytes
//! and with inodes, a gigabyte of output, argv and environment at the kernel's limit, a CPU spin and a
//! program that waits forever. Each must be contained and reported honestly, and the host must stay
//! responsive (a host-side `/bin/true` is timed while the attack runs).
//!
//! Where the caller has no usable cgroup (an unprivileged user on our hybrid cgroup machines), cgroup limits
//! are reported in `enforced.not_enforced` and the tests fall back to rlimits and the wall-clock limit.
//! `SANDBOX_TEST_BACKEND=namespace|vm|builtin|auto` picks the backend (namespace by default; `builtin`: one
//! warm VM of our own VMM serves every attack, so it must also survive them). The attacks run one at a time,
//! so that each one's measurements are its own. On the VM backend the program's processes and cgroups are the
//! guest's, invisible from the host: there the tests check instead that nothing of the VM (QEMU, its
//! helpers) outlives the run, and use smaller amounts where the emulated guest is slow (1 GiB of output
//! becomes 256 MiB); the guest's limits are read from its verdict.

mod common;

use std::io::Read;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sandkasten::outcome::TimeLimit;
use sandkasten::{Outcome, Policy, Sandbox, Stage, Status, Stdio};

/// The slowest a host-side `/bin/true` may take while an attack runs (it takes a few milliseconds; the
/// bound leaves room for a loaded CI machine, not for a host that stalls).
const HOST_LATENCY: Duration = Duration::from_secs(1);

use common::backend;

/// Whether the attacks run in the microVM.
fn vm() -> bool {
    backend() == sandkasten::Backend::Vm
}

/// A bound on how long an attack may take before the test calls it a hang (the guest is emulated under TCG
/// here, so the VM backend gets more room). Not a performance figure.
fn hang_bound(namespace: u64) -> Duration {
    Duration::from_secs(match (vm(), common::builtin()) {
        // Our VMM on this machine's software KVM: guest kernel code is emulated.
        (true, true) => namespace * 30 + 240,
        (true, false) => namespace * 6 + 30,
        (false, _) => namespace,
    })
}

/// A policy time limit that the attack must not reach: python's start-up and guest kernel code are
/// emulated under our VMM on this machine's software KVM (PVM), so `builtin` gets ten times the room.
fn room(secs: u64) -> Duration {
    Duration::from_secs(if common::builtin() { secs * 10 } else { secs })
}

/// Nothing of the run outlives it: its cgroup directories are gone (namespace backend) and no process this
/// test started is left (QEMU and its confining sandbox on the VM backend; the sandbox's init otherwise).
fn assert_nothing_left(o: &Outcome) {
    if !vm() {
        assert_cgroup_removed(o);
    }
    common::assert_no_descendants();
}

/// One attack at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn sandbox(program: &str, args: &[&str], policy: Policy) -> Sandbox {
    let mut s = Sandbox::new(program);
    common::on(&mut s).args(args).policy(policy);
    s
}

/// python3 -c `script` `args...` under `policy`, output captured.
fn py(script: &str, args: &[&str], policy: Policy) -> Outcome {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    sandbox("/usr/bin/python3", &all, policy)
        .output()
        .expect("valid policy")
}

fn stdout(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Whether this caller gets a cgroup for a run (root on our machines; a delegated user elsewhere).
fn cgroups_usable() -> bool {
    let o = sandbox("/bin/true", &[], Policy::default().pids(64))
        .output()
        .unwrap();
    o.enforced.cgroup.is_some()
}

/// Runs `attack` on a thread while timing host-side `/bin/true` spawns and calling `sample` every 50 ms;
/// returns the attack's outcome and the slowest spawn.
fn while_measuring(
    attack: impl FnOnce() -> Outcome + Send,
    mut sample: impl FnMut(),
) -> (Outcome, Duration) {
    std::thread::scope(|s| {
        let running = s.spawn(attack);
        let mut worst = Duration::ZERO;
        while !running.is_finished() {
            let start = Instant::now();
            let ok = Command::new("/bin/true").status().unwrap().success();
            assert!(ok, "the host could not run /bin/true during the attack");
            worst = worst.max(start.elapsed());
            sample();
            std::thread::sleep(Duration::from_millis(50));
        }
        (running.join().unwrap(), worst)
    })
}

fn assert_responsive(what: &str, worst: Duration) {
    eprintln!("{what}: slowest host /bin/true during the attack: {worst:?}");
    assert!(
        worst < HOST_LATENCY,
        "{what}: the host stalled ({worst:?} for /bin/true)"
    );
}

/// The run's cgroup directories are gone.
fn assert_cgroup_removed(o: &Outcome) {
    for path in o.enforced.cgroup.iter().flat_map(|c| &c.paths) {
        assert!(!path.exists(), "cgroup {path:?} left behind");
    }
}

/// A cgroup limit this caller cannot enforce is reported, naming it.
fn assert_reported_unenforced(o: &Outcome, limit: &str) {
    assert!(o.enforced.cgroup.is_none());
    assert!(
        o.enforced.not_enforced.iter().any(|r| r.contains(limit)),
        "an unenforceable {limit} limit must be reported: {:?}",
        o.enforced.not_enforced
    );
}

/// The rlimit `name` was set to `value`.
fn has_rlimit(o: &Outcome, name: &str, value: u64) -> bool {
    o.enforced
        .rlimits
        .iter()
        .any(|(n, v)| *n == name && *v == value)
}

const FORK_BOMB: &str = "
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
";

#[test]
fn fork_bomb_is_contained() {
    let _one = serial();
    let marker = format!("fork-bomb-{}", common::marker());
    let cgroups = cgroups_usable();
    let mut policy = Policy::default().pids(64).timeout(Duration::from_secs(3));
    if !cgroups {
        // No cgroup for this caller: RLIMIT_NPROC (counted per user namespace since Linux 5.14, so per
        // sandbox) and the wall-clock limit contain the bomb instead.
        policy.limits.nproc = Some(64);
    }
    let start = Instant::now();
    let mut peak = 0;
    let (o, worst) = while_measuring(
        || py(FORK_BOMB, &[&marker], policy),
        || peak = peak.max(testkit::processes_with(&marker).len()),
    );
    assert_eq!(o.status, Status::TimedOut(TimeLimit::Wall), "{o:?}");
    assert!(start.elapsed() < hang_bound(10), "{:?}", start.elapsed());
    eprintln!("fork bomb: at most {peak} bomb processes seen from the host");
    if vm() {
        // The guest's processes are not the host's: none may show here.
        assert_eq!(peak, 0, "guest processes visible on the host");
    }
    assert!(peak <= 64, "the bomb grew past the limit: {peak} processes");
    assert_responsive("fork bomb", worst);
    testkit::assert_no_processes_with(&marker);
    if cgroups {
        assert_eq!(o.enforced.cgroup.as_ref().unwrap().pids, Some(64));
        assert_nothing_left(&o);
    } else {
        assert_reported_unenforced(&o, "pids");
        assert!(has_rlimit(&o, "nproc", 64), "{:?}", o.enforced.rlimits);
    }
}

const THREAD_BOMB: &str = "
import threading, time
n = 0
try:
    while n < 10000:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        n += 1
except RuntimeError:
    pass
print(n, flush=True)
";

#[test]
fn thread_bomb_is_contained() {
    let _one = serial();
    let cgroups = cgroups_usable();
    let mut policy = Policy::default().pids(32).timeout(room(10));
    if !cgroups {
        policy.limits.nproc = Some(32);
    }
    let (o, worst) = while_measuring(|| py(THREAD_BOMB, &[], policy), || {});
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let threads: u32 = stdout(&o).parse().expect("a count of threads");
    // 32 tasks: the init, python's main thread, and at most 30 more.
    assert!(
        (1..=30).contains(&threads),
        "{threads} threads started under a limit of 32 tasks"
    );
    assert_responsive("thread bomb", worst);
    if cgroups {
        assert_nothing_left(&o);
    } else {
        assert_reported_unenforced(&o, "pids");
    }
}

#[test]
fn memory_bomb_is_oom_killed() {
    let _one = serial();
    let limit = 64 << 20;
    if !cgroups_usable() {
        let o = sandbox("/bin/true", &[], Policy::default().memory(limit))
            .output()
            .unwrap();
        assert_reported_unenforced(&o, "memory");
        let mut required = Policy::default().memory(limit);
        required.limits.required = true;
        let o = sandbox("/bin/true", &[], required).output().unwrap();
        assert!(
            matches!(&o.status, Status::SetupFailed(f) if f.stage == Stage::Cgroup),
            "a required memory limit that cannot be enforced fails the run: {:?}",
            o.status
        );
        eprintln!(
            "memory limit not enforceable for this caller: the bomb was not run, the report was checked"
        );
        return;
    }
    let bomb = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))";
    let policy = Policy::default().memory(limit).timeout(room(20));
    let (o, worst) = while_measuring(|| py(bomb, &[], policy), || {});
    assert_eq!(o.status, Status::OomKilled, "{o:?}");
    assert!(
        o.usage.peak_memory_bytes.unwrap() <= limit + (1 << 20),
        "{:?}",
        o.usage
    );
    assert_responsive("memory bomb", worst);
    assert_nothing_left(&o);
}

/// Free bytes and inodes of the host's temp directory's filesystem.
fn host_tmp_free() -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(&std::env::temp_dir()).unwrap();
    (
        st.blocks_available() as u64 * st.fragment_size() as u64,
        st.files_free() as u64,
    )
}

const FILL: &str = "
import errno, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o600)
chunk, total = b'x' * (1 << 20), 0
try:
    while True:
        total += os.write(fd, chunk)
except OSError as e:
    print(errno.errorcode[e.errno], total)
";

/// Fills `file` with MiB writes until an error; returns the outcome, the errno name and the bytes written.
fn fill(file: &str, policy: Policy) -> (Outcome, String, u64) {
    let o = py(FILL, &[file], policy);
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let out = stdout(&o);
    let (err, total) = out.split_once(' ').expect("errno and bytes");
    (o.clone(), err.to_string(), total.parse().unwrap())
}

/// The bound the verdict reports for the tmpfs at `path`.
fn reported_bound(o: &Outcome, path: &str) -> (u64, u64) {
    let b = o
        .enforced
        .tmpfs
        .iter()
        .find(|b| b.path == std::path::Path::new(path))
        .unwrap_or_else(|| panic!("no bound reported for {path}: {:?}", o.enforced.tmpfs));
    (b.size, b.inodes)
}

#[test]
fn tmpfs_fill_stops_at_its_size() {
    let _one = serial();
    let size: u64 = 16 << 20;
    let (free, _) = host_tmp_free();
    let policy = Policy::default()
        .tmpfs_sized("/scratch", size)
        .timeout(room(60));
    let (o, err, total) = fill("/scratch/fill", policy);
    assert_eq!(err, "ENOSPC", "{total}");
    assert!(
        (size - (1 << 20)..=size).contains(&total),
        "wrote {total} bytes into a {size}-byte tmpfs"
    );
    assert_eq!(reported_bound(&o, "/scratch").0, size);
    let (after, _) = host_tmp_free();
    assert!(
        after + (size / 2) > free,
        "the host's temp filesystem lost {} bytes",
        free - after
    );
}

/// Without a memory limit and without a size, `/tmp`, `/dev/shm` and a policy tmpfs are still bounded
/// (`DEFAULT_TMPFS_SIZE`), so a sandbox cannot fill the host's RAM through them.
#[test]
fn unsized_tmpfs_is_bounded_without_a_memory_limit() {
    let _one = serial();
    let size = sandkasten::policy::DEFAULT_TMPFS_SIZE;
    for file in ["/tmp/fill", "/dev/shm/fill", "/scratch/fill"] {
        let policy = Policy::default().tmpfs("/scratch").timeout(room(60));
        assert_eq!(policy.limits.memory, None);
        let (o, err, total) = fill(file, policy);
        eprintln!("{file}: {err} after {} MiB", total >> 20);
        assert_eq!(err, "ENOSPC", "{file}: {total} bytes");
        assert!(
            (size - (1 << 20)..=size).contains(&total),
            "{file}: wrote {total} bytes into a tmpfs bounded at {size}"
        );
        let dir = std::path::Path::new(file).parent().unwrap();
        assert_eq!(reported_bound(&o, dir.to_str().unwrap()).0, size);
        assert_nothing_left(&o);
    }
}

const INODES: &str = "
import errno, os, sys
data, cap, dir = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
n, err = 0, 'none'
try:
    while n < cap:
        fd = os.open('%s/%d' % (dir, n), os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, data)
        os.close(fd)
        n += 1
except OSError as e:
    err = errno.errorcode[e.errno]
print(err, n)
";

/// Creates up to `cap` files of `data` in `dir`; returns the outcome, the errno name and the count.
fn flood(data: &str, cap: u64, dir: &str, policy: Policy) -> (Outcome, String, u64) {
    let o = py(INODES, &[data, &cap.to_string(), dir], policy);
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let out = stdout(&o);
    let (err, n) = out.split_once(' ').unwrap();
    (o.clone(), err.to_string(), n.parse().unwrap())
}

#[test]
fn inode_flood_in_a_sized_tmpfs() {
    let _one = serial();
    let size = 1 << 20;
    let (_, inodes_before) = host_tmp_free();
    // Files of one byte: each takes a page of the tmpfs's size, so ENOSPC comes after size / 4096 files.
    let policy = Policy::default()
        .tmpfs_sized("/scratch", size)
        .timeout(room(60));
    let (_, err, n) = flood("x", 100_000, "/scratch", policy.clone());
    assert_eq!(err, "ENOSPC", "{n}");
    assert!(
        n <= size / 4096,
        "{n} one-byte files in a {size}-byte tmpfs"
    );
    // Empty files take no page: the tmpfs's inode count stops them (one per 4 KiB of its size, at least
    // MIN_TMPFS_INODES), with or without a memory limit.
    let inodes = sandkasten::policy::MIN_TMPFS_INODES;
    let (o, worst) = while_measuring(
        || {
            let (o, err, n) = flood("", 2_000_000, "/scratch", policy);
            eprintln!("empty files in a {size}-byte tmpfs: {err} after {n}");
            assert_eq!(err, "ENOSPC", "{n}");
            // The root directory takes one inode.
            assert!(n < inodes, "{n} empty files under nr_inodes={inodes}");
            o
        },
        || {},
    );
    assert_eq!(reported_bound(&o, "/scratch"), (size, inodes));
    assert_responsive("inode flood", worst);
    assert_nothing_left(&o);
    let (_, inodes_after) = host_tmp_free();
    assert!(
        inodes_after + 1000 > inodes_before,
        "the host's temp filesystem lost {} inodes",
        inodes_before - inodes_after
    );
}

/// Empty files in the default `/tmp`, without a memory limit: bounded by its inode count.
#[test]
fn inode_flood_in_the_default_tmp_is_bounded() {
    let _one = serial();
    let policy = Policy::default().timeout(room(120));
    let (size, inodes) = policy.tmpfs_bounds(None);
    let (o, worst) = while_measuring(
        || {
            let (o, err, n) = flood("", 2_000_000, "/tmp", policy);
            eprintln!("empty files in the default /tmp: {err} after {n}");
            assert_eq!(err, "ENOSPC", "{n}");
            assert!(n < inodes, "{n} empty files under nr_inodes={inodes}");
            assert!(n + 16 >= inodes, "only {n} of {inodes} inodes usable");
            o
        },
        || {},
    );
    assert_eq!(reported_bound(&o, "/tmp"), (size, inodes));
    assert_responsive("inode flood in /tmp", worst);
    assert_nothing_left(&o);
}

/// VmRSS of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn a_gigabyte_of_output_keeps_the_supervisor_small() {
    let _one = serial();
    // 1 GiB; 256 MiB through the emulated guest's virtio-serial port, 8 MiB under our VMM on software KVM
    // (PVM emulates guest kernel code: about 100 KiB/s through a pipe and the port there). The supervisor's
    // buffers are the same whatever the amount.
    let total_bytes: u64 = match (vm(), common::builtin()) {
        (true, true) => 8 << 20,
        (true, false) => 256 << 20,
        (false, _) => 1 << 30,
    };
    let before = rss();
    let mut child = sandbox(
        "/usr/bin/head",
        &["-c", &total_bytes.to_string(), "/dev/zero"],
        Policy::default().timeout(hang_bound(60)),
    )
    .stdout(Stdio::Piped)
    .stderr(Stdio::Null)
    .spawn()
    .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut peak) = (0u64, before);
    let start = Instant::now();
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the sandbox's output: {e}"),
        }
        if total % (64 << 20) < (1 << 20) {
            peak = peak.max(rss());
        }
    }
    let o = child.wait().unwrap();
    let took = start.elapsed();
    peak = peak.max(rss());
    eprintln!(
        "{} MiB of output in {took:?}; supervisor RSS {} MB before, {} MB at most",
        total_bytes >> 20,
        before >> 20,
        peak >> 20
    );
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(total, total_bytes);
    assert!(
        peak < before + (100 << 20),
        "the supervisor grew by {} MB",
        (peak - before) >> 20
    );
}

/// The kernel's limit on argv + envp for this process's stack limit (a quarter of it, at most 6 MiB).
fn arg_max() -> usize {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_STACK).unwrap();
    let six = 6 << 20;
    if soft == libc::RLIM_INFINITY {
        six
    } else {
        (soft as usize / 4).min(six)
    }
}

#[test]
fn argv_and_environment_at_the_limit() {
    let _one = serial();
    let max = arg_max();
    let arg = "a".repeat(999);
    let count_args = |n: usize| -> Outcome {
        let mut args = vec!["-c", "echo $#", "sh"];
        args.extend(std::iter::repeat_n(arg.as_str(), n));
        sandbox("/bin/sh", &args, Policy::default())
            .output()
            .unwrap()
    };
    // Half the limit: runs.
    let n = max / 2 / 1000;
    let o = count_args(n);
    assert_eq!(o.status, Status::Exited(0), "{:?}", o.status);
    assert_eq!(stdout(&o), n.to_string());
    // Over the limit: a clean setup failure at exec, E2BIG, exit code 126 — never a panic or a hang.
    let e2big = |o: &Outcome| {
        matches!(&o.status, Status::SetupFailed(f)
            if f.stage == Stage::Exec && f.errno == Some(libc::E2BIG))
    };
    let o = count_args(max / 1000 + 100);
    assert!(e2big(&o), "{:?}", o.status);
    assert_eq!(o.status.exit_code(), 126);
    // One string over MAX_ARG_STRLEN (32 pages), in argv and in the environment.
    let long = "b".repeat(33 * 4096);
    let o = sandbox("/bin/true", &[&long], Policy::default())
        .output()
        .unwrap();
    assert!(e2big(&o), "{:?}", o.status);
    let o = sandbox("/bin/true", &[], Policy::default())
        .env("BIG", &long)
        .output()
        .unwrap();
    assert!(e2big(&o), "{:?}", o.status);
    // A big but valid environment.
    let o = sandbox("/bin/sh", &["-c", "echo ${#BIG}"], Policy::default())
        .env("BIG", "c".repeat(100_000))
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "100000", "{:?}", o.status);
}

#[test]
fn cpu_spin_hits_the_cpu_time_limit() {
    let _one = serial();
    let policy = Policy::default()
        .cpu_time(Duration::from_secs(1))
        .timeout(room(20));
    let start = Instant::now();
    let (o, worst) = while_measuring(|| py("while True: pass", &[], policy), || {});
    assert_eq!(o.status, Status::TimedOut(TimeLimit::Cpu), "{o:?}");
    assert_eq!(o.report_json()["timeout"], "cpu");
    assert!(start.elapsed() < hang_bound(10), "{:?}", start.elapsed());
    // The CPU time the kernel charged (RLIMIT_CPU counts precisely; rusage, on a loaded VM, a little less).
    let cpu = o.usage.cpu_user + o.usage.cpu_sys;
    assert!(cpu >= Duration::from_millis(500), "{:?}", o.usage);
    assert_responsive("CPU spin", worst);
}

#[test]
fn waiting_forever_hits_the_wall_clock_limit() {
    let _one = serial();
    let marker = format!("pause-{}", common::marker());
    let policy = Policy::default().timeout(Duration::from_secs(1));
    let script = "import signal, sys; signal.pause()";
    let (o, worst) = while_measuring(|| py(script, &[&marker], policy), || {});
    assert_eq!(o.status, Status::TimedOut(TimeLimit::Wall), "{o:?}");
    assert_eq!(o.report_json()["timeout"], "wall");
    // On the VM backend the wall time is the host's, boot included.
    let wall = o.usage.wall;
    assert!(
        wall >= Duration::from_secs(1) && wall < hang_bound(4),
        "{wall:?}"
    );
    assert_responsive("pause", worst);
    testkit::assert_no_processes_with(&marker);
    common::assert_no_descendants();
}
