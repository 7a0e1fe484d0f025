//! The console's control messages (multiport): building them, queueing them for the guest within a bound,
//! taking the guest's from the control transmit queue and answering them, and delivering the queued ones
//! into the guest's control receive buffers.

use std::sync::atomic::Ordering;

use virtio_queue::QueueT;

use super::{CONTROL_RX, CONTROL_TX, Engine, event};
use crate::virtio::chain::{Malformed, checked_chain, read_chain, write_chain};

/// The largest control message accepted from the guest.
const MAX_CONTROL: usize = 4096;
/// Control messages waiting for the guest to take them, at most.
const MAX_CONTROL_OUT: usize = 1024;

/// A control message.
pub(super) fn control(id: u32, event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + payload.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

impl Engine {
    /// Queues a control message for the guest; a guest that asks for more than [`MAX_CONTROL_OUT`] without
    /// taking them (a hostile one repeating DEVICE_READY) loses the surplus instead of growing the queue.
    pub(super) fn send_control(&mut self, msg: Vec<u8>) {
        if self.control_out.len() < MAX_CONTROL_OUT {
            self.control_out.push_back(msg);
        } else {
            self.stats.ignored_control.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handles the guest's control messages.
    pub(super) fn control_from_guest(&mut self) {
        let mut budget = self.budget(CONTROL_TX);
        while budget > 0
            && let Some(chain) = self.queues[CONTROL_TX].pop_descriptor_chain(&self.mem)
        {
            budget -= 1;
            let head = chain.head_index();
            let msg = checked_chain(&self.mem, chain, false, MAX_CONTROL)
                .and_then(|(descs, total)| read_chain(&self.mem, &descs, total));
            match msg {
                Ok(msg) if msg.len() >= 8 => {
                    self.add_used(CONTROL_TX, head, 0);
                    self.handle_control(&msg);
                }
                _ => self.malformed(CONTROL_TX, head),
            }
        }
    }

    fn handle_control(&mut self, msg: &[u8]) {
        let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let event = u16::from_le_bytes([msg[4], msg[5]]);
        let value = u16::from_le_bytes([msg[6], msg[7]]);
        let port = usize::try_from(id).ok().filter(|&p| p < self.ports.len());
        match (event, port) {
            (event::DEVICE_READY, _) if value == 1 => {
                for p in 0..self.ports.len() as u32 {
                    self.send_control(control(p, event::PORT_ADD, 1, &[]));
                }
            }
            (event::PORT_READY, Some(p)) if value == 1 => {
                let name = self.ports[p].name.clone();
                self.send_control(control(id, event::PORT_NAME, 1, name.as_bytes()));
                if !self.ports[p].host_eof {
                    self.send_control(control(id, event::PORT_OPEN, 1, &[]));
                }
            }
            (event::PORT_OPEN, Some(p)) => self.ports[p].guest_open = value == 1,
            // A driver that failed to set up the device or a port: nothing to do.
            (event::DEVICE_READY | event::PORT_READY, _) if value == 0 => {}
            _ => {
                self.stats.ignored_control.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Puts the waiting control messages into the guest's control receive buffers.
    pub(super) fn control_to_guest(&mut self) {
        let mut budget = self.budget(CONTROL_RX);
        while budget > 0
            && let Some(msg) = self.control_out.front()
        {
            budget -= 1;
            let Some(chain) = self.queues[CONTROL_RX].pop_descriptor_chain(&self.mem) else {
                return;
            };
            let head = chain.head_index();
            let written =
                checked_chain(&self.mem, chain, true, usize::MAX).and_then(|(descs, total)| {
                    if total < msg.len() {
                        return Err(Malformed);
                    }
                    write_chain(&self.mem, &descs, msg)
                });
            match written {
                Ok(()) => {
                    let len = msg.len() as u32;
                    self.control_out.pop_front();
                    self.add_used(CONTROL_RX, head, len);
                }
                // Too small or bad: the guest loses this buffer, the message waits for the next.
                Err(Malformed) => self.malformed(CONTROL_RX, head),
            }
        }
    }
}
