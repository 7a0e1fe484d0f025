//! One vCPU: its boot configuration (CPUID, MSRs, registers, FPU, LAPIC) and the run loop, which sends
//! port and MMIO exits to the buses and turns every other way a guest can stop into a value.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemory;

use super::boot::Entry;
use super::bus::{Bus, BusError, BusEvent};
use super::layout::BOOT_STACK_POINTER;
use super::regs::{self, RegsError};
use super::snapshot::PauseGate;

/// Errors configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl of the vCPU setup failed.
    #[error("{what} failed for vCPU {index}: {source}")]
    Setup {
        /// The ioctl.
        what: &'static str,
        /// vCPU index.
        index: u8,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer boot MSRs than given.
    #[error("KVM_SET_MSRS set {set} of {wanted} boot MSRs (first refused: {refused:#x})")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
        /// The first one not set.
        refused: u32,
    },
    /// Writing the boot structures failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// KVM_RUN itself failed.
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN): the guest kernel crashed before it could panic.
    #[error("the guest triple-faulted (KVM_EXIT_SHUTDOWN) at RIP {rip:#x}")]
    TripleFault {
        /// Where, when the registers could be read.
        rip: u64,
    },
    /// KVM could not emulate something the guest did (KVM_EXIT_INTERNAL_ERROR); on PVM this is typically an
    /// instruction its emulator lacks: check the PVM boot options.
    #[error(
        "KVM internal error (suberror {suberror}) at RIP {rip:#x}: KVM could not emulate the guest; on PVM check the boot options (noxsave clearcpuid=...)"
    )]
    Internal {
        /// `kvm_run.internal.suberror`.
        suberror: u32,
        /// Where.
        rip: u64,
    },
    /// The vCPU could not enter the guest (KVM_EXIT_FAIL_ENTRY).
    #[error("KVM could not enter the guest (hardware entry failure reason {reason:#x})")]
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// An exit this VMM does not handle.
    #[error("unexpected vCPU exit: {0}")]
    Unexpected(String),
    /// The VM was stopped from the host (timeout or drop).
    #[error("stopped by the host")]
    Stopped,
}

/// How the guest ended, when it ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// It wrote the reset command (our guest's normal end: `reboot(RB_AUTOBOOT)` with `reboot=k`).
    Reset,
    /// It halted with interrupts off (KVM_EXIT_HLT).
    Halted,
    /// It asked KVM for a reset or power-off (KVM_EXIT_SYSTEM_EVENT).
    SystemEvent(u32),
}

/// Counters of one vCPU's exits.
#[derive(Debug, Default)]
pub struct ExitCounts {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// Accesses that reached no device (ignored: reads see all ones).
    pub unhandled: AtomicU64,
}

/// Creates vCPU `index` of `count` and sets its boot state for `entry`.
pub fn create<M: GuestMemory>(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &M,
    index: u8,
    count: u8,
    entry: &Entry,
) -> Result<VcpuFd, VcpuError> {
    let setup = |what| {
        move |source| VcpuError::Setup {
            what,
            index,
            source,
        }
    };
    let vcpu = vm
        .create_vcpu(index as u64)
        .map_err(setup("KVM_CREATE_VCPU"))?;

    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
    regs::adjust_cpuid(cpuid.as_mut_slice(), index, count);
    vcpu.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;

    let supported = kvm
        .get_msr_index_list()
        .map_err(setup("KVM_GET_MSR_INDEX_LIST"))?;
    let wanted = regs::boot_msrs(supported.as_slice());
    if !wanted.is_empty() {
        let msrs = Msrs::from_entries(&wanted).map_err(|_| VcpuError::Msrs {
            set: 0,
            wanted: wanted.len(),
            refused: wanted[0].index,
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(setup("KVM_SET_MSRS"))?;
        if set != wanted.len() {
            return Err(VcpuError::Msrs {
                set,
                wanted: wanted.len(),
                refused: wanted[set].index,
            });
        }
    }

    let sregs = vcpu.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
    let sregs = regs::setup_sregs(mem, entry.mode, sregs)?;
    vcpu.set_sregs(&sregs).map_err(setup("KVM_SET_SREGS"))?;
    let r = regs::boot_regs(entry.mode, entry.rip, entry.boot_info, BOOT_STACK_POINTER);
    vcpu.set_regs(&r).map_err(setup("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(setup("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(setup("KVM_GET_LAPIC"))?;
    regs::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(setup("KVM_SET_LAPIC"))?;
    Ok(vcpu)
}

/// Runs `vcpu` until the guest ends, an error, or `stop` (checked whenever KVM_RUN returns; the host
/// interrupts KVM_RUN with a signal to make it return).
pub fn run(
    vcpu: &mut VcpuFd,
    pio: &Bus,
    mmio: &Bus,
    stop: &AtomicBool,
    counts: &ExitCounts,
    pause: &PauseGate,
) -> Result<GuestExit, VcpuError> {
    // Unhandled accesses (probes of absent hardware) are normal during boot; they are counted, and a read
    // sees an unconnected bus (all ones).
    let unhandled = |r: Result<(), BusError>| {
        if r.is_err() {
            counts.unhandled.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(VcpuError::Stopped);
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                // KVM completes a pending port or MMIO read before it returns EINTR: a consistent point.
                pause.park_if_requested(vcpu);
                continue;
            }
            Err(e) => return Err(VcpuError::Run(e)),
        };
        let event = match exit {
            VcpuExit::IoIn(port, data) => {
                counts.pio.fetch_add(1, Ordering::Relaxed);
                let r = pio.read(port as u64, data);
                if r.is_err() {
                    data.fill(0xff);
                }
                unhandled(r);
                BusEvent::Continue
            }
            VcpuExit::IoOut(port, data) => {
                counts.pio.fetch_add(1, Ordering::Relaxed);
                pio.write(port as u64, data).unwrap_or_else(|_| {
                    counts.unhandled.fetch_add(1, Ordering::Relaxed);
                    BusEvent::Continue
                })
            }
            VcpuExit::MmioRead(addr, data) => {
                counts.mmio.fetch_add(1, Ordering::Relaxed);
                let r = mmio.read(addr, data);
                if r.is_err() {
                    data.fill(0xff);
                }
                unhandled(r);
                BusEvent::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                counts.mmio.fetch_add(1, Ordering::Relaxed);
                mmio.write(addr, data).unwrap_or_else(|_| {
                    counts.unhandled.fetch_add(1, Ordering::Relaxed);
                    BusEvent::Continue
                })
            }
            VcpuExit::Hlt => return Ok(GuestExit::Halted),
            VcpuExit::SystemEvent(kind, _) => return Ok(GuestExit::SystemEvent(kind)),
            VcpuExit::Shutdown => {
                return Err(VcpuError::TripleFault { rip: rip(vcpu) });
            }
            VcpuExit::InternalError => {
                let suberror = internal_suberror(vcpu);
                return Err(VcpuError::Internal {
                    suberror,
                    rip: rip(vcpu),
                });
            }
            VcpuExit::FailEntry(reason, _) => return Err(VcpuError::FailEntry { reason }),
            VcpuExit::Intr => continue,
            other => return Err(VcpuError::Unexpected(format!("{other:?}"))),
        };
        if event == BusEvent::Reset {
            return Ok(GuestExit::Reset);
        }
    }
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        return 0;
    }
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, for which KVM fills the `internal` member of the
    // exit union; the union is plain data, so reading a u32 from it is always defined.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}
