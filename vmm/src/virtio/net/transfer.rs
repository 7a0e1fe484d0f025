//! Frames between the queues and the link: guest → passt (transmit chains, header stripped, framed into
//! the output buffer) and passt → guest (complete frames from the input buffer into receive chains, behind
//! a zeroed header).

use std::io::ErrorKind;
use std::sync::atomic::Ordering;

use virtio_queue::{QueueOwnedT, QueueT};

use super::{Engine, HEADER_LEN, MAX_FRAME, MIN_FRAME, RX_QUEUE, TX_BACKLOG, TX_QUEUE};
use crate::virtio::chain::{Malformed, checked_chain, read_chain, write_chain};

/// The most socket reads in one pass (a peer that never stops sending still lets the guest's transmit
/// queue have its turn).
const READS_PER_PASS: usize = 16;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;

impl Engine {
    /// Guest → passt: takes transmit chains while the output backlog is small, and writes the backlog.
    pub(super) fn guest_to_host(&mut self) {
        let mut budget = self.budget(TX_QUEUE);
        loop {
            while self.link.output.pending() <= TX_BACKLOG && budget > 0 {
                let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(&self.mem) else {
                    break;
                };
                budget -= 1;
                let head = chain.head_index();
                let data = checked_chain(&self.mem, chain, false, HEADER_LEN + MAX_FRAME).and_then(
                    |(descs, total)| {
                        if total < HEADER_LEN + MIN_FRAME {
                            return Err(Malformed);
                        }
                        read_chain(&self.mem, &descs, total)
                    },
                );
                let Ok(data) = data else {
                    self.malformed(TX_QUEUE, head);
                    continue;
                };
                // The header asks for nothing we do: no offloads were offered.
                if self.link.socket.is_some() {
                    self.link.output.push(&data[HEADER_LEN..]);
                } else {
                    self.stats.dropped_tx_frames.fetch_add(1, Ordering::Relaxed);
                }
                self.add_used(TX_QUEUE, head, 0);
            }
            let Some(socket) = &self.link.socket else {
                return;
            };
            let before = self.link.output.pending();
            match self.link.output.flush(socket) {
                Ok(sent) => {
                    self.stats.tx_frames.fetch_add(sent, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!("virtio-net: passt is gone: {e}");
                    let lost = self.link.hang_up();
                    self.stats
                        .dropped_tx_frames
                        .fetch_add(lost, Ordering::Relaxed);
                    continue;
                }
            }
            let after = self.link.output.pending();
            // Another round only if the backlog held chains back and the write made room for them.
            if budget == 0 || before <= TX_BACKLOG || after > TX_BACKLOG {
                return;
            }
        }
    }

    /// passt → guest: places complete frames in receive chains, reading the socket while the guest has
    /// chains and no complete frame waits.
    pub(super) fn host_to_guest(&mut self) {
        let mut budget = self.budget(RX_QUEUE);
        let mut reads = 0;
        while budget > 0 {
            let Some(frame) = self.link.input.frame(&self.stats.dropped_rx_frames) else {
                if reads == READS_PER_PASS || !self.wants_host_data() {
                    return;
                }
                reads += 1;
                let Some(socket) = &self.link.socket else {
                    return;
                };
                match self.link.input.fill(socket) {
                    Ok(n) if n > 0 => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    // End of file, or the socket failed: passt is gone.
                    _ => {
                        tracing::debug!("virtio-net: passt closed the connection");
                        let lost = self.link.hang_up();
                        self.stats
                            .dropped_tx_frames
                            .fetch_add(lost, Ordering::Relaxed);
                    }
                }
                continue;
            };
            let Some(chain) = self.queues[RX_QUEUE].pop_descriptor_chain(&self.mem) else {
                return;
            };
            budget -= 1;
            let head = chain.head_index();
            let Ok((descs, total)) = checked_chain(&self.mem, chain, true, usize::MAX) else {
                // The frame waits for the next chain.
                self.malformed(RX_QUEUE, head);
                continue;
            };
            let len = frame.len();
            if total < HEADER_LEN + len {
                // Too small: the frame is dropped, the chain kept for the next one.
                self.queues[RX_QUEUE].go_to_previous_position();
                self.link.input.consume(&frame);
                self.stats.dropped_rx_frames.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.packet.clear();
            self.packet.resize(HEADER_LEN, 0);
            self.packet[NUM_BUFFERS..].copy_from_slice(&1u16.to_le_bytes());
            self.packet
                .extend_from_slice(self.link.input.bytes(frame.clone()));
            if write_chain(&self.mem, &descs, &self.packet).is_err() {
                self.malformed(RX_QUEUE, head);
                continue;
            }
            self.link.input.consume(&frame);
            self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            self.add_used(RX_QUEUE, head, (HEADER_LEN + len) as u32);
        }
    }
}
