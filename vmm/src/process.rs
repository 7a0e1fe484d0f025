//! The VMM as its own process: [`main`] with a JSON [`ProcessConfig`], its channels inherited as descriptors
//! (sandkasten's builtin engine runs it as `sandbox-init vmm CONFIG-JSON`, usually inside one of its namespace
//! sandboxes). Before it runs the guest it confines itself further: landlock (only the kernel, the initramfs and the
//! shared directories) and a seccomp allowlist (only the system calls a VMM needs, and only KVM ioctls), so a
//! guest that escaped into the VMM lands in a cage with no exec, no new sockets, no mounts and no other files.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::virtio::VirtioDevice;
use super::virtio::console::{Port, VirtioConsole};
use super::virtio::fs::VirtioFs;
use super::virtio::net::VirtioNet;
use super::{Console, SnapshotOptions, VmConfig};

/// The guest's MAC address on its network device (locally administered; passt learns it from the guest's
/// first frame). Fixed, so a snapshot's guest and its restored copies agree.
pub const GUEST_MAC: [u8; 6] = [0x02, 0x73, 0x62, 0x78, 0x00, 0x01];

/// What the host tells the VMM process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// The full kernel command line (without the virtio-mmio options, which the VMM adds).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The VMM ends the guest after this many seconds.
    pub timeout_secs: u64,
    /// The descriptor of an open `/dev/kvm`.
    pub kvm_fd: RawFd,
    /// The descriptor of the serial console's socket (the kernel log).
    pub console_fd: RawFd,
    /// Console ports: name → descriptor of the VMM's socket end.
    pub ports: Vec<(String, RawFd)>,
    /// virtio-fs shares.
    pub shares: Vec<ShareConfig>,
    /// The descriptor of a connected stream socket to passt (the user-mode network stack): the guest gets a
    /// virtio-net device whose frames go there (`network = "user"`), after the shares.
    #[serde(default)]
    pub net_fd: Option<RawFd>,
    /// Snapshots: restore from one, or serve a save request.
    #[serde(default)]
    pub snapshot: Option<SnapshotConfig>,
}

/// The VMM's snapshot descriptors ([`crate::snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The VMM's end of the snapshot channel (a socket).
    pub channel_fd: RawFd,
    /// The snapshot file: read to restore from (`restore`), else written on a save request.
    pub file_fd: RawFd,
    /// Restore from `file_fd` instead of booting.
    pub restore: bool,
}

/// A shared directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// The virtio-fs tag.
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// Writes are refused on the host side.
    pub readonly: bool,
}

/// Errors of the VMM process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The configuration argument is not valid JSON of [`ProcessConfig`].
    #[error("bad VMM configuration: {0}")]
    Config(String),
    /// A descriptor the host should have passed is not open.
    #[error("descriptor {fd} ({what}) is not open: {source}")]
    Descriptor {
        /// Which.
        what: String,
        /// The number.
        fd: RawFd,
        /// Why.
        source: std::io::Error,
    },
    /// A device could not be made.
    #[error("{0}")]
    Device(String),
    /// Landlock could not be applied.
    #[error("landlock for the VMM: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp for the VMM: {0}")]
    Seccomp(String),
    /// The VM failed.
    #[error(transparent)]
    Vmm(#[from] super::VmmError),
}

/// Takes ownership of an inherited descriptor after checking it is open.
fn take_fd(fd: RawFd, what: &str) -> Result<OwnedFd, ProcessError> {
    // SAFETY: F_GETFD only reads the descriptor's flags; an unopened number gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 || fd < 3 {
        return Err(ProcessError::Descriptor {
            what: what.into(),
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the descriptor is open (checked above), was inherited for this process alone, and is taken
    // exactly once (the configuration's numbers are distinct: checked by the caller).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs the VMM process; the exit status: 0 when the guest ended itself, 1 on any failure.
pub fn main(config_json: &str) -> ! {
    match run(config_json) {
        Ok(report) => {
            eprintln!(
                "sandbox-vmm: guest ended ({:?}) after {:.3} s, {} pio / {} mmio exits",
                report.exit,
                report.elapsed.as_secs_f64(),
                report.pio_exits,
                report.mmio_exits
            );
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("sandbox-vmm: {e}");
            std::process::exit(1)
        }
    }
}

fn run(config_json: &str) -> Result<super::VmReport, ProcessError> {
    let config: ProcessConfig =
        serde_json::from_str(config_json).map_err(|e| ProcessError::Config(e.to_string()))?;
    let mut numbers: Vec<RawFd> = config.ports.iter().map(|(_, fd)| *fd).collect();
    numbers.extend([config.kvm_fd, config.console_fd]);
    numbers.extend(config.net_fd);
    if let Some(s) = &config.snapshot {
        numbers.extend([s.channel_fd, s.file_fd]);
    }
    let distinct: std::collections::BTreeSet<_> = numbers.iter().collect();
    if distinct.len() != numbers.len() {
        return Err(ProcessError::Config(
            "descriptor numbers repeat".to_string(),
        ));
    }
    let kvm = File::from(take_fd(config.kvm_fd, "/dev/kvm")?);
    let console = File::from(take_fd(config.console_fd, "console")?);
    let mut ports = Vec::new();
    for (name, fd) in &config.ports {
        ports.push(Port {
            name: name.clone(),
            socket: UnixStream::from(take_fd(*fd, name)?),
        });
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(
        VirtioConsole::new(ports).map_err(|e| ProcessError::Device(e.to_string()))?,
    )];
    for s in &config.shares {
        devices.push(Box::new(
            VirtioFs::new(&s.tag, &s.path, s.readonly)
                .map_err(|e| ProcessError::Device(e.to_string()))?,
        ));
    }
    if let Some(fd) = config.net_fd {
        let socket = UnixStream::from(take_fd(fd, "passt's socket")?);
        devices.push(Box::new(VirtioNet::new(socket, GUEST_MAC)));
    }
    let mut snapshots = SnapshotOptions::default();
    if let Some(s) = &config.snapshot {
        snapshots.channel = Some(UnixStream::from(take_fd(s.channel_fd, "snapshot channel")?));
        let file = File::from(take_fd(s.file_fd, "snapshot file")?);
        if s.restore {
            snapshots.restore = Some(file);
        } else {
            snapshots.save_to = Some(file);
        }
    }
    // Opened before the cage closes, read straight into guest RAM at boot.
    let initramfs = File::open(&config.initramfs).map_err(|e| {
        ProcessError::Device(format!("opening {}: {e}", config.initramfs.display()))
    })?;

    confine_files(&config)?;
    confine_syscalls()?;

    // SAFETY: the descriptor is an open /dev/kvm handed over by the host and owned by `kvm` until here.
    let kvm = unsafe { kvm_ioctls::Kvm::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(kvm)) };
    Ok(super::run_with_snapshots(
        kvm,
        VmConfig {
            kernel: config.kernel.clone(),
            initramfs: crate::boot::Initramfs::File(initramfs),
            cmdline: config.cmdline.clone(),
            memory_mib: config.memory_mib,
            timeout: Duration::from_secs(config.timeout_secs),
            console: Console::new(console),
            devices,
        },
        snapshots,
    )?)
}

/// Landlock: read the kernel; read (or, for writable shares, write) the shared directories; nothing else.
fn confine_files(config: &ProcessConfig) -> Result<(), ProcessError> {
    use landlock::{
        ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    };
    let err = |e: &dyn std::fmt::Display| ProcessError::Landlock(e.to_string());
    let abi = ABI::V5;
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?;
    let file_read: landlock::BitFlags<AccessFs> = AccessFs::ReadFile.into();
    ruleset = ruleset
        .add_rule(PathBeneath::new(
            PathFd::new(&config.kernel).map_err(|e| err(&e))?,
            file_read,
        ))
        .map_err(|e| err(&e))?;
    for s in &config.shares {
        let access = if s.readonly { read } else { all };
        ruleset = ruleset
            .add_rule(PathBeneath::new(
                PathFd::new(&s.path).map_err(|e| err(&e))?,
                access,
            ))
            .map_err(|e| err(&e))?;
    }
    // Best effort (the crate's default): a kernel without landlock still gets the seccomp cage and, from the
    // host, the namespace sandbox the VMM runs in.
    ruleset.restrict_self().map_err(|e| err(&e))?;
    Ok(())
}

/// The system calls the VMM makes after this point: KVM, its threads, its sockets and eventfds, guest memory,
/// and the passthrough file system's calls on the shares. Anything else fails with EPERM; `clone3` with ENOSYS
/// (so thread creation falls back to `clone`, which is allowed for threads only).
fn confine_syscalls() -> Result<(), ProcessError> {
    let [first, main] = syscall_filters()?;
    let err = |e: &dyn std::fmt::Display| ProcessError::Seccomp(e.to_string());
    // Every installed filter answers and the strictest action wins: clone3 is allowed by the main filter and
    // refused with ENOSYS by the first; every other call gets the main filter's answer. The main filter
    // refuses seccomp(2) itself, so it goes last.
    seccompiler::apply_filter(&first).map_err(|e| err(&e))?;
    seccompiler::apply_filter(&main).map_err(|e| err(&e))?;
    Ok(())
}

/// The VMM's two filters, in the order they are installed: clone3 → ENOSYS, then the allowlist.
fn syscall_filters() -> Result<[seccompiler::BpfProgram; 2], ProcessError> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let err = |e: &dyn std::fmt::Display| ProcessError::Seccomp(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in ALLOWED {
        rules.insert(*nr, Vec::new());
    }
    // ioctl: KVM's (type 0xAE) and the few descriptor ioctls the standard library makes.
    let kvm = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(0xff00),
        0xae00,
    )
    .map_err(|e| err(&e))?;
    let mut ioctl = vec![SeccompRule::new(vec![kvm]).map_err(|e| err(&e))?];
    for req in [libc::FIONBIO, libc::FIOCLEX, libc::FIONREAD, libc::TIOCOUTQ] {
        let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
            .map_err(|e| err(&e))?;
        ioctl.push(SeccompRule::new(vec![c]).map_err(|e| err(&e))?);
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    // socketpair: unix ones only (a device's wake-up channel), never a network socket.
    let unix = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )
    .map_err(|e| err(&e))?;
    rules.insert(
        libc::SYS_socketpair,
        vec![SeccompRule::new(vec![unix]).map_err(|e| err(&e))?],
    );
    // clone: threads only (CLONE_THREAD set), never a new process.
    let thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )
    .map_err(|e| err(&e))?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![thread]).map_err(|e| err(&e))?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| err(&e))?;
    // clone3 cannot be inspected (its flags are in memory): ENOSYS makes glibc use clone.
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| err(&e))?;
    let main: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))?;
    let first: BpfProgram = clone3
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))?;
    Ok([first, main])
}

/// System calls allowed without conditions.
const ALLOWED: &[i64] = &[
    // Memory, threads, signals, time.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone3,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_prctl,
    // Descriptors: sockets passed in, eventfds, polling.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_lseek,
    // The passthrough file system, on the shares (landlock keeps it there).
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_umask,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_capget,
    libc::SYS_copy_file_range,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The filters on one thread of the test process (seccomp without TSYNC binds only the calling thread).
    #[test]
    fn the_vmm_cage_refuses_exec_processes_and_network_sockets() {
        let [first, main] = syscall_filters().unwrap();
        let caged = std::thread::spawn(move || {
            seccompiler::apply_filter(&first).unwrap();
            seccompiler::apply_filter(&main).unwrap();
            let errno = || std::io::Error::last_os_error().raw_os_error();
            // SAFETY: plain system calls with constant arguments; any descriptor made is closed below.
            let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let inet_errno = errno();
            let mut pair = [-1; 2];
            // SAFETY: `pair` has room for the two descriptors.
            let unix = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) };
            for fd in pair.into_iter().filter(|&fd| fd >= 0) {
                // SAFETY: closing descriptors made just above.
                unsafe { libc::close(fd) };
            }
            // A new process (fork = clone without CLONE_THREAD) and exec are refused...
            let spawn = std::process::Command::new("/bin/true").status();
            // ...a new thread is not (the VMM's vCPU and device threads start after the cage).
            let thread = std::thread::spawn(|| 7).join();
            // Files: only through descriptors; opening works here (landlock limits where, in the VMM).
            let kvm_ioctl_ok = std::fs::File::open("/dev/null")
                // SAFETY: KVM_GET_API_VERSION on /dev/null: an ioctl the filter allows (type 0xAE), which the
                // file refuses with ENOTTY.
                .map(|f| unsafe { libc::ioctl(f.as_raw_fd(), 0xAE00) } < 0 && errno() == Some(libc::ENOTTY));
            // SAFETY: an ioctl of another type (TIOCSTI-like terminal request) on stdin: refused by the filter.
            let other_ioctl = unsafe { libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) };
            let other_errno = errno();
            (inet, inet_errno, unix, spawn.is_err(), thread.ok(), kvm_ioctl_ok.ok(), other_ioctl, other_errno)
        })
        .join()
        .unwrap();
        assert_eq!(
            (caged.0, caged.1),
            (-1, Some(libc::EPERM)),
            "AF_INET socket: {caged:?}"
        );
        assert_eq!(caged.2, 0, "unix socketpair: {caged:?}");
        assert!(caged.3, "a new process was started: {caged:?}");
        assert_eq!(caged.4, Some(7), "threads: {caged:?}");
        assert_eq!(caged.5, Some(true), "KVM ioctls pass the filter: {caged:?}");
        assert_eq!(
            (caged.6, caged.7),
            (-1, Some(libc::EPERM)),
            "other ioctls: {caged:?}"
        );
        // The rest of the test process is not caged.
        assert!(
            std::process::Command::new("/bin/true")
                .status()
                .unwrap()
                .success()
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let err = run("{").unwrap_err();
        assert!(matches!(err, ProcessError::Config(_)), "{err}");
        let c = ProcessConfig {
            kernel: "/nonexistent".into(),
            initramfs: "/nonexistent".into(),
            cmdline: String::new(),
            memory_mib: 128,
            timeout_secs: 1,
            kvm_fd: 900,
            console_fd: 900,
            ports: vec![],
            shares: vec![],
            net_fd: None,
            snapshot: None,
        };
        let err = run(&serde_json::to_string(&c).unwrap()).unwrap_err();
        assert!(err.to_string().contains("repeat"), "{err}");
        let net = ProcessConfig {
            console_fd: 901,
            net_fd: Some(901),
            ..c.clone()
        };
        let err = run(&serde_json::to_string(&net).unwrap()).unwrap_err();
        assert!(err.to_string().contains("repeat"), "{err}");
        let c = ProcessConfig {
            console_fd: 901,
            ..c
        };
        let err = run(&serde_json::to_string(&c).unwrap()).unwrap_err();
        assert!(
            matches!(err, ProcessError::Descriptor { fd: 900, .. }),
            "{err}"
        );
    }
}
