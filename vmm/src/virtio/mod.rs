//! Virtio devices of the builtin VMM: the virtio-mmio transport ([`mmio`]) and the devices behind it
//! (console ports, virtio-fs, virtio-net to passt). A device implements [`VirtioDevice`]; the transport
//! owns the register file, the feature negotiation and the queues' configuration, and hands the ready
//! queues to the device when the driver sets DRIVER_OK ([`VirtioDevice::activate`]).
//!
//! Threads: register accesses, and so [`VirtioDevice::queue_notify`], run on the vCPU thread (an MMIO exit).
//! A device that also waits on host descriptors (console input, network frames) runs its own thread from
//! `activate`. Every device treats guest memory and the rings as hostile: a malformed chain is skipped (and
//! counted), never a panic, a hang or an out-of-range access.

pub mod chain;
pub mod console;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::state::DeviceState;

/// `VIRTIO_F_VERSION_1`: every device of ours is a modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a queue has new used buffers.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device's line to the guest: the transport's interrupt status register and the irqfd of its IRQ.
#[derive(Clone, Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt line that sets bits in `status` and raises `irqfd`.
    pub fn new(status: Arc<AtomicU32>, irqfd: Arc<EventFd>) -> Interrupt {
        Interrupt { status, irqfd }
    }

    /// Tells the guest that a queue has used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the guest that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        // A full eventfd counter (impossible in practice) already means "interrupt pending".
        let _ = self.irqfd.write(1);
    }

    /// The status bits (the transport's InterruptStatus register).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured fewer or other queues than the device needs.
    #[error("the driver set up {got} queues, the device needs {want}")]
    Queues {
        /// What the driver made ready.
        got: usize,
        /// What the device needs.
        want: usize,
    },
    /// A thread or descriptor the device needs could not be created.
    #[error("device start: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a device's state could not be saved or restored (snapshots).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// This device has no snapshot support.
    #[error("virtio device type {0} cannot be saved in a snapshot")]
    Unsupported(u32),
    /// The device cannot be saved in its present state.
    #[error("virtio device type {device} cannot be saved now: {reason}")]
    Busy {
        /// The device type.
        device: u32,
        /// Why.
        reason: String,
    },
    /// The saved state does not fit this device (another device, other ports or queues).
    #[error("the saved device state does not fit: {0}")]
    Mismatch(String),
    /// A saved queue is not valid.
    #[error("saved virtqueue {index} is invalid: {reason}")]
    Queue {
        /// The queue.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A thread or descriptor the device needs could not be created.
    #[error("device restart: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 net, 3 console, 26 fs).
    fn device_type(&self) -> u32;
    /// What the guest knows of the device, for matching a snapshot to a VM (e.g. console port names).
    fn describe(&self) -> String {
        format!("virtio device type {}", self.device_type())
    }
    /// The maximum size of each queue, one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// The device's feature bits (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space at `offset`; bytes beyond it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (ignored by devices whose configuration is read-only).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: the device takes its queues (in queue order) and may start working.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<virtio_queue::Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (a write to QueueNotify), on the vCPU thread.
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: stop working and drop the queues (a later activate starts afresh).
    fn reset(&mut self) {}
    /// Snapshot, with the vCPU paused: stop working (a device thread parks) and describe the device, its
    /// queues' progress included. [`VirtioDevice::resume`] follows.
    fn save(&mut self) -> Result<DeviceState, StateError> {
        Err(StateError::Unsupported(self.device_type()))
    }
    /// After [`VirtioDevice::save`]: carry on as before.
    fn resume(&mut self) {}
    /// In a new VMM, instead of a driver's setup: take the saved state; a device that was running starts
    /// again on its saved queues in `mem`.
    fn restore(
        &mut self,
        _state: &DeviceState,
        _mem: GuestMemoryMmap,
        _interrupt: Interrupt,
    ) -> Result<(), StateError> {
        Err(StateError::Unsupported(self.device_type()))
    }
}
