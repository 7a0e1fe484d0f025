//! Guest RAM: anonymous host mappings ([`GuestMemoryMmap`]) laid out by [`layout::ram_regions`], and their
//! registration with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemory, GuestMemoryRegion};

use super::layout::{self, LayoutError};

/// Guest RAM as the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors of guest RAM setup.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size does not give a valid layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// mmap of the guest RAM failed.
    #[error("cannot map {size} bytes of guest RAM: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot} at {guest:#x} ({size} bytes) failed: {source}")]
    Register {
        /// The slot.
        slot: u32,
        /// Guest address.
        guest: u64,
        /// Size.
        size: u64,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

/// Maps `size` bytes of guest RAM (private, anonymous, zero-filled).
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = layout::ram_regions(size)?;
    let mem = GuestMemoryMmap::from_ranges(&regions)
        .map_err(|source| MemoryError::Map { size, source })?;
    // Transparent huge pages where the host offers them on request (`madvise` mode, Debian's default), as
    // QEMU does for guest RAM: fewer host page faults and TLB misses with hardware KVM. (Under PVM it made no
    // measurable difference to the boot.) Only advice: a host without THP ignores it.
    for region in mem.iter() {
        // SAFETY: the range is exactly a mapping this function just created and owns; MADV_HUGEPAGE
        // changes no contents.
        unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    Ok(mem)
}

/// Gives every region of `mem` to the VM as a memory slot (slot = region index).
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let guest = region.start_addr().0;
        let size = region.len();
        let host = region.as_ptr() as u64;
        let entry = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the host range [host, host + size) is a mapping owned by `mem`, which the caller keeps
        // alive for as long as the VM runs (the `Vm` owns both and drops the VM's vCPUs first); slots do
        // not overlap because the regions of a GuestMemoryMmap do not.
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| MemoryError::Register {
            slot,
            guest,
            size,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn memory_follows_the_layout() {
        let mem = create(32 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((32 << 20) - 1));
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(matches!(create(4096), Err(MemoryError::Layout(_))));
    }
}
