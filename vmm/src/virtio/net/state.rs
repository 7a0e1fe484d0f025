//! Snapshot and restore of a [`VirtioNet`]: the device thread is stopped (its queues and link come back
//! with it), described, and either resumed or, in a new VMM, started again on the saved queues with the
//! new device's socket to a new passt.
//!
//! Frames in flight are not saved: a new passt could not continue the old stream in the middle of a frame
//! (nor would it know the old connections). A device with bytes buffered either way refuses the save as
//! busy; snapshots are taken before the guest's `eth0` is up, when nothing is in flight.

use vm_memory::GuestMemoryMmap;

use super::link::Link;
use super::{DEVICE_TYPE, QUEUE_SIZE, VirtioNet};
use crate::snapshot::state::{DeviceState, NetActive, NetState, QueueState};
use crate::virtio::{Interrupt, StateError, VirtioDevice};

impl VirtioNet {
    /// Stops the device thread (kept aside for [`VirtioNet::resume_after_save`]) and describes the device,
    /// unless frames are in flight.
    pub(super) fn save_state(&mut self) -> Result<DeviceState, StateError> {
        let was_running = self.worker.is_some();
        let engine = self.stop_worker().or_else(|| self.parked.take());
        if was_running && engine.is_none() {
            return Err(StateError::Busy {
                device: DEVICE_TYPE,
                reason: "the device thread stopped unexpectedly".into(),
            });
        }
        let busy = engine
            .as_ref()
            .map(|e| &e.link)
            .or(self.link.as_ref())
            .and_then(Link::busy);
        let active = engine.as_ref().map(|e| NetActive {
            queues: e
                .queues
                .iter()
                .map(|q| QueueState::from(q.state()))
                .collect(),
        });
        self.parked = engine;
        if let Some(reason) = busy {
            return Err(StateError::Busy {
                device: DEVICE_TYPE,
                reason,
            });
        }
        Ok(DeviceState::Net(NetState {
            acked: self.acked,
            active,
        }))
    }

    /// Restarts the device thread stopped by a save.
    pub(super) fn resume_after_save(&mut self) {
        if let Some(engine) = self.parked.take()
            && let Err(e) = self.start_worker(engine)
        {
            tracing::warn!("virtio-net: cannot restart the device thread after a snapshot: {e}");
        }
    }

    /// Takes the saved state of a network card, in a new VMM: a device that was running starts again on
    /// the saved queues, with the socket this device was built with.
    pub(super) fn restore_state(
        &mut self,
        saved: &DeviceState,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), StateError> {
        let DeviceState::Net(s) = saved else {
            return Err(StateError::Mismatch(
                "a virtio-net slot holds another device's state".into(),
            ));
        };
        if s.acked & !self.features() != 0 {
            return Err(StateError::Mismatch(format!(
                "virtio-net features {:#x} beyond the device's",
                s.acked
            )));
        }
        let queues = match &s.active {
            None => None,
            Some(a) if a.queues.len() != 2 => {
                return Err(StateError::Mismatch(format!(
                    "virtio-net with {} queues saved, this one has 2",
                    a.queues.len()
                )));
            }
            Some(a) => Some(
                a.queues
                    .iter()
                    .enumerate()
                    .map(|(index, q)| {
                        if q.max_size != QUEUE_SIZE {
                            return Err(StateError::Queue {
                                index,
                                reason: format!("maximum size {}, not {QUEUE_SIZE}", q.max_size),
                            });
                        }
                        q.to_queue().map_err(|e| StateError::Queue {
                            index,
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let link = self.take_link();
        self.link = Some(link.unwrap_or_else(Link::gone));
        self.acked = s.acked;
        if let Some(queues) = queues {
            self.start(mem, queues, interrupt)?;
        }
        Ok(())
    }
}
