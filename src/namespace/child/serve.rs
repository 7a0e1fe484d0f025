//! PID 1 of the sandbox after its set-up: starts the program (now, or when a session is told to start), runs
//! the commands a session's control channel asks for, reaps every orphan, forwards signals, enforces the
//! wall-clock limit, and ends the sandbox when the program ends, when a session is stopped, or when the host
//! process dies.
//!
//! Still the allocation-free copy of the host process: requests are parsed in a buffer and pointer table the
//! host allocated before `clone` ([`ServeSpec`]). Every exec'd command is a fork of this process, so it has
//! exactly the layers of the first program: the user namespace and ids, no capabilities, no_new_privs, the
//! landlock domain, the seccomp filter, the cgroup, the rlimits; nothing of the host can reach it (no host
//! descriptor, no host working directory, no window in which a host process sits in the sandbox's
//! namespaces).

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::c_char;

use super::{ChildSpec, exec_candidates, exec_failed, exec_program, fail, msg, own_process};
use crate::namespace::seccomp;
use crate::namespace::sys::{self, Errno};
use crate::outcome::Stage;

/// Control connections a listening session serves at once.
pub const MAX_CONNS: usize = 16;
/// Commands running at once in one session.
pub const MAX_EXECS: usize = 64;
/// The largest request (an exec's strings): like the kernel's usual argument space.
pub const MAX_REQUEST: usize = 256 * 1024;
/// The most strings (candidates, arguments and environment entries, with their terminators) one exec may
/// carry.
pub const MAX_STRINGS: usize = 16 * 1024;

/// What a session's init needs beyond a one-shot run's, prepared before `clone`.
pub struct ServeSpec {
    /// The control channel: a connected `SOCK_SEQPACKET` socket (the library's session), or a listening one
    /// bound on a host path (a session that outlives its creator; each connection is a channel).
    pub control: RawFd,
    /// `control` is a listening socket.
    pub listens: bool,
    /// The program waits for a [`msg::START`] request (OCI `create`, then `start`).
    pub wait_start: bool,
    /// Descriptors held open for the sandbox's life (locks of the id lease and the image's layers).
    pub held: Vec<RawFd>,
    /// A file the init writes its last words into, like on the report pipe (`-1`: none).
    pub status: RawFd,
    /// Room for one request.
    pub request: Vec<u8>,
    /// Room for the pointers of one exec's strings.
    pub ptrs: Vec<*const c_char>,
    /// The table of running execs ([`Exec::table`]): on the heap, so a one-shot run's init, which has none,
    /// does not write ~33 KiB of stack (each page a copy-on-write fault after the fork-like clone).
    pub execs: Vec<Exec>,
}

/// Distinct system calls counted per exec (more are counted in the session's verdict only).
const EXEC_DENIALS: usize = 64;

/// One running exec: its pid, the socket its verdict goes to, and the calls its process session was denied.
#[derive(Clone, Copy)]
pub struct Exec {
    pid: libc::pid_t,
    reply: RawFd,
    denied: [(i32, u32); EXEC_DENIALS],
}

const FREE: Exec = Exec {
    pid: 0,
    reply: -1,
    denied: [(-1, 0); EXEC_DENIALS],
};

impl Exec {
    /// A session's table: [`MAX_EXECS`] free slots.
    pub fn table() -> Vec<Exec> {
        vec![FREE; MAX_EXECS]
    }

    fn record(&mut self, nr: i32) {
        if let Some(slot) = self.denied.iter_mut().find(|(n, c)| *n == nr || *c == 0) {
            *slot = (nr, slot.1.saturating_add(1));
        }
    }
}

/// The session id (field 6 of /proc/PID/stat) of a process of this pid namespace; every exec is the leader
/// of a session of its own, so this tells which exec a process belongs to. Allocation-free.
fn session_of(pid: u32) -> Option<libc::pid_t> {
    let mut path = [0u8; 32];
    let mut digits = [0u8; 10];
    let d = sys::decimal(&mut digits, pid);
    let parts: [&[u8]; 3] = [b"/proc/", d, b"/stat\0"];
    let mut at = 0;
    for p in parts {
        path[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    let path = CStr::from_bytes_until_nul(&path).ok()?;
    let mut buf = [0u8; 512];
    let n = sys::read_file(path, &mut buf).ok()?;
    let stat = &buf[..n];
    // After the command name, which is in parentheses and may contain anything: state, ppid, pgrp, session.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let field = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(3)?;
    let mut v: libc::pid_t = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as libc::pid_t)?;
    }
    Some(v)
}

/// The exit code a process ending with raw wait status `raw` is reported with (a shell's convention).
fn exit_code(raw: i32) -> i32 {
    if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        libc::WEXITSTATUS(raw)
    }
}

fn millis(t: libc::timeval) -> u32 {
    (t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000).min(u32::MAX as u64) as u32
}

/// Sends one message (and a descriptor) on a reply socket, ignoring a reader that went away.
fn reply(fd: RawFd, words: [u32; 4], pass: Option<RawFd>) {
    let one;
    let fds: &[RawFd] = match pass {
        Some(p) => {
            one = [p];
            &one
        }
        None => &[],
    };
    let _ = sys::send_msg(fd, &msg::encode(words), fds);
}

/// The init's state while it serves.
struct Init<'a> {
    spec: &'a ChildSpec,
    /// The main program's pid, 0 before it started (or with none).
    program: libc::pid_t,
    /// Whether a main program is still to be started by a START request.
    pending: bool,
    /// Running execs (a session's; empty for a one-shot run).
    execs: Vec<Exec>,
    conns: [RawFd; MAX_CONNS],
    /// When a stop's grace ends (monotonic ms), once a stop was asked for.
    stop_deadline: Option<i64>,
    /// The stop's grace ran out and everything was killed.
    stop_killed: bool,
    denials: seccomp::Denials,
    listener: RawFd,
    /// When the main program started (monotonic ms), for the wall-clock limit.
    started_at: i64,
    /// Room for one request (taken from the [`ServeSpec`]; empty for a one-shot run).
    request: Vec<u8>,
    /// Room for the pointers of one exec's strings.
    ptrs: Vec<*const c_char>,
}

/// Becomes the tiny init. Never returns.
pub fn init(spec: &mut ChildSpec) -> ! {
    let report = spec.report_fd;
    let none = u32::MAX;

    // All signals are blocked and read from a signalfd; programs get a clean mask before exec.
    let all = sys::full_sigset();
    let sfd = sys::set_sigmask(&all)
        .and_then(|()| sys::signalfd(&all))
        .unwrap_or_else(|e| fail(report, Stage::Init, none, e));

    // Resource limits, inherited by the programs. The CPU time limit is set in each program's own process
    // (exec_program): on this one it would also count the set-up this process did, which is long under
    // software KVM, and the supervision it does afterwards.
    for &(resource, soft, hard) in &spec.rlimits {
        if resource == libc::RLIMIT_CPU {
            continue;
        }
        if let Err(e) = sys::set_rlimit(resource, soft, hard) {
            fail(report, Stage::Rlimits, resource, e);
        }
    }
    // seccomp last: on this process, so every program inherits it through fork and execve, and so this
    // process can answer the notifications of denied calls (audit) without being a separate server.
    let listener = match &spec.filter {
        Some(f) => seccomp::install(&f.program, f.listener)
            .unwrap_or_else(|e| fail(report, Stage::Seccomp, none, e))
            .unwrap_or(-1),
        None => -1,
    };

    // Moving the buffers out allocates nothing (an empty Vec owns no memory).
    let (request, ptrs, execs) = match spec.serve.as_mut() {
        Some(s) => (
            std::mem::take(&mut s.request),
            std::mem::take(&mut s.ptrs),
            std::mem::take(&mut s.execs),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let spec: &ChildSpec = spec;
    let has_main = !spec.candidates.is_empty();
    let wait_start = spec.serve.as_ref().is_some_and(|s| s.wait_start);
    let mut init = Init {
        spec,
        program: 0,
        pending: has_main && wait_start,
        execs,
        conns: [-1; MAX_CONNS],
        stop_deadline: None,
        stop_killed: false,
        denials: seccomp::Denials::default(),
        listener,
        started_at: sys::monotonic_ms(),
        request,
        ptrs,
    };
    if has_main && !wait_start {
        match init.start_main(sfd) {
            Ok(pid) => {
                sys::parent_death_signal(0);
                let _ = sys::write_all(report, &msg::encode([msg::STARTED, pid as u32, 0, 0]));
            }
            Err(failure) => {
                let _ = sys::write_all(report, &failure);
                sys::exit(125);
            }
        }
    } else {
        // A session: set up and serving (its program, if any, waits for START).
        sys::parent_death_signal(0);
        let _ = sys::write_all(report, &msg::encode([msg::STARTED, 0, 0, 0]));
    }
    if let Some(s) = &init.spec.serve
        && !s.listens
    {
        init.conns[0] = s.control;
    }
    init.serve(sfd)
}

impl Init<'_> {
    /// Forks and executes the main program; returns its pid, or the failure message to pass on.
    fn start_main(&mut self, sfd: RawFd) -> Result<libc::pid_t, [u8; msg::LEN]> {
        let spec = self.spec;
        let fail_msg =
            |e: Errno| msg::encode([msg::SETUP_FAILED, Stage::Init as u32, u32::MAX, e as u32]);
        let [exec_rd, exec_wr] = sys::pipe().map_err(fail_msg)?;
        let pid = match sys::fork() {
            Err(e) => return Err(fail_msg(e)),
            Ok(0) => {
                self.close_own(sfd, exec_rd);
                exec_program(spec, exec_wr)
            }
            Ok(pid) => pid,
        };
        sys::close(exec_wr);
        let result = wait_exec(exec_rd, pid);
        self.started_at = sys::monotonic_ms();
        result.map(|()| {
            self.program = pid;
            pid
        })
    }

    /// In a forked program, before exec: closes what belongs to this init (the rest is closed by
    /// close-on-exec, or by the exec's own descriptor set-up).
    fn close_own(&self, sfd: RawFd, exec_rd: RawFd) {
        sys::close(exec_rd);
        sys::close(sfd);
        sys::close(self.spec.death_fd);
        sys::close(self.spec.report_fd);
        if self.listener >= 0 {
            sys::close(self.listener);
        }
    }

    fn serve(&mut self, sfd: RawFd) -> ! {
        let spec = self.spec;
        let accept_fd = spec
            .serve
            .as_ref()
            .filter(|s| s.listens)
            .map_or(-1, |s| s.control);
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            let now = sys::monotonic_ms();
            let mut wait_ms: i64 = -1;
            if spec.timeout_ms >= 0 && self.program > 0 {
                wait_ms = (spec.timeout_ms - (now - self.started_at)).max(0);
            }
            if let Some(d) = self.stop_deadline.filter(|_| !self.stop_killed) {
                let left = (d - now).max(0);
                wait_ms = if wait_ms < 0 { left } else { wait_ms.min(left) };
            }
            let mut fds = [pfd(-1); 4 + MAX_CONNS];
            fds[0] = pfd(sfd);
            fds[1] = pfd(spec.death_fd);
            // A negative descriptor is ignored by poll.
            fds[2] = pfd(self.listener);
            fds[3] = pfd(accept_fd);
            for (slot, &c) in fds[4..].iter_mut().zip(&self.conns) {
                *slot = pfd(c);
            }
            let ready = sys::poll(&mut fds, wait_ms.min(i32::MAX as i64) as i32).unwrap_or(0);
            let now = sys::monotonic_ms();
            if spec.timeout_ms >= 0 && self.program > 0 && now - self.started_at >= spec.timeout_ms
            {
                self.last_words(msg::encode([msg::TIMED_OUT, 0, 0, 0]), 128 + libc::SIGKILL);
            }
            if let Some(d) = self.stop_deadline
                && !self.stop_killed
                && now >= d
            {
                // The grace is over: whatever is left in the sandbox is killed (the init itself is not).
                self.stop_killed = true;
                sys::kill(-1, libc::SIGKILL);
            }
            if ready == 0 {
                continue;
            }
            if fds[1].revents != 0 {
                // The host process is gone: nobody will read a verdict. Take everything down.
                sys::exit(1);
            }
            // A denied call: counted for the session, and for the exec whose process session made it.
            if fds[2].revents & libc::POLLIN != 0
                && let Some(f) = &spec.filter
            {
                let execs = &mut self.execs;
                let _ = seccomp::answer_one(self.listener, f, &mut self.denials, |nr, pid| {
                    if let Some(sid) = session_of(pid)
                        && let Some(e) = execs.iter_mut().find(|e| e.pid == sid && sid > 0)
                    {
                        e.record(nr);
                    }
                });
            }
            if fds[3].revents & libc::POLLIN != 0
                && let Ok(c) = sys::accept(accept_fd)
            {
                match self.conns.iter_mut().find(|s| **s < 0) {
                    Some(slot) => *slot = c,
                    None => sys::close(c),
                }
            }
            for i in 0..MAX_CONNS {
                let revents = fds[4 + i].revents;
                if revents == 0 || self.conns[i] < 0 {
                    continue;
                }
                if !self.request(self.conns[i], sfd) {
                    // End of file or a broken channel: forget it (a library session's host is watched
                    // through the death pipe).
                    sys::close(self.conns[i]);
                    self.conns[i] = -1;
                }
            }
            if fds[0].revents & libc::POLLIN != 0
                && let Ok(sig) = sys::read_signal(sfd)
            {
                if sig == libc::SIGCHLD {
                    self.reap();
                } else {
                    self.forward(sig);
                }
            }
        }
    }

    /// A signal for the sandbox: to the main program, or to every process when there is none.
    fn forward(&self, sig: i32) {
        if self.program > 0 {
            sys::kill(self.program, sig);
        } else {
            sys::kill(-1, sig);
        }
    }

    /// Reaps every ended child: the main program ends the sandbox; an exec's verdict goes to its reply
    /// socket; a stopping session ends once no process is left.
    fn reap(&mut self) {
        loop {
            match sys::reap_any_usage() {
                Ok(Some((pid, status, ru))) => {
                    if pid == self.program {
                        self.last_words(
                            msg::encode([msg::EXITED, status as u32, 0, 0]),
                            exit_code(status),
                        );
                    }
                    if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
                        for &(nr, count) in e.denied.iter().filter(|(_, c)| *c > 0) {
                            reply(e.reply, [msg::DENIED, nr as u32, count, 0], None);
                        }
                        let rss_kib = ru.ru_maxrss.clamp(0, u32::MAX as i64) as u32;
                        reply(e.reply, [msg::USAGE, rss_kib, 0, 0], None);
                        reply(
                            e.reply,
                            [
                                msg::EXITED,
                                status as u32,
                                millis(ru.ru_utime),
                                millis(ru.ru_stime),
                            ],
                            None,
                        );
                        sys::close(e.reply);
                        *e = FREE;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    // No child left at all.
                    if self.stop_deadline.is_some() {
                        self.last_words(msg::encode([msg::EXITED, 0, 0, 0]), 0);
                    }
                    return;
                }
            }
        }
    }

    /// The sandbox's end: the denied calls and `last` on the report pipe and in the status file (a session
    /// that outlived its creator is read there), then exit with `code` (the program's, for whoever reaps
    /// this process).
    fn last_words(&self, last: [u8; msg::LEN], code: i32) -> ! {
        let status = self.spec.serve.as_ref().map_or(-1, |s| s.status);
        for fd in [self.spec.report_fd, status] {
            if fd < 0 {
                continue;
            }
            for (nr, count) in self.denials.nonzero() {
                let _ = sys::write_all(fd, &msg::encode([msg::DENIED, nr as u32, count, 0]));
            }
            let _ = sys::write_all(fd, &last);
        }
        sys::exit(code)
    }

    /// Serves one request from a control channel; `false` when the channel ended.
    fn request(&mut self, conn: RawFd, sfd: RawFd) -> bool {
        if self.request.len() < msg::LEN {
            return false;
        }
        let mut fds = [-1; 4];
        let (n, got) = match sys::recv_msg(conn, &mut self.request, &mut fds) {
            Ok((0, _)) => return false,
            Ok(r) => r,
            Err(libc::EAGAIN) | Err(libc::EINTR) => return true,
            // Too long, or too many descriptors: this request is dropped, the channel stays.
            Err(libc::EMSGSIZE) => return true,
            Err(_) => return false,
        };
        let passed = &fds[..got];
        if n < msg::LEN {
            passed.iter().for_each(|&fd| sys::close(fd));
            return true;
        }
        let words = msg::decode(self.request[..msg::LEN].try_into().expect("checked length"));
        match words[0] {
            msg::EXEC if got == 4 => self.exec(words, n, passed, sfd),
            msg::START => {
                let to = passed.first().copied().unwrap_or(-1);
                let answer = if !self.pending {
                    msg::encode([
                        msg::SETUP_FAILED,
                        Stage::Init as u32,
                        u32::MAX,
                        libc::EALREADY as u32,
                    ])
                } else {
                    self.pending = false;
                    match self.start_main(sfd) {
                        Ok(pid) => msg::encode([msg::STARTED, pid as u32, 0, 0]),
                        Err(failure) => {
                            // The program never ran: the sandbox ends, like a failed one-shot start.
                            if to >= 0 {
                                let _ = sys::send_msg(to, &failure, &[]);
                            }
                            self.last_words(failure, 125);
                        }
                    }
                };
                if to >= 0 {
                    let _ = sys::send_msg(to, &answer, &[]);
                }
                passed.iter().for_each(|&fd| sys::close(fd));
            }
            msg::SIGNAL => {
                let sig = words[1] as i32;
                if (1..=64).contains(&sig) {
                    match words[2] {
                        1 => sys::kill(-1, sig),
                        // An exec's process group (never 0 or 1: this process's own group, or all).
                        2 if words[3] > 1 && words[3] <= i32::MAX as u32 => {
                            sys::kill(-(words[3] as libc::pid_t), sig)
                        }
                        2 => {}
                        _ => self.forward(sig),
                    }
                }
                passed.iter().for_each(|&fd| sys::close(fd));
            }
            msg::STOP => {
                if self.stop_deadline.is_none() {
                    self.stop_deadline = Some(sys::monotonic_ms() + words[1] as i64);
                    sys::kill(-1, libc::SIGTERM);
                    // Nothing running at all: the session ends now.
                    self.reap();
                }
                passed.iter().for_each(|&fd| sys::close(fd));
            }
            _ => passed.iter().for_each(|&fd| sys::close(fd)),
        }
        true
    }

    /// Starts one command of a session. `words`: EXEC, candidates, arguments, environment entries; then the
    /// strings (each NUL-terminated): working directory, candidates, arguments, environment. `passed`: reply
    /// socket, stdin, stdout, stderr.
    fn exec(&mut self, words: [u32; 4], len: usize, passed: &[RawFd], sfd: RawFd) {
        let [to, stdio @ ..] = [passed[0], passed[1], passed[2], passed[3]];
        let refuse = |e: Errno| {
            reply(
                to,
                [msg::SETUP_FAILED, Stage::Prepare as u32, u32::MAX, e as u32],
                None,
            );
            passed.iter().for_each(|&fd| sys::close(fd));
        };
        if self.stop_deadline.is_some() {
            return refuse(libc::ESHUTDOWN);
        }
        let Some(slot) = self.execs.iter().position(|e| e.pid == 0) else {
            return refuse(libc::EAGAIN);
        };
        let (ncand, nargs, nenv) = (words[1] as usize, words[2] as usize, words[3] as usize);
        let total = ncand
            .saturating_add(nargs)
            .saturating_add(nenv)
            .saturating_add(2);
        if ncand == 0 || nargs == 0 || total > self.ptrs.len() {
            return refuse(libc::E2BIG);
        }
        let ptrs = &mut self.ptrs;
        // Split the strings; each must end within the message.
        let strings = &self.request[msg::LEN..len];
        let mut at = 0;
        let mut next = || -> Option<*const c_char> {
            let rest = strings.get(at..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            let p = rest.as_ptr().cast::<c_char>();
            at += end + 1;
            Some(p)
        };
        let Some(cwd) = next() else {
            return refuse(libc::EINVAL);
        };
        let mut i = 0;
        for count in [ncand, nargs, nenv] {
            for _ in 0..count {
                match next() {
                    Some(p) => ptrs[i] = p,
                    None => return refuse(libc::EINVAL),
                }
                i += 1;
            }
            if i > ncand {
                ptrs[i] = std::ptr::null();
                i += 1;
            }
        }
        let cands = &self.ptrs[..ncand];
        let argv = &self.ptrs[ncand..ncand + nargs + 1];
        let envp = &self.ptrs[ncand + nargs + 1..total];
        // SAFETY: `cwd` points at a NUL-terminated string inside the request buffer (found above).
        let cwd = unsafe { CStr::from_ptr(cwd) };

        let [exec_rd, exec_wr] = match sys::pipe() {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        let pid = match sys::fork() {
            Err(e) => {
                sys::close(exec_rd);
                sys::close(exec_wr);
                return refuse(e);
            }
            Ok(0) => {
                self.close_own(sfd, exec_rd);
                exec_command(stdio, exec_wr, cwd, cands, argv, envp, self.spec)
            }
            Ok(pid) => pid,
        };
        sys::close(exec_wr);
        stdio.iter().for_each(|&fd| sys::close(fd));
        match wait_exec(exec_rd, pid) {
            Ok(()) => {
                let pidfd = sys::pidfd_open(pid).unwrap_or(-1);
                reply(
                    to,
                    [msg::STARTED, pid as u32, 0, 0],
                    (pidfd >= 0).then_some(pidfd),
                );
                if pidfd >= 0 {
                    sys::close(pidfd);
                }
                self.execs[slot] = Exec {
                    pid,
                    reply: to,
                    ..FREE
                };
            }
            Err(failure) => {
                let _ = sys::send_msg(to, &failure, &[]);
                sys::close(to);
            }
        }
    }
}

/// Waits until a forked program has executed (end of file on its close-on-exec pipe) or reported why it
/// could not (then it is reaped and the message returned).
fn wait_exec(exec_rd: RawFd, pid: libc::pid_t) -> Result<(), [u8; msg::LEN]> {
    let mut buf = [0u8; msg::LEN];
    let r = sys::read_full(exec_rd, &mut buf);
    sys::close(exec_rd);
    match r {
        Ok(0) => Ok(()),
        _ => {
            let _ = sys::wait_pid(pid);
            Err(buf)
        }
    }
}

/// An exec's own process: its descriptors 0, 1, 2 and nothing else, a session of its own, default signals,
/// its working directory, then execve.
fn exec_command(
    stdio: [RawFd; 3],
    exec_wr: RawFd,
    cwd: &CStr,
    cands: &[*const c_char],
    argv: &[*const c_char],
    envp: &[*const c_char],
    spec: &ChildSpec,
) -> ! {
    let fail_exec = |stage: Stage, e: Errno| -> ! { exec_failed(exec_wr, stage, e) };
    // Lift the three above 2 first, so installing one cannot clobber another, then keep only them and the
    // exec pipe.
    let mut lifted = [-1; 3];
    for (l, &fd) in lifted.iter_mut().zip(&stdio) {
        *l = sys::dup_above(fd, 3).unwrap_or_else(|e| fail_exec(Stage::Init, e));
    }
    for (target, &fd) in lifted.iter().enumerate() {
        if let Err(e) = sys::dup2(fd, target as RawFd) {
            fail_exec(Stage::Init, e);
        }
    }
    let mut keep = [0, 1, 2, exec_wr];
    keep.sort_unstable();
    if let Err(e) = sys::close_all_except(&keep) {
        fail_exec(Stage::Init, e);
    }
    if let Err((stage, e)) = own_process(spec) {
        fail_exec(stage, e);
    }
    if let Err(e) = sys::chdir(cwd) {
        fail_exec(Stage::Cwd, e);
    }
    // SAFETY: every candidate points at a NUL-terminated string of the request buffer.
    let paths = cands.iter().map(|&p| unsafe { CStr::from_ptr(p) });
    let err = exec_candidates(paths, argv, envp);
    fail_exec(Stage::Exec, err)
}
