//! Checked access to descriptor chains: a chain is used only if every descriptor goes the expected way,
//! the total length is within a bound and every buffer lies in guest memory. Anything else is
//! [`Malformed`]: the device returns it to the guest unused and counts it.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};

/// A chain the device must skip.
pub struct Malformed;

/// The descriptors of a chain if they all go in the direction `writable` and hold 1 to `max` bytes,
/// each inside guest memory; with their total length.
pub fn checked_chain(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    writable: bool,
    max: usize,
) -> Result<(Vec<Descriptor>, usize), Malformed> {
    let mut descs = Vec::new();
    let mut total = 0usize;
    for d in chain {
        let len = d.len() as usize;
        total = total.checked_add(len).ok_or(Malformed)?;
        if d.is_write_only() != writable || total > max || !mem.check_range(d.addr(), len) {
            return Err(Malformed);
        }
        descs.push(d);
    }
    if total == 0 {
        return Err(Malformed);
    }
    Ok((descs, total))
}

/// The bytes of a device-readable chain.
pub fn read_chain(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    total: usize,
) -> Result<Vec<u8>, Malformed> {
    let mut data = vec![0u8; total];
    let mut at = 0;
    for d in descs {
        let len = d.len() as usize;
        mem.read_slice(&mut data[at..at + len], d.addr())
            .map_err(|_| Malformed)?;
        at += len;
    }
    Ok(data)
}

/// Writes `data` across device-writable descriptors (which hold at least `data.len()` bytes).
pub fn write_chain(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    data: &[u8],
) -> Result<(), Malformed> {
    let mut at = 0;
    for d in descs {
        let n = (d.len() as usize).min(data.len() - at);
        mem.write_slice(&data[at..at + n], d.addr())
            .map_err(|_| Malformed)?;
        at += n;
    }
    Ok(())
}
