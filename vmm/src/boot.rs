//! Loading the guest: the kernel (an ELF `vmlinux`, preferably with its PVH entry note) through
//! `linux-loader`, the command line, the initramfs, and the boot information the kernel reads first
//! (PVH `hvm_start_info` with the module list and memory map, or the Linux zero page for the 64-bit entry).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{self, LayoutError};
use super::regs::BootMode;

/// Magic number of `hvm_start_info` (the Xen/PVH boot protocol).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image cannot be opened.
    #[error("cannot open the guest kernel {path:?}: {source}")]
    OpenKernel {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// linux-loader refused the kernel.
    #[error(
        "cannot load the guest kernel {path:?} (an uncompressed ELF vmlinux is needed, e.g. from kernel-config/build.sh): {source}"
    )]
    LoadKernel {
        /// The path.
        path: PathBuf,
        /// Why.
        source: linux_loader::loader::Error,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line {cmdline:?}: {reason}")]
    Cmdline {
        /// The command line.
        cmdline: String,
        /// Why.
        reason: String,
    },
    /// A boot structure does not fit the memory map.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A boot structure cannot be written to guest memory.
    #[error("cannot write the {what} at {addr:#x} into guest memory: {reason}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        reason: String,
    },
}

/// Where and how the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The boot protocol.
    pub mode: BootMode,
    /// First instruction.
    pub rip: u64,
    /// Address of `hvm_start_info` (PVH) or the zero page (64-bit).
    pub boot_info: u64,
}

/// The command line for `extra` options: fails when it is longer than the kernel accepts.
pub fn cmdline(extra: &str) -> Result<Cmdline, BootError> {
    let err = |reason: String| BootError::Cmdline {
        cmdline: extra.into(),
        reason,
    };
    let mut c = Cmdline::new(layout::CMDLINE_MAX).map_err(|e| err(e.to_string()))?;
    c.insert_str(extra.trim()).map_err(|e| err(e.to_string()))?;
    Ok(c)
}

/// The initramfs (an uncompressed cpio archive): in memory, or an open file that is read straight into guest
/// RAM (the VMM process then never holds a copy: its memory beyond guest RAM stays small).
#[derive(Debug)]
pub enum Initramfs {
    /// These bytes (possibly none: no initramfs).
    Bytes(Vec<u8>),
    /// This file, opened before the VMM confined itself.
    File(File),
}

impl From<Vec<u8>> for Initramfs {
    fn from(bytes: Vec<u8>) -> Initramfs {
        Initramfs::Bytes(bytes)
    }
}

impl Initramfs {
    /// Its size in bytes.
    pub fn len(&self) -> Result<u64, BootError> {
        match self {
            Initramfs::Bytes(b) => Ok(b.len() as u64),
            Initramfs::File(f) => f.metadata().map(|m| m.len()).map_err(|e| BootError::Write {
                what: "initramfs",
                addr: 0,
                reason: format!("cannot stat the initramfs file: {e}"),
            }),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len().is_ok_and(|n| n == 0)
    }

    fn write_to<M: GuestMemory>(&mut self, mem: &M, addr: u64, len: u64) -> Result<(), BootError> {
        match self {
            Initramfs::Bytes(b) => write_slice(mem, "initramfs", addr, b),
            Initramfs::File(f) => {
                use std::io::Seek;
                let err = |reason: String| BootError::Write {
                    what: "initramfs",
                    addr,
                    reason,
                };
                f.rewind().map_err(|e| err(e.to_string()))?;
                let len = usize::try_from(len).map_err(|e| err(e.to_string()))?;
                mem.read_exact_volatile_from(GuestAddress(addr), f, len)
                    .map_err(|e| err(e.to_string()))
            }
        }
    }
}

/// Loads the kernel, command line and initramfs into `mem` and writes the boot information; returns how
/// to enter the kernel. An ELF `vmlinux` with a PVH note is entered through it; an ELF without one, or a
/// `bzImage`, at its 64-bit entry with a zero page.
pub fn load<M: GuestMemory>(
    mem: &M,
    kernel: &Path,
    cmdline: &Cmdline,
    initrd: &mut Initramfs,
) -> Result<Entry, BootError> {
    let mut file = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: kernel.into(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let loaded = if is_elf {
        Elf::load(mem, None, &mut file, highmem)
    } else {
        BzImage::load(mem, None, &mut file, highmem)
    }
    .map_err(|source| BootError::LoadKernel {
        path: kernel.into(),
        source,
    })?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline).map_err(|e| {
        BootError::Write {
            what: "kernel command line",
            addr: layout::CMDLINE_START,
            reason: e.to_string(),
        }
    })?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let mem_size = mem_size(mem);
    // A bzImage decompresses in place and needs `init_size` bytes from its load address.
    let kernel_end = match loaded.setup_header {
        Some(hdr) => loaded
            .kernel_end
            .max(loaded.kernel_load.0 + u64::from(hdr.init_size)),
        None => loaded.kernel_end,
    };
    let initrd_len = initrd.len()?;
    let initrd = if initrd_len == 0 {
        None
    } else {
        let addr = layout::initrd_address(mem_size, kernel_end, initrd_len)?;
        initrd.write_to(mem, addr, initrd_len)?;
        Some((addr, initrd_len))
    };
    match (loaded.pvh_boot_cap, loaded.setup_header) {
        (PvhBootCapability::PvhEntryPresent(entry), _) => {
            write_start_info(mem, mem_size, initrd)?;
            Ok(Entry {
                mode: BootMode::Pvh,
                rip: entry.0,
                boot_info: layout::PVH_INFO_START,
            })
        }
        (_, hdr) => {
            write_zero_page(mem, mem_size, hdr, cmdline_len, initrd)?;
            // A bzImage's 64-bit entry (startup_64) is 0x200 past its protected-mode code.
            let offset = if hdr.is_some() { 0x200 } else { 0 };
            Ok(Entry {
                mode: BootMode::Long,
                rip: loaded.kernel_load.0 + offset,
                boot_info: layout::ZERO_PAGE_START,
            })
        }
    }
}

/// Total guest RAM (the sum of the regions).
fn mem_size<M: GuestMemory>(mem: &M) -> u64 {
    use vm_memory::GuestMemoryRegion;
    mem.iter().map(|r| r.len()).sum()
}

fn write_slice<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    addr: u64,
    data: &[u8],
) -> Result<(), BootError> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|e| BootError::Write {
            what,
            addr,
            reason: e.to_string(),
        })
}

fn write_obj<M: GuestMemory, T: vm_memory::ByteValued>(
    mem: &M,
    what: &'static str,
    addr: u64,
    value: T,
) -> Result<(), BootError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|e| BootError::Write {
            what,
            addr,
            reason: e.to_string(),
        })
}

/// Writes `hvm_start_info`, the module list (the initramfs) and the memory map for a PVH entry.
pub fn write_start_info<M: GuestMemory>(
    mem: &M,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map = layout::e820_map(mem_size)?;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        write_obj(mem, "PVH module list", layout::PVH_MODLIST_START, module)?;
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let addr =
            layout::PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write_obj(mem, "PVH memory map", addr, entry)?;
    }
    write_obj(mem, "PVH start info", layout::PVH_INFO_START, info)
}

/// Writes the Linux zero page (`boot_params`) for the 64-bit entry: the bzImage's setup header when there
/// is one, the command line, initramfs and e820 map.
pub fn write_zero_page<M: GuestMemory>(
    mem: &M,
    mem_size: u64,
    hdr: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map = layout::e820_map(mem_size)?;
    let mut params = boot_params::default();
    if let Some(hdr) = hdr {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff; // undefined loader
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x100_0000;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    write_obj(mem, "zero page", layout::ZERO_PAGE_START, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn pvh_start_info_reads_back() {
        let size = 64 << 20;
        let m = memory::create(size).unwrap();
        write_start_info(&m, size, Some((0x300_0000, 12345))).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, layout::CMDLINE_START);
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, layout::PVH_MODLIST_START)
        );
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 12345));
        assert_eq!(info.memmap_entries, 3);
        let last: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (
                layout::HIMEM_START,
                size - layout::HIMEM_START,
                layout::E820_RAM
            )
        );
    }

    #[test]
    fn pvh_without_initrd_has_no_modules() {
        let size = 32 << 20;
        let m = memory::create(size).unwrap();
        write_start_info(&m, size, None).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn zero_page_reads_back() {
        let size = 64 << 20;
        let m = memory::create(size).unwrap();
        write_zero_page(&m, size, None, 42, Some((0x200_0000, 777))).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x200_0000, 777)
        );
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }),
            (layout::HIMEM_START, size - layout::HIMEM_START)
        );
    }

    #[test]
    fn command_line_is_written_and_bounded() {
        let m = memory::create(32 << 20).unwrap();
        let c = cmdline("console=ttyS0 reboot=k").unwrap();
        load_cmdline(&m, GuestAddress(layout::CMDLINE_START), &c).unwrap();
        let mut buf = [0u8; 23];
        m.read_slice(&mut buf, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 reboot=k\0");
        assert!(matches!(
            cmdline(&"x".repeat(4096)),
            Err(BootError::Cmdline { .. })
        ));
    }

    #[test]
    fn a_missing_or_bad_kernel_is_an_error() {
        let m = memory::create(32 << 20).unwrap();
        let c = cmdline("quiet").unwrap();
        assert!(matches!(
            load(
                &m,
                Path::new("/no/such/vmlinux"),
                &c,
                &mut Vec::new().into()
            ),
            Err(BootError::OpenKernel { .. })
        ));
        let not_elf = std::env::temp_dir().join(format!("vmm-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"MZ this is not an ELF kernel").unwrap();
        let r = load(&m, &not_elf, &c, &mut Vec::new().into());
        std::fs::remove_file(&not_elf).unwrap();
        assert!(matches!(r, Err(BootError::LoadKernel { .. })), "{r:?}");
    }

    /// A synthetic bzImage: one setup sector after the boot sector, the header at 0x1f1, then a payload.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        use vm_memory::ByteValued;
        let hdr = setup_header {
            setup_sects: 1,
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x10_0000,
            init_size: 0x40_0000,
            ..Default::default()
        };
        let mut image = vec![0u8; 1024];
        let bytes = hdr.as_slice();
        image[0x1f1..0x1f1 + bytes.len()].copy_from_slice(bytes);
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn a_bzimage_is_entered_in_long_mode_with_its_header() {
        let size = 64 << 20;
        let m = memory::create(size).unwrap();
        let path = std::env::temp_dir().join(format!("vmm-bzimage-{}", std::process::id()));
        std::fs::write(&path, fake_bzimage(&[0xab; 4096])).unwrap();
        let c = cmdline("console=ttyS0").unwrap();
        let entry = load(&m, &path, &c, &mut vec![1, 2, 3].into());
        std::fs::remove_file(&path).unwrap();
        let entry = entry.unwrap();
        assert_eq!(
            entry,
            Entry {
                mode: BootMode::Long,
                rip: 0x10_0200,
                boot_info: layout::ZERO_PAGE_START
            }
        );
        let mut payload = [0u8; 4096];
        m.read_slice(&mut payload, GuestAddress(0x10_0000)).unwrap();
        assert!(payload.iter().all(|b| *b == 0xab));
        let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!(({ p.hdr.header }, { p.hdr.version }), (0x5372_6448, 0x020f));
        assert_eq!({ p.hdr.code32_start }, 0x10_0000);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        let (initrd, len) = ({ p.hdr.ramdisk_image } as u64, { p.hdr.ramdisk_size });
        assert_eq!(len, 3);
        assert!(
            initrd >= 0x10_0000 + 0x40_0000,
            "above the decompression area"
        );
        let mut back = [0u8; 3];
        m.read_slice(&mut back, GuestAddress(initrd)).unwrap();
        assert_eq!(back, [1, 2, 3]);
        assert_eq!(p.e820_entries, 3);
    }

    #[test]
    fn an_initramfs_file_is_read_straight_into_guest_ram() {
        let m = memory::create(64 << 20).unwrap();
        let dir = std::env::temp_dir();
        let kernel = dir.join(format!("vmm-bzimage-file-{}", std::process::id()));
        let archive = dir.join(format!("vmm-initramfs-file-{}", std::process::id()));
        std::fs::write(&kernel, fake_bzimage(&[0xab; 4096])).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&archive, &data).unwrap();
        let mut file = Initramfs::File(File::open(&archive).unwrap());
        assert_eq!(file.len().unwrap(), data.len() as u64);
        let c = cmdline("console=ttyS0").unwrap();
        let entry = load(&m, &kernel, &c, &mut file);
        std::fs::remove_file(&kernel).unwrap();
        std::fs::remove_file(&archive).unwrap();
        entry.unwrap();
        let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.ramdisk_size } as usize, data.len());
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, GuestAddress(u64::from(p.hdr.ramdisk_image)))
            .unwrap();
        assert!(
            back == data,
            "the initramfs in guest RAM differs from the file"
        );
    }
}
