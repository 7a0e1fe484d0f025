//! Which backend and which VM engine a caller asks for, and the seam every backend's running sandbox
//! implements ([`Run`]): `SandboxChild` drives a namespace run, a cold VM run and a pooled run through it alone.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::outcome::Outcome;

/// Which backend runs the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Namespaces when the host allows them, else the VM backend.
    #[default]
    Auto,
    /// Linux namespaces on the host kernel.
    Namespace,
    /// A microVM with our guest kernel.
    Vm,
}

/// Which engine runs the VM backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmEngine {
    /// Our own KVM VMM on hosts with hardware KVM, else QEMU.
    #[default]
    Auto,
    /// QEMU `-M microvm` (KVM when hardware KVM is usable, else TCG).
    Qemu,
    /// Our own KVM VMM.
    Builtin,
}

/// Where the VM engines keep snapshots of their booted guest, for a [`VmPool`](crate::VmPool) and for cold
/// runs ([`Sandbox::vm_snapshots`](crate::Sandbox::vm_snapshots)). At most four snapshots of each engine
/// stay (the least recently used go first; QEMU's and our VMM's are counted apart); each is the guest's RAM
/// without its zero pages (tens of MiB on disk for a 256-512 MiB guest): our VMM's own format, or QEMU's
/// migration stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SnapshotCache {
    /// No snapshots: every VM boots.
    Off,
    /// `$XDG_CACHE_HOME/sandbox/snapshots`, else `~/.cache/sandbox/snapshots` (next to the kernel cache).
    /// The default.
    #[default]
    User,
    /// This directory.
    Dir(PathBuf),
}

impl SnapshotCache {
    /// The directory, unless snapshots are off (or there is no home to cache in).
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            SnapshotCache::Off => None,
            SnapshotCache::Dir(d) => Some(d.clone()),
            SnapshotCache::User => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|c| c.join("sandbox/snapshots")),
        }
    }
}

/// A running sandbox of one backend, as [`SandboxChild`](crate::SandboxChild) drives it.
pub(crate) trait Run: std::fmt::Debug + Send {
    /// The host pid of the sandbox's root process (the namespace sandbox's init, or the VMM).
    fn pid(&self) -> u32;
    /// A pidfd of that process: signals go through it.
    fn pidfd(&self) -> BorrowedFd<'_>;
    /// Readable when the sandbox may have ended (then ask [`Run::ended`]).
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.pidfd()
    }
    /// After [`Run::wait_fd`] was readable: whether the sandbox has ended.
    fn ended(&mut self) -> bool {
        true
    }
    /// Kills the sandbox (for a session's command: the command's process group).
    fn kill(&self) -> Result<(), i32> {
        self.signal(libc::SIGKILL)
    }
    /// Sends `signal` to the sandbox's root process (a VM session's command: into the guest), if
    /// [`Run::forwards_signals`] or it is SIGKILL.
    fn signal(&self, signal: i32) -> Result<(), i32> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a pidfd this run holds; no memory is passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match std::io::Error::last_os_error().raw_os_error() {
            // An ended process is no error.
            _ if r == 0 => Ok(()),
            Some(libc::ESRCH) => Ok(()),
            e => Err(e.unwrap_or(libc::EIO)),
        }
    }
    /// Whether the program's streams may stay open after it ended (a session's command can leave processes
    /// running in the session): its output is then read up to its end, not to end of file.
    fn streams_outlive(&self) -> bool {
        false
    }
    /// Whether a signal other than SIGKILL reaches the program (a VM does not forward signals yet).
    fn forwards_signals(&self) -> bool {
        true
    }
    /// For a cold VM run: a handle that tells when its guest has booted.
    fn boot_watch(&self) -> Option<BootWatch> {
        None
    }
    /// Collects the ended sandbox and makes the verdict. `host_timeout`: the host killed it for overrunning
    /// its wall-clock limit.
    fn finish(self: Box<Self>, wall: Duration, host_timeout: bool) -> Result<Outcome, Error>;
    /// Kills the sandbox and releases everything it holds, without a verdict.
    fn abort(self: Box<Self>);
}

/// Tells whether a VM run's guest has booted (its agent is up), from any thread: for a progress line while
/// a cold VM boots. See [`SandboxChild::boot_watch`](crate::SandboxChild::boot_watch).
#[derive(Clone)]
pub struct BootWatch(std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl BootWatch {
    #[cfg_attr(not(feature = "vm"), allow(dead_code))]
    pub(crate) fn new(ready: impl Fn() -> bool + Send + Sync + 'static) -> BootWatch {
        BootWatch(std::sync::Arc::new(ready))
    }

    /// Whether the guest's agent has reported ready.
    pub fn booted(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for BootWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BootWatch").field(&self.booted()).finish()
    }
}
