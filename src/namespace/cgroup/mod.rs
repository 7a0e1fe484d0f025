//! One cgroup per run, created only beneath the caller's own cgroup, on the unified (v2) hierarchy when it
//! has the controllers, else on the legacy (v1) hierarchies. Removed after the run, also after failures.
//!
//! The host creates the cgroup before `clone`, moves the child into it before releasing it, and reads the
//! usage after the init was reaped; the child then unshares its cgroup namespace so it sees the run's cgroup
//! as its root.

mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use crate::outcome::CgroupEnforced;

/// Errors managing a run's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be written.
    #[error("writing {value:?} to {path:?} failed: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The limits a run's cgroup enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupLimits {
    /// Memory in bytes (no swap beyond it).
    pub memory: Option<u64>,
    /// Number of tasks.
    pub pids: Option<u64>,
    /// CPU bandwidth in cores.
    pub cpus: Option<f64>,
}

impl CgroupLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpus.is_some()
    }

    /// The controllers these limits need (v2 names; v1 also needs cpuacct for accounting).
    fn controllers(&self) -> Vec<&'static str> {
        let mut c = vec!["memory", "cpu"]; // accounting of memory and CPU time, always
        if self.pids.is_some() {
            c.push("pids");
        }
        c
    }
}

/// Usage read from the run's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Peak memory of the whole tree, in bytes.
    pub peak_memory: Option<u64>,
    /// User CPU time of the whole tree.
    pub cpu_user: Option<Duration>,
    /// System CPU time of the whole tree.
    pub cpu_sys: Option<Duration>,
    /// Number of OOM kills in the cgroup.
    pub oom_kills: u64,
}

/// A run's cgroup: removed on drop.
#[derive(Debug)]
pub struct RunCgroup {
    version: &'static str,
    /// Directories, one per hierarchy (one for v2), deepest last.
    dirs: Vec<PathBuf>,
    limits: CgroupLimits,
}

/// A line of /proc/self/cgroup: (controllers, path).
pub(crate) fn own_cgroups() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// cgroup mounts from mountinfo: (mount point, fstype, super options).
pub(crate) fn cgroup_mounts() -> Vec<(PathBuf, String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mnt = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _src = r.next()?;
            let opts = r.next().unwrap_or("");
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                (
                    PathBuf::from(unescape(mnt)),
                    fstype.to_string(),
                    opts.to_string(),
                )
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// The caller's own cgroup directory on the v2 hierarchy, if mounted.
pub(crate) fn own_v2_dir() -> Option<PathBuf> {
    let own = own_cgroups();
    let (_, path) = own.iter().find(|(c, _)| c.is_empty())?;
    let (mnt, _, _) = cgroup_mounts().into_iter().find(|m| m.1 == "cgroup2")?;
    Some(join_cgroup(&mnt, path))
}

/// The caller's own cgroup directory on the v1 hierarchy of `controller`, if mounted.
pub(crate) fn own_v1_dir(controller: &str) -> Option<PathBuf> {
    let own = own_cgroups();
    let (_, path) = own
        .iter()
        .find(|(c, _)| c.split(',').any(|x| x == controller))?;
    let (mnt, _, _) = cgroup_mounts()
        .into_iter()
        .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == controller))?;
    Some(join_cgroup(&mnt, path))
}

fn join_cgroup(mnt: &Path, path: &str) -> PathBuf {
    mnt.join(path.trim_start_matches('/'))
}

/// A fresh name for a run's cgroup: it carries the creating process's pid, so that a later run can tell
/// a stale one (its creator dead) from a live one.
fn run_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "sandbox-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

/// Removes empty run cgroups in `parent` whose creating process is gone (a supervisor killed before it
/// could clean up, or a session that outlived its creator and ended). Their names carry the creator's pid;
/// a live creator's are left alone.
fn reap_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sandbox-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // kill(pid, 0) fails with ESRCH once the creator is gone. A cgroup with processes in it is a
        // session that outlived its creator: it stays.
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        let empty = match std::fs::read_to_string(e.path().join("cgroup.procs")) {
            Ok(procs) => procs.trim().is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if gone && empty {
            remove_dir(&e.path());
        }
    }
}

static REAPED: std::sync::Once = std::sync::Once::new();

impl RunCgroup {
    /// Creates the run's cgroup with `limits`. `Err` carries the reason nothing could be enforced.
    pub fn create(limits: CgroupLimits) -> Result<RunCgroup, String> {
        // Once per process: clean up after supervisors that died before removing their runs' cgroups.
        REAPED.call_once(|| {
            let mut parents: Vec<PathBuf> = own_v2_dir().into_iter().collect();
            for c in ["memory", "pids", "cpu", "cpuacct"] {
                parents.extend(own_v1_dir(c));
            }
            for p in parents {
                reap_stale(&p);
            }
        });
        let name = run_name();
        let v2_reason = match v2::create(&name, &limits) {
            Ok(dir) => {
                return Ok(RunCgroup {
                    version: "v2",
                    dirs: vec![dir],
                    limits,
                });
            }
            Err(reason) => reason,
        };
        match v1::create(&name, &limits) {
            Ok(dirs) => Ok(RunCgroup {
                version: "v1",
                dirs,
                limits,
            }),
            Err(v1_reason) => Err(format!("cgroup v2: {v2_reason}; cgroup v1: {v1_reason}")),
        }
    }

    /// Moves the process `pid` into the run's cgroup.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Usage so far.
    pub fn stats(&self) -> CgroupStats {
        if self.version == "v2" {
            v2::stats(&self.dirs[0])
        } else {
            v1::stats(&self.dirs)
        }
    }

    /// Keeps the cgroup beyond this value (a session that outlives its creator runs in it); returns its
    /// directories, to be removed with [`remove_kept`] once it is empty.
    pub fn keep(self) -> Vec<PathBuf> {
        let dirs = self.dirs.clone();
        std::mem::forget(self);
        dirs
    }

    /// What this cgroup enforces.
    pub fn enforced(&self) -> CgroupEnforced {
        CgroupEnforced {
            version: self.version.into(),
            paths: self.dirs.clone(),
            memory: self.limits.memory,
            pids: self.limits.pids,
            cpus: self.limits.cpus,
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_dir(dir);
        }
    }
}

/// Removes the directories of a cgroup kept with [`RunCgroup::keep`]; only directories beneath this
/// process's own cgroups are touched.
pub fn remove_kept(dirs: &[PathBuf]) {
    let mut parents: Vec<PathBuf> = own_v2_dir().into_iter().collect();
    for c in ["memory", "pids", "cpu", "cpuacct"] {
        parents.extend(own_v1_dir(c));
    }
    for d in dirs {
        if parents.iter().any(|p| d.parent() == Some(p.as_path())) {
            remove_dir(d);
        }
    }
}

/// Removes a cgroup directory, waiting briefly while the last tasks leave.
fn remove_dir(dir: &Path) {
    // The last tasks leave a moment after the init was reaped: back off from 50 us up to 10 ms, 2 s in all.
    let start = std::time::Instant::now();
    let mut pause = Duration::from_micros(50);
    while start.elapsed() < Duration::from_secs(2) {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            _ => return,
        }
    }
    tracing::warn!("cgroup {} still busy; left behind", dir.display());
}

/// Reads a file of one number.
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads `key value` lines and returns the value of `key`.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }

    #[test]
    fn stale_run_cgroups_are_reaped() {
        // A plain directory tree stands in for a hierarchy: reaping only reads names and removes dirs.
        let dir = std::env::temp_dir().join(format!("sandbox-reap-{}", std::process::id()));
        let live = dir.join(format!("sandbox-{}-0", std::process::id()));
        let dead = dir.join("sandbox-2147483000-3");
        let other = dir.join("unrelated");
        for d in [&live, &dead, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        reap_stale(&dir);
        assert!(live.exists() && other.exists() && !dead.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_carry_the_pid() {
        let n = run_name();
        assert!(n.starts_with(&format!("sandbox-{}-", std::process::id())));
        assert_ne!(n, run_name());
    }
}
