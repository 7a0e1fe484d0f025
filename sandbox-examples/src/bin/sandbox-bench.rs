//! `sandbox-bench`: spawn latency of our sandbox next to its peers, measured in the same run.
//!
//! ```text
//! sandbox-bench [--runs N] [--only NAME,...] [--sections spawn,floor,throughput,vm,stdout,caller,image,lifecycle,builtin] [--secs S] [--vm-runs N] [--lifecycle-runs N]
//! ```
//! Sections (all by default): `spawn` (below), `floor` (the kernel's part of a run step by step: the `floor`
//! case's mounts, directories, links and copied files, each timed in the child; medians by kind), `throughput` (2 concurrent spawners for S seconds, default 10:
//! the library in-process versus bwrap), `vm` (cold `/bin/true` in the VM backend versus a bare QEMU boot of
//! the same kernel and initramfs, and QEMU's peak RSS; then warm runs on a `VmPool` against cold runs and
//! QEMU's memory beyond guest RAM; needs SANDBOX_KERNEL/SANDBOX_AGENT or the defaults), `stdout` (1 GiB
//! through a namespace sandbox and 256 MiB through the VM, versus a plain pipe, from the first byte read), `caller`
//! (the library against bwrap from a process holding 0, 64 and 256 MiB of written heap, N/2 runs each), `image` (importing a
//! 3-layer image against `umoci unpack` and `tar -x` of its layers, and the disk use of 5 images sharing their
//! base layers; needs umoci), `lifecycle` (a whole run and an exec into a live container, N times each, default
//! 20: podman with runc against podman with our `sandbox-runtime`, the library's `Session::command` against a
//! one-shot `Sandbox`, and `sandbox exec` against `sandbox run`; podman cases need root, podman and runc, and
//! our runtime next to this binary or in SANDBOX_RUNTIME_BIN). Not by default: `builtin`
//! (our VMM against QEMU -accel kvm with the same kernel and initramfs, cold and warm, and its memory beyond
//! guest RAM; minutes per boot on PVM).
//!
//! Every case runs `/bin/true` N times (default 200) after 5 warm-up runs, interleaved (each round gives every
//! case one turn), and prints the median, min and max spawn-to-exit latency, and each case's ratio to
//! bubblewrap's. Cases:
//! - `cli`: `sandbox run -- /bin/true` with every layer on (the default policy);
//! - `cli-bare`: the same without seccomp and landlock;
//! - `cli-static`: `cli` with the static build of the CLI (`scripts/build-cli.sh`), when SANDBOX_STATIC_CLI
//!   names it;
//! - `bwrap`: `bwrap --unshare-all --die-with-parent` with a comparable read-only view;
//! - `bwrap-seccomp`: the same plus our default seccomp filter passed with `--seccomp`;
//! - `unshare`: `unshare -Urpmnif --fork /bin/true` (namespaces only, no new root);
//! - `floor`: the kernel's floor for the library's view: a clone into the same namespaces from this process,
//!   the default view's mounts, directories, links and `/etc` files replayed by raw system calls, then
//!   `/bin/true` (no seccomp, landlock, PID 1 or planning: `bench/floor.rs`); `floor-init`: the same with a
//!   PID 1 that forks the program and waits for it, as the library's init does; `floor-layers`: that plus the
//!   kernel's part of our seccomp filter and a landlock ruleset (`no_new_privs`, `landlock_restrict_self`,
//!   `seccomp`) in the program's process, the filter and ruleset made once; `floor-layers-vm`: that with a
//!   PID 1 sharing this process's memory (`CLONE_VM`, a stack of its own) that starts the program with
//!   `CLONE_VM | CLONE_VFORK`: no fork-like clone of this process at all (what the library's init could save);
//! - `lib`, `lib-bare`, `lib-noaudit`, `lib-nolandlock`, `lib-noseccomp`, `lib-cgroup`: the library's
//!   in-process `Sandbox::output()`, with all layers, none, and one layer changed at a time;
//! - `lib-async`: the same through the async API (`output_async` on a current-thread tokio runtime).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_examples::bench::{floor, image, lifecycle, more, vm};
use sandkasten::seccomp::SeccompProfile;
use sandkasten::{Policy, Sandbox, Status};

/// Installs the peers measured against (Debian's bubblewrap and qemu-system-x86) when they are missing: as
/// root with apt-get, else it says what to install and those cases are skipped.
fn install_peers() {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    let missing: Vec<&str> = [
        ("bwrap", "bubblewrap"),
        ("umoci", "umoci"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ]
    .into_iter()
    .filter(|(bin, _)| !on_path(bin))
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return;
    }
    if !sandkasten::probe().root {
        println!(
            "peers missing: {} (install them as root: apt-get install {0}); their cases are skipped",
            missing.join(" ")
        );
        return;
    }
    println!(
        "installing the peers: apt-get install {}",
        missing.join(" ")
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(&missing);
    let installed = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    if !installed {
        println!(
            "could not install {}; their cases are skipped",
            missing.join(" ")
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 200usize;
    let mut only: Option<Vec<String>> = None;
    let mut sections: Vec<String> = [
        "spawn",
        "floor",
        "throughput",
        "vm",
        "stdout",
        "caller",
        "image",
        "lifecycle",
    ]
    .map(String::from)
    .to_vec();
    let mut secs = 10u64;
    let mut vm_runs = 10usize;
    let mut lifecycle_runs = 20usize;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                i += 1;
            }
            "--sections" => {
                sections = args
                    .get(i + 1)
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(String::from)
                    .collect();
                i += 1;
            }
            "--secs" => {
                secs = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                i += 1;
            }
            "--vm-runs" => {
                vm_runs = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                i += 1;
            }
            "--lifecycle-runs" => {
                lifecycle_runs = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                i += 1;
            }
            "--only" => {
                only = Some(
                    args.get(i + 1)
                        .unwrap_or_else(|| usage())
                        .split(',')
                        .map(String::from)
                        .collect(),
                );
                i += 1;
            }
            _ => usage(),
        }
        i += 1;
    }
    let cli = sibling("sandbox");
    let bare = std::env::temp_dir().join(format!("sandbox-bench-bare-{}.toml", std::process::id()));
    std::fs::write(&bare, "seccomp = \"none\"\n[landlock]\nenabled = false\n").expect("temp file");
    let filter = bpf_file();
    let filter_path = filter.clone();

    const BWRAP_VIEW: &[&str] = &[
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--hostname",
        "sandbox",
    ];
    let bwrap_view = BWRAP_VIEW;
    let mut cases: Vec<(&str, Case)> = Vec::new();
    {
        let cli = cli.clone();
        cases.push((
            "cli",
            Box::new(move || run(Command::new(&cli).args(["run", "--", "/bin/true"]))),
        ));
    }
    if let Some(cli) = std::env::var_os("SANDBOX_STATIC_CLI") {
        cases.push((
            "cli-static",
            Box::new(move || run(Command::new(&cli).args(["run", "--", "/bin/true"]))),
        ));
    }
    {
        let cli = cli.clone();
        let bare = bare.clone();
        cases.push((
            "cli-bare",
            Box::new(move || {
                run(Command::new(&cli)
                    .arg("run")
                    .arg("--policy")
                    .arg(&bare)
                    .args(["--", "/bin/true"]))
            }),
        ));
    }
    cases.push((
        "bwrap",
        Box::new(move || run(Command::new("bwrap").args(bwrap_view).arg("/bin/true"))),
    ));
    if let Some(f) = filter {
        cases.push((
            "bwrap-seccomp",
            Box::new(move || {
                let file = std::fs::File::open(&f).expect("filter file");
                let fd = file.as_raw_fd();
                // The descriptor must survive exec: clear close-on-exec for the child only.
                let mut cmd = Command::new("bwrap");
                cmd.args(bwrap_view)
                    .args(["--seccomp", &fd.to_string(), "/bin/true"]);
                use std::os::unix::process::CommandExt;
                // SAFETY: the closure only calls fcntl, which is async-signal-safe.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                run(&mut cmd)
            }),
        ));
    }
    cases.push((
        "unshare",
        Box::new(|| run(Command::new("unshare").args(["-Urpmnif", "--fork", "/bin/true"]))),
    ));
    // The kernel's own cost of the same namespaces and mounts (bench/floor.rs).
    cases.push(("floor", Box::new(floor::case(false))));
    cases.push(("floor-init", Box::new(floor::case(true))));
    cases.push(("floor-layers", Box::new(floor::case_layers())));
    cases.push(("floor-layers-vm", Box::new(floor::case_layers_shared())));
    let lib = |policy: Policy| -> Case {
        Box::new(move || {
            let o = Sandbox::new("/bin/true")
                .policy(policy.clone())
                .output()
                .expect("valid policy");
            o.status == Status::Exited(0)
        })
    };
    let mut no_audit = Policy::default();
    no_audit.audit_denials = false;
    let mut no_landlock = Policy::default();
    no_landlock.landlock.enabled = false;
    let mut bare_policy = no_landlock.clone().seccomp(SeccompProfile::None);
    bare_policy.audit_denials = false;
    cases.push(("lib", lib(Policy::default())));
    cases.push(("lib-bare", lib(bare_policy)));
    cases.push(("lib-noaudit", lib(no_audit)));
    cases.push(("lib-nolandlock", lib(no_landlock)));
    cases.push((
        "lib-noseccomp",
        lib(Policy::default().seccomp(SeccompProfile::None)),
    ));
    cases.push((
        "lib-cgroup",
        lib(Policy::default().memory(256 << 20).pids(256)),
    ));
    // The async API on one current-thread runtime: the start on its blocking pool, the wait on the reactor.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => cases.push((
            "lib-async",
            Box::new(move || {
                rt.block_on(Sandbox::new("/bin/true").output_async())
                    .is_ok_and(|o| o.status == Status::Exited(0))
            }),
        )),
        Err(e) => println!("lib-async skipped: no tokio runtime: {e}"),
    }

    install_peers();
    println!(
        "sandbox-bench on {} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sandkasten::probe().kernel
    );
    if !sections.iter().any(|s| s == "spawn") {
        cases.clear();
    }
    println!(
        "\nspawn-to-exit of /bin/true, {runs} runs each after 5 warm-ups ({} cores, kernel {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sandkasten::probe().kernel
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>12}",
        "case", "median ms", "min ms", "max ms", "vs bwrap"
    );
    // Interleaved: every run of the round gives each case one turn, so a change in the machine's load
    // (it is shared) falls on all cases alike instead of on the one that happened to be running.
    cases.retain(|(name, _)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name)));
    let mut failed = vec![false; cases.len()];
    for (i, (name, f)) in cases.iter_mut().enumerate() {
        if !(0..5).all(|_| f()) {
            println!("{name:<16} failed; skipped");
            failed[i] = true;
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); cases.len()];
    for _ in 0..runs {
        for (i, (_, f)) in cases.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            let t = Instant::now();
            failed[i] = !f();
            times[i].push(t.elapsed());
        }
    }
    let mut results: Vec<(&str, Duration, Duration, Duration)> = Vec::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        if failed[i] {
            println!("{name:<16} failed; skipped");
            continue;
        }
        let t = &mut times[i];
        t.sort();
        results.push((name, t[t.len() / 2], t[0], t[t.len() - 1]));
    }
    let bwrap = results.iter().find(|r| r.0 == "bwrap").map(|r| r.1);
    for (name, med, min, max) in &results {
        let ratio = bwrap.map_or("-".into(), |b| {
            format!("{:.2}x", med.as_secs_f64() / b.as_secs_f64())
        });
        println!(
            "{name:<16} {:>10.2} {:>10.2} {:>10.2} {ratio:>12}",
            ms(*med),
            ms(*min),
            ms(*max)
        );
    }
    let _ = std::fs::remove_file(&bare);
    if let Some(f) = &filter_path {
        let _ = std::fs::remove_file(f);
    }
    if sections.iter().any(|s| s == "floor") {
        floor_profile(runs);
    }
    if sections.iter().any(|s| s == "throughput") {
        more::concurrent(secs, BWRAP_VIEW);
    }
    if sections.iter().any(|s| s == "vm") {
        more::vm(vm_runs, &cli);
        vm::warm_qemu(vm_runs * 3, &cli);
    }
    // Our VMM: minutes per boot on PVM, so only when asked.
    if sections.iter().any(|s| s == "builtin") {
        vm::builtin(vm_runs, &cli);
    }
    if sections.iter().any(|s| s == "stdout") {
        more::stdout(1024, 256);
    }
    if sections.iter().any(|s| s == "caller") {
        more::caller_size(runs.div_ceil(2), BWRAP_VIEW);
    }
    if sections.iter().any(|s| s == "image") {
        image::import(&cli, 5);
    }
    if sections.iter().any(|s| s == "lifecycle") {
        let runtime = std::env::var_os("SANDBOX_RUNTIME_BIN")
            .map_or_else(|| sibling("sandbox-runtime"), std::path::PathBuf::from);
        lifecycle::lifecycle(lifecycle_runs, &cli, &runtime);
    }
    let _ = std::io::stdout().flush();
}

/// One benchmark case: runs `/bin/true` once, returns whether it succeeded.
type Case = Box<dyn FnMut() -> bool>;

/// The kernel's part of a run, step by step (bench/floor.rs): the median of each step, summed by kind.
fn floor_profile(runs: usize) {
    println!("\nthe floor's steps ({runs} runs; medians per step, summed by kind)");
    match floor::step_costs(runs) {
        Some((kinds, total)) => {
            println!("{:<28} {:>6} {:>10}", "step", "count", "total us");
            for (kind, n, d) in kinds {
                println!("{kind:<28} {n:>6} {:>10.0}", d.as_secs_f64() * 1e6);
            }
            println!(
                "{:<28} {:>6} {:>10.0}",
                "all steps",
                "",
                total.as_secs_f64() * 1e6
            );
        }
        None => println!("failed: the floor's run did not complete"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn usage() -> ! {
    eprintln!(
        "usage: sandbox-bench [--runs N] [--only CASE,...] [--sections spawn,floor,throughput,vm,stdout,caller,image,lifecycle,builtin] [--secs S] [--vm-runs N] [--lifecycle-runs N]"
    );
    std::process::exit(2)
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The binary `name` next to this one.
fn sibling(name: &str) -> std::path::PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name(name)
}

/// Our default filter (without audit) as raw BPF for bwrap's `--seccomp`.
fn bpf_file() -> Option<std::path::PathBuf> {
    let filter = sandkasten::seccomp::compile(&SeccompProfile::Default, false).ok()?;
    let mut bytes = Vec::new();
    for ins in &filter.program {
        bytes.extend_from_slice(&ins.code.to_ne_bytes());
        bytes.push(ins.jt);
        bytes.push(ins.jf);
        bytes.extend_from_slice(&ins.k.to_ne_bytes());
    }
    let path = std::env::temp_dir().join(format!("sandbox-bench-{}.bpf", std::process::id()));
    std::fs::write(&path, bytes).ok()?;
    Some(path)
}
