//! The builtin VM engine: our own small KVM VMM on the rust-vmm crates (`kvm-ioctls`, `vm-memory`,
//! `linux-loader`, `vm-superio`), in the spirit of Firecracker.
//!
//! This first stage boots our guest kernel (`kernel-config/`) with an initramfs on one vCPU, shows the
//! kernel log on the 8250 serial port and ends when the guest writes the i8042 reset command
//! (`reboot=k`). Virtio devices ([`VmConfig::devices`]) sit on virtio-mmio slots ([`virtio::mmio`]) that
//! the command line declares: a virtio-console with named ports ([`virtio::console`]) carries the agent's
//! control channel (specification in, verdict out) and the program's standard streams.
//!
//! ```no_run
//! use sandkasten::vmm::{self, VmConfig};
//! use std::time::Duration;
//!
//! let report = vmm::run(VmConfig {
//!     kernel: "/path/to/vmlinux".into(),
//!     initramfs: vmm::boot::Initramfs::File(std::fs::File::open("/path/to/init.cpio")?),
//!     cmdline: vmm::kernel_cmdline(true, vmm::pvm_detected(), ""),
//!     memory_mib: 256,
//!     timeout: Duration::from_secs(300),
//!     console: vmm::Console::new(std::io::stderr()),
//!     devices: Vec::new(),
//! })?;
//! println!("guest ended: {:?} after {:?}", report.exit, report.elapsed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The vCPU runs on its own thread; the host stops a guest that outlives its timeout by interrupting
//! KVM_RUN with the real-time signal `SIGRTMIN + 1`, for which this module installs an empty handler (once
//! per process). Every way a guest can end (reset, triple fault, KVM internal error, timeout) is a value of
//! [`VmReport`] or [`VmmError`]; guest accesses to addresses without a device are ignored and counted.
//!
//! Files, one step each: [`layout`] (memory map, e820), [`memory`] (guest RAM), [`boot`] (kernel,
//! command line, initramfs, PVH start info or zero page), [`regs`] (GDT, page tables, registers, CPUID,
//! MSRs, LAPIC), [`bus`] (PIO/MMIO dispatch), [`devices`], [`virtio`] (the virtio-mmio transport and its
//! devices), [`vcpu`] (the run loop), [`vm`] (the build).

pub mod boot;
pub mod bus;
pub mod devices;
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
pub use snapshot::SnapshotOptions;
pub use vcpu::GuestExit;
pub use vm::{
    VmConfig, VmReport, run, run_code, run_code_with_devices, run_code_with_snapshots, run_with,
    run_with_snapshots,
};

/// Kernel options our guest needs on PVM (`/dev/kvm` is the `kvm_pvm` module): see
/// `kernel-config/README.md`. Each works around an instruction PVM's emulator lacks, and `sandbox_pvm=1`
/// turns on our kernel patches. The last one reaches the agent's environment (the kernel passes unknown
/// `KEY=VALUE` options to init), which hands it to every program: guest user code runs natively on the host
/// CPU with AVX enabled, while the guest kernel, without XSAVE (`noxsave`), saves only the legacy FPU/SSE
/// state when it switches processes, so glibc must not use AVX registers that another process could clobber
/// (measured in a guest here: a process holding ymm0-15 found them changed in 2-65% of its rounds while
/// others ran). Clearing the AVX features is not enough: glibc picks its AVX `memcpy`/`memmove`/`memset` on
/// the preference `AVX_Fast_Unaligned_Load`, set before the tunables apply, so it is cleared too (without it
/// the agent itself, PID 1, copied with AVX and crashed on a clobbered pointer in CI). Clearing XSAVE and
/// XSAVEC makes the dynamic loader's lazy-binding trampoline save and restore only the SSE registers: with
/// XSAVEC it wrote back AVX registers captured before a process switch, over another process's.
pub const PVM_CMDLINE: &str = "noxsave clearcpuid=popcnt,smap,cx16 sandbox_pvm=1 \
     GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,\
     -AVX_Fast_Unaligned_Load,-XSAVEC,-XSAVE";

/// The value of `GLIBC_TUNABLES` in [`PVM_CMDLINE`].
pub fn pvm_glibc_tunables() -> &'static str {
    PVM_CMDLINE
        .split(' ')
        .find_map(|w| w.strip_prefix("GLIBC_TUNABLES="))
        .unwrap_or_default()
}

/// Whether `/dev/kvm` is PVM (software, no VT-x/SVM), which needs [`PVM_CMDLINE`].
pub fn pvm_detected() -> bool {
    crate::probe::probe_kvm().flavour == "pvm"
}

/// An argument for the agent: the kernel passes a word it does not know (no `=`, no `.`) to init, which
/// ignores it. (Not after `--`: QEMU's microvm appends its virtio-mmio options at the end of the line.) Its
/// only purpose is room: the sandbox's init, a fork of the agent, writes the name `sandbox-init` over its
/// argument area (as on the host), which `/init` alone is too short to hold, so `ps` in a sandbox shows the
/// same PID 1 whatever the backend, engine or accelerator.
pub const INIT_ARGS: &str = "sandbox-init";

/// The guest command line: the base options, then under TCG (`kvm` false) the TCG options, on PVM (`kvm`
/// and `pvm`) the PVM options, then `extra`, then [`INIT_ARGS`].
pub fn kernel_cmdline(kvm: bool, pvm: bool, extra: &str) -> String {
    let mut c = String::from(crate::vm::qemu::BASE_CMDLINE);
    let accel = match (kvm, pvm) {
        (false, _) => crate::vm::qemu::TCG_CMDLINE,
        (true, true) => PVM_CMDLINE,
        (true, false) => "",
    };
    for part in [accel, extra.trim(), INIT_ARGS] {
        if !part.is_empty() {
            c.push(' ');
            c.push_str(part);
        }
    }
    c
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_pvm_options_only_on_pvm_and_the_tcg_ones_only_on_tcg() {
        let base = crate::vm::qemu::BASE_CMDLINE;
        let tcg = crate::vm::qemu::TCG_CMDLINE;
        assert_eq!(
            kernel_cmdline(true, false, ""),
            format!("{base} {INIT_ARGS}")
        );
        assert_eq!(
            kernel_cmdline(true, false, " x=1 "),
            format!("{base} x=1 {INIT_ARGS}")
        );
        assert_eq!(
            kernel_cmdline(false, true, ""),
            format!("{base} {tcg} {INIT_ARGS}")
        );
        assert!(!kernel_cmdline(true, true, "").contains(tcg));
        let pvm = kernel_cmdline(true, true, "y");
        assert_eq!(pvm, format!("{base} {PVM_CMDLINE} y {INIT_ARGS}"));
        assert!(pvm.contains("reboot=k") && pvm.contains("sandbox_pvm=1"));
    }

    /// glibc's own view of the CPU (`ld.so --list-diagnostics`) under the given `GLIBC_TUNABLES`.
    fn glibc_diagnostics(tunables: &str) -> Option<String> {
        let out = std::process::Command::new("/lib64/ld-linux-x86-64.so.2")
            .arg("--list-diagnostics")
            .env_clear()
            .env("GLIBC_TUNABLES", tunables)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The value of `key` in the diagnostics, a hexadecimal number.
    fn diagnostic(text: &str, key: &str) -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("glibc's diagnostics have no {key}:\n{text}"));
        u64::from_str_radix(line.trim_start_matches("0x"), 16).unwrap()
    }

    /// What makes glibc touch AVX registers: the preference for its AVX copies; the active AVX, AVX2 and
    /// AVX-512F bits (CPUID leaf 1 ECX bit 28; leaf 7 EBX bits 5 and 16); a nonzero XSAVE area for the
    /// lazy-binding trampoline (zero: it saves only SSE registers, with FXSAVE).
    fn glibc_avx(text: &str) -> [bool; 5] {
        [
            diagnostic(text, "x86.cpu_features.preferred.AVX_Fast_Unaligned_Load") != 0,
            diagnostic(text, "x86.cpu_features.features[0x0].active[0x2]") & (1 << 28) != 0,
            diagnostic(text, "x86.cpu_features.features[0x1].active[0x1]") & (1 << 5) != 0,
            diagnostic(text, "x86.cpu_features.features[0x1].active[0x1]") & (1 << 16) != 0,
            diagnostic(text, "x86.cpu_features.xsave_state_size") != 0,
        ]
    }

    #[test]
    fn the_pvm_glibc_tunables_leave_glibc_no_avx_code() {
        let Some(plain) = glibc_diagnostics("") else {
            eprintln!("SKIPPED: no /lib64/ld-linux-x86-64.so.2 to ask");
            return;
        };
        if !plain.contains("x86.cpu_features") {
            eprintln!("SKIPPED: this glibc lists no CPU features");
            return;
        }
        if glibc_avx(&plain) == [false; 5] {
            eprintln!("note: this CPU gives glibc no AVX: the check below cannot fail here");
        }
        let tuned = glibc_diagnostics(pvm_glibc_tunables()).unwrap();
        assert_eq!(
            glibc_avx(&tuned),
            [false; 5],
            "[AVX copies, AVX, AVX2, AVX-512F, XSAVE trampoline] with GLIBC_TUNABLES={}",
            pvm_glibc_tunables()
        );
    }
}
