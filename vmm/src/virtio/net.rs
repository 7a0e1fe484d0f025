//! virtio-net (device ID 1): the guest's `eth0`, connected to passt (the user-mode network stack) over a
//! unix stream socket.
//!
//! ```no_run
//! use std::os::unix::net::UnixStream;
//! use sandkasten_vmm::virtio::net::VirtioNet;
//!
//! // passt runs as `passt --fd N` with the other end as descriptor N.
//! let (ours, _passt_end) = UnixStream::pair()?;
//! let dev = VirtioNet::new(ours, [0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
//! assert_eq!(sandkasten_vmm::virtio::VirtioDevice::describe(&dev), "net 02:00:00:00:00:01");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The socket carries passt's (and QEMU's `-netdev stream`) framing: every Ethernet frame, without FCS, is
//! preceded by its length as a big-endian u32. The device offers `VIRTIO_NET_F_MAC` and nothing else
//! besides `VIRTIO_F_VERSION_1`: no offloads, no mergeable receive buffers, no control queue, no link
//! status (the link is always up). So every chain carries the 12-byte `virtio_net_hdr_v1` and one frame.
//! Queue 0 is the receive queue, queue 1 the transmit queue.
//!
//! All queue work runs on one device thread started by `activate`; `queue_notify` (on the vCPU thread)
//! only wakes it. The thread polls the socket: for reading only while the guest has a receive chain
//! queued and no complete frame waits (so a guest without buffers leaves passt's frames in the kernel
//! socket buffer until it notifies), for writing only while framed bytes wait for passt. Transmit chains
//! are taken while fewer than [`TX_BACKLOG`] bytes wait (back-pressure: the guest's transmit queue fills
//! and its driver stops the queue). Writes never raise SIGPIPE. Once passt is gone (end of file or an
//! error), transmit chains are still taken and their frames dropped, so the guest never stalls.
//!
//! A receive chain too small for the next frame is kept for the frame after it: the frame is dropped
//! (counted) and the chain stays at the head of the available ring. A hostile guest gains nothing by it,
//! a sane one (Linux gives the header and 1518 bytes per buffer at MTU 1500) never sees it.
//!
//! The stream state (partial frames in either direction) outlives the device thread: a driver reset and
//! a new activation continue the same stream, so passt and the device never lose the frame boundaries.
//!
//! Submodules: `link` frames the byte stream (input and output buffers), `transfer` moves frames between
//! the queues and the link, `state` saves and restores the device for snapshots.

mod link;
mod state;
#[cfg(test)]
mod tests;
mod transfer;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, Interrupt, StateError, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::snapshot::state::DeviceState;
use link::Link;

/// The virtio device ID of a network card.
pub const DEVICE_TYPE: u32 = 1;
/// `VIRTIO_NET_F_MAC`: the configuration space holds the MAC address.
pub const F_MAC: u64 = 1 << 5;
/// The size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
pub const HEADER_LEN: usize = 12;
/// The shortest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// The longest frame accepted in either direction: 65535 bytes of IP packet and the Ethernet header,
/// with room for a VLAN tag.
pub const MAX_FRAME: usize = 65550;
/// Framed transmit bytes waiting for passt beyond which the device takes no more transmit chains.
pub const TX_BACKLOG: usize = 64 << 10;

/// Counters of what the device moved, refused or lost.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Chains returned unused as malformed (wrong direction, empty, outside guest memory, a transmit
    /// chain shorter than header and Ethernet header or longer than header and [`MAX_FRAME`]).
    pub malformed_chains: AtomicU64,
    /// Guest frames dropped because passt was gone.
    pub dropped_tx_frames: AtomicU64,
    /// passt frames dropped: longer than the guest's receive chain, or a length of 0 or beyond
    /// [`MAX_FRAME`].
    pub dropped_rx_frames: AtomicU64,
    /// Guest frames written to passt completely.
    pub tx_frames: AtomicU64,
    /// passt frames placed in the guest's receive chains.
    pub rx_frames: AtomicU64,
}

/// A virtio network card connected to passt.
pub struct VirtioNet {
    mac: [u8; 6],
    acked: u64,
    stats: Arc<NetStats>,
    /// The stream to passt while no device thread holds it.
    link: Option<Link>,
    worker: Option<Worker>,
    /// The device thread's state while a snapshot is taken.
    parked: Option<Engine>,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &mac_text(&self.mac))
            .field("acked", &self.acked)
            .field("running", &self.worker.is_some())
            .finish()
    }
}

/// The device thread and how to stop it; the thread gives its state back when it stops.
struct Worker {
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    thread: JoinHandle<Engine>,
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac_text(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

impl VirtioNet {
    /// A network card with address `mac` whose frames go through `socket`, a connected stream socket to
    /// passt (`passt --fd N`).
    pub fn new(socket: UnixStream, mac: [u8; 6]) -> VirtioNet {
        VirtioNet {
            mac,
            acked: 0,
            stats: Arc::default(),
            link: Some(Link::new(socket)),
            worker: None,
            parked: None,
        }
    }

    /// What the device moved, refused or lost so far.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Stops the device thread; its state, unless the thread panicked (then the stream position to passt
    /// is unknown and the link counts as gone).
    fn stop_worker(&mut self) -> Option<Engine> {
        let w = self.worker.take()?;
        w.stop.store(true, Ordering::Release);
        let _ = (&w.wake).write(&[1]);
        match w.thread.join() {
            Ok(engine) => Some(engine),
            Err(_) => {
                tracing::warn!(
                    "virtio-net: the device thread panicked; the link to passt is dropped"
                );
                None
            }
        }
    }

    /// Stops the device thread and takes the link back; `None` once a panicked thread lost it.
    fn take_link(&mut self) -> Option<Link> {
        if let Some(engine) = self.stop_worker() {
            self.link = Some(engine.link);
        }
        if let Some(engine) = self.parked.take() {
            self.link = Some(engine.link);
        }
        self.link.take()
    }

    /// Runs `engine` on a new device thread; on failure the link stays with the device.
    fn start_worker(&mut self, engine: Engine) -> std::io::Result<()> {
        let pair = UnixStream::pair().and_then(|(wake, wakeup)| {
            wake.set_nonblocking(true)?;
            wakeup.set_nonblocking(true)?;
            Ok((wake, wakeup))
        });
        let (wake, wakeup) = match pair {
            Ok(p) => p,
            Err(e) => {
                self.link = Some(engine.link);
                return Err(e);
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            // A failed spawn drops the engine, and the link with it: the link is gone.
            std::thread::Builder::new()
                .name("virtio-net".into())
                .spawn(move || engine.run(&stop, &wakeup))?
        };
        self.worker = Some(Worker { stop, wake, thread });
        Ok(())
    }

    /// A device thread on `queues` with the link to passt.
    fn start(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> std::io::Result<()> {
        let link = match self.take_link() {
            Some(link) => link,
            None => Link::gone(),
        };
        if let Some(socket) = &link.socket
            && let Err(e) = socket.set_nonblocking(true)
        {
            self.link = Some(link);
            return Err(e);
        }
        let engine = Engine {
            mem,
            queues,
            interrupt,
            link,
            stats: self.stats.clone(),
            used: false,
            packet: Vec::new(),
        };
        self.start_worker(engine)
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn describe(&self) -> String {
        format!("net {}", mac_text(&self.mac))
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    /// `struct virtio_net_config`: only `mac[6]` (no status, no queue pairs, no MTU were offered).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.mac.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError::Queues {
                got: queues.len(),
                want: 2,
            });
        }
        Ok(self.start(mem, queues, interrupt)?)
    }

    fn queue_notify(&mut self, _index: u16) {
        if let Some(w) = &self.worker {
            // A full socket buffer already means "wake up".
            let _ = (&w.wake).write(&[1]);
        }
    }

    fn reset(&mut self) {
        // The link stays: the next activation continues the stream where it is.
        let link = self.take_link();
        self.link = Some(link.unwrap_or_else(Link::gone));
        self.acked = 0;
    }

    fn save(&mut self) -> Result<DeviceState, StateError> {
        self.save_state()
    }

    fn resume(&mut self) {
        self.resume_after_save();
    }

    fn restore(
        &mut self,
        state: &DeviceState,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), StateError> {
        self.restore_state(state, mem, interrupt)
    }
}

/// The device thread's state: the queues and the link to passt.
struct Engine {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
    link: Link,
    stats: Arc<NetStats>,
    /// Whether used buffers were added since the last interrupt.
    used: bool,
    /// Scratch space for a received packet (header and frame).
    packet: Vec<u8>,
}

impl Engine {
    /// Serves the queues until `stop`.
    fn run(mut self, stop: &AtomicBool, wakeup: &UnixStream) -> Engine {
        loop {
            if stop.load(Ordering::Acquire) {
                return self;
            }
            self.guest_to_host();
            self.host_to_guest();
            if std::mem::take(&mut self.used) {
                self.interrupt.signal_used_queue();
            }
            self.wait(wakeup);
        }
    }

    /// Sleeps until a notification or until the socket is ready for what the device waits for.
    fn wait(&self, wakeup: &UnixStream) {
        let mut fds = vec![PollFd::new(wakeup.as_fd(), PollFlags::POLLIN)];
        let mut events = PollFlags::empty();
        if self.wants_host_data() {
            events |= PollFlags::POLLIN;
        }
        if self.link.output.pending() > 0 {
            events |= PollFlags::POLLOUT;
        }
        if let Some(socket) = &self.link.socket
            && !events.is_empty()
        {
            fds.push(PollFd::new(socket.as_fd(), events));
        }
        // EINTR and other failures just mean another round.
        let _ = poll(&mut fds, PollTimeout::NONE);
        let mut drain = [0u8; 64];
        while matches!((&*wakeup).read(&mut drain), Ok(n) if n > 0) {}
    }

    /// Whether the guest has offered receive chains the device has not taken (a sane count of them: an
    /// available index more than a ring ahead is a broken ring, not buffers).
    fn rx_chain_offered(&self) -> bool {
        let q = &self.queues[RX_QUEUE];
        q.avail_idx(&self.mem, Ordering::Acquire)
            .is_ok_and(|idx| (1..=q.size()).contains(&idx.0.wrapping_sub(q.next_avail())))
    }

    /// Whether the device reads the socket: passt is there, no complete frame waits and the guest has a
    /// receive chain for the next one.
    fn wants_host_data(&self) -> bool {
        self.link.socket.is_some() && !self.link.input.has_frame() && self.rx_chain_offered()
    }

    fn add_used(&mut self, queue: usize, head: u16, len: u32) {
        // An invalid used ring is the guest's problem: the device goes on.
        let _ = self.queues[queue].add_used(&self.mem, head, len);
        self.used = true;
    }

    /// How many chains one pass takes from queue `q`: a driver never has more outstanding than the ring
    /// holds, and a hostile one whose used ring overlaps its available ring would otherwise feed a loop
    /// forever.
    fn budget(&self, q: usize) -> u16 {
        self.queues[q].size()
    }

    fn malformed(&mut self, queue: usize, head: u16) {
        self.stats.malformed_chains.fetch_add(1, Ordering::Relaxed);
        self.add_used(queue, head, 0);
    }
}
