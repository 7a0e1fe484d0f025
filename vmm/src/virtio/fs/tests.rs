//! The device driven through split queues laid out by hand in guest memory, with real FUSE messages,
//! against temporary host directories. No KVM needed.

mod guest;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, FallocateIn, MkdirIn, MknodIn, Opcode, RenameIn, SetattrIn,
};
use vm_memory::ByteValued;
use vmm_sys_util::tempdir::TempDir;

use super::*;
use guest::{Guest, MEM_SIZE, REPLY_BUF, REQ_BUF, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, cstr};

/// A temporary share (removed on drop, also when a test fails): `hello.txt`, `sub/inner`, and two
/// symlinks that point out of it.
fn share() -> TempDir {
    let dir = TempDir::new_with_prefix("/tmp/sandbox-virtiofs-").unwrap();
    populate(dir.as_path());
    dir
}

fn populate(p: &Path) {
    std::fs::write(p.join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::create_dir(p.join("sub")).unwrap();
    std::fs::write(p.join("sub/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("/etc", p.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../..", p.join("up-link")).unwrap();
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
fn hiprio_queue_takes_forget_without_reply() {
    let dir = share();
    let mut g = Guest::new(VirtioFs::new("share", dir.as_path(), true).unwrap());
    g.init();
    let hello = g.lookup(1, "hello.txt").unwrap();
    assert_eq!(g.forget(hello.nodeid, 1), 0);
    // Forgetting more than was looked up, or an unknown inode, is harmless.
    assert_eq!(g.forget(hello.nodeid, 1000), 0);
    assert_eq!(g.forget(0xdead_beef, 1), 0);
    assert_eq!(g.dev.stats().bad_requests(), 0);
    assert_eq!(g.lookup(1, "hello.txt").unwrap().attr.size, 20);
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

/// The unprivileged user the VMM is tested as when the tests run as root.
const NOBODY: u32 = 65534;

/// Runs `f` on a thread with the credentials of an unprivileged VMM: when the tests run as root, that
/// thread alone switches to uid/gid [`NOBODY`] without supplementary groups, which also clears its
/// capabilities (raw syscalls: glibc's wrappers would change every thread of the test process).
/// Returns `f`'s result and whether the switch happened.
fn as_unprivileged<T: Send>(f: impl FnOnce() -> T + Send) -> (T, bool) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let switched = nix::unistd::geteuid().is_root();
            if switched {
                // SAFETY: setgroups with an empty list reads no memory; the return value is checked.
                let rc = unsafe {
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                };
                assert_eq!(rc, 0, "setgroups: {}", std::io::Error::last_os_error());
                // SAFETY: setresgid takes plain integers; the return value is checked.
                let rc = unsafe { libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY) };
                assert_eq!(rc, 0, "setresgid: {}", std::io::Error::last_os_error());
                // SAFETY: setresuid takes plain integers; the return value is checked.
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) };
                assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
                let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                assert!(
                    status.lines().any(|l| l == "CapEff:\t0000000000000000"),
                    "{status}"
                );
            } else {
                eprintln!(
                    "as_unprivileged: not root, running as the test user (uid {})",
                    nix::unistd::geteuid()
                );
            }
            (f(), switched)
        })
        .join()
        .unwrap()
    })
}

#[test]
fn works_as_an_unprivileged_vmm() {
    let dir = share();
    let root = nix::unistd::geteuid().is_root();
    if root {
        // A file only root may read, then the share handed to the unprivileged user.
        std::fs::write(dir.as_path().join("secret"), b"root only").unwrap();
        std::fs::set_permissions(
            dir.as_path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        for path in [".", "hello.txt", "sub", "sub/inner", "abs-link", "up-link"] {
            std::os::unix::fs::lchown(dir.as_path().join(path), Some(NOBODY), Some(NOBODY))
                .unwrap();
        }
    }
    let path = dir.as_path().to_owned();
    let (owner, switched) = as_unprivileged(move || {
        let mut g = Guest::new(VirtioFs::new("share", &path, false).unwrap());
        g.init();
        let hello = g.lookup(1, "hello.txt").unwrap();
        let fh = g.open(Opcode::Open, hello.nodeid, libc::O_RDONLY).unwrap();
        assert_eq!(g.read(hello.nodeid, fh), b"hello from the host\n");
        // The guest user (uid 1000 in every request) creates files and directories: PassthroughFs would
        // switch to uid 1000 for these, which an unprivileged VMM cannot do; the share maps it away.
        let (entry, fh) = g
            .create(1, "mine.txt", libc::O_WRONLY | libc::O_CREAT, 0o644)
            .unwrap();
        assert_eq!(g.write(entry.nodeid, fh, b"guest data"), Ok(10));
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
        if root {
            // Host permissions still hold for the VMM's own user (the root-only file exists when the test
            // runs as root and the VMM thread as nobody).
            let secret = g.lookup(1, "secret").unwrap();
            assert_eq!(
                g.open(Opcode::Open, secret.nodeid, libc::O_RDONLY),
                Err(libc::EACCES)
            );
        }
        assert_eq!(g.dev.stats().bad_requests(), 0);
        std::fs::metadata(path.join("mine.txt")).unwrap().uid()
    });
    assert_eq!(
        std::fs::read(dir.as_path().join("mine.txt")).unwrap(),
        b"guest data"
    );
    assert!(dir.as_path().join("made").is_dir());
    if switched {
        assert_eq!(
            owner, NOBODY,
            "files are created as the VMM's own user, not the guest's"
        );
        assert_eq!(
            std::fs::metadata(dir.as_path().join("made")).unwrap().uid(),
            NOBODY
        );
    }
}

#[test]
fn garbage_bodies_for_every_opcode_do_not_panic() {
    for readonly in [true, false] {
        // The share is a subdirectory, next to a file the guest must not reach.
        let outer = TempDir::new_with_prefix("/tmp/sandbox-virtiofs-").unwrap();
        let dir = outer.as_path().join("share");
        std::fs::create_dir(&dir).unwrap();
        populate(&dir);
        std::fs::write(outer.as_path().join("sibling"), b"outside").unwrap();
        let outside_before = snapshot(outer.as_path())
            .into_iter()
            .filter(|(path, _, _)| !path.starts_with(&*dir.to_string_lossy()))
            .collect::<Vec<_>>();

        let mut g = Guest::new(VirtioFs::new("share", &dir, readonly).unwrap());
        g.init();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for opcode in 1..=52u32 {
            for len in [0usize, 3, 8, 16, 40, 64, 300] {
                for nodeid in [0, 1, 2, next()] {
                    let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    g.send_raw(opcode, nodeid, &body);
                }
            }
        }
        // Still serving, and nothing changed outside the share.
        assert!(g.lookup(1, "sub").is_ok());
        let outside_after = snapshot(outer.as_path())
            .into_iter()
            .filter(|(path, _, _)| !path.starts_with(&*dir.to_string_lossy()))
            .collect::<Vec<_>>();
        assert_eq!(outside_after, outside_before);
    }
}
