//! A small KVM virtual machine monitor on the rust-vmm crates (`kvm-ioctls`, `vm-memory`, `linux-loader`,
//! `vm-superio`, `virtio-queue`, `fuse-backend-rs`), in the spirit of Firecracker: it boots a Linux kernel
//! (a PVH `vmlinux`, or a bzImage) with an initramfs on one vCPU, shows the kernel log on the 8250 serial port
//! and ends when the guest writes the i8042 reset command (`reboot=k` on the guest's command line). Virtio
//! devices ([`VmConfig::devices`]) sit on virtio-mmio slots ([`virtio::mmio`]) that the command line declares:
//! a virtio-console with named ports ([`virtio::console`]) and virtio-fs shares ([`virtio::fs`]). The caller
//! gives the whole kernel command line ([`VmConfig::cmdline`]); the VMM only appends its virtio-mmio options.
//!
//! ```no_run
//! use sandkasten_vmm::{self as vmm, VmConfig};
//! use std::time::Duration;
//!
//! let report = vmm::run(VmConfig {
//!     kernel: "/path/to/vmlinux".into(),
//!     initramfs: vmm::boot::Initramfs::File(std::fs::File::open("/path/to/init.cpio")?),
//!     cmdline: "console=ttyS0 reboot=k panic=-1".into(),
//!     memory_mib: 256,
//!     timeout: Duration::from_secs(300),
//!     console: vmm::Console::new(std::io::stderr()),
//!     devices: Vec::new(),
//! })?;
//! println!("guest ended: {:?} after {:?} on {} KVM", report.exit, report.elapsed, report.kvm_flavour);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The vCPU runs on its own thread; the host stops a guest that outlives its timeout by interrupting
//! KVM_RUN with the real-time signal `SIGRTMIN + 1`, for which this crate installs an empty handler (once
//! per process). Every way a guest can end (reset, triple fault, KVM internal error, timeout) is a value of
//! [`VmReport`] or [`VmmError`]; guest accesses to addresses without a device are ignored and counted.
//! [`process`] runs the VMM as a confined process of its own (landlock, seccomp), configured by JSON.
//!
//! Files, one step each: [`flavour`] (which KVM this is), [`layout`] (memory map, e820), [`memory`] (guest
//! RAM), [`boot`] (kernel, command line, initramfs, PVH start info or zero page), [`regs`] (GDT, page tables,
//! registers, CPUID, MSRs, LAPIC), [`bus`] (PIO/MMIO dispatch), [`devices`], [`virtio`] (the virtio-mmio
//! transport and its devices), [`vcpu`] (the run loop), [`vm`] (the build), [`snapshot`] (save and restore).
#![warn(missing_docs)]

pub mod boot;
pub mod bus;
pub mod devices;
pub mod flavour;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod process;
pub mod regs;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::time::Duration;

pub use devices::serial::Console;
pub use flavour::{KvmFlavour, KvmReport, probe_kvm};
pub use snapshot::SnapshotOptions;
pub use vcpu::GuestExit;
pub use vm::{
    VmConfig, VmReport, run, run_code, run_code_with_devices, run_code_with_snapshots, run_with,
    run_with_snapshots,
};

/// Errors of the builtin VMM: one variant per step, the step's own error inside.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm cannot be opened.
    #[error(
        "cannot open /dev/kvm: {0} (the builtin engine needs KVM: check that /dev/kvm exists and that this user may open it)"
    )]
    OpenKvm(kvm_ioctls::Error),
    /// This KVM lacks capabilities the VMM needs.
    #[error("this KVM lacks {}: the builtin engine cannot run here (use the QEMU engine)", .0.join(", "))]
    MissingCapabilities(Vec<&'static str>),
    /// A VM-level KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Loading the kernel and boot information.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Writing the MP table.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// Device placement.
    #[error("device placement: {0}")]
    Bus(#[from] bus::BusError),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The vCPU thread could not be started.
    #[error("cannot start the vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(std::io::Error),
    /// vCPU setup or run failed, or the guest crashed.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// The vCPU thread ended without a result (a bug in the VMM).
    #[error("the vCPU thread ended without a result")]
    VcpuPanicked,
    /// More virtio devices than virtio-mmio slots.
    #[error(
        "{0} virtio devices requested, the builtin VMM has {n} virtio-mmio slots",
        n = layout::VIRTIO_IRQS.len()
    )]
    TooManyDevices(usize),
    /// A virtio device's transport could not be built.
    #[error(transparent)]
    Virtio(#[from] virtio::mmio::MmioError),
    /// The guest did not end within the timeout and was stopped.
    #[error("the guest did not end within {0:?} and was stopped")]
    Timeout(Duration),
    /// Saving or restoring a snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The guest did not end within the timeout and its vCPU could not be stopped.
    #[error("the guest did not end within {0:?} and its vCPU does not stop")]
    Unstoppable(Duration),
}
