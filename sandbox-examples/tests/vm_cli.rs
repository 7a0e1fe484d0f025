//! The VM backend through the CLI: the QEMU engine's verdict, the automatic fallback on a host that forbids
//! namespaces, and clean ends for broken guests and killed supervisors. Needs the guest kernel and agent
//! (`SANDBOX_KERNEL`, `SANDBOX_AGENT`; scripts/test.sh sets both).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    testkit::binary("SANDBOX_BIN", env!("CARGO_BIN_EXE_sandbox"))
}

fn report_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sandbox-vm-cli-{tag}-{}.json", std::process::id()))
}

fn run(cmd: &mut Command, tag: &str) -> (Output, serde_json::Value) {
    let report = report_path(tag);
    let out = cmd.current_dir("/").output().expect("the CLI runs");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&report);
    (out, serde_json::from_str(&text).unwrap())
}

fn sandbox(tag: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--report"])
        .arg(report_path(tag))
        .args(args);
    cmd
}

#[test]
fn vm_backend_prints_and_exits_with_the_program() {
    let (out, r) = run(
        &mut sandbox(
            "hi",
            &["--backend", "vm", "--", "/bin/sh", "-c", "echo hi; exit 3"],
        ),
        "hi",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r["backend"], "vm");
    assert_eq!(r["vm_engine"], "qemu");
    assert!(
        ["tcg", "kvm"].contains(&r["accelerator"].as_str().unwrap()),
        "{r}"
    );
    // Booted, or restored from the user's snapshot of this guest (whose boot was the snapshot's).
    assert_eq!(
        r["vm"]["boot_ms"].as_u64().is_some(),
        r["vm"]["restored"] == false,
        "{r}"
    );
    assert_eq!(r["enforced"]["seccomp"], "default");
}

/// Our own VMM: the first run boots and saves a snapshot of its guest into a fresh cache (`--vm-snapshots
/// DIR`), the second is restored from it (one boot and one restore: about 2 minutes on PVM). A caller who
/// cannot open /dev/kvm gets a clear refusal.
#[test]
fn builtin_engine_prints_and_exits_with_the_program() {
    let kvm = testkit::kvm_open();
    // A fresh cache the CLI creates, in a dir removed at the end.
    let dir = testkit::TempDir::new("cli-snapshots");
    let cache = dir.join("cache");
    let cache_arg = cache.to_str().unwrap().to_string();
    let builtin = || {
        sandbox(
            "builtin",
            &[
                "--backend",
                "vm",
                "--vm-engine",
                "builtin",
                "--vm-snapshots",
                &cache_arg,
                "--",
                "/bin/sh",
                "-c",
                "echo hi; exit 3",
            ],
        )
    };
    let mut cmd = builtin();
    if let Err(e) = kvm {
        let out = cmd.current_dir("/").output().unwrap();
        let _ = std::fs::remove_file(report_path("builtin"));
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/dev/kvm"), "{err}");
        eprintln!("this user cannot open /dev/kvm ({e}): checked the refusal only");
        return;
    }
    if !testkit::builtin_battery("the CLI on the builtin engine (a boot and a restore)") {
        return;
    }
    let (out, r) = run(&mut cmd, "builtin");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "stderr: {}\nreport: {r}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r["vm_engine"], "builtin", "{r}");
    assert_eq!(r["accelerator"], "kvm", "{r}");
    assert_eq!(r["enforced"]["seccomp"], "default", "{r}");
    assert!(r["vm"]["boot_ms"].as_u64().is_some(), "{r}");
    assert_eq!(r["vm"]["restored"], false, "{r}");
    // The same guest again: restored from the snapshot the first run saved, not booted.
    let (out, r) = run(&mut builtin(), "builtin");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "report: {r}");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r["vm"]["restored"], true, "{r}");
    assert_eq!(r["vm"]["boot_ms"], serde_json::Value::Null, "{r}");
}

/// The CLI on a host like a container with Docker's default seccomp profile: unshare, setns and clone with
/// namespace flags fail with EPERM, clone3 with ENOSYS. Auto must pick the VM and say why.
#[test]
fn auto_falls_back_to_the_vm_where_namespaces_are_forbidden() {
    let filter =
        sandkasten::seccomp::compile(&sandkasten::seccomp::SeccompProfile::Default, false).unwrap();
    let mut cmd = sandbox("fallback", &["--", "/bin/sh", "-c", "echo inside; exit 4"]);
    // SAFETY: the closure only makes two system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            sandkasten::seccomp::install(&filter.program, false)
                .map(drop)
                .map_err(std::io::Error::from_raw_os_error)
        });
    }
    let (out, r) = run(&mut cmd, "fallback");
    assert_eq!(
        out.status.code(),
        Some(4),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\n");
    assert_eq!(r["backend"], "vm", "{r}");
    let reason = r["fallback_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("namespace"), "{reason}");
}

#[test]
fn a_broken_guest_ends_in_a_clean_verdict() {
    let start = Instant::now();
    let (out, r) = run(
        sandbox("broken", &["--backend", "vm", "--", "/bin/true"])
            .env("SANDBOX_KERNEL", "/etc/hostname"),
        "broken",
    );
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(r["status"], "setup_failed");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn killing_the_cli_ends_the_vm() {
    let marker = format!("sleep {}", 900_000 + std::process::id() % 100_000);
    let mut cli = Command::new(bin())
        .args(["run", "--backend", "vm", "--", "/bin/sh", "-c"])
        .arg(format!("{marker}; true"))
        .spawn()
        .unwrap();
    let qemu_running = || count("qemu-system-x86_64") > 0;
    let start = Instant::now();
    while !qemu_running() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "QEMU did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = count("qemu-system-x86_64");
    cli.kill().unwrap();
    cli.wait().unwrap();
    let start = Instant::now();
    while count("qemu-system-x86_64") >= before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "QEMU survived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line contains `pattern` and whose parent chain includes this test process.
fn count(pattern: &str) -> usize {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(pattern) && descends_from(pid, me)
        })
        .count()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..32 {
        if pid == ancestor {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            return false;
        };
        if ppid == 0 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// `sandbox vm-assets` says where each asset was found, or where it looked and how to build it (exit 1);
/// a variable that names a missing file is never replaced by another file.
#[test]
fn vm_assets_locates_each_asset_or_says_how_to_get_it() {
    let home = testkit::TempDir::new("vm-assets-home");
    let kernel = std::env::var("SANDBOX_KERNEL").expect("SANDBOX_KERNEL");
    let out = Command::new(bin())
        .args(["vm-assets", "--json"])
        .env("HOME", home.path())
        .env_remove("XDG_CACHE_HOME")
        .env("SANDBOX_KERNEL", &kernel)
        .env("SANDBOX_AGENT", home.join("no-such-agent"))
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kernel"]["path"], kernel.as_str(), "{v}");
    assert_eq!(v["kernel"]["source"], "SANDBOX_KERNEL", "{v}");
    assert_eq!(v["agent"]["path"], serde_json::Value::Null, "{v}");
    assert_eq!(v["agent"]["tried"].as_array().unwrap().len(), 1, "{v}");
    let problem = v["agent"]["problem"].as_str().unwrap();
    assert!(
        problem.contains("no-such-agent") && problem.contains("build-guest.sh"),
        "{problem}"
    );

    let out = Command::new(bin())
        .arg("vm-assets")
        .env("HOME", home.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("SANDBOX_KERNEL")
        .env(
            "SANDBOX_AGENT",
            std::env::var("SANDBOX_AGENT").expect("SANDBOX_AGENT"),
        )
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kernel: missing") && text.contains("kernel-config/build.sh"),
        "{text}"
    );
    assert!(text.contains("(SANDBOX_AGENT)"), "{text}");
}

/// `sandbox vm-assets --build` builds the missing agent from the crate's source into the user's cache,
/// where a VM run then finds it with no SANDBOX_AGENT. As root only: it runs cargo on the checkout's
/// guest target directory (scripts/test.sh built it already, so this is quick).
#[test]
fn vm_assets_build_installs_the_agent_where_runs_find_it() {
    if !testkit::is_root() {
        eprintln!("SKIPPED as a non-root user: the build writes the checkout's target/guest");
        return;
    }
    let home = testkit::TempDir::new("vm-assets-build");
    let kernel = std::env::var("SANDBOX_KERNEL").expect("SANDBOX_KERNEL");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    let env = |c: &mut Command| {
        c.env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("SANDBOX_AGENT")
            .env("SANDBOX_KERNEL", &kernel)
            .env("SANDBOX_GUEST_TARGET_DIR", &target)
            .current_dir("/");
    };
    let mut cmd = Command::new(bin());
    cmd.args(["vm-assets", "--build", "--json"]);
    env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let installed = home.join(".cache/sandbox/agent/sandbox-init");
    assert_eq!(v["agent"]["path"], installed.to_str().unwrap(), "{v}");
    assert_eq!(v["agent"]["source"], "the agent cache", "{v}");

    let mut cmd = Command::new(bin());
    cmd.args([
        "run",
        "--backend",
        "vm",
        "--vm-engine",
        "qemu",
        "--",
        "/bin/echo",
        "found",
    ]);
    env(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "found\n", "{out:?}");
}
