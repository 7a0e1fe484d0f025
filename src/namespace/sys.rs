//! Thin wrappers over the system calls the sandbox child makes.
//!
//! Everything here may run in a child cloned from a multi-threaded process: no allocation, no locks, no panics.
//! Each wrapper returns the raw errno on failure so the caller can report it through a pipe.
//!
//! By kind: `mount` (mounts and the paths they need), `process` (clone, signals, waiting, pidfds, exec),
//! `creds` (ids, capabilities, limits); this file holds the errno plumbing, descriptors and I/O, and the
//! rest. All are re-exported here, so callers write `sys::x` whatever the kind.

mod creds;
mod mount;
#[cfg(feature = "vm")]
mod net;
mod process;

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_int, c_long};

pub use self::creds::{
    clear_groups, keep_only_capabilities, lock_securebits_and_bound, no_new_privs, not_dumpable,
    set_capabilities, set_ids, set_rlimit,
};
pub use self::mount::{
    MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, attach_tree, chdir,
    copy_file, is_dir, lchown, mkdir, mount, mount_setattr, open_path, open_tree_clone, pivot_root,
    set_idmap, symlink, touch, umount2, write_file,
};
// Used by the VM backend only, like the function itself.
#[cfg_attr(not(feature = "vm"), allow(unused_imports))]
#[cfg(feature = "vm")]
pub use self::net::{default_route, interface_ipv4};
pub use self::process::pidfd_open;
pub use self::process::{
    CLONE_PIDFD, claim_terminal, clone, execve, exit, fork, full_sigset, getpid, getppid, kill,
    parent_death_signal, pidfd_signal, read_signal, reap_any_usage, reset_signal_dispositions,
    set_process_name, set_sigmask, setsid, signalfd, wait_pid,
};

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

/// `setns(2)`: joins the namespace of type `nstype` (e.g. `CLONE_NEWUSER`) that `fd` refers to.
pub fn setns(fd: RawFd, nstype: c_int) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::setns(fd, nstype) } as c_long).map(drop)
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

/// The decimal digits of `v`, written into `buf` without allocating (for the code after `clone`).
pub fn decimal(buf: &mut [u8; 10], mut v: u32) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
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

/// Reads up to `buf.len()` bytes of the file at `path` (opened read-only, close-on-exec); returns how many.
pub fn read_file(path: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `path` is NUL-terminated; plain open flags.
    let fd =
        check(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) } as c_long)?
            as RawFd;
    let r = read_full(fd, buf);
    close(fd);
    r
}

/// `pipe2(O_CLOEXEC)`: `[read end, write end]`.
pub fn pipe() -> SysResult<[RawFd; 2]> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as c_long)?;
    Ok(fds)
}

/// The most descriptors the child receives with its release ([`recv_with_fds`]).
pub const MAX_PASSED_FDS: usize = 128;

/// Room for a control message of [`MAX_PASSED_FDS`] descriptors (`CMSG_SPACE(128 * 4)` = 528 bytes), aligned
/// for `cmsghdr`.
type CmsgBuf = [u64; 66];

/// Receives one byte and up to `fds.len()` descriptors (close-on-exec) into `fds`; returns the bytes read (0:
/// the sender closed without sending) and the descriptors received. More descriptors than `fds` holds is
/// `EMSGSIZE` (the kernel closed the extra ones). Allocation-free.
pub fn recv_with_fds(sock: RawFd, fds: &mut [RawFd]) -> SysResult<(usize, usize)> {
    let mut data = [0u8; 1];
    recv_msg(sock, &mut data, fds)
}

/// Receives one message into `data` and up to `fds.len()` descriptors (close-on-exec) into `fds`; returns
/// the bytes read (0: end of file) and the descriptors received. A message longer than `data` or more
/// descriptors than `fds` holds is `EMSGSIZE` (nothing received is kept open). Allocation-free.
pub fn recv_msg(sock: RawFd, data: &mut [u8], fds: &mut [RawFd]) -> SysResult<(usize, usize)> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf: CmsgBuf = [0; 66];
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of::<CmsgBuf>();
    let n = loop {
        // SAFETY: `msg` and what it points to are valid for the call.
        match check(unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) } as c_long) {
            Err(libc::EINTR) => {}
            r => break r? as usize,
        }
    };
    let (mut got, mut extra) = (0, 0);
    // SAFETY: the kernel filled `cbuf` with msg_controllen bytes of control messages; the CMSG macros walk
    // them within that length, and each SCM_RIGHTS payload holds whole descriptors.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    if got < fds.len() {
                        fds[got] = fd;
                        got += 1;
                    } else {
                        close(fd);
                        extra += 1;
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 || extra > 0 {
        for &fd in &fds[..got] {
            close(fd);
        }
        return Err(libc::EMSGSIZE);
    }
    Ok((n, got))
}

/// Sends `data` as one message with `fds` (at most 4) as `SCM_RIGHTS`, without `SIGPIPE`. Allocation-free.
pub fn send_msg(sock: RawFd, data: &[u8], fds: &[RawFd]) -> SysResult<()> {
    if fds.len() > 4 {
        return Err(libc::EINVAL);
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // Room for CMSG_SPACE(4 * 4) = 32 bytes, aligned for cmsghdr.
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the header and payload written below lie within
        // `cbuf` (at most CMSG_SPACE(16) = 32 bytes), and `fds` is read within its length.
        unsafe {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                bytes as usize,
            );
        }
    }
    loop {
        // SAFETY: `msg` and what it points to are valid for the call.
        match check(unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } as c_long) {
            Err(libc::EINTR) => {}
            r => return r.map(drop),
        }
    }
}

/// `accept4(2)` of a connection on a listening socket, close-on-exec and non-blocking.
pub fn accept(sock: RawFd) -> SysResult<RawFd> {
    // SAFETY: no address is asked for; the flags are plain integers.
    check(unsafe {
        libc::accept4(
            sock,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    } as c_long)
    .map(|fd| fd as RawFd)
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

/// Milliseconds on the monotonic clock.
pub fn monotonic_ms() -> i64 {
    // SAFETY: an all-zero timespec is valid storage.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}
