//! The Intel MultiProcessor Specification (1.4) table that tells a guest without ACPI where its CPUs and
//! the I/O APIC are and how the ISA interrupt lines reach the I/O APIC's pins.
//!
//! Without it Linux finds "no MADT or MP tables", leaves the in-kernel I/O APIC unused and runs every
//! interrupt through the 8259 PICs in virtual-wire mode, with the local APIC in xAPIC (MMIO) mode: every
//! interrupt then costs several port-I/O exits (mask, acknowledge, EOI) and every APIC access an MMIO
//! exit. With the table the guest switches to symmetric I/O mode and x2APIC (MSR accesses, paravirtual
//! EOI), and the virtio devices get I/O APIC pins beyond the 16 ISA lines.
//!
//! Layout at [`layout::MPTABLE_START`] (the last KiB of base memory, where Linux scans for it): the 16-byte
//! floating pointer structure, then the configuration table it points to: header, one processor entry per
//! vCPU, one bus (ISA), the I/O APIC, one I/O interrupt entry per pin (ISA line `n` → pin `n`, as KVM's
//! default GSI routing wires them), and the two local interrupts (ExtINT on LINT0, NMI on LINT1).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout;

/// The local APIC's address.
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// The I/O APIC's address.
pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// Pins of KVM's in-kernel I/O APIC.
pub const IOAPIC_PINS: u8 = 24;
/// Most vCPUs the table describes (APIC ids stay below the I/O APIC's id and below 255).
pub const MAX_CPUS: u8 = 254;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Version of an integrated local APIC.
const LAPIC_VERSION: u8 = 0x14;
/// Version KVM's I/O APIC reports.
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 signature and the FPU + APIC feature bits: informational, Linux reads the real CPUID.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 1 | (1 << 9);
const ISA_BUS_ID: u8 = 0;
/// "Conforms to the bus" polarity and trigger: for ISA, active high and edge-triggered.
const CONFORMING: u16 = 0;
/// Destination "all local APICs".
const ALL_LAPICS: u8 = 0xff;

/// Errors of the MP table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MpTableError {
    /// The vCPU count is 0 or beyond what the table can describe.
    #[error("an MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(usize),
    /// The table does not fit below the end of base memory or cannot be written.
    #[error("cannot write the MP table at {addr:#x}: {reason} (give the guest more memory)")]
    Write {
        /// Where.
        addr: u64,
        /// Why.
        reason: String,
    },
}

/// The table for `cpus` vCPUs (APIC ids 0..cpus, vCPU 0 bootstraps), as it is placed at `at`.
pub fn build(cpus: usize, at: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS as usize {
        return Err(MpTableError::CpuCount(cpus));
    }
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus as u8 {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC_ADDRESS.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        entries.extend([ENTRY_IO_INTERRUPT, INT_VECTORED]);
        entries.extend(CONFORMING.to_le_bytes());
        entries.extend([ISA_BUS_ID, pin, ioapic_id, pin]);
        count += 1;
    }
    for (kind, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        entries.extend([ENTRY_LOCAL_INTERRUPT, kind]);
        entries.extend(CONFORMING.to_le_bytes());
        entries.extend([ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }

    let table_at = at + FLOATING_LEN as u64;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend(*b"PCMP");
    header.extend(((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.extend([4, 0]); // specification 1.4, checksum (set below)
    header.extend(*b"SANDBOX ");
    header.extend(*b"MICROVM     ");
    header.extend(0u32.to_le_bytes()); // no OEM table
    header.extend(0u16.to_le_bytes());
    header.extend(count.to_le_bytes());
    header.extend(LAPIC_ADDRESS.to_le_bytes());
    header.extend([0; 4]); // no extended table
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN + table.len());
    floating.extend(*b"_MP_");
    floating.extend((table_at as u32).to_le_bytes());
    floating.extend([1, 4, 0, 0, 0, 0, 0, 0]); // 1 paragraph, 1.4, checksum, config table present
    floating[10] = checksum(&floating);
    floating.extend(table);
    Ok(floating)
}

/// Writes the table for `cpus` vCPUs at [`layout::MPTABLE_START`].
pub fn write<M: GuestMemory>(mem: &M, cpus: usize) -> Result<(), MpTableError> {
    let at = layout::MPTABLE_START;
    let bytes = build(cpus, at)?;
    let err = |reason: String| MpTableError::Write { addr: at, reason };
    if at + bytes.len() as u64 > layout::HIMEM_START {
        return Err(err(format!(
            "{} bytes do not fit below {:#x}",
            bytes.len(),
            layout::HIMEM_START
        )));
    }
    mem.write_slice(&bytes, GuestAddress(at))
        .map_err(|e| err(e.to_string()))
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    const PROCESSOR_LEN: usize = 20;
    const SMALL_ENTRY_LEN: usize = 8;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([b[i], b[i + 1]])
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
    }

    /// Reads the table back from guest memory the way a guest does and returns its entries by type.
    fn parse(mem: &memory::GuestMemoryMmap) -> Vec<Vec<u8>> {
        let mut fp = [0u8; FLOATING_LEN];
        mem.read_slice(&mut fp, GuestAddress(layout::MPTABLE_START))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!((fp[8], fp[9], fp[11]), (1, 4, 0));
        let table_at = u32_at(&fp, 4) as u64;
        let mut header = [0u8; HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(table_at)).unwrap();
        assert_eq!(&header[..4], b"PCMP");
        assert_eq!(u32_at(&header, 36), LAPIC_ADDRESS);
        let len = u16_at(&header, 4) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_at)).unwrap();
        assert_eq!(sum(&table), 0, "configuration table checksum");
        let mut entries = Vec::new();
        let mut i = HEADER_LEN;
        while i < len {
            let n = if table[i] == ENTRY_PROCESSOR {
                PROCESSOR_LEN
            } else {
                SMALL_ENTRY_LEN
            };
            entries.push(table[i..i + n].to_vec());
            i += n;
        }
        assert_eq!(i, len, "entries end exactly at the table's end");
        assert_eq!(entries.len(), u16_at(&header, 34) as usize);
        entries
    }

    #[test]
    fn a_guest_reading_memory_finds_cpus_the_ioapic_and_every_pin() {
        let mem = memory::create(64 << 20).unwrap();
        write(&mem, 2).unwrap();
        let entries = parse(&mem);
        let of = |t: u8| entries.iter().filter(move |e| e[0] == t);
        let cpus: Vec<_> = of(ENTRY_PROCESSOR).collect();
        assert_eq!(cpus.len(), 2);
        assert_eq!((cpus[0][1], cpus[0][3]), (0, CPU_ENABLED | CPU_BOOTSTRAP));
        assert_eq!((cpus[1][1], cpus[1][3]), (1, CPU_ENABLED));
        let bus: Vec<_> = of(ENTRY_BUS).collect();
        assert_eq!(&bus[0][2..8], b"ISA   ");
        let ioapic: Vec<_> = of(ENTRY_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(ioapic[0][1], 2, "the I/O APIC id follows the CPUs'");
        assert_eq!(u32_at(ioapic[0], 4), IOAPIC_ADDRESS);
        let pins: Vec<_> = of(ENTRY_IO_INTERRUPT).collect();
        assert_eq!(pins.len(), IOAPIC_PINS as usize);
        for (n, e) in pins.iter().enumerate() {
            // ISA line n reaches pin n of I/O APIC 2, vectored, bus-conforming.
            assert_eq!(
                e[1..8],
                [INT_VECTORED, 0, 0, ISA_BUS_ID, n as u8, 2, n as u8]
            );
        }
        let lints: Vec<_> = of(ENTRY_LOCAL_INTERRUPT).collect();
        assert_eq!(lints.len(), 2);
        assert_eq!((lints[0][1], lints[0][7]), (INT_EXTINT, 0));
        assert_eq!((lints[1][1], lints[1][7]), (INT_NMI, 1));
    }

    #[test]
    fn the_table_fits_in_the_reserved_area_for_the_most_cpus() {
        let bytes = build(MAX_CPUS as usize, layout::MPTABLE_START).unwrap();
        assert!(layout::MPTABLE_START + bytes.len() as u64 <= layout::HIMEM_START);
        let mem = memory::create(64 << 20).unwrap();
        write(&mem, MAX_CPUS as usize).unwrap();
        assert_eq!(parse(&mem).len(), MAX_CPUS as usize + 2 + 24 + 2);
    }

    #[test]
    fn impossible_cpu_counts_are_refused() {
        assert_eq!(build(0, 0), Err(MpTableError::CpuCount(0)));
        assert_eq!(build(255, 0), Err(MpTableError::CpuCount(255)));
    }
}
