//! The VM backend: where a host cannot create namespaces, the same [`Policy`](crate::Policy) runs in a microVM
//! with our guest kernel (`kernel-config/`) and the guest agent `sandbox-init` (`guest/`) as PID 1.
//!
//! Runs go through [`Sandbox`](crate::Sandbox) and [`VmPool`](crate::VmPool); what is public here is the guest
//! itself, for tools that boot it some other way: where its kernel and agent are ([`assets`]), its
//! uncompressed initramfs ([`pack_agent`]), its kernel command line ([`cmdline`]), and the QEMU this host
//! would use ([`find_qemu`], [`choose_accel`]).
//!
//! Inside (where each kind of change goes: ARCHITECTURE.md): the engine seam (`hypervisor.rs`, implemented by
//! `qemu.rs` and `builtin.rs`), the confined launcher (`launch.rs`), cold runs (`engine.rs`, their output's end: `drain.rs`), warm VMs
//! (`pool.rs`, `pool/`), the run specification (`run_spec.rs`), the control channel (`control.rs`) and the
//! snapshot cache (`snapshot_cache.rs`, `cold_snapshot.rs`).

mod assets;
mod builtin;
pub mod cmdline;
mod cold_snapshot;
mod control;
mod drain;
pub(crate) mod engine;
mod error;
mod hypervisor;
mod initramfs;
pub(crate) mod keeper;
mod launch;
pub(crate) mod pool;
mod qemu;
mod run_spec;
pub(crate) mod session;
pub(crate) mod snapshot_cache;

pub use assets::{
    AssetError, AssetReport, Located, SOURCE_DIR, VmAssets, assets, cache_dir, default_agent,
    default_kernel, locate, set_assets,
};
pub use initramfs::{ExtraFile, Initramfs, InitramfsError, pack_agent};
pub use qemu::{Accel, choose_accel, find_qemu};
