//! A command of a VM session, host side: its request to the agent, its stdin relay, and [`VmExecRun`], the
//! run the caller waits on (its frames come through the session's demultiplexer, [`super::VmShared`]).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::{Slot, State, VmShared, lock, readable};
use crate::backend::Run;
use crate::error::Error;
use crate::namespace::Launch;
use crate::outcome::{BackendKind, Outcome, SetupFailure, Stage, Status, TimeLimit};
use crate::protocol::frames::MAX_FRAME;
use crate::protocol::session::{Request, mux};
use crate::vm::engine::{dup, is_dev_null};
use crate::vm::error::VmError;

/// Runs a command in the session.
pub(crate) fn exec(shared: &Arc<VmShared>, launch: &Launch<'_>) -> Result<VmExecRun, SetupFailure> {
    let bad = |message: String| SetupFailure {
        stage: Stage::Prepare,
        errno: None,
        message,
    };
    if !launch.extra_fds.is_empty() {
        return Err(bad(
            "a session's command takes only stdin, stdout and stderr (no further descriptors)"
                .into(),
        ));
    }
    let text = |s: &OsStr, what: &str| {
        s.to_str().map(String::from).ok_or_else(|| {
            bad(format!(
                "{what} {s:?} is not UTF-8: a VM session takes only UTF-8"
            ))
        })
    };
    let program = text(launch.program, "the program")?;
    let arg0 = launch
        .arg0
        .map(|a| text(a, "the program's argv[0]"))
        .transpose()?;
    let args = launch
        .args
        .iter()
        .map(|a| text(a, "the argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = Vec::new();
    for (k, v) in launch.env {
        if k.is_empty() || k.as_encoded_bytes().contains(&b'=') {
            return Err(bad(format!("environment variable name {k:?} is invalid")));
        }
        env.push((text(k, "the variable")?, text(v, "the value")?));
    }
    let cwd = launch
        .cwd
        .map(|c| text(c.as_os_str(), "the working directory"))
        .transpose()?;
    let vm = |e: VmError| SetupFailure::from(e);
    let stdin_fd = launch.stdio[0];
    let stdin_source = if stdin_fd >= 0 && is_dev_null(stdin_fd) {
        None
    } else {
        Some(dup(stdin_fd, 0).map_err(vm)?)
    };
    let targets = [
        dup(launch.stdio[1], 1).map_err(vm)?,
        dup(launch.stdio[2], 2).map_err(vm)?,
    ];
    let activity = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| vm(VmError::EventFd(e)))?);
    let pidfd = shared
        .pidfd
        .try_clone()
        .map_err(|e| bad(format!("duplicating the VM's pidfd: {e}")))?;
    let id = {
        let mut st = lock(&shared.state);
        if let Some(why) = &st.broken {
            return Err(shared.failure(format!("the session's VM has ended ({why})")));
        }
        st.next += 1;
        let id = st.next;
        let [out, err] = targets;
        st.commands.insert(
            id,
            Slot {
                started: false,
                sinks: [Some(File::from(out)), Some(File::from(err))],
                ended: [false; 2],
                verdict: None,
                activity: activity.clone(),
            },
        );
        id
    };
    let request = Request::Exec {
        id,
        program,
        arg0,
        args,
        env,
        cwd,
        stdin: stdin_source.is_some(),
    };
    if let Err(e) = shared.request(&request) {
        lock(&shared.state).commands.remove(&id);
        return Err(shared.failure(format!("sending the command to the session's VM: {e}")));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let relay = stdin_source.map(|source| {
        let (s, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || relay_stdin(source, id, &s, &stop))
    });
    Ok(VmExecRun {
        shared: shared.clone(),
        id,
        activity,
        pidfd,
        stop,
        relay,
    })
}

/// The caller's stdin → frames of command `id`, then its end frame (at end of file, or once the command
/// ended: `stop`).
fn relay_stdin(source: OwnedFd, id: u32, s: &VmShared, stop: &AtomicBool) {
    // Frames sent before the agent registered the command would be dropped there (the request and the
    // frames travel on different ports): wait for it to start (or end, or the VM to go).
    let started = |st: &State| {
        st.commands
            .get(&id)
            .is_none_or(|c| c.started || c.verdict.is_some())
    };
    while !stop.load(Ordering::Acquire) && !s.wait_for(Duration::from_millis(100), started) {
        if lock(&s.state).broken.is_some() {
            return;
        }
    }
    if !lock(&s.state).commands.get(&id).is_some_and(|c| c.started) {
        return;
    }
    let mut from = File::from(source);
    let mut buf = vec![0u8; MAX_FRAME];
    while !stop.load(Ordering::Acquire) {
        if !readable(from.as_fd(), Duration::from_millis(100)) {
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if mux::write(&mut *lock(&s.stdin), id, 0, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = mux::write(&mut *lock(&s.stdin), id, 0, b"");
}

/// A command of a VM session, host side.
pub(crate) struct VmExecRun {
    shared: Arc<VmShared>,
    id: u32,
    activity: Arc<EventFd>,
    pidfd: OwnedFd,
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VmExecRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmExecRun").field("id", &self.id).finish()
    }
}

impl VmExecRun {
    fn done(&self, st: &State) -> bool {
        st.broken.is_some()
            || st
                .commands
                .get(&self.id)
                .is_none_or(|c| c.verdict.is_some() && c.ended == [true; 2])
    }

    /// The session's number for this command.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Waits until the agent started the command (true) or reported that it could not (false).
    pub(crate) fn wait_started(&self, limit: Duration) -> bool {
        self.shared.wait_for(limit, |st| {
            st.commands
                .get(&self.id)
                .is_none_or(|c| c.started || c.verdict.is_some())
        });
        lock(&self.shared.state)
            .commands
            .get(&self.id)
            .is_some_and(|c| c.started)
    }

    fn end_relay(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.relay.take() {
            let _ = t.join();
        }
    }
}

impl Run for VmExecRun {
    /// The VMM's pid.
    fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The VMM's pidfd (signals go through [`Run::signal`], into the guest).
    fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn wait_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd lives as long as `self`, which the borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.activity.as_raw_fd()) }
    }

    fn ended(&mut self) -> bool {
        let _ = self.activity.read();
        self.done(&lock(&self.shared.state))
    }

    /// The command's process group, in the guest.
    fn kill(&self) -> Result<(), i32> {
        self.signal(libc::SIGKILL)
    }

    fn signal(&self, signal: i32) -> Result<(), i32> {
        let r = Request::Signal {
            id: self.id,
            signal,
        };
        match self.shared.request(&r) {
            Ok(()) => Ok(()),
            // The VM is gone, and the command with it.
            Err(_) if !self.shared.running() => Ok(()),
            Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    fn finish(mut self: Box<Self>, wall: Duration, host_timeout: bool) -> Result<Outcome, Error> {
        // After a kill the guest answers promptly; a finished command has its verdict already.
        self.shared
            .wait_for(Duration::from_secs(10), |st| self.done(st));
        self.end_relay();
        let (slot, broken) = {
            let mut st = lock(&self.shared.state);
            (st.commands.remove(&self.id), st.broken.clone())
        };
        let verdict = slot
            .and_then(|s| s.verdict)
            .and_then(|v| Outcome::from_report_json(&v));
        let mut outcome = match verdict {
            Some(o) => o,
            None if host_timeout => Outcome::setup_failed(
                SetupFailure {
                    stage: Stage::Vm,
                    errno: None,
                    message: String::new(),
                },
                BackendKind::Vm,
            )
            .with_status(Status::TimedOut(TimeLimit::Wall)),
            None => Outcome::setup_failed(
                self.shared.failure(format!(
                    "the command's verdict did not arrive: {}",
                    broken.as_deref().unwrap_or("no verdict")
                )),
                BackendKind::Vm,
            ),
        };
        if host_timeout && !matches!(outcome.status, Status::TimedOut(_)) {
            outcome.status = Status::TimedOut(TimeLimit::Wall);
        }
        outcome.backend = BackendKind::Vm;
        outcome.usage.wall = wall;
        Ok(outcome)
    }

    fn abort(mut self: Box<Self>) {
        let _ = self.kill();
        self.end_relay();
        lock(&self.shared.state).commands.remove(&self.id);
    }
}

impl Drop for VmExecRun {
    fn drop(&mut self) {
        self.end_relay();
    }
}
