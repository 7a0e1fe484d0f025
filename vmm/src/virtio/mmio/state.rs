//! Snapshot and restore of a virtio-mmio slot: the transport's registers and queue configuration, and its
//! device's own state ([`VirtioDevice::save`](super::VirtioDevice::save)).

use std::sync::atomic::Ordering;

use virtio_queue::QueueT;

use super::MmioTransport;
use crate::snapshot::state::{QueueState, TransportState};
use crate::virtio::StateError;

impl MmioTransport {
    /// The slot's state, with the vCPU paused; the device stops working until [`MmioTransport::resume`].
    pub fn save(&mut self) -> Result<TransportState, StateError> {
        let device = self.device.save()?;
        Ok(TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            features_sel: [self.device_features_sel, self.driver_features_sel],
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::Acquire),
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|q| QueueState::from(q.state()))
                .collect(),
            device,
        })
    }

    /// After [`MmioTransport::save`]: the device carries on.
    pub fn resume(&mut self) {
        self.device.resume();
    }

    /// A new transport for the same device takes the saved state (in a new VMM, before the vCPU runs).
    pub fn restore(&mut self, s: &TransportState) -> Result<(), StateError> {
        let device_type = self.device.device_type();
        if s.device_type != device_type || s.queues.len() != self.queues.len() {
            return Err(StateError::Mismatch(format!(
                "device type {} with {} queues saved, the slot holds type {device_type} with {}",
                s.device_type,
                s.queues.len(),
                self.queues.len()
            )));
        }
        let queues = s
            .queues
            .iter()
            .zip(&self.queues)
            .enumerate()
            .map(|(index, (saved, mine))| {
                if saved.max_size != mine.max_size() {
                    return Err(StateError::Queue {
                        index,
                        reason: format!(
                            "maximum size {}, the device's is {}",
                            saved.max_size,
                            mine.max_size()
                        ),
                    });
                }
                saved.to_queue().map_err(|e| StateError::Queue {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.device
            .restore(&s.device, self.mem.clone(), self.interrupt.clone())?;
        self.queues = queues;
        self.status = s.status;
        self.driver_features = s.driver_features;
        [self.device_features_sel, self.driver_features_sel] = s.features_sel;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        self.interrupt_status
            .store(s.interrupt_status, Ordering::Release);
        self.activated = s.activated;
        Ok(())
    }
}
