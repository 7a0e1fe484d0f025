//! The legacy hierarchies: one directory per controller hierarchy.

use std::path::PathBuf;
use std::time::Duration;

use super::{CgroupLimits, CgroupStats, read_key, read_u64, write};

/// CPU bandwidth period in microseconds.
const PERIOD_US: u64 = 100_000;

/// Creates `<own cgroup>/<name>` in each hierarchy the limits need; `Err` says why v1 cannot be used.
pub fn create(name: &str, limits: &CgroupLimits) -> Result<Vec<PathBuf>, String> {
    let mut controllers = vec!["memory", "cpuacct"];
    if limits.pids.is_some() {
        controllers.push("pids");
    }
    if limits.cpus.is_some() {
        controllers.push("cpu");
    }
    let mut dirs: Vec<(&str, PathBuf)> = Vec::new();
    let cleanup = |dirs: &[(&str, PathBuf)]| {
        for (_, d) in dirs {
            let _ = std::fs::remove_dir(d);
        }
    };
    for c in controllers {
        let Some(own) = super::own_v1_dir(c) else {
            cleanup(&dirs);
            return Err(format!("no v1 hierarchy with the {c} controller"));
        };
        let dir = own.join(name);
        // cpu and cpuacct may share one hierarchy: one directory serves both.
        if dirs.iter().any(|(_, d)| *d == dir) {
            dirs.push((c, dir));
            continue;
        }
        if let Err(e) = std::fs::create_dir(&dir) {
            cleanup(&dirs);
            return Err(format!("creating {}: {e}", dir.display()));
        }
        dirs.push((c, dir));
    }
    let dir_of = |c: &str| dirs.iter().find(|(k, _)| *k == c).map(|(_, d)| d.clone());
    let apply = || -> Result<(), super::CgroupError> {
        if let (Some(m), Some(d)) = (limits.memory, dir_of("memory")) {
            write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
            // memory+swap equal to memory: no swap beyond the limit (the file exists with swap accounting).
            if d.join("memory.memsw.limit_in_bytes").exists() {
                write(&d.join("memory.memsw.limit_in_bytes"), &m.to_string())?;
            }
        }
        if let (Some(p), Some(d)) = (limits.pids, dir_of("pids")) {
            write(&d.join("pids.max"), &p.to_string())?;
        }
        if let (Some(c), Some(d)) = (limits.cpus, dir_of("cpu")) {
            let quota = ((c * PERIOD_US as f64) as u64).max(1000);
            write(&d.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(())
    };
    if let Err(e) = apply() {
        cleanup(&dirs);
        return Err(e.to_string());
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for (_, d) in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    Ok(unique)
}

/// Usage of the run.
pub fn stats(dirs: &[PathBuf]) -> CgroupStats {
    let mut s = CgroupStats::default();
    for d in dirs {
        if d.join("memory.max_usage_in_bytes").exists() {
            s.peak_memory = read_u64(&d.join("memory.max_usage_in_bytes"));
            s.oom_kills = read_key(&d.join("memory.oom_control"), "oom_kill").unwrap_or(0);
        }
        if d.join("cpuacct.usage_user").exists() {
            let ns = |f: &str| read_u64(&d.join(f)).map(Duration::from_nanos);
            s.cpu_user = ns("cpuacct.usage_user");
            s.cpu_sys = ns("cpuacct.usage_sys");
        }
    }
    s
}
