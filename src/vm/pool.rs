//! Warm VMs: boot once, run many. A [`VmPool`] keeps booted guests whose agent serves one run after another
//! ([`RunSpec::serve`]); every run still gets fresh namespaces and a fresh cgroup inside the guest, so runs do
//! not see each other. What a warm VM keeps between runs is its kernel, the agent and its shares.
//!
//! ```no_run
//! use sandkasten::{Sandbox, VmPool, PoolOptions};
//!
//! let pool = VmPool::new(PoolOptions::default())?;
//! pool.prewarm(1)?; // boot now, not on the first run
//! for i in 0..3 {
//!     let out = Sandbox::new("/bin/echo").arg(i.to_string()).vm_pool(&pool).output()?;
//!     assert_eq!(out.stdout, format!("{i}\n").as_bytes());
//! }
//! # Ok::<(), sandkasten::Error>(())
//! ```
//!
//! The pool's VMs are booted with the host's system (as cold VM runs see it) and the directories of
//! [`PoolOptions::shares`]; a run's bind sources must lie inside one of those (a warm VM cannot take new
//! shares). Guest RAM and vCPUs are the pool's: a run's memory and CPU limits are enforced by its cgroup in the
//! guest. A run whose VM dies or times out takes that VM with it; the next run boots a fresh one.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::engine::{self, Host, Started, Tail, VmChannels};
use super::error::VmError;
use super::launch;
use super::qemu::Share;
use super::run_spec::{guest_spec, run_spec, share_dir};
use crate::backend::SnapshotCache;
use crate::error::Error;
use crate::namespace::Launch;
use crate::outcome::{SetupFailure, VmInfo};
use crate::policy::Policy;
use crate::protocol::RunSpec;

mod channels;
mod network;
mod run;
mod sessions;
pub(super) mod snapshot;

use super::control::{Event, Stdin, read_control, relay_stdin};
use channels::{Notify, read_output};
use snapshot::{restore_failed, restore_snapshot, save_snapshot, vmm_refused};

pub(crate) use run::PooledRun;

/// A host directory every VM of a pool shares with its guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolShare {
    /// The directory.
    pub path: PathBuf,
    /// Whether runs may bind it (or parts of it) writable.
    pub writable: bool,
}

/// How a pool's VMs are made.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Guest RAM of each VM, in MiB.
    pub memory_mib: u64,
    /// vCPUs of each VM.
    pub cpus: u32,
    /// How many booted VMs wait for runs at most; more finished VMs are shut down.
    pub max_idle: usize,
    /// How many VMs may be up at once (0: no limit); a run waits for a free VM beyond it.
    pub max_vms: usize,
    /// Host directories the VMs share; runs bind from inside them.
    pub shares: Vec<PoolShare>,
    /// The VMM: Auto takes our own where hardware KVM is usable, else QEMU.
    pub engine: crate::VmEngine,
    /// VMs are restored from a snapshot of the same booted guest instead of booting, and a boot without one
    /// saves it (either engine) ([`SnapshotCache`](crate::SnapshotCache)).
    pub snapshots: SnapshotCache,
    /// User-mode networking: every VM gets a network device and a passt of its own when it boots (ended
    /// with the VM), and runs and sessions may ask for [`Network::User`](crate::Network::User), though not
    /// publish ports (a VM's passt is started before its runs). Off by default: no device, no passt.
    pub user_network: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            memory_mib: 512,
            cpus: 1,
            max_idle: 2,
            max_vms: 0,
            shares: Vec::new(),
            engine: crate::VmEngine::Auto,
            snapshots: SnapshotCache::default(),
            user_network: false,
        }
    }
}

/// Counters of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// VMs booted.
    pub boots: u64,
    /// Runs served.
    pub runs: u64,
    /// Runs served by a VM that had served an earlier run or was prewarmed.
    pub warm_runs: u64,
    /// VMs discarded after a failure (death, timeout, protocol error).
    pub discarded: u64,
    /// Sessions handed out ([`Session::start_pooled`](crate::Session::start_pooled)).
    pub sessions: u64,
    /// Sessions handed out on a VM that was booted before they asked ([`VmPool::prewarm_sessions`]).
    pub warm_sessions: u64,
}

/// A pool of warm VMs (cheap to clone: clones share the pool). Dropping the last clone shuts the idle VMs down.
#[derive(Clone, Debug)]
pub struct VmPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    options: PoolOptions,
    /// The shares of every VM (system, /etc, then the pool's own), and the guest's view of them.
    shares: Vec<Share>,
    /// The VMM.
    engine: engine::Engine,
    /// With [`PoolOptions::user_network`]: the guests' link, read once from the host's default route.
    link: Option<crate::namespace::network::passt::Link>,
    base: RunSpec,
    /// The canonical pool share directories, in the order of [`PoolOptions::shares`], with their share index.
    roots: Vec<(PathBuf, bool, usize)>,
    state: Mutex<PoolState>,
    /// Signalled when a VM becomes idle or goes away.
    changed: Condvar,
    boots: AtomicU64,
    runs: AtomicU64,
    warm_runs: AtomicU64,
    discarded: AtomicU64,
    sessions: AtomicU64,
    warm_sessions: AtomicU64,
}

/// The VMs of a pool.
#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<WarmVm>,
    /// Booted VMs that wait for a session of their own.
    idle_sessions: Vec<super::session::VmSession>,
    /// VMs up (idle, serving, or booting).
    live: usize,
    /// Host pids of the VMs that are up.
    pids: Vec<u32>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let (idle, sessions) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.idle),
                std::mem::take(&mut st.idle_sessions),
            )
        };
        for vm in idle {
            vm.shut_down();
        }
        drop(sessions);
    }
}

impl VmPool {
    /// A pool that boots VMs on demand (see [`VmPool::prewarm`]). Checks the shares; boots nothing yet.
    pub fn new(options: PoolOptions) -> Result<VmPool, Error> {
        // The one place where a new pool's errors become the public error.
        Self::with(options).map_err(Error::from)
    }

    fn with(options: PoolOptions) -> Result<VmPool, VmError> {
        if options.memory_mib < 128 {
            return Err(VmError::PoolMemory(options.memory_mib));
        }
        let mut policy = Policy::default();
        for s in &options.shares {
            crate::namespace::plan::check_links(&s.path)?;
            if !s.path.is_dir() {
                return Err(VmError::PoolShareNotDir(s.path.clone()));
            }
            policy = if s.writable {
                policy.bind(&s.path, &s.path)
            } else {
                policy.ro_bind(&s.path, &s.path)
            };
        }
        let program = std::ffi::OsString::from("/bin/true");
        let launch = Launch {
            serve: None,
            program: &program,
            arg0: None,
            args: &[],
            env: &[],
            cwd: None,
            policy: &policy,
            stdio: [-1; 3],
            extra_fds: &[],
            guest: false,
        };
        let vmm = engine::Engine::pick(options.engine);
        let (mut base, shares) = guest_spec(&launch, vmm.share_fs(), None)?;
        base.serve = true;
        base.policy = Policy::default();
        let extra = shares.len() - options.shares.len();
        let roots = options
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let real = std::fs::canonicalize(&s.path).map_err(|source| VmError::PoolShare {
                    path: s.path.clone(),
                    source,
                })?;
                Ok((real, s.writable, i))
            })
            .collect::<Result<Vec<_>, VmError>>()?;
        debug_assert!(extra <= shares.len());
        let link = network::link(&options)?;
        Ok(VmPool {
            inner: Arc::new(PoolInner {
                options,
                shares,
                engine: vmm,
                link,
                base,
                roots,
                state: Mutex::new(PoolState::default()),
                changed: Condvar::new(),
                boots: AtomicU64::new(0),
                runs: AtomicU64::new(0),
                warm_runs: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
                sessions: AtomicU64::new(0),
                warm_sessions: AtomicU64::new(0),
            }),
        })
    }

    /// Boots VMs until `n` are idle (at most [`PoolOptions::max_idle`]).
    pub fn prewarm(&self, n: usize) -> Result<(), Error> {
        while self.place_for_prewarm(n, |st| st.idle.len()) {
            let mut vm = self.boot()?;
            vm.warm = true;
            self.inner.lock().idle.push(vm);
            self.inner.changed.notify_all();
        }
        Ok(())
    }

    /// For a prewarm of `n`: whether another VM is to boot (fewer than the target wait, by `waiting`, and
    /// `max_vms` leaves room); if so its place in `live` is taken.
    fn place_for_prewarm(&self, n: usize, waiting: impl Fn(&PoolState) -> usize) -> bool {
        let (want, max) = (self.prewarm_target(n), self.inner.options.max_vms);
        let mut st = self.inner.lock();
        if waiting(&st) >= want || (max > 0 && st.live >= max) {
            return false;
        }
        st.live += 1;
        true
    }

    /// How many VMs a prewarm of `n` leaves waiting: at most `max_idle`, and within `max_vms`.
    fn prewarm_target(&self, n: usize) -> usize {
        let o = &self.inner.options;
        match o.max_vms {
            0 => n.min(o.max_idle),
            m => n.min(o.max_idle).min(m),
        }
    }

    /// How many booted VMs wait for a run.
    pub fn idle(&self) -> usize {
        self.inner.lock().idle.len()
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let i = &self.inner;
        PoolStats {
            boots: i.boots.load(Ordering::Relaxed),
            runs: i.runs.load(Ordering::Relaxed),
            warm_runs: i.warm_runs.load(Ordering::Relaxed),
            discarded: i.discarded.load(Ordering::Relaxed),
            sessions: i.sessions.load(Ordering::Relaxed),
            warm_sessions: i.warm_sessions.load(Ordering::Relaxed),
        }
    }

    /// The host process ids of the pool's VMs that are up (idle or serving a run): each the root of the VM's
    /// process tree (the VMM, or the init of the sandbox that confines it), e.g. to account their memory.
    pub fn pids(&self) -> Vec<u32> {
        self.inner.lock().pids.clone()
    }

    /// Boots a VM whose place in `live` the caller took; gives the place back on failure.
    fn boot(&self) -> Result<WarmVm, VmError> {
        let o = &self.inner.options;
        self.inner.boots.fetch_add(1, Ordering::Relaxed);
        let limit = self.inner.engine.boot_limit();
        let cache = o.snapshots.dir();
        let start = || {
            let (shares, engine) = (&self.inner.shares, self.inner.engine);
            let passt = self.inner.passt()?;
            let started = launch::start_vm(
                engine,
                shares,
                (o.memory_mib, o.cpus),
                true,
                None,
                cache.as_deref(),
                passt.as_ref().map(|p| &p.1),
            )?;
            let mut vm = WarmVm::start(started, limit)?;
            vm.passt = passt.map(|p| p.0);
            Ok::<_, VmError>(vm)
        };
        let vm = start().or_else(|f| {
            if !f.is_restore_failure() {
                return Err(f);
            }
            // The snapshot is deleted: this start boots and saves a new one.
            tracing::warn!("{f}; booting instead");
            start()
        });
        match &vm {
            Ok(vm) => self.inner.lock().pids.push(vm.pid()),
            Err(_) => self.inner.gone(None),
        }
        vm
    }

    /// An idle VM, else a new one, else (at `max_vms`) the next one that becomes idle.
    fn take(&self) -> Result<WarmVm, VmError> {
        let max = self.inner.options.max_vms;
        let mut st = self.inner.lock();
        loop {
            if let Some(vm) = st.idle.pop() {
                return Ok(vm);
            }
            if max == 0 || st.live < max {
                st.live += 1;
                drop(st);
                return self.boot();
            }
            // At the limit with VMs booted for sessions that nobody asked for yet: one makes room.
            if let Some(spare) = st.idle_sessions.pop() {
                drop(st);
                drop(spare);
                st = self.inner.lock();
                continue;
            }
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The run specification of `launch` for this pool's VMs (with `session`: a session's, for
    /// [`VmPool::session`]).
    fn spec(&self, launch: &Launch<'_>, session: bool) -> Result<RunSpec, VmError> {
        let mut base = self.inner.base.clone();
        base.net = self.inner.guest_net(launch.policy)?;
        base.serve = !session;
        base.session = session;
        run_spec(launch, base, |_, src, real, writable| {
            let Some((root, _, i)) = self
                .inner
                .roots
                .iter()
                .find(|(root, w, _)| real.starts_with(root) && (*w || !writable))
            else {
                return Err(VmError::NotInPoolShare {
                    path: src.to_path_buf(),
                    writable,
                });
            };
            let rest = real.strip_prefix(root).unwrap_or(Path::new(""));
            Ok((share_dir(*i).join(rest), None))
        })
    }

    /// Starts `launch` on a warm VM (booting one when none is idle).
    pub(crate) fn spawn(&self, launch: &Launch<'_>) -> Result<PooledRun, SetupFailure> {
        // The one place where a served run's errors become the public failure.
        self.start(launch).map_err(SetupFailure::from)
    }

    fn start(&self, launch: &Launch<'_>) -> Result<PooledRun, VmError> {
        // A root of its own: its layers must lie in a share of the pool (the image store's directory).
        let (root, applied) = super::run_spec::on_root(launch)?;
        let on_root = applied.as_ref().map(|a| a.launch(launch));
        let launch = on_root.as_ref().unwrap_or(launch);
        let spec = self.spec(launch, false)?;
        let dup = engine::dup;
        let stdin = launch.stdio[0];
        let stdin_source = if stdin >= 0 && engine::is_dev_null(stdin) {
            None
        } else {
            Some(dup(stdin, 0)?)
        };
        let targets = [dup(launch.stdio[1], 1)?, dup(launch.stdio[2], 2)?];

        let vm = self.take()?;
        self.inner.runs.fetch_add(1, Ordering::Relaxed);
        if vm.warm {
            self.inner.warm_runs.fetch_add(1, Ordering::Relaxed);
        }
        let user_network = spec.net.is_some();
        let mut run = vm.begin(spec, stdin_source, targets, self.inner.clone())?;
        run.root = root;
        run.user_network = user_network;
        Ok(run)
    }
}

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A VM (host process `pid`, if it was up) went away: its place is free.
    fn gone(&self, pid: Option<u32>) {
        let mut st = self.lock();
        st.live = st.live.saturating_sub(1);
        st.pids.retain(|&p| Some(p) != pid);
        drop(st);
        self.changed.notify_all();
    }

    /// A VM finished a run: back to the idle list, or shut down when enough wait.
    fn give_back(&self, vm: WarmVm) {
        let mut st = self.lock();
        if st.idle.len() < self.options.max_idle {
            st.idle.push(vm);
            drop(st);
            self.changed.notify_all();
            return;
        }
        drop(st);
        let pid = vm.pid();
        vm.shut_down();
        self.gone(Some(pid));
    }

    /// A VM failed (`why`): killed, never reused.
    fn discard(&self, vm: WarmVm, why: &str) {
        tracing::info!("VM pool: discarding a warm VM: {why}");
        self.discarded.fetch_add(1, Ordering::Relaxed);
        let pid = vm.pid();
        vm.kill();
        self.gone(Some(pid));
    }
}

/// A booted VM whose agent waits for served runs.
struct WarmVm {
    host: Host,
    control: UnixStream,
    stdin: UnixStream,
    events: Receiver<Event>,
    /// Readable when `events` may hold something new (the readers write it after each event).
    activity: Arc<EventFd>,
    /// Where the program's stdout and stderr go during a run.
    sinks: [Arc<Mutex<Option<File>>>; 2],
    console: Tail,
    vmm_stderr: Tail,
    threads: Vec<JoinHandle<()>>,
    info: VmInfo,
    /// Served a run already, or was prewarmed.
    warm: bool,
    /// With [`PoolOptions::user_network`]: the VM's passt, ended with the VM.
    passt: Option<crate::namespace::network::pasta::Helper>,
}

impl std::fmt::Debug for WarmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmVm").field("host", &self.host).finish()
    }
}

impl WarmVm {
    /// Starts the reader threads and waits for the agent's READY line.
    fn start(started: Started, boot_limit: Duration) -> Result<WarmVm, VmError> {
        let Started {
            host,
            channels,
            mut info,
            snapshot,
        } = started;
        let VmChannels {
            console,
            control,
            stdin,
            stdout,
            stderr,
            vmm_stderr,
        } = channels;
        let (tx, rx) = mpsc::channel();
        let activity = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?);
        let tx = Notify {
            tx,
            fd: activity.clone(),
        };
        let sinks = [Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None))];
        let console_tail = Tail::default();
        let vmm_tail = Tail::default();
        let clone = |s: &UnixStream| {
            s.try_clone().map_err(|source| VmError::Dup {
                what: "the control socket",
                fd: s.as_raw_fd(),
                source,
            })
        };
        let mut threads = vec![
            console_tail.reader(console, 16 * 1024),
            vmm_tail.reader(vmm_stderr, 4096),
        ];
        let control_r = clone(&control)?;
        let t = tx.clone();
        threads.push(std::thread::spawn(move || {
            read_control(control_r, |e| t.send(e).is_ok())
        }));
        for (i, (port, sink)) in [stdout, stderr].into_iter().zip(&sinks).enumerate() {
            let (t, sink) = (tx.clone(), sink.clone());
            threads.push(std::thread::spawn(move || read_output(port, i, sink, t)));
        }
        drop(tx);
        let mut vm = WarmVm {
            host,
            control,
            stdin: stdin.ok_or(VmError::NoStdinPort)?,
            events: rx,
            activity,
            sinks,
            console: console_tail,
            vmm_stderr: vmm_tail,
            threads,
            info: VmInfo::default(),
            warm: false,
            passt: None,
        };
        let limit = Instant::now() + boot_limit;
        let (mut snapshot, restored) = match restore_snapshot(snapshot, &vm.control, boot_limit) {
            Ok(r) => r,
            Err(why) => {
                let vmm = vm.vmm_stderr.clone();
                vm.kill();
                return Err(vmm_refused(why, &vmm.text()));
            }
        };
        loop {
            match vm
                .events
                .recv_timeout(limit.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Ready(v)) if restored && v["reseeded"] != true => {
                    // Its random generator is the snapshot's, shared by every VM restored from it.
                    vm.kill();
                    return Err(restore_failed(restored, snapshot, VmError::NotReseeded));
                }
                Ok(Event::Ready(v)) => {
                    info.boot_ms = v["uptime_ms"].as_u64().filter(|_| !restored);
                    info.restored = restored;
                    vm.info = info;
                    // Booted: the agent waits for its first run and has mounted nothing yet.
                    if let Some(s) = snapshot.take().filter(|_| !restored) {
                        save_snapshot(s, boot_limit);
                    }
                    return Ok(vm);
                }
                Ok(Event::Broken(why)) => {
                    let console = vm.console.text();
                    vm.kill();
                    let failure = VmError::NotBooted { why, console };
                    return Err(restore_failed(restored, snapshot, failure));
                }
                Ok(_) => {}
                Err(_) => {
                    vm.kill();
                    let failure = VmError::ReadyTimeout(boot_limit);
                    return Err(restore_failed(restored, snapshot, failure));
                }
            }
        }
    }

    /// Sends the run and starts its stdin relay and collector.
    fn begin(
        self,
        spec: RunSpec,
        stdin_source: Option<OwnedFd>,
        targets: [OwnedFd; 2],
        pool: Arc<PoolInner>,
    ) -> Result<PooledRun, VmError> {
        for (sink, target) in self.sinks.iter().zip(targets) {
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(target));
        }
        let prepared = (|| {
            let to = self.stdin.try_clone()?;
            let pidfd = self.pidfd().try_clone_to_owned()?;
            (&self.control).write_all(spec.to_json_line().as_bytes())?;
            Ok::<_, std::io::Error>((to, pidfd))
        })();
        let (to, pidfd) = match prepared {
            Ok(p) => p,
            Err(e) => {
                pool.discard(self, "its run could not be started");
                return Err(VmError::StartRun(e));
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stdin_relay = {
            let stop = stop.clone();
            std::thread::spawn(move || relay_stdin(stdin_source, to, Stdin::Framed, &stop))
        };
        Ok(PooledRun::new(self, stop, stdin_relay, pidfd, pool))
    }

    fn pidfd(&self) -> BorrowedFd<'_> {
        self.host.pidfd()
    }

    fn pid(&self) -> u32 {
        self.host.pid()
    }

    /// Ends the VM: the agent sees its control port close and stops; the host then kills and reaps it.
    fn shut_down(self) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        self.kill();
    }

    fn kill(self) {
        self.host.abort();
        // The sockets close with the VMM: the readers end.
        for t in self.threads {
            let _ = t.join();
        }
    }
}
