//! The `Sandbox` builder and the running `SandboxChild`, shaped like `std::process::Command` and `Child`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Run, VmEngine};
use crate::error::{Error, io};
use crate::namespace::{self, Launch};
use crate::outcome::{BackendKind, Outcome, OutputLimit, SetupFailure, Stage};
use crate::policy::Policy;
use crate::running::SandboxChild;
#[cfg(feature = "vm")]
use crate::vm;

#[cfg(feature = "tokio")]
mod aio;

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

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Self {
        Stdio::Fd(fd)
    }
}

impl From<std::io::PipeReader> for Stdio {
    fn from(p: std::io::PipeReader) -> Self {
        Stdio::Fd(p.into())
    }
}

impl From<std::io::PipeWriter> for Stdio {
    fn from(p: std::io::PipeWriter) -> Self {
        Stdio::Fd(p.into())
    }
}

impl From<std::process::ChildStdin> for Stdio {
    fn from(p: std::process::ChildStdin) -> Self {
        Stdio::Fd(p.into())
    }
}

impl From<std::process::ChildStdout> for Stdio {
    fn from(p: std::process::ChildStdout) -> Self {
        Stdio::Fd(p.into())
    }
}

impl From<std::process::ChildStderr> for Stdio {
    fn from(p: std::process::ChildStderr) -> Self {
        Stdio::Fd(p.into())
    }
}

/// A stream as a builder keeps it: a descriptor is shared by the builder's clones and duplicated for each
/// spawn, so that a builder can be spawned again with the same settings.
#[derive(Clone, Debug)]
enum Stream {
    Inherit,
    Piped,
    Null,
    Fd(std::sync::Arc<OwnedFd>),
}

impl From<Stdio> for Stream {
    fn from(s: Stdio) -> Stream {
        match s {
            Stdio::Inherit => Stream::Inherit,
            Stdio::Piped => Stream::Piped,
            Stdio::Null => Stream::Null,
            Stdio::Fd(fd) => Stream::Fd(std::sync::Arc::new(fd)),
        }
    }
}

/// A program to run in a sandbox, built like `std::process::Command`.
///
/// The environment starts empty except for a default `PATH`; the working directory is `/`. A builder can be
/// spawned again and cloned: its streams and passed descriptors are duplicated for each spawn (never used
/// up), so every spawn gets the same settings.
///
/// ```
/// use sandkasten::{Sandbox, Status};
/// let mut cmd = Sandbox::new("/bin/sh");
/// cmd.args(["-c", "echo $GREETING; exit 3"]).env("GREETING", "hi");
/// let outcome = cmd.output()?;
/// assert_eq!(outcome.status, Status::Exited(3));
/// assert_eq!(outcome.stdout, b"hi\n");
/// // The same builder again: the same settings.
/// assert_eq!(cmd.output()?.stdout, b"hi\n");
/// # Ok::<(), sandkasten::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Sandbox {
    program: OsString,
    arg0: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdio: [Option<Stream>; 3],
    policy: Policy,
    backend: Backend,
    vm_engine: VmEngine,
    vm_snapshots: crate::SnapshotCache,
    #[cfg(feature = "vm")]
    pool: Option<crate::VmPool>,
    extra_fds: Vec<(std::sync::Arc<OwnedFd>, RawFd)>,
    /// Built by our guest agent for a run in its VM.
    guest: bool,
    /// A command of a session: the session and the policy it runs under.
    session: Option<(SessionRef, Policy)>,
    /// What `output` keeps of stdout and stderr.
    output_limits: [OutputLimit; 2],
}

/// The session a command runs in: one of the namespace backend, or one in a VM.
#[derive(Clone, Debug)]
pub(crate) enum SessionRef {
    Namespace(std::sync::Arc<namespace::session::Shared>),
    #[cfg(feature = "vm")]
    Vm(std::sync::Arc<crate::vm::session::VmShared>),
}

impl Sandbox {
    /// A sandbox that will run `program` (looked up in the sandbox's `PATH` unless it contains a `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Sandbox {
            program: program.as_ref().into(),
            arg0: None,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdio: [None, None, None],
            policy: Policy::default(),
            backend: Backend::Auto,
            vm_engine: VmEngine::Auto,
            vm_snapshots: crate::SnapshotCache::default(),
            #[cfg(feature = "vm")]
            pool: None,
            extra_fds: Vec::new(),
            guest: false,
            session: None,
            output_limits: [OutputLimit::default(); 2],
        }
    }

    /// Makes this a command of a session (see [`Session::command`](crate::Session::command)).
    pub(crate) fn in_session(&mut self, shared: SessionRef, policy: Policy) -> &mut Self {
        self.session = Some((shared, policy));
        self
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

    /// Sets environment variables (see [`Sandbox::env`]).
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes a variable set before.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.retain(|(k, _)| k.as_os_str() != key.as_ref());
        self
    }

    /// Removes every variable set before (the sandbox's default `PATH` still applies unless `PATH` is set).
    pub fn env_clear(&mut self) -> &mut Self {
        self.env.clear();
        self
    }

    /// The program.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// The program's `argv[0]`: what [`arg0`](Self::arg0) set, else the program as given.
    pub fn get_arg0(&self) -> &OsStr {
        self.arg0.as_deref().unwrap_or(&self.program)
    }

    /// Sets the program's `argv[0]` (by default the program as given to [`new`](Self::new)), as
    /// `std::os::unix::process::CommandExt::arg0` does; the program is still looked up by its own name.
    ///
    /// ```
    /// # if !std::path::Path::new("/bin/busybox").exists() { return Ok(()); }
    /// let o = sandkasten::Sandbox::new("/bin/busybox").arg0("echo").arg("applet").output()?;
    /// assert_eq!(o.stdout, b"applet\n");
    /// # Ok::<(), sandkasten::Error>(())
    /// ```
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Self {
        self.arg0 = Some(arg0.as_ref().into());
        self
    }

    /// The arguments (without the program).
    pub fn get_args(&self) -> impl Iterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// The variables set, in order.
    pub fn get_envs(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str()))
    }

    /// The working directory, when set.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// The policy.
    pub fn get_policy(&self) -> &Policy {
        &self.policy
    }

    /// The backend chosen.
    pub fn get_backend(&self) -> Backend {
        self.backend
    }

    /// Sets the working directory inside the sandbox (absolute).
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the program's standard input.
    pub fn stdin(&mut self, s: Stdio) -> &mut Self {
        self.stdio[0] = Some(s.into());
        self
    }

    /// Sets the program's standard output.
    pub fn stdout(&mut self, s: Stdio) -> &mut Self {
        self.stdio[1] = Some(s.into());
        self
    }

    /// How much of piped stdout and stderr [`Sandbox::output`] and [`SandboxChild::wait_with_output`] keep,
    /// and whether writing more kills the program (default: [`OutputLimit::default`] for each).
    pub fn output_limits(&mut self, stdout: OutputLimit, stderr: OutputLimit) -> &mut Self {
        self.output_limits = [stdout, stderr];
        self
    }

    /// Sets the program's standard error.
    pub fn stderr(&mut self, s: Stdio) -> &mut Self {
        self.stdio[2] = Some(s.into());
        self
    }

    /// Passes `fd` to the program as descriptor number `target` (3 or more), e.g. a socket. Every other
    /// descriptor of the host process stays outside.
    pub fn inherit_fd(&mut self, fd: OwnedFd, target: RawFd) -> &mut Self {
        self.extra_fds.retain(|(_, t)| *t != target);
        self.extra_fds.push((std::sync::Arc::new(fd), target));
        self
    }

    /// Sets the policy.
    pub fn policy(&mut self, policy: Policy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Marks the sandbox as our guest agent's (PID 1 of our VM): it maps a whole id range of the guest kernel.
    #[cfg(feature = "vm")]
    pub(crate) fn in_guest(&mut self) -> &mut Self {
        self.guest = true;
        self
    }

    /// Chooses the backend.
    pub fn backend(&mut self, backend: Backend) -> &mut Self {
        self.backend = backend;
        self
    }

    /// Chooses the VM backend's engine.
    pub fn vm_engine(&mut self, engine: VmEngine) -> &mut Self {
        self.vm_engine = engine;
        self
    }

    /// Where the VM engines keep snapshots of their booted guest ([`SnapshotCache`](crate::SnapshotCache),
    /// by default the user's cache): a cold run is then restored from the snapshot of the same guest instead
    /// of booted, and a run that boots saves one first. The namespace backend ignores it.
    pub fn vm_snapshots(&mut self, cache: crate::SnapshotCache) -> &mut Self {
        self.vm_snapshots = cache;
        self
    }

    #[cfg(feature = "vm")]
    /// Runs on a warm VM of `pool` (booting one when none is idle) instead of a fresh sandbox: the VM
    /// backend, without the boot. See [`VmPool`](crate::VmPool).
    pub fn vm_pool(&mut self, pool: &crate::VmPool) -> &mut Self {
        self.pool = Some(pool.clone());
        self.backend = Backend::Vm;
        self
    }

    /// Starts the program; standard streams are inherited unless set.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use sandkasten::{Sandbox, Status, Stdio};
    /// let mut child = Sandbox::new("/usr/bin/tr")
    ///     .args(["a-z", "A-Z"])
    ///     .stdin(Stdio::Piped)
    ///     .stdout(Stdio::Piped)
    ///     .spawn()?;
    /// child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    /// let mut text = String::new();
    /// child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    /// assert_eq!(text, "SHOUT\n");
    /// assert_eq!(child.wait()?.status, Status::Exited(0));
    ///
    /// // A sandbox that cannot be set up is a verdict too, never an `Err` here.
    /// let o = Sandbox::new("/no/such/program").spawn()?.wait()?;
    /// assert!(matches!(o.status, Status::SetupFailed(_)));
    /// assert_eq!(o.status.exit_code(), 127);
    /// # Ok::<(), sandkasten::Error>(())
    /// ```
    ///
    /// A sandbox that cannot be built (a namespace, a mount, a limit, the VM) is not an error here: the
    /// child has already ended, and its verdict is [`Status::SetupFailed`](crate::Status::SetupFailed), as
    /// it is for a failure the VM's guest finds later. So every setup failure reaches the caller one way, in
    /// the verdict of [`SandboxChild::wait`]. `Err` is for an invalid policy and for failures of the host
    /// process itself (descriptors, pipes).
    pub fn spawn(&mut self) -> Result<SandboxChild, Error> {
        self.spawn_with_defaults(|| Stdio::Inherit, || Stdio::Inherit)
    }

    /// Runs the program to the end and returns the verdict with stdout and stderr captured (stdin is null
    /// unless set). Failures to build the sandbox or start the program are a verdict too
    /// ([`Status::SetupFailed`](crate::Status::SetupFailed)), as with [`spawn`](Self::spawn).
    pub fn output(&mut self) -> Result<Outcome, Error> {
        self.spawn_with_defaults(|| Stdio::Null, || Stdio::Piped)?
            .wait_with_output()
    }

    /// Runs the program to the end with inherited streams (unless set) and returns the verdict.
    pub fn status(&mut self) -> Result<Outcome, Error> {
        self.spawn()?.wait()
    }

    /// The backend a setup failure is reported against.
    fn failed_backend(&self) -> BackendKind {
        if self.backend == Backend::Vm {
            BackendKind::Vm
        } else {
            BackendKind::Namespace
        }
    }

    pub(crate) fn spawn_with_defaults(
        &mut self,
        stdin_default: impl Fn() -> Stdio,
        out_default: impl Fn() -> Stdio,
    ) -> Result<SandboxChild, Error> {
        self.policy.validate()?;
        let mut streams = Streams::default();
        let mut fds: [RawFd; 3] = [-1; 3];
        let mut held: Vec<OwnedFd> = Vec::new();
        for (slot, (fd_slot, chosen)) in fds.iter_mut().zip(&self.stdio).enumerate() {
            let s = chosen.clone().unwrap_or_else(|| {
                if slot == 0 {
                    stdin_default().into()
                } else {
                    out_default().into()
                }
            });
            let child_end: Option<OwnedFd> = match s {
                Stream::Inherit => None,
                Stream::Null => Some(
                    File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(io("opening /dev/null"))?
                        .into(),
                ),
                Stream::Fd(fd) => Some(
                    fd.try_clone()
                        .map_err(io("duplicating a standard stream"))?,
                ),
                Stream::Piped => {
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
            serve: None,
            program: &self.program,
            arg0: self.arg0.as_deref(),
            args: &self.args,
            env: &self.env,
            cwd: self.cwd.as_deref(),
            policy: &self.policy,
            stdio: fds,
            extra_fds: &extra,
            guest: self.guest,
        };
        tracing::debug!(program = ?self.program, backend = ?self.backend, "starting a sandbox");
        let started = Instant::now();
        let started_run = self.start(&launch);
        // The child's ends close here: a failed start leaves the host's ends at EOF (and EPIPE), as a
        // program that ended at once would.
        drop(held);
        let streams = (streams.stdin, streams.stdout, streams.stderr);
        match started_run {
            Ok((inner, deadline)) => {
                SandboxChild::new(inner, started, deadline, streams, self.output_limits)
            }
            Err(Error::Setup(f)) => {
                tracing::debug!(failure = %f, "the sandbox could not be set up");
                let outcome = Outcome::setup_failed(f, self.failed_backend());
                SandboxChild::ended(outcome, started, streams, self.output_limits)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the run on its backend, the one place a backend is chosen: a pool's warm VM, the namespace
    /// backend, a VM, or (Auto) the namespace backend with a VM as the fallback where this host cannot give
    /// the policy its namespaces or its required limits. Returns the run and when the host stops waiting for
    /// the sandbox's own timeout.
    fn start(&self, launch: &Launch<'_>) -> Result<(Box<dyn Run>, Option<Duration>), Error> {
        let timeout = self.policy.timeout;
        if let Some((shared, policy)) = &self.session {
            let backend = match shared {
                SessionRef::Namespace(_) => Backend::Namespace,
                #[cfg(feature = "vm")]
                SessionRef::Vm(_) => Backend::Vm,
            };
            if *policy != self.policy || self.backend != backend {
                return Err(Error::Usage(
                    "a session's command runs under the session's policy and backend: start another \
                     session for a different one",
                ));
            }
            return match shared {
                SessionRef::Namespace(shared) => {
                    let run = namespace::session::exec(shared, launch).map_err(Error::Setup)?;
                    Ok((Box::new(run), timeout.map(|t| t + TIMEOUT_GRACE)))
                }
                #[cfg(feature = "vm")]
                SessionRef::Vm(shared) => {
                    let run = crate::vm::session::exec(shared, launch).map_err(Error::Setup)?;
                    // The guest enforces the timeout; the host's deadline is a backstop.
                    Ok((Box::new(run), timeout.map(|t| t + TIMEOUT_GRACE * 4)))
                }
            };
        }
        #[cfg(feature = "vm")]
        if let Some(pool) = &self.pool {
            let run = pool.spawn(launch).map_err(Error::Setup)?;
            // The guest enforces the timeout; its sandbox set-up comes first, slow under software KVM.
            let grace = run.setup_grace();
            return Ok((Box::new(run), timeout.map(|t| t + grace)));
        }
        let namespace = |s: Box<namespace::Started>| -> (Box<dyn Run>, Option<Duration>) {
            (s, timeout.map(|t| t + TIMEOUT_GRACE))
        };
        match self.backend {
            Backend::Namespace => Ok(namespace(namespace::spawn(launch).map_err(Error::Setup)?)),
            Backend::Vm => self.start_vm(launch, None).map_err(Error::Setup),
            Backend::Auto => match namespace::spawn(launch) {
                Ok(s) => Ok(namespace(s)),
                // The host cannot give this policy its namespaces or its required limits: the VM can.
                Err(f) if f.stage == Stage::Namespaces || f.stage == Stage::Cgroup => {
                    let reason = format!("namespace backend unavailable: {}", f.message);
                    self.start_vm(launch, Some(reason)).map_err(|v| {
                        Error::Setup(SetupFailure {
                            message: format!("{}; and the VM backend: {}", f.message, v.message),
                            ..v
                        })
                    })
                }
                Err(f) => Err(Error::Setup(f)),
            },
        }
    }

    /// A cold VM run; `fallback_reason`: why Auto did not use the namespace backend.
    #[cfg(feature = "vm")]
    fn start_vm(
        &self,
        launch: &Launch<'_>,
        fallback_reason: Option<String>,
    ) -> Result<(Box<dyn Run>, Option<Duration>), SetupFailure> {
        let engine = vm::engine::Engine::pick(self.vm_engine);
        let cache = self.vm_snapshots.dir();
        let run = vm::engine::spawn(launch, fallback_reason, engine, cache.as_deref())?;
        let grace = run.boot_limit();
        Ok((Box::new(run), self.policy.timeout.map(|t| t + grace)))
    }

    /// Without the `vm` feature there is no VM backend to start.
    #[cfg(not(feature = "vm"))]
    fn start_vm(
        &self,
        _launch: &Launch<'_>,
        _fallback_reason: Option<String>,
    ) -> Result<(Box<dyn Run>, Option<Duration>), SetupFailure> {
        Err(SetupFailure {
            stage: Stage::Vm,
            errno: None,
            message: "this build of sandkasten has no VM backend (built without its `vm` cargo feature): \
                      rebuild with the feature, or run on the namespace backend"
                .into(),
        })
    }
}

/// Extra time the host gives a namespace sandbox's own timeout before it kills the sandbox itself.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Streams {
    stdin: Option<PipeWriter>,
    stdout: Option<PipeReader>,
    stderr: Option<PipeReader>,
}
