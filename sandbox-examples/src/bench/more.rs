//! The benchmark sections beyond spawn latency: throughput of concurrent spawners, the VM backend against a
//! bare QEMU boot, stdout throughput, and spawn latency against the caller's size. Part of the library, for
//! `sandbox-bench`.

use std::io::Read;
use std::process::{Command, Stdio as StdStdio};
use std::time::{Duration, Instant};

use sandkasten::{Backend, Policy, Sandbox, Status, Stdio};

/// Runs `f` on `threads` threads for `secs` seconds; returns completed runs per second.
fn throughput(
    threads: usize,
    secs: u64,
    f: impl Fn() -> bool + Send + Sync + Copy + 'static,
) -> f64 {
    throughput_each(threads, secs, move || f)
}

/// Runs a case made by `make` (one per thread) on `threads` threads for `secs` seconds; returns completed
/// runs per second.
fn throughput_each<F: FnMut() -> bool>(
    threads: usize,
    secs: u64,
    make: impl Fn() -> F + Send + Sync + Copy + 'static,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut case = make();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if case() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / secs as f64
}

/// One run of `/bin/true` by the library in-process, with the default policy; whether it exited 0.
fn lib_true() -> bool {
    Sandbox::new("/bin/true")
        .output()
        .is_ok_and(|o| o.status == Status::Exited(0))
}

/// One run of `/bin/true` under bwrap with `view`; whether it exited 0.
fn bwrap_true(view: &[&str]) -> bool {
    Command::new("bwrap")
        .args(view)
        .arg("/bin/true")
        .stdout(StdStdio::null())
        .stderr(StdStdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two concurrent spawners of `/bin/true` for `secs` seconds: the library in-process versus bwrap, and the
/// kernel's floor for the same view (`floor-init` of [`super::floor`], two at a time), and with the kernel's
/// part of seccomp and landlock (`floor-layers`).
pub fn concurrent(secs: u64, bwrap_view: &'static [&'static str]) {
    println!("\nthroughput: 2 concurrent spawners of /bin/true for {secs} s each");
    let ours = throughput(2, secs, lib_true);
    let bwrap = throughput(2, secs, move || bwrap_true(bwrap_view));
    let floor = throughput_each(2, secs, || super::floor::case(true));
    let floor_layers = throughput_each(2, secs, super::floor::case_layers);
    let floor_shared = throughput_each(2, secs, super::floor::case_layers_shared);
    println!("{:<16} {:>10.1} runs/s", "lib (in-process)", ours);
    println!("{:<16} {:>10.1} runs/s", "bwrap", bwrap);
    println!("{:<16} {:>10.1} runs/s", "floor-init", floor);
    println!("{:<16} {:>10.1} runs/s", "floor-layers", floor_layers);
    println!("{:<16} {:>10.1} runs/s", "floor-layers-vm", floor_shared);
    if bwrap > 0.0 {
        println!("{:<16} {:>10.2}x", "ours / bwrap", ours / bwrap);
        println!("{:<16} {:>10.2}x", "floor / bwrap", floor / bwrap);
        println!("{:<16} {:>10.2}x", "layers / bwrap", floor_layers / bwrap);
        println!(
            "{:<16} {:>10.2}x",
            "layers-vm / bwrap",
            floor_shared / bwrap
        );
    }
}

/// Peak RSS (KiB) of the reaped descendants of this process so far.
fn children_maxrss_kib() -> i64 {
    // SAFETY: an all-zero rusage is valid storage for the kernel to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is writable.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss
}

/// Cold runs of `/bin/true` in the VM backend versus a bare QEMU boot of the same kernel and initramfs
/// (the agent finds no specification, reports, and ends the VM), plus QEMU's peak RSS.
pub fn vm(runs: usize, cli: &std::path::Path) {
    println!("\nVM backend: cold run of /bin/true, {runs} runs each (QEMU engine)");
    if let Err(e) = sandkasten::vm::assets() {
        println!("skipped: {e}");
        return;
    }
    if sandkasten::vm::find_qemu().is_none() {
        println!("skipped: no qemu-system-x86_64");
        return;
    }
    let accel = sandkasten::vm::choose_accel(&sandkasten::probe::probe_kvm()).0;
    let mut bare = super::vm::bare_qemu_times(
        accel.name(),
        &sandkasten::vm::cmdline::kernel_cmdline(accel.name() == "kvm", false, ""),
        runs,
    );
    let bare_rss = children_maxrss_kib();

    // Booted every time, then restored from a snapshot of the booted guest (a cache of its own, primed by one
    // run that boots and saves), as a cold run is by default.
    let cold = |snapshots: &str, runs: usize| {
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let ok = Command::new(cli)
                .args(["run", "--backend", "vm", "--vm-engine", "qemu"])
                .args(["--vm-snapshots", snapshots, "--", "/bin/true"])
                .stdout(StdStdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                times.push(t.elapsed());
            }
        }
        times
    };
    let mut ours = cold("off", runs);
    let cache =
        std::env::temp_dir().join(format!("sandbox-bench-snapshots-{}", std::process::id()));
    let primed = cold(&cache.to_string_lossy(), 1);
    let mut restored = cold(&cache.to_string_lossy(), runs);
    let _ = std::fs::remove_dir_all(&cache);
    let ours_rss = children_maxrss_kib();
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    match (med(&mut bare), med(&mut ours)) {
        (Some(b), Some(o)) => {
            println!(
                "{:<28} {:>10.0} ms",
                "bare QEMU boot+exit (median)",
                b.as_secs_f64() * 1e3
            );
            println!(
                "{:<28} {:>10.0} ms",
                "booted (--vm-snapshots off)",
                o.as_secs_f64() * 1e3
            );
            println!(
                "{:<28} {:>10.2}x",
                "ours / bare QEMU",
                o.as_secs_f64() / b.as_secs_f64()
            );
            if let (Some(p), Some(r)) = (primed.first(), med(&mut restored)) {
                println!(
                    "{:<28} {:>10.0} ms",
                    "booted and saved (first)",
                    p.as_secs_f64() * 1e3
                );
                println!(
                    "{:<28} {:>10.0} ms",
                    "restored (median)",
                    r.as_secs_f64() * 1e3
                );
                println!(
                    "{:<28} {:>10.2}x",
                    "restored / bare QEMU",
                    r.as_secs_f64() / b.as_secs_f64()
                );
            }
            println!("{:<28} {:>10} MiB", "bare QEMU peak RSS", bare_rss / 1024);
            println!(
                "{:<28} {:>10} MiB",
                "peak RSS (QEMU, ours)",
                ours_rss.max(bare_rss) / 1024
            );
        }
        _ => println!("failed: bare {} ok, ours {} ok", bare.len(), ours.len()),
    }
}

/// Reads everything from a child's stdout; returns the bytes, the rate in bytes per second from the first
/// byte to the end (the start of the program, a VM's boot, is not part of a stream's throughput), and the
/// time from `started` to the first byte.
fn drain(mut r: impl Read, started: Instant) -> (u64, f64, f64) {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let first = first.unwrap_or_else(Instant::now);
    let rate = total as f64 / first.elapsed().as_secs_f64().max(1e-9);
    (total, rate, (first - started).as_secs_f64())
}

/// `mib` MiB of output through the sandbox (namespace and VM) versus a plain pipe.
pub fn stdout(mib: u64, vm_mib: u64) {
    println!(
        "\nstdout throughput: `head -c N /dev/zero` read by the host, from the first byte read"
    );
    println!(
        "{:<24} {:>10} {:>16} {:>14} {:>16}",
        "case", "", "rate", "vs plain", "first byte after"
    );
    let script = |m: u64| format!("head -c {} /dev/zero", m << 20);
    let t = Instant::now();
    let mut plain = Command::new("/bin/sh")
        .args(["-c", &script(mib)])
        .stdout(StdStdio::piped())
        .spawn()
        .expect("sh");
    let (n, rate, _) = drain(plain.stdout.take().expect("piped"), t);
    let _ = plain.wait();
    println!(
        "{:<24} {:>6} MiB {:>10.0} MiB/s",
        "plain pipe",
        n >> 20,
        rate / 1048576.0
    );
    let base = rate;
    for (name, backend, m) in [
        ("namespace", Backend::Namespace, mib),
        ("vm", Backend::Vm, vm_mib),
    ] {
        let t = Instant::now();
        let child = Sandbox::new("/bin/sh")
            .args(["-c", &script(m)])
            .backend(backend)
            .policy(Policy::default())
            .stdout(Stdio::Piped)
            .spawn();
        let Ok(mut child) = child else {
            println!("{name:<24} failed to start");
            continue;
        };
        let (n, rate, first) = drain(child.stdout.take().expect("piped"), t);
        let _ = child.wait();
        println!(
            "{name:<24} {:>6} MiB {:>10.0} MiB/s {:>13.2}x {:>13.0} ms",
            n >> 20,
            rate / 1048576.0,
            rate / base,
            first * 1000.0
        );
    }
}

/// Spawn-to-exit of `/bin/true` from callers of growing size: this process holds `mib` MiB of heap it has
/// written (0, 64, 256), and the library's in-process run is measured against bwrap spawned from it, `runs`
/// runs each, interleaved. The library's init is a fork-like clone of the caller (SECURITY.md: "Why the init
/// is a copy of its caller"), whose page tables it copies and whose pages then fault once per write on
/// either side; bwrap is started with `posix_spawn` (`CLONE_VM | CLONE_VFORK`), which copies nothing.
pub fn caller_size(runs: usize, bwrap_view: &'static [&'static str]) {
    if runs == 0 {
        return;
    }
    println!(
        "\ncaller size: /bin/true from a process holding N MiB of written heap, {runs} runs each"
    );
    println!(
        "{:<12} {:>12} {:>12} {:>10}",
        "heap MiB", "lib ms", "bwrap ms", "lib/bwrap"
    );
    for mib in [0usize, 64, 256] {
        // Written, so every page is present (and copied by a fork-like clone): a service's working set.
        let mut heap = vec![0u8; mib << 20];
        for page in heap.chunks_mut(4096) {
            page[0] = 1;
        }
        let mut lib = Vec::with_capacity(runs);
        let mut bwrap = Vec::with_capacity(runs);
        let mut ok = true;
        for _ in 0..runs {
            let t = Instant::now();
            ok &= lib_true();
            lib.push(t.elapsed());
            let t = Instant::now();
            ok &= bwrap_true(bwrap_view);
            bwrap.push(t.elapsed());
            // The caller keeps working on its memory between runs, as a service does.
            for page in heap.chunks_mut(4096 * 64) {
                page[0] = page[0].wrapping_add(1);
            }
        }
        std::hint::black_box(&heap);
        if !ok {
            println!("{mib:<12} a run failed; skipped");
            continue;
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1000.0
        };
        let (l, b) = (median(&mut lib), median(&mut bwrap));
        println!("{mib:<12} {l:>12.2} {b:>12.2} {:>9.2}x", l / b);
    }
}
