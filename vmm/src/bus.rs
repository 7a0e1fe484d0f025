//! A bus that routes the guest's port I/O or MMIO accesses to devices by address range, so the vCPU loop
//! knows no device addresses. One [`Bus`] for PIO, one for MMIO.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a device asks of the VM after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// Keep running.
    Continue,
    /// The guest asked for a reset (e.g. the i8042 reset command): the VM ends.
    Reset,
}

/// A device on a bus. `offset` is relative to the base address the device was inserted at.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusEvent;
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus registration and dispatch.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices would overlap.
    #[error("device range {base:#x}+{len:#x} overlaps another device or is empty")]
    Overlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// No device at this address (the access is ignored by the vCPU loop, like an unconnected bus).
    #[error("no device at {addr:#x} ({len} bytes)")]
    NoDevice {
        /// The address.
        addr: u64,
        /// Access size.
        len: usize,
    },
    /// The access starts inside a device and ends beyond it.
    #[error("access at {addr:#x} ({len} bytes) crosses the end of its device")]
    Straddle {
        /// The address.
        addr: u64,
        /// Access size.
        len: usize,
    },
    /// A device's lock was poisoned by an earlier panic.
    #[error("the device at {base:#x} is unusable (an earlier access panicked)")]
    Poisoned {
        /// Its base address.
        base: u64,
    },
}

struct Range {
    len: u64,
    device: SharedDevice,
}

/// Devices by address range.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|(b, r)| (*b, r.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let overlap = BusError::Overlap { base, len };
        let end = base.checked_add(len).ok_or(overlap.clone())?;
        if len == 0 {
            return Err(overlap);
        }
        if let Some((b, r)) = self.ranges.range(..end).next_back()
            && b + r.len > base
        {
            return Err(overlap);
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    /// The device, its base and the access offset for an access of `len` bytes at `addr`.
    fn find(&self, addr: u64, len: usize) -> Result<(u64, u64, &SharedDevice), BusError> {
        let (base, r) = self
            .ranges
            .range(..=addr)
            .next_back()
            .filter(|(b, r)| addr - **b < r.len)
            .ok_or(BusError::NoDevice { addr, len })?;
        let offset = addr - base;
        if offset + len as u64 > r.len {
            return Err(BusError::Straddle { addr, len });
        }
        Ok((*base, offset, &r.device))
    }

    /// Dispatches a read.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (base, offset, dev) = self.find(addr, data.len())?;
        dev.lock()
            .map_err(|_| BusError::Poisoned { base })?
            .read(offset, data);
        Ok(())
    }

    /// Dispatches a write.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<BusEvent, BusError> {
        let (base, offset, dev) = self.find(addr, data.len())?;
        Ok(dev
            .lock()
            .map_err(|_| BusError::Poisoned { base })?
            .write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access; reads return the offset; writing 0xfe asks for a reset.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> BusEvent {
            self.last = Some((offset, data.to_vec()));
            if data == [0xfe] {
                BusEvent::Reset
            } else {
                BusEvent::Continue
            }
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = Bus::new();
        let a = probe();
        let b = probe();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 5, b.clone()).unwrap();
        let mut buf = [0u8; 1];
        bus.read(0x3fd, &mut buf).unwrap();
        assert_eq!(buf, [5]);
        assert_eq!(bus.write(0x3f8, b"x").unwrap(), BusEvent::Continue);
        assert_eq!(a.lock().unwrap().last, Some((0, vec![b'x'])));
        assert_eq!(bus.write(0x64, &[0xfe]).unwrap(), BusEvent::Reset);
        assert_eq!(b.lock().unwrap().last, Some((4, vec![0xfe])));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, probe()).unwrap();
        for (base, len) in [
            (0x100, 1),
            (0xf8, 0x9),
            (0x10f, 4),
            (0x80, 0x100),
            (0x200, 0),
        ] {
            assert_eq!(
                bus.insert(base, len, probe()),
                Err(BusError::Overlap { base, len }),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(bus.insert(u64::MAX, 2, probe()).is_err());
        bus.insert(0xf0, 0x10, probe()).unwrap();
        bus.insert(0x110, 0x10, probe()).unwrap();
    }

    #[test]
    fn garbage_accesses_are_errors_not_panics() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, probe()).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            bus.read(0xfff, &mut buf),
            Err(BusError::NoDevice {
                addr: 0xfff,
                len: 4
            })
        );
        assert_eq!(
            bus.write(0x1100, &[1]),
            Err(BusError::NoDevice {
                addr: 0x1100,
                len: 1
            })
        );
        assert_eq!(
            bus.write(0x10fe, &[1, 2, 3, 4]),
            Err(BusError::Straddle {
                addr: 0x10fe,
                len: 4
            })
        );
        assert_eq!(
            bus.read(u64::MAX, &mut buf),
            Err(BusError::NoDevice {
                addr: u64::MAX,
                len: 4
            })
        );
        assert!(Bus::new().write(0, &[]).is_err());
    }

    #[test]
    fn a_poisoned_device_is_an_error() {
        let mut bus = Bus::new();
        let p = probe();
        bus.insert(0x10, 1, p.clone()).unwrap();
        let _ = std::thread::spawn(move || {
            let _g = p.lock().unwrap();
            panic!("device bug");
        })
        .join();
        assert_eq!(
            bus.write(0x10, &[0]),
            Err(BusError::Poisoned { base: 0x10 })
        );
    }
}
