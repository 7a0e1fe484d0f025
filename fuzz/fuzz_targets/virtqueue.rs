//! A virtio split queue whose guest memory is all fuzz bytes: the descriptor table, the available ring and
//! every buffer are the guest driver's to forge (and, for virtio-net, the host peer's stream too). A device front-end pops chains with `virtio-queue` and walks
//! them the way our devices do (readable then writable descriptors, `Reader`/`Writer`, `add_used`,
//! notification suppression). Whatever the bytes, it must end: no panic, no hang, no access outside guest
//! memory.
//!
//! Input: a 16-byte header (queue size, ring addresses, event-index flag, start indices), then the guest's
//! memory from address 0.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use libfuzzer_sys::fuzz_target;
use sandkasten_vmm::virtio::{Interrupt, VirtioDevice};
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Guest memory: one region of 64 KiB at address 0 (a second, disjoint region tests the gap between them).
const MEM: u64 = 0x1_0000;
const GAP_REGION: u64 = 0x2_0000;
/// The largest queue the front-end accepts (as our devices do).
const MAX_QUEUE: u16 = 256;
/// Chains walked per input: a forged ring cannot make the walk unbounded.
const MAX_CHAINS: usize = 1024;
/// Bytes copied out of or into one descriptor.
const MAX_COPY: usize = 1 << 16;

/// The queue's configuration as the driver wrote it to the transport's registers.
#[derive(Clone, Copy)]
struct Header {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
}

impl Header {
    const LEN: usize = 16;

    fn parse(b: &[u8]) -> Option<Header> {
        let b: &[u8; Header::LEN] = b.get(..Header::LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        // Addresses in 16-byte units: mostly inside memory, sometimes beyond it or in the gap.
        let addr = |i: usize| u64::from(u16_at(i)) * 16 + u64::from(b[15] & 0x80) * 0x200;
        Some(Header {
            size: u16_at(0),
            desc: addr(2),
            avail: addr(4),
            used: addr(6),
            event_idx: b[8] & 1 != 0,
            next_avail: u16_at(9),
            next_used: u16_at(11),
        })
    }

    /// A queue as the transport would hand it to the device after DRIVER_OK (invalid settings are refused
    /// by the setters, as the transport refuses them).
    fn queue(&self, max: u16) -> Queue {
        let mut q = Queue::new(max).expect("power of two");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(self.event_idx);
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
        q.set_ready(true);
        q
    }
}

fn memory(contents: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM as usize),
        (GuestAddress(GAP_REGION), 0x1000),
    ])
    .expect("guest memory");
    let n = contents.len().min(MEM as usize);
    mem.write_slice(&contents[..n], GuestAddress(0))
        .expect("inside the first region");
    mem
}

/// The reference front-end: what every device of ours does with a queue.
fn walk(queue: &mut Queue, mem: &GuestMemoryMmap) {
    if !queue.is_valid(mem) {
        return;
    }
    let _ = queue.disable_notification(mem);
    for _ in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        // Descriptor by descriptor, bounded copies.
        let mut buf = vec![0u8; 512];
        for d in chain.clone().readable() {
            let n = (d.len() as usize).min(MAX_COPY).min(buf.len());
            let _ = mem.read_slice(&mut buf[..n], d.addr());
        }
        let mut written = 0u32;
        for d in chain.clone().writable() {
            let n = (d.len() as usize).min(MAX_COPY).min(buf.len());
            if mem.write_slice(&buf[..n], d.addr()).is_ok() {
                written = written.saturating_add(n as u32);
            }
        }
        // As a stream: what virtio-fs does with a FUSE request and its reply.
        if let Ok(mut r) = Reader::new(mem, chain.clone()) {
            let mut sink = [0u8; 4096];
            let want = r.available_bytes().min(MAX_COPY);
            let mut got = 0;
            while got < want {
                match r.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        }
        if let Ok(mut w) = Writer::new(mem, chain) {
            let n = w.available_bytes().min(4096);
            let _ = w.write_all(&vec![0xa5; n]);
            written = w.bytes_written() as u32;
        }
        let _ = queue.add_used(mem, head, written);
    }
    let _ = queue.enable_notification(mem);
    let _ = queue.needs_notification(mem);
}

/// Our virtio devices, fresh for each input.
///
/// ==== DEVICES: add each virtio device of `vmm/src/virtio/` here once it exists (console, fs, net) ====
/// e.g. `Box::new(sandkasten_vmm::virtio::console::Console::new(...))`. `drive` below hands it queues built
/// from the same fuzz header, activates it and notifies every queue. `stream` is what a hostile host peer
/// (passt) sends; the host ends returned must live until the devices are reset.
fn devices(stream: &[u8]) -> (Vec<Box<dyn VirtioDevice>>, Vec<UnixStream>) {
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut hosts = Vec::new();
    // virtio-net: passt's end has already sent `stream` (frame lengths and frames as the bytes fall).
    if let Ok((ours, theirs)) = UnixStream::pair() {
        let _ = theirs.set_nonblocking(true);
        let _ = (&theirs).write(stream);
        out.push(Box::new(sandkasten_vmm::virtio::net::VirtioNet::new(
            ours,
            [0x02, 0, 0, 0, 0, 1],
        )));
        hosts.push(theirs);
    }
    // Console: two named ports whose host ends are dropped at once (a vanished host is one of the cases).
    if let Ok((console, _hosts)) =
        sandkasten_vmm::virtio::console::VirtioConsole::with_socketpairs(&["a", "b"])
    {
        out.push(Box::new(console));
    }
    // virtio-fs over a small read-only directory made once per process.
    static SHARE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = SHARE.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("sandbox-fuzz-share-{}", std::process::id()));
        let _ = std::fs::create_dir_all(d.join("sub"));
        let _ = std::fs::write(d.join("file"), b"fuzz");
        d
    });
    if let Ok(fs) = sandkasten_vmm::virtio::fs::VirtioFs::new("fuzz", dir, true) {
        out.push(Box::new(fs));
    }
    (out, hosts)
}

/// Activates `dev` with queues the fuzz header describes (queue `i` shifted by `i` pages, so that each has
/// rings of its own) and notifies each queue, then resets it.
fn drive(dev: &mut dyn VirtioDevice, header: &Header, mem: &GuestMemoryMmap) {
    let queues = dev
        .queue_max_sizes()
        .iter()
        .enumerate()
        .filter(|(_, max)| Queue::new(**max).is_ok())
        .map(|(i, &max)| {
            let shift = i as u64 * 0x1000;
            let h = Header {
                desc: header.desc + shift,
                avail: header.avail + shift,
                used: header.used + shift,
                ..*header
            };
            h.queue(max)
        })
        .collect::<Vec<_>>();
    let n = queues.len() as u16;
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Interrupt::new(Arc::new(AtomicU32::new(0)), Arc::new(irq));
    if dev.activate(mem.clone(), queues, interrupt).is_ok() {
        for i in 0..n {
            dev.queue_notify(i);
        }
    }
    dev.reset();
}

fuzz_target!(|data: &[u8]| {
    let Some(header) = Header::parse(data) else {
        return;
    };
    let mem = memory(&data[Header::LEN..]);
    let mut queue = header.queue(MAX_QUEUE);
    walk(&mut queue, &mem);
    // A second pass over the same rings after the device published used entries (indices wrapped around).
    walk(&mut queue, &mem);
    // The guest memory's first bytes double as the host peer's stream.
    let stream = &data[Header::LEN..data.len().min(Header::LEN + 4096)];
    let (devices, _hosts) = devices(stream);
    for mut dev in devices {
        drive(dev.as_mut(), &header, &mem);
    }
});
