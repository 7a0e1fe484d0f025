//! The `Sandbox` builder and the running `SandboxChild`, shaped like `std::process::Command` and `Child`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{PipeReader, PipeWriter, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::namespace::seccomp;
use crate::namespace::{self, Launch, Started, child::msg};
use crate::outcome::{BackendKind, Denial, Outcome, SetupFailure, Status, TimeLimit, Usage};
use crate::policy::{Policy, PolicyError};

/// Errors of the sandbox API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The sandbox could not be built or the program not started.
    #[error("{0}")]
    Setup(SetupFailure),
    /// The requested backend is not available.
    #[error("backend {0} is not available: {1}")]
    Backend(&'static str, String),
    /// Waiting for or talking to the sandbox failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Which backend runs the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Namespaces when the host allows them, else the VM backend.
    #[default]
    Auto,
    /// Linux namespaces on the host kernel.
    Namespace,
    /// A microVM with our guest kernel.
    Vm,
}

/// Where one of the program's standard streams goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The host process's own stream.
    #[default]
    Inherit,
    /// A pipe to the host: a handle on [`SandboxChild`].
    Piped,
    /// `/dev/null`.
    Null,
    /// An open file or other descriptor.
    Fd(OwnedFd),
}

impl From<File> for Stdio {
    fn from(f: File) -> Self {
        Stdio::Fd(f.into())
    }
}

/// A program to run in a sandbox, built like `std::process::Command`.
///
/// The environment starts empty except for a default `PATH`; the working directory is `/`.
#[derive(Debug)]
pub struct Sandbox {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdio: [Option<Stdio>; 3],
    policy: Policy,
    backend: Backend,
    extra_fds: Vec<(OwnedFd, RawFd)>,
}

impl Sandbox {
    /// A sandbox that will run `program` (looked up in the sandbox's `PATH` unless it contains a `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Sandbox {
            program: program.as_ref().into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdio: [None, None, None],
            policy: Policy::default(),
            backend: Backend::Auto,
            extra_fds: Vec::new(),
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().into()));
        self
    }

    /// Sets an environment variable (the environment starts empty but for `PATH`).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().into()));
        self
    }

    /// Sets the working directory inside the sandbox (absolute).
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the program's standard input.
    pub fn stdin(&mut self, s: Stdio) -> &mut Self {
        self.stdio[0] = Some(s);
        self
    }

    /// Sets the program's standard output.
    pub fn stdout(&mut self, s: Stdio) -> &mut Self {
        self.stdio[1] = Some(s);
        self
    }

    /// Sets the program's standard error.
    pub fn stderr(&mut self, s: Stdio) -> &mut Self {
        self.stdio[2] = Some(s);
        self
    }

    /// Passes `fd` to the program as descriptor number `target` (3 or more), e.g. a socket. Every other
    /// descriptor of the host process stays outside.
    pub fn inherit_fd(&mut self, fd: OwnedFd, target: RawFd) -> &mut Self {
        self.extra_fds.push((fd, target));
        self
    }

    /// Sets the policy.
    pub fn policy(&mut self, policy: Policy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Chooses the backend.
    pub fn backend(&mut self, backend: Backend) -> &mut Self {
        self.backend = backend;
        self
    }

    /// Starts the program; standard streams are inherited unless set.
    pub fn spawn(&mut self) -> Result<SandboxChild, Error> {
        self.spawn_with_defaults(|| Stdio::Inherit, || Stdio::Inherit)
    }

    /// Runs the program to the end and returns the verdict with stdout and stderr captured (stdin is null
    /// unless set). Failures to build the sandbox or start the program are a verdict too
    /// ([`Status::SetupFailed`]); only an invalid policy is an error.
    pub fn output(&mut self) -> Result<Outcome, Error> {
        self.policy.validate()?;
        match self.spawn_with_defaults(|| Stdio::Null, || Stdio::Piped) {
            Ok(child) => child.wait_with_output(),
            Err(Error::Setup(f)) => Ok(Outcome::setup_failed(f, BackendKind::Namespace)),
            Err(e) => Err(e),
        }
    }

    /// Runs the program to the end with inherited streams (unless set) and returns the verdict.
    pub fn status(&mut self) -> Result<Outcome, Error> {
        self.policy.validate()?;
        match self.spawn() {
            Ok(mut child) => child.wait(),
            Err(Error::Setup(f)) => Ok(Outcome::setup_failed(f, BackendKind::Namespace)),
            Err(e) => Err(e),
        }
    }

    fn spawn_with_defaults(
        &mut self,
        stdin_default: impl Fn() -> Stdio,
        out_default: impl Fn() -> Stdio,
    ) -> Result<SandboxChild, Error> {
        self.policy.validate()?;
        if self.backend == Backend::Vm {
            return Err(Error::Backend(
                "vm",
                "the VM backend is not built yet; use --backend namespace".into(),
            ));
        }
        let mut streams = Streams::default();
        let mut fds: [RawFd; 3] = [-1; 3];
        let mut held: Vec<OwnedFd> = Vec::new();
        for (slot, (fd_slot, chosen)) in fds.iter_mut().zip(&mut self.stdio).enumerate() {
            let s = chosen.take().unwrap_or_else(|| {
                if slot == 0 {
                    stdin_default()
                } else {
                    out_default()
                }
            });
            let child_end: Option<OwnedFd> = match s {
                Stdio::Inherit => None,
                Stdio::Null => Some(
                    File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(io("opening /dev/null"))?
                        .into(),
                ),
                Stdio::Fd(fd) => Some(fd),
                Stdio::Piped => {
                    let (r, w) = std::io::pipe().map_err(io("creating a pipe"))?;
                    if slot == 0 {
                        streams.stdin = Some(w);
                        Some(r.into())
                    } else {
                        if slot == 1 {
                            streams.stdout = Some(r);
                        } else {
                            streams.stderr = Some(r);
                        }
                        Some(w.into())
                    }
                }
            };
            if let Some(fd) = child_end {
                *fd_slot = fd.as_raw_fd();
                held.push(fd);
            }
        }
        let extra: Vec<(RawFd, RawFd)> = self
            .extra_fds
            .iter()
            .map(|(fd, t)| (fd.as_raw_fd(), *t))
            .collect();
        let launch = Launch {
            program: &self.program,
            args: &self.args,
            env: &self.env,
            cwd: self.cwd.as_deref(),
            policy: &self.policy,
            stdio: fds,
            extra_fds: &extra,
        };
        let started = Instant::now();
        let inner = namespace::spawn(&launch).map_err(Error::Setup)?;
        drop(held);
        Ok(SandboxChild {
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
            inner: Some(inner),
            started,
            timeout: self.policy.timeout,
            killed: false,
            done: None,
        })
    }
}

#[derive(Default)]
struct Streams {
    stdin: Option<PipeWriter>,
    stdout: Option<PipeReader>,
    stderr: Option<PipeReader>,
}

/// A running sandbox. Dropping it kills the whole process tree.
#[derive(Debug)]
pub struct SandboxChild {
    /// The program's standard input, when piped.
    pub stdin: Option<PipeWriter>,
    /// The program's standard output, when piped.
    pub stdout: Option<PipeReader>,
    /// The program's standard error, when piped.
    pub stderr: Option<PipeReader>,
    inner: Option<Started>,
    started: Instant,
    timeout: Option<Duration>,
    killed: bool,
    done: Option<Outcome>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").field("pid", &self.pid).finish()
    }
}

/// Extra time the host gives the sandbox's own timeout before it kills the sandbox itself.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

impl SandboxChild {
    /// The host pid of the sandbox's init process (the program's parent, PID 1 inside).
    pub fn id(&self) -> u32 {
        self.inner.as_ref().map_or(0, |s| s.pid as u32)
    }

    /// Kills the whole process tree.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(s) = &self.inner {
            self.killed = true;
            send_signal(&s.pidfd, libc::SIGKILL).map_err(io("pidfd_send_signal(SIGKILL)"))?;
        }
        Ok(())
    }

    /// Sends `signal` to the program (through the sandbox's init, which forwards it).
    pub fn signal(&mut self, signal: i32) -> Result<(), Error> {
        if let Some(s) = &self.inner {
            send_signal(&s.pidfd, signal).map_err(io("pidfd_send_signal"))?;
        }
        Ok(())
    }

    /// Waits for the end without blocking: `None` while the sandbox still runs.
    pub fn try_wait(&mut self) -> Result<Option<Outcome>, Error> {
        if self.done.is_none() {
            self.poll_exit(Some(Duration::ZERO))?;
        }
        Ok(self.done.clone())
    }

    /// Waits for the end (enforcing the timeout) and returns the verdict. Piped streams are left open.
    pub fn wait(&mut self) -> Result<Outcome, Error> {
        drop(self.stdin.take());
        while self.done.is_none() {
            self.poll_exit(None)?;
        }
        Ok(self.done.clone().expect("set above"))
    }

    /// Waits for the end while collecting stdout and stderr.
    pub fn wait_with_output(mut self) -> Result<Outcome, Error> {
        drop(self.stdin.take());
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut streams: Vec<(PipeReader, bool)> = Vec::new();
        if let Some(s) = self.stdout.take() {
            streams.push((s, true));
        }
        if let Some(s) = self.stderr.take() {
            streams.push((s, false));
        }
        let mut buf = vec![0u8; 64 * 1024];
        while !streams.is_empty() {
            let mut pfds: Vec<libc::pollfd> = streams
                .iter()
                .map(|(s, _)| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let wait = self
                .remaining()
                .map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
            let ready = namespace::sys::poll(&mut pfds, wait).map_err(|e| Error::Io {
                what: "poll on the sandbox's output",
                source: std::io::Error::from_raw_os_error(e),
            })?;
            if ready == 0 {
                // The sandbox overran its own timeout: take it down; the pipes then close.
                self.kill()?;
                continue;
            }
            let mut i = 0;
            while i < streams.len() {
                if pfds[i].revents == 0 {
                    i += 1;
                    continue;
                }
                let (s, is_out) = &mut streams[i];
                match s.read(&mut buf) {
                    Ok(0) => {
                        streams.remove(i);
                        pfds.remove(i);
                        continue;
                    }
                    Ok(n) => {
                        if *is_out {
                            out.extend_from_slice(&buf[..n]);
                        } else {
                            err.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Error::Io {
                            what: "reading the sandbox's output",
                            source: e,
                        });
                    }
                }
                i += 1;
            }
        }
        let mut outcome = self.wait()?;
        outcome.stdout = out;
        outcome.stderr = err;
        Ok(outcome)
    }

    /// How long until the host stops waiting for the sandbox's own timeout.
    fn remaining(&self) -> Option<Duration> {
        self.timeout
            .map(|t| (t + TIMEOUT_GRACE).saturating_sub(self.started.elapsed()))
    }

    /// Waits up to `limit` (or the timeout) for the init to end; records the verdict when it did.
    fn poll_exit(&mut self, limit: Option<Duration>) -> Result<(), Error> {
        let Some(s) = &self.inner else { return Ok(()) };
        let wait = match (limit, self.remaining()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut pfd = [libc::pollfd {
            fd: s.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = wait.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
        let ready = namespace::sys::poll(&mut pfd, ms).map_err(|e| Error::Io {
            what: "poll on the sandbox's pidfd",
            source: std::io::Error::from_raw_os_error(e),
        })?;
        if ready == 0 {
            if self.remaining() == Some(Duration::ZERO) {
                self.kill()?;
            }
            return Ok(());
        }
        self.reap()
    }

    /// Collects the ended init and turns its report into the verdict.
    fn reap(&mut self) -> Result<(), Error> {
        let Some(mut s) = self.inner.take() else {
            return Ok(());
        };
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid storage for the kernel to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are writable; `pid` is our own unreaped child (its pidfd is held).
        let r = unsafe { libc::wait4(s.pid, &mut status, 0, &mut ru) };
        let wall = self.started.elapsed();
        if r < 0 {
            return Err(Error::Io {
                what: "wait4 on the sandbox's init",
                source: std::io::Error::last_os_error(),
            });
        }
        // The init's last words: denied system calls, then how the program ended.
        let mut denied = Vec::new();
        let mut last = None;
        let mut buf = [0u8; msg::LEN];
        while namespace::read_message(&mut s.report, &mut buf).is_ok() {
            match msg::decode(&buf) {
                [msg::DENIED, nr, count, _] => denied.push(Denial {
                    syscall: seccomp::syscall_name(nr as i32)
                        .map_or_else(|| format!("#{nr}"), String::from),
                    count,
                }),
                words => {
                    last = Some(words);
                    break;
                }
            }
        }
        let stats = s.cgroup.as_ref().map(|cg| cg.stats()).unwrap_or_default();
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        let cpu_user = stats.cpu_user.unwrap_or(tv(ru.ru_utime));
        let cpu_sys = stats.cpu_sys.unwrap_or(tv(ru.ru_stime));
        let killed_by = |sig| match last {
            Some([msg::EXITED, raw, ..]) => {
                libc::WIFSIGNALED(raw as i32) && libc::WTERMSIG(raw as i32) == sig
            }
            _ => false,
        };
        let over_cpu = s.cpu_time.is_some_and(|limit| {
            killed_by(libc::SIGXCPU) || (killed_by(libc::SIGKILL) && cpu_user + cpu_sys >= limit)
        });
        let status = match last {
            _ if over_cpu => Status::TimedOut(TimeLimit::Cpu),
            Some([msg::TIMED_OUT, ..]) => Status::TimedOut(TimeLimit::Wall),
            _ if stats.oom_kills > 0 && (killed_by(libc::SIGKILL) || last.is_none()) => {
                Status::OomKilled
            }
            Some([msg::EXITED, raw, ..]) => {
                let raw = raw as i32;
                if libc::WIFSIGNALED(raw) {
                    Status::Signaled(libc::WTERMSIG(raw))
                } else {
                    Status::Exited(libc::WEXITSTATUS(raw))
                }
            }
            _ if self.killed && self.timeout.is_some_and(|t| wall >= t) => {
                Status::TimedOut(TimeLimit::Wall)
            }
            _ => Status::Signaled(libc::SIGKILL),
        };
        let (peak, source) = match stats.peak_memory {
            Some(p) => (Some(p), "cgroup"),
            None => (Some(ru.ru_maxrss as u64 * 1024), "rusage"),
        };
        self.done = Some(Outcome {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
            usage: Usage {
                wall,
                cpu_user,
                cpu_sys,
                peak_memory_bytes: peak,
                source,
            },
            backend: BackendKind::Namespace,
            fallback_reason: None,
            enforced: std::mem::take(&mut s.enforced),
            denied_syscalls: denied,
        });
        // Dropping `s` removes the run's cgroup, now empty.
        Ok(())
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take() {
            let _ = send_signal(&s.pidfd, libc::SIGKILL);
            let _ = namespace::sys::wait_pid(s.pid);
        }
    }
}

fn send_signal(pidfd: &impl AsFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // ESRCH: it already ended, which is what was wanted.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}
