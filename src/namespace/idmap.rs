//! The uid/gid maps of the sandbox's user namespace.
//!
//! An unprivileged caller maps the sandbox user to itself (the only mapping the kernel allows it). A root
//! caller maps the sandbox user to an unprivileged host id: a process that keeps host uid 0 could rewrite
//! root-owned host files such as sysctls even with every capability dropped.

use crate::outcome::{SetupFailure, Stage};
use crate::policy::Policy;

/// The maps to write for one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// `inside outside count` for uids.
    pub uid_map: String,
    /// `inside outside count` for gids.
    pub gid_map: String,
    /// Whether the caller is privileged (may map other ids and keep `setgroups` allowed).
    pub privileged: bool,
}

impl IdMaps {
    /// The maps for the current caller and policy.
    pub fn for_caller(policy: &Policy) -> Self {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        Self::compute(policy, euid, egid)
    }

    /// The maps for a caller with these effective ids.
    pub fn compute(policy: &Policy, euid: u32, egid: u32) -> Self {
        let privileged = euid == 0;
        let (host_uid, host_gid) = if privileged {
            (policy.host_uid, policy.host_gid)
        } else {
            (euid, egid)
        };
        IdMaps {
            uid_map: format!("{} {} 1\n", policy.uid, host_uid),
            gid_map: format!("{} {} 1\n", policy.gid, host_gid),
            privileged,
        }
    }

    /// The host uid and gid the sandbox user maps to.
    pub fn host_ids(&self) -> (u32, u32) {
        let outside = |m: &str| {
            m.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
        };
        (outside(&self.uid_map), outside(&self.gid_map))
    }

    /// Whether the sandbox may call `setgroups` to drop the caller's supplementary groups.
    pub fn may_drop_groups(&self) -> bool {
        self.privileged
    }

    /// Writes the maps for the process `pid` (which is waiting in its new user namespace).
    pub fn write(&self, pid: libc::pid_t) -> Result<(), SetupFailure> {
        let write = |file: &str, text: &str| {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, text).map_err(|e| SetupFailure {
                stage: Stage::IdMap,
                errno: e.raw_os_error(),
                message: format!(
                    "writing {text:?} to {path} failed: {e}; {}",
                    if self.privileged {
                        "check that host_uid/host_gid are valid ids"
                    } else {
                        "an unprivileged caller can only map its own uid and gid"
                    }
                ),
            })
        };
        if !self.privileged {
            write("setgroups", "deny")?;
        }
        write("uid_map", &self.uid_map)?;
        write("gid_map", &self.gid_map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_mapped_away() {
        let m = IdMaps::compute(&Policy::default(), 0, 0);
        assert_eq!(m.uid_map, "0 65534 1\n");
        assert_eq!(m.gid_map, "0 65534 1\n");
        assert!(m.may_drop_groups());
        let mut p = Policy::default().user(1000, 1000);
        p.host_uid = 2000;
        p.host_gid = 3000;
        let m = IdMaps::compute(&p, 0, 0);
        assert_eq!(m.uid_map, "1000 2000 1\n");
        assert_eq!(m.gid_map, "1000 3000 1\n");
    }

    #[test]
    fn unprivileged_maps_itself() {
        let m = IdMaps::compute(&Policy::default(), 1234, 99);
        assert_eq!(m.uid_map, "0 1234 1\n");
        assert_eq!(m.gid_map, "0 99 1\n");
        assert!(!m.may_drop_groups());
    }
}
