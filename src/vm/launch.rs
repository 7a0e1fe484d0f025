//! How a VMM process is started and confined, for every engine ([`Hypervisor`]): the channels
//! (socketpairs at fixed descriptor numbers), then the engine's program (QEMU, or our own VMM as
//! `sandbox-init vmm`) inside a namespace sandbox of ours when the host allows, else as a plain child under
//! `no_new_privs` and seccomp, never as root.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::assets::{assets, initramfs};
use super::error::VmError;
pub(crate) use super::hypervisor::Engine;
use super::hypervisor::{Invocation, Request};
use super::qemu::Share;
use super::snapshot_cache::Session;
use crate::namespace::{self, Launch, sys};
use crate::outcome::VmInfo;
use crate::policy::{IdMapping, Network, Policy, SYSTEM_TOP};

/// The descriptor number of the serial console's socket in the VMM.
const CONSOLE_FD: RawFd = 3;
/// The VMM's descriptor of its socket to passt (after the channels 3-7 and the plain VMM's files 8 and 9).
const NET_FD: RawFd = 10;

/// How the VMM runs.
#[derive(Debug)]
pub(crate) enum Host {
    /// Inside a namespace sandbox of ours.
    Sandboxed(Box<namespace::Started>),
    /// As a plain child process under no_new_privs and seccomp (the host has no usable namespaces).
    Plain(std::process::Child, OwnedFd),
}

impl Host {
    /// The VMM's process id (or that of the sandbox's init that confines it).
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Host::Sandboxed(s) => s.pid as u32,
            Host::Plain(c, _) => c.id(),
        }
    }

    /// A pidfd of that process.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        match self {
            Host::Sandboxed(s) => s.pidfd.as_fd(),
            Host::Plain(_, fd) => fd.as_fd(),
        }
    }

    /// Kills the VMM (and its confining sandbox) and reaps it.
    pub(crate) fn abort(self) {
        match self {
            Host::Sandboxed(s) => s.abort(),
            Host::Plain(mut c, _) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A pipe as `(read end, write end)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), VmError> {
    let (r, w) = std::io::pipe().map_err(|source| VmError::Channel {
        call: "pipe",
        source,
    })?;
    Ok((r.into(), w.into()))
}

/// A connected socket pair: `(host end, QEMU's end)`.
pub(crate) fn socket_pair() -> Result<(UnixStream, OwnedFd), VmError> {
    let (host, qemu) = UnixStream::pair().map_err(|source| VmError::Channel {
        call: "socketpair",
        source,
    })?;
    Ok((host, qemu.into()))
}

/// The host ends of a booting VM's channels.
pub(crate) struct VmChannels {
    /// The serial console (the kernel log).
    pub console: UnixStream,
    /// The control port (specification in, READY and verdicts out).
    pub control: UnixStream,
    /// The stdin port, when asked for.
    pub stdin: Option<UnixStream>,
    /// The stdout port.
    pub stdout: UnixStream,
    /// The stderr port.
    pub stderr: UnixStream,
    /// The VMM's own standard error.
    pub vmm_stderr: std::fs::File,
}

/// A VM being started: its process and channels.
pub(crate) struct Started {
    pub(crate) host: Host,
    pub(crate) channels: VmChannels,
    pub(crate) info: VmInfo,
    /// The VMM's snapshot channel, when it restores or may save ([`start_vm`] with a cache).
    pub(crate) snapshot: Option<Session>,
}

/// The channels of a VM about to start: the host's ends, and the VMM's ends at their descriptor numbers
/// (console 3, control 4, stdin 5 when asked for, stdout 6, stderr 7) with the port names.
struct NewChannels {
    host: VmChannels,
    vmm: Vec<(OwnedFd, RawFd)>,
    ports: Vec<(&'static str, RawFd)>,
    /// The write end of the VMM's standard error.
    vmm_stderr: OwnedFd,
}

fn new_channels(with_stdin: bool) -> Result<NewChannels, VmError> {
    let (console, console_vmm) = socket_pair()?;
    let (control, control_vmm) = socket_pair()?;
    let mut vmm: Vec<(OwnedFd, RawFd)> = vec![(console_vmm, CONSOLE_FD), (control_vmm, 4)];
    let mut ports = vec![(crate::protocol::CONTROL_PORT, 4)];
    let stdin = if with_stdin {
        let (host, theirs) = socket_pair()?;
        vmm.push((theirs, 5));
        ports.push((crate::protocol::STDIN_PORT, 5));
        Some(host)
    } else {
        None
    };
    let (stdout, stdout_vmm) = socket_pair()?;
    let (stderr, stderr_vmm) = socket_pair()?;
    vmm.push((stdout_vmm, 6));
    vmm.push((stderr_vmm, 7));
    ports.push((crate::protocol::STDOUT_PORT, 6));
    ports.push((crate::protocol::STDERR_PORT, 7));
    let (err_r, err_w) = pipe()?;
    Ok(NewChannels {
        host: VmChannels {
            console,
            control,
            stdin,
            stdout,
            stderr,
            vmm_stderr: std::fs::File::from(err_r),
        },
        vmm,
        ports,
        vmm_stderr: err_w,
    })
}

/// The guest kernel, the agent, and the initramfs packed from it.
pub(crate) fn guest_files() -> Result<(PathBuf, PathBuf, PathBuf), VmError> {
    let (kernel, agent) = assets()?;
    let initrd = initramfs(&agent)?;
    Ok((kernel, agent, initrd))
}

/// Starts a VM with these shares, RAM and vCPUs on `engine`; its agent then waits for a specification on the
/// control port. `deadline` bounds the VMM's life (None: until killed). With a snapshot `cache` directory
/// (an engine with snapshots), the VM is restored from the cached snapshot of the same guest when there is
/// one, else booted with a file to save into, and [`Started::snapshot`] carries on from there.
pub(crate) fn start_vm(
    engine: Engine,
    shares: &[Share],
    (memory_mib, cpus): (u64, u32),
    with_stdin: bool,
    deadline: Option<Duration>,
    cache: Option<&Path>,
    net: Option<&OwnedFd>,
) -> Result<Started, VmError> {
    // A network device takes a slot of its own.
    if let Some(max) = engine
        .max_shares()
        .map(|m| m.saturating_sub(usize::from(net.is_some())))
        && shares.len() > max
    {
        return Err(VmError::TooManyShares {
            max,
            needed: shares.len(),
        });
    }
    let NewChannels {
        host: channels,
        vmm: mut fds,
        ports,
        vmm_stderr: err_w,
    } = new_channels(with_stdin)?;
    let net_fd = match net {
        Some(socket) => {
            let ours = socket.try_clone().map_err(|source| VmError::Dup {
                what: "passt's socket",
                fd: socket.as_raw_fd(),
                source,
            })?;
            fds.push((ours, NET_FD));
            Some(NET_FD)
        }
        None => None,
    };
    let mut invocation = engine.invocation(&Request {
        shares,
        memory_mib,
        cpus,
        deadline,
        cache: cache.filter(|_| engine.snapshots()),
        ports: &ports,
        console_fd: CONSOLE_FD,
        net_fd,
    })?;
    fds.append(&mut invocation.fds);
    let stderr = err_w.as_raw_fd();
    let host = start_confined(&invocation, &fds, stderr, deadline).or_else(|confined| {
        if confined.no_namespaces() {
            start_plain(&invocation, &fds, stderr)
        } else {
            Err(confined)
        }
    })?;
    Ok(Started {
        host,
        channels,
        info: invocation.info,
        snapshot: invocation.snapshot,
    })
}

/// The VMM inside a namespace sandbox: no network; it sees its own program, the kernel, the initramfs and
/// the shares, and the host's system read-only only when the engine needs it (with /dev/kvm when the
/// engine opens it there). Its descriptors in place, stdin and stdout on /dev/null, no audit of denied calls,
/// ended at `deadline`.
fn start_confined(
    vmm: &Invocation,
    fds: &[(OwnedFd, RawFd)],
    stderr: RawFd,
    deadline: Option<Duration>,
) -> Result<Host, VmError> {
    let (mut policy, program) = view(vmm);
    policy.timeout = deadline;
    policy.audit_denials = false;
    let extra: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let null = open(Path::new("/dev/null"))?;
    let args = (vmm.args)(&vmm.kernel, &vmm.initramfs);
    let launch = Launch {
        serve: None,
        program,
        arg0: None,
        args: &args,
        env: &[],
        cwd: None,
        policy: &policy,
        stdio: [null.as_raw_fd(), null.as_raw_fd(), stderr],
        extra_fds: &extra,
        guest: false,
    };
    namespace::spawn(&launch)
        .map(Host::Sandboxed)
        .map_err(VmError::Confine)
}

/// The confined VMM's view, and where its program is in it.
fn view(vmm: &Invocation) -> (Policy, &std::ffi::OsStr) {
    let mut policy = Policy::default()
        .ro_bind(&vmm.kernel, &vmm.kernel)
        .ro_bind(&vmm.initramfs, &vmm.initramfs)
        .network(Network::None)
        // One id: the VMM needs no other user, and keeps the id its device access was checked for.
        .ids(IdMapping::Single);
    policy.system = vmm.system_view;
    let program = match vmm.program_at {
        Some(at) => {
            policy = policy.ro_bind(&vmm.program, at);
            std::ffi::OsStr::new(at)
        }
        None => vmm.program.as_os_str(),
    };
    for s in &vmm.shares {
        let in_system = s.path == Path::new("/etc")
            || SYSTEM_TOP.iter().any(|t| s.path == Path::new("/").join(t));
        if vmm.system_view && in_system {
            continue; // already in the system view
        }
        // A root caller's share that only root can reach (an OCI runtime's container files, say): the VMM,
        // never root itself, sees it as its own through an id-mapped bind. Shares others can read keep their
        // owners (an image's files owned by its users stay theirs in the guest).
        if !world_reachable(&s.path) {
            policy
                .idmap_binds
                .push(std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone()));
        }
        policy = if s.readonly {
            policy.ro_bind(&s.path, &s.path)
        } else {
            policy.bind(&s.path, &s.path)
        };
    }
    if vmm.kvm_device {
        policy.devices.push("/dev/kvm".into());
    }
    (policy, program)
}

/// Whether a user without any relation to `path` can open it: readable (and, for a directory, searchable)
/// by others. Its parents do not matter: the VMM's view binds it at its path under directories of ours.
fn world_reachable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => m.permissions().mode() & 0o005 == 0o005,
        Ok(m) => m.permissions().mode() & 0o004 != 0,
        Err(_) => false,
    }
}

/// The VMM as a plain child: its descriptors in place (at most 12), `no_new_privs`, our default seccomp
/// filter, and never as root (a root caller's VMM becomes nobody). The kernel and initramfs are opened here
/// and reached through /proc/self/fd, so a VMM running as nobody needs no access to the directories they
/// sit in.
fn start_plain(vmm: &Invocation, fds: &[(OwnedFd, RawFd)], stderr: RawFd) -> Result<Host, VmError> {
    let (kernel, initrd) = (open(&vmm.kernel)?, open(&vmm.initramfs)?);
    let [kernel_fd, initrd_fd] = vmm.plain_files;
    let mut map: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    map.push((kernel.as_raw_fd(), kernel_fd));
    map.push((initrd.as_raw_fd(), initrd_fd));
    let at = |fd: RawFd| PathBuf::from(format!("/proc/self/fd/{fd}"));
    let args = (vmm.args)(&at(kernel_fd), &at(initrd_fd));
    let program = vmm.program.as_path();
    use std::os::unix::process::CommandExt;
    let filter = crate::seccomp::compile(&crate::seccomp::SeccompProfile::Default, false)?;
    let map: Vec<(RawFd, RawFd)> = map.iter().copied().take(12).collect();
    let floor = map.iter().map(|&(_, n)| n + 1).max().unwrap_or(3);
    let root = nix::unistd::geteuid().is_root();
    let stderr_fd = stderr;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", namespace::DEFAULT_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system calls on
    // data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let os = |e: i32| std::io::Error::from_raw_os_error(e);
            let mut lifted = [-1; 12];
            for (i, &(src, _)) in map.iter().enumerate() {
                lifted[i] = sys::dup_above(src, floor).map_err(os)?;
            }
            for (i, &(_, target)) in map.iter().enumerate() {
                sys::dup2(lifted[i], target).map_err(os)?;
            }
            sys::dup2(stderr_fd, 2).map_err(os)?;
            if root {
                sys::set_ids(65534, 65534, true, &[]).map_err(os)?;
            }
            sys::no_new_privs().map_err(os)?;
            crate::seccomp::install(&filter.program, false).map_err(os)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| VmError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let pidfd = sys::pidfd_open(child.id() as i32)
        .map_err(|e| VmError::Pidfd(std::io::Error::from_raw_os_error(e)))?;
    // SAFETY: pidfd_open just returned this descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Host::Plain(child, pidfd))
}

/// Opens a file the VMM reads through a descriptor.
fn open(path: &Path) -> Result<std::fs::File, VmError> {
    std::fs::File::open(path).map_err(|source| VmError::Open {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mount;

    fn invocation(system_view: bool, program_at: Option<&'static str>) -> Invocation {
        let share = |path: &str, readonly| Share {
            tag: path.into(),
            path: path.into(),
            readonly,
        };
        Invocation {
            program: "/opt/vmm".into(),
            program_at,
            system_view,
            kvm_device: false,
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/init.cpio".into(),
            shares: vec![
                share("/usr", true),
                share("/etc", true),
                share("/data", false),
            ],
            fds: Vec::new(),
            args: Box::new(|_, _| Vec::new()),
            plain_files: [8, 9],
            info: VmInfo::default(),
            snapshot: None,
        }
    }

    fn binds(p: &Policy) -> Vec<(String, bool)> {
        p.mounts
            .iter()
            .filter_map(|m| match m {
                Mount::RoBind { dst, .. } => Some((dst.display().to_string(), true)),
                Mount::Bind { dst, .. } => Some((dst.display().to_string(), false)),
                Mount::Tmpfs { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_vmm_with_the_system_view_gets_no_second_bind_of_it() {
        let vmm = invocation(true, None);
        let (policy, program) = view(&vmm);
        assert!(policy.system);
        assert_eq!(program, "/opt/vmm");
        let want = [
            ("/k/vmlinux", true),
            ("/k/init.cpio", true),
            ("/data", false),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|&(p, r)| (p.into(), r)).collect();
        assert_eq!(binds(&policy), want);
        assert_eq!(policy.network, Network::None);
    }

    #[test]
    fn a_vmm_without_the_system_view_sees_its_program_and_every_share() {
        let vmm = invocation(false, Some("/sandbox-vmm"));
        let (policy, program) = view(&vmm);
        assert!(!policy.system);
        assert_eq!(program, "/sandbox-vmm");
        let got = binds(&policy);
        for want in ["/sandbox-vmm", "/usr", "/etc", "/data", "/k/vmlinux"] {
            assert!(
                got.iter().any(|(d, _)| d == want),
                "{want} missing: {got:?}"
            );
        }
        assert!(policy.devices.is_empty());
    }
}
