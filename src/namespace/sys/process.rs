//! Processes and signals: `clone` and `fork`, the process name, the parent-death signal, signal masks and
//! signalfds, waiting, pidfds, `kill`, `setsid`, `execve` and `_exit`.

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_int, c_long, c_ulong};

use super::{Errno, SysResult, check, errno, read_full};

pub const CLONE_PIDFD: c_ulong = 0x1000;

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

/// Non-blocking `wait4(-1)` with the child's resource usage: `Some((pid, status, rusage))` for one reaped
/// child, `None` when none is ready; `ECHILD` when there are no children at all.
pub fn reap_any_usage() -> SysResult<Option<(libc::pid_t, c_int, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid storage for the kernel to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `ru` are writable.
    let pid = check(unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) } as c_long)?;
    Ok((pid > 0).then_some((pid as libc::pid_t, status, ru)))
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

/// `getpid(2)`.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// `getppid(2)`.
pub fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: c_int) {
    // SAFETY: plain syscall with integer arguments.
    unsafe { libc::kill(pid, sig) };
}

/// Makes the terminal on `fd` the calling session leader's controlling terminal (`TIOCSCTTY`, never stealing
/// one that is already another session's).
pub fn claim_terminal(fd: RawFd) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } as c_long).map(drop)
}

/// `setsid(2)`.
pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() } as c_long).map(drop)
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
