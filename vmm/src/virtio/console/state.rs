//! Snapshot and restore of a [`VirtioConsole`]: the device thread is stopped (its queues and ports come
//! back with it), described, and either resumed or, in a new VMM, rebuilt around fresh host sockets. What
//! the guest knows survives: which ports it opened, the queues' progress, guest bytes the host had not
//! taken yet, and control messages the guest had not taken yet.

use std::collections::VecDeque;

use vm_memory::GuestMemoryMmap;

use super::{Engine, F_MULTIPORT, PortState, QUEUE_SIZE, VirtioConsole};
use crate::snapshot::state::{self, ConsoleActive, ConsoleState, DeviceState, QueueState};
use crate::virtio::{Interrupt, StateError, VirtioDevice};

impl VirtioConsole {
    /// Stops the device thread (kept aside for [`VirtioConsole::resume_after_save`]) and describes the
    /// device.
    pub(super) fn save_state(&mut self) -> DeviceState {
        let engine = self.stop_worker().or_else(|| self.parked.take());
        let active = engine.as_ref().map(|e| ConsoleActive {
            multiport: e.multiport,
            queues: e
                .queues
                .iter()
                .map(|q| QueueState::from(q.state()))
                .collect(),
            ports: e
                .ports
                .iter()
                .map(|p| state::PortState {
                    name: p.name.clone(),
                    guest_open: p.guest_open,
                    pending: p.pending.clone(),
                })
                .collect(),
            control_out: e.control_out.iter().cloned().collect(),
        });
        self.parked = engine;
        DeviceState::Console(ConsoleState {
            acked: self.acked,
            active,
        })
    }

    /// Restarts the device thread stopped by a save.
    pub(super) fn resume_after_save(&mut self) {
        if let Some(engine) = self.parked.take()
            && let Err(e) = self.start_worker(engine)
        {
            tracing::warn!(
                "virtio-console: cannot restart the device thread after a snapshot: {e}"
            );
        }
    }

    /// Takes the saved state of a console with the same ports, in a new VMM.
    pub(super) fn restore_state(
        &mut self,
        saved: &DeviceState,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), StateError> {
        let DeviceState::Console(s) = saved else {
            return Err(StateError::Mismatch(
                "a virtio-console slot holds another device's state".into(),
            ));
        };
        if s.acked & !self.features() != 0 {
            return Err(StateError::Mismatch(format!(
                "console features {:#x} beyond the device's",
                s.acked
            )));
        }
        self.stop_worker();
        self.acked = s.acked;
        let Some(a) = &s.active else {
            return Ok(());
        };
        let want_queues = if a.multiport {
            self.queue_sizes.len()
        } else {
            2
        };
        let want_ports = if a.multiport { self.ports.len() } else { 1 };
        if a.multiport != (s.acked & F_MULTIPORT != 0)
            || a.queues.len() != want_queues
            || a.ports.len() != want_ports
        {
            return Err(StateError::Mismatch(format!(
                "console with {} queues and {} ports saved, this one has {want_queues} and {want_ports}",
                a.queues.len(),
                a.ports.len()
            )));
        }
        let queues = a
            .queues
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
            .collect::<Result<Vec<_>, _>>()?;
        let mut ports = Vec::new();
        for (saved, port) in a.ports.iter().zip(&self.ports) {
            if saved.name != port.name {
                return Err(StateError::Mismatch(format!(
                    "console port {:?} saved where this device has {:?}",
                    saved.name, port.name
                )));
            }
            if let Some((_, data, at)) = &saved.pending
                && *at > data.len()
            {
                return Err(StateError::Mismatch(format!(
                    "port {:?}: {at} of {} pending bytes written",
                    saved.name,
                    data.len()
                )));
            }
            let socket = port.socket.try_clone()?;
            socket.set_nonblocking(true)?;
            ports.push(PortState {
                name: port.name.clone(),
                socket,
                guest_open: saved.guest_open,
                host_eof: false,
                pending: saved.pending.clone(),
            });
        }
        let engine = Engine {
            mem,
            queues,
            interrupt,
            multiport: a.multiport,
            ports,
            control_out: a.control_out.iter().cloned().collect::<VecDeque<_>>(),
            stats: self.stats.clone(),
            used: false,
        };
        self.start_worker(engine)?;
        Ok(())
    }
}
