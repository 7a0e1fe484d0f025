//! The VM backend, host side: the same run as on the namespace backend, inside a microVM.
//!
//! In order: find the guest kernel, agent and QEMU → pack the agent into an initramfs (once per agent) →
//! turn the run into a [`RunSpec`]: the host's `/usr` and `/etc` (as the host sandbox shows them) and every
//! bind source become read-only or writable virtio-9p shares, the policy's bind sources are rewritten to
//! where the agent mounts them → start QEMU, itself confined in a namespace sandbox when the host allows
//! (it sees only the system, the kernel, the initramfs and the shares; no network), else under `no_new_privs`
//! and our seccomp filter → send the spec on the control port → when QEMU ends, read the agent's verdict.
//! The program's stdout and stderr go from their virtio-serial ports straight into pipes the host reads;
//! the kernel log goes to the serial console, kept apart and shown only when a run fails.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::assets::{assets, initramfs};
use super::qemu::{self, Accel, Machine, Port, Share};
use crate::command::Error;
use crate::guest::{Link, RunSpec, Share as GuestShare, ShareFs, find_verdict};
use crate::namespace::{self, Launch, sys};
use crate::outcome::{BackendKind, Outcome, SetupFailure, Stage, Status, TimeLimit, VmInfo};
use crate::policy::{Mount, Network, Policy, SYSTEM_TOP};

/// How long a guest may take from the VMM's start to the agent's READY line before the run is abandoned.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// The same on PVM (software KVM), where a boot takes minutes.
const PVM_BOOT_LIMIT: Duration = Duration::from_secs(420);
/// How much of the kernel log is kept for a failed run's verdict.
const CONSOLE_TAIL: usize = 16 * 1024;
/// How long the verdict waits for the output copiers after QEMU ended.
const THREAD_DRAIN: Duration = Duration::from_secs(10);
/// Guest RAM beyond the policy's memory limit: the kernel and the agent.
const GUEST_OVERHEAD_MIB: u64 = 128;

fn fail(message: impl Into<String>) -> SetupFailure {
    SetupFailure {
        stage: Stage::Vm,
        errno: None,
        message: message.into(),
    }
}

/// Where the agent mounts the share of policy bind number `i`.
fn share_dir(i: usize) -> PathBuf {
    PathBuf::from(format!("/run/sandbox/share/{i}"))
}

/// The guest's run specification, and the shares QEMU must export for it.
pub(super) fn guest_spec(launch: &Launch<'_>) -> Result<(RunSpec, Vec<Share>), String> {
    let mut shares = Vec::new();
    let mut gshares = Vec::new();
    let mut links = Vec::new();
    let mut add = |tag: String, host: PathBuf, guest: PathBuf, readonly: bool| {
        gshares.push(GuestShare {
            tag: tag.clone(),
            guest_path: guest,
            fs: ShareFs::NineP,
            readonly,
        });
        shares.push(Share {
            tag,
            path: host,
            readonly,
        });
    };
    let policy = launch.policy;
    if policy.system {
        // The guest's system is the host's, read-only: /usr and /etc (as QEMU's own sandbox shows it, i.e.
        // only the entries programs need), plus the top-level links or directories.
        for (i, name) in SYSTEM_TOP.iter().enumerate() {
            let host = Path::new("/").join(name);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(&host).map_err(|e| e.to_string())?;
                    links.push(Link { path: host, target });
                }
                Ok(m) if m.is_dir() => add(format!("sys{i}"), host.clone(), host, true),
                _ => {}
            }
        }
        add("etc".into(), "/etc".into(), "/etc".into(), true);
    }
    let mut guest_policy = policy.clone();
    for (i, m) in guest_policy.mounts.iter_mut().enumerate() {
        let (src, readonly) = match m {
            Mount::RoBind { src, .. } => (src, true),
            Mount::Bind { src, .. } => (src, false),
            Mount::Tmpfs { .. } => continue,
        };
        // The same refusal as the namespace backend's: no symlink planted by a sandbox (or another user) is
        // followed to pick what the guest sees.
        crate::namespace::plan::check_links(src).map_err(|e| e.to_string())?;
        let real = std::fs::canonicalize(&*src)
            .map_err(|e| format!("bind source {}: {e}", src.display()))?;
        // 9p shares directories: a file is reached through its directory.
        let (dir, rest) = if real.is_dir() {
            (real.clone(), PathBuf::new())
        } else {
            let parent = real.parent().unwrap_or(Path::new("/")).to_path_buf();
            (parent, PathBuf::from(real.file_name().unwrap_or_default()))
        };
        add(format!("b{i}"), dir, share_dir(i), readonly);
        *src = share_dir(i).join(rest);
    }
    // Inside the guest the agent is root; there the sandbox maps to the guest's nobody.
    guest_policy.host_uid = 65534;
    guest_policy.host_gid = 65534;
    let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
    let spec = RunSpec {
        program: text(launch.program),
        args: launch.args.iter().map(|a| text(a)).collect(),
        env: launch.env.iter().map(|(k, v)| (text(k), text(v))).collect(),
        cwd: launch.cwd.map(Path::to_path_buf),
        policy: guest_policy,
        shares: gshares,
        links,
        serve: false,
    };
    spec.validate()?;
    Ok((spec, shares))
}

/// Text collected by a reader thread, keeping at most the last `cap` bytes.
#[derive(Clone, Default)]
pub(super) struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    pub(super) fn reader(
        &self,
        mut from: impl Read + Send + 'static,
        cap: usize,
    ) -> JoinHandle<()> {
        let tail = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(&buf[..n]);
                if t.len() > cap {
                    let cut = t.len() - cap;
                    t.drain(..cut);
                }
            }
        })
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// How QEMU runs.
#[derive(Debug)]
pub(super) enum Host {
    /// Inside a namespace sandbox of ours.
    Sandboxed(Box<namespace::Started>),
    /// As a plain child process under no_new_privs and seccomp (the host has no usable namespaces).
    Plain(std::process::Child, OwnedFd),
}

/// A running VM, host side.
pub(crate) struct VmRun {
    host: Host,
    control: Tail,
    console: Tail,
    qemu_stderr: Tail,
    threads: Vec<JoinHandle<()>>,
    info: VmInfo,
    fallback_reason: Option<String>,
    boot_limit: Duration,
}

impl std::fmt::Debug for VmRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRun").field("host", &self.host).finish()
    }
}

/// A pipe as `(read end, write end)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), SetupFailure> {
    let (r, w) = std::io::pipe().map_err(|e| fail(format!("pipe: {e}")))?;
    Ok((r.into(), w.into()))
}

/// A connected socket pair: `(host end, QEMU's end)`.
pub(super) fn socket_pair() -> Result<(UnixStream, OwnedFd), SetupFailure> {
    let (host, qemu) = UnixStream::pair().map_err(|e| fail(format!("socketpair: {e}")))?;
    Ok((host, qemu.into()))
}

pub(super) fn is_dev_null(fd: RawFd) -> bool {
    // SAFETY: `fd` stays open for the duration of the call (the caller owns it); ManuallyDrop keeps it so.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let null = std::fs::metadata("/dev/null").ok();
    f.metadata().is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.file_type().is_char_device() && null.is_some_and(|n| n.rdev() == m.rdev())
    })
}

/// A duplicate of `fd` (the host's own stream `inherit` for -1).
fn dup(fd: RawFd, inherit: RawFd) -> Result<OwnedFd, SetupFailure> {
    let src = if fd >= 0 { fd } else { inherit };
    // SAFETY: borrowing a descriptor that stays open for this call.
    let b = unsafe { BorrowedFd::borrow_raw(src) };
    b.try_clone_to_owned()
        .map_err(|e| fail(format!("duplicating descriptor {src}: {e}")))
}

/// Copies the caller's stdin into the guest's stdin port. QEMU drops what arrives before the guest opened the
/// port, and a hang-up (end of file) ends the port at once, so: wait for the agent's READY line (its ports are
/// open then), copy, wait until QEMU has taken every byte from the socket, then hang up.
fn relay_stdin(source: OwnedFd, mut to: UnixStream, control: Tail, boot_limit: Duration) {
    let start = Instant::now();
    while !control.text().contains(crate::guest::READY_PREFIX) {
        if start.elapsed() > boot_limit {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut from = std::fs::File::from(source);
    if std::io::copy(&mut from, &mut to).is_err() {
        return;
    }
    let drained = Instant::now();
    while unread(&to) > 0 && drained.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Writes all of `buf` to a socket with `MSG_NOSIGNAL`: a peer that is gone gives EPIPE, never a SIGPIPE
/// to the caller's process.
fn send_all(s: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the socket stays open for the call.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Bytes written to a socket that its peer has not read yet (SIOCOUTQ); 0 when unknown.
fn unread(s: &UnixStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 { 0 } else { n }
}

/// The host ends of a booting VM's channels.
pub(super) struct VmChannels {
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
pub(super) struct Started {
    pub host: Host,
    pub channels: VmChannels,
    pub info: VmInfo,
}

/// Guest RAM and vCPUs for a policy's limits.
pub(super) fn machine_size(policy: &Policy) -> (u64, u32) {
    let memory_mib = policy
        .limits
        .memory
        .map_or(256, |m| (m >> 20) + GUEST_OVERHEAD_MIB)
        .max(128);
    let cpus = policy
        .limits
        .cpus
        .map_or(1, |c| c.ceil().clamp(1.0, 8.0) as u32);
    (memory_mib, cpus)
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

fn new_channels(with_stdin: bool) -> Result<NewChannels, SetupFailure> {
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
pub(super) fn start_vm(
    engine: Engine,
    shares: &[Share],
    memory_mib: u64,
    cpus: u32,
    with_stdin: bool,
    deadline: Option<Duration>,
) -> Result<Started, SetupFailure> {
    if engine == Engine::Builtin {
        return start_builtin(shares, memory_mib, with_stdin, deadline);
    }
    let qemu_bin = qemu::find_qemu().ok_or_else(|| {
        fail("qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86), or set SANDBOX_QEMU")
    })?;
    let (kernel, agent) = assets().map_err(fail)?;
    let initrd = initramfs(&agent).map_err(|e| fail(format!("packing the initramfs: {e}")))?;
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
        if confined.stage == Stage::Namespaces {
            start_plain(&qemu_bin, &machine, &fds, err_w.as_raw_fd())
        } else {
            Err(confined)
        }
    })?;
    Ok(Started {
        host,
        channels,
        info: VmInfo {
            engine: "qemu".into(),
            accelerator: accel.name().into(),
            accelerator_reason: accel_reason,
            boot_ms: None,
            console_tail: None,
            warm: false,
        },
    })
}

/// The most virtio devices our VMM places (virtio-mmio slots on legacy IRQs until it writes an MP table).
const BUILTIN_MAX_DEVICES: usize = 6;

/// Our own VMM as a child process: the agent binary in its `vmm` role, confined like QEMU (a namespace
/// sandbox that shows it only its binary, the kernel, the initramfs and the shares; or a plain child under
/// `no_new_privs` and seccomp), then confining itself further (landlock, a seccomp allowlist). `/dev/kvm` is
/// opened here, with the caller's rights, and passed down.
fn start_builtin(
    shares: &[Share],
    memory_mib: u64,
    with_stdin: bool,
    deadline: Option<Duration>,
) -> Result<Started, SetupFailure> {
    if shares.len() + 1 > BUILTIN_MAX_DEVICES {
        return Err(fail(format!(
            "the builtin engine offers at most {} shared directories ({} needed: the system, /etc and one \
             per bind source); use fewer binds or the qemu engine",
            BUILTIN_MAX_DEVICES - 1,
            shares.len()
        )));
    }
    let kvm_probe = crate::probe::probe_kvm();
    let kvm: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| {
            fail(format!(
                "the builtin engine needs KVM, and /dev/kvm cannot be opened: {e} (load kvm-intel or kvm-amd, \
                 and let this user open /dev/kvm, e.g. membership of the kvm group; or use the qemu engine)"
            ))
        })?
        .into();
    let (kernel, agent) = assets().map_err(fail)?;
    let initrd = initramfs(&agent).map_err(|e| fail(format!("packing the initramfs: {e}")))?;
    let pvm = kvm_probe.flavour == "pvm";

    let NewChannels {
        host: channels,
        vmm: mut fds,
        ports,
        vmm_stderr: err_w,
    } = new_channels(with_stdin)?;
    let ports = ports
        .into_iter()
        .map(|(n, fd)| (n.to_string(), fd))
        .collect();
    fds.push((kvm, 8));
    let mut config = crate::vmm::process::ProcessConfig {
        kernel: kernel.clone(),
        initramfs: initrd.clone(),
        cmdline: crate::vmm::kernel_cmdline(pvm, ""),
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
        if confined.stage != Stage::Namespaces {
            return Err(confined);
        }
        // Without namespaces the VMM (nobody, for a root caller) reads the kernel and initramfs through
        // descriptors opened here.
        let open =
            |p: &Path| std::fs::File::open(p).map_err(|e| fail(format!("{}: {e}", p.display())));
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
        },
    })
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
) -> Result<Host, SetupFailure> {
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
    policy.timeout = deadline;
    policy.audit_denials = false;
    let extra: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let null = std::fs::File::open("/dev/null").map_err(|e| fail(format!("/dev/null: {e}")))?;
    let launch = Launch {
        program: std::ffi::OsStr::new("/sandbox-vmm"),
        args,
        env: &[],
        cwd: None,
        policy: &policy,
        stdio: [null.as_raw_fd(), null.as_raw_fd(), stderr],
        extra_fds: &extra,
    };
    namespace::spawn(&launch).map(|s| Host::Sandboxed(Box::new(s)))
}

/// Starts the run in a VM.
pub(crate) fn spawn(
    launch: &Launch<'_>,
    fallback_reason: Option<String>,
    engine: Engine,
) -> Result<VmRun, SetupFailure> {
    let (mut spec, shares) = guest_spec(launch).map_err(fail)?;
    for s in &mut spec.shares {
        s.fs = engine.share_fs();
    }
    let policy = launch.policy;
    let (memory_mib, cpus) = machine_size(policy);
    let stdin = launch.stdio[0];
    let with_stdin = !(stdin >= 0 && is_dev_null(stdin));
    // Before the VM starts: a failure here leaves nothing to clean up.
    let stdin_source = if with_stdin {
        Some(dup(stdin, 0)?)
    } else {
        None
    };
    let stdout_target = dup(launch.stdio[1], 1)?;
    let stderr_target = dup(launch.stdio[2], 2)?;

    let boot_limit = engine.boot_limit();
    let deadline = policy.timeout.map(|t| t + boot_limit);
    let Started {
        host,
        channels,
        info,
    } = start_vm(engine, &shares, memory_mib, cpus, with_stdin, deadline)?;
    let VmChannels {
        console: console_host,
        control: control_host,
        stdin: stdin_host,
        stdout,
        stderr,
        vmm_stderr,
    } = channels;
    let mut threads = Vec::new();
    for (mut from, target) in [(stdout, stdout_target), (stderr, stderr_target)] {
        threads.push(std::thread::spawn(move || {
            let mut to = std::fs::File::from(target);
            let _ = std::io::copy(&mut from, &mut to);
        }));
    }
    let control = Tail::default();
    if let (Some(source), Some(host)) = (stdin_source, stdin_host) {
        let ready = control.clone();
        // Not joined: it may wait on the caller's stream; it ends at that stream's end or QEMU's.
        std::thread::spawn(move || relay_stdin(source, host, ready, boot_limit));
    }
    // The spec waits in the socket until the agent reads it.
    // The spec is sent by a thread: one larger than the socket's buffer (argv near ARG_MAX) waits for the
    // agent to read it, which happens only after the boot. It ends when the agent has read the spec, or with
    // EPIPE when the VMM is gone (then the run has no verdict).
    let control_w = control_host
        .try_clone()
        .map_err(|e| fail(format!("socket: {e}")))?;
    let spec_line = spec.to_json_line().into_bytes();
    threads.push(std::thread::spawn(move || {
        let _ = send_all(&control_w, &spec_line);
    }));
    let console = Tail::default();
    let qemu_stderr = Tail::default();
    threads.push(console.reader(console_host, CONSOLE_TAIL));
    threads.push(qemu_stderr.reader(vmm_stderr, 4096));
    threads.push(control.reader(control_host, 1 << 20));
    let run = VmRun {
        host,
        control,
        console,
        qemu_stderr,
        threads,
        info,
        fallback_reason,
        boot_limit,
    };
    run.watch_boot();
    Ok(run)
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
) -> Result<Host, SetupFailure> {
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
    policy.timeout = deadline;
    policy.audit_denials = false;
    let args = machine.args();
    let extra: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let null = std::fs::File::open("/dev/null").map_err(|e| fail(format!("/dev/null: {e}")))?;
    let launch = Launch {
        program: qemu_bin.as_os_str(),
        args: &args,
        env: &[],
        cwd: None,
        policy: &policy,
        stdio: [null.as_raw_fd(), null.as_raw_fd(), stderr],
        extra_fds: &extra,
    };
    namespace::spawn(&launch).map(|s| Host::Sandboxed(Box::new(s)))
}

/// QEMU as a plain child: its descriptors in place, `no_new_privs`, our default seccomp filter, and never
/// as root (a root caller's QEMU becomes nobody).
fn start_plain(
    qemu_bin: &Path,
    machine: &Machine,
    fds: &[(OwnedFd, RawFd)],
    stderr: RawFd,
) -> Result<Host, SetupFailure> {
    // The kernel and initramfs are opened here and reached through /proc/self/fd, so a root caller's QEMU,
    // running as nobody, needs no access to the directories they sit in.
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| fail(format!("{}: {e}", p.display())));
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
) -> Result<Host, SetupFailure> {
    use std::os::unix::process::CommandExt;
    let filter = crate::seccomp::compile(&crate::seccomp::SeccompProfile::Default, false)
        .map_err(|e| fail(e.to_string()))?;
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
    let child = cmd
        .spawn()
        .map_err(|e| fail(format!("starting {}: {e}", program.display())))?;
    let pidfd = sys::pidfd_open(child.id() as i32).map_err(|e| {
        fail(format!(
            "pidfd_open: {}",
            std::io::Error::from_raw_os_error(e)
        ))
    })?;
    // SAFETY: pidfd_open just returned this descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Host::Plain(child, pidfd))
}

impl VmRun {
    pub(crate) fn pid(&self) -> u32 {
        match &self.host {
            Host::Sandboxed(s) => s.pid as u32,
            Host::Plain(c, _) => c.id(),
        }
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        match &self.host {
            Host::Sandboxed(s) => s.pidfd.as_fd(),
            Host::Plain(_, fd) => fd.as_fd(),
        }
    }

    /// A handle that tells when the guest's agent is up.
    pub(crate) fn boot_watch(&self) -> crate::running::BootWatch {
        let control = self.control.clone();
        crate::running::BootWatch::new(move || control.text().contains(crate::guest::READY_PREFIX))
    }

    /// How long the guest may take to boot.
    pub(crate) fn boot_limit(&self) -> Duration {
        self.boot_limit
    }

    /// Kills the VMM when the agent has not said READY within the engine's boot limit.
    fn watch_boot(&self) {
        let limit = self.boot_limit;
        let control = self.control.clone();
        let Ok(pidfd) = self.pidfd().try_clone_to_owned() else {
            return;
        };
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if control.text().contains(crate::guest::READY_PREFIX) {
                    return;
                }
                // Also stop watching once QEMU has ended.
                let mut pfd = [libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if sys::poll(&mut pfd, 50).unwrap_or(0) > 0 {
                    return;
                }
            }
            let _ = sys::pidfd_signal(&pidfd, libc::SIGKILL);
        });
    }

    /// Collects QEMU (ended or about to) and reads the agent's verdict.
    pub(crate) fn finish(self, wall: Duration, host_timeout: bool) -> Result<Outcome, Error> {
        let qemu_status = match self.host {
            Host::Sandboxed(s) => {
                s.finish(wall, host_timeout)
                    .map(|o| o.status)
                    .map_err(|source| Error::Io {
                        what: "waiting for QEMU",
                        source,
                    })?
            }
            Host::Plain(mut c, _) => {
                let st = c.wait().map_err(|source| Error::Io {
                    what: "waiting for QEMU",
                    source,
                })?;
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(c), _) => Status::Exited(c),
                    (_, Some(s)) => Status::Signaled(s),
                    _ => Status::Signaled(libc::SIGKILL),
                }
            }
        };
        // The copiers finish once they have passed on what QEMU left in the sockets; one whose reader does not
        // read (a caller that waits before reading a piped stdout) is left to finish on its own.
        let until = Instant::now() + THREAD_DRAIN;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let mut info = self.info;
        let verdict = find_verdict(&self.control.text()).and_then(|v| {
            info.boot_ms = v["agent"]["uptime_start_ms"].as_u64();
            Outcome::from_report_json(&v)
        });
        let mut outcome = match verdict {
            Some(o) => o,
            None => {
                let console = self.console.text();
                info.console_tail = Some(console.clone());
                let status = if host_timeout {
                    Status::TimedOut(TimeLimit::Wall)
                } else {
                    Status::SetupFailed(fail(format!(
                        "the VM ended without a verdict (VMM: {qemu_status:?}{}); the guest's last words:\n{}",
                        match self.qemu_stderr.text().trim() {
                            "" => String::new(),
                            e => format!(", {e}"),
                        },
                        last_lines(&console, 15)
                    )))
                };
                Outcome::setup_failed(fail(""), BackendKind::Vm).with_status(status)
            }
        };
        outcome.backend = BackendKind::Vm;
        outcome.usage.wall = wall;
        outcome.fallback_reason = self.fallback_reason;
        outcome.vm = Some(info);
        Ok(outcome)
    }

    /// Kills QEMU and reaps it.
    pub(crate) fn abort(self) {
        match self.host {
            Host::Sandboxed(s) => s.abort(),
            Host::Plain(mut c, _) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
