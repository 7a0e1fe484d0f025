//! The guest's physical memory map: where the boot structures, the kernel, the command line and the
//! initramfs go, which ranges are RAM (the e820 map the guest is given), and the hole below 4 GiB that is
//! kept for device MMIO.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)          0x0000_9000  PML4   (64-bit boot only)
//! 0x0000_0520  IDT (empty)              0x0000_a000  PDPT   (64-bit boot only)
//! 0x0000_6000  PVH hvm_start_info       0x0000_b000  PD     (64-bit boot only, 1 GiB identity map)
//! 0x0000_6040  PVH module list          0x0002_0000  kernel command line
//! 0x0000_7000  e820 / PVH memory map    0x0010_0000  kernel (ELF segments, from 1 MiB)
//! 0x0000_8ff0  boot stack (64-bit)      ...          initramfs at the top of low RAM
//! 0x0009_fc00  MP table (reserved)      0xc000_0000  MMIO hole (1 GiB) up to 4 GiB, RAM continues above
//!                                       0xd000_0000  virtio-mmio devices, 4 KiB each
//!                                       0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! ```

use vm_memory::GuestAddress;

/// The boot GDT.
pub const GDT_START: u64 = 0x500;
/// The (empty) boot IDT.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, whose address the kernel gets in EBX.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`) for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_START: u64 = 0xa000;
/// Page directory of the boot identity map (512 × 2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line the x86 kernel accepts (`COMMAND_LINE_SIZE`), with its NUL.
pub const CMDLINE_MAX: usize = 2048;
/// End of the RAM below the EBDA/VGA/BIOS area.
pub const BASE_RAM_END: u64 = 0x9fc00;
/// The MP table ([`super::mptable`]): the last KiB of base memory, one of the places Linux scans; the
/// e820 map reserves it up to 1 MiB.
pub const MPTABLE_START: u64 = BASE_RAM_END;
/// Where the kernel is loaded from (high memory starts at 1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB left for device MMIO (no RAM there).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The first virtio-mmio device's registers (one 4 KiB window per device, in the MMIO hole).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The size of each virtio-mmio device's window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IRQs of the virtio-mmio devices, in slot order: I/O APIC pins (the MP table routes ISA line `n` to
/// pin `n`). 0 (PIT), 1 (i8042), 2 (cascade), 3 and 4 (serial) and 8 (RTC) are left to their ISA owners;
/// pins 16-23 exist only on the I/O APIC.
pub const VIRTIO_IRQS: [u32; 18] = [
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

/// Smallest guest RAM the layout accepts (the kernel, initramfs and boot structures must fit).
pub const MIN_MEMORY: u64 = 16 << 20;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Errors of the memory map.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The RAM size is below [`MIN_MEMORY`] or not page-aligned.
    #[error(
        "guest memory of {0} bytes is too small or not a multiple of 4 KiB (minimum {MIN_MEMORY})"
    )]
    BadSize(u64),
    /// The initramfs does not fit between the end of the kernel and the top of low RAM.
    #[error(
        "the initramfs ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {top:#x}: give the guest more memory"
    )]
    InitrdTooBig {
        /// Initramfs size.
        size: u64,
        /// First byte after the kernel.
        kernel_end: u64,
        /// Top of low RAM.
        top: u64,
    },
}

/// The RAM regions (guest address, size) for `size` bytes of guest RAM: everything below the MMIO hole,
/// the rest from 4 GiB on.
pub fn ram_regions(size: u64) -> Result<Vec<(GuestAddress, usize)>, LayoutError> {
    if size < MIN_MEMORY || !size.is_multiple_of(4096) {
        return Err(LayoutError::BadSize(size));
    }
    let low = size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > low {
        regions.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    Ok(regions)
}

/// One entry of the memory map given to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map for `size` bytes of RAM: base RAM below 640 KiB (minus the EBDA), the MP table and BIOS
/// area reserved, RAM from 1 MiB to the MMIO hole, and RAM above 4 GiB when there is more.
pub fn e820_map(size: u64) -> Result<Vec<E820Entry>, LayoutError> {
    let regions = ram_regions(size)?;
    let ram = |addr, size| E820Entry {
        addr,
        size,
        kind: E820_RAM,
    };
    let low_end = regions[0].1 as u64;
    let mut map = vec![
        ram(0, BASE_RAM_END),
        E820Entry {
            addr: MPTABLE_START,
            size: HIMEM_START - MPTABLE_START,
            kind: E820_RESERVED,
        },
        ram(HIMEM_START, low_end - HIMEM_START),
    ];
    if let Some(&(start, len)) = regions.get(1) {
        map.push(ram(start.0, len as u64));
    }
    Ok(map)
}

/// Where the initramfs goes: page-aligned at the top of low RAM, above the kernel.
pub fn initrd_address(
    mem_size: u64,
    kernel_end: u64,
    initrd_size: u64,
) -> Result<u64, LayoutError> {
    let top = mem_size.min(MMIO_GAP_START);
    let err = LayoutError::InitrdTooBig {
        size: initrd_size,
        kernel_end,
        top,
    };
    let start = top.checked_sub(initrd_size).ok_or(err.clone())? & !0xfff;
    if start < kernel_end {
        return Err(err);
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_and_two_ram_entries() {
        let size = 256 << 20;
        assert_eq!(
            ram_regions(size).unwrap(),
            vec![(GuestAddress(0), size as usize)]
        );
        let map = e820_map(size).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: BASE_RAM_END,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: MPTABLE_START,
                    size: HIMEM_START - MPTABLE_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: size - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let size = 4u64 << 30;
        let regions = ram_regions(size).unwrap();
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(
            regions[1],
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize)
        );
        let map = e820_map(size).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(map[3].addr, MMIO_GAP_END);
        let total: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert!(total <= size);
        for e in &map {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert_eq!(ram_regions(1 << 20), Err(LayoutError::BadSize(1 << 20)));
        assert!(ram_regions((64 << 20) + 1).is_err());
    }

    #[test]
    fn boot_structures_do_not_overlap_and_stay_in_base_ram() {
        let mut spans = [
            (GDT_START, 4 * 8),
            (IDT_START, 8),
            (PVH_INFO_START, 0x38),
            (PVH_MODLIST_START, 0x20),
            (PVH_MEMMAP_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPT_START, 0x1000),
            (PD_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX as u64),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:#x?} overlaps {:#x?}",
                w[0],
                w[1]
            );
        }
        let last = spans[spans.len() - 1];
        assert!(last.0 + last.1 <= BASE_RAM_END);
        const { assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > PVH_MEMMAP_START) };
    }

    #[test]
    fn virtio_windows_are_in_the_hole_below_the_ioapic() {
        let last = VIRTIO_MMIO_BASE + VIRTIO_IRQS.len() as u64 * VIRTIO_MMIO_SIZE;
        const { assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START) };
        assert!(last <= 0xfec0_0000);
        for irq in VIRTIO_IRQS {
            assert!(
                irq < super::super::mptable::IOAPIC_PINS as u32
                    && ![0, 1, 2, 3, 4, 8].contains(&irq),
                "{irq}"
            );
        }
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mem = 128 << 20;
        let a = initrd_address(mem, 20 << 20, 3 << 20).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + (3 << 20) <= mem);
        assert!(a >= 20 << 20);
        assert!(initrd_address(mem, 100 << 20, 40 << 20).is_err());
        assert!(initrd_address(mem, 0, mem + 1).is_err());
        // Above the hole, the initramfs still stays below it.
        let a = initrd_address(8 << 30, 20 << 20, 1 << 20).unwrap();
        assert!(a + (1 << 20) <= MMIO_GAP_START);
    }
}
