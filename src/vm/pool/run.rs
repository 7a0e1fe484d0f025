//! A run on a warm VM, host side: its events until the verdict, the outcome, and whether the VM goes back
//! to the pool or is discarded.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Event, PoolInner, WarmVm};
use crate::backend::Run;
use crate::error::Error;
use crate::outcome::{BackendKind, Outcome, Status, TimeLimit};
use crate::vm::engine::{last_lines, no_failure};
use crate::vm::error::VmError;

/// How a served run ended, as the collector saw it.
struct RunEnd {
    verdict: Option<serde_json::Value>,
    /// The VM broke (and must not serve again), and why.
    broken: Option<String>,
    /// The end frames of stdout and stderr arrived.
    outputs_ended: [bool; 2],
}

/// A run on a warm VM, host side.
pub(crate) struct PooledRun {
    vm: Option<WarmVm>,
    stop: Arc<AtomicBool>,
    stdin_relay: Option<JoinHandle<()>>,
    pidfd: OwnedFd,
    pool: Arc<PoolInner>,
    result: Option<RunEnd>,
    /// The run asked for `network = "user"` (its verdict names the VM's passt).
    pub(super) user_network: bool,
    /// A root of its own: holds the image's layers until the run ends; completes the guest's report.
    pub(super) root: Option<crate::namespace::rootfs::Root>,
}

impl std::fmt::Debug for PooledRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledRun").field("vm", &self.vm).finish()
    }
}

impl PooledRun {
    pub(super) fn new(
        vm: WarmVm,
        stop: Arc<AtomicBool>,
        stdin_relay: JoinHandle<()>,
        pidfd: OwnedFd,
        pool: Arc<PoolInner>,
    ) -> PooledRun {
        PooledRun {
            vm: Some(vm),
            stop,
            stdin_relay: Some(stdin_relay),
            pidfd,
            pool,
            result: None,
            user_network: false,
            root: None,
        }
    }

    /// How long past the run's own timeout the host waits for the guest's verdict: the guest builds the
    /// run's sandbox before the program's clock starts, which takes long under software KVM.
    pub(crate) fn setup_grace(&self) -> Duration {
        self.pool.engine.boot_limit().min(Duration::from_secs(300))
    }

    /// Takes the events that arrive within `wait`; whether the run has ended.
    fn collect(&mut self, wait: Duration) -> bool {
        let Some(vm) = &self.vm else { return true };
        // Cleared before the channel is drained, so an event sent meanwhile leaves it readable.
        let _ = vm.activity.read();
        let end = self.result.get_or_insert(RunEnd {
            verdict: None,
            broken: None,
            outputs_ended: [false; 2],
        });
        let limit = Instant::now() + wait;
        loop {
            if end.broken.is_some() || (end.verdict.is_some() && end.outputs_ended == [true; 2]) {
                return true;
            }
            let left = limit.saturating_duration_since(Instant::now());
            match vm.events.recv_timeout(left) {
                Ok(Event::Verdict(v)) => end.verdict = Some(v),
                Ok(Event::OutputEnd(i)) => end.outputs_ended[i.min(1)] = true,
                Ok(Event::Ready(_)) => {}
                Ok(Event::Broken(why)) => end.broken = Some(why),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => {
                    end.broken = Some("the VM's channels closed".into());
                }
            }
        }
    }
}

impl Run for PooledRun {
    fn pid(&self) -> u32 {
        self.vm.as_ref().map_or(0, WarmVm::pid)
    }

    /// The VMM's pidfd: signals go there (SIGKILL ends the VM and so the run).
    fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Readable when something happened on the VM's channels; then [`PooledRun::ended`] tells whether the
    /// run is over.
    fn wait_fd(&self) -> BorrowedFd<'_> {
        match &self.vm {
            // SAFETY: the eventfd lives as long as the VM, which `self` holds while the borrow lives.
            Some(vm) => unsafe { BorrowedFd::borrow_raw(vm.activity.as_raw_fd()) },
            None => self.pidfd.as_fd(),
        }
    }

    /// Takes what arrived; whether the run has ended (verdict and both output ends, or the VM broke).
    fn ended(&mut self) -> bool {
        self.collect(Duration::ZERO)
    }

    /// Signals are not forwarded into the VM yet: only SIGKILL, which ends it.
    fn forwards_signals(&self) -> bool {
        false
    }

    fn finish(mut self: Box<Self>, wall: Duration, host_timeout: bool) -> Result<Outcome, Error> {
        // After a kill the channels close promptly; a finished run has all its events queued already.
        self.collect(Duration::from_secs(10));
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.stdin_relay.take() {
            let _ = t.join();
        }
        let vm = self.vm.take().expect("finish runs once");
        for sink in &vm.sinks {
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let end = self.result.take().unwrap_or(RunEnd {
            verdict: None,
            broken: Some("no events".into()),
            outputs_ended: [false; 2],
        });
        let mut info = vm.info.clone();
        info.warm = vm.warm;
        if vm.warm {
            info.boot_ms = None;
        }
        let verdict = end.verdict.as_ref().and_then(Outcome::from_report_json);
        let mut outcome = match verdict {
            Some(o) => o,
            None => {
                let console = vm.console.text();
                info.console_tail = Some(console.clone());
                let status = if host_timeout {
                    Status::TimedOut(TimeLimit::Wall)
                } else {
                    Status::SetupFailed(
                        VmError::WarmNoVerdict {
                            why: end.broken.as_deref().unwrap_or("unknown").to_string(),
                            vmm_said: vm.vmm_stderr.text(),
                            console: last_lines(&console, 15),
                        }
                        .into(),
                    )
                };
                Outcome::setup_failed(no_failure(), BackendKind::Vm).with_status(status)
            }
        };
        outcome.backend = BackendKind::Vm;
        outcome.usage.wall = wall;
        outcome.vm = Some(info);
        if self.user_network
            && let Some(passt) = &vm.passt
        {
            crate::vm::engine::report_network(&mut outcome.enforced.network, passt, &[]);
        }
        super::super::run_spec::report_root(&mut outcome, self.root.as_ref());
        let healthy = end.broken.is_none() && end.verdict.is_some() && !host_timeout;
        let mut vm = vm;
        vm.warm = true;
        if healthy {
            self.pool.give_back(vm);
        } else {
            let why = match (&end.broken, host_timeout) {
                (Some(why), _) => why.as_str(),
                (None, true) => "the run outlived its host-side deadline",
                (None, false) => "no verdict",
            };
            self.pool.discard(vm, why);
        }
        Ok(outcome)
    }

    fn abort(mut self: Box<Self>) {
        self.stop.store(true, Ordering::Release);
        if let Some(vm) = self.vm.take() {
            self.pool.discard(vm, "its run was killed");
        }
        if let Some(t) = self.stdin_relay.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PooledRun {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            self.stop.store(true, Ordering::Release);
            self.pool.discard(vm, "its run was dropped before it ended");
        }
    }
}
