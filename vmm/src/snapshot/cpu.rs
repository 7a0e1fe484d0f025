//! The KVM side of a snapshot: a vCPU's registers, FPU, MSRs, LAPIC and events, and the VM's in-kernel
//! PIC, IOAPIC, PIT and clock, read with the KVM_GET_* ioctls and written back with KVM_SET_* in the order
//! KVM needs (CPUID before anything else; the MSRs after the LAPIC, with the TSC before the TSC deadline;
//! the pending events last).
//!
//! State a KVM does not give (PVM refuses some) is recorded in [`Snapshot::refused`](super::state::Snapshot)
//! when it is optional (XSAVE: the legacy FPU state stands in; XCRs; debug registers; single MSRs), and is
//! an error when it is not.

use kvm_bindings::{
    KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, Msrs, kvm_clock_data, kvm_irqchip, kvm_msr_entry,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use super::SnapshotError;
use super::state::{FpuState, Raw, VcpuState, VmState};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// Whether KVM_GET/SET_XSAVE (the 4 KiB `kvm_xsave`) covers this KVM's whole XSAVE area: with a larger
/// area (KVM_CAP_XSAVE2 above 4096, e.g. AMX) the legacy ioctl would not hold it.
pub fn xsave_fits(kvm: &Kvm) -> bool {
    kvm.check_extension(Cap::Xsave)
        && usize::try_from(kvm.check_extension_int(Cap::Xsave2))
            .is_ok_and(|n| n <= std::mem::size_of::<kvm_bindings::kvm_xsave>())
}

/// MSRs in restore order: the TSC first, the TSC deadline (relative to the TSC) last.
pub fn msr_order(msrs: &mut [(u32, u64)]) {
    msrs.sort_by_key(|&(i, _)| match i {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
}

/// Reads the MSRs of `indices` that KVM gives; the others are named in `refused`.
fn get_msrs(
    vcpu: &VcpuFd,
    indices: &[u32],
    refused: &mut Vec<String>,
) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| {
            SnapshotError::Invalid(format!("{} MSRs do not fit KVM_GET_MSRS", entries.len()))
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it refuses: note it and go on after it.
        if let Some(&bad) = rest.get(n) {
            refused.push(format!("KVM_GET_MSRS {bad:#x}"));
        }
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    msr_order(&mut out);
    Ok(out)
}

/// Reads the state of a vCPU that is out of KVM_RUN with no I/O pending.
pub fn save_vcpu(
    vcpu: &VcpuFd,
    msr_indices: &[u32],
    xsave: bool,
    refused: &mut Vec<String>,
) -> Result<VcpuState, SnapshotError> {
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?;
    let mut optional = |what: &str, e: kvm_ioctls::Error| refused.push(format!("{what}: {e}"));
    let xsave = if xsave {
        vcpu.get_xsave()
            .map_err(|e| optional("KVM_GET_XSAVE", e))
            .ok()
            .map(Raw)
    } else {
        optional("KVM_GET_XSAVE", kvm_ioctls::Error::new(libc::ENOTSUP));
        None
    };
    let xcrs = vcpu
        .get_xcrs()
        .map_err(|e| optional("KVM_GET_XCRS", e))
        .ok()
        .map(Raw);
    let debugregs = vcpu
        .get_debug_regs()
        .map_err(|e| optional("KVM_GET_DEBUGREGS", e))
        .ok()
        .map(Raw);
    Ok(VcpuState {
        cpuid: cpuid.as_slice().iter().copied().map(Raw).collect(),
        regs: Raw(vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?),
        sregs: Raw(vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?),
        fpu: FpuState::from(&vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?),
        xsave,
        xcrs,
        debugregs,
        lapic: Raw(vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?),
        mp_state: Raw(vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?),
        events: Raw(vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?),
        msrs: get_msrs(vcpu, msr_indices, refused)?,
    })
}

/// Creates vCPU `index` of `vm` in the saved state.
pub fn restore_vcpu(
    kvm_fd: &Kvm,
    vm: &VmFd,
    index: u8,
    s: &VcpuState,
) -> Result<VcpuFd, SnapshotError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm("KVM_CREATE_VCPU"))?;
    let entries: Vec<_> = s.cpuid.iter().map(|e| e.0).collect();
    let cpuid = kvm_bindings::CpuId::from_entries(&entries)
        .map_err(|_| SnapshotError::Invalid(format!("{} CPUID entries", entries.len())))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(s.mp_state.0)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs.0).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&s.sregs.0).map_err(kvm("KVM_SET_SREGS"))?;
    match &s.xsave {
        Some(x) if xsave_fits(kvm_fd) => {
            // SAFETY: `xsave_fits` checked that this KVM's XSAVE area fits the 4 KiB `kvm_xsave` that is
            // passed, so KVM reads no further than the structure.
            unsafe { vcpu.set_xsave(&x.0) }.map_err(kvm("KVM_SET_XSAVE"))?;
        }
        _ => vcpu.set_fpu(&(&s.fpu).into()).map_err(kvm("KVM_SET_FPU"))?,
    }
    if let Some(x) = &s.xcrs {
        vcpu.set_xcrs(&x.0).map_err(kvm("KVM_SET_XCRS"))?;
    }
    if let Some(d) = &s.debugregs {
        vcpu.set_debug_regs(&d.0)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    }
    vcpu.set_lapic(&s.lapic.0).map_err(kvm("KVM_SET_LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    if !entries.is_empty() {
        let msrs = Msrs::from_entries(&entries)
            .map_err(|_| SnapshotError::Invalid(format!("{} MSRs", entries.len())))?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(SnapshotError::Msr {
                index: entries[set].index,
                set,
                total: entries.len(),
            });
        }
    }
    vcpu.set_vcpu_events(&s.events.0)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(vcpu)
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<Raw<kvm_irqchip>, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(Raw(chip))
}

/// Reads the in-kernel PIC, IOAPIC, PIT and the clock.
pub fn save_vm(vm: &VmFd) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: Raw(vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?),
        clock: Raw(vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?),
    })
}

/// The clock to set: the saved one, moved on by the real time since the save when KVM reported it
/// (`KVM_CLOCK_REALTIME`), so the guest's wall clock is right after a restore days later. Only the flag
/// KVM_SET_CLOCK takes is kept.
pub fn clock_to_set(saved: &kvm_clock_data) -> kvm_clock_data {
    kvm_clock_data {
        clock: saved.clock,
        flags: saved.flags & KVM_CLOCK_REALTIME,
        realtime: if saved.flags & KVM_CLOCK_REALTIME != 0 {
            saved.realtime
        } else {
            0
        },
        ..Default::default()
    }
}

/// Writes the in-kernel PIC, IOAPIC, PIT and the clock of a VM that has its irqchip and PIT.
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), SnapshotError> {
    for (chip, id) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.0.chip_id != id {
            return Err(SnapshotError::Invalid(format!(
                "irqchip {id} saved as chip {}",
                chip.0.chip_id
            )));
        }
        vm.set_irqchip(&chip.0).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&s.pit.0).map_err(kvm("KVM_SET_PIT2"))?;
    vm.set_clock(&clock_to_set(&s.clock.0))
        .map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrs_are_ordered_tsc_first_deadline_last() {
        let mut m = vec![
            (MSR_IA32_TSC_DEADLINE, 1),
            (0xc000_0080, 2),
            (MSR_IA32_TSC, 3),
            (0x174, 4),
        ];
        msr_order(&mut m);
        assert_eq!(m.first().unwrap().0, MSR_IA32_TSC);
        assert_eq!(m.last().unwrap().0, MSR_IA32_TSC_DEADLINE);
        assert_eq!(
            m[1..3].iter().map(|e| e.0).collect::<Vec<_>>(),
            [0xc000_0080, 0x174]
        );
    }

    #[test]
    fn the_clock_moves_on_only_with_a_real_time_reference() {
        let with = kvm_clock_data {
            clock: 5,
            flags: KVM_CLOCK_REALTIME | 2 | 8,
            realtime: 77,
            host_tsc: 9,
            ..Default::default()
        };
        let c = clock_to_set(&with);
        assert_eq!(
            (c.clock, c.flags, c.realtime, c.host_tsc),
            (5, KVM_CLOCK_REALTIME, 77, 0)
        );
        let without = kvm_clock_data {
            clock: 5,
            flags: 2,
            realtime: 77,
            ..Default::default()
        };
        let c = clock_to_set(&without);
        assert_eq!((c.clock, c.flags, c.realtime), (5, 0, 0));
    }
}
