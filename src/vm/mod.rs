//! The VM backend: where a host cannot create namespaces, the same [`Policy`](crate::Policy) runs in a microVM
//! with our guest kernel (`kernel-config/`) and the guest agent `sandbox-init` (`guest/`) as PID 1.
//!
//! This module holds what the host side needs to prepare a guest: [`initramfs`] packs the agent (and, without
//! a control port, the run specification) into the uncompressed initramfs the kernel unpacks at boot.

pub mod assets;
pub mod cmdline;
mod cold_snapshot;
pub mod engine;
pub mod initramfs;
mod launch;
pub mod pool;
mod pool_channels;
mod pool_snapshot;
pub mod qemu;
pub mod snapshot_cache;

impl crate::backend::Run for engine::VmRun {
    fn pid(&self) -> u32 {
        engine::VmRun::pid(self)
    }

    fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        engine::VmRun::pidfd(self)
    }

    fn forwards_signals(&self) -> bool {
        false
    }

    fn boot_watch(&self) -> Option<crate::backend::BootWatch> {
        Some(engine::VmRun::boot_watch(self))
    }

    fn finish(
        self: Box<Self>,
        wall: std::time::Duration,
        host_timeout: bool,
    ) -> Result<crate::outcome::Outcome, crate::error::Error> {
        engine::VmRun::finish(*self, wall, host_timeout)
    }

    fn abort(self: Box<Self>) {
        engine::VmRun::abort(*self)
    }
}

impl crate::backend::Run for pool::PooledRun {
    fn pid(&self) -> u32 {
        pool::PooledRun::pid(self)
    }

    fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        pool::PooledRun::pidfd(self)
    }

    fn wait_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        pool::PooledRun::wait_fd(self)
    }

    fn ended(&mut self) -> bool {
        pool::PooledRun::ended(self)
    }

    fn forwards_signals(&self) -> bool {
        false
    }

    fn finish(
        self: Box<Self>,
        wall: std::time::Duration,
        host_timeout: bool,
    ) -> Result<crate::outcome::Outcome, crate::error::Error> {
        pool::PooledRun::finish(*self, wall, host_timeout)
    }

    fn abort(self: Box<Self>) {
        pool::PooledRun::abort(*self)
    }
}
