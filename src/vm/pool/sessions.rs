//! A pool's VMs for sessions ([`crate::Session::start_pooled`]): booted (or restored from the pool's
//! snapshot) ahead of time up to READY, then given one session each. A session's VM is never reused: its
//! guest keeps the session's files and processes, so it ends with the session and frees its place in the pool.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::VmPool;
use crate::error::Error;
use crate::namespace::Launch;
use crate::outcome::SetupFailure;
use crate::vm::session::{self, Boot, OnEnd, VmSession};
use crate::vm::{engine, launch};

impl VmPool {
    /// Boots VMs until `n` wait for sessions (at most [`PoolOptions::max_idle`](super::PoolOptions), and
    /// within [`PoolOptions::max_vms`](super::PoolOptions)), so that a
    /// [`Session::start_pooled`](crate::Session::start_pooled) finds its VM up. Each serves one session.
    pub fn prewarm_sessions(&self, n: usize) -> Result<(), Error> {
        while self.place_for_prewarm(n, |st| st.idle_sessions.len()) {
            let vm = self
                .boot_session()
                .map_err(|b| Error::Setup(SetupFailure::from(b)))?;
            self.inner.lock().idle_sessions.push(vm);
            self.inner.changed.notify_all();
        }
        Ok(())
    }

    /// How many booted VMs wait for a session.
    pub fn idle_sessions(&self) -> usize {
        self.inner.lock().idle_sessions.len()
    }

    /// A session of `launch` (no program) on a VM of the pool: one that waits for a session, else a new one.
    pub(crate) fn session(&self, launch: &Launch<'_>) -> Result<VmSession, SetupFailure> {
        // The one place where a pooled session's errors become the public failure.
        self.start_session(launch).map_err(SetupFailure::from)
    }

    fn start_session(&self, launch: &Launch<'_>) -> Result<VmSession, Boot> {
        // Checked before a VM is taken: a bind outside the pool's shares costs no VM.
        let (root, spec) = session::on_its_root(launch, |l| self.spec(l, true))?;
        let (mut vm, warm) = self.take_session()?;
        self.inner.sessions.fetch_add(1, Ordering::Relaxed);
        if warm {
            self.inner.warm_sessions.fetch_add(1, Ordering::Relaxed);
        }
        vm.root = root;
        vm.info.warm = warm;
        // On failure the VM is dropped: it ends and frees its place.
        vm.assign(&spec)?;
        if spec.net.is_some()
            && let Some(passt) = &vm.network
        {
            engine::report_network(&mut vm.enforced.network, passt, &[]);
        }
        Ok(vm)
    }

    /// A VM waiting for a session (and whether it was booted before this asked), else a new one, else (at
    /// `max_vms`) room made by shutting down an idle VM of runs, else the next VM that goes away.
    fn take_session(&self) -> Result<(VmSession, bool), Boot> {
        let max = self.inner.options.max_vms;
        let mut st = self.inner.lock();
        loop {
            if let Some(vm) = st.idle_sessions.pop() {
                return Ok((vm, true));
            }
            if max == 0 || st.live < max {
                st.live += 1;
                drop(st);
                return self.boot_session().map(|vm| (vm, false));
            }
            if let Some(idle) = st.idle.pop() {
                drop(st);
                let pid = idle.pid();
                idle.shut_down();
                self.inner.gone(Some(pid));
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

    /// Boots (or restores) a VM for a session, up to READY, whose place in `live` the caller took; gives the
    /// place back on failure, and when the VM ends.
    fn boot_session(&self) -> Result<VmSession, Boot> {
        let inner = &self.inner;
        let o = &inner.options;
        inner.boots.fetch_add(1, Ordering::Relaxed);
        let limit = inner.engine.boot_limit();
        let cache = o.snapshots.dir();
        let start = || {
            let passt = inner.passt()?;
            let started = launch::start_vm(
                inner.engine,
                &inner.shares,
                (o.memory_mib, o.cpus),
                true,
                None,
                cache.as_deref(),
                passt.as_ref().map(|p| &p.1),
            )?;
            let mut vm = session::boot(started, limit)?;
            vm.network = passt.map(|p| p.0);
            Ok::<_, Boot>(vm)
        };
        let vm = start().or_else(|f| match f {
            Boot::Vm(e) if e.is_restore_failure() => {
                // The snapshot is deleted: this start boots and saves a new one.
                tracing::warn!("{e}; booting instead");
                start()
            }
            f => Err(f),
        });
        match vm {
            Ok(mut vm) => {
                let pid = vm.pid();
                inner.lock().pids.push(pid);
                let pool = Arc::downgrade(inner);
                vm.on_end = Some(OnEnd(Box::new(move || {
                    if let Some(pool) = pool.upgrade() {
                        pool.gone(Some(pid));
                    }
                })));
                Ok(vm)
            }
            Err(e) => {
                inner.gone(None);
                Err(e)
            }
        }
    }
}
