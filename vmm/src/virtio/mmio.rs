//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): a 4 KiB register window per device on the
//! MMIO bus. It owns the feature negotiation, the status state machine and the queues' configuration, and
//! hands the ready queues to its [`VirtioDevice`] when the driver sets DRIVER_OK.
//!
//! Every register access comes from the guest and is treated as hostile: accesses that are not 4 bytes
//! and aligned (outside the configuration space), writes to read-only registers, reads of write-only ones,
//! out-of-range queue selectors and writes in the wrong state are ignored (reads give 0). Queue addresses
//! are checked against guest memory when the device starts; a device that cannot start is marked
//! DEVICE_NEEDS_RESET.
//!
//! Where the devices live: slot `i` is at [`layout::VIRTIO_MMIO_BASE`]` + i * 4 KiB` with IRQ
//! [`layout::VIRTIO_IRQS`]`[i]`; the guest kernel finds it through [`cmdline_fragment`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::bus::{BusDevice, BusEvent};
use crate::layout;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID (none registered: 0, as Firecracker).
pub const VENDOR_ID: u32 = 0;
/// Where the device-specific configuration space starts in the window.
pub const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may start.
    pub const DRIVER_OK: u32 = 4;
    /// The driver accepted the features and the device agreed.
    pub const FEATURES_OK: u32 = 8;
    /// The device failed and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Register offsets (virtio 1.2 §4.2.2, table "MMIO Device Register Layout").
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// The guest address and IRQ of virtio-mmio slot `index`, if there is such a slot.
pub fn slot(index: usize) -> Option<(u64, u32)> {
    let irq = *layout::VIRTIO_IRQS.get(index)?;
    Some((
        layout::VIRTIO_MMIO_BASE + index as u64 * layout::VIRTIO_MMIO_SIZE,
        irq,
    ))
}

/// The kernel command line option that declares a virtio-mmio device at `addr` with `irq`
/// (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), e.g. `virtio_mmio.device=4K@0xd0000000:5`.
pub fn cmdline_fragment(addr: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{addr:#x}:{irq}",
        layout::VIRTIO_MMIO_SIZE / 1024
    )
}

/// Errors of building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device declares a queue size virtio-queue refuses (0, above 32768 or not a power of two).
    #[error("virtio device type {device}: queue {index} has an invalid maximum size {size}")]
    QueueSize {
        /// The device type.
        device: u32,
        /// The queue.
        index: usize,
        /// The size it declared.
        size: u16,
    },
    /// The interrupt eventfd could not be duplicated.
    #[error("virtio-mmio interrupt eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    /// The queues as the driver configures them; clones go to the device on activation.
    queues: Vec<Queue>,
    interrupt: Interrupt,
    interrupt_status: Arc<AtomicU32>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device` that raises `irqfd` (registered with KVM for the slot's IRQ).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<MmioTransport, MmioError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::QueueSize {
                    device: device.device_type(),
                    index,
                    size,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let interrupt = Interrupt::new(interrupt_status.clone(), Arc::new(irqfd));
        Ok(MmioTransport {
            device,
            mem,
            queues,
            interrupt,
            interrupt_status,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The device status register (the driver's progress).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was handed its queues.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may still configure it (not ready, device not started).
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        if self.activated || self.status & status::FEATURES_OK == 0 {
            return None;
        }
        self.selected_queue().filter(|q| !q.ready())
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions, whatever SHMSel says: a length of all ones means "no such
            // region".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                // Features are fixed once FEATURES_OK is set.
                if self.status & status::FEATURES_OK != 0 || self.status & status::DRIVER == 0 {
                    return;
                }
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features &= !(0xffff_ffff_u64 << shift);
                self.driver_features |= u64::from(value) << shift;
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    // virtio-queue keeps the old size for 0, above the maximum or not a power of two.
                    if let Ok(size) = u16::try_from(value) {
                        q.set_size(size);
                    }
                }
            }
            reg::QUEUE_READY => {
                if self.activated || self.status & status::FEATURES_OK == 0 {
                    return;
                }
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW => {
                self.set_queue_address(|q, v| q.set_desc_table_address(Some(v), None), value)
            }
            reg::QUEUE_DESC_HIGH => {
                self.set_queue_address(|q, v| q.set_desc_table_address(None, Some(v)), value)
            }
            reg::QUEUE_DRIVER_LOW => {
                self.set_queue_address(|q, v| q.set_avail_ring_address(Some(v), None), value)
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.set_queue_address(|q, v| q.set_avail_ring_address(None, Some(v)), value)
            }
            reg::QUEUE_DEVICE_LOW => {
                self.set_queue_address(|q, v| q.set_used_ring_address(Some(v), None), value)
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.set_queue_address(|q, v| q.set_used_ring_address(None, Some(v)), value)
            }
            reg::QUEUE_NOTIFY if self.activated && (value as usize) < self.queues.len() => {
                self.device.queue_notify(value as u16);
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::AcqRel);
            }
            reg::STATUS => self.write_status(value),
            _ => {}
        }
    }

    fn set_queue_address(&mut self, set: impl FnOnce(&mut Queue, u32), value: u32) {
        if let Some(q) = self.configurable_queue() {
            set(q, value);
        }
    }

    /// The status state machine: 0 resets; otherwise bits are only added, FEATURES_OK is kept only if the
    /// driver's features are acceptable, and DRIVER_OK after FEATURES_OK starts the device.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // A driver may not clear bits (other than by a reset): ignore such writes.
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        let mut value = value;
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0
                && self.status & status::DRIVER != 0;
            if acceptable {
                self.device.ack_features(self.driver_features);
            } else {
                // The driver reads the status back, sees FEATURES_OK missing and gives up.
                value &= !status::FEATURES_OK;
            }
        }
        self.status = value;
        let ready = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        if new & status::DRIVER_OK != 0
            && value & ready == ready
            && value & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
            && !self.activated
        {
            self.activate();
        }
    }

    /// Hands the ready queues (a prefix of the device's queues, each within guest memory) to the device.
    fn activate(&mut self) {
        let count = self.queues.iter().take_while(|q| q.ready()).count();
        let usable = self.queues[count..].iter().all(|q| !q.ready())
            && self.queues[..count].iter().all(|q| q.is_valid(&self.mem));
        let result = if usable {
            // A copy of each queue's configuration (virtio-queue revalidates it).
            self.queues[..count]
                .iter()
                .map(|q| Queue::try_from(q.state()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("queue configuration: {e}"))
                .and_then(|queues| {
                    self.device
                        .activate(self.mem.clone(), queues, self.interrupt.clone())
                        .map_err(|e| e.to_string())
                })
        } else {
            Err("a queue is out of guest memory, or the ready queues are not the first ones".into())
        };
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!(
                    device = self.device.device_type(),
                    "virtio device failed to start: {e}"
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                self.config_generation = self.config_generation.wrapping_add(1);
                self.interrupt.signal_config_change();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::Release);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            data.fill(0);
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusEvent {
        if offset >= CONFIG_SPACE {
            // Configuration writes are only meaningful once the driver knows the device.
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
        BusEvent::Continue
    }
}

mod state;
#[cfg(test)]
mod tests;
