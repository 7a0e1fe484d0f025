//! How a VMM process is started and confined, for both engines: the channels (socketpairs at fixed
//! descriptor numbers), QEMU or our own VMM (`sandbox-init vmm`), inside a namespace sandbox of ours when the
//! host allows, else as a plain child under `no_new_privs` and seccomp, never as root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::assets::{assets, initramfs};
use super::error::VmError;
use super::qemu::{self, Accel, Machine, Port, Share};
use super::snapshot_cache::{GuestKey, Plan, Session};
use crate::guest::ShareFs;
use crate::namespace::{self, Launch, sys};
use crate::outcome::VmInfo;
use crate::policy::{Network, Policy, SYSTEM_TOP};
use crate::vmm::process::SnapshotConfig;

/// How long a guest may take from the VMM's start to the agent's READY line before the run is abandoned.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// The same on PVM (software KVM), where a boot takes minutes.
const PVM_BOOT_LIMIT: Duration = Duration::from_secs(420);

/// How QEMU runs.
#[derive(Debug)]
pub(crate) enum Host {
    /// Inside a namespace sandbox of ours.
    Sandboxed(Box<namespace::Started>),
    /// As a plain child process under no_new_privs and seccomp (the host has no usable namespaces).
    Plain(std::process::Child, OwnedFd),
}

impl Host {
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
    /// The builtin VMM's snapshot channel, when it restores or may save ([`start_builtin`] with a cache).
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
    let mut vmm: Vec<(OwnedFd, RawFd)> = vec![(console_vmm, 3), (control_vmm, 4)];
    let mut ports = vec![(crate::guest::CONTROL_PORT, 4)];
    let stdin = if with_stdin {
        let (host, theirs) = socket_pair()?;
        vmm.push((theirs, 5));
        ports.push((crate::guest::STDIN_PORT, 5));
        Some(host)
    } else {
        None
    };
    let (stdout, stdout_vmm) = socket_pair()?;
    let (stderr, stderr_vmm) = socket_pair()?;
    vmm.push((stdout_vmm, 6));
    vmm.push((stderr_vmm, 7));
    ports.push((crate::guest::STDOUT_PORT, 6));
    ports.push((crate::guest::STDERR_PORT, 7));
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

/// Which VMM runs a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// QEMU `-M microvm`.
    Qemu,
    /// Our own VMM (`sandbox-init vmm`), on KVM.
    Builtin,
}

impl Engine {
    /// The engine for a request: Auto takes ours where hardware KVM is usable, else QEMU.
    pub(crate) fn pick(requested: crate::VmEngine) -> Engine {
        match requested {
            crate::VmEngine::Qemu => Engine::Qemu,
            crate::VmEngine::Builtin => Engine::Builtin,
            crate::VmEngine::Auto => {
                let kvm = crate::probe::probe_kvm();
                if kvm.flavour == "hardware" && kvm.usable {
                    Engine::Builtin
                } else {
                    Engine::Qemu
                }
            }
        }
    }

    /// How long its guest may take to boot here.
    pub(crate) fn boot_limit(self) -> Duration {
        if self == Engine::Builtin && crate::probe::probe_kvm().flavour == "pvm" {
            PVM_BOOT_LIMIT
        } else {
            BOOT_LIMIT
        }
    }

    /// How the guest mounts host directories under this engine.
    pub(crate) fn share_fs(self) -> ShareFs {
        match self {
            Engine::Qemu => ShareFs::NineP,
            Engine::Builtin => ShareFs::Virtiofs,
        }
    }
}

/// Starts a VM with these shares, RAM and vCPUs; its agent then waits for a specification on the control
/// port. `deadline` bounds the VMM's life (None: until killed).
pub(crate) fn start_vm(
    engine: Engine,
    shares: &[Share],
    memory_mib: u64,
    cpus: u32,
    with_stdin: bool,
    deadline: Option<Duration>,
) -> Result<Started, VmError> {
    if engine == Engine::Builtin {
        return start_builtin(shares, memory_mib, with_stdin, deadline, None);
    }
    let qemu_bin = qemu::find_qemu().ok_or(VmError::NoQemu)?;
    let (kernel, agent) = assets()?;
    let initrd = initramfs(&agent)?;
    let (accel, accel_reason) = qemu::choose_accel(&crate::probe::probe_kvm());

    // Descriptors QEMU gets, at fixed numbers in its process.
    let NewChannels {
        host: channels,
        vmm: fds,
        ports,
        vmm_stderr: err_w,
    } = new_channels(with_stdin)?;
    let ports = ports
        .into_iter()
        .map(|(name, fd)| Port { name, fd })
        .collect();
    let machine = Machine {
        kernel: kernel.clone(),
        initramfs: initrd.clone(),
        memory_mib,
        cpus,
        accel,
        // `choose_accel` never picks KVM on kvm_pvm.
        pvm: false,
        cmdline: String::new(),
        shares: shares.to_vec(),
        ports,
        console_fd: 3,
    };
    let host = start_confined(
        &qemu_bin,
        &machine,
        &fds,
        err_w.as_raw_fd(),
        &kernel,
        &initrd,
        shares,
        deadline,
    )
    .or_else(|confined| {
        if confined.no_namespaces() {
            start_plain(&qemu_bin, &machine, &fds, err_w.as_raw_fd())
        } else {
            Err(confined)
        }
    })?;
    Ok(Started {
        host,
        channels,
        snapshot: None,
        info: VmInfo {
            engine: "qemu".into(),
            accelerator: accel.name().into(),
            accelerator_reason: accel_reason,
            boot_ms: None,
            console_tail: None,
            warm: false,
            restored: false,
        },
    })
}

/// The most virtio devices our VMM places (one virtio-mmio slot per free I/O APIC pin).
const BUILTIN_MAX_DEVICES: usize = crate::vmm::layout::VIRTIO_IRQS.len();

/// Our own VMM as a child process: the agent binary in its `vmm` role, confined like QEMU (a namespace
/// sandbox that shows it only its binary, the kernel, the initramfs and the shares; or a plain child under
/// `no_new_privs` and seccomp), then confining itself further (landlock, a seccomp allowlist). `/dev/kvm` is
/// opened here, with the caller's rights, and passed down; so are the snapshot channel (11) and file (12)
/// with a snapshot `cache` directory ([`super::snapshot_cache`]): the VM is then restored from the cached
/// snapshot of the same guest when there is one, else booted with a file to save into, and
/// [`Started::snapshot`] carries on from there.
pub(crate) fn start_builtin(
    shares: &[Share],
    memory_mib: u64,
    with_stdin: bool,
    deadline: Option<Duration>,
    cache: Option<&Path>,
) -> Result<Started, VmError> {
    if shares.len() + 1 > BUILTIN_MAX_DEVICES {
        return Err(VmError::TooManyShares {
            max: BUILTIN_MAX_DEVICES - 1,
            needed: shares.len(),
        });
    }
    let kvm_probe = crate::probe::probe_kvm();
    let kvm: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(VmError::NoKvm)?
        .into();
    let (kernel, agent) = assets()?;
    let initrd = initramfs(&agent)?;
    let pvm = kvm_probe.flavour == "pvm";

    let NewChannels {
        host: channels,
        vmm: mut fds,
        ports,
        vmm_stderr: err_w,
    } = new_channels(with_stdin)?;
    let ports: Vec<(String, RawFd)> = ports
        .into_iter()
        .map(|(n, fd)| (n.to_string(), fd))
        .collect();
    fds.push((kvm, 8));
    // The ports are announced: the agent waits for each of them.
    let cmdline = crate::vmm::kernel_cmdline(
        true,
        pvm,
        &crate::guest::ports_param(ports.iter().map(|(n, _)| n.as_str())),
    );
    let (snapshot, snapshot_config) = match cache {
        Some(dir) => snapshot_fds(
            dir, &kernel, &initrd, memory_mib, &cmdline, &ports, shares, &mut fds,
        )?,
        None => (None, None),
    };
    let mut config = crate::vmm::process::ProcessConfig {
        kernel: kernel.clone(),
        initramfs: initrd.clone(),
        cmdline,
        memory_mib,
        timeout_secs: deadline.map_or(7 * 24 * 3600, |d| d.as_secs() + 1),
        kvm_fd: 8,
        console_fd: 3,
        ports,
        shares: shares
            .iter()
            .map(|s| crate::vmm::process::ShareConfig {
                tag: s.tag.clone(),
                path: s.path.clone(),
                readonly: s.readonly,
            })
            .collect(),
        snapshot: snapshot_config,
    };
    let args = |c: &crate::vmm::process::ProcessConfig| {
        let json = serde_json::to_string(c).unwrap_or_default();
        vec![std::ffi::OsString::from("vmm"), json.into()]
    };
    let host = start_builtin_confined(
        &agent,
        &args(&config),
        &fds,
        err_w.as_raw_fd(),
        &kernel,
        &initrd,
        shares,
        deadline,
    )
    .or_else(|confined| {
        if !confined.no_namespaces() {
            return Err(confined);
        }
        // Without namespaces the VMM (nobody, for a root caller) reads the kernel and initramfs through
        // descriptors opened here.
        let (k, i) = (open(&kernel)?, open(&initrd)?);
        config.kernel = "/proc/self/fd/9".into();
        config.initramfs = "/proc/self/fd/10".into();
        let mut map: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
        map.push((k.as_raw_fd(), 9));
        map.push((i.as_raw_fd(), 10));
        start_plain_program(&agent, &args(&config), &map, err_w.as_raw_fd())
    })?;
    Ok(Started {
        host,
        channels,
        snapshot,
        info: VmInfo {
            engine: "builtin".into(),
            accelerator: "kvm".into(),
            accelerator_reason: if pvm {
                "our own VMM on KVM; this KVM is PVM (software, no VT-x/SVM): slow, and the guest gets the PVM \
                 boot options"
                    .into()
            } else {
                "our own VMM on hardware KVM".into()
            },
            boot_ms: None,
            console_tail: None,
            warm: false,
            restored: false,
        },
    })
}

/// The snapshot plan for this guest, and its descriptors for the VMM (channel 11, file 12); none when
/// the cache cannot be used (the VM then just boots).
#[allow(clippy::too_many_arguments)]
fn snapshot_fds(
    dir: &Path,
    kernel: &Path,
    initrd: &Path,
    memory_mib: u64,
    cmdline: &str,
    ports: &[(String, RawFd)],
    shares: &[Share],
    fds: &mut Vec<(OwnedFd, RawFd)>,
) -> Result<(Option<Session>, Option<SnapshotConfig>), VmError> {
    let names: Vec<&str> = ports.iter().map(|(n, _)| n.as_str()).collect();
    let mut devices = vec![format!("console {}", names.join(","))];
    devices.extend(
        shares
            .iter()
            .map(|s| format!("fs {} {}", s.tag, s.readonly)),
    );
    let key = GuestKey {
        kernel,
        initramfs: initrd,
        memory_mib,
        cmdline,
        devices,
    };
    let Some(plan) = Plan::for_guest(dir, &key) else {
        return Ok((None, None));
    };
    let file: OwnedFd = plan
        .file()
        .try_clone()
        .map_err(|source| VmError::Dup {
            what: "the snapshot file",
            fd: plan.file().as_raw_fd(),
            source,
        })?
        .into();
    let (host, vmm) = socket_pair()?;
    fds.push((vmm, 11));
    fds.push((file, 12));
    let config = SnapshotConfig {
        channel_fd: 11,
        file_fd: 12,
        restore: plan.restores(),
    };
    Ok((Some(Session::new(host, plan)), Some(config)))
}

/// The VMM inside a namespace sandbox: no system view, only its own binary, the kernel, the initramfs and
/// the shares; no network.
#[allow(clippy::too_many_arguments)]
fn start_builtin_confined(
    agent: &Path,
    args: &[std::ffi::OsString],
    fds: &[(OwnedFd, RawFd)],
    stderr: RawFd,
    kernel: &Path,
    initrd: &Path,
    shares: &[Share],
    deadline: Option<Duration>,
) -> Result<Host, VmError> {
    let mut policy = Policy::default()
        .ro_bind(agent, "/sandbox-vmm")
        .ro_bind(kernel, kernel)
        .ro_bind(initrd, initrd)
        .network(Network::None);
    policy.system = false;
    for s in shares {
        policy = if s.readonly {
            policy.ro_bind(&s.path, &s.path)
        } else {
            policy.bind(&s.path, &s.path)
        };
    }
    spawn_confined(
        std::ffi::OsStr::new("/sandbox-vmm"),
        args,
        fds,
        stderr,
        policy,
        deadline,
    )
}

/// QEMU inside a namespace sandbox: the system read-only, the kernel, the initramfs and the shares bound,
/// /dev/kvm only with KVM, no network.
#[allow(clippy::too_many_arguments)]
fn start_confined(
    qemu_bin: &Path,
    machine: &Machine,
    fds: &[(OwnedFd, RawFd)],
    stderr: RawFd,
    kernel: &Path,
    initrd: &Path,
    shares: &[Share],
    deadline: Option<Duration>,
) -> Result<Host, VmError> {
    let mut policy = Policy::default()
        .ro_bind(kernel, kernel)
        .ro_bind(initrd, initrd)
        .network(Network::None);
    for s in shares {
        if s.path == Path::new("/etc")
            || SYSTEM_TOP.iter().any(|t| s.path == Path::new("/").join(t))
        {
            continue; // already in the system view
        }
        policy = if s.readonly {
            policy.ro_bind(&s.path, &s.path)
        } else {
            policy.bind(&s.path, &s.path)
        };
    }
    if machine.accel == Accel::Kvm {
        policy.devices.push("/dev/kvm".into());
    }
    spawn_confined(
        qemu_bin.as_os_str(),
        &machine.args(),
        fds,
        stderr,
        policy,
        deadline,
    )
}

/// A VMM in a namespace sandbox with `policy` (its view), its descriptors in place, stdin and stdout on
/// /dev/null, no audit of denied calls, ended at `deadline`.
fn spawn_confined(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    fds: &[(OwnedFd, RawFd)],
    stderr: RawFd,
    mut policy: Policy,
    deadline: Option<Duration>,
) -> Result<Host, VmError> {
    policy.timeout = deadline;
    policy.audit_denials = false;
    let extra: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let null = open(Path::new("/dev/null"))?;
    let launch = Launch {
        program,
        args,
        env: &[],
        cwd: None,
        policy: &policy,
        stdio: [null.as_raw_fd(), null.as_raw_fd(), stderr],
        extra_fds: &extra,
    };
    namespace::spawn(&launch)
        .map(|s| Host::Sandboxed(Box::new(s)))
        .map_err(VmError::Confine)
}

/// QEMU as a plain child: its descriptors in place, `no_new_privs`, our default seccomp filter, and never
/// as root (a root caller's QEMU becomes nobody).
fn start_plain(
    qemu_bin: &Path,
    machine: &Machine,
    fds: &[(OwnedFd, RawFd)],
    stderr: RawFd,
) -> Result<Host, VmError> {
    // The kernel and initramfs are opened here and reached through /proc/self/fd, so a root caller's QEMU,
    // running as nobody, needs no access to the directories they sit in.
    let (kernel, initrd) = (open(&machine.kernel)?, open(&machine.initramfs)?);
    let mut machine = machine.clone();
    machine.kernel = "/proc/self/fd/8".into();
    machine.initramfs = "/proc/self/fd/9".into();
    let mut map: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    map.push((kernel.as_raw_fd(), 8));
    map.push((initrd.as_raw_fd(), 9));
    let args: Vec<std::ffi::OsString> = machine.args();
    start_plain_program(qemu_bin, &args, &map, stderr)
}

/// A VMM as a plain child: its descriptors in place (`(here, there)`, at most 12), `no_new_privs`, our
/// default seccomp filter, and never as root (a root caller's VMM becomes nobody).
fn start_plain_program(
    program: &Path,
    args: &[std::ffi::OsString],
    map: &[(RawFd, RawFd)],
    stderr: RawFd,
) -> Result<Host, VmError> {
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
                sys::set_ids(65534, 65534, true).map_err(os)?;
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
