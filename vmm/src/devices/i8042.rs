//! The i8042 keyboard controller at ports 0x60-0x64, reduced to what our guest uses: `reboot=k` makes the
//! kernel write the CPU-reset command (0xfe) to the command port 0x64, which ends the VM (the same
//! convention as Firecracker and QEMU's `-no-reboot`).

use std::cell::Cell;

use vm_superio::Trigger;
use vm_superio::i8042::I8042Device;

use crate::bus::{BusDevice, BusEvent};

/// First port of the controller.
pub const I8042_BASE: u64 = 0x60;
/// Ports covered: 0x60 (data) to 0x64 (command/status).
pub const I8042_LEN: u64 = 5;

/// Records the reset request until the bus write returns.
#[derive(Debug, Default)]
pub struct ResetFlag(Cell<bool>);

impl Trigger for ResetFlag {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(true);
        Ok(())
    }
}

/// The controller on the PIO bus.
pub struct I8042 {
    inner: I8042Device<ResetFlag>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042::new()
    }
}

impl I8042 {
    /// A controller with no reset pending.
    pub fn new() -> I8042 {
        I8042 {
            inner: I8042Device::new(ResetFlag::default()),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty (so the kernel's kb_wait() never spins).
        let v = u8::try_from(offset).map_or(0xff, |o| self.inner.read(o));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusEvent {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return BusEvent::Continue;
        };
        let _ = self.inner.write(offset, *value);
        if self.inner.reset_evt().0.replace(false) {
            BusEvent::Reset
        } else {
            BusEvent::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm_and_nothing_else_does() {
        let mut k = I8042::new();
        assert_eq!(k.write(0, &[0xfe]), BusEvent::Continue, "data port");
        assert_eq!(k.write(4, &[0xaa]), BusEvent::Continue, "other command");
        assert_eq!(k.write(4, &[0xfe, 0]), BusEvent::Continue, "wide write");
        assert_eq!(k.write(4, &[0xfe]), BusEvent::Reset);
        assert_eq!(
            k.write(4, &[0x00]),
            BusEvent::Continue,
            "the request is not sticky"
        );
        let mut st = [0xffu8; 1];
        k.read(4, &mut st);
        assert_eq!(st, [0], "status: buffers empty");
        let mut wide = [0xffu8; 4];
        k.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }
}
