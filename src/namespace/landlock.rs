//! Landlock: filesystem, TCP port and scope rules, as defence in depth under the mount namespace.
//!
//! # What is allowed
//! Rights follow the mounts and nothing else: read-only binds get read and execute rights, read-write binds and
//! tmpfs get every right the ABI handles (read, write, make_*, remove_*, refer, truncate, ioctl_dev), `/dev`
//! gets read, write, truncate (`> /dev/null` opens with O_TRUNC) and ioctl_dev, `/proc` is read-only (no writes
//! to `/proc/self/mem` or `/proc/sys`), and the root itself only read_dir (so `ls /` works). Every filesystem
//! right the kernel's ABI knows is handled, so anything else is denied. With ABI 4+ and [`NetRules::handle`],
//! TCP bind and connect are allowed only on the listed ports; with ABI 6+, abstract unix sockets and signals
//! are scoped to the sandbox (the landlock crate supports scopes, so they go through it).
//!
//! # Host and child
//! Rules are inode-based. [`prepare`] (host, before clone) creates the ruleset with the crate (ABI 1 required,
//! newer rights best effort) and its TCP rules. Every path rule is added by the child after pivot_root, on
//! the mounted inode: the binds' mount points (read or write rights), tmpfs mounts, `/dev` and `/proc`. A rule
//! on a bind's host path would do on most file systems, but not on those that give each lookup a new inode
//! (9p without a cache: the shares in the VM's guest). The child uses [`add_path_rule`] and then
//! [`restrict_self`], both raw and allocation-free. Wiring, in the child after step 6 (capabilities dropped,
//! `no_new_privs` set) and before chdir/init:
//! 1. for each bind `dst` (read or write access), policy tmpfs `dst` (and the plan's `/dev/shm`):
//!    `add_path_rule(fd, dst, access)`; then `/dev` with `dev_access`, `/proc` with `proc_access`, `/` with
//!    `root_access`;
//! 2. `restrict_self(fd)`, then close `fd` (keep it out of `close_all_except` until then; it is close-on-exec).
//!
//! A failure of either is a setup failure of its own stage. The init and the program inherit the domain.
//!
//! # Limits
//! Rights along a path add up: a read-only bind nested inside a read-write bind or tmpfs gets write rights from
//! landlock (the read-only mount flag still refuses the writes). With ABI 1 the kernel refuses every rename or
//! link across directories (refer is not handleable). Reopening `/proc/self/fd/N` of a host file that no rule
//! covers (e.g. stdout redirected to a host file) is refused; pipes and sockets are not affected.

use std::ffi::CStr;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use ::landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, make_bitflags,
};
use serde::{Deserialize, Serialize};

use crate::outcome::{LandlockEnforced as Enforced, LandlockNetEnforced as NetEnforced};

/// Errors preparing the landlock ruleset, on the host.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel has no usable landlock.
    #[error(
        "landlock is unavailable: {reason}; the sandbox needs Linux 5.13 or newer built with \
         CONFIG_SECURITY_LANDLOCK and `landlock` in the `lsm=` boot parameter (see /sys/kernel/security/lsm)"
    )]
    Unavailable {
        /// What the kernel said.
        reason: &'static str,
    },
    /// The policy asks for more than the kernel's landlock ABI can enforce.
    #[error(
        "{what} needs landlock ABI {need} (Linux {kernel} or newer), but this kernel provides ABI {have}; \
         upgrade the kernel or drop that part of the policy"
    )]
    AbiTooOld {
        /// What needs it.
        what: &'static str,
        /// The ABI needed.
        need: u32,
        /// The kernel's ABI.
        have: u32,
        /// The first kernel with ABI `need`.
        kernel: &'static str,
    },
    /// A bind source cannot be opened for its rule.
    #[error(
        "landlock rule for {path:?}: {message}; check that the path exists and the caller can reach it"
    )]
    Path {
        /// The host path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The landlock crate refused a step.
    #[error("landlock {step} failed: {message}")]
    Ruleset {
        /// The step.
        step: &'static str,
        /// The crate's message.
        message: String,
    },
}

/// TCP port rules (landlock ABI 4+). UDP is not restricted (landlock's UDP rights, ABI 10, are not handled).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetRules {
    /// Ports the sandbox may bind (0: an ephemeral port).
    pub tcp_bind: Vec<u16>,
    /// Ports the sandbox may connect to.
    pub tcp_connect: Vec<u16>,
    /// Restrict TCP at all (`false`, e.g. host networking with no restriction asked: all ports open).
    pub handle: bool,
}

/// A ruleset with the host-side rules, ready for the child.
#[derive(Debug)]
pub struct Prepared {
    /// The ruleset (close-on-exec); the child adds rules to it and restricts itself with it.
    pub ruleset_fd: OwnedFd,
    /// Rights of read-only paths: execute, read_file, read_dir (and resolve_unix with ABI 9+).
    pub read_access: u64,
    /// Rights of read-write binds and tmpfs: every handled right.
    pub write_access: u64,
    /// Rights of `/dev`: read_file, write_file, read_dir, truncate, ioctl_dev.
    pub dev_access: u64,
    /// Rights of `/proc`: read_file, read_dir.
    pub proc_access: u64,
    /// Rights of `/`: read_dir.
    pub root_access: u64,
    /// What is enforced, for the verdict.
    pub enforced: Enforced,
}

const FS_NAMES: [(AccessFs, &str); 17] = [
    (AccessFs::Execute, "execute"),
    (AccessFs::WriteFile, "write_file"),
    (AccessFs::ReadFile, "read_file"),
    (AccessFs::ReadDir, "read_dir"),
    (AccessFs::RemoveDir, "remove_dir"),
    (AccessFs::RemoveFile, "remove_file"),
    (AccessFs::MakeChar, "make_char"),
    (AccessFs::MakeDir, "make_dir"),
    (AccessFs::MakeReg, "make_reg"),
    (AccessFs::MakeSock, "make_sock"),
    (AccessFs::MakeFifo, "make_fifo"),
    (AccessFs::MakeBlock, "make_block"),
    (AccessFs::MakeSym, "make_sym"),
    (AccessFs::Refer, "refer"),
    (AccessFs::Truncate, "truncate"),
    (AccessFs::IoctlDev, "ioctl_dev"),
    (AccessFs::ResolveUnix, "resolve_unix"),
];

/// Rights that apply to a file (not a directory); others make the kernel refuse a rule on a file.
pub const FILE_ACCESS: u64 = AccessFs::Execute as u64
    | AccessFs::WriteFile as u64
    | AccessFs::ReadFile as u64
    | AccessFs::Truncate as u64
    | AccessFs::IoctlDev as u64
    | AccessFs::ResolveUnix as u64;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;

/// The first kernel of each ABI.
fn kernel_of(abi: u32) -> &'static str {
    ["5.13", "5.13", "5.19", "6.2", "6.7", "6.10", "6.12", "6.15"]
        .get(abi as usize)
        .copied()
        .unwrap_or("newer than 6.15")
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

/// The kernel's landlock ABI version (host side).
pub fn abi() -> Result<u32, LandlockError> {
    // SAFETY: a NULL attribute of size 0 with the VERSION flag only asks for the version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    match v {
        v if v >= 1 => Ok(v as u32),
        _ => Err(LandlockError::Unavailable {
            reason: match errno() {
                libc::ENOSYS => "this kernel is not built with it (ENOSYS)",
                libc::EOPNOTSUPP => "it is built in but was not enabled at boot (EOPNOTSUPP)",
                _ => "landlock_create_ruleset failed unexpectedly",
            },
        }),
    }
}

fn crate_error(step: &'static str) -> impl Fn(RulesetError) -> LandlockError {
    move |e| LandlockError::Ruleset {
        step,
        message: e.to_string(),
    }
}

/// Creates the ruleset and adds the rules of the bind sources (`(host path, writable)`, opened here, on the
/// host) and of `net`. `abi_floor`: the least ABI the policy needs (1 at least; TCP rules need 4).
pub fn prepare(
    binds: &[(PathBuf, bool)],
    net: &NetRules,
    abi_floor: u32,
) -> Result<Prepared, LandlockError> {
    let have = abi()?;
    for (what, need) in [
        ("the policy", abi_floor),
        ("TCP port rules", if net.handle { 4 } else { 0 }),
    ] {
        if have < need {
            let kernel = kernel_of(need);
            return Err(LandlockError::AbiTooOld {
                what,
                need,
                have,
                kernel,
            });
        }
    }
    // The crate caps the ABI at the newest it knows and resolves best-effort requests to it.
    let known = ABI::from(have.min(i32::MAX as u32) as i32);
    let handled = AccessFs::from_all(known);
    let read = make_bitflags!(AccessFs::{Execute | ReadFile | ReadDir | ResolveUnix}) & handled;
    let dev =
        make_bitflags!(AccessFs::{ReadFile | WriteFile | ReadDir | Truncate | IoctlDev}) & handled;
    let tcp = AccessNet::BindTcp | AccessNet::ConnectTcp;
    let scopes = Scope::from_all(known);

    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI::V10))
        .map_err(crate_error("handle_access(filesystem)"))?;
    if net.handle {
        ruleset = ruleset
            .handle_access(tcp)
            .map_err(crate_error("handle_access(tcp)"))?;
    }
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(crate_error("scope"))?;
    }
    let mut created = ruleset
        .create()
        .map_err(crate_error("landlock_create_ruleset"))?;
    for (path, writable) in binds {
        let bad = |message: String| LandlockError::Path {
            path: path.clone(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        let fd = PathFd::new(path).map_err(|e| bad(e.to_string()))?;
        let mut access = if *writable { handled } else { read };
        if !meta.is_dir() {
            access &= BitFlags::from_bits_truncate(FILE_ACCESS);
        }
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(crate_error("landlock_add_rule(path)"))?;
    }
    if net.handle {
        let ports = (net.tcp_bind.iter().map(|&p| (p, AccessNet::BindTcp)))
            .chain(net.tcp_connect.iter().map(|&p| (p, AccessNet::ConnectTcp)));
        for (port, access) in ports {
            created = created
                .add_rule(NetPort::new(port, access))
                .map_err(crate_error("landlock_add_rule(port)"))?;
        }
    }
    let ruleset_fd: Option<OwnedFd> = created.into();
    let ruleset_fd = ruleset_fd.ok_or(LandlockError::Unavailable {
        reason: "the landlock crate created no ruleset",
    })?;

    let names = |set: BitFlags<AccessFs>| -> Vec<String> {
        let named = FS_NAMES.iter().filter(|(a, _)| set.contains(*a));
        named.map(|(_, n)| n.to_string()).collect()
    };
    let enforced = Enforced {
        landlock_abi: known as u32,
        landlock_fs_rights: names(handled),
        net: net.handle.then(|| NetEnforced {
            rights: vec!["bind_tcp".into(), "connect_tcp".into()],
            tcp_bind: net.tcp_bind.clone(),
            tcp_connect: net.tcp_connect.clone(),
        }),
        scopes: [
            (Scope::AbstractUnixSocket, "abstract_unix_socket"),
            (Scope::Signal, "signal"),
        ]
        .iter()
        .filter(|(s, _)| scopes.contains(*s))
        .map(|(_, n)| n.to_string())
        .collect(),
    };
    Ok(Prepared {
        ruleset_fd,
        read_access: read.bits(),
        write_access: handled.bits(),
        dev_access: dev.bits(),
        proc_access: (make_bitflags!(AccessFs::{ReadFile | ReadDir}) & handled).bits(),
        root_access: (BitFlags::from(AccessFs::ReadDir) & handled).bits(),
        enforced,
    })
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Allows `access` beneath `path` (opened here with O_PATH; on a file, only [`FILE_ACCESS`] rights are kept).
/// `access` must be within the handled rights (use the masks of [`Prepared`]); 0 adds nothing.
/// Raw and allocation-free: for the child after pivot_root.
pub fn add_path_rule(ruleset_fd: RawFd, path: &CStr, access: u64) -> Result<(), i32> {
    if access == 0 {
        return Ok(());
    }
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: an all-zero stat is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    let ret = if unsafe { libc::fstat(fd, &mut st) } < 0 {
        -1
    } else {
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let attr = PathBeneathAttr {
            allowed_access: if is_dir { access } else { access & FILE_ACCESS },
            parent_fd: fd,
        };
        // SAFETY: `attr` is the attribute LANDLOCK_RULE_PATH_BENEATH expects and outlives the call.
        unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset_fd,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        }
    };
    let err = errno();
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if ret < 0 { Err(err) } else { Ok(()) }
}

/// Restricts the calling thread (and what it forks or executes) with the ruleset. Needs `no_new_privs`.
/// Raw and allocation-free: for the child.
pub fn restrict_self(ruleset_fd: RawFd) -> Result<(), i32> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset_fd, 0u32) };
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

#[cfg(test)]
mod tests;
