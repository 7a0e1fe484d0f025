use std::collections::HashMap;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::control::control;
use super::*;
use crate::virtio::testing::{self, Buf, DriverQueue};

/// Guest RAM of the tests; buffers are allocated from 1 MiB up.
const MEM: usize = 16 << 20;

/// A console with its queues set up in guest memory as a driver would, activated.
struct Rig {
    mem: GuestMemoryMmap,
    console: VirtioConsole,
    queues: Vec<DriverQueue>,
    hosts: Vec<UnixStream>,
    irq: Arc<EventFd>,
    next: u64,
    /// (queue, head) → the chain's buffers.
    chains: HashMap<(usize, u16), Vec<Buf>>,
}

impl Rig {
    fn new(names: &[&str], features: u64) -> Rig {
        let mem = testing::memory(MEM);
        let (mut console, hosts) = VirtioConsole::with_socketpairs(names).unwrap();
        console.ack_features(features);
        let n = if features & F_MULTIPORT != 0 {
            console.queue_max_sizes().len()
        } else {
            2
        };
        let queues: Vec<_> = (0..n)
            .map(|i| DriverQueue::new(&mem, 0x1_0000 + i as u64 * 0x2000, QUEUE_SIZE))
            .collect();
        let (interrupt, irq) = testing::interrupt();
        console
            .activate(
                mem.clone(),
                queues.iter().map(DriverQueue::device_queue).collect(),
                interrupt,
            )
            .unwrap();
        Rig {
            mem,
            console,
            queues,
            hosts,
            irq,
            next: 1 << 20,
            chains: HashMap::new(),
        }
    }

    fn multiport(names: &[&str]) -> Rig {
        Rig::new(names, VIRTIO_F_VERSION_1 | F_MULTIPORT)
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next;
        self.next += u64::from(len.max(1) + 15) & !15;
        assert!(self.next < MEM as u64);
        a
    }

    /// Offers a chain on `queue` (writing `data` into the readable buffers first) and notifies.
    fn offer(&mut self, queue: usize, bufs: &[Buf], data: &[u8]) -> u16 {
        let mut at = 0;
        for b in bufs.iter().filter(|b| !b.write) {
            let n = (b.len as usize).min(data.len() - at);
            self.mem
                .write_slice(&data[at..at + n], GuestAddress(b.addr))
                .unwrap();
            at += n;
        }
        let head = self.queues[queue].add_chain(bufs);
        self.chains.insert((queue, head), bufs.to_vec());
        self.console.queue_notify(queue as u16);
        head
    }

    /// Sends `data` on `queue` in one readable buffer.
    fn send(&mut self, queue: usize, data: &[u8]) -> u16 {
        let b = Buf {
            addr: self.alloc(data.len() as u32),
            len: data.len() as u32,
            write: false,
        };
        self.offer(queue, &[b], data)
    }

    /// Gives `count` writable buffers of `len` bytes to `queue`.
    fn give(&mut self, queue: usize, count: usize, len: u32) {
        for _ in 0..count {
            let b = Buf {
                addr: self.alloc(len),
                len,
                write: true,
            };
            self.offer(queue, &[b], &[]);
        }
    }

    /// Waits until `queue` has `count` new used entries; returns them with the bytes written into each.
    fn used(&mut self, queue: usize, count: usize) -> Vec<(u16, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < count {
            got.extend(self.queues[queue].take_used());
            assert!(
                Instant::now() < deadline,
                "queue {queue}: {} of {count} used entries",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        got.into_iter()
            .map(|(id, len)| {
                let head = id as u16;
                let mut out = Vec::new();
                for b in &self.chains[&(queue, head)] {
                    let n = (len as usize - out.len()).min(b.len as usize);
                    let mut part = vec![0u8; n];
                    if b.write {
                        self.mem
                            .read_slice(&mut part, GuestAddress(b.addr))
                            .unwrap();
                        out.extend(part);
                    }
                }
                (head, out)
            })
            .collect()
    }

    /// No new used entries on `queue` for a while.
    fn quiet(&mut self, queue: usize) {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(self.queues[queue].take_used(), vec![], "queue {queue}");
    }

    /// The next `count` control messages from the device (control rx buffers given as needed).
    fn control(&mut self, count: usize) -> Vec<(u32, u16, u16, Vec<u8>)> {
        self.give(CONTROL_RX, count, 64);
        self.used(CONTROL_RX, count)
            .into_iter()
            .map(|(_, m)| {
                (
                    u32::from_le_bytes(m[..4].try_into().unwrap()),
                    u16::from_le_bytes([m[4], m[5]]),
                    u16::from_le_bytes([m[6], m[7]]),
                    m[8..].to_vec(),
                )
            })
            .collect()
    }

    /// The guest's control message.
    fn tell(&mut self, id: u32, event: u16, value: u16) {
        self.send(CONTROL_TX, &control(id, event, value, &[]));
        self.used(CONTROL_TX, 1);
    }

    /// DEVICE_READY, PORT_READY and PORT_OPEN for every port.
    fn handshake(&mut self) {
        let n = self.hosts.len();
        self.tell(0, event::DEVICE_READY, 1);
        assert_eq!(self.control(n).len(), n);
        for p in 0..n as u32 {
            self.tell(p, event::PORT_READY, 1);
            self.control(2);
            self.tell(p, event::PORT_OPEN, 1);
        }
    }

    fn host_read(&mut self, port: usize, len: usize) -> Vec<u8> {
        let h = &mut self.hosts[port];
        h.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = vec![0u8; len];
        h.read_exact(&mut out).unwrap();
        out
    }
}

fn stat(c: &VirtioConsole, f: impl Fn(&ConsoleStats) -> &AtomicU64) -> u64 {
    f(&c.stats()).load(Ordering::Relaxed)
}

#[test]
fn config_space_says_how_many_ports() {
    let (c, _) = VirtioConsole::with_socketpairs(&["a", "b", "c"]).unwrap();
    let mut b = [0u8; 12];
    c.read_config(0, &mut b);
    assert_eq!(b, [0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    let mut one = [0xffu8; 2];
    c.read_config(u64::MAX, &mut one);
    assert_eq!(one, [0, 0]);
    assert_eq!(c.queue_max_sizes().len(), 8);
    assert_eq!(c.device_type(), 3);
    assert_eq!(c.features(), VIRTIO_F_VERSION_1 | F_MULTIPORT);
}

#[test]
fn bad_port_lists_are_refused() {
    assert!(matches!(
        VirtioConsole::new(vec![]),
        Err(ConsoleError::NoPorts)
    ));
    let many: Vec<String> = (0..32).map(|i| format!("p{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        VirtioConsole::with_socketpairs(&many),
        Err(ConsoleError::TooManyPorts(32))
    ));
    for bad in ["", "a/b", "nul\0", &"x".repeat(256)] {
        assert!(
            matches!(
                VirtioConsole::with_socketpairs(&[bad]),
                Err(ConsoleError::BadName(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn activation_needs_every_queue() {
    let (mut c, _) = VirtioConsole::with_socketpairs(&["a", "b"]).unwrap();
    c.ack_features(VIRTIO_F_VERSION_1 | F_MULTIPORT);
    let mem = testing::memory(1 << 20);
    let q = DriverQueue::new(&mem, 0x1_0000, 8).device_queue();
    let err = c
        .activate(mem, vec![q], testing::interrupt().0)
        .unwrap_err();
    assert!(
        matches!(err, ActivateError::Queues { got: 1, want: 6 }),
        "{err}"
    );
}

#[test]
fn control_handshake_adds_names_and_opens_ports() {
    let mut r = Rig::multiport(&["sandbox.control", "sandbox.stdout"]);
    r.tell(0, event::DEVICE_READY, 1);
    let added = r.control(2);
    assert_eq!(
        added,
        vec![
            (0, event::PORT_ADD, 1, vec![]),
            (1, event::PORT_ADD, 1, vec![])
        ]
    );
    assert!(r.irq.read().unwrap() >= 1, "the guest was interrupted");
    r.tell(1, event::PORT_READY, 1);
    assert_eq!(
        r.control(2),
        vec![
            (1, event::PORT_NAME, 1, b"sandbox.stdout".to_vec()),
            (1, event::PORT_OPEN, 1, vec![])
        ]
    );
    // The guest opening and closing a port, a failed port, and unknown events send nothing.
    r.tell(1, event::PORT_OPEN, 1);
    r.tell(0, event::PORT_READY, 0);
    r.tell(9, event::PORT_READY, 1);
    r.tell(0, event::CONSOLE_PORT, 1);
    r.give(CONTROL_RX, 1, 64);
    r.quiet(CONTROL_RX);
    assert_eq!(stat(&r.console, |s| &s.ignored_control), 2);
    assert_eq!(stat(&r.console, |s| &s.malformed_chains), 0);
}

#[test]
fn guest_data_reaches_the_host_socket() {
    let mut r = Rig::multiport(&["p0", "p1", "p2"]);
    r.handshake();
    r.send(1, b"to port 0\n");
    assert_eq!(r.host_read(0, 10), b"to port 0\n");
    // A chain of several buffers, on port 2 (tx queue 7).
    let (a, b) = (r.alloc(3), r.alloc(4));
    let bufs = [
        Buf {
            addr: a,
            len: 3,
            write: false,
        },
        Buf {
            addr: b,
            len: 4,
            write: false,
        },
    ];
    r.offer(7, &bufs, b"abcdefg");
    assert_eq!(r.used(7, 1)[0].1, b"", "tx buffers come back with length 0");
    assert_eq!(r.host_read(2, 7), b"abcdefg");
}

#[test]
fn host_data_reaches_the_guest_once_it_opened_the_port() {
    let mut r = Rig::multiport(&["p0", "p1"]);
    r.tell(0, event::DEVICE_READY, 1);
    r.control(2);
    r.tell(1, event::PORT_READY, 1);
    r.control(2);
    r.hosts[1].write_all(b"early").unwrap();
    r.give(4, 2, 4096);
    r.quiet(4);
    r.tell(1, event::PORT_OPEN, 1);
    let got = r.used(4, 1);
    assert_eq!(got[0].1, b"early");
    // A buffer smaller than the data gets what fits; the rest goes to the next buffer.
    r.hosts[1].write_all(b"0123456789").unwrap();
    let (_, rest) = r.used(4, 1).remove(0);
    assert_eq!(rest, b"0123456789");
    r.give(4, 1, 4);
    r.give(4, 1, 4);
    r.hosts[1].write_all(b"abcdef").unwrap();
    let got: Vec<_> = r.used(4, 2).into_iter().map(|(_, d)| d).collect();
    assert_eq!(got.concat(), b"abcdef");
}

#[test]
fn without_buffers_the_device_waits_for_the_guest() {
    let mut r = Rig::multiport(&["p0"]);
    r.handshake();
    r.hosts[0].write_all(b"waiting").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    r.give(0, 1, 64);
    assert_eq!(r.used(0, 1)[0].1, b"waiting");
}

#[test]
fn host_hang_up_closes_the_port_after_the_data() {
    let mut r = Rig::multiport(&["a", "b"]);
    r.handshake();
    r.hosts[1].write_all(b"last words").unwrap();
    r.hosts[1].shutdown(std::net::Shutdown::Write).unwrap();
    r.give(4, 1, 64);
    assert_eq!(r.used(4, 1)[0].1, b"last words");
    r.give(4, 1, 64);
    assert_eq!(r.control(1), vec![(1, event::PORT_OPEN, 0, vec![])]);
    r.quiet(4);
    // The port still carries guest data to a host that only shut its writing side.
    r.send(5, b"still here");
    assert_eq!(r.host_read(1, 10), b"still here");
}

#[test]
fn a_host_that_does_not_read_holds_the_guest_back() {
    let mut r = Rig::multiport(&["slow"]);
    r.handshake();
    let chunk = vec![7u8; 256 << 10];
    for _ in 0..8 {
        r.send(1, &chunk);
    }
    std::thread::sleep(Duration::from_millis(50));
    let early = r.queues[1].take_used().len();
    assert!(
        early < 8,
        "{early} of 8 buffers done while the host reads nothing"
    );
    let all = r.host_read(0, 8 * chunk.len());
    assert!(all.iter().all(|&b| b == 7));
    r.used(1, 8 - early);
}

#[test]
fn a_vanished_host_loses_data_not_the_device() {
    let mut r = Rig::multiport(&["gone", "alive"]);
    r.handshake();
    let gone = r.hosts.remove(0);
    drop(gone);
    r.send(1, b"nobody listens");
    r.used(1, 1);
    assert_eq!(stat(&r.console, |s| &s.dropped_bytes), 14);
    // The hang-up is seen once the guest has receive buffers (a Linux guest always has some queued):
    // pending host data would go there first.
    r.give(0, 1, 64);
    assert_eq!(r.control(1), vec![(0, event::PORT_OPEN, 0, vec![])]);
    r.send(5, b"ok");
    assert_eq!(r.host_read(0, 2), b"ok");
}

#[test]
fn malformed_chains_are_skipped_and_counted() {
    let mut r = Rig::multiport(&["p0", "p1"]);
    r.handshake();
    let a = r.alloc(64);
    let bad_tx: [&[Buf]; 5] = [
        // A device-writable buffer in a transmit chain.
        &[Buf {
            addr: a,
            len: 8,
            write: true,
        }],
        &[
            Buf {
                addr: a,
                len: 8,
                write: false,
            },
            Buf {
                addr: a,
                len: 8,
                write: true,
            },
        ],
        // Empty.
        &[Buf {
            addr: a,
            len: 0,
            write: false,
        }],
        // Huge, and outside guest memory.
        &[Buf {
            addr: a,
            len: u32::MAX,
            write: false,
        }],
        &[Buf {
            addr: 1 << 40,
            len: 8,
            write: false,
        }],
    ];
    for bufs in bad_tx {
        r.offer(1, bufs, &[]);
    }
    assert!(r.used(1, 5).iter().all(|(_, d)| d.is_empty()));
    // A read-only receive buffer, and a control message shorter than its header.
    r.offer(
        0,
        &[Buf {
            addr: a,
            len: 8,
            write: false,
        }],
        &[],
    );
    r.hosts[0].write_all(b"x").unwrap();
    r.used(0, 1);
    r.send(CONTROL_TX, &[1, 2, 3]);
    r.used(CONTROL_TX, 1);
    assert_eq!(stat(&r.console, |s| &s.malformed_chains), 7);
    // A head index beyond the table, and a descriptor loop: bounded by the queue size, no hang.
    r.queues[5].publish(QUEUE_SIZE + 3);
    r.console.queue_notify(5);
    let l = r.alloc(4);
    r.mem.write_slice(b"loop", GuestAddress(l)).unwrap();
    r.queues[5].write_desc(0, l, 4, testing::F_NEXT, 0);
    r.queues[5].publish(0);
    r.chains.insert((5, 0), vec![]);
    r.console.queue_notify(5);
    assert_eq!(
        r.host_read(1, 4 * usize::from(QUEUE_SIZE)),
        b"loop".repeat(128)
    );
    // The device still works: the "x" the host sent arrives in a proper buffer.
    r.give(0, 1, 16);
    assert_eq!(r.used(0, 1)[0].1, b"x");
    r.send(1, b"fine");
    assert_eq!(r.host_read(0, 4), b"fine");
}

#[test]
fn reset_stops_the_device_and_it_starts_again() {
    let mut r = Rig::multiport(&["p0"]);
    r.handshake();
    r.console.reset();
    r.send(1, b"after reset");
    r.quiet(1);
    let mem = testing::memory(MEM);
    r.console.ack_features(VIRTIO_F_VERSION_1 | F_MULTIPORT);
    r.queues = (0..4)
        .map(|i| DriverQueue::new(&mem, 0x1_0000 + i * 0x2000, QUEUE_SIZE))
        .collect();
    r.mem = mem.clone();
    r.chains.clear();
    let (interrupt, irq) = testing::interrupt();
    r.irq = irq;
    r.console
        .activate(
            mem,
            r.queues.iter().map(DriverQueue::device_queue).collect(),
            interrupt,
        )
        .unwrap();
    r.handshake();
    r.send(1, b"again");
    assert_eq!(r.host_read(0, 5), b"again");
}

#[test]
fn without_multiport_port_0_is_a_plain_open_channel() {
    let mut r = Rig::new(&["only", "ignored"], VIRTIO_F_VERSION_1);
    r.send(1, b"out");
    assert_eq!(r.host_read(0, 3), b"out");
    r.hosts[0].write_all(b"in").unwrap();
    r.give(0, 1, 16);
    assert_eq!(r.used(0, 1)[0].1, b"in");
}

#[test]
fn what_the_guest_sent_before_the_device_stops_reaches_the_host() {
    let mut r = Rig::multiport(&["p0"]);
    r.handshake();
    // Offered without a notification, as if the VM ended right after the guest queued it.
    let b = Buf {
        addr: r.alloc(7),
        len: 7,
        write: false,
    };
    r.mem.write_slice(b"verdict", GuestAddress(b.addr)).unwrap();
    r.queues[1].add_chain(&[b]);
    let host = r.hosts.remove(0);
    drop(r.console);
    let mut got = Vec::new();
    (&host).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"verdict");
}

#[test]
fn a_saved_console_resumes_or_continues_in_a_new_device() {
    let mut r = Rig::multiport(&["p0", "p1"]);
    r.handshake();
    // Receive buffers the guest offered before the save.
    r.give(4, 2, 4096);
    r.quiet(4);

    // Save and resume: the device carries on.
    let saved = r.console.save().unwrap();
    r.console.resume();
    r.hosts[1].write_all(b"before").unwrap();
    assert_eq!(r.used(4, 1)[0].1, b"before");

    let saved_again = r.console.save().unwrap();
    assert_ne!(
        saved, saved_again,
        "the queue progress is part of the state"
    );
    let DeviceState::Console(s) = &saved_again else {
        panic!("{saved_again:?}")
    };
    let a = s.active.as_ref().expect("running");
    assert!(a.multiport && a.ports.iter().all(|p| p.guest_open));
    // JSON round trip, as in a snapshot file.
    let json = serde_json::to_string(&saved_again).unwrap();
    let back: DeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved_again);

    // A console with other ports refuses the state.
    let (mut other, _h) = VirtioConsole::with_socketpairs(&["p0", "x"]).unwrap();
    let (interrupt, _) = testing::interrupt();
    let e = other.restore(&back, r.mem.clone(), interrupt).unwrap_err();
    assert!(e.to_string().contains("\"x\""), "{e}");

    // A new device on fresh sockets continues: the guest's open ports, its remaining receive buffer.
    let (mut fresh, hosts) = VirtioConsole::with_socketpairs(&["p0", "p1"]).unwrap();
    let (interrupt, irq) = testing::interrupt();
    fresh.restore(&back, r.mem.clone(), interrupt).unwrap();
    r.console = fresh;
    r.hosts = hosts;
    r.irq = irq;
    r.hosts[1].write_all(b"after").unwrap();
    assert_eq!(r.used(4, 1)[0].1, b"after");
    r.send(5, b"out");
    r.used(5, 1);
    assert_eq!(r.host_read(1, 3), b"out");
}
