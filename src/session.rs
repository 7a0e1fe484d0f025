//! `Session`: a live sandbox that runs commands one after another or several at once, each with its own
//! stdio and verdict, all in the same namespaces, filesystem view, limits and cgroup.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::command::{Sandbox, SessionRef, Stdio};
use crate::error::Error;
use crate::namespace::{self, Launch, session};
use crate::outcome::{Enforced, Outcome, SetupFailure, Stage, Status};
use crate::policy::Policy;

/// A live sandbox: its init and namespaces stay up, and [`Session::command`] runs commands in it.
///
/// Every command is started by the sandbox's own init (a fork of it, then `execve`), so it has exactly the
/// layers the session has: the user namespace and ids, no capabilities, no_new_privs, the landlock domain,
/// the seccomp filter, the cgroup and its limits, the rlimits. Files one command writes are seen by the
/// next. Nothing of the caller reaches a command but the three streams it is given: no other descriptor, not
/// the caller's working directory, and no host process ever joins the sandbox's namespaces.
///
/// ```
/// # use sandkasten::{Policy, Session};
/// let session = Session::start(Policy::default())?;
/// session.command("sh").args(["-c", "echo hi > /tmp/x"]).status()?;
/// let out = session.command("cat").arg("/tmp/x").output()?;
/// assert_eq!(out.stdout, b"hi\n");
/// session.stop(std::time::Duration::from_secs(2))?;
/// # Ok::<(), sandkasten::Error>(())
/// ```
///
/// On the namespace backend ([`Session::start`]) or in a VM ([`Session::start_vm`]: one VM whose agent keeps
/// the sandbox up in the guest). Dropping a session kills everything in it.
#[derive(Debug)]
pub struct Session {
    init: Init,
    policy: Policy,
    started: Instant,
}

/// The session's init: this process's child, or one reached through its socket.
#[derive(Debug)]
enum Init {
    Local(Box<session::NsSession>),
    /// A VM whose agent keeps the session's sandbox in the guest.
    #[cfg(feature = "vm")]
    Vm(Box<crate::vm::session::VmSession>),
    Remote {
        shared: Arc<session::Shared>,
        pid: u32,
        pidfd: OwnedFd,
        status_file: PathBuf,
    },
    /// Stopped.
    Ended,
}

impl Session {
    /// Starts a session with `policy` on the namespace backend. The policy's `timeout` is each command's
    /// wall-clock limit; an image root's environment and working directory are each command's defaults.
    pub fn start(policy: Policy) -> Result<Session, Error> {
        Session::start_with(policy, &[], None)
    }

    /// Like [`Session::start`], with an environment and working directory every command starts from (a
    /// command's own variables win).
    pub fn start_with(
        policy: Policy,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
    ) -> Result<Session, Error> {
        Session::start_local(policy, env, cwd, false)
    }

    /// A session of this process on the namespace backend; `guest`: the guest agent's (the guest's full id
    /// range, as its one-shot runs have).
    fn start_local(
        policy: Policy,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
        guest: bool,
    ) -> Result<Session, Error> {
        policy.validate()?;
        let launch = Launch {
            program: OsStr::new(""),
            arg0: None,
            args: &[],
            env,
            cwd,
            policy: &policy,
            stdio: [-1; 3],
            extra_fds: &[],
            guest,
            serve: None,
        };
        let inner = session::start(&launch).map_err(Error::Setup)?;
        Ok(Session {
            init: Init::Local(Box::new(inner)),
            policy,
            started: Instant::now(),
        })
    }

    /// Starts a session on the VM backend with `engine`: one VM whose agent keeps the session's sandbox up in
    /// the guest (the same layers as on the namespace backend, applied inside the guest) and runs each
    /// command in it, several at once, their streams multiplexed over the VM's ports. The policy's paths are
    /// host paths, shared with the guest as for a one-shot VM run. Programs, arguments, variables and the
    /// working directory must be UTF-8. The VM is restored from the user's snapshot cache
    /// ([`SnapshotCache::User`](crate::SnapshotCache::User)) when it holds this guest, else booted and saved
    /// there first, as a cold run's is by default.
    #[cfg(feature = "vm")]
    pub fn start_vm(policy: Policy, engine: crate::VmEngine) -> Result<Session, Error> {
        Session::start_vm_with(policy, &[], None, engine)
    }

    /// Like [`Session::start_vm`], with an environment and working directory every command starts from.
    #[cfg(feature = "vm")]
    pub fn start_vm_with(
        policy: Policy,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
        engine: crate::VmEngine,
    ) -> Result<Session, Error> {
        let engine = crate::vm::engine::Engine::pick(engine);
        // The user's snapshot cache, as a cold run's by default.
        let cache = crate::SnapshotCache::User.dir();
        Session::in_vm(policy, env, cwd, |launch| {
            crate::vm::session::start(launch, engine, cache.as_deref())
        })
    }

    /// A session in a VM that `start` gives for the session's launch (no program of its own).
    #[cfg(feature = "vm")]
    fn in_vm(
        policy: Policy,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
        start: impl FnOnce(&Launch<'_>) -> Result<crate::vm::session::VmSession, SetupFailure>,
    ) -> Result<Session, Error> {
        policy.validate()?;
        let launch = Launch {
            program: OsStr::new(""),
            arg0: None,
            args: &[],
            env,
            cwd,
            policy: &policy,
            stdio: [-1; 3],
            extra_fds: &[],
            guest: false,
            serve: None,
        };
        let vm = start(&launch).map_err(Error::Setup)?;
        Ok(Session {
            init: Init::Vm(Box::new(vm)),
            policy,
            started: Instant::now(),
        })
    }

    /// Starts a session on a VM of `pool` ([`VmPool::prewarm_sessions`](crate::VmPool::prewarm_sessions)
    /// boots them ahead; without one waiting, a VM boots now). As for a pool's runs, the policy's bind
    /// sources must lie in the pool's shares, and the VM's RAM and vCPUs are the pool's (the policy's
    /// limits are enforced by the session's cgroup in the guest). The VM is the session's alone: it ends
    /// with the session, never serving another.
    ///
    /// ```no_run
    /// use sandkasten::{PoolOptions, Policy, Session, VmPool};
    ///
    /// let pool = VmPool::new(PoolOptions::default())?;
    /// pool.prewarm_sessions(1)?; // boot now, not when the session is asked for
    /// let session = Session::start_pooled(Policy::default(), &pool)?;
    /// let out = session.command("/bin/echo").arg("hi").output()?;
    /// assert_eq!(out.stdout, b"hi\n");
    /// session.stop(std::time::Duration::from_secs(1))?;
    /// # Ok::<(), sandkasten::Error>(())
    /// ```
    #[cfg(feature = "vm")]
    pub fn start_pooled(policy: Policy, pool: &crate::VmPool) -> Result<Session, Error> {
        Session::start_pooled_with(policy, &[], None, pool)
    }

    /// Like [`Session::start_pooled`], with an environment and working directory every command starts from.
    #[cfg(feature = "vm")]
    pub fn start_pooled_with(
        policy: Policy,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
        pool: &crate::VmPool,
    ) -> Result<Session, Error> {
        Session::in_vm(policy, env, cwd, |launch| pool.session(launch))
    }

    /// A session of the guest agent (PID 1 of our VM): the guest's full id range, as its one-shot runs have.
    #[cfg(feature = "vm")]
    pub(crate) fn start_in_guest(
        policy: Policy,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
    ) -> Result<Session, Error> {
        Session::start_local(policy, env, cwd, std::process::id() == 1)
    }

    /// Starts a session that outlives this process (what `sandbox create` and an OCI runtime's `create`
    /// do): its init listens on `detach.socket` and is reached again with [`Session::attach`]. Returns what
    /// is needed for that; keep it (it holds no secret, and serializes as JSON).
    ///
    /// The init is left a child of this process, unreaped: end this process soon (its orphans' adopter
    /// then reaps the init when the session ends), or reap it. The session's program, if it has one, runs
    /// with the given streams (not `Piped`); the session ends when that program ends.
    pub fn create(policy: Policy, detach: Detach) -> Result<Detached, Error> {
        policy.validate()?;
        let mut held = Vec::new();
        let mut fds = [-1; 3];
        for (slot, s) in fds.iter_mut().zip(detach.stdio) {
            let fd: Option<OwnedFd> = match s {
                Stdio::Inherit => None,
                Stdio::Null => Some(
                    std::fs::File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(crate::error::io("opening /dev/null"))?
                        .into(),
                ),
                Stdio::Fd(fd) => Some(fd),
                Stdio::Piped => {
                    return Err(Error::Setup(SetupFailure {
                        stage: Stage::Prepare,
                        errno: None,
                        message: "a session that outlives its creator cannot have piped streams: give it \
                                  files or descriptors"
                            .into(),
                    }));
                }
            };
            if let Some(fd) = fd {
                *slot = fd.as_raw_fd();
                held.push(fd);
            }
        }
        let (program, args) = match detach.program.split_first() {
            Some((p, a)) => (p.as_os_str(), a),
            None => (OsStr::new(""), &[][..]),
        };
        #[cfg(feature = "vm")]
        if let Some(engine) = detach.vm {
            let c = crate::vm::keeper::create(
                &policy,
                &detach.env,
                detach.cwd.as_deref(),
                &detach.program,
                detach.wait_start,
                engine,
                &detach.socket,
                &detach.status_file,
                fds,
            )
            .map_err(Error::Setup)?;
            drop(held);
            return Ok(Detached {
                pid: c.pid,
                start_time: c.start_time,
                socket: detach.socket,
                status_file: detach.status_file,
                cgroups: c.cgroups,
                policy,
                env: c.env,
                cwd: c.cwd,
                enforced: c.enforced,
            });
        }
        let launch = Launch {
            program,
            arg0: None,
            args,
            env: &detach.env,
            cwd: detach.cwd.as_deref(),
            policy: &policy,
            stdio: fds,
            extra_fds: &[],
            guest: false,
            serve: None,
        };
        let c = session::create(
            &launch,
            &detach.socket,
            &detach.status_file,
            detach.wait_start,
        )
        .map_err(Error::Setup)?;
        Ok(Detached {
            pid: c.pid,
            start_time: c.start_time,
            socket: detach.socket,
            status_file: detach.status_file,
            cgroups: c.cgroups,
            policy,
            env: c.env,
            cwd: c.cwd,
            enforced: c.enforced,
        })
    }

    /// Reaches a session made by [`Session::create`] (from any process of the same user).
    pub fn attach(d: &Detached) -> Result<Session, Error> {
        let gone = || {
            Error::Setup(SetupFailure {
                stage: Stage::Init,
                errno: Some(libc::ESRCH),
                message: format!("the session (init pid {}) has ended", d.pid),
            })
        };
        let pidfd = session::pidfd_of(d.pid, d.start_time).ok_or_else(gone)?;
        let shared = session::attach(
            &d.socket,
            d.env.clone(),
            d.cwd.clone(),
            d.enforced.clone(),
            d.policy.limits.cpu_time,
        )
        .map_err(Error::Setup)?;
        Ok(Session {
            init: Init::Remote {
                shared: Arc::new(shared),
                pid: d.pid,
                pidfd,
                status_file: d.status_file.clone(),
            },
            policy: d.policy.clone(),
            started: Instant::now(),
        })
    }

    /// The namespace session's channel (`None` for a VM session, or a stopped one).
    fn shared(&self) -> Option<&Arc<session::Shared>> {
        match &self.init {
            Init::Local(i) => Some(&i.shared),
            Init::Remote { shared, .. } => Some(shared),
            #[cfg(feature = "vm")]
            Init::Vm(_) => None,
            Init::Ended => None,
        }
    }

    /// A command to run in this session, built like [`Sandbox`] (arguments, environment, working
    /// directory, streams; `spawn`, `output`, `status`). Its policy is the session's: changing it, or
    /// choosing a backend, makes its start fail.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Sandbox {
        let mut cmd = Sandbox::new(program);
        cmd.policy(self.policy.clone()).backend(Backend::Namespace);
        if let Some(shared) = self.shared() {
            cmd.in_session(
                SessionRef::Namespace(Arc::clone(shared)),
                self.policy.clone(),
            );
        }
        #[cfg(feature = "vm")]
        if let Init::Vm(vm) = &self.init {
            cmd.backend(Backend::Vm)
                .in_session(SessionRef::Vm(Arc::clone(&vm.shared)), self.policy.clone());
        }
        cmd
    }

    /// Starts the program of a session created with [`Detach::wait_start`]; returns its pid inside.
    pub fn start_program(&self) -> Result<u32, Error> {
        let shared = self.shared().ok_or_else(|| {
            changed_state("stopped, or in a VM (which has no program of its own)")
        })?;
        shared.start_program().map_err(Error::Setup)
    }

    /// The host pid of the session's init (PID 1 inside).
    pub fn id(&self) -> u32 {
        match &self.init {
            Init::Local(i) => i.started.pid as u32,
            Init::Remote { pid, .. } => *pid,
            #[cfg(feature = "vm")]
            Init::Vm(vm) => vm.pid(),
            Init::Ended => 0,
        }
    }

    /// Whether the session still runs (it ends when stopped, when its program ended, or when its init was
    /// killed).
    pub fn is_running(&self) -> bool {
        match &self.init {
            Init::Local(i) => i.running(),
            Init::Remote { pidfd, .. } => !readable(pidfd, Duration::ZERO),
            #[cfg(feature = "vm")]
            Init::Vm(vm) => vm.shared.running(),
            Init::Ended => false,
        }
    }

    /// What the session enforces (each command's verdict repeats it).
    pub fn enforced(&self) -> &Enforced {
        static NONE: std::sync::LazyLock<Enforced> = std::sync::LazyLock::new(Enforced::default);
        #[cfg(feature = "vm")]
        if let Init::Vm(vm) = &self.init {
            return &vm.enforced;
        }
        self.shared().map_or(&NONE, |s| &s.enforced)
    }

    /// Sends `signal` to every process in the session (its init excepted).
    pub fn signal_all(&self, signal: i32) -> Result<(), Error> {
        #[cfg(feature = "vm")]
        if let Init::Vm(vm) = &self.init {
            return vm.shared.signal_all(signal).map_err(|source| Error::Io {
                what: "sending a signal request to the session's VM",
                source,
            });
        }
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        shared.signal_all(signal).map_err(|e| Error::Io {
            what: "sending a signal request to the session",
            source: e.into(),
        })
    }

    /// Sends `signal` to the session's program (to every process when it has none).
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        #[cfg(feature = "vm")]
        if let Init::Vm(_) = &self.init {
            return self.signal_all(signal);
        }
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        shared.signal_program(signal).map_err(|e| Error::Io {
            what: "sending a signal request to the session",
            source: e.into(),
        })
    }

    /// Stops the session: SIGTERM to every process in it, SIGKILL to those left after `grace`. Returns the
    /// session's verdict: its whole CPU time and peak memory (from its cgroup, for a session of this
    /// process), every system call its commands were denied (with `audit_denials`), and `Exited(0)` when it
    /// ended as asked (a session whose program ended before: that program's end).
    pub fn stop(mut self, grace: Duration) -> Result<Outcome, Error> {
        let wall = self.started.elapsed();
        match std::mem::replace(&mut self.init, Init::Ended) {
            Init::Local(inner) => inner.stop(grace, wall),
            #[cfg(feature = "vm")]
            Init::Vm(vm) => Ok(vm.stop(grace, wall)),
            Init::Remote {
                shared,
                pidfd,
                status_file,
                ..
            } => {
                let _ = shared.request_stop(grace);
                if !readable(&pidfd, grace + Duration::from_secs(5)) {
                    let _ = namespace::sys::pidfd_signal(&pidfd, libc::SIGKILL);
                    readable(&pidfd, Duration::from_secs(5));
                }
                Ok(ended_outcome(
                    &status_file,
                    &self.policy,
                    wall,
                    shared.enforced.clone(),
                ))
            }
            Init::Ended => Err(changed_state("stopped")),
        }
    }

    /// Kills everything in the session at once and returns its verdict.
    pub fn kill(self) -> Result<Outcome, Error> {
        self.stop(Duration::ZERO)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session of this process ends with it; one reached through its socket lives on.
        if let Init::Local(inner) = std::mem::replace(&mut self.init, Init::Ended) {
            inner.started.abort();
        }
    }
}

/// Whether `fd` becomes readable within `wait` (a pidfd: its process ended).
fn readable(fd: &OwnedFd, wait: Duration) -> bool {
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    matches!(namespace::sys::poll(&mut pfd, ms), Ok(1))
}

/// The verdict of a session that ended, from the last words its init wrote into its status file.
fn ended_outcome(
    status_file: &Path,
    policy: &Policy,
    wall: Duration,
    enforced: Enforced,
) -> Outcome {
    let (denied, last) = session::read_status(status_file);
    let _ = policy;
    Outcome {
        status: status_of(last),
        stdout: Vec::new(),
        stderr: Vec::new(),
        usage: crate::outcome::Usage {
            wall,
            cpu_user: Duration::ZERO,
            cpu_sys: Duration::ZERO,
            peak_memory_bytes: None,
            source: "none (a session of another process)".into(),
        },
        backend: crate::outcome::BackendKind::Namespace,
        fallback_reason: None,
        enforced,
        denied_syscalls: denied,
        vm: None,
        capture: Default::default(),
    }
}

/// How a session ended, from its init's last message (none: it was killed).
fn status_of(last: Option<[u32; 4]>) -> Status {
    use crate::namespace::child_msg as msg;
    match last {
        Some([msg::EXITED, raw, ..]) => Status::from_wait(raw as i32),
        Some([msg::TIMED_OUT, ..]) => Status::TimedOut(crate::outcome::TimeLimit::Wall),
        Some([msg::SETUP_FAILED, stage, _, errno]) => Status::SetupFailed(SetupFailure {
            stage: Stage::from_u32(stage),
            errno: Some(errno as i32),
            message: format!(
                "the session's program could not start: {}",
                std::io::Error::from_raw_os_error(errno as i32)
            ),
        }),
        _ => Status::Signaled(libc::SIGKILL),
    }
}

/// Where a session that outlives its creator is reached, and what its own program is: for
/// [`Session::create`].
#[derive(Debug)]
pub struct Detach {
    socket: PathBuf,
    status_file: PathBuf,
    program: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    wait_start: bool,
    stdio: [Stdio; 3],
    #[cfg(feature = "vm")]
    vm: Option<crate::VmEngine>,
}

impl Detach {
    /// The session's init listens on `socket` and writes how the session ended into `status_file`; both
    /// are created (they must not exist; their directory should be this user's alone).
    pub fn new(socket: impl Into<PathBuf>, status_file: impl Into<PathBuf>) -> Detach {
        Detach {
            socket: socket.into(),
            status_file: status_file.into(),
            program: Vec::new(),
            env: Vec::new(),
            cwd: None,
            wait_start: false,
            stdio: [Stdio::Null, Stdio::Null, Stdio::Null],
            #[cfg(feature = "vm")]
            vm: None,
        }
    }

    /// The session runs in a VM on `engine`: a keeper process (the guest agent's binary in another role)
    /// holds the VM and serves the socket, and outlives this process as a namespace session's init does.
    /// Its commands' programs, arguments, variables and directories must be UTF-8.
    #[cfg(feature = "vm")]
    pub fn vm(mut self, engine: crate::VmEngine) -> Detach {
        self.vm = Some(engine);
        self
    }

    /// The session's own program (`argv`, program first; looked up in `PATH`); the session ends when it
    /// ends. Without one (or an empty `argv`) the session runs only its commands, until stopped. An image
    /// root's command is its default.
    pub fn program<I, S>(mut self, argv: I) -> Detach
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.program = argv.into_iter().map(Into::into).collect();
        self
    }

    /// An environment variable of the program and of every command (a command's own win).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Detach {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The working directory of the program and the default of every command.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Detach {
        self.cwd = Some(dir.into());
        self
    }

    /// The program waits until [`Session::start_program`] (OCI's `create`, then `start`). With an image root
    /// and no [`Detach::program`], the image's command is the program.
    pub fn wait_start(mut self) -> Detach {
        self.wait_start = true;
        self
    }

    /// The program's standard input, output and error (default: `/dev/null`; not `Piped`).
    pub fn stdio(mut self, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Detach {
        self.stdio = [stdin, stdout, stderr];
        self
    }
}

/// A session made by [`Session::create`]: what is needed to reach it again ([`Session::attach`]), to tell
/// its state and to remove what is left of it. Serializes (as JSON, say) into the caller's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Detached {
    /// The host pid of the session's init.
    pub pid: u32,
    /// The init's start time (field 22 of /proc/PID/stat): a reused pid is never taken for the init.
    pub start_time: u64,
    /// The socket the init listens on.
    pub socket: PathBuf,
    /// The file the init writes how the session ended into.
    pub status_file: PathBuf,
    /// The session's cgroup directories (removed by [`Detached::remove`]).
    pub cgroups: Vec<PathBuf>,
    /// The session's policy.
    pub policy: Policy,
    /// The environment its commands start from.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory its commands start in.
    pub cwd: Option<PathBuf>,
    /// What it enforces.
    pub enforced: Enforced,
}

/// Whether a [`Detached`] session still runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DetachedState {
    /// Its init runs.
    Running,
    /// It ended: how (`Signaled(SIGKILL)` when it was killed without a word).
    Ended(Status),
}

impl Detached {
    /// Whether the session still runs, or how it ended.
    pub fn state(&self) -> DetachedState {
        let alive =
            session::pidfd_of(self.pid, self.start_time).is_some() && !session::is_zombie(self.pid);
        if alive {
            DetachedState::Running
        } else {
            DetachedState::Ended(status_of(session::read_status(&self.status_file).1))
        }
    }

    /// Kills the session's init at once (everything in the session dies with it; its exit status, for
    /// whoever reaps it, is SIGKILL's). An ended session: nothing to do.
    pub fn kill(&self) -> Result<(), Error> {
        let Some(pidfd) = session::pidfd_of(self.pid, self.start_time) else {
            return Ok(());
        };
        namespace::sys::pidfd_signal(&pidfd, libc::SIGKILL).map_err(|e| Error::Io {
            what: "pidfd_send_signal(SIGKILL) to a session's init",
            source: std::io::Error::from_raw_os_error(e),
        })
    }

    /// Removes what is left of an ended session: its socket, its status file, its cgroup. A running
    /// session is refused (stop it first).
    pub fn remove(&self) -> Result<(), Error> {
        if self.state() == DetachedState::Running {
            return Err(changed_state("running"));
        }
        for p in [&self.socket, &self.status_file] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        what: "removing a session's file",
                        source: e,
                    });
                }
                _ => {}
            }
        }
        namespace::cgroup::remove_kept(&self.cgroups);
        Ok(())
    }
}

fn changed_state(state: &str) -> Error {
    Error::Setup(SetupFailure {
        stage: Stage::Init,
        errno: None,
        message: format!("the session is {state}"),
    })
}
