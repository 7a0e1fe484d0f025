//! Test helpers: the driver's side of a split virtqueue, laid out by hand in guest memory, so devices and
//! the transport are tested without a guest kernel or KVM.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;

/// Guest RAM of `size` bytes from address 0.
pub fn memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// An interrupt line whose eventfd the test can read.
pub fn interrupt() -> (Interrupt, Arc<EventFd>) {
    let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    (Interrupt::new(Arc::new(AtomicU32::new(0)), fd.clone()), fd)
}

/// One buffer of a chain: guest address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// The driver's view of one split queue in guest memory: descriptor table at `base`, available ring
/// after it, used ring after that (all within 0x2000 bytes for 256 entries).
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// A queue of `size` entries at `base` with empty rings.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> DriverQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let zero = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zero, GuestAddress(base)).unwrap();
        DriverQueue {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A device-side queue configured like this one, ready.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` as it is.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Offers the chain starting at descriptor `head` (written beforehand) to the device.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Writes `bufs` as a chain in fresh descriptors and offers it; returns its head.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if b.write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(index, b.addr, b.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// The used entries (head, length) the device added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}
