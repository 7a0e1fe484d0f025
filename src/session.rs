//! `Session`: a live sandbox that runs commands one after another or several at once, each with its own
//! stdio and verdict, all in the same namespaces, filesystem view, limits and cgroup.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::command::Sandbox;
use crate::error::Error;
use crate::namespace::{self, Launch, session};
use crate::outcome::{Enforced, Outcome, SetupFailure, Stage};
use crate::policy::Policy;

/// A live sandbox: its init and namespaces stay up, and [`Session::command`] runs commands in it.
///
/// Every command is started by the sandbox's own init (a fork of it, then `execve`), so it has exactly the
/// layers the session has: the user namespace and ids, no capabilities, no_new_privs, the landlock domain,
/// the seccomp filter, the cgroup and its limits, the rlimits. Files one command writes are seen by the
/// next. Nothing of the caller reaches a command but the three streams it is given: no other descriptor, not
/// the caller's working directory, and no host process ever joins the sandbox's namespaces.
///
/// ```no_run
/// # use sandkasten::{Policy, Session};
/// let session = Session::start(Policy::default())?;
/// session.command("sh").args(["-c", "echo hi > /tmp/x"]).status()?;
/// let out = session.command("cat").arg("/tmp/x").output()?;
/// assert_eq!(out.stdout, b"hi\n");
/// session.stop(std::time::Duration::from_secs(2))?;
/// # Ok::<(), sandkasten::Error>(())
/// ```
///
/// The namespace backend only, for now. Dropping a session kills everything in it.
#[derive(Debug)]
pub struct Session {
    inner: Option<session::NsSession>,
    policy: Policy,
    started: Instant,
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
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        cwd: Option<&std::path::Path>,
    ) -> Result<Session, Error> {
        policy.validate()?;
        let launch = Launch {
            program: OsStr::new(""),
            args: &[],
            env,
            cwd,
            policy: &policy,
            stdio: [-1; 3],
            extra_fds: &[],
            guest: false,
            serve: None,
        };
        let inner = session::start(&launch).map_err(Error::Setup)?;
        Ok(Session {
            inner: Some(inner),
            policy,
            started: Instant::now(),
        })
    }

    /// A command to run in this session, built like [`Sandbox`] (arguments, environment, working
    /// directory, streams; `spawn`, `output`, `status`). Its policy is the session's: changing it, or
    /// choosing a backend, makes its start fail.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Sandbox {
        let mut cmd = Sandbox::new(program);
        cmd.policy(self.policy.clone()).backend(Backend::Namespace);
        if let Some(inner) = &self.inner {
            cmd.in_session(Arc::clone(&inner.shared), self.policy.clone());
        }
        cmd
    }

    /// The host pid of the session's init (PID 1 inside).
    pub fn id(&self) -> u32 {
        self.inner.as_ref().map_or(0, |i| i.started.pid as u32)
    }

    /// Whether the session still runs (it ends when stopped, or when its init was killed).
    pub fn is_running(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.running())
    }

    /// What the session enforces (each command's verdict repeats it).
    pub fn enforced(&self) -> &Enforced {
        static NONE: std::sync::LazyLock<Enforced> = std::sync::LazyLock::new(Enforced::default);
        self.inner.as_ref().map_or(&NONE, |i| &i.started.enforced)
    }

    /// Sends `signal` to every process in the session (its init excepted).
    pub fn signal_all(&self, signal: i32) -> Result<(), Error> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        inner.shared.signal_all(signal).map_err(|e| Error::Io {
            what: "sending a signal request to the session",
            source: e.into(),
        })
    }

    /// Stops the session: SIGTERM to every process in it, SIGKILL to those left after `grace`. Returns the
    /// session's verdict: its whole CPU time and peak memory (from its cgroup), every system call its
    /// commands were denied (with `audit_denials`), and `Exited(0)` when it ended as asked.
    pub fn stop(mut self, grace: Duration) -> Result<Outcome, Error> {
        let inner = self.inner.take().expect("a session is stopped once");
        inner.stop(grace, self.started.elapsed())
    }

    /// Kills everything in the session at once and returns its verdict.
    pub fn kill(self) -> Result<Outcome, Error> {
        self.stop(Duration::ZERO)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.started.abort();
        }
    }
}

/// The failure of a command whose session builder was changed.
pub(crate) fn changed_policy() -> Error {
    Error::Setup(SetupFailure {
        stage: Stage::Prepare,
        errno: None,
        message: "a session's command runs under the session's policy and backend: start another session \
                  for a different one"
            .into(),
    })
}

pub(crate) use namespace::session::{Shared, exec};
