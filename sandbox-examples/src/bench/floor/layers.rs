//! The kernel's part of the library's seccomp and landlock layers, for the floor's `floor-layers` cases.

/// Our default seccomp filter (compiled by the library, without the audit listener) and a landlock ruleset
/// over every filesystem right the kernel has, made once: the child only sets `no_new_privs`, restricts itself
/// with the ruleset and installs the filter, the kernel's work of those layers at each run. (The library
/// also creates the ruleset and adds its rules at each run: this is the lower bound.)
pub(super) struct Layers {
    filter: Vec<libc::sock_filter>,
    ruleset: std::os::fd::OwnedFd,
}

impl Layers {
    pub(super) fn new() -> Option<Layers> {
        use landlock::{
            ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, path_beneath_rules,
        };
        let filter =
            sandkasten::seccomp::compile(&sandkasten::seccomp::SeccompProfile::Default, false)
                .ok()?
                .program;
        let abi = ABI::V5;
        let created = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .ok()?
            .create()
            .ok()?
            .add_rules(path_beneath_rules(
                ["/usr", "/etc", "/dev", "/proc"],
                AccessFs::from_read(abi),
            ))
            .ok()?
            .add_rules(path_beneath_rules(["/tmp"], AccessFs::from_all(abi)))
            .ok()?;
        let ruleset: Option<std::os::fd::OwnedFd> = created.into();
        Some(Layers {
            filter,
            ruleset: ruleset?,
        })
    }

    /// # Safety
    /// Only in a child of a clone: system calls on data made before it.
    pub(super) unsafe fn apply(&self) -> bool {
        use std::os::fd::AsRawFd;
        let prog = libc::sock_fprog {
            len: self.filter.len() as u16,
            filter: self.filter.as_ptr().cast_mut(),
        };
        // SAFETY: the caller's contract; `prog` points at the filter, which outlives the calls.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    self.ruleset.as_raw_fd(),
                    0u32,
                ) == 0
                && libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &prog as *const libc::sock_fprog,
                ) == 0
        }
    }
}
