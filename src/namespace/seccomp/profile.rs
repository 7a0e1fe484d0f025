//! What a seccomp profile says, as plain data: the serde types of the policy (`seccomp = "default"`, `"none"`
//! or a table), the x86_64 system call names, and the default profile with the reason for each rule. The
//! compilation to BPF and the system calls live in the parent module.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SeccompError;

/// The seccomp profile of a policy. TOML: `seccomp = "default"`, `seccomp = "none"`, or a table (a
/// [`CustomProfile`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// Allow everything except the dangerous calls of Docker's default profile (see the module docs).
    #[default]
    Default,
    /// No filter at all.
    None,
    /// A profile of one's own.
    Custom(CustomProfile),
}

/// A profile of one's own: a default action and rules for particular system calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomProfile {
    /// What happens to calls no rule matches.
    pub default_action: Action,
    /// The errno of `default_action = "errno"` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno: Option<u16>,
    /// Rules; when several match a call, the most restrictive action wins (kill, then errno, then allow).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// What the filter does with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let the call run.
    Allow,
    /// Fail the call with an errno (EPERM unless the rule says otherwise).
    Errno,
    /// Kill the whole process (SIGSYS).
    Kill,
}

/// A rule for one system call; with `args`, it matches only when every condition holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The x86_64 system call name, e.g. `openat`.
    pub syscall: String,
    /// What to do when the rule matches.
    pub action: Action,
    /// The errno of `action = "errno"` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<u16>,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCond>,
}

/// A condition on one argument of a system call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCond {
    /// Argument number, 0 to 5.
    pub index: u8,
    /// Comparison.
    pub op: CmpOp,
    /// Value compared with.
    pub value: u64,
    /// For `masked_eq`: the argument is ANDed with this before the comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<u64>,
    /// How many low bits of the argument are compared: 64 (default) or 32. Use 32 for arguments the kernel
    /// reads as `int`/`unsigned int` (ioctl requests, socket families, flags), or a caller can set high bits
    /// to slip past an `eq` rule.
    #[serde(default = "bits_64", skip_serializing_if = "is_64")]
    pub bits: u8,
}

fn bits_64() -> u8 {
    64
}

fn is_64(b: &u8) -> bool {
    *b == 64
}

/// Comparison of an [`ArgCond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// Less or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater or equal.
    Ge,
    /// `(arg & mask) == value & mask`.
    MaskedEq,
}

impl Serialize for SeccompProfile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SeccompProfile::Default => s.serialize_str("default"),
            SeccompProfile::None => s.serialize_str("none"),
            SeccompProfile::Custom(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SeccompProfile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SeccompProfile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"default\", \"none\", or a table with default_action and rules")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SeccompProfile, E> {
                match v {
                    "default" => Ok(SeccompProfile::Default),
                    "none" => Ok(SeccompProfile::None),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SeccompProfile, A::Error> {
                let d = serde::de::value::MapAccessDeserializer::new(map);
                CustomProfile::deserialize(d).map(SeccompProfile::Custom)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Reads a [`CustomProfile`] from a TOML file (`--seccomp FILE`).
pub fn load_file(path: impl AsRef<Path>) -> Result<CustomProfile, SeccompError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| SeccompError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

macro_rules! table {
    ($($sys:ident)*) => { &[$((stringify!($sys), libc::$sys)),*] };
}

/// x86_64 system calls the libc crate has a constant for (names carry the `SYS_` prefix).
#[rustfmt::skip]
static LIBC_SYSCALLS: &[(&str, i64)] = table![
    SYS_read SYS_write SYS_open SYS_close SYS_stat SYS_fstat SYS_lstat SYS_poll SYS_lseek SYS_mmap
    SYS_mprotect SYS_munmap SYS_brk SYS_rt_sigaction SYS_rt_sigprocmask SYS_rt_sigreturn SYS_ioctl SYS_pread64
    SYS_pwrite64 SYS_readv SYS_writev SYS_access SYS_pipe SYS_select SYS_sched_yield SYS_mremap SYS_msync
    SYS_mincore SYS_madvise SYS_shmget SYS_shmat SYS_shmctl SYS_dup SYS_dup2 SYS_pause SYS_nanosleep
    SYS_getitimer SYS_alarm SYS_setitimer SYS_getpid SYS_sendfile SYS_socket SYS_connect SYS_accept SYS_sendto
    SYS_recvfrom SYS_sendmsg SYS_recvmsg SYS_shutdown SYS_bind SYS_listen SYS_getsockname SYS_getpeername
    SYS_socketpair SYS_setsockopt SYS_getsockopt SYS_clone SYS_fork SYS_vfork SYS_execve SYS_exit SYS_wait4
    SYS_kill SYS_uname SYS_semget SYS_semop SYS_semctl SYS_shmdt SYS_msgget SYS_msgsnd SYS_msgrcv SYS_msgctl
    SYS_fcntl SYS_flock SYS_fsync SYS_fdatasync SYS_truncate SYS_ftruncate SYS_getdents SYS_getcwd SYS_chdir
    SYS_fchdir SYS_rename SYS_mkdir SYS_rmdir SYS_creat SYS_link SYS_unlink SYS_symlink SYS_readlink SYS_chmod
    SYS_fchmod SYS_chown SYS_fchown SYS_lchown SYS_umask SYS_gettimeofday SYS_getrlimit SYS_getrusage
    SYS_sysinfo SYS_times SYS_ptrace SYS_getuid SYS_syslog SYS_getgid SYS_setuid SYS_setgid SYS_geteuid
    SYS_getegid SYS_setpgid SYS_getppid SYS_getpgrp SYS_setsid SYS_setreuid SYS_setregid SYS_getgroups
    SYS_setgroups SYS_setresuid SYS_getresuid SYS_setresgid SYS_getresgid SYS_getpgid SYS_setfsuid
    SYS_setfsgid SYS_getsid SYS_capget SYS_capset SYS_rt_sigpending SYS_rt_sigtimedwait SYS_rt_sigqueueinfo
    SYS_rt_sigsuspend SYS_sigaltstack SYS_utime SYS_mknod SYS_uselib SYS_personality SYS_ustat SYS_statfs
    SYS_fstatfs SYS_sysfs SYS_getpriority SYS_setpriority SYS_sched_setparam SYS_sched_getparam
    SYS_sched_setscheduler SYS_sched_getscheduler SYS_sched_get_priority_max SYS_sched_get_priority_min
    SYS_sched_rr_get_interval SYS_mlock SYS_munlock SYS_mlockall SYS_munlockall SYS_vhangup SYS_modify_ldt
    SYS_pivot_root SYS__sysctl SYS_prctl SYS_arch_prctl SYS_adjtimex SYS_setrlimit SYS_chroot SYS_sync
    SYS_acct SYS_settimeofday SYS_mount SYS_umount2 SYS_swapon SYS_swapoff SYS_reboot SYS_sethostname
    SYS_setdomainname SYS_iopl SYS_ioperm SYS_init_module SYS_delete_module SYS_quotactl SYS_nfsservctl
    SYS_getpmsg SYS_putpmsg SYS_afs_syscall SYS_tuxcall SYS_security SYS_gettid SYS_readahead SYS_setxattr
    SYS_lsetxattr SYS_fsetxattr SYS_getxattr SYS_lgetxattr SYS_fgetxattr SYS_listxattr SYS_llistxattr
    SYS_flistxattr SYS_removexattr SYS_lremovexattr SYS_fremovexattr SYS_tkill SYS_time SYS_futex
    SYS_sched_setaffinity SYS_sched_getaffinity SYS_set_thread_area SYS_io_setup SYS_io_destroy
    SYS_io_getevents SYS_io_submit SYS_io_cancel SYS_get_thread_area SYS_lookup_dcookie SYS_epoll_create
    SYS_epoll_ctl_old SYS_epoll_wait_old SYS_remap_file_pages SYS_getdents64 SYS_set_tid_address
    SYS_restart_syscall SYS_semtimedop SYS_fadvise64 SYS_timer_create SYS_timer_settime SYS_timer_gettime
    SYS_timer_getoverrun SYS_timer_delete SYS_clock_settime SYS_clock_gettime SYS_clock_getres
    SYS_clock_nanosleep SYS_exit_group SYS_epoll_wait SYS_epoll_ctl SYS_tgkill SYS_utimes SYS_vserver
    SYS_mbind SYS_set_mempolicy SYS_get_mempolicy SYS_mq_open SYS_mq_unlink SYS_mq_timedsend
    SYS_mq_timedreceive SYS_mq_notify SYS_mq_getsetattr SYS_kexec_load SYS_waitid SYS_add_key SYS_request_key
    SYS_keyctl SYS_ioprio_set SYS_ioprio_get SYS_inotify_init SYS_inotify_add_watch SYS_inotify_rm_watch
    SYS_migrate_pages SYS_openat SYS_mkdirat SYS_mknodat SYS_fchownat SYS_futimesat SYS_newfstatat
    SYS_unlinkat SYS_renameat SYS_linkat SYS_symlinkat SYS_readlinkat SYS_fchmodat SYS_faccessat SYS_pselect6
    SYS_ppoll SYS_unshare SYS_set_robust_list SYS_get_robust_list SYS_splice SYS_tee SYS_sync_file_range
    SYS_vmsplice SYS_move_pages SYS_utimensat SYS_epoll_pwait SYS_signalfd SYS_timerfd_create SYS_eventfd
    SYS_fallocate SYS_timerfd_settime SYS_timerfd_gettime SYS_accept4 SYS_signalfd4 SYS_eventfd2
    SYS_epoll_create1 SYS_dup3 SYS_pipe2 SYS_inotify_init1 SYS_preadv SYS_pwritev SYS_rt_tgsigqueueinfo
    SYS_perf_event_open SYS_recvmmsg SYS_fanotify_init SYS_fanotify_mark SYS_prlimit64 SYS_name_to_handle_at
    SYS_open_by_handle_at SYS_clock_adjtime SYS_syncfs SYS_sendmmsg SYS_setns SYS_getcpu SYS_process_vm_readv
    SYS_process_vm_writev SYS_kcmp SYS_finit_module SYS_sched_setattr SYS_sched_getattr SYS_renameat2
    SYS_seccomp SYS_getrandom SYS_memfd_create SYS_kexec_file_load SYS_bpf SYS_execveat SYS_userfaultfd
    SYS_membarrier SYS_mlock2 SYS_copy_file_range SYS_preadv2 SYS_pwritev2 SYS_pkey_mprotect SYS_pkey_alloc
    SYS_pkey_free SYS_statx SYS_rseq SYS_pidfd_send_signal SYS_io_uring_setup SYS_io_uring_enter
    SYS_io_uring_register SYS_open_tree SYS_move_mount SYS_fsopen SYS_fsconfig SYS_fsmount SYS_fspick
    SYS_pidfd_open SYS_clone3 SYS_close_range SYS_openat2 SYS_pidfd_getfd SYS_faccessat2 SYS_process_madvise
    SYS_epoll_pwait2 SYS_mount_setattr SYS_quotactl_fd SYS_landlock_create_ruleset SYS_landlock_add_rule
    SYS_landlock_restrict_self SYS_memfd_secret SYS_process_mrelease SYS_futex_waitv
    SYS_set_mempolicy_home_node SYS_fchmodat2 SYS_mseal
];

/// Removed or newer x86_64 system calls the libc crate has no constant for (the kernel's syscall_64.tbl).
#[rustfmt::skip]
static EXTRA_SYSCALLS: &[(&str, i64)] = &[
    ("SYS_create_module", 174), ("SYS_get_kernel_syms", 177), ("SYS_query_module", 178), ("SYS_cachestat",
    451), ("SYS_map_shadow_stack", 453), ("SYS_futex_wake", 454), ("SYS_futex_wait", 455),
    ("SYS_futex_requeue", 456), ("SYS_statmount", 457), ("SYS_listmount", 458), ("SYS_lsm_get_self_attr",
    459), ("SYS_lsm_set_self_attr", 460), ("SYS_lsm_list_modules", 461), ("SYS_setxattrat", 463),
    ("SYS_getxattrat", 464), ("SYS_listxattrat", 465), ("SYS_removexattrat", 466), ("SYS_open_tree_attr",
    467), ("SYS_file_getattr", 468), ("SYS_file_setattr", 469),
];

pub(super) fn syscalls() -> impl Iterator<Item = (&'static str, i64)> {
    LIBC_SYSCALLS
        .iter()
        .chain(EXTRA_SYSCALLS)
        .map(|&(n, nr)| (&n[4..], nr))
}

/// The x86_64 number of a system call name.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls().find(|&(n, _)| n == name).map(|(_, nr)| nr)
}

/// The name of an x86_64 system call number (host side, for the verdict).
pub fn syscall_name(nr: i32) -> Option<&'static str> {
    syscalls()
        .find(|&(_, n)| n == i64::from(nr))
        .map(|(name, _)| name)
}

/// Values of `personality(2)` Docker allows: PER_LINUX, PER_LINUX32, UNAME26 with either, and the query.
const SAFE_PERSONALITIES: [u64; 5] = [0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
/// The namespace flags of `clone(2)` (CLONE_NEWTIME is not among them: bit 7 is part of the exit signal).
pub(super) const CLONE_NEW_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

fn deny(name: &str, errno: i32, args: Vec<ArgCond>) -> Rule {
    Rule {
        syscall: name.into(),
        action: Action::Errno,
        errno: Some(errno as u16),
        args,
    }
}

fn arg32(index: u8, op: CmpOp, value: u64) -> ArgCond {
    let mask = (op == CmpOp::MaskedEq).then_some(value);
    ArgCond {
        index,
        op,
        value,
        mask,
        bits: 32,
    }
}

/// The default profile as a custom one (a starting point for users: serialise it to TOML).
pub fn default_profile() -> CustomProfile {
    let eperm = |names: &[&str]| -> Vec<Rule> {
        let rules = names.iter().map(|n| deny(n, libc::EPERM, vec![]));
        rules.collect()
    };
    let mut rules = Vec::new();
    // Kernel keyrings are not namespaced per sandbox: shared with the host, and a known attack surface.
    rules.extend(eperm(&["keyctl", "add_key", "request_key"]));
    // eBPF programs and maps: the verifier is a large attack surface.
    rules.extend(eperm(&["bpf"]));
    // Performance counters leak kernel addresses and timing; a long history of exploits.
    rules.extend(eperm(&["perf_event_open"]));
    // Lets a program stall kernel page faults at will: the classic helper of race exploits.
    rules.extend(eperm(&["userfaultfd"]));
    // io_uring runs operations no seccomp filter sees, and has been a steady source of kernel exploits.
    rules.extend(eperm(&[
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ]));
    // Loading another kernel.
    rules.extend(eperm(&["kexec_load", "kexec_file_load"]));
    // Loading and unloading kernel modules.
    rules.extend(eperm(&["init_module", "finit_module", "delete_module"]));
    // The filesystem view is fixed by the sandbox; new mounts would reach more filesystem code.
    rules.extend(eperm(&["mount", "umount2", "pivot_root", "mount_setattr"]));
    // The new mount API: the same, through detached mounts.
    rules.extend(eperm(&[
        "move_mount",
        "open_tree",
        "open_tree_attr",
        "fsopen",
        "fsmount",
    ]));
    rules.extend(eperm(&["fsconfig", "fspick"]));
    // New namespaces: in a user namespace of its own a program would get a full capability set back.
    rules.extend(eperm(&["unshare", "setns"]));
    // ... the same through clone's flags, one rule per namespace flag.
    for flag in CLONE_NEW_FLAGS {
        let flag = flag as u64;
        rules.push(deny(
            "clone",
            libc::EPERM,
            vec![arg32(0, CmpOp::MaskedEq, flag)],
        ));
    }
    // clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to clone.
    rules.push(deny("clone3", libc::ENOSYS, vec![]));
    // Opening files by handle bypasses the mount view ("shocker"); handles are only useful for that.
    rules.extend(eperm(&["open_by_handle_at", "name_to_handle_at"]));
    // The ptrace family: reading and writing other processes, a large attack surface (see module docs).
    rules.extend(eperm(&["ptrace", "process_vm_readv", "process_vm_writev"]));
    // kcmp compares kernel objects of two processes (KASLR hints); pidfd_getfd steals a descriptor.
    rules.extend(eperm(&["kcmp", "pidfd_getfd"]));
    // Other personalities (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ...) switch off exploit mitigations.
    let odd = SAFE_PERSONALITIES.map(|v| arg32(0, CmpOp::Ne, v));
    rules.push(deny("personality", libc::EPERM, odd.to_vec()));
    // Raw I/O port access.
    rules.extend(eperm(&["iopl", "ioperm"]));
    // Host swap, process accounting, disk quotas: host-wide administration.
    rules.extend(eperm(&[
        "swapon",
        "swapoff",
        "acct",
        "quotactl",
        "quotactl_fd",
    ]));
    // Rebooting (in a pid namespace: ending it from inside).
    rules.extend(eperm(&["reboot"]));
    // The kernel log leaks kernel addresses; lookup_dcookie is profiler internals.
    rules.extend(eperm(&["syslog", "lookup_dcookie"]));
    // Setting the clock: not namespaced, it is the host's.
    rules.extend(eperm(&["settimeofday", "clock_settime"]));
    // Hanging up the terminal of the session.
    rules.extend(eperm(&["vhangup"]));
    // Obsolete calls no current program needs: nothing to gain, old code to reach.
    rules.extend(eperm(&[
        "nfsservctl",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
    ]));
    rules.extend(eperm(&["create_module", "get_kernel_syms", "query_module"]));
    // TIOCSTI types into the terminal (and so into the shell outside), TIOCLINUX pastes the console
    // selection; compared on the low 32 bits like the kernel, so 0x1_0000_5412 is caught too.
    for request in [libc::TIOCSTI, libc::TIOCLINUX] {
        let cond = arg32(1, CmpOp::Eq, request);
        rules.push(deny("ioctl", libc::EPERM, vec![cond]));
    }
    // AF_PACKET sees and forges raw frames; AF_ALG is the kernel crypto API with repeated exploits;
    // AF_VSOCK talks to the hypervisor or host.
    for family in [libc::AF_PACKET, libc::AF_ALG, libc::AF_VSOCK] {
        let cond = arg32(0, CmpOp::Eq, family as u64);
        rules.push(deny("socket", libc::EPERM, vec![cond]));
    }
    // Set-user-ID and set-group-ID files: the sandbox's mounts are nosuid, but a file left in a read-write
    // bind keeps its bits on the host, where anyone who reaches it would run code as the sandbox's host uid.
    // So no call may set them (chmod and friends, and the mode of a newly created file); openat2 carries its
    // mode in memory the filter cannot read: ENOSYS makes libc use openat.
    for (name, mode_arg) in [
        ("chmod", 1),
        ("fchmod", 1),
        ("fchmodat", 2),
        ("fchmodat2", 2),
        ("creat", 1),
        ("mknod", 1),
        ("mknodat", 2),
        ("open", 2),
        ("openat", 3),
    ] {
        for bit in [libc::S_ISUID, libc::S_ISGID] {
            let cond = arg32(mode_arg, CmpOp::MaskedEq, u64::from(bit));
            rules.push(deny(name, libc::EPERM, vec![cond]));
        }
    }
    rules.push(deny("openat2", libc::ENOSYS, vec![]));
    CustomProfile {
        default_action: Action::Allow,
        default_errno: None,
        rules,
    }
}
