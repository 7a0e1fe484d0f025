//! virtio-console with named ports (`VIRTIO_CONSOLE_F_MULTIPORT`): the guest sees `/dev/vportNpM` devices
//! whose `/sys/class/virtio-ports/*/name` is the name given here, each connected to one host socket (one
//! end of a socketpair whose other end the host program holds).
//!
//! Queues (multiport): port 0 rx 0, tx 1; control rx 2, tx 3; port `n ≥ 1` rx `2 + 2n`, tx `3 + 2n`.
//! The control protocol follows Linux `drivers/char/virtio_console.c`: a message is
//! `struct virtio_console_control { le32 id; le16 event; le16 value; }` and a payload. The guest says
//! DEVICE_READY; the device adds every port (PORT_ADD); the guest says PORT_READY for a port; the device
//! names it (PORT_NAME) and tells it the host is connected (PORT_OPEN 1). When the host closes its end
//! (end of file), the device sends PORT_OPEN 0 and guest readers get end of file once the data is drained.
//! CONSOLE_PORT is never sent: these are plain ports, not `hvc` consoles.
//!
//! All queue work runs on one device thread started by `activate`. `queue_notify` (on the vCPU thread)
//! only wakes it. The thread polls the host sockets: for reading only while the guest has opened the port
//! and has receive buffers queued (so a guest without buffers stops the polling until it notifies), for
//! writing only while guest data waits for a host that does not read (back-pressure: the transmit buffer
//! is returned to the guest when its bytes are written). Host writes never raise SIGPIPE; data for a host
//! that is gone is dropped. Malformed chains are returned to the guest empty and counted.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{Malformed, checked_chain, read_chain, write_chain};
use super::{ActivateError, Interrupt, StateError, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::snapshot::state::DeviceState;

/// The virtio device ID of a console.
pub const DEVICE_TYPE: u32 = 3;
/// `VIRTIO_CONSOLE_F_MULTIPORT`: several ports and the control queues.
pub const F_MULTIPORT: u64 = 1 << 1;
/// The size of every queue.
pub const QUEUE_SIZE: u16 = 128;
/// The most ports one device carries (two queues each, plus the control pair, at most 64 queues).
pub const MAX_PORTS: usize = 31;
/// The longest port name.
pub const MAX_NAME: usize = 255;
/// The largest guest transmit chain accepted (Linux sends at most 32 KiB at a time).
const MAX_TX_CHAIN: usize = 1 << 20;
/// The most bytes read from a host socket into one receive chain.
const MAX_RX_READ: usize = 64 << 10;
/// The largest control message accepted from the guest.
const MAX_CONTROL: usize = 4096;
/// Control messages waiting for the guest to take them, at most.
const MAX_CONTROL_OUT: usize = 1024;
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;

/// Control events (`VIRTIO_CONSOLE_*` in Linux `include/uapi/linux/virtio_console.h`).
pub mod event {
    /// Guest → device: the driver is ready for ports.
    pub const DEVICE_READY: u16 = 0;
    /// Device → guest: a port exists.
    pub const PORT_ADD: u16 = 1;
    /// Device → guest: a port is gone.
    pub const PORT_REMOVE: u16 = 2;
    /// Guest → device: a port is set up.
    pub const PORT_READY: u16 = 3;
    /// Device → guest: a port is a console (never sent by us).
    pub const CONSOLE_PORT: u16 = 4;
    /// Device → guest: a console's size changed.
    pub const RESIZE: u16 = 5;
    /// Both ways: the sender opened (1) or closed (0) the port.
    pub const PORT_OPEN: u16 = 6;
    /// Device → guest: the port's name (payload).
    pub const PORT_NAME: u16 = 7;
}

/// Errors of building a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A console needs at least one port.
    #[error("a virtio console needs at least one port")]
    NoPorts,
    /// More ports than queues allow.
    #[error("{0} console ports requested, at most {MAX_PORTS} fit on one device")]
    TooManyPorts(usize),
    /// A name the guest cannot show.
    #[error(
        "console port name {0:?} is empty, longer than {MAX_NAME} bytes or contains NUL or '/'"
    )]
    BadName(String),
    /// A socketpair could not be created.
    #[error("cannot create the socketpair of console port {name:?}: {source}")]
    Socket {
        /// The port.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One named port and the device's end of its host socket.
#[derive(Debug)]
pub struct Port {
    /// The name the guest sees.
    pub name: String,
    /// The device's end; the host program holds the other end.
    pub socket: UnixStream,
}

/// Counters of what the device refused or lost (guest misbehaviour, vanished hosts).
#[derive(Debug, Default)]
pub struct ConsoleStats {
    /// Chains skipped as malformed (wrong direction, empty, too large, outside guest memory).
    pub malformed_chains: AtomicU64,
    /// Guest bytes dropped because the host end was gone.
    pub dropped_bytes: AtomicU64,
    /// Control messages ignored (unknown event or port).
    pub ignored_control: AtomicU64,
}

/// A virtio console with named ports.
pub struct VirtioConsole {
    ports: Vec<Port>,
    queue_sizes: Vec<u16>,
    acked: u64,
    stats: Arc<ConsoleStats>,
    worker: Option<Worker>,
    /// The device thread's state while a snapshot is taken.
    parked: Option<Engine>,
}

impl std::fmt::Debug for VirtioConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioConsole")
            .field("ports", &self.ports)
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

impl VirtioConsole {
    /// A console with `ports` (port `i` is `/dev/vport*p<i>` in the guest).
    pub fn new(ports: Vec<Port>) -> Result<VirtioConsole, ConsoleError> {
        if ports.is_empty() {
            return Err(ConsoleError::NoPorts);
        }
        if ports.len() > MAX_PORTS {
            return Err(ConsoleError::TooManyPorts(ports.len()));
        }
        if let Some(p) = ports
            .iter()
            .find(|p| p.name.is_empty() || p.name.len() > MAX_NAME || p.name.contains(['\0', '/']))
        {
            return Err(ConsoleError::BadName(p.name.clone()));
        }
        Ok(VirtioConsole {
            queue_sizes: vec![QUEUE_SIZE; 2 * (ports.len() + 1)],
            ports,
            acked: 0,
            stats: Arc::default(),
            worker: None,
            parked: None,
        })
    }

    /// A console with one port per name, each on a new socketpair; returns the host ends in name order.
    pub fn with_socketpairs(
        names: &[&str],
    ) -> Result<(VirtioConsole, Vec<UnixStream>), ConsoleError> {
        let mut ports = Vec::new();
        let mut host = Vec::new();
        for name in names {
            let (device, theirs) = UnixStream::pair().map_err(|source| ConsoleError::Socket {
                name: name.to_string(),
                source,
            })?;
            ports.push(Port {
                name: name.to_string(),
                socket: device,
            });
            host.push(theirs);
        }
        Ok((VirtioConsole::new(ports)?, host))
    }

    /// What the device refused or lost so far.
    pub fn stats(&self) -> Arc<ConsoleStats> {
        self.stats.clone()
    }

    /// Stops the device thread; its state, unless the thread panicked.
    fn stop_worker(&mut self) -> Option<Engine> {
        let w = self.worker.take()?;
        w.stop.store(true, Ordering::Release);
        let _ = (&w.wake).write(&[1]);
        w.thread.join().ok()
    }

    /// Runs `engine` on a new device thread.
    fn start_worker(&mut self, engine: Engine) -> std::io::Result<()> {
        let (wake, wakeup) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wakeup.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("virtio-console".into())
                .spawn(move || engine.run(&stop, &wakeup))?
        };
        self.worker = Some(Worker { stop, wake, thread });
        Ok(())
    }
}

impl Drop for VirtioConsole {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        format!("console ports {}", names.join(","))
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MULTIPORT
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    /// `struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports; le32 emerg_wr; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&(self.ports.len() as u32).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o))
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
        self.stop_worker();
        let multiport = self.acked & F_MULTIPORT != 0;
        let want = if multiport { self.queue_sizes.len() } else { 2 };
        if queues.len() != want {
            return Err(ActivateError::Queues {
                got: queues.len(),
                want,
            });
        }
        let served = if multiport { self.ports.len() } else { 1 };
        let mut ports = Vec::new();
        for p in &self.ports[..served] {
            let socket = p.socket.try_clone()?;
            socket.set_nonblocking(true)?;
            ports.push(PortState {
                name: p.name.clone(),
                socket,
                // Without multiport there is no PORT_OPEN: the one port is always open.
                guest_open: !multiport,
                host_eof: false,
                pending: None,
            });
        }
        let engine = Engine {
            mem,
            queues,
            interrupt,
            multiport,
            ports,
            control_out: VecDeque::new(),
            stats: self.stats.clone(),
            used: false,
        };
        Ok(self.start_worker(engine)?)
    }

    fn queue_notify(&mut self, _index: u16) {
        if let Some(w) = &self.worker {
            // A full socket buffer already means "wake up".
            let _ = (&w.wake).write(&[1]);
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.parked = None;
        self.acked = 0;
    }

    fn save(&mut self) -> Result<DeviceState, StateError> {
        Ok(self.save_state())
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

/// The receive queue of port `port`.
fn rx_queue(port: usize) -> usize {
    if port == 0 { 0 } else { 2 + 2 * port }
}

/// A control message.
fn control(id: u32, event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + payload.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

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

struct PortState {
    name: String,
    socket: UnixStream,
    guest_open: bool,
    host_eof: bool,
    /// Guest bytes the host has not taken yet: the chain head and what is left to write.
    pending: Option<(u16, Vec<u8>, usize)>,
}

/// The device thread's state: the queues, the ports and the control messages waiting for the guest.
struct Engine {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
    multiport: bool,
    ports: Vec<PortState>,
    control_out: VecDeque<Vec<u8>>,
    stats: Arc<ConsoleStats>,
    /// Whether used buffers were added since the last interrupt.
    used: bool,
}

impl Engine {
    /// Serves the queues until `stop`; the round after the stop request still passes on what the guest
    /// sent (its last words before a reset, e.g. the agent's verdict) as far as the hosts take it at once.
    fn run(mut self, stop: &AtomicBool, wakeup: &UnixStream) -> Engine {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if self.multiport {
                self.control_from_guest();
            }
            for p in 0..self.ports.len() {
                self.guest_to_host(p);
                self.host_to_guest(p);
            }
            self.control_to_guest();
            if std::mem::take(&mut self.used) {
                self.interrupt.signal_used_queue();
            }
            if stopping {
                return self;
            }
            self.wait(wakeup);
        }
    }

    /// Sleeps until a notification or a socket the device waits for is ready.
    fn wait(&self, wakeup: &UnixStream) {
        let mut fds = vec![PollFd::new(wakeup.as_fd(), PollFlags::POLLIN)];
        for (p, port) in self.ports.iter().enumerate() {
            let mut events = PollFlags::empty();
            if self.wants_host_data(p) {
                events |= PollFlags::POLLIN;
            }
            if port.pending.is_some() {
                events |= PollFlags::POLLOUT;
            }
            if !events.is_empty() {
                fds.push(PollFd::new(port.socket.as_fd(), events));
            }
        }
        // EINTR and other failures just mean another round.
        let _ = poll(&mut fds, PollTimeout::NONE);
        let mut drain = [0u8; 64];
        while matches!((&*wakeup).read(&mut drain), Ok(n) if n > 0) {}
    }

    /// Whether the device reads port `p`'s socket: the guest listens and has buffers queued.
    fn wants_host_data(&self, p: usize) -> bool {
        let port = &self.ports[p];
        let q = &self.queues[rx_queue(p)];
        port.guest_open
            && !port.host_eof
            && q.avail_idx(&self.mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != q.next_avail())
    }

    fn add_used(&mut self, queue: usize, head: u16, len: u32) {
        // An invalid used ring is the guest's problem: the device goes on.
        let _ = self.queues[queue].add_used(&self.mem, head, len);
        self.used = true;
    }

    /// Queues a control message for the guest; a guest that asks for more than [`MAX_CONTROL_OUT`] without
    /// taking them (a hostile one repeating DEVICE_READY) loses the surplus instead of growing the queue.
    fn send_control(&mut self, msg: Vec<u8>) {
        if self.control_out.len() < MAX_CONTROL_OUT {
            self.control_out.push_back(msg);
        } else {
            self.stats.ignored_control.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many chains one pass takes from queue `q`: a driver never has more outstanding than the ring
    /// holds, and a hostile one whose used ring overlaps its available ring would otherwise feed a loop
    /// forever.
    fn budget(&self, q: usize) -> u16 {
        self.queues.get(q).map_or(0, virtio_queue::QueueT::size)
    }

    fn malformed(&mut self, queue: usize, head: u16) {
        self.stats.malformed_chains.fetch_add(1, Ordering::Relaxed);
        self.add_used(queue, head, 0);
    }

    /// Guest → host: writes the transmit chains of port `p` to its socket until the host stops taking.
    fn guest_to_host(&mut self, p: usize) {
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
    fn host_to_guest(&mut self, p: usize) {
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

    /// Handles the guest's control messages.
    fn control_from_guest(&mut self) {
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
    fn control_to_guest(&mut self) {
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

mod state;
#[cfg(test)]
mod tests;
