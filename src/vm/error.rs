//! What can go wrong on the host side of a VM run, one variant per step: starting the VMM, turning the run
//! into the guest's specification, a pool's warm VMs, their snapshots. Each message says what failed, on
//! which path or call, and what the user can do. They become the public [`SetupFailure`] once, where a run
//! is started or finished ([`From`] below), never inside the modules.

use std::path::PathBuf;
use std::time::Duration;

use super::assets::AssetError;
use super::snapshot_cache::SnapshotError;
use crate::outcome::{SetupFailure, Stage, Status};

/// How a failed restore's message starts: the pool boots instead.
pub(crate) const RESTORE_FAILED: &str = "restoring the warm VM from its snapshot failed";

/// Errors of the VM backend's host side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmError {
    /// The guest kernel, agent or initramfs.
    #[error(transparent)]
    Assets(#[from] AssetError),
    /// No QEMU binary.
    #[error(
        "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86), or set SANDBOX_QEMU"
    )]
    NoQemu,
    /// The builtin engine's device slots.
    #[error(
        "the builtin engine offers at most {max} shared directories ({needed} needed: the system, /etc and one \
         per bind source; a network device takes one more); use fewer binds or the qemu engine"
    )]
    TooManyShares { max: usize, needed: usize },
    /// Opening /dev/kvm for the builtin engine.
    #[error(
        "the builtin engine needs KVM, and /dev/kvm cannot be opened: {0} (load kvm-intel or kvm-amd, and let \
         this user open /dev/kvm, e.g. membership of the kvm group; or use the qemu engine)"
    )]
    NoKvm(#[source] std::io::Error),
    /// A pipe or socket pair for the VM's channels.
    #[error("{call} for the VM's channels: {source} (the process may be out of descriptors)")]
    Channel {
        call: &'static str,
        source: std::io::Error,
    },
    /// Duplicating a descriptor (the caller's stdio, a channel socket, the snapshot file).
    #[error("duplicating {what} (descriptor {fd}): {source}")]
    Dup {
        what: &'static str,
        fd: i32,
        source: std::io::Error,
    },
    /// A file the VMM gets (kernel, initramfs, /dev/null).
    #[error("opening {} for the VMM: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Starting the VMM inside a namespace sandbox (or the namespace backend's own failure).
    #[error("{}", .0.message)]
    Confine(SetupFailure),
    /// Compiling the seccomp filter of a plain VMM child.
    #[error("the VMM's seccomp filter: {0}")]
    Seccomp(#[from] crate::namespace::seccomp::SeccompError),
    /// Starting the VMM as a plain child.
    #[error("starting {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// A pidfd for the VMM.
    #[error("pidfd_open of the VMM: {0} (Linux 5.3 or later is needed)")]
    Pidfd(#[source] std::io::Error),
    /// Reading one of the host's top-level system links for the guest.
    #[error("reading the link {}: {source}", path.display())]
    SystemLink {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bind source planted with a symlink or owned by another user.
    #[error(transparent)]
    BindLinks(#[from] crate::namespace::plan::PlanError),
    /// A bind source that cannot be resolved.
    #[error("bind source {}: {source}", path.display())]
    BindSource {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The guest's run specification is invalid.
    #[error("{0}")]
    Spec(String),
    /// User-mode networking on a pool whose VMs have no network device.
    #[error(
        "network = \"user\" (--net user) on a VM pool's warm VMs needs a pool made with user networking \
         (PoolOptions::user_network: each of its VMs gets a passt of its own); a VM of its own and the \
         namespace backend have it too; or choose network \"none\""
    )]
    PoolNetwork,
    /// Published ports on a pool's warm VM, whose passt was started before the run.
    #[error(
        "published ports (--publish) need a VM of its own or the namespace backend: a pool's warm VM got its \
         passt when it booted, before any run, so it publishes nothing"
    )]
    PoolPublish,
    /// A root filesystem that reached the guest's spec without being resolved into its layers.
    #[error(
        "a root filesystem (`rootfs` with `dir` or `image`) reached the VM's run spec unresolved: this is a bug \
         of sandkasten, please report it; the namespace backend runs it meanwhile"
    )]
    Rootfs,
    /// A kept writable layer on the VM backend.
    #[error(
        "--rootfs-upper (`rootfs.upper`) is not available on the VM backend (overlayfs cannot keep its writable \
         layer on a share of the VMM): run on the namespace backend, or without it (a tmpfs, discarded)"
    )]
    RootfsUpper,
    /// A pool VM with less RAM than a guest needs.
    #[error("a pool VM needs at least 128 MiB of RAM ({0} asked)")]
    PoolMemory(u64),
    /// A pool share that is not a directory.
    #[error("pool share {}: not a directory", .0.display())]
    PoolShareNotDir(PathBuf),
    /// A pool share that cannot be resolved.
    #[error("pool share {}: {source}", path.display())]
    PoolShare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bind source outside the pool's shares.
    #[error(
        "bind source {} is not inside a{} share of this VM pool (PoolOptions::shares): a warm VM cannot take \
         new shares", path.display(), if *writable { " writable" } else { "" }
    )]
    NotInPoolShare { path: PathBuf, writable: bool },
    /// The eventfd of a warm VM's readers.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// No random bytes for a cold run's end mark.
    #[error(
        "reading /dev/urandom for the run's end mark: {0} (is /dev/urandom there and readable?)"
    )]
    EndMark(#[source] std::io::Error),
    /// A warm VM started without its stdin port.
    #[error("a warm VM needs its stdin port")]
    NoStdinPort,
    /// The warm VM's agent never said READY.
    #[error("the warm VM's agent did not report ready within {0:?}")]
    ReadyTimeout(Duration),
    /// A warm VM's channel broke before READY.
    #[error("the warm VM did not boot ({why}); the guest's last words:\n{console}")]
    NotBooted { why: String, console: String },
    /// A restored guest that kept the snapshot's random state.
    #[error("the restored guest could not reseed its random generator (see its log)")]
    NotReseeded,
    /// The VMM's snapshot channel.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A warm VM restored from a snapshot failed (the snapshot is deleted; the pool boots instead).
    #[error("{RESTORE_FAILED} (the snapshot is deleted): {why}{}", said(vmm_said))]
    RestoreFailed { why: Box<VmError>, vmm_said: String },
    /// Sending a run to a warm VM.
    #[error("starting the run on a warm VM: {0}")]
    StartRun(#[source] std::io::Error),
    /// A cold VM that ended without the agent's verdict.
    #[error(
        "the VM ended without a verdict (VMM: {status:?}{}); the guest's last words:\n{console}",
        prefixed(", ", vmm_said)
    )]
    NoVerdict {
        status: Status,
        vmm_said: String,
        console: String,
    },
    /// A warm VM that ended a run without the agent's verdict.
    #[error(
        "the warm VM ended without a verdict ({why}{}); the guest's last words:\n{console}",
        prefixed(", VMM: ", vmm_said)
    )]
    WarmNoVerdict {
        why: String,
        vmm_said: String,
        console: String,
    },
}

impl VmError {
    /// A failed restore: the pool (or a cold run) boots instead.
    pub(crate) fn is_restore_failure(&self) -> bool {
        matches!(self, VmError::RestoreFailed { .. })
    }

    /// Whether the namespace sandbox meant to confine the VMM could not be made (the VMM then starts as a
    /// plain child).
    pub(crate) fn no_namespaces(&self) -> bool {
        matches!(self, VmError::Confine(f) if f.stage == Stage::Namespaces)
    }
}

fn said(vmm: &str) -> String {
    prefixed("; the VMM said: ", vmm)
}

/// `prefix` and the trimmed `text`, or nothing when it is empty.
fn prefixed(prefix: &str, text: &str) -> String {
    match text.trim() {
        "" => String::new(),
        t => format!("{prefix}{t}"),
    }
}

impl From<VmError> for SetupFailure {
    fn from(e: VmError) -> SetupFailure {
        match e {
            VmError::Confine(f) => f,
            e => SetupFailure {
                stage: Stage::Vm,
                errno: None,
                message: e.to_string(),
            },
        }
    }
}

impl From<VmError> for crate::error::Error {
    fn from(e: VmError) -> crate::error::Error {
        crate::error::Error::Setup(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_wording_and_stage() {
        let f = SetupFailure::from(VmError::RestoreFailed {
            why: Box::new(VmError::NotReseeded),
            vmm_said: " \n".into(),
        });
        assert_eq!(f.stage, Stage::Vm);
        assert_eq!(
            f.message,
            format!(
                "{RESTORE_FAILED} (the snapshot is deleted): the restored guest could not reseed its random \
                 generator (see its log)"
            )
        );
        let ns = SetupFailure {
            stage: Stage::Namespaces,
            errno: Some(1),
            message: "clone: EPERM".into(),
        };
        let e = VmError::Confine(ns.clone());
        assert!(e.no_namespaces());
        assert_eq!(SetupFailure::from(e), ns);
        let m = VmError::NoVerdict {
            status: Status::Exited(1),
            vmm_said: "".into(),
            console: "panic".into(),
        }
        .to_string();
        assert_eq!(
            m,
            "the VM ended without a verdict (VMM: Exited(1)); the guest's last words:\npanic"
        );
    }
}
