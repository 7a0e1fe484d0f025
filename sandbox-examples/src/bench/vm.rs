//! VM benchmark sections: warm runs on a [`VmPool`] against cold runs, our VMM (builtin engine) against QEMU
//! with the same kernel, initramfs and accelerator, and the VMMs' memory beyond guest RAM. Part of the
//! library, for `sandbox-bench`.

use std::path::Path;
use std::process::{Command, Stdio as StdStdio};
use std::time::{Duration, Instant};

use sandkasten::{PoolOptions, Sandbox, SnapshotCache, VmEngine, VmPool};

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The pids below `pid` (children, grandchildren, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let path = format!("/proc/{p}/task/{p}/children");
        for c in std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
        {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Resident memory of `pid` outside its guest RAM mapping (the one anonymous mapping of `guest_mib` MiB),
/// in KiB, from /proc/PID/smaps: the VMM's own cost.
fn rss_beyond_guest(pid: u32, guest_mib: u64) -> Rss {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut size_kib = 0u64;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("Size:") => size_kib = f.next()?.parse().ok()?,
            Some("Rss:") => {
                let rss: u64 = f.next()?.parse().ok()?;
                total += rss;
                if size_kib == guest_mib * 1024 {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Some((total - guest, guest))
}

/// The VMM process of a running pooled sandbox (QEMU or our `sandbox-vmm`).
fn vmm_pid(root: u32) -> Option<u32> {
    std::iter::once(root).chain(descendants(root)).find(|p| {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        comm.starts_with("qemu-system") || comm.trim() == "sandbox-vmm"
    })
}

/// Resident KiB beyond guest RAM, and of guest RAM.
type Rss = Option<(u64, u64)>;

/// Warm runs of /bin/true on a pool of `engine`, after one boot: (boot, median run, the VMM's memory).
fn warm(engine: VmEngine, runs: usize) -> Option<(Duration, Duration, Rss)> {
    // A boot, not a restore: the cold section measures snapshots.
    let options = PoolOptions {
        engine,
        max_idle: 1,
        max_vms: 1,
        snapshots: SnapshotCache::Off,
        ..Default::default()
    };
    let guest_mib = options.memory_mib;
    let pool = VmPool::new(options).ok()?;
    let t = Instant::now();
    if let Err(e) = pool.prewarm(1) {
        println!("  pool boot failed: {e}");
        return None;
    }
    let boot = t.elapsed();
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let ok = Sandbox::new("/bin/true")
            .vm_pool(&pool)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            times.push(t.elapsed());
        }
    }
    // The VMM's memory while a run is on it (after the runs above: steady state).
    let mut child = Sandbox::new("/bin/sleep")
        .arg("2")
        .vm_pool(&pool)
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let rss = vmm_pid(child.id()).and_then(|p| rss_beyond_guest(p, guest_mib));
    let _ = child.wait();
    Some((boot, median(times)?, rss))
}

/// Cold runs through the CLI with an engine and a snapshot cache (`--vm-snapshots`: `off`, or a directory).
fn cold(cli: &Path, engine: &str, snapshots: &str, runs: usize) -> Option<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let ok = Command::new(cli)
            .args([
                "run",
                "--backend",
                "vm",
                "--vm-engine",
                engine,
                "--vm-snapshots",
                snapshots,
                "--",
                "/bin/true",
            ])
            .stdout(StdStdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            times.push(t.elapsed());
        }
    }
    median(times)
}

/// QEMU `-M microvm` booting the same kernel and agent initramfs with `accel` (the agent finds no
/// specification, reports and ends the VM): a bare boot, for scale.
fn bare_qemu(accel: &str, cmdline: &str, runs: usize) -> Option<Duration> {
    median(bare_qemu_times(accel, cmdline, runs))
}

/// The times of the successful runs of `bare_qemu`.
pub fn bare_qemu_times(accel: &str, cmdline: &str, runs: usize) -> Vec<Duration> {
    // QEMU's `-cpu max`/`host` cannot start on PVM (it cannot set IA32_ARCH_CAPABILITIES); our VMM's vCPU is
    // KVM's supported CPUID, which `host,-arch-capabilities` matches.
    let pvm = accel == "kvm" && sandkasten::probe::KvmFlavour::detect().is_pvm();
    let cpu = if pvm {
        "host,-arch-capabilities"
    } else {
        "max"
    };
    let Ok((kernel, agent)) = sandkasten::vm::assets() else {
        return Vec::new();
    };
    let Some(qemu) = sandkasten::vm::find_qemu() else {
        return Vec::new();
    };
    let initrd = std::env::temp_dir().join(format!("sandbox-bench-vm-{}.cpio", std::process::id()));
    let packed = sandkasten::vm::pack_agent(&agent, None, &[]);
    if !packed.is_ok_and(|b| std::fs::write(&initrd, b).is_ok()) {
        return Vec::new();
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let ok = Command::new(&qemu)
            .args([
                "-M",
                "microvm,acpi=off,pit=on,pic=on,rtc=on",
                "-accel",
                accel,
            ])
            .args(["-cpu", cpu, "-m", "256M", "-smp", "1", "-nodefaults"])
            .args([
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-display",
                "none",
            ])
            .args(["-device", "i8042", "-serial", "null", "-kernel"])
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", cmdline])
            .stdout(StdStdio::null())
            .stderr(StdStdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            times.push(t.elapsed());
        }
    }
    let _ = std::fs::remove_file(&initrd);
    times
}

fn show_rss(name: &str, rss: Rss) {
    match rss {
        Some((beyond, guest)) => println!(
            "{name:<34} {:>8.1} MiB beyond guest RAM ({:.0} MiB of guest RAM resident)",
            beyond as f64 / 1024.0,
            guest as f64 / 1024.0
        ),
        None => println!("{name:<34} {:>8}", "n/a"),
    }
}

/// Warm runs on the QEMU engine (TCG here): a pool VM serving one run after another, against cold runs.
pub fn warm_qemu(runs: usize, cli: &Path) {
    println!("\nVM warm runs: /bin/true on a VmPool (QEMU engine), {runs} runs after one boot");
    let Some((boot, warm, rss)) = warm(VmEngine::Qemu, runs) else {
        println!("skipped: the pool could not boot (guest assets? qemu?)");
        return;
    };
    let cold = cold(cli, "qemu", "off", runs.min(10));
    println!("{:<34} {:>10.0} ms", "pool boot (prewarm)", ms(boot));
    println!("{:<34} {:>10.1} ms", "warm run (median)", ms(warm));
    if let Some(c) = cold {
        println!("{:<34} {:>10.1} ms", "cold run, CLI (median)", ms(c));
        println!(
            "{:<34} {:>10.2}x",
            "warm / cold",
            warm.as_secs_f64() / c.as_secs_f64()
        );
    }
    show_rss("QEMU (qemu engine)", rss);
}

/// Our VMM against QEMU on the same KVM, kernel and initramfs: a cold boot each (minutes on PVM), warm runs
/// on a builtin pool, and the VMM's memory beyond guest RAM.
pub fn builtin(runs: usize, cli: &Path) {
    let kvm = sandkasten::probe::probe_kvm();
    println!(
        "\nbuiltin engine (our VMM) on KVM ({}), against QEMU -accel kvm with the same kernel and initramfs",
        kvm.flavour
    );
    if !kvm.usable {
        println!("skipped: /dev/kvm is not usable here");
        return;
    }
    let pvm = kvm.flavour.is_pvm();
    let cold_runs = if pvm { 1 } else { runs.min(10) };
    let ours = cold(cli, "builtin", "off", cold_runs);
    let bare = bare_qemu(
        "kvm",
        &sandkasten::vm::cmdline::kernel_cmdline(true, pvm, ""),
        cold_runs,
    );
    match ours {
        Some(o) => println!("{:<34} {:>10.0} ms", "cold run, builtin engine", ms(o)),
        None => println!("{:<34} {:>10}", "cold run, builtin engine", "failed"),
    }
    match bare {
        Some(b) => println!(
            "{:<34} {:>10.0} ms",
            "bare QEMU -accel kvm boot+exit",
            ms(b)
        ),
        None => println!("{:<34} {:>10}", "bare QEMU -accel kvm boot+exit", "failed"),
    }
    if let (Some(o), Some(b)) = (ours, bare) {
        println!(
            "{:<34} {:>10.2}x",
            "builtin cold / bare QEMU",
            o.as_secs_f64() / b.as_secs_f64()
        );
    }
    // Cold runs from a snapshot of the booted guest: the first boots and saves it, the next restore it.
    let dir = std::env::temp_dir().join(format!("sandbox-bench-snapshots-{}", std::process::id()));
    let dir_arg = dir.to_string_lossy().into_owned();
    let saved = cold(cli, "builtin", &dir_arg, 1);
    let restored = cold(cli, "builtin", &dir_arg, cold_runs);
    let _ = std::fs::remove_dir_all(&dir);
    for (what, t) in [
        ("cold run, boot + save snapshot", saved),
        ("cold run, restored (median)", restored),
    ] {
        match t {
            Some(t) => println!("{what:<34} {:>10.0} ms", ms(t)),
            None => println!("{what:<34} {:>10}", "failed"),
        }
    }
    if let (Some(r), Some(b)) = (restored, bare) {
        println!(
            "{:<34} {:>10.2}x",
            "builtin restored / bare QEMU",
            r.as_secs_f64() / b.as_secs_f64()
        );
    }
    let warm_runs = if pvm { runs.min(5) } else { runs };
    match warm(VmEngine::Builtin, warm_runs) {
        Some((boot, warm, rss)) => {
            println!(
                "{:<34} {:>10.0} ms",
                "builtin pool boot (prewarm)",
                ms(boot)
            );
            println!("{:<34} {:>10.1} ms", "builtin warm run (median)", ms(warm));
            show_rss("sandbox-vmm (builtin engine)", rss);
        }
        None => println!("builtin warm runs failed"),
    }
}
