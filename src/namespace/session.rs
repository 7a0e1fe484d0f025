//! The host's side of a session on the namespace backend: a sandbox whose init stays up and runs commands
//! it is sent over a control channel ([`child::serve`](super::child::serve)), each a fork of the init with
//! the layers the init has, its stdio the descriptors the host passed.

use std::ffi::{OsStr, OsString};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use super::child::{msg, serve};
use super::{DEFAULT_PATH, Launch, Started, setup_error, sys};
use crate::backend::Run;
use crate::error::Error;
use crate::outcome::{BackendKind, Denial, Enforced, Outcome, SetupFailure, Stage, Status, Usage};

pub(crate) mod detached;
pub(crate) use detached::{attach, create, is_zombie, pidfd_of, read_status};

/// How a session's init is reached and held, as [`spawn`](super::spawn) takes it.
pub(crate) struct Serve {
    /// The init's end of the control channel (see [`serve::ServeSpec::control`]).
    pub control: RawFd,
    /// `control` is a listening socket.
    pub listens: bool,
    /// The program waits for a START request.
    pub wait_start: bool,
    /// Descriptors the init holds open for the sandbox's life.
    pub held: Vec<RawFd>,
    /// The file the init writes its last words into (`-1`: none).
    pub status: RawFd,
    /// The sandbox outlives this process: no death pipe.
    pub detached: bool,
}

/// A SOCK_SEQPACKET pair, close-on-exec.
fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), SetupFailure> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| setup_error(Stage::Prepare, Some(e as i32), format!("socketpair: {e}")))
}

/// A live session on the namespace backend, host side.
#[derive(Debug)]
pub(crate) struct NsSession {
    /// The init, as a one-shot run's (its verdict when the session ends).
    pub started: Box<Started>,
    /// What every exec shares: the control channel and the session's defaults.
    pub shared: std::sync::Arc<Shared>,
}

/// The parts of a session an exec needs, shared with the command builders of its execs.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The host's end of the control channel.
    control: OwnedFd,
    /// The session's environment under each exec's own (its root's image `Env`).
    pub env: Vec<(OsString, OsString)>,
    /// The working directory an exec starts in unless it sets one.
    pub cwd: Option<PathBuf>,
    /// What the session enforces (each exec's verdict repeats it).
    pub enforced: Enforced,
    /// The CPU-time limit of each exec, to tell a CPU timeout from a plain signal.
    cpu_time: Option<Duration>,
    /// The session's cgroup: its out-of-memory kills tell an exec's SIGKILL apart.
    cgroup: Option<std::sync::Arc<super::cgroup::RunCgroup>>,
}

impl Shared {
    /// Asks the init to send `signal` to every process of the session.
    pub fn signal_all(&self, signal: i32) -> nix::Result<()> {
        send(&self.control, [msg::SIGNAL, signal as u32, 1, 0], &[])
    }
}

/// Starts a session without a program of its own: its init serves the control channel until it is stopped
/// or this process ends.
pub(crate) fn start(launch: &Launch<'_>) -> Result<NsSession, SetupFailure> {
    let (host_end, init_end) = seqpacket_pair()?;
    // The init polls its end and must never block on it.
    nix::fcntl::fcntl(
        &init_end,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| setup_error(Stage::Prepare, Some(e as i32), format!("fcntl: {e}")))?;
    let serve = Serve {
        control: init_end.as_raw_fd(),
        listens: false,
        wait_start: false,
        held: Vec::new(),
        status: -1,
        detached: false,
    };
    let launch = Launch {
        serve: Some(&serve),
        ..*launch
    };
    let (started, env, cwd) = super::spawn_session(&launch)?;
    drop(init_end);
    let shared = Shared {
        control: host_end,
        env,
        cwd,
        enforced: started.enforced.clone(),
        cpu_time: launch.policy.limits.cpu_time,
        cgroup: started.cgroup.clone(),
    };
    Ok(NsSession {
        started,
        shared: std::sync::Arc::new(shared),
    })
}

impl Shared {
    /// Asks the init to start the session's waiting program; returns its pid in the sandbox.
    pub fn start_program(&self) -> Result<u32, SetupFailure> {
        let (reply, theirs) = seqpacket_pair()?;
        send(&self.control, [msg::START, 0, 0, 0], &[theirs.as_raw_fd()]).map_err(|e| {
            setup_error(
                Stage::Init,
                Some(e as i32),
                format!("the session does not answer: {e}"),
            )
        })?;
        drop(theirs);
        match receive(&reply) {
            Ok((Some([msg::STARTED, pid, ..]), _)) => Ok(pid),
            Ok((Some([msg::SETUP_FAILED, _, _, errno]), _)) if errno as i32 == libc::EALREADY => {
                Err(setup_error(
                    Stage::Init,
                    Some(libc::EALREADY),
                    "the session's program was started already",
                ))
            }
            Ok((Some([msg::SETUP_FAILED, stage, _, errno]), _)) => Err(setup_error(
                Stage::from_u32(stage),
                Some(errno as i32),
                format!(
                    "the session's program could not start: {}",
                    std::io::Error::from_raw_os_error(errno as i32)
                ),
            )),
            other => Err(setup_error(
                Stage::Init,
                None,
                format!("the session ended before answering (answer {other:?})"),
            )),
        }
    }

    /// Asks the init to stop the session (see [`NsSession::stop`]).
    pub fn request_stop(&self, grace: Duration) -> nix::Result<()> {
        let ms = grace.as_millis().min(u32::MAX as u128) as u32;
        send(&self.control, [msg::STOP, ms, 0, 0], &[])
    }

    /// Asks the init to send `signal` to the session's program (every process when it has none).
    pub fn signal_program(&self, signal: i32) -> nix::Result<()> {
        send(&self.control, [msg::SIGNAL, signal as u32, 0, 0], &[])
    }
}

impl NsSession {
    /// Whether the session's init still runs.
    pub fn running(&self) -> bool {
        let mut pfd = [libc::pollfd {
            fd: self.started.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        matches!(sys::poll(&mut pfd, 0), Ok(0))
    }

    /// Stops the session: SIGTERM to every process in it, SIGKILL to what is left after `grace`; then the
    /// session's verdict (its whole usage, the denied system calls of all its execs).
    pub fn stop(self, grace: Duration, wall: Duration) -> Result<Outcome, Error> {
        let ms = grace.as_millis().min(u32::MAX as u128) as u32;
        let _ = send(&self.shared.control, [msg::STOP, ms, 0, 0], &[]);
        // The init ends itself once nothing is left; if it cannot (or is gone already), it is killed.
        let mut pfd = [libc::pollfd {
            fd: self.started.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let bound = grace + Duration::from_secs(5);
        if !matches!(
            sys::poll(&mut pfd, bound.as_millis().min(i32::MAX as u128) as i32),
            Ok(1)
        ) {
            let _ = sys::pidfd_signal(&self.started.pidfd, libc::SIGKILL);
        }
        Started::finish(*self.started, wall, false).map_err(|source| Error::Io {
            what: "wait4 on the session's init",
            source,
        })
    }
}

/// Sends one request on a control channel.
fn send(control: &OwnedFd, words: [u32; 4], fds: &[RawFd]) -> nix::Result<()> {
    send_bytes(control, &msg::encode(words), fds)
}

fn send_bytes(control: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
    loop {
        match socket::sendmsg::<()>(
            control.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r.map(drop),
        }
    }
}

/// The request for one exec: header, working directory, candidates, arguments, environment.
fn exec_request(launch: &Launch<'_>, shared: &Shared) -> Result<Vec<u8>, SetupFailure> {
    let bad = |what: String| setup_error(Stage::Prepare, None, what);
    let mut env: Vec<(OsString, OsString)> = shared.env.clone();
    for (k, v) in launch.env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            return Err(bad(format!("environment variable name {k:?} is invalid")));
        }
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_bytes().to_vec())
        .unwrap_or_default();
    let cands = super::candidates(launch.program, &path_var)?;
    let cwd: &Path = launch
        .cwd
        .or(shared.cwd.as_deref())
        .unwrap_or(Path::new("/"));
    if !cwd.is_absolute() {
        return Err(setup_error(
            Stage::Cwd,
            None,
            format!("working directory {cwd:?} is not absolute"),
        ));
    }
    let argv: Vec<&OsStr> = std::iter::once(launch.arg0.unwrap_or(launch.program))
        .chain(launch.args.iter().map(OsString::as_os_str))
        .collect();
    let header = [
        msg::EXEC,
        cands.len() as u32,
        argv.len() as u32,
        env.len() as u32,
    ];
    let mut out = msg::encode(header).to_vec();
    let mut push = |b: &[u8], what: &str| -> Result<(), SetupFailure> {
        if b.contains(&0) {
            return Err(bad(format!("{what} contains a NUL byte")));
        }
        out.extend_from_slice(b);
        out.push(0);
        Ok(())
    };
    push(cwd.as_os_str().as_bytes(), "working directory")?;
    for c in &cands {
        push(c.as_bytes(), "program path")?;
    }
    for a in &argv {
        push(a.as_bytes(), "argument")?;
    }
    for (k, v) in &env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        push(&kv, "environment variable")?;
    }
    let strings = cands.len() + argv.len() + env.len() + 2;
    if out.len() > serve::MAX_REQUEST || strings > serve::MAX_STRINGS {
        return Err(setup_error(
            Stage::Prepare,
            Some(libc::E2BIG),
            format!(
                "the command's arguments and environment take {} bytes in {strings} strings; a session's \
                 command may take {} bytes in {} strings",
                out.len(),
                serve::MAX_REQUEST,
                serve::MAX_STRINGS
            ),
        ));
    }
    Ok(out)
}

/// Runs one command in the session: returns once it was executed, or with why it could not be.
pub(crate) fn exec(
    shared: &std::sync::Arc<Shared>,
    launch: &Launch<'_>,
) -> Result<ExecRun, SetupFailure> {
    if !launch.extra_fds.is_empty() {
        return Err(setup_error(
            Stage::Prepare,
            None,
            "a session's command takes only stdin, stdout and stderr (no further descriptors)",
        ));
    }
    let request = exec_request(launch, shared)?;
    let ooms = shared.cgroup.as_ref().map_or(0, |c| c.stats().oom_kills);
    let (reply, theirs) = seqpacket_pair()?;
    // Inherited streams are this process's own.
    let stdio: Vec<RawFd> = (0..3)
        .map(|i| match launch.stdio[i] {
            -1 => i as RawFd,
            fd => fd,
        })
        .collect();
    let fds = [theirs.as_raw_fd(), stdio[0], stdio[1], stdio[2]];
    send_bytes(&shared.control, &request, &fds).map_err(|e| {
        setup_error(
            Stage::Init,
            Some(e as i32),
            format!("the session does not take commands (it has ended?): sendmsg: {e}"),
        )
    })?;
    drop(theirs);

    let (words, pidfd) = receive(&reply).map_err(|e| {
        setup_error(
            Stage::Init,
            Some(e as i32),
            format!("reading the session's answer: {e}"),
        )
    })?;
    match words {
        Some([msg::STARTED, ns_pid, ..]) => {
            // No pidfd: a VM session's keeper, whose commands run in the guest (signals go as requests).
            let pid = pidfd.as_ref().and_then(host_pid).unwrap_or(0);
            Ok(ExecRun {
                pid,
                ns_pid,
                pidfd,
                reply,
                usage: None,
                exited: None,
                gone: false,
                denied: Vec::new(),
                shared: std::sync::Arc::clone(shared),
                ooms,
            })
        }
        Some([msg::SETUP_FAILED, stage, _, errno]) => {
            let stage = Stage::from_u32(stage);
            let err = std::io::Error::from_raw_os_error(errno as i32);
            let what = match stage {
                Stage::Exec => format!("cannot execute {:?}: {err}", launch.program),
                Stage::Cwd => format!(
                    "cannot change to the working directory {:?}: {err}",
                    launch
                        .cwd
                        .or(shared.cwd.as_deref())
                        .unwrap_or(Path::new("/"))
                ),
                _ if errno as i32 == libc::EAGAIN => format!(
                    "the session runs {} commands already: {err}",
                    serve::MAX_EXECS
                ),
                _ if errno as i32 == libc::ESHUTDOWN => "the session is stopping".to_string(),
                _ => format!("the session could not start the command: {err}"),
            };
            Err(setup_error(stage, Some(errno as i32), what))
        }
        other => Err(setup_error(
            Stage::Init,
            None,
            format!("the session ended before starting the command (answer {other:?})"),
        )),
    }
}

/// Receives one answer (and a descriptor) from a reply socket; `None`: end of file.
fn receive(reply: &OwnedFd) -> nix::Result<(Option<[u32; 4]>, Option<OwnedFd>)> {
    receive_flags(reply, MsgFlags::MSG_CMSG_CLOEXEC)
}

fn receive_flags(
    reply: &OwnedFd,
    flags: MsgFlags,
) -> nix::Result<(Option<[u32; 4]>, Option<OwnedFd>)> {
    let mut buf = [0u8; msg::LEN];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(reply.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(m) => {
                let mut pidfd = None;
                for c in m.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // SAFETY: the kernel just installed this descriptor for us.
                            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                            if pidfd.is_none() {
                                pidfd = Some(owned);
                            }
                        }
                    }
                }
                let n = m.bytes;
                if n == 0 {
                    return Ok((None, pidfd));
                }
                if n != msg::LEN {
                    return Err(nix::errno::Errno::EPROTO);
                }
                return Ok((Some(msg::decode(&buf)), pidfd));
            }
        }
    }
}

/// The host pid of the process a pidfd refers to (its `Pid:` line in /proc/self/fdinfo).
fn host_pid(pidfd: &OwnedFd) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|&p| p > 0)
        .map(|p| p as u32)
}

/// One command running in a session.
pub(crate) struct ExecRun {
    /// Its host pid (0 when this process cannot see it).
    pid: u32,
    /// Its pid in the sandbox (a VM session's keeper: its number for the command).
    ns_pid: u32,
    /// None for a command of a VM session's keeper.
    pidfd: Option<OwnedFd>,
    /// Where the session's init reports how it ended.
    reply: OwnedFd,
    /// Its peak resident memory in KiB, once reported.
    usage: Option<u32>,
    /// Its EXITED words, once reported.
    exited: Option<[u32; 4]>,
    /// The session ended before it reported.
    gone: bool,
    /// The system calls its process session was denied.
    denied: Vec<Denial>,
    /// Its session's channel and defaults.
    shared: std::sync::Arc<Shared>,
    /// The cgroup's out-of-memory kills when it started.
    ooms: u64,
}

impl std::fmt::Debug for ExecRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecRun")
            .field("pid", &self.pid)
            .field("ns_pid", &self.ns_pid)
            .finish()
    }
}

impl Run for ExecRun {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Without a pidfd (a VM session's command) the reply socket stands in; signals then go as requests.
    fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_ref().unwrap_or(&self.reply).as_fd()
    }

    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.reply.as_fd()
    }

    fn signal(&self, signal: i32) -> Result<(), i32> {
        match &self.pidfd {
            Some(pidfd) => sys::pidfd_signal(pidfd, signal),
            None => send(
                &self.shared.control,
                [msg::SIGNAL, signal as u32, 2, self.ns_pid],
                &[],
            )
            .map_err(|e| e as i32),
        }
    }

    fn ended(&mut self) -> bool {
        loop {
            match receive_flags(&self.reply, MsgFlags::MSG_DONTWAIT) {
                Ok((Some([msg::USAGE, kib, ..]), _)) => self.usage = Some(kib),
                Ok((Some([msg::DENIED, nr, count, _]), _)) => self.denied.push(Denial {
                    syscall: super::seccomp::syscall_name(nr as i32)
                        .map_or_else(|| format!("#{nr}"), String::from),
                    count,
                }),
                Ok((Some(w @ [msg::EXITED, ..]), _)) => {
                    self.exited = Some(w);
                    return true;
                }
                Ok((Some(_), _)) => {}
                Ok((None, _)) => {
                    self.gone = true;
                    return true;
                }
                Err(nix::errno::Errno::EAGAIN) => return false,
                Err(_) => {
                    self.gone = true;
                    return true;
                }
            }
        }
    }

    fn finish(self: Box<Self>, wall: Duration, host_timeout: bool) -> Result<Outcome, Error> {
        let ms = |m: u32| Duration::from_millis(m as u64);
        let (status, cpu_user, cpu_sys) = match self.exited {
            Some([_, raw, user, sys]) => {
                let raw = raw as i32;
                let (user, sys) = (ms(user), ms(sys));
                let oom = || {
                    self.shared
                        .cgroup
                        .as_ref()
                        .is_some_and(|c| c.stats().oom_kills > self.ooms)
                };
                let status = if libc::WIFSIGNALED(raw) {
                    let sig = libc::WTERMSIG(raw);
                    let over_cpu = self.shared.cpu_time.is_some_and(|limit| {
                        sig == libc::SIGXCPU || (sig == libc::SIGKILL && user + sys >= limit)
                    });
                    if over_cpu {
                        Status::TimedOut(crate::outcome::TimeLimit::Cpu)
                    } else if host_timeout && sig == libc::SIGKILL {
                        Status::TimedOut(crate::outcome::TimeLimit::Wall)
                    } else if sig == libc::SIGKILL && oom() {
                        Status::OomKilled
                    } else {
                        Status::Signaled(sig)
                    }
                } else {
                    Status::Exited(libc::WEXITSTATUS(raw))
                };
                (status, user, sys)
            }
            // The session ended under it: it was killed with everything else.
            _ => (
                Status::Signaled(libc::SIGKILL),
                Duration::ZERO,
                Duration::ZERO,
            ),
        };
        Ok(Outcome {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
            usage: Usage {
                wall,
                cpu_user,
                cpu_sys,
                peak_memory_bytes: self.usage.map(|k| k as u64 * 1024),
                source: "rusage".into(),
            },
            backend: BackendKind::Namespace,
            fallback_reason: None,
            enforced: self.shared.enforced.clone(),
            denied_syscalls: self.denied,
            vm: None,
            capture: Default::default(),
        })
    }

    fn streams_outlive(&self) -> bool {
        true
    }

    fn kill(&self) -> Result<(), i32> {
        // Its whole process group (what it started in the background with it), then the process itself.
        let _ = send(
            &self.shared.control,
            [msg::SIGNAL, libc::SIGKILL as u32, 2, self.ns_pid],
            &[],
        );
        match &self.pidfd {
            Some(pidfd) => sys::pidfd_signal(pidfd, libc::SIGKILL),
            None => Ok(()),
        }
    }

    fn abort(self: Box<Self>) {
        let _ = self.kill();
    }
}
