//! Host-side helpers shared by the demo binaries (`coderun`, `sandbox-test-runner`): `poll`, a pidfd for the
//! sandbox's init, and stop signals read from a signalfd.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A pollfd waiting for `fd` to be readable.
pub fn pollin(fd: BorrowedFd<'_>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// `poll(2)`, retried on EINTR; the number of ready descriptors (0: the timeout ran out).
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |d| d.as_millis().clamp(1, i32::MAX as u128) as i32);
    loop {
        // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd structures for the whole call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pidfd for the sandbox's init (our own unreaped child, so the pid cannot have been reused).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Signals blocked in this single-threaded process and read from a signalfd, so that the host can act on
/// them (kill or signal the sandbox, clean up) before it exits. The sandboxed program starts with a clean
/// signal mask.
pub struct SignalFd {
    /// The signalfd: readable when a blocked signal is pending.
    pub fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in this (single-threaded) process and returns a signalfd that reads them.
    pub fn block(signals: &[i32]) -> io::Result<SignalFd> {
        // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in signals {
            // SAFETY: `set` is initialised and `s` is a valid signal number.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        // SAFETY: `set` is initialised; the old mask is not wanted (null).
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: -1 asks for a new signalfd for the initialised `set`.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The number of the signal that is pending (call when the descriptor is readable).
    pub fn read(&self) -> io::Result<i32> {
        // SAFETY: an all-zero signalfd_siginfo is valid storage for the kernel to fill.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable for `size` bytes; the descriptor is our signalfd.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&raw mut info).cast::<libc::c_void>(),
                size,
            )
        };
        if n != size as isize {
            return Err(io::Error::last_os_error());
        }
        Ok(info.ssi_signo as i32)
    }
}
