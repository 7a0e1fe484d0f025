//! Capabilities a policy may keep for a program that runs as the sandbox's root (uid 0 inside): only those
//! whose power stays inside the sandbox's own user namespace, and none by default.

use serde::{Deserialize, Serialize};

/// A capability the sandbox's root may keep. Held in the sandbox's user namespace, each acts only on what that
/// namespace owns: files and processes of the mapped ids. Kept only by a program running as uid 0 inside
/// (a program started as another uid, or that switches to one, has none), under the same seccomp filter,
/// landlock rules, `no_new_privs` and mounts as without it. Capabilities that reach further (`sys_admin`,
/// `net_admin`, `net_raw`, `sys_ptrace`, `dac_read_search`, `setfcap`, `mknod`, ...) are not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Capability {
    /// `chown` files to any mapped id.
    Chown,
    /// Read, write and search files of mapped ids whatever their permission bits.
    DacOverride,
    /// Act as the owner of files of mapped ids (`chmod`, `utime`, the sticky bit).
    Fowner,
    /// Keep set-user-ID/set-group-ID bits when changing files of mapped ids (the mounts are `nosuid`).
    Fsetid,
    /// Signal the sandbox's processes of other mapped ids.
    Kill,
    /// `setgid`, `setgroups`, `initgroups` to mapped gids (`setgroups` stays refused where the kernel says
    /// `deny`: an unprivileged caller's single mapping).
    Setgid,
    /// `setuid` to mapped uids (privilege-dropping servers).
    Setuid,
    /// Bind ports below 1024 in the sandbox's own network namespace.
    NetBindService,
    /// `chroot` (the default seccomp profile refuses the call itself).
    SysChroot,
}

impl Capability {
    /// Every capability offered: what container runtimes give a container's root, without the ones that reach
    /// beyond the user namespace or open much kernel code (`net_raw`, `mknod`, `setfcap`, `setpcap`,
    /// `audit_write`).
    pub const ALL: [Capability; 9] = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fowner,
        Capability::Fsetid,
        Capability::Kill,
        Capability::Setgid,
        Capability::Setuid,
        Capability::NetBindService,
        Capability::SysChroot,
    ];

    /// The kernel's number (`CAP_*` of `linux/capability.h`).
    pub fn number(self) -> u32 {
        match self {
            Capability::Chown => 0,
            Capability::DacOverride => 1,
            Capability::Fowner => 3,
            Capability::Fsetid => 4,
            Capability::Kill => 5,
            Capability::Setgid => 6,
            Capability::Setuid => 7,
            Capability::NetBindService => 10,
            Capability::SysChroot => 18,
        }
    }

    /// The name used in policies and on the command line (`chown`, `dac_override`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Capability::Chown => "chown",
            Capability::DacOverride => "dac_override",
            Capability::Fowner => "fowner",
            Capability::Fsetid => "fsetid",
            Capability::Kill => "kill",
            Capability::Setgid => "setgid",
            Capability::Setuid => "setuid",
            Capability::NetBindService => "net_bind_service",
            Capability::SysChroot => "sys_chroot",
        }
    }

    /// Reads a name as [`Capability::name`] gives it (also `CAP_CHOWN` style, any case).
    pub fn from_name(name: &str) -> Option<Capability> {
        let n = name.to_ascii_lowercase();
        let n = n.strip_prefix("cap_").unwrap_or(&n);
        Capability::ALL.into_iter().find(|c| c.name() == n)
    }

    /// The capability mask of `caps`.
    pub fn mask(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        for c in Capability::ALL {
            assert_eq!(Capability::from_name(c.name()), Some(c));
            let upper = format!("CAP_{}", c.name().to_uppercase());
            assert_eq!(Capability::from_name(&upper), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
        }
        for refused in [
            "sys_admin",
            "net_raw",
            "CAP_SYS_PTRACE",
            "setfcap",
            "",
            "all",
        ] {
            assert_eq!(Capability::from_name(refused), None, "{refused}");
        }
        assert_eq!(
            Capability::mask(&[Capability::Chown, Capability::Setuid]),
            0b1000_0001
        );
    }
}
