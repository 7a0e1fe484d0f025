//! One seam for VM engines: what differs between QEMU ([`super::qemu::Qemu`]) and our own VMM
//! ([`super::builtin::Builtin`]) is behind [`Hypervisor`]; everything else (the channels, the confined or
//! plain launch, runs, pools, snapshots) is written once against it ([`super::launch::start_vm`]).

use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::VmError;
use super::qemu::Share;
use super::snapshot_cache::Session;
use crate::outcome::VmInfo;
use crate::protocol::ShareFs;

/// A VM engine: how its machine is invoked and what it can do.
pub(crate) trait Hypervisor: Sync + std::fmt::Debug {
    /// How the guest mounts host directories under this engine (9p for QEMU, virtio-fs for ours).
    fn share_fs(&self) -> ShareFs;
    /// How long its guest may take to boot here, from the VMM's start to the agent's READY line.
    fn boot_limit(&self) -> Duration;
    /// The most directories it shares with one guest (None: no limit of its own).
    fn max_shares(&self) -> Option<usize>;
    /// Whether its VMs are restored from (and saved into) a snapshot cache.
    fn snapshots(&self) -> bool;
    /// How to start a machine for `request`: its program, arguments, descriptors and view.
    fn invocation(&self, request: &Request<'_>) -> Result<Invocation, VmError>;
}

/// The machine a caller asks for.
pub(crate) struct Request<'a> {
    /// The directories shared with the guest.
    pub shares: &'a [Share],
    /// Guest RAM.
    pub memory_mib: u64,
    /// vCPUs (where the engine offers more than one).
    pub cpus: u32,
    /// How long the VMM may live (None: until killed).
    pub deadline: Option<Duration>,
    /// The snapshot cache directory, for an engine with [`Hypervisor::snapshots`].
    pub cache: Option<&'a Path>,
    /// The guest's named ports and the descriptor numbers of their sockets in the VMM.
    pub ports: &'a [(&'static str, RawFd)],
    /// The descriptor number of the serial console's socket in the VMM.
    pub console_fd: RawFd,
    /// The descriptor number, in the VMM, of the connected stream socket to passt that the guest's network
    /// device sends its frames to (`network = "user"`).
    pub net_fd: Option<RawFd>,
}

/// A VMM's arguments, given the paths under which it reads the kernel and the initramfs.
pub(crate) type Args = Box<dyn Fn(&Path, &Path) -> Vec<OsString>>;

/// How the VMM process is started, confined ([`super::launch`]) or plain.
pub(crate) struct Invocation {
    /// The VMM's program on the host.
    pub program: PathBuf,
    /// Where its sandbox shows the program (None: at its own path, in the host's system view).
    pub program_at: Option<&'static str>,
    /// Whether its sandbox shows the host's system, read-only (QEMU needs its libraries).
    pub system_view: bool,
    /// Whether its sandbox has /dev/kvm (an engine that opens it there).
    pub kvm_device: bool,
    /// The guest kernel and initramfs, which it reads.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The directories it shares with the guest.
    pub shares: Vec<Share>,
    /// Descriptors of its own at their numbers in its process (beyond the channels').
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// Its arguments, given the paths under which it reads the kernel and the initramfs.
    pub args: Args,
    /// The descriptor numbers at which a plain child gets the kernel and the initramfs (a root caller's
    /// VMM runs as nobody and reads them through /proc/self/fd).
    pub plain_files: [RawFd; 2],
    /// What the verdict tells of the engine.
    pub info: VmInfo,
    /// The snapshot channel of a VM that restores or may save.
    pub snapshot: Option<Session>,
}

/// The engine of a run or pool: the implementation [`Engine::pick`] chose.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Engine(&'static dyn Hypervisor);

impl Engine {
    /// The engine for a request: Auto takes ours where hardware KVM is usable, else QEMU.
    pub(crate) fn pick(requested: crate::VmEngine) -> Engine {
        static QEMU: super::qemu::Qemu = super::qemu::Qemu;
        static BUILTIN: super::builtin::Builtin = super::builtin::Builtin;
        let ours = match requested {
            crate::VmEngine::Qemu => false,
            crate::VmEngine::Builtin => true,
            crate::VmEngine::Auto => {
                let kvm = crate::vmm::probe_kvm();
                kvm.flavour == crate::vmm::KvmFlavour::Hardware && kvm.usable
            }
        };
        Engine(if ours { &BUILTIN } else { &QEMU })
    }
}

impl std::ops::Deref for Engine {
    type Target = dyn Hypervisor;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}
