//! The vCPU's pause point for a snapshot: the vCPU thread registers itself so a save can kick it out of
//! KVM_RUN, reads its own state when KVM_RUN returns EINTR (no I/O half done then) and waits until the save
//! is over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::signal::Killable;

use super::SnapshotError;
use super::cpu;
use super::state::VcpuState;

/// Where the vCPU thread parks for a snapshot. The thread registers itself while it runs, so a save can
/// kick it out of KVM_RUN; it checks for a request every time KVM_RUN returns EINTR.
#[derive(Debug, Default)]
pub struct PauseGate {
    requested: AtomicBool,
    inner: Mutex<GateState>,
    changed: Condvar,
    /// KVM's MSR list and whether XSAVE fits, read when the gate is made (only if saves may come).
    msr_indices: Vec<u32>,
    xsave: bool,
}

#[derive(Debug, Default)]
struct GateState {
    /// The vCPU thread while it may be in KVM_RUN.
    thread: Option<VcpuThread>,
    /// What the parked vCPU read of itself, and what KVM refused.
    saved: Option<Result<(VcpuState, Vec<String>), SnapshotError>>,
}

#[derive(Clone, Copy, Debug)]
struct VcpuThread(libc::pthread_t);

// SAFETY: the handle is `pthread_self()` of the vCPU thread, kept in the gate only while that thread runs:
// it removes it (under the gate's lock, which every kick holds) before it returns, so a kick never targets
// a finished thread.
unsafe impl Killable for VcpuThread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

/// Keeps the vCPU thread registered at its [`PauseGate`] until dropped.
pub struct Registration<'a>(&'a PauseGate);

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.0.lock().thread = None;
        self.0.changed.notify_all();
    }
}

impl PauseGate {
    /// A gate for a VM that may be saved: reads KVM's MSR list now.
    pub fn new(kvm: &Kvm) -> Result<PauseGate, SnapshotError> {
        let list = kvm
            .get_msr_index_list()
            .map_err(|source| SnapshotError::Kvm {
                what: "KVM_GET_MSR_INDEX_LIST",
                source,
            })?;
        Ok(PauseGate {
            msr_indices: list.as_slice().to_vec(),
            xsave: cpu::xsave_fits(kvm),
            ..PauseGate::default()
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called on the vCPU thread before it first enters KVM_RUN.
    pub fn register(&self) -> Registration<'_> {
        // SAFETY: pthread_self has no preconditions.
        self.lock().thread = Some(VcpuThread(unsafe { libc::pthread_self() }));
        Registration(self)
    }

    /// On the vCPU thread, out of KVM_RUN with no I/O pending: if a save is asked for, reads the vCPU's
    /// state, hands it over and waits until the save is done.
    pub fn park_if_requested(&self, vcpu: &VcpuFd) {
        if !self.requested.load(Ordering::Acquire) {
            return;
        }
        let mut refused = Vec::new();
        let saved =
            cpu::save_vcpu(vcpu, &self.msr_indices, self.xsave, &mut refused).map(|s| (s, refused));
        let mut g = self.lock();
        g.saved = Some(saved);
        self.changed.notify_all();
        while self.requested.load(Ordering::Acquire) {
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the vCPU and returns its state (the vCPU stays parked until [`PauseGate::resume`]).
    pub fn pause(
        &self,
        kick: libc::c_int,
        timeout: Duration,
    ) -> Result<(VcpuState, Vec<String>), SnapshotError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        g.saved = None;
        self.requested.store(true, Ordering::Release);
        loop {
            if let Some(saved) = g.saved.take() {
                return saved;
            }
            let Some(thread) = g.thread else {
                self.requested.store(false, Ordering::Release);
                return Err(SnapshotError::Pause("is not running"));
            };
            if Instant::now() > deadline {
                self.requested.store(false, Ordering::Release);
                self.changed.notify_all();
                return Err(SnapshotError::Pause("did not stop within 10 s"));
            }
            // A kick that lands outside KVM_RUN is lost: repeat until the thread parks.
            let _ = thread.kill(kick);
            g = self
                .changed
                .wait_timeout(g, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets a parked vCPU run on.
    pub fn resume(&self) {
        let _g = self.lock();
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }
}
