use std::collections::HashMap;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::link::tests::framed;
use super::*;
use crate::virtio::testing::{self, Buf, DriverQueue};

/// Guest RAM of the tests; buffers are allocated from 1 MiB up.
const MEM: usize = 16 << 20;
const MAC: [u8; 6] = [0x02, 0x00, 0x5a, 0x0b, 0xcd, 0xef];
/// A receive buffer as Linux gives it at MTU 1500: header, Ethernet header, VLAN tag, 1500 bytes.
const RX_BUF: u32 = 12 + 1518;

/// A network card with its queues set up in guest memory as a driver would, activated; `host` is passt's
/// end of the socket.
struct Rig {
    mem: GuestMemoryMmap,
    net: VirtioNet,
    queues: Vec<DriverQueue>,
    host: UnixStream,
    irq: Arc<EventFd>,
    next: u64,
    /// (queue, head) → the chain's buffers.
    chains: HashMap<(usize, u16), Vec<Buf>>,
}

impl Rig {
    fn new() -> Rig {
        let (ours, host) = UnixStream::pair().unwrap();
        let mut r = Rig {
            mem: testing::memory(MEM),
            net: VirtioNet::new(ours, MAC),
            queues: Vec::new(),
            host,
            irq: testing::interrupt().1,
            next: 1 << 20,
            chains: HashMap::new(),
        };
        r.activate();
        r
    }

    /// The driver's setup: features, fresh queues, DRIVER_OK.
    fn activate(&mut self) {
        self.net.ack_features(VIRTIO_F_VERSION_1 | F_MAC);
        self.queues = (0..2)
            .map(|i| DriverQueue::new(&self.mem, 0x1_0000 + i * 0x2000, QUEUE_SIZE))
            .collect();
        self.chains.clear();
        let (interrupt, irq) = testing::interrupt();
        self.irq = irq;
        self.net
            .activate(
                self.mem.clone(),
                self.queues.iter().map(DriverQueue::device_queue).collect(),
                interrupt,
            )
            .unwrap();
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next;
        self.next += (u64::from(len.max(1)) + 15) & !15;
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
        self.net.queue_notify(queue as u16);
        head
    }

    /// Transmits `frame` behind a header, split into readable buffers of the sizes in `split` (the last
    /// buffer takes the rest).
    fn transmit(&mut self, frame: &[u8], split: &[u32]) -> u16 {
        let mut packet = vec![0u8; HEADER_LEN];
        packet.extend_from_slice(frame);
        let mut bufs = Vec::new();
        let mut left = packet.len() as u32;
        for &n in split.iter().chain([&u32::MAX]) {
            let len = n.min(left);
            bufs.push(Buf {
                addr: self.alloc(len),
                len,
                write: false,
            });
            left -= len;
            if left == 0 {
                break;
            }
        }
        self.offer(TX_QUEUE, &bufs, &packet)
    }

    /// Gives `count` receive chains, each of writable buffers of the sizes in `split`.
    fn give(&mut self, count: usize, split: &[u32]) -> Vec<u16> {
        (0..count)
            .map(|_| {
                let bufs: Vec<Buf> = split
                    .iter()
                    .map(|&len| Buf {
                        addr: self.alloc(len),
                        len,
                        write: true,
                    })
                    .collect();
                self.offer(RX_QUEUE, &bufs, &[])
            })
            .collect()
    }

    /// Waits until `queue` has `count` new used entries; returns (head, used length, bytes written).
    fn used(&mut self, queue: usize, count: usize) -> Vec<(u16, u32, Vec<u8>)> {
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
        assert_eq!(
            got.len(),
            count,
            "queue {queue}: more used entries than expected"
        );
        got.into_iter()
            .map(|(id, len)| {
                let head = id as u16;
                let mut out = Vec::new();
                for b in self.chains.get(&(queue, head)).into_iter().flatten() {
                    let n = (len as usize - out.len()).min(b.len as usize);
                    let mut part = vec![0u8; n];
                    if b.write {
                        self.mem
                            .read_slice(&mut part, GuestAddress(b.addr))
                            .unwrap();
                        out.extend(part);
                    }
                }
                (head, len, out)
            })
            .collect()
    }

    /// No new used entries on `queue` for a while.
    fn quiet(&mut self, queue: usize) {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(self.queues[queue].take_used(), vec![], "queue {queue}");
    }

    /// passt's side: the next `count` frames the device sent.
    fn host_frames(&mut self, count: usize) -> Vec<Vec<u8>> {
        self.host
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (0..count)
            .map(|_| {
                let mut len = [0u8; 4];
                (&self.host).read_exact(&mut len).unwrap();
                let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
                (&self.host).read_exact(&mut frame).unwrap();
                frame
            })
            .collect()
    }

    fn stat(&self, f: impl Fn(&NetStats) -> &AtomicU64) -> u64 {
        f(&self.net.stats()).load(Ordering::Relaxed)
    }

    /// Waits until a counter reaches `want`.
    fn wait_stat(&self, want: u64, f: impl Fn(&NetStats) -> &AtomicU64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.stat(&f) < want {
            assert!(
                Instant::now() < deadline,
                "counter at {}, not {want}",
                self.stat(&f)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(self.stat(&f), want);
    }

    /// Waits until the guest was interrupted.
    fn interrupted(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.irq.read().is_err() {
            assert!(Instant::now() < deadline, "no interrupt");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the device has read bytes from passt that it cannot place yet (a save says busy).
    fn wait_busy(&mut self) -> StateError {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let saved = self.net.save();
            self.net.resume();
            match saved {
                Err(e) => return e,
                Ok(_) => {
                    assert!(Instant::now() < deadline, "the device never read the piece");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// An Ethernet frame of `len` bytes whose contents tell it apart.
fn frame(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

/// What the guest finds in a receive chain for `frame`: a zero header with num_buffers 1, the frame.
fn received(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 10];
    out.extend([1, 0]);
    out.extend_from_slice(frame);
    out
}

#[test]
fn features_and_config_offer_the_mac_and_nothing_else() {
    let (ours, _host) = UnixStream::pair().unwrap();
    let mut net = VirtioNet::new(ours, MAC);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.describe(), "net 02:00:5a:0b:cd:ef");
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert_eq!(net.features(), VIRTIO_F_VERSION_1 | (1 << 5));
    // No checksum offload (0), no TSO, no mergeable buffers (15), no status (16), no control queue (17),
    // no multiqueue (22), no event index (29).
    for bit in [0, 1, 7, 11, 15, 16, 17, 22, 29] {
        assert_eq!(net.features() & (1 << bit), 0, "feature bit {bit}");
    }
    net.ack_features(u64::MAX);
    assert_eq!(net.acked, VIRTIO_F_VERSION_1 | F_MAC);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut tail = [0xffu8; 4];
    net.read_config(4, &mut tail);
    assert_eq!(tail, [0xcd, 0xef, 0, 0], "no status field after the MAC");
    net.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 4]);
    net.write_config(0, &[1, 2, 3, 4, 5, 6]);
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC, "the configuration is read-only");
}

#[test]
fn activation_needs_both_queues() {
    let (ours, _host) = UnixStream::pair().unwrap();
    let mut net = VirtioNet::new(ours, MAC);
    let mem = testing::memory(1 << 20);
    let q = DriverQueue::new(&mem, 0x1_0000, 8).device_queue();
    let err = net
        .activate(mem, vec![q], testing::interrupt().0)
        .unwrap_err();
    assert!(
        matches!(err, ActivateError::Queues { got: 1, want: 2 }),
        "{err}"
    );
}

#[test]
fn a_transmitted_frame_reaches_passt_with_its_length() {
    let mut r = Rig::new();
    let a = frame(60, 1);
    let b = frame(1514, 2);
    // The header split, and sharing a descriptor with the frame; then header and frame in one buffer.
    let heads = [r.transmit(&a, &[5, 10, 1, 30]), r.transmit(&b, &[])];
    let used = r.used(TX_QUEUE, 2);
    assert_eq!(
        used.iter().map(|u| (u.0, u.1)).collect::<Vec<_>>(),
        vec![(heads[0], 0), (heads[1], 0)]
    );
    assert_eq!(r.host_frames(2), vec![a, b]);
    r.interrupted();
    assert_eq!(r.stat(|s| &s.tx_frames), 2);
    assert_eq!(r.stat(|s| &s.malformed_chains), 0);
}

#[test]
fn two_frames_in_one_write_fill_two_receive_chains() {
    let mut r = Rig::new();
    // One chain with the header split from the frame, one in a single buffer.
    let mut heads = r.give(1, &[7, 5, RX_BUF - 12]);
    heads.extend(r.give(1, &[RX_BUF]));
    let a = frame(1514, 3);
    let b = frame(42, 4);
    r.host.write_all(&framed(&[&a, &b])).unwrap();
    let used = r.used(RX_QUEUE, 2);
    assert_eq!(used[0], (heads[0], 12 + 1514, received(&a)));
    assert_eq!(used[1], (heads[1], 12 + 42, received(&b)));
    r.interrupted();
    assert_eq!(r.stat(|s| &s.rx_frames), 2);
}

#[test]
fn a_frame_in_three_pieces_arrives_once_whole() {
    let mut r = Rig::new();
    r.give(2, &[RX_BUF]);
    let a = frame(300, 5);
    let stream = framed(&[&a]);
    // The length prefix itself split, then the frame.
    for piece in [&stream[..2], &stream[2..100]] {
        r.host.write_all(piece).unwrap();
        r.quiet(RX_QUEUE);
    }
    r.host.write_all(&stream[100..]).unwrap();
    let used = r.used(RX_QUEUE, 1);
    assert_eq!(used[0].2, received(&a));
    r.quiet(RX_QUEUE);
}

#[test]
fn without_receive_buffers_frames_wait_for_the_guest() {
    let mut r = Rig::new();
    let a = frame(100, 6);
    let b = frame(200, 7);
    r.host.write_all(&framed(&[&a, &b])).unwrap();
    r.quiet(RX_QUEUE);
    // The guest offers buffers without notifying: still nothing.
    let buf = Buf {
        addr: r.alloc(RX_BUF),
        len: RX_BUF,
        write: true,
    };
    let head = r.queues[RX_QUEUE].add_chain(&[buf]);
    r.chains.insert((RX_QUEUE, head), vec![buf]);
    r.quiet(RX_QUEUE);
    r.net.queue_notify(RX_QUEUE as u16);
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&a));
    r.give(1, &[RX_BUF]);
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&b));
}

#[test]
fn a_frame_too_large_for_the_chain_is_dropped_and_the_chain_kept() {
    let mut r = Rig::new();
    let heads = r.give(1, &[12 + 64]);
    let big = frame(65, 8);
    let small = frame(64, 9);
    r.host.write_all(&framed(&[&big, &small])).unwrap();
    let used = r.used(RX_QUEUE, 1);
    assert_eq!(used[0], (heads[0], 12 + 64, received(&small)));
    assert_eq!(r.stat(|s| &s.dropped_rx_frames), 1);
    assert_eq!(r.stat(|s| &s.malformed_chains), 0);
}

#[test]
fn refused_lengths_from_passt_are_dropped() {
    let mut r = Rig::new();
    r.give(2, &[RX_BUF]);
    let good = frame(60, 10);
    let mut stream = vec![0, 0, 0, 0];
    stream.extend(((MAX_FRAME + 1) as u32).to_be_bytes());
    stream.extend(vec![0xee; MAX_FRAME + 1]);
    stream.extend(framed(&[&good]));
    let writer = {
        let host = r.host.try_clone().unwrap();
        std::thread::spawn(move || (&host).write_all(&stream).unwrap())
    };
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&good));
    writer.join().unwrap();
    assert_eq!(r.stat(|s| &s.dropped_rx_frames), 2);
    // A length of 4 GiB - 1 with a few bytes: discarded, the device still transmits.
    r.host.write_all(&u32::MAX.to_be_bytes()).unwrap();
    r.host.write_all(&[1; 100]).unwrap();
    r.quiet(RX_QUEUE);
    assert_eq!(r.stat(|s| &s.dropped_rx_frames), 3);
    let a = frame(60, 11);
    r.transmit(&a, &[]);
    r.used(TX_QUEUE, 1);
    assert_eq!(r.host_frames(1), vec![a]);
}

#[test]
fn malformed_chains_are_returned_and_counted() {
    let mut r = Rig::new();
    let a = r.alloc(0x2_0000);
    let read = |len| Buf {
        addr: a,
        len,
        write: false,
    };
    let bad_tx: [&[Buf]; 5] = [
        // A device-writable buffer in a transmit chain.
        &[
            read(26),
            Buf {
                write: true,
                ..read(8)
            },
        ],
        // Shorter than header and Ethernet header, and longer than header and the longest frame.
        &[read(25)],
        &[
            read(0x1_0000),
            read((HEADER_LEN + MAX_FRAME) as u32 + 1 - 0x1_0000),
        ],
        // Outside guest memory, and crossing its end.
        &[Buf {
            addr: 1 << 40,
            ..read(60)
        }],
        &[Buf {
            addr: MEM as u64 - 10,
            ..read(60)
        }],
    ];
    for bufs in bad_tx {
        r.offer(TX_QUEUE, bufs, &[]);
    }
    assert!(r.used(TX_QUEUE, 5).iter().all(|u| u.1 == 0));
    assert_eq!(r.stat(|s| &s.malformed_chains), 5);
    // A head index beyond the table: an empty chain (virtio-queue refuses its used entry).
    r.queues[TX_QUEUE].publish(QUEUE_SIZE + 3);
    r.net.queue_notify(TX_QUEUE as u16);
    r.wait_stat(6, |s| &s.malformed_chains);
    // A read-only receive buffer and one outside guest memory: the frame waits for a proper chain.
    let b = frame(80, 12);
    r.host.write_all(&framed(&[&b])).unwrap();
    r.offer(RX_QUEUE, &[read(RX_BUF)], &[]);
    let outside = Buf {
        addr: 1 << 40,
        len: RX_BUF,
        write: true,
    };
    r.offer(RX_QUEUE, &[outside], &[]);
    let used = r.used(RX_QUEUE, 2);
    assert!(used.iter().all(|u| u.1 == 0), "{used:?}");
    assert_eq!(r.stat(|s| &s.malformed_chains), 8);
    r.give(1, &[RX_BUF]);
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&b));
    // The device still transmits.
    let c = frame(60, 13);
    r.transmit(&c, &[20]);
    r.used(TX_QUEUE, 1);
    assert_eq!(r.host_frames(1), vec![c]);
    assert_eq!(r.stat(|s| &s.dropped_rx_frames), 0);
}

#[test]
fn a_host_that_does_not_read_holds_the_guest_back() {
    let mut r = Rig::new();
    // Far more than a socket buffer (208 KiB by default) and the device's backlog hold.
    let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(65_000, i)).collect();
    for f in &frames {
        r.transmit(f, &[]);
    }
    std::thread::sleep(Duration::from_millis(100));
    let early = r.queues[TX_QUEUE].take_used().len();
    assert!(
        early < 32,
        "all {early} chains taken while passt reads nothing"
    );
    let got = r.host_frames(32);
    assert!(got == frames, "the frames arrive intact and in order");
    r.used(TX_QUEUE, 32 - early);
    assert_eq!(r.stat(|s| &s.tx_frames), 32);
}

#[test]
fn a_vanished_passt_loses_frames_not_the_guest() {
    let mut r = Rig::new();
    let (ours, host) = UnixStream::pair().unwrap();
    drop(host);
    // A new socket whose peer is gone: reset, a new device, the same guest queues.
    r.net = VirtioNet::new(ours, MAC);
    r.activate();
    for i in 0..3 {
        r.transmit(&frame(60, i), &[]);
    }
    assert!(r.used(TX_QUEUE, 3).iter().all(|u| u.1 == 0));
    assert_eq!(r.stat(|s| &s.dropped_tx_frames), 3);
    assert_eq!(r.stat(|s| &s.tx_frames), 0);
    // Receive buffers: the device sees the end of file, nothing arrives, transmitting still works.
    r.give(1, &[RX_BUF]);
    r.quiet(RX_QUEUE);
    r.transmit(&frame(60, 9), &[]);
    r.used(TX_QUEUE, 1);
    assert_eq!(r.stat(|s| &s.dropped_tx_frames), 4);
}

#[test]
fn passt_closing_while_running_drops_later_frames() {
    let mut r = Rig::new();
    r.give(1, &[RX_BUF]);
    let a = frame(60, 1);
    r.host.write_all(&framed(&[&a])).unwrap();
    r.used(RX_QUEUE, 1);
    r.give(1, &[RX_BUF]);
    r.host.shutdown(std::net::Shutdown::Both).unwrap();
    r.quiet(RX_QUEUE);
    for i in 0..2 {
        r.transmit(&frame(60, i), &[]);
    }
    r.used(TX_QUEUE, 2);
    assert_eq!(r.stat(|s| &s.dropped_tx_frames), 2);
}

#[test]
fn reset_stops_the_device_and_the_stream_continues_after_it() {
    let mut r = Rig::new();
    r.give(1, &[RX_BUF]);
    let a = frame(500, 14);
    let stream = framed(&[&a]);
    // Half a frame is read before the reset, the rest after it.
    r.host.write_all(&stream[..200]).unwrap();
    r.wait_busy();
    r.net.reset();
    r.transmit(&frame(60, 15), &[]);
    r.quiet(TX_QUEUE);
    r.host.write_all(&stream[200..]).unwrap();
    r.next = 1 << 20;
    r.activate();
    r.give(1, &[RX_BUF]);
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&a));
    let b = frame(70, 16);
    r.transmit(&b, &[]);
    assert_eq!(r.host_frames(1), vec![b]);
}

#[test]
fn a_saved_device_resumes_or_continues_in_a_new_one_on_a_new_socket() {
    let mut r = Rig::new();
    r.give(2, &[RX_BUF]);
    let a = frame(60, 17);
    r.transmit(&a, &[]);
    r.used(TX_QUEUE, 1);
    assert_eq!(r.host_frames(1), vec![a]);

    // Save and resume: the device carries on.
    let saved = r.net.save().unwrap();
    let DeviceState::Net(s) = &saved else {
        panic!("{saved:?}")
    };
    assert_eq!(s.acked, VIRTIO_F_VERSION_1 | F_MAC);
    let queues = &s.active.as_ref().expect("running").queues;
    assert_eq!(
        (queues[RX_QUEUE].next_avail, queues[TX_QUEUE].next_avail),
        (0, 1)
    );
    r.net.resume();
    let b = frame(90, 18);
    r.host.write_all(&framed(&[&b])).unwrap();
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&b));

    let saved_again = r.net.save().unwrap();
    assert_ne!(
        saved, saved_again,
        "the queue progress is part of the state"
    );
    let json = serde_json::to_string(&saved_again).unwrap();
    let back: DeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved_again);

    // Other devices' states and other queue counts are refused.
    let (ours, _h) = UnixStream::pair().unwrap();
    let mut other = VirtioNet::new(ours, MAC);
    let fs = DeviceState::Fs(crate::snapshot::state::FsState {
        acked: 0,
        queues: None,
    });
    let e = other
        .restore(&fs, r.mem.clone(), testing::interrupt().0)
        .unwrap_err();
    assert!(matches!(e, StateError::Mismatch(_)), "{e}");
    let mut three = back.clone();
    if let DeviceState::Net(s) = &mut three {
        let q = s.active.as_ref().unwrap().queues[0];
        s.active.as_mut().unwrap().queues.push(q);
    }
    let e = other
        .restore(&three, r.mem.clone(), testing::interrupt().0)
        .unwrap_err();
    assert!(e.to_string().contains("3 queues"), "{e}");

    // A new device on a new socket (a new passt) continues on the saved queues.
    let (ours, host) = UnixStream::pair().unwrap();
    let mut fresh = VirtioNet::new(ours, MAC);
    let (interrupt, irq) = testing::interrupt();
    fresh.restore(&back, r.mem.clone(), interrupt).unwrap();
    r.net = fresh;
    r.host = host;
    r.irq = irq;
    let c = frame(100, 19);
    r.host.write_all(&framed(&[&c])).unwrap();
    let used = r.used(RX_QUEUE, 1);
    assert_eq!((used[0].0, used[0].2.clone()), (1, received(&c)));
    let d = frame(61, 20);
    r.transmit(&d, &[]);
    assert_eq!(r.used(TX_QUEUE, 1)[0].0, 1, "the second transmit chain");
    assert_eq!(r.host_frames(1), vec![d]);
}

#[test]
fn a_save_with_frames_in_flight_is_refused_until_they_moved() {
    let mut r = Rig::new();
    r.give(1, &[RX_BUF]);
    let a = frame(300, 21);
    let stream = framed(&[&a]);
    r.host.write_all(&stream[..50]).unwrap();
    let e = r.wait_busy();
    assert!(matches!(e, StateError::Busy { device: 1, .. }), "{e}");
    assert!(e.to_string().contains("50 bytes from passt"), "{e}");
    // Still busy: the device was resumed after the refused save, and still waits for the rest.
    assert!(r.net.save().is_err());
    r.net.resume();
    r.host.write_all(&stream[50..]).unwrap();
    assert_eq!(r.used(RX_QUEUE, 1)[0].2, received(&a));
    assert!(r.net.save().is_ok());
    r.net.resume();

    // A device that never ran saves as inactive and restores as such.
    let (ours, _h) = UnixStream::pair().unwrap();
    let mut idle = VirtioNet::new(ours, MAC);
    let s = idle.save().unwrap();
    assert_eq!(
        s,
        DeviceState::Net(crate::snapshot::state::NetState {
            acked: 0,
            active: None
        })
    );
    idle.resume();
    idle.restore(&s, r.mem.clone(), testing::interrupt().0)
        .unwrap();
}
