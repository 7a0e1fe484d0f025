//! `sandbox vm-assets [--build]`: where the VM backend finds its guest kernel, its static agent and QEMU,
//! and, with `--build`, builds what is missing from the sandkasten crate's own source
//! (`kernel-config/build.sh`, `scripts/build-guest.sh`; for a registry install, its copy in cargo's
//! registry) into the per-user cache, where runs then find it without any variable.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use sandkasten::vm::{AssetReport, Located, SOURCE_DIR, cache_dir, default_agent, locate};

pub fn vm_assets(build: bool, json: bool) -> Result<ExitCode, String> {
    let mut report = locate();
    if build {
        if report.kernel.path.is_none() {
            let kernel = run_build(&Path::new(SOURCE_DIR).join("kernel-config/build.sh"), None)?;
            eprintln!("sandbox: built the guest kernel {}", kernel.display());
        }
        if report.agent.path.is_none() {
            install_agent()?;
        }
        report = locate();
    }
    if json {
        println!("{}", to_json(&report));
    } else {
        print(&report);
    }
    let ready = report.kernel.path.is_some() && report.agent.path.is_some();
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs one of the crate's build scripts (progress on stderr) and returns the path its last line names.
fn run_build(script: &Path, target_dir: Option<&Path>) -> Result<PathBuf, String> {
    if !script.is_file() {
        return Err(format!(
            "{} is missing: the source this program was built from is gone (reinstall it, or build the \
             guest by hand: README.md, \"The VM backend\")",
            script.display()
        ));
    }
    eprintln!("sandbox: running {}", script.display());
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(dir) = target_dir {
        cmd.env("SANDBOX_GUEST_TARGET_DIR", dir);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("").trim();
    if last.is_empty() {
        return Err(format!("{} printed no path", script.display()));
    }
    Ok(PathBuf::from(last))
}

/// Builds the static agent and installs it where runs look for it ([`default_agent`]).
fn install_agent() -> Result<(), String> {
    let dest =
        default_agent().ok_or("no HOME or XDG_CACHE_HOME: no cache to install the agent into")?;
    let target_dir = match std::env::var_os("SANDBOX_GUEST_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => cache_dir()
            .ok_or("no HOME or XDG_CACHE_HOME")?
            .join("guest-build"),
    };
    let built = run_build(
        &Path::new(SOURCE_DIR).join("scripts/build-guest.sh"),
        Some(&target_dir),
    )?;
    let dir = dest.parent().expect("the agent path has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Copied beside, then renamed: a run never sees half an agent.
    let tmp = dir.join(format!(".sandbox-init.{}", std::process::id()));
    std::fs::copy(&built, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &dest))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "cannot install {} as {}: {e}",
                built.display(),
                dest.display()
            )
        })?;
    eprintln!("sandbox: installed the guest agent as {}", dest.display());
    Ok(())
}

fn print(report: &AssetReport) {
    let line = |name: &str, l: &Located| match &l.path {
        Some(p) => println!("{name:<8}{} ({})", p.display(), l.source),
        None => println!(
            "{name:<8}missing: {}",
            l.problem.as_deref().unwrap_or("not found")
        ),
    };
    line("kernel:", &report.kernel);
    line("agent:", &report.agent);
    line("qemu:", &report.qemu);
    if report.kernel.path.is_none() || report.agent.path.is_none() {
        println!(
            "build what is missing: sandbox vm-assets --build (the kernel takes about 12 minutes)"
        );
    }
}

fn to_json(report: &AssetReport) -> serde_json::Value {
    let one = |l: &Located| {
        serde_json::json!({
            "path": l.path,
            "source": l.source,
            "tried": l.tried,
            "problem": l.problem,
        })
    };
    serde_json::json!({
        "kernel": one(&report.kernel),
        "agent": one(&report.agent),
        "qemu": one(&report.qemu),
        "source_dir": SOURCE_DIR,
    })
}
