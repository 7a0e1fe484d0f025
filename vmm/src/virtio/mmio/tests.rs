use std::sync::Mutex;

use super::*;
use crate::virtio::ActivateError;
use crate::virtio::testing::{self, DriverQueue};

const FAKE_FEATURE: u64 = 1 << 3;

/// What the fake device saw.
#[derive(Default, Debug)]
struct Seen {
    acked: Option<u64>,
    activated: Vec<usize>,
    notified: Vec<u16>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    interrupt: Option<Interrupt>,
}

struct Fake {
    seen: Arc<Mutex<Seen>>,
    sizes: Vec<u16>,
    want: usize,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FAKE_FEATURE
    }
    fn ack_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let mut seen = self.seen.lock().unwrap();
        seen.activated.push(queues.len());
        seen.interrupt = Some(interrupt);
        if queues.len() != self.want {
            return Err(ActivateError::Queues {
                got: queues.len(),
                want: self.want,
            });
        }
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        self.seen.lock().unwrap().notified.push(index);
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
    }
}

fn transport(want: usize) -> (MmioTransport, Arc<Mutex<Seen>>, GuestMemoryMmap) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = testing::memory(1 << 20);
    let fake = Fake {
        seen: seen.clone(),
        sizes: vec![16, 16],
        want,
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(Box::new(fake), mem.clone(), irq).unwrap();
    (t, seen, mem)
}

fn r32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w32(t: &mut MmioTransport, offset: u64, value: u32) {
    assert_eq!(t.write(offset, &value.to_le_bytes()), BusEvent::Continue);
}

/// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK; returns the status read back.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w32(t, reg::STATUS, status::ACKNOWLEDGE);
    w32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w32(t, reg::DRIVER_FEATURES_SEL, 0);
    w32(t, reg::DRIVER_FEATURES, features as u32);
    w32(t, reg::DRIVER_FEATURES_SEL, 1);
    w32(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w32(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    r32(t, reg::STATUS)
}

fn setup_queue(t: &mut MmioTransport, index: u32, q: &DriverQueue) {
    w32(t, reg::QUEUE_SEL, index);
    w32(t, reg::QUEUE_NUM, u32::from(q.size));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, q.desc),
        (reg::QUEUE_DRIVER_LOW, q.avail),
        (reg::QUEUE_DEVICE_LOW, q.used),
    ] {
        w32(t, low, addr as u32);
        w32(t, low + 4, (addr >> 32) as u32);
    }
    w32(t, reg::QUEUE_READY, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _, _) = transport(2);
    assert_eq!(r32(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r32(&mut t, reg::VERSION), 2);
    assert_eq!(r32(&mut t, reg::DEVICE_ID), 42);
    assert_eq!(r32(&mut t, reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(r32(&mut t, reg::SHM_LEN_LOW), u32::MAX);
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), FAKE_FEATURE as u32);
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), 1);
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), 0);
    w32(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 16);
    w32(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 0, "no such queue");
    let mut b = [0u8; 2];
    t.read(CONFIG_SPACE + 1, &mut b);
    assert_eq!(b, [0x22, 0x33]);
    t.read(CONFIG_SPACE + 7, &mut b);
    assert_eq!(b, [0x88, 0]);
}

#[test]
fn feature_negotiation_accepts_a_subset_with_version_1() {
    let (mut t, seen, _) = transport(2);
    let st = negotiate(&mut t, VIRTIO_F_VERSION_1 | FAKE_FEATURE);
    assert_ne!(st & status::FEATURES_OK, 0);
    assert_eq!(
        seen.lock().unwrap().acked,
        Some(VIRTIO_F_VERSION_1 | FAKE_FEATURE)
    );
}

#[test]
fn feature_negotiation_refuses_unknown_features_or_legacy() {
    for features in [VIRTIO_F_VERSION_1 | 1 << 5, FAKE_FEATURE] {
        let (mut t, seen, _) = transport(2);
        let st = negotiate(&mut t, features);
        assert_eq!(st & status::FEATURES_OK, 0, "{features:#x}");
        assert_eq!(seen.lock().unwrap().acked, None);
        // DRIVER_OK without FEATURES_OK starts nothing.
        w32(&mut t, reg::STATUS, st | status::DRIVER_OK);
        assert!(!t.is_activated());
    }
}

#[test]
fn queues_are_configured_and_handed_over_on_driver_ok() {
    let (mut t, seen, mem) = transport(2);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    let q0 = DriverQueue::new(&mem, 0x1_0000, 8);
    let q1 = DriverQueue::new(&mem, 0x2_0000, 16);
    setup_queue(&mut t, 0, &q0);
    setup_queue(&mut t, 1, &q1);
    w32(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 1);
    assert_eq!(t.queues[0].size(), 8);
    assert_eq!(t.queues[0].desc_table(), 0x1_0000);
    assert_eq!(t.queues[1].used_ring(), q1.used);
    // Before DRIVER_OK, notifications go nowhere.
    w32(&mut t, reg::QUEUE_NOTIFY, 0);
    w32(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    assert_eq!(r32(&mut t, reg::STATUS), ALL_OK);
    w32(&mut t, reg::QUEUE_NOTIFY, 1);
    w32(&mut t, reg::QUEUE_NOTIFY, 9);
    let s = seen.lock().unwrap();
    assert_eq!(s.activated, vec![2]);
    assert_eq!(s.notified, vec![1]);
    drop(s);
    // Once started, the queues' configuration is fixed.
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_DESC_LOW, 0x5000);
    w32(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(t.queues[0].desc_table(), 0x1_0000);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 1);
}

#[test]
fn a_failed_activation_sets_device_needs_reset() {
    let (mut t, seen, mem) = transport(2);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &DriverQueue::new(&mem, 0x1_0000, 8));
    w32(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_eq!(seen.lock().unwrap().activated, vec![1]);
    assert_eq!(
        r32(&mut t, reg::STATUS),
        ALL_OK | status::DEVICE_NEEDS_RESET
    );
    assert_ne!(r32(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG_BIT, 0);
}

const INT_CONFIG_BIT: u32 = crate::virtio::INT_CONFIG;

#[test]
fn queues_outside_guest_memory_do_not_start_the_device() {
    let (mut t, seen, mem) = transport(2);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &DriverQueue::new(&mem, 0x1_0000, 8));
    w32(&mut t, reg::QUEUE_SEL, 1);
    w32(&mut t, reg::QUEUE_DESC_LOW, 0xffff_f000);
    w32(&mut t, reg::QUEUE_DESC_HIGH, 0xffff_ffff);
    w32(&mut t, reg::QUEUE_READY, 1);
    w32(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert!(seen.lock().unwrap().activated.is_empty());
    assert_ne!(r32(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn writing_zero_to_status_resets_device_and_queues() {
    let (mut t, seen, mem) = transport(2);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &DriverQueue::new(&mem, 0x1_0000, 8));
    setup_queue(&mut t, 1, &DriverQueue::new(&mem, 0x2_0000, 8));
    w32(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    seen.lock()
        .unwrap()
        .interrupt
        .as_ref()
        .unwrap()
        .signal_used_queue();
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 1);
    w32(&mut t, reg::STATUS, 0);
    assert_eq!(seen.lock().unwrap().resets, 1);
    assert!(!t.is_activated());
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 0);
    w32(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.queues[0].size(), 16, "back to the maximum");
    // And the driver can start it again.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &DriverQueue::new(&mem, 0x1_0000, 8));
    setup_queue(&mut t, 1, &DriverQueue::new(&mem, 0x2_0000, 8));
    w32(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    assert_eq!(seen.lock().unwrap().activated, vec![2, 2]);
}

#[test]
fn interrupt_status_is_acknowledged_bit_by_bit() {
    let (mut t, seen, mem) = transport(2);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &DriverQueue::new(&mem, 0x1_0000, 8));
    setup_queue(&mut t, 1, &DriverQueue::new(&mem, 0x2_0000, 8));
    w32(&mut t, reg::STATUS, ALL_OK);
    let irq = seen.lock().unwrap().interrupt.clone().unwrap();
    irq.signal_used_queue();
    irq.signal_config_change();
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 3);
    w32(&mut t, reg::INTERRUPT_ACK, 1);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 2);
    w32(&mut t, reg::INTERRUPT_ACK, 2);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn garbage_accesses_are_ignored() {
    let (mut t, seen, mem) = transport(2);
    // Wrong sizes and alignments: reads give zeros, writes change nothing.
    for len in [1usize, 2, 3, 8] {
        let mut b = vec![0xaau8; len];
        t.read(reg::MAGIC_VALUE, &mut b);
        assert!(b.iter().all(|&x| x == 0), "{len}: {b:?}");
        t.write(reg::STATUS, &vec![0xff; len]);
    }
    let mut b = [0u8; 4];
    t.read(reg::MAGIC_VALUE + 1, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(reg::STATUS + 2, &[0xff; 4]);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    // Write-only and unknown registers read 0; read-only ones ignore writes.
    for offset in (0..CONFIG_SPACE).step_by(4) {
        if ![
            reg::MAGIC_VALUE,
            reg::VERSION,
            reg::DEVICE_ID,
            reg::DEVICE_FEATURES,
            reg::QUEUE_NUM_MAX,
            reg::SHM_LEN_LOW,
            reg::SHM_LEN_HIGH,
            reg::SHM_BASE_LOW,
            reg::SHM_BASE_HIGH,
        ]
        .contains(&offset)
        {
            assert_eq!(r32(&mut t, offset), 0, "{offset:#x}");
        }
    }
    w32(&mut t, reg::MAGIC_VALUE, 0);
    assert_eq!(r32(&mut t, reg::MAGIC_VALUE), MAGIC_VALUE);
    // Queue setup before FEATURES_OK, or on a queue that does not exist, does nothing.
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w32(&mut t, reg::QUEUE_SEL, u32::MAX);
    w32(&mut t, reg::QUEUE_NUM, 8);
    w32(&mut t, reg::QUEUE_READY, 1);
    w32(&mut t, reg::QUEUE_NOTIFY, u32::MAX);
    // Bad queue sizes keep the old one.
    w32(&mut t, reg::QUEUE_SEL, 0);
    for n in [0, 3, 32, 1 << 16] {
        w32(&mut t, reg::QUEUE_NUM, n);
        assert_eq!(t.queues[0].size(), 16, "{n}");
    }
    // Clearing a status bit (other than by a reset) is refused.
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    assert_ne!(r32(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    // Huge config offsets and garbage config writes reach the device only as offsets it ignores.
    let mut big = [0u8; 4];
    t.read(0xfff, &mut big);
    t.read(u64::MAX - 4, &mut big);
    assert_eq!(big, [0; 4]);
    t.write(0x1ff, &[1, 2, 3]);
    assert_eq!(
        seen.lock().unwrap().config_writes,
        vec![(0xff, vec![1, 2, 3])]
    );
    // A driver that sets DRIVER_OK with garbage queues gets DEVICE_NEEDS_RESET, not a crash.
    w32(&mut t, reg::QUEUE_SEL, 1);
    w32(&mut t, reg::QUEUE_DEVICE_HIGH, u32::MAX);
    w32(&mut t, reg::QUEUE_READY, 1);
    setup_queue(&mut t, 0, &DriverQueue::new(&mem, 0x1_0000, 8));
    w32(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    w32(&mut t, reg::STATUS, 0);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
}

#[test]
fn slots_and_their_command_line() {
    assert_eq!(slot(0), Some((0xd000_0000, 5)));
    assert_eq!(slot(1), Some((0xd000_1000, 6)));
    assert_eq!(slot(3), Some((0xd000_3000, 9)));
    assert_eq!(slot(layout::VIRTIO_IRQS.len()), None);
    assert_eq!(
        cmdline_fragment(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}
