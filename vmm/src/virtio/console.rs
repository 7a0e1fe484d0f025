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
//!
//! The device thread's work is split by direction: `transfer` moves the ports' data, `control` handles the
//! control messages; `state` saves and restores the device for snapshots.

use std::collections::VecDeque;
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
}

mod control;
mod state;
#[cfg(test)]
mod tests;
mod transfer;
