//! The unified hierarchy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CgroupLimits, CgroupStats, read_key, read_u64, write};

/// CPU bandwidth period in microseconds.
const PERIOD_US: u64 = 100_000;

/// Creates `<own cgroup>/<name>` with the limits; `Err` says why v2 cannot be used.
pub fn create(name: &str, limits: &CgroupLimits) -> Result<PathBuf, String> {
    let own = super::own_v2_dir().ok_or("no cgroup2 mount for this process")?;
    let available = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let needed = limits.controllers();
    let missing: Vec<_> = needed
        .iter()
        .filter(|c| !available.split_whitespace().any(|a| a == **c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "controllers {missing:?} are not available in {} (run under a cgroup delegated to you, e.g. \
             `systemd-run --user --scope -p Delegate=yes`)",
            own.display()
        ));
    }
    let enabled = std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    let to_enable: Vec<String> = needed
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !to_enable.is_empty() {
        write(&own.join("cgroup.subtree_control"), &to_enable.join(" ")).map_err(|e| {
            format!(
                "{e} (a cgroup that holds processes cannot enable controllers for children: run the \
                 sandbox from a leaf of a delegated subtree)"
            )
        })?;
    }
    let dir = own.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let apply = || -> Result<(), super::CgroupError> {
        if let Some(m) = limits.memory {
            write(&dir.join("memory.max"), &m.to_string())?;
            if dir.join("memory.swap.max").exists() {
                write(&dir.join("memory.swap.max"), "0")?;
            }
        }
        if let Some(p) = limits.pids {
            write(&dir.join("pids.max"), &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            let quota = ((c * PERIOD_US as f64) as u64).max(1000);
            write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
        }
        Ok(())
    };
    if let Err(e) = apply() {
        let _ = std::fs::remove_dir(&dir);
        return Err(e.to_string());
    }
    Ok(dir)
}

/// Usage of the run.
pub fn stats(dir: &Path) -> CgroupStats {
    let usec = |k| read_key(&dir.join("cpu.stat"), k).map(Duration::from_micros);
    CgroupStats {
        peak_memory: read_u64(&dir.join("memory.peak")),
        cpu_user: usec("user_usec"),
        cpu_sys: usec("system_usec"),
        oom_kills: read_key(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
    }
}
