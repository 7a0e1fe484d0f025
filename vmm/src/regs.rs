//! The boot CPU state: GDT and IDT in guest memory, the identity page tables of the 64-bit boot protocol,
//! segment/control registers for PVH (32-bit protected mode, paging off) or 64-bit long mode, general
//! registers, CPUID adjustments, boot MSRs and the local APIC's LINT pins.
//!
//! Everything here is plain computation over guest memory or KVM structures, so it is unit-tested by
//! reading guest memory back, without KVM; `vcpu.rs` only hands the results to the ioctls.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{GDT_START, IDT_START, PD_START, PDPT_START, PML4_START};

/// Errors writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot structure could not be written to guest memory.
    #[error("cannot write the boot {what} at {addr:#x} into guest memory: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
}

/// The CPU mode the kernel is entered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode on an identity map, RSI = zero page.
    Long,
}

/// GDT selector of the code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// GDT selector of the data segments.
pub const DATA_SELECTOR: u16 = 0x10;
/// GDT selector of the task state segment.
pub const TSS_SELECTOR: u16 = 0x18;

// Access/flag bits of a descriptor as the 16 bits (flags << 12 | access): G D/B L AVL . . . . P DPL(2) S TYPE(4).
const CODE32: u16 = 0xc09b; // G, D/B=32-bit, present, S, execute/read, accessed
const CODE64: u16 = 0xa09b; // G, L=64-bit, present, S, execute/read, accessed
const DATA: u16 = 0xc093; // G, D/B, present, S, read/write, accessed
const TSS: u16 = 0x008b; // present, system, 32/64-bit busy TSS

/// Encodes a segment descriptor from its 16 access/flag bits, base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((flags & 0xff) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags >> 12) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The KVM view of descriptor `entry` loaded with `selector`.
pub fn segment_from_entry(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let access = (entry >> 40) & 0xff;
    let flags = (entry >> 52) & 0xf;
    let g = ((flags >> 3) & 1) as u8;
    let present = ((access >> 7) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: (access & 0xf) as u8,
        present,
        dpl: ((access >> 5) & 3) as u8,
        db: ((flags >> 2) & 1) as u8,
        s: ((access >> 4) & 1) as u8,
        l: ((flags >> 1) & 1) as u8,
        g,
        avl: (flags & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT for `mode`: null, code, data, TSS.
pub fn boot_gdt(mode: BootMode) -> [u64; 4] {
    let code = match mode {
        BootMode::Pvh => CODE32,
        BootMode::Long => CODE64,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0x67),
    ]
}

fn write<M: GuestMemory, T: vm_memory::ByteValued>(
    mem: &M,
    what: &'static str,
    addr: u64,
    value: T,
) -> Result<(), RegsError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| RegsError::Write { what, addr, source })
}

/// Writes the GDT and an empty IDT into guest memory and returns the special registers for `mode`
/// (segments loaded from that GDT, control registers, EFER; page tables for [`BootMode::Long`]).
pub fn setup_sregs<M: GuestMemory>(
    mem: &M,
    mode: BootMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(mode);
    for (i, e) in gdt.iter().enumerate() {
        write(mem, "GDT", GDT_START + 8 * i as u64, *e)?;
    }
    write(mem, "IDT", IDT_START, 0u64)?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_entry(gdt[1], CODE_SELECTOR);
    let data = segment_from_entry(gdt[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_entry(gdt[3], TSS_SELECTOR);

    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    match mode {
        BootMode::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootMode::Long => {
            write_identity_map(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// Writes page tables that identity-map the first 1 GiB with 2 MiB pages (PML4 → PDPT → PD).
pub fn write_identity_map<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write(mem, "PML4", PML4_START, PDPT_START | PRESENT_RW)?;
    write(mem, "PDPT", PDPT_START, PD_START | PRESENT_RW)?;
    for i in 0..512u64 {
        write(mem, "PD", PD_START + 8 * i, (i << 21) | PRESENT_RW | HUGE)?;
    }
    Ok(())
}

/// General registers at the kernel entry: `entry` in RIP, the boot structure in EBX (PVH) or RSI (64-bit),
/// only the reserved bit in RFLAGS (interrupts off).
pub fn boot_regs(mode: BootMode, entry: u64, boot_info: u64, stack: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        BootMode::Pvh => regs.rbx = boot_info,
        BootMode::Long => {
            regs.rsi = boot_info;
            regs.rsp = stack;
            regs.rbp = stack;
        }
    }
    regs
}

/// Adjusts the host-supported CPUID for vCPU `index` of `count`: the APIC ids, the logical processor
/// count, and the hypervisor-present bit.
pub fn adjust_cpuid(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8) {
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((count as u32) << 16) | ((index as u32) << 24);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the logical count field is valid
                }
            }
            0xb | 0x1f => e.edx = index as u32,
            _ => {}
        }
    }
}

/// MSRs given a defined value at boot (a reset CPU's), limited to those `supported` by this KVM.
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    const WANTED: &[(u32, u64)] = &[
        (0x174, 0),       // IA32_SYSENTER_CS
        (0x175, 0),       // IA32_SYSENTER_ESP
        (0x176, 0),       // IA32_SYSENTER_EIP
        (0xc000_0081, 0), // STAR
        (0xc000_0082, 0), // LSTAR
        (0xc000_0083, 0), // CSTAR
        (0xc000_0084, 0), // SYSCALL_MASK
        (0xc000_0102, 0), // KERNEL_GS_BASE
        (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    ];
    WANTED
        .iter()
        .filter(|(i, _)| supported.contains(i))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 0x7;
const DELIVERY_NMI: u32 = 0x4;

fn lapic_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let b = |i: usize| state.regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().into_iter().enumerate() {
        state.regs[off + i] = byte as _;
    }
}

/// Wires the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as on a PC in virtual-wire mode, so
/// the legacy PIC's interrupts (serial, PIT) reach the CPU.
pub fn set_lint(state: &mut kvm_lapic_state) {
    for (off, mode) in [
        (APIC_LVT_LINT0, DELIVERY_EXTINT),
        (APIC_LVT_LINT1, DELIVERY_NMI),
    ] {
        let v = lapic_reg(state, off);
        set_lapic_reg(state, off, (v & !0x700) | (mode << 8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    fn mem() -> memory::GuestMemoryMmap {
        memory::create(32 << 20).unwrap()
    }

    #[test]
    fn descriptors_round_trip() {
        let e = gdt_entry(CODE64, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_entry(e, CODE_SELECTOR);
        assert_eq!((s.base, s.limit, s.selector), (0, 0xffff_ffff, 0x08));
        assert_eq!(
            (s.type_, s.present, s.dpl, s.s, s.l, s.db, s.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        let d = segment_from_entry(gdt_entry(DATA, 0, 0xfffff), DATA_SELECTOR);
        assert_eq!((d.type_, d.db, d.l, d.unusable), (0x3, 1, 0, 0));
        let t = segment_from_entry(gdt_entry(TSS, 0x1234_5678, 0x67), TSS_SELECTOR);
        assert_eq!(
            (t.base, t.limit, t.type_, t.s, t.g),
            (0x1234_5678, 0x67, 0xb, 0, 0)
        );
        assert_eq!(segment_from_entry(0, 0).unusable, 1);
    }

    #[test]
    fn pvh_state_is_flat_32_bit_protected_mode() {
        let m = mem();
        let s = setup_sregs(&m, BootMode::Pvh, kvm_sregs::default()).unwrap();
        for (i, want) in boot_gdt(BootMode::Pvh).iter().enumerate() {
            let got: u64 = m.read_obj(GuestAddress(GDT_START + 8 * i as u64)).unwrap();
            assert_eq!(got, *want, "GDT entry {i} read back");
        }
        assert_eq!(m.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);
        assert_eq!(
            (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit),
            (GDT_START, 31, IDT_START, 7)
        );
        assert_eq!(
            (s.cs.db, s.cs.l, s.cs.limit, s.cs.selector),
            (1, 0, 0xffff_ffff, 0x08)
        );
        assert_eq!((s.ss.selector, s.ds.type_), (0x10, 3));
        assert_eq!((s.tr.selector, s.tr.limit, s.tr.type_), (0x18, 0x67, 0xb));
        assert_eq!(s.cr0, 0x11, "PE and ET, paging off");
        assert_eq!((s.cr4, s.efer), (0, 0));
        // No page tables are written for PVH.
        assert_eq!(m.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(), 0);
    }

    #[test]
    fn long_mode_state_and_identity_map() {
        let m = mem();
        let s = setup_sregs(&m, BootMode::Long, kvm_sregs::default()).unwrap();
        assert_eq!((s.cs.l, s.cs.db), (1, 0));
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr0 & (1 << 31 | 1), 1 << 31 | 1);
        assert_eq!(s.cr4 & (1 << 5), 1 << 5);
        assert_eq!(s.efer, 0x500);
        let r = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r(PML4_START), PDPT_START | 3);
        assert_eq!(r(PDPT_START), PD_START | 3);
        assert_eq!(r(PD_START), 0x83);
        assert_eq!(r(PD_START + 8), (2 << 20) | 0x83);
        assert_eq!(r(PD_START + 511 * 8), (511 << 21) | 0x83);
        // Walk the tables for an address, as the MMU would.
        let va: u64 = 0x1234_5678;
        let pdpt = r(PML4_START + 8 * ((va >> 39) & 511)) & !0xfff;
        let pd = r(pdpt + 8 * ((va >> 30) & 511)) & !0xfff;
        let pde = r(pd + 8 * ((va >> 21) & 511));
        assert_eq!((pde & !0xfff & !0x80) + (va & 0x1f_ffff), va);
    }

    #[test]
    fn boot_structures_outside_memory_are_errors() {
        let tiny = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x1000)])
            .unwrap();
        assert!(matches!(
            setup_sregs(&tiny, BootMode::Pvh, kvm_sregs::default()),
            Err(RegsError::Write { what: "GDT", .. })
        ));
    }

    #[test]
    fn registers_carry_the_boot_info() {
        let r = boot_regs(BootMode::Pvh, 0x100_0000, 0x6000, 0x8ff0);
        assert_eq!(
            (r.rip, r.rbx, r.rsi, r.rsp, r.rflags),
            (0x100_0000, 0x6000, 0, 0, 2)
        );
        let r = boot_regs(BootMode::Long, 0x100_0200, 0x7000, 0x8ff0);
        assert_eq!(
            (r.rip, r.rbx, r.rsi, r.rsp, r.rbp),
            (0x100_0200, 0, 0x7000, 0x8ff0, 0x8ff0)
        );
    }

    #[test]
    fn cpuid_gets_apic_ids_and_the_hypervisor_bit() {
        let entry = |function, ebx| kvm_cpuid_entry2 {
            function,
            ebx,
            ..Default::default()
        };
        let mut e = [entry(0x1, 0xff12_3456), entry(0xb, 0), entry(0x7, 9)];
        adjust_cpuid(&mut e, 3, 4);
        assert_eq!(e[0].ebx, 0x0304_3456);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_ne!(e[0].edx & (1 << 28), 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].ebx, 9, "other leaves untouched");
    }

    #[test]
    fn only_supported_msrs_are_set() {
        let m = boot_msrs(&[0x174, 0xc000_0082, 0x1a0, 0x999]);
        let idx: Vec<u32> = m.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![0x174, 0xc000_0082, 0x1a0]);
        assert_eq!(m[2].data, 1);
        assert!(boot_msrs(&[]).is_empty());
    }

    #[test]
    fn lint_pins_are_wired_to_extint_and_nmi() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT_LINT0, 0x0001_0700);
        set_lapic_reg(&mut s, APIC_LVT_LINT1, 0x0001_0000);
        set_lint(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT1), 0x0001_0400);
    }
}
