//! The test driver: an activated [`VirtioFs`] whose two split queues are laid out by hand in guest memory,
//! and helpers that send real FUSE requests through them as the guest kernel would.

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, Dirent, EntryOut, ForgetIn, InHeader, InitIn, Opcode, OpenIn, OpenOut, OutHeader,
    ReadIn, WriteIn, WriteOut,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::{QUEUE_SIZES, VirtioFs};
use crate::virtio::{Interrupt, VirtioDevice};

pub(super) const QSIZE: u16 = 16;
pub(super) const MEM_SIZE: usize = 4 << 20;
pub(super) const REQ_BUF: u64 = 0x10_0000;
pub(super) const REPLY_BUF: u64 = 0x20_0000;
pub(super) const REPLY_CAP: u32 = 0x10_0000;
pub(super) const VIRTQ_DESC_F_NEXT: u16 = 1;
pub(super) const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Guest addresses of queue `q`'s descriptor table, available ring and used ring.
fn rings(q: u16) -> (u64, u64, u64) {
    let base = 0x1000 + u64::from(q) * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

/// A raw descriptor: address, length, flags, next.
pub(super) type Desc = (u64, u32, u16, u16);

/// An activated device with hand-made queues, playing the guest driver.
pub(super) struct Guest {
    pub(super) mem: GuestMemoryMmap,
    pub(super) dev: VirtioFs,
    pub(super) irq: Arc<EventFd>,
    avail_idx: [u16; 2],
    used_idx: [u16; 2],
    unique: u64,
}

impl Guest {
    pub(super) fn new(dev: VirtioFs) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let queues = (0..2)
            .map(|q| {
                let (desc, avail, used) = rings(q);
                let mut queue = Queue::new(QUEUE_SIZES[usize::from(q)]).unwrap();
                queue.set_size(QSIZE);
                queue.set_desc_table_address(Some(desc as u32), Some(0));
                queue.set_avail_ring_address(Some(avail as u32), Some(0));
                queue.set_used_ring_address(Some(used as u32), Some(0));
                queue.set_ready(true);
                queue
            })
            .collect();
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let interrupt = Interrupt::new(Arc::new(AtomicU32::new(0)), irq.clone());
        let mut dev = dev;
        dev.activate(mem.clone(), queues, interrupt).unwrap();
        Guest {
            mem,
            dev,
            irq,
            avail_idx: [0; 2],
            used_idx: [0; 2],
            unique: 0,
        }
    }

    /// Writes `descs` to the table of queue `q`, offers `head`, notifies; returns the used element if
    /// the device returned one.
    pub(super) fn submit(&mut self, q: u16, descs: &[Desc], head: u16) -> Option<(u32, u32)> {
        let (table, avail, used) = rings(q);
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let at = table + 16 * i as u64;
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let qi = usize::from(q);
        let slot = u64::from(self.avail_idx[qi] % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx[qi] = self.avail_idx[qi].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[qi], GuestAddress(avail + 2))
            .unwrap();
        self.dev.queue_notify(q);

        let used_now: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        if used_now == self.used_idx[qi] {
            return None;
        }
        let slot = u64::from(self.used_idx[qi] % QSIZE);
        self.used_idx[qi] = used_now;
        let id: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot))
            .unwrap();
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 8 + 8 * slot))
            .unwrap();
        Some((id, len))
    }

    /// A FUSE request from guest uid/gid 1000, written to the request buffer; returns its length.
    fn write_request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> u32 {
        self.unique += 1;
        let header = InHeader {
            len: (size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 1000,
            gid: 1000,
            pid: 1,
            padding: 0,
        };
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(body);
        self.mem
            .write_slice(&request, GuestAddress(REQ_BUF))
            .unwrap();
        request.len() as u32
    }

    /// Sends FORGET on the high-priority queue as the guest kernel does (no reply buffer); returns the
    /// used length.
    pub(super) fn forget(&mut self, nodeid: u64, nlookup: u64) -> u32 {
        let len = self.write_request(
            Opcode::Forget as u32,
            nodeid,
            ForgetIn { nlookup }.as_slice(),
        );
        let (id, used) = self
            .submit(0, &[(REQ_BUF, len, 0, 0)], 0)
            .expect("the device returned the chain");
        assert_eq!(id, 0);
        used
    }

    /// Sends any opcode with any body on the request queue; returns the used length, if any.
    pub(super) fn send_raw(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Option<u32> {
        let len = self.write_request(opcode, nodeid, body);
        let descs = [
            (REQ_BUF, len, VIRTQ_DESC_F_NEXT, 1),
            (REPLY_BUF, REPLY_CAP, VIRTQ_DESC_F_WRITE, 0),
        ];
        self.submit(1, &descs, 0).map(|(_, len)| len)
    }

    /// Sends one FUSE request on the request queue; returns the reply's error and body.
    pub(super) fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        let len = self.write_request(opcode as u32, nodeid, body);
        let descs = [
            (REQ_BUF, len, VIRTQ_DESC_F_NEXT, 1),
            (REPLY_BUF, REPLY_CAP, VIRTQ_DESC_F_WRITE, 0),
        ];
        let (id, len) = self
            .submit(1, &descs, 0)
            .expect("the device returned the chain");
        assert_eq!(id, 0);
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_BUF))
            .unwrap();
        let out: OutHeader = parse(&reply);
        assert_eq!(out.unique, self.unique);
        assert_eq!(out.len, len);
        (out.error, reply[size_of::<OutHeader>()..].to_vec())
    }

    pub(super) fn ok(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let (error, body) = self.call(opcode, nodeid, body);
        assert_eq!(
            error,
            0,
            "{opcode:?} failed: {}",
            std::io::Error::from_raw_os_error(-error)
        );
        body
    }

    pub(super) fn init(&mut self) {
        let body = InitIn {
            major: 7,
            minor: 33,
            max_readahead: 0x20000,
            flags: 0,
        };
        self.ok(Opcode::Init, 0, body.as_slice());
    }

    pub(super) fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let (error, body) = self.call(Opcode::Lookup, parent, &cstr(name));
        if error != 0 {
            Err(-error)
        } else {
            Ok(parse(&body))
        }
    }

    pub(super) fn open(&mut self, op: Opcode, ino: u64, flags: i32) -> Result<u64, i32> {
        let body = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let (error, body) = self.call(op, ino, body.as_slice());
        if error != 0 {
            Err(-error)
        } else {
            Ok(parse::<OpenOut>(&body).fh)
        }
    }

    pub(super) fn read(&mut self, ino: u64, fh: u64) -> Vec<u8> {
        let body = ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        };
        self.ok(Opcode::Read, ino, body.as_slice())
    }

    pub(super) fn readdir(&mut self, ino: u64) -> Vec<String> {
        let fh = self.open(Opcode::Opendir, ino, libc::O_RDONLY).unwrap();
        let body = ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        };
        let reply = self.ok(Opcode::Readdir, ino, body.as_slice());
        let mut names = Vec::new();
        let mut rest = &reply[..];
        while rest.len() >= size_of::<Dirent>() {
            let dirent: Dirent = parse(rest);
            let start = size_of::<Dirent>();
            let name = &rest[start..start + dirent.namelen as usize];
            names.push(String::from_utf8(name.to_vec()).unwrap());
            let entry = (start + dirent.namelen as usize).next_multiple_of(8);
            rest = &rest[entry.min(rest.len())..];
        }
        names.sort();
        names
    }

    pub(super) fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(EntryOut, u64), i32> {
        let args = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let (error, body) = self.call(
            Opcode::Create,
            parent,
            &[args.as_slice(), &cstr(name)].concat(),
        );
        if error != 0 {
            return Err(-error);
        }
        let entry: EntryOut = parse(&body);
        let open: OpenOut = parse(&body[size_of::<EntryOut>()..]);
        Ok((entry, open.fh))
    }

    pub(super) fn write(&mut self, ino: u64, fh: u64, data: &[u8]) -> Result<u32, i32> {
        let args = WriteIn {
            fh,
            size: data.len() as u32,
            ..Default::default()
        };
        let (error, body) = self.call(Opcode::Write, ino, &[args.as_slice(), data].concat());
        if error != 0 {
            Err(-error)
        } else {
            Ok(parse::<WriteOut>(&body).size)
        }
    }

    pub(super) fn errno(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> i32 {
        -self.call(opcode, nodeid, body).0
    }
}

/// Reads a `T` from the start of `bytes` (no alignment needed).
pub(super) fn parse<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = size_of::<T>();
    value.as_mut_slice().copy_from_slice(&bytes[..n]);
    value
}

pub(super) fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}
