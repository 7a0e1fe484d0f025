//! The keeper: a small process forked from the host that starts the network's helper (pasta for a network
//! namespace, passt for a VM) and ends it with the run.
//!
//! Forked from a possibly multi-threaded host process, so it must not allocate, take locks or panic, like
//! the sandbox child ([`crate::namespace::child`]): everything it uses was prepared in a [`Spec`]. It forks
//! pasta's process, which joins the sandbox's user namespace and executes pasta; then it waits for one of two
//! ends: its stop pipe hangs up (the run ended, or the host process died in any way, SIGKILL included: only
//! the host holds the write end), and it kills pasta; or pasta ends by itself. Either way it reaps pasta
//! before it exits, and pasta has the keeper's death as its parent-death signal: pasta never outlives it.
//!
//! Why a keeper and not pasta as the host's direct child with a parent-death signal: that signal follows the
//! host *thread* that forked, and a library caller's thread may end long before its sandbox does.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use libc::c_char;

use super::super::sys::{self, Errno};

/// Everything the keeper and pasta's process need, prepared before the fork.
pub(super) struct Spec {
    /// pasta's absolute path.
    pub program: CString,
    /// NULL-terminated argv (pointers into `_argv`).
    pub argv: Vec<*const c_char>,
    /// Owners of the argv strings.
    pub _argv: Vec<CString>,
    /// An empty environment.
    pub envp: [*const c_char; 1],
    /// What pasta gets as descriptors 0 to 4: /dev/null, /dev/null, its error pipe, its ready pipe (`--pid`),
    /// the sandbox's network namespace (`--netns`).
    pub fds: [RawFd; 5],
    /// The sandbox's user namespace, which pasta's process joins (-1: none to join; the helper stays in the
    /// host's user namespace as the caller and confines itself, as passt does for a VM).
    pub userns: RawFd,
    /// Read end of the stop pipe (hangs up when the host closes or loses the write end).
    pub stop: RawFd,
    /// The sandbox user and group inside the user namespace: pasta runs as them.
    pub uid: u32,
    pub gid: u32,
    /// Drop the caller's supplementary groups first (a root caller can).
    pub drop_groups: bool,
    /// The only capabilities pasta keeps, in the sandbox's user namespace.
    pub caps: u64,
    /// The host process's argv area, overwritten with the keeper's name.
    pub argv_area: (usize, usize),
}

/// Exit codes of the keeper when it could not start pasta's process.
const SETUP_FAILED: i32 = 125;

/// The keeper, top to bottom. Never returns.
pub(super) fn main(spec: &mut Spec) -> ! {
    sys::set_process_name(c"sandbox-net", spec.argv_area);
    // A session of its own: a terminal's ^C to the caller's process group does not end the network under a
    // program that handles it; the run decides when pasta ends.
    let _ = sys::setsid();
    // The host's signal handlers are code of the host that may take locks: defaults, and nothing blocked,
    // which pasta inherits too.
    sys::reset_signal_dispositions();
    // SAFETY: an all-zero sigset is a valid empty set.
    let empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    let _ = sys::set_sigmask(&empty);

    // 1. Descriptors: lift ours above the five pasta gets, install those at 0 to 4, close every other.
    let floor = spec.fds.len() as RawFd;
    let lift = |fd: &mut RawFd| match sys::dup_above(*fd, floor) {
        Ok(new) => *fd = new,
        Err(_) => sys::exit(SETUP_FAILED),
    };
    for fd in spec.fds.iter_mut() {
        lift(fd);
    }
    if spec.userns >= 0 {
        lift(&mut spec.userns);
    }
    lift(&mut spec.stop);
    for (target, &fd) in spec.fds.iter().enumerate() {
        if sys::dup2(fd, target as RawFd).is_err() {
            sys::exit(SETUP_FAILED);
        }
    }
    let mut keep = [3, 4, spec.userns, spec.stop];
    keep.sort_unstable();
    if sys::close_all_except(&keep).is_err() {
        sys::exit(SETUP_FAILED);
    }

    // 2. pasta's process.
    let keeper = sys::getpid();
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child only runs `pasta`, which makes raw system calls on the prepared spec and leaves
    // through execve or _exit.
    let pid = unsafe {
        sys::clone(
            sys::CLONE_PIDFD | libc::SIGCHLD as libc::c_ulong,
            &mut pidfd,
        )
    };
    let pid = match pid {
        Ok(0) => pasta(spec, keeper),
        Ok(pid) => pid,
        Err(_) => sys::exit(SETUP_FAILED),
    };

    // 3. Only the stop pipe and pasta's pidfd stay: the host sees end of file on the ready and error pipes
    //    once pasta has ended.
    for fd in [2, 3, 4, spec.userns] {
        if fd >= 0 {
            sys::close(fd);
        }
    }
    let mut fds = [
        libc::pollfd {
            fd: spec.stop,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if sys::poll(&mut fds, -1).is_err() {
            break;
        }
        if fds[1].revents != 0 {
            // pasta ended by itself: its status is the keeper's.
            let status = sys::wait_pid(pid).unwrap_or(0);
            sys::exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
        if fds[0].revents != 0 {
            break;
        }
    }
    // The run ended, or the host is gone.
    let _ = sys::pidfd_signal(&pidfd, libc::SIGKILL);
    let _ = sys::wait_pid(pid);
    sys::exit(0)
}

/// pasta's process: the sandbox's user namespace, the sandbox user, only `caps`, then pasta. Never returns.
fn pasta(spec: &Spec, keeper: libc::pid_t) -> ! {
    sys::close(spec.stop);
    // A root caller's supplementary groups (root's) stay behind, before the user namespace hides them.
    if spec.drop_groups
        && let Err(e) = sys::clear_groups()
    {
        fail(
            c"setgroups(0) before joining the sandbox's user namespace",
            e,
        );
    }
    if spec.userns >= 0 {
        // Joining the user namespace gives every capability in it, and only in it (and its network
        // namespace).
        if let Err(e) = sys::setns(spec.userns, libc::CLONE_NEWUSER) {
            fail(c"setns into the sandbox's user namespace", e);
        }
        sys::close(spec.userns);
        if let Err(e) = sys::set_ids(spec.uid, spec.gid, false, &[]) {
            fail(c"setresgid/setresuid to the sandbox user", e);
        }
        if let Err(e) = sys::keep_only_capabilities(spec.caps) {
            fail(c"keeping only pasta's capabilities (capset, ambient)", e);
        }
    }
    // Dies with the keeper, whatever ends it. Set last: a change of ids clears it. If the keeper is gone
    // already, its signal was missed: end here.
    sys::parent_death_signal(libc::SIGKILL);
    if sys::getppid() != keeper {
        sys::exit(SETUP_FAILED);
    }
    let e = sys::execve(&spec.program, &spec.argv, &spec.envp);
    fail(c"execve of pasta", e)
}

/// Tells the host on the error pipe (descriptor 2) which step failed with which errno, and exits.
fn fail(what: &CStr, errno: Errno) -> ! {
    let mut buf = [0u8; 160];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"sandkasten: ");
    put(what.to_bytes());
    put(b" failed: errno ");
    let mut digits = [0u8; 10];
    put(sys::decimal(&mut digits, errno.unsigned_abs()));
    put(b"\n");
    let _ = sys::write_all(2, &buf[..len]);
    sys::exit(SETUP_FAILED)
}
