//! The device driven through split queues laid out by hand in guest memory, with real FUSE messages,
//! against temporary host directories. No KVM needed.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, CreateIn, Dirent, EntryOut, FallocateIn, InHeader, InitIn, MkdirIn, MknodIn, Opcode,
    OpenIn, OpenOut, OutHeader, ReadIn, RenameIn, SetattrIn, WriteIn, WriteOut,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use super::*;

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 4 << 20;
const REQ_BUF: u64 = 0x10_0000;
const REPLY_BUF: u64 = 0x20_0000;
const REPLY_CAP: u32 = 0x10_0000;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Guest addresses of queue `q`'s descriptor table, available ring and used ring.
fn rings(q: u16) -> (u64, u64, u64) {
    let base = 0x1000 + u64::from(q) * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

/// A raw descriptor: address, length, flags, next.
type Desc = (u64, u32, u16, u16);

/// An activated device with hand-made queues, playing the guest driver.
struct Guest {
    mem: GuestMemoryMmap,
    dev: VirtioFs,
    irq: Arc<EventFd>,
    avail_idx: [u16; 2],
    used_idx: [u16; 2],
    unique: u64,
}

impl Guest {
    fn new(dev: VirtioFs) -> Guest {
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
    fn submit(&mut self, q: u16, descs: &[Desc], head: u16) -> Option<(u32, u32)> {
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

    /// Sends one FUSE request on the request queue; returns the reply's error and body.
    fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let header = InHeader {
            len: (size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
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
        let descs = [
            (REQ_BUF, request.len() as u32, VIRTQ_DESC_F_NEXT, 1),
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

    fn ok(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let (error, body) = self.call(opcode, nodeid, body);
        assert_eq!(
            error,
            0,
            "{opcode:?} failed: {}",
            std::io::Error::from_raw_os_error(-error)
        );
        body
    }

    fn init(&mut self) {
        let body = InitIn {
            major: 7,
            minor: 33,
            max_readahead: 0x20000,
            flags: 0,
        };
        self.ok(Opcode::Init, 0, body.as_slice());
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let (error, body) = self.call(Opcode::Lookup, parent, &cstr(name));
        if error != 0 {
            Err(-error)
        } else {
            Ok(parse(&body))
        }
    }

    fn open(&mut self, op: Opcode, ino: u64, flags: i32) -> Result<u64, i32> {
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

    fn read(&mut self, ino: u64, fh: u64) -> Vec<u8> {
        let body = ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        };
        self.ok(Opcode::Read, ino, body.as_slice())
    }

    fn readdir(&mut self, ino: u64) -> Vec<String> {
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

    fn create(
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

    fn write(&mut self, ino: u64, fh: u64, data: &[u8]) -> Result<u32, i32> {
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

    fn errno(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> i32 {
        -self.call(opcode, nodeid, body).0
    }
}

/// Reads a `T` from the start of `bytes` (no alignment needed).
fn parse<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = size_of::<T>();
    value.as_mut_slice().copy_from_slice(&bytes[..n]);
    value
}

fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

/// A temporary share (removed on drop, also when a test fails): `hello.txt`, `sub/inner`, and two
/// symlinks that point out of it.
fn share() -> TempDir {
    let dir = TempDir::new_with_prefix("/tmp/sandbox-virtiofs-").unwrap();
    let p = dir.as_path();
    std::fs::write(p.join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::create_dir(p.join("sub")).unwrap();
    std::fs::write(p.join("sub/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("/etc", p.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../..", p.join("up-link")).unwrap();
    dir
}

/// Names, sizes and modes of everything under `dir`.
fn snapshot(dir: &Path) -> Vec<(String, u64, u32)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            all.push((entry.path().display().to_string(), meta.len(), meta.mode()));
        }
    }
    all.sort();
    all
}

#[test]
fn new_rejects_bad_tags_and_paths() {
    let dir = share();
    assert!(matches!(
        VirtioFs::new("", dir.as_path(), true),
        Err(FsError::Tag { .. })
    ));
    assert!(matches!(
        VirtioFs::new(&"x".repeat(37), dir.as_path(), true),
        Err(FsError::Tag { .. })
    ));
    let missing = dir.as_path().join("missing");
    let err = VirtioFs::new("t", &missing, true).unwrap_err();
    assert!(matches!(err, FsError::Resolve { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    let err = VirtioFs::new("t", dir.as_path().join("hello.txt"), true).unwrap_err();
    assert!(matches!(err, FsError::NotADirectory { .. }), "{err}");
}

#[test]
fn config_space_holds_tag_and_one_request_queue() {
    let dir = share();
    let dev = VirtioFs::new("rootfs", dir.as_path(), true).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let mut config = [0xffu8; CONFIG_LEN];
    dev.read_config(0, &mut config);
    assert_eq!(&config[..6], b"rootfs");
    assert!(config[6..TAG_MAX_LEN].iter().all(|&b| b == 0));
    assert_eq!(config[TAG_MAX_LEN..], 1u32.to_le_bytes());
    let mut tail = [0xffu8; 8];
    dev.read_config(38, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0, 0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn lookup_open_read_readdir() {
    let dir = share();
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), true).unwrap());
    g.init();
    assert!(
        g.irq.read().unwrap() >= 1,
        "the device interrupts after a reply"
    );

    let hello = g.lookup(1, "hello.txt").unwrap();
    assert_eq!(hello.attr.size, 20);
    let fh = g.open(Opcode::Open, hello.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(hello.nodeid, fh), b"hello from the host\n");
    assert_eq!(g.lookup(1, "nope").unwrap_err(), libc::ENOENT);

    let names = g.readdir(1);
    for want in ["abs-link", "hello.txt", "sub", "up-link"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let sub = g.lookup(1, "sub").unwrap();
    let inner = g.lookup(sub.nodeid, "inner").unwrap();
    let fh = g.open(Opcode::Open, inner.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(inner.nodeid, fh), b"inner");
    assert_eq!(g.dev.stats().bad_requests(), 0);
}

#[test]
fn readonly_share_refuses_every_change() {
    let dir = share();
    let before = snapshot(dir.as_path());
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), true).unwrap());
    g.init();
    let hello = g.lookup(1, "hello.txt").unwrap();
    let sub = g.lookup(1, "sub").unwrap();

    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
        libc::O_RDONLY | libc::O_CREAT,
    ] {
        assert_eq!(
            g.open(Opcode::Open, hello.nodeid, flags),
            Err(libc::EROFS),
            "open flags {flags:#o}"
        );
    }
    let fh = g.open(Opcode::Open, hello.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.write(hello.nodeid, fh, b"pwned"), Err(libc::EROFS));
    let create = g.create(1, "new", libc::O_WRONLY | libc::O_CREAT, 0o644);
    assert_eq!(create.map(|_| ()), Err(libc::EROFS));

    let mkdir = [
        MkdirIn {
            mode: 0o755,
            umask: 0,
        }
        .as_slice(),
        &cstr("newdir"),
    ]
    .concat();
    assert_eq!(g.errno(Opcode::Mkdir, 1, &mkdir), libc::EROFS);
    assert_eq!(g.errno(Opcode::Unlink, 1, &cstr("hello.txt")), libc::EROFS);
    assert_eq!(g.errno(Opcode::Rmdir, 1, &cstr("sub")), libc::EROFS);
    let setattr = SetattrIn {
        valid: 1 | 8, // FATTR_MODE | FATTR_SIZE
        mode: 0o777,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        g.errno(Opcode::Setattr, hello.nodeid, setattr.as_slice()),
        libc::EROFS
    );
    let rename = [
        RenameIn { newdir: sub.nodeid }.as_slice(),
        &cstr("hello.txt"),
        &cstr("moved"),
    ]
    .concat();
    assert_eq!(g.errno(Opcode::Rename, 1, &rename), libc::EROFS);
    let symlink = [cstr("evil"), cstr("/")].concat();
    assert_eq!(g.errno(Opcode::Symlink, 1, &symlink), libc::EROFS);
    let mknod = MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    };
    assert_eq!(
        g.errno(
            Opcode::Mknod,
            1,
            &[mknod.as_slice(), &cstr("fifo")].concat()
        ),
        libc::EROFS
    );
    let fallocate = FallocateIn {
        fh,
        length: 1 << 20,
        ..Default::default()
    };
    assert_eq!(
        g.errno(Opcode::Fallocate, hello.nodeid, fallocate.as_slice()),
        libc::EROFS
    );
    let access = AccessIn {
        mask: libc::W_OK as u32,
        padding: 0,
    };
    assert_eq!(
        g.errno(Opcode::Access, hello.nodeid, access.as_slice()),
        libc::EROFS
    );

    assert_eq!(
        snapshot(dir.as_path()),
        before,
        "the host directory changed"
    );
    assert_eq!(
        std::fs::read(dir.as_path().join("hello.txt")).unwrap(),
        b"hello from the host\n"
    );
}

#[test]
fn writable_share_lands_on_the_host_without_privilege_bits() {
    let dir = share();
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), false).unwrap());
    g.init();
    let (entry, fh) = g
        .create(1, "new.txt", libc::O_WRONLY | libc::O_CREAT, 0o4755)
        .unwrap();
    assert_eq!(g.write(entry.nodeid, fh, b"from the guest"), Ok(14));
    let host = dir.as_path().join("new.txt");
    assert_eq!(std::fs::read(&host).unwrap(), b"from the guest");
    assert_eq!(
        std::fs::metadata(&host).unwrap().mode() & 0o6000,
        0,
        "set-user-ID bit reached the host"
    );

    let mkdir = [
        MkdirIn {
            mode: 0o755,
            umask: 0,
        }
        .as_slice(),
        &cstr("made"),
    ]
    .concat();
    g.ok(Opcode::Mkdir, 1, &mkdir);
    assert!(dir.as_path().join("made").is_dir());
    let chardev = MknodIn {
        mode: libc::S_IFCHR | 0o666,
        rdev: libc::makedev(1, 3) as u32,
        ..Default::default()
    };
    assert_eq!(
        g.errno(
            Opcode::Mknod,
            1,
            &[chardev.as_slice(), &cstr("null")].concat()
        ),
        libc::EPERM
    );
    assert!(!dir.as_path().join("null").exists());
    let setattr = SetattrIn {
        valid: 1, // FATTR_MODE
        mode: libc::S_IFREG | 0o6777,
        ..Default::default()
    };
    g.ok(Opcode::Setattr, entry.nodeid, setattr.as_slice());
    assert_eq!(
        std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777,
        0o777
    );
}

#[test]
fn symlinks_are_not_followed_on_the_host() {
    let dir = share();
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), true).unwrap());
    g.init();
    for (name, target) in [("abs-link", "/etc"), ("up-link", "../../..")] {
        let link = g.lookup(1, name).unwrap();
        assert_eq!(
            link.attr.mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{name} is returned as a symlink"
        );
        assert_eq!(g.ok(Opcode::Readlink, link.nodeid, &[]), target.as_bytes());
        // The host never opens or walks through the link.
        assert!(g.open(Opcode::Open, link.nodeid, libc::O_RDONLY).is_err());
        assert!(
            g.open(Opcode::Opendir, link.nodeid, libc::O_RDONLY)
                .is_err()
        );
        assert!(g.lookup(link.nodeid, "passwd").is_err());
    }
}

#[test]
fn dotdot_at_the_root_stays_in_the_share() {
    let dir = share();
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), true).unwrap());
    g.init();
    let up = g.lookup(1, "..").unwrap();
    assert_eq!(up.nodeid, 1, "`..` of the root is the root");
    let names = g.readdir(up.nodeid);
    assert!(names.iter().any(|n| n == "hello.txt"), "{names:?}");
    let sub = g.lookup(1, "sub").unwrap();
    assert_eq!(g.lookup(sub.nodeid, "..").unwrap().nodeid, 1);
    assert_eq!(g.lookup(1, "../etc").unwrap_err(), libc::EINVAL);
    assert_eq!(g.lookup(1, "/etc").unwrap_err(), libc::EINVAL);
}

#[test]
fn malformed_chains_are_counted_not_fatal() {
    let dir = share();
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), true).unwrap());
    let stats = g.dev.stats();
    g.init();
    let w = VIRTQ_DESC_F_WRITE;
    let n = VIRTQ_DESC_F_NEXT;

    // A readable part too short for a FUSE header.
    let short = [(REQ_BUF, 8, n, 1), (REPLY_BUF, 4096, w, 0)];
    assert_eq!(g.submit(1, &short, 0), Some((0, 0)));
    assert_eq!(stats.bad_requests(), 1);
    // Buffers outside guest memory, and lengths far beyond it.
    let outside = [(0xffff_ffff_0000, 64, n, 1), (REPLY_BUF, 4096, w, 0)];
    assert_eq!(g.submit(1, &outside, 0), Some((0, 0)));
    let huge = [(REQ_BUF, u32::MAX, n, 1), (REPLY_BUF, u32::MAX, w, 0)];
    assert_eq!(g.submit(1, &huge, 0), Some((0, 0)));
    let reply_outside = [(REQ_BUF, 64, n, 1), (MEM_SIZE as u64 - 8, 4096, w, 0)];
    assert_eq!(g.submit(1, &reply_outside, 0), Some((0, 0)));
    // A descriptor loop.
    let looped = [(REQ_BUF, 64, n, 1), (REPLY_BUF, 64, n | w, 0)];
    assert_eq!(g.submit(1, &looped, 0).map(|(id, _)| id), Some(0));
    // A head index outside the table.
    assert_eq!(g.submit(1, &short, 999), None);
    // Unknown queues; a hiprio queue with the same garbage.
    g.dev.queue_notify(7);
    assert_eq!(g.submit(0, &short, 0), Some((0, 0)));
    assert!(stats.bad_requests() >= 7, "{}", stats.bad_requests());

    // The device still serves well-formed requests.
    let hello = g.lookup(1, "hello.txt").unwrap();
    assert_eq!(hello.attr.size, 20);
}

#[test]
fn notify_before_activate_and_after_reset_is_ignored() {
    let dir = share();
    let mut dev = VirtioFs::new("share", dir.as_path(), true).unwrap();
    dev.queue_notify(1);
    let mut g = Guest::new(dev);
    g.init();
    g.dev.reset();
    g.dev.queue_notify(1);
    assert_eq!(g.dev.stats().bad_requests(), 0);
}
