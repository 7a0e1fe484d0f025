//! The ports' data: guest → host (transmit chains written to the host sockets, with back-pressure) and
//! host → guest (host sockets read into the receive chains), and the SIGPIPE-free socket write.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use virtio_queue::{QueueOwnedT, QueueT};

use super::control::control;
use super::{Engine, event, rx_queue};
use crate::virtio::chain::{Malformed, checked_chain, read_chain, write_chain};

/// The largest guest transmit chain accepted (Linux sends at most 32 KiB at a time).
const MAX_TX_CHAIN: usize = 1 << 20;
/// The most bytes read from a host socket into one receive chain.
const MAX_RX_READ: usize = 64 << 10;

/// Writes to a socket without SIGPIPE when the peer is gone.
fn send(socket: &UnixStream, data: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes for the whole call and the descriptor is
    // owned by `socket`, which outlives the call; send() does not keep the pointer.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

impl Engine {
    /// Guest → host: writes the transmit chains of port `p` to its socket until the host stops taking.
    pub(super) fn guest_to_host(&mut self, p: usize) {
        let q = rx_queue(p) + 1;
        let mut budget = self.budget(q);
        loop {
            if let Some((head, data, at)) = self.ports[p].pending.take() {
                match send(&self.ports[p].socket, &data[at..]) {
                    Ok(n) if at + n < data.len() => {
                        self.ports[p].pending = Some((head, data, at + n));
                        // Nothing taken (never seen on a stream socket): wait for POLLOUT, do not spin.
                        if n == 0 {
                            return;
                        }
                        continue;
                    }
                    Ok(_) => self.add_used(q, head, 0),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {
                        self.ports[p].pending = Some((head, data, at));
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.ports[p].pending = Some((head, data, at));
                        return;
                    }
                    Err(_) => {
                        let lost = (data.len() - at) as u64;
                        self.stats.dropped_bytes.fetch_add(lost, Ordering::Relaxed);
                        self.add_used(q, head, 0);
                    }
                }
            }
            if budget == 0 {
                return;
            }
            budget -= 1;
            let Some(chain) = self.queues[q].pop_descriptor_chain(&self.mem) else {
                return;
            };
            let head = chain.head_index();
            match checked_chain(&self.mem, chain, false, MAX_TX_CHAIN)
                .and_then(|(descs, total)| read_chain(&self.mem, &descs, total))
            {
                Ok(data) => self.ports[p].pending = Some((head, data, 0)),
                Err(Malformed) => self.malformed(q, head),
            }
        }
    }

    /// Host → guest: reads port `p`'s socket into the guest's receive chains while both have some.
    pub(super) fn host_to_guest(&mut self, p: usize) {
        let q = rx_queue(p);
        let mut budget = self.budget(q);
        while budget > 0 && self.wants_host_data(p) {
            budget -= 1;
            let Some(chain) = self.queues[q].pop_descriptor_chain(&self.mem) else {
                return;
            };
            let head = chain.head_index();
            // A chain larger than MAX_RX_READ is fine: only its first MAX_RX_READ bytes are used.
            let Ok((descs, total)) = checked_chain(&self.mem, chain, true, usize::MAX) else {
                self.malformed(q, head);
                continue;
            };
            let mut buf = vec![0u8; total.min(MAX_RX_READ)];
            match (&self.ports[p].socket).read(&mut buf) {
                Ok(n) if n > 0 => {
                    if write_chain(&self.mem, &descs, &buf[..n]).is_ok() {
                        self.add_used(q, head, n as u32);
                    } else {
                        self.malformed(q, head);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    self.queues[q].go_to_previous_position();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.queues[q].go_to_previous_position();
                    return;
                }
                // End of file, or the host end failed: the host hung up.
                _ => {
                    self.queues[q].go_to_previous_position();
                    self.ports[p].host_eof = true;
                    if self.multiport {
                        let msg = control(p as u32, event::PORT_OPEN, 0, &[]);
                        self.send_control(msg);
                    }
                    return;
                }
            }
        }
    }
}
