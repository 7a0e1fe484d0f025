//! Emulated devices of the builtin VMM.
//!
//! - [`serial`]: the 8250 UART at 0x3f8 (IRQ 4), the kernel log only.
//! - [`i8042`]: the keyboard controller, only for its reset command, which ends the VM.

pub mod i8042;
pub mod serial;
