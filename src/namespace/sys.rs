//! Thin wrappers over the system calls the sandbox child makes.
//!
//! Everything here may run in a child cloned from a multi-threaded process: no allocation, no locks, no panics.
//! Each wrapper returns the raw errno on failure so the caller can report it through a pipe.

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_int, c_long, c_ulong, c_void};

/// A raw errno value.
pub type Errno = i32;

/// Result of a raw system call.
pub type SysResult<T> = Result<T, Errno>;

fn errno() -> Errno {
    nix::errno::Errno::last_raw()
}

/// Turns a `-1`-on-error return into a result.
fn check(ret: c_long) -> SysResult<c_long> {
    if ret == -1 { Err(errno()) } else { Ok(ret) }
}

// Constants that not every libc version exports.
pub const CLONE_PIDFD: c_ulong = 0x1000;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: c_int = 0x8000;
const SECBIT_NOROOT: c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: c_ulong = 1 << 7;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `clone(2)` without a new stack, like `fork`, returning `0` in the child and the child's pid in the parent.
/// With [`CLONE_PIDFD`] in `flags`, the pidfd is stored in `pidfd`.
///
/// # Safety
/// The child runs on a copy of the caller's memory in which other threads' locks may be held: it must only
/// call async-signal-safe code (this module) and leave through [`exit`] or `execve`.
pub unsafe fn clone(flags: c_ulong, pidfd: &mut c_int) -> SysResult<libc::pid_t> {
    let ptr: *mut c_int = pidfd;
    // SAFETY: a NULL stack makes the child continue on a copy-on-write copy of this stack, exactly like fork;
    // `ptr` is valid for the kernel to write the pidfd into. The caller upholds the child-side contract.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, ptr, 0usize, 0usize) };
    check(ret).map(|p| p as libc::pid_t)
}

/// A plain fork through the raw system call (glibc's `fork` takes locks that may be held in a cloned child).
pub fn fork() -> SysResult<libc::pid_t> {
    // SAFETY: SIGCHLD-only clone duplicates this single-threaded process like fork(2); both sides continue here.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(ret).map(|p| p as libc::pid_t)
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// `mount(2)`.
pub fn mount(
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            opt_ptr(src),
            dst.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast::<c_void>(),
        )
    };
    check(ret as c_long).map(drop)
}

/// Sets mount attributes (`MOUNT_ATTR_*`) on the mount at `path`, and on all below it when `recursive`.
/// Falls back to a bind remount (top mount only) on kernels without `mount_setattr(2)` (before 5.12).
pub fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is NUL-terminated; `attr` is a valid mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match check(ret) {
        Err(libc::ENOSYS) => remount_with(path, set),
        r => r.map(drop),
    }
}

/// The pre-5.12 way: a bind remount that keeps the flags the kernel locked on the mount.
fn remount_with(path: &CStr, set: u64) -> SysResult<()> {
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) } as c_long)?;
    let keep = libc::ST_RDONLY
        | libc::ST_NOSUID
        | libc::ST_NODEV
        | libc::ST_NOEXEC
        | libc::ST_NOATIME
        | libc::ST_NODIRATIME
        | libc::ST_RELATIME;
    let mut flags = (st.f_flag & keep) | libc::MS_REMOUNT | libc::MS_BIND;
    for (attr, ms) in [
        (MOUNT_ATTR_RDONLY, libc::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, libc::MS_NOSUID),
        (MOUNT_ATTR_NODEV, libc::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
    ] {
        if set & attr != 0 {
            flags |= ms;
        }
    }
    mount(None, path, None, flags, None)
}

/// `umount2(2)`.
pub fn umount2(path: &CStr, flags: c_int) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::umount2(path.as_ptr(), flags) } as c_long).map(drop)
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: both paths are NUL-terminated.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `mkdir(2)`; an existing entry is not an error.
pub fn mkdir(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) } as c_long) {
        Err(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// Creates an empty regular file (a mount point for a file bind) if none exists.
pub fn touch(path: &CStr) -> SysResult<()> {
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `path` is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags, 0o644) } as c_long)?;
    close(fd as RawFd);
    Ok(())
}

/// Creates `path` (mode 0644) holding `contents`.
pub fn write_file(path: &CStr, contents: &[u8]) -> SysResult<()> {
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `path` is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags, 0o644) } as c_long)? as RawFd;
    let written = write_all(fd, contents);
    close(fd);
    written
}

/// `symlink(2)`.
pub fn symlink(target: &CStr, path: &CStr) -> SysResult<()> {
    // SAFETY: both are NUL-terminated.
    check(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) } as c_long).map(drop)
}

/// `chdir(2)`.
pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chdir(path.as_ptr()) } as c_long).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: the pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as c_long).map(drop)
}

/// `unshare(2)`.
pub fn unshare(flags: c_int) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::unshare(flags) } as c_long).map(drop)
}

/// `setrlimit(2)`.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> SysResult<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) } as c_long).map(drop)
}

/// Sets the `IFF_UP` flag of the interface `name` (a NUL-terminated name of at most 15 bytes).
pub fn interface_up(name: &CStr) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    let sock =
        check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
                as c_long,
        )? as RawFd;
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.to_bytes().iter().take(libc::IFNAMSIZ - 1))
    {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS on an open socket.
    let result = unsafe {
        check(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) as c_long).and_then(|_| {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            check(libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) as c_long)
        })
    };
    close(sock);
    result.map(drop)
}

/// Becomes `uid`/`gid` (real, effective and saved), dropping supplementary groups first when `drop_groups`.
///
/// Raw system calls on purpose: glibc's wrappers broadcast id changes to every thread it believes exists,
/// and in a child cloned from a multi-threaded process those threads do not exist, so they would wait forever.
pub fn set_ids(uid: u32, gid: u32, drop_groups: bool) -> SysResult<()> {
    if drop_groups {
        // SAFETY: an empty group list with a NULL pointer is valid.
        check(unsafe {
            libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
        })?;
    }
    // SAFETY: plain syscalls with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// Locks the "no root privileges" secure bits so no later execve can gain capabilities from uid 0 or
/// set-user-ID files, and drops every capability from the bounding set. Needs CAP_SETPCAP.
pub fn lock_securebits_and_drop_bounding() -> SysResult<()> {
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } as c_long)?;
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; EINVAL marks the first capability this kernel does not know.
        if let Err(e) = check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } as c_long)
        {
            if e == libc::EINVAL {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears the effective, permitted, inheritable and ambient capability sets.
pub fn clear_capabilities() -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } as c_long)?;
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data words as capset(2) expects for version 3.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })
    .map(drop)
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no ptrace, no /proc/PID access by other processes of the same user.
pub fn not_dumpable() -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } as c_long).map(drop)
}

/// Opens the canonical path `path` with `O_PATH | O_CLOEXEC`, following no symlink anywhere in it (so a link
/// planted after the host resolved the path fails with ELOOP instead of redirecting the open).
pub fn open_path(path: &CStr) -> SysResult<RawFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `path` is NUL-terminated and `how` is an open_how of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    match check(ret) {
        // Before 5.6: the last component at least.
        Err(libc::ENOSYS) => {
            let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            // SAFETY: `path` is NUL-terminated.
            check(unsafe { libc::open(path.as_ptr(), flags) } as c_long).map(|fd| fd as RawFd)
        }
        r => r.map(|fd| fd as RawFd),
    }
}

/// Renames this process: its `comm` and its command line (the argv area `[start, end)` as the kernel reports
/// it in /proc/self/stat) both become `name`, so the sandbox cannot read the host program's arguments
/// through /proc/1/cmdline.
pub fn set_process_name(name: &CStr, argv_area: (usize, usize)) {
    // SAFETY: prctl reads a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    let (start, end) = argv_area;
    let bytes = name.to_bytes_with_nul();
    if start == 0 || end <= start || end - start > (1 << 20) || end - start < bytes.len() {
        return;
    }
    // SAFETY: [start, end) is this process's argument area (mapped, writable stack memory, read from
    // /proc/self/stat by the host before clone); after clone this is our private copy and nothing reads it.
    unsafe {
        std::ptr::write_bytes(start as *mut u8, 0, end - start);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, bytes.len());
    }
}

/// `prctl(PR_SET_PDEATHSIG)`: `sig` when the thread that created this process ends (0 clears it).
pub fn parent_death_signal(sig: c_int) {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as c_ulong, 0, 0, 0) };
}

/// `prctl(PR_SET_NO_NEW_PRIVS)`.
pub fn no_new_privs() -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as c_long).map(drop)
}

/// `dup2(2)`; the new descriptor does not have close-on-exec.
pub fn dup2(old: RawFd, new: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::dup2(old, new) } as c_long).map(drop)
}

/// Duplicates `fd` to the lowest free number at or above `floor`, close-on-exec.
pub fn dup_above(fd: RawFd, floor: RawFd) -> SysResult<RawFd> {
    // SAFETY: plain fcntl with integer arguments.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) } as c_long).map(|n| n as RawFd)
}

/// Closes every descriptor from 3 up, except those in `keep` (sorted ascending; negative entries are ignored).
pub fn close_all_except(keep: &[RawFd]) -> SysResult<()> {
    let mut from: u32 = 3;
    for &fd in keep.iter().filter(|&&fd| fd >= 0) {
        let fd = fd as u32;
        if fd >= from {
            if fd > from {
                close_range(from, fd - 1)?;
            }
            from = fd + 1;
        }
    }
    close_range(from, u32::MAX)
}

fn close_range(first: u32, last: u32) -> SysResult<()> {
    // SAFETY: closing descriptors this process owns; nothing else refers to them in the child.
    match check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }) {
        Ok(_) => Ok(()),
        Err(libc::ENOSYS) => {
            // Before 5.9: close one by one up to the soft limit.
            // SAFETY: an all-zero rlimit is valid for the kernel to overwrite.
            let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: `lim` is writable.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
            let end = (lim.rlim_cur.min(1 << 20) as u32).min(last.saturating_add(1));
            for fd in first..end {
                close(fd as RawFd);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `close(2)`, ignoring errors.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd`.
    unsafe { libc::close(fd) };
}

/// Writes all of `buf`, retrying on EINTR.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: pointer and length describe `buf`.
        match check(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } as c_long) {
            Ok(n) => buf = &buf[n as usize..],
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
pub fn read_full(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let tail = &mut buf[done..];
        // SAFETY: pointer and length describe the unread tail of `buf`.
        let ret = unsafe { libc::read(fd, tail.as_mut_ptr().cast(), tail.len()) };
        match check(ret as c_long) {
            Ok(0) => break,
            Ok(n) => done += n as usize,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pipe2(O_CLOEXEC)`: `[read end, write end]`.
pub fn pipe() -> SysResult<[RawFd; 2]> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as c_long)?;
    Ok(fds)
}

/// A signal set with every signal.
pub fn full_sigset() -> libc::sigset_t {
    // SAFETY: an all-zero sigset is valid storage for sigfillset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid storage.
    unsafe { libc::sigfillset(&mut set) };
    set
}

/// Sets the signal mask of the calling thread.
pub fn set_sigmask(set: &libc::sigset_t) -> SysResult<()> {
    // SAFETY: `set` is a valid signal set; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, std::ptr::null_mut()) };
    if ret != 0 { Err(ret) } else { Ok(()) }
}

/// Restores the default disposition of every signal that can be changed.
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL is always a valid disposition.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}

/// A signalfd that reads every signal in `set`.
pub fn signalfd(set: &libc::sigset_t) -> SysResult<RawFd> {
    // SAFETY: `set` is a valid signal set.
    check(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) } as c_long).map(|fd| fd as RawFd)
}

/// Reads one pending signal number from a signalfd.
pub fn read_signal(fd: RawFd) -> SysResult<i32> {
    // SAFETY: an all-zero siginfo is valid storage.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a plain-old-data struct of exactly the size passed.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut info as *mut libc::signalfd_siginfo).cast::<u8>(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    read_full(fd, bytes)?;
    Ok(info.ssi_signo as i32)
}

/// `poll(2)` on the given descriptors, retrying on EINTR. Returns the number ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> SysResult<usize> {
    loop {
        // SAFETY: pointer and length describe `fds`.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        match check(ret as c_long) {
            Err(libc::EINTR) => {}
            r => return r.map(|n| n as usize),
        }
    }
}

/// Non-blocking `waitpid(-1)`: `Some((pid, status))` for one reaped child, `None` when none is ready.
pub fn reap_any() -> SysResult<Option<(libc::pid_t, c_int)>> {
    let mut status = 0;
    // SAFETY: `status` is writable.
    let pid = check(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } as c_long)?;
    Ok((pid > 0).then_some((pid as libc::pid_t, status)))
}

/// Blocking `waitpid` for one child.
pub fn wait_pid(pid: libc::pid_t) -> SysResult<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is writable.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) } as c_long) {
            Err(libc::EINTR) => {}
            r => return r.map(|_| status),
        }
    }
}

/// `pidfd_send_signal(2)`; a process that already ended (ESRCH) is not an error.
pub fn pidfd_signal(pidfd: &impl std::os::fd::AsRawFd, signal: c_int) -> SysResult<()> {
    // SAFETY: pidfd_send_signal with a pidfd, a signal number and no siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match check(ret) {
        Ok(_) | Err(libc::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `pidfd_open(2)`.
#[cfg_attr(not(feature = "vm"), allow(dead_code))]
pub fn pidfd_open(pid: libc::pid_t) -> SysResult<RawFd> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }).map(|fd| fd as RawFd)
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: c_int) {
    // SAFETY: plain syscall with integer arguments.
    unsafe { libc::kill(pid, sig) };
}

/// `setsid(2)`.
pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() } as c_long).map(drop)
}

/// Milliseconds on the monotonic clock.
pub fn monotonic_ms() -> i64 {
    // SAFETY: an all-zero timespec is valid storage.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Errno {
    // SAFETY: `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// Ends the process at once, without running exit handlers (which may take locks).
pub fn exit(code: c_int) -> ! {
    // SAFETY: _exit never returns and touches no user-space state.
    unsafe { libc::_exit(code) }
}
