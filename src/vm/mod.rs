//! The VM backend: where a host cannot create namespaces, the same [`Policy`](crate::Policy) runs in a microVM
//! with our guest kernel (`kernel-config/`) and the guest agent `sandbox-init` (`guest/`) as PID 1.
//!
//! This module holds what the host side needs to prepare a guest: [`initramfs`] packs the agent (and, without
//! a control port, the run specification) into the uncompressed initramfs the kernel unpacks at boot.

pub mod assets;
mod builtin;
pub mod cmdline;
mod cold_snapshot;
mod control;
pub mod engine;
mod error;
mod hypervisor;
pub mod initramfs;
mod launch;
pub mod pool;
pub mod qemu;
mod run_spec;
pub mod snapshot_cache;
