//! A session in a VM, host side: one VM whose agent keeps a sandbox of the guest up
//! ([`crate::protocol::session`]), and commands run in it, several at once, each a [`Run`] of its own.
//!
//! Threads: one reader of the control port (READY, the agent's replies, the session's verdict), one
//! demultiplexer of the stdout port (each command's stdout and stderr frames into its sinks), one stdin relay
//! per command with input. Every frame and line is bounded; a broken channel ends every command with a
//! setup failure, never a hang.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::engine::{Engine, Started, Tail, VmChannels, last_lines, machine_size};
use super::error::VmError;
use super::launch::{self, Host};
use super::pool::snapshot::{restore_failed, restore_snapshot, save_snapshot, vmm_refused};
use super::run_spec::{on_root, report_root, session_spec};
use crate::namespace::rootfs::Root;
use crate::namespace::{Launch, sys};
use crate::outcome::{BackendKind, Enforced, Outcome, SetupFailure, Stage, Status, VmInfo};
use crate::protocol::frames::MAX_FRAME;
use crate::protocol::session::{REPLY_PREFIX, Reply, Request, mux, parse};
use crate::protocol::{READY_PREFIX, RunSpec, VERDICT_PREFIX};

mod exec;
pub(crate) use exec::{VmExecRun, exec};

/// The longest line the host takes from the agent.
const MAX_LINE: u64 = 1 << 20;

/// A session's VM, held by [`crate::Session`].
#[derive(Debug)]
pub(crate) struct VmSession {
    pub(crate) shared: Arc<VmShared>,
    host: Option<Host>,
    threads: Vec<JoinHandle<()>>,
    /// A root of its own: its layers are held while the session lives.
    pub(super) root: Option<Root>,
    /// What the guest's sandbox enforces.
    pub(crate) enforced: Enforced,
    /// Called once the VM is gone (a pool's VM frees its place).
    pub(super) on_end: Option<OnEnd>,
    /// The VM: its engine, accelerator, boot time, whether it was restored or booted ahead (in the verdict).
    pub(super) info: VmInfo,
    /// With `network = "user"` (or on a pool with user networking): passt, ended when the session is
    /// dropped.
    pub(super) network: Option<crate::namespace::network::pasta::Helper>,
}

/// What to do once a session's VM is gone.
pub(super) struct OnEnd(pub(super) Box<dyn FnOnce() + Send + Sync>);

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnd")
    }
}

/// What the session's commands share with it.
pub(crate) struct VmShared {
    control: Mutex<UnixStream>,
    stdin: Mutex<UnixStream>,
    state: Mutex<State>,
    changed: Condvar,
    pidfd: OwnedFd,
    pid: u32,
    console: Tail,
    vmm_stderr: Tail,
    boot_limit: Duration,
}

impl std::fmt::Debug for VmShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmShared").field("pid", &self.pid).finish()
    }
}

#[derive(Default)]
struct State {
    /// The agent's READY line.
    ready: Option<serde_json::Value>,
    up: Option<serde_json::Value>,
    verdict: Option<serde_json::Value>,
    broken: Option<String>,
    next: u32,
    commands: HashMap<u32, Slot>,
}

/// One command, as the readers see it.
struct Slot {
    /// The agent started it: its stdin frames may go.
    started: bool,
    sinks: [Option<File>; 2],
    ended: [bool; 2],
    verdict: Option<serde_json::Value>,
    activity: Arc<EventFd>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmShared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut st = lock(&self.state);
        f(&mut st);
        drop(st);
        self.changed.notify_all();
    }

    /// Waits until `done` holds (or the channels broke) for at most `limit`.
    fn wait_for(&self, limit: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let until = Instant::now() + limit;
        let mut st = lock(&self.state);
        loop {
            if done(&st) {
                return true;
            }
            if st.broken.is_some() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn broke(&self, why: String) {
        self.update(|st| {
            st.broken.get_or_insert(why);
            for slot in st.commands.values_mut() {
                slot.sinks = [None, None];
                let _ = slot.activity.write(1);
            }
        });
    }

    fn request(&self, r: &Request) -> std::io::Result<()> {
        (&*lock(&self.control)).write_all(r.to_line().as_bytes())
    }

    /// Whether the session's VM still runs.
    pub(crate) fn running(&self) -> bool {
        lock(&self.state).broken.is_none() && !readable(self.pidfd.as_fd(), Duration::ZERO)
    }

    /// Sends `signal` to every process of the session.
    pub(crate) fn signal_all(&self, signal: i32) -> std::io::Result<()> {
        self.request(&Request::Signal { id: 0, signal })
    }

    /// Sends `signal` to command `id`'s process group.
    pub(crate) fn signal(&self, id: u32, signal: i32) -> std::io::Result<()> {
        self.request(&Request::Signal { id, signal })
    }

    fn failure(&self, message: String) -> SetupFailure {
        let console = self.console.text();
        SetupFailure {
            stage: Stage::Vm,
            errno: None,
            message: format!(
                "{message}; the guest's last words:\n{}{}",
                last_lines(&console, 15),
                match self.vmm_stderr.text() {
                    t if t.trim().is_empty() => String::new(),
                    t => format!("\nthe VMM said: {}", t.trim()),
                }
            ),
        }
    }
}

fn readable(fd: BorrowedFd<'_>, wait: Duration) -> bool {
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    matches!(
        sys::poll(&mut pfd, wait.as_millis().min(i32::MAX as u128) as i32),
        Ok(1)
    )
}

/// Boots a VM for the session on `engine` (restored from the snapshot `cache`, or booted and saved into it,
/// as a cold run's) and starts the session's sandbox in it.
pub(crate) fn start(
    launch: &Launch<'_>,
    engine: Engine,
    cache: Option<&Path>,
) -> Result<VmSession, SetupFailure> {
    start_vm(launch, engine, cache).map_err(SetupFailure::from)
}

/// Why a session's VM did not come up: the VM's error, or the guest's own account of its failure.
pub(super) enum Boot {
    Vm(VmError),
    Failed(SetupFailure),
}

impl From<VmError> for Boot {
    fn from(e: VmError) -> Boot {
        Boot::Vm(e)
    }
}

impl From<Boot> for SetupFailure {
    fn from(b: Boot) -> SetupFailure {
        match b {
            Boot::Vm(e) => SetupFailure::from(e),
            Boot::Failed(f) => f,
        }
    }
}

/// `launch` on its root of its own, if it has one (the root's layers resolved on the host, held by the
/// returned [`Root`]): what `spec` makes of it.
pub(super) fn on_its_root<T>(
    launch: &Launch<'_>,
    spec: impl FnOnce(&Launch<'_>) -> Result<T, VmError>,
) -> Result<(Option<Root>, T), VmError> {
    // A session has no program of its own: an image root's command is not looked for.
    let no_program = crate::namespace::session::Serve {
        control: -1,
        listens: false,
        wait_start: false,
        held: Vec::new(),
        status: -1,
        detached: false,
    };
    let as_session = Launch {
        serve: Some(&no_program),
        ..*launch
    };
    let (root, applied) = on_root(&as_session)?;
    let on_root = applied.as_ref().map(|a| a.launch(launch));
    let t = spec(on_root.as_ref().unwrap_or(launch))?;
    Ok((root, t))
}

fn start_vm(launch: &Launch<'_>, engine: Engine, cache: Option<&Path>) -> Result<VmSession, Boot> {
    // A VM of its own: with `network = "user"`, passt for it, held as long as the session.
    let network = super::engine::user_network(launch.policy)?;
    let net = network.as_ref().map(|n| n.2);
    let (root, (spec, shares)) = on_its_root(launch, |l| session_spec(l, engine.share_fs(), net))?;
    let (memory_mib, cpus) = machine_size(launch.policy);
    let boot_limit = engine.boot_limit();
    let started = launch::start_vm(
        engine,
        &shares,
        (memory_mib, cpus),
        true,
        None,
        cache,
        network.as_ref().map(|n| &n.1),
    )?;
    let mut session = boot(started, boot_limit)?;
    session.root = root;
    session.assign(&spec)?;
    if let Some((helper, _, _)) = network {
        super::engine::report_network(
            &mut session.enforced.network,
            &helper,
            &launch.policy.publish,
        );
        session.network = Some(helper);
    }
    Ok(session)
}

/// Starts the readers of a started VM and waits for its agent's READY line: a VM that waits for its session
/// ([`VmSession::assign`]). A VM restored from a snapshot is pinged and must say it drew a new random seed; a
/// booted one with a snapshot to make is saved at READY.
pub(super) fn boot(started: Started, boot_limit: Duration) -> Result<VmSession, Boot> {
    let Started {
        host,
        channels,
        snapshot,
        info,
    } = started;
    let VmChannels {
        console,
        control,
        stdin,
        stdout,
        stderr,
        vmm_stderr,
    } = channels;
    drop(stderr);
    let clone = |s: &UnixStream| {
        s.try_clone().map_err(|source| VmError::Dup {
            what: "the control socket",
            fd: s.as_raw_fd(),
            source,
        })
    };
    let pidfd = host
        .pidfd()
        .try_clone_to_owned()
        .map_err(|source| VmError::Dup {
            what: "the VMM's pidfd",
            fd: host.pidfd().as_raw_fd(),
            source,
        })?;
    let (console_tail, vmm_tail) = (Tail::default(), Tail::default());
    let mut threads = vec![
        console_tail.reader(console, 16 * 1024),
        vmm_tail.reader(vmm_stderr, 4096),
    ];
    let control_r = clone(&control)?;
    let shared = Arc::new(VmShared {
        control: Mutex::new(control),
        stdin: Mutex::new(stdin.ok_or(VmError::NoStdinPort)?),
        state: Mutex::default(),
        changed: Condvar::new(),
        pid: host.pid(),
        pidfd,
        console: console_tail,
        vmm_stderr: vmm_tail,
        boot_limit,
    });
    let mut session = VmSession {
        shared: shared.clone(),
        host: Some(host),
        threads: Vec::new(),
        root: None,
        enforced: Enforced::default(),
        on_end: None,
        info,
        network: None,
    };
    {
        let s = shared.clone();
        threads.push(std::thread::spawn(move || read_control(control_r, &s)));
        let s = shared.clone();
        threads.push(std::thread::spawn(move || read_outputs(stdout, &s)));
    }
    session.threads = threads;
    let (mut snapshot, restored) =
        match restore_snapshot(snapshot, &lock(&shared.control), boot_limit) {
            Ok(r) => r,
            Err(why) => {
                session.end();
                return Err(vmm_refused(why, &shared.vmm_stderr.text()).into());
            }
        };
    let failed = |session: &mut VmSession, snapshot, failure: SetupFailure| {
        session.end();
        if restored {
            return Boot::Vm(restore_failed(
                restored,
                snapshot,
                VmError::NotBooted {
                    why: failure.message,
                    console: String::new(),
                },
            ));
        }
        Boot::Failed(failure)
    };
    if !shared.wait_for(boot_limit, |st| st.ready.is_some()) {
        let why = lock(&shared.state).broken.clone();
        let what = format!("the session's VM did not boot within {boot_limit:?}");
        let f = shared.failure(match why {
            Some(why) => format!("{what}: {why}"),
            None => what,
        });
        return Err(failed(&mut session, snapshot, f));
    }
    let ready = lock(&shared.state).ready.clone().unwrap_or_default();
    if restored && ready["reseeded"] != true {
        // Its random generator is the snapshot's, shared by every VM restored from it.
        session.end();
        return Err(restore_failed(restored, snapshot, VmError::NotReseeded).into());
    }
    session.info.boot_ms = ready["uptime_ms"].as_u64().filter(|_| !restored);
    session.info.restored = restored;
    // Booted: the agent waits for its session and has mounted nothing yet.
    if let Some(s) = snapshot.take().filter(|_| !restored) {
        save_snapshot(s, boot_limit);
    }
    Ok(session)
}

impl VmSession {
    /// Sends the session's specification to a VM at READY ([`boot`]) and waits until its sandbox is up.
    pub(super) fn assign(&mut self, spec: &RunSpec) -> Result<(), Boot> {
        let shared = self.shared.clone();
        let boot_limit = shared.boot_limit;
        let fail = |what: &str| {
            let why = lock(&shared.state).broken.clone();
            Boot::Failed(shared.failure(match why {
                Some(why) => format!("{what}: {why}"),
                None => what.to_string(),
            }))
        };
        (&*lock(&shared.control))
            .write_all(spec.to_json_line().as_bytes())
            .map_err(VmError::StartRun)?;
        if !shared.wait_for(boot_limit, |st| st.up.is_some() || st.verdict.is_some()) {
            return Err(fail("the session's sandbox did not start in the VM"));
        }
        let (up, verdict) = {
            let st = lock(&shared.state);
            (st.up.clone(), st.verdict.clone())
        };
        let Some(up) = up else {
            // The agent could not build the sandbox: its verdict says why.
            let why = verdict
                .as_ref()
                .and_then(Outcome::from_report_json)
                .and_then(|o| match o.status {
                    Status::SetupFailed(f) => Some(f),
                    _ => None,
                });
            return Err(Boot::Failed(why.unwrap_or_else(|| {
                shared.failure("the session's sandbox did not start in the VM".into())
            })));
        };
        self.enforced = serde_json::from_value(up).unwrap_or_default();
        Ok(())
    }

    /// The VM's host process id: the root of its process tree (the VMM, or the init that confines it).
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// Stops the session (SIGTERM, SIGKILL after `grace`) and returns its verdict.
    pub(crate) fn stop(mut self, grace: Duration, wall: Duration) -> Outcome {
        let s = self.shared.clone();
        let asked = s
            .request(&Request::Stop {
                grace_ms: grace.as_millis().min(u64::MAX as u128) as u64,
            })
            .is_ok();
        let got = asked && s.wait_for(grace + s.boot_limit, |st| st.verdict.is_some());
        let verdict = lock(&s.state).verdict.clone();
        let mut outcome = match verdict.as_ref().and_then(Outcome::from_report_json) {
            Some(o) if got => o,
            _ => {
                let why = lock(&s.state)
                    .broken
                    .clone()
                    .unwrap_or_else(|| "no verdict".into());
                Outcome::setup_failed(
                    s.failure(format!("the session's VM ended without a verdict: {why}")),
                    BackendKind::Vm,
                )
            }
        };
        // The agent ends the VM after its verdict.
        if !readable(s.pidfd.as_fd(), Duration::from_secs(10)) {
            tracing::info!("a session's VM did not end after its verdict; killing it");
        }
        self.end();
        outcome.backend = BackendKind::Vm;
        outcome.usage.wall = wall;
        outcome.vm = Some(self.info.clone());
        report_root(&mut outcome, self.root.as_ref());
        outcome
    }

    fn end(&mut self) {
        if let Some(host) = self.host.take() {
            host.abort();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(OnEnd(f)) = self.on_end.take() {
            f();
        }
    }
}

impl Drop for VmSession {
    fn drop(&mut self) {
        self.end();
    }
}

/// The control port's lines: READY, the agent's replies, the verdict.
fn read_control(port: UnixStream, s: &VmShared) {
    let mut r = BufReader::new(port);
    loop {
        let mut line = Vec::new();
        let why = match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => Some("the control port closed".to_string()),
            Ok(_) if !line.ends_with(b"\n") => Some(format!(
                "the guest sent a control line longer than {MAX_LINE} bytes"
            )),
            Ok(_) => None,
            Err(e) => Some(format!("reading the control port: {e}")),
        };
        if let Some(why) = why {
            s.broke(why);
            return;
        }
        if let Some(reply) = parse::<Reply>(&line, REPLY_PREFIX) {
            s.update(|st| match reply {
                Reply::Up { enforced } => st.up = Some(enforced),
                Reply::Started { id } => {
                    if let Some(slot) = st.commands.get_mut(&id) {
                        slot.started = true;
                    }
                }
                Reply::Exited { id, verdict } => {
                    if let Some(slot) = st.commands.get_mut(&id) {
                        slot.verdict = Some(verdict);
                        let _ = slot.activity.write(1);
                    }
                }
            });
        } else if let Some(v) = parse::<serde_json::Value>(&line, READY_PREFIX) {
            s.update(|st| st.ready = Some(v));
        } else if let Some(v) = parse::<serde_json::Value>(&line, VERDICT_PREFIX) {
            s.update(|st| st.verdict = Some(v));
        }
    }
}

/// The stdout port's frames into each command's sinks.
fn read_outputs(mut port: UnixStream, s: &VmShared) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match mux::read(&mut port, &mut buf) {
            Ok(mux::Frame::Data { id, stream, len }) if stream > 0 => {
                let i = stream as usize - 1;
                // Written without the state's lock: a caller slow to read its pipe holds up this port's
                // frames (one port carries every command's output), never the other commands' verdicts,
                // kills or timeouts.
                let sink = lock(&s.state)
                    .commands
                    .get_mut(&id)
                    .and_then(|slot| slot.sinks[i].take());
                // A reader that went away loses the rest of this command's output, nothing more.
                if let Some(mut f) = sink
                    && f.write_all(&buf[..len]).is_ok()
                    && let Some(slot) = lock(&s.state).commands.get_mut(&id)
                    && !slot.ended[i]
                {
                    slot.sinks[i] = Some(f);
                }
            }
            Ok(mux::Frame::End { id, stream }) if stream > 0 => s.update(|st| {
                if let Some(slot) = st.commands.get_mut(&id) {
                    slot.sinks[stream as usize - 1] = None;
                    slot.ended[stream as usize - 1] = true;
                    let _ = slot.activity.write(1);
                }
            }),
            // The VM ended: its ports close together, and this reader may see it first. The control port's
            // reader says the session broke once it has passed on what came before its own end (the
            // session's verdict, which a stop waits for), so this one only ends the commands' output.
            Ok(mux::Frame::Closed) => {
                s.update(|st| {
                    for slot in st.commands.values_mut() {
                        slot.sinks = [None, None];
                        let _ = slot.activity.write(1);
                    }
                });
                return;
            }
            Ok(_) => {
                s.broke("the guest sent a stdin frame on the output port".into());
                return;
            }
            Err(e) => {
                s.broke(format!("bad output frame: {e}"));
                return;
            }
        }
    }
}
