//! The file system behind a virtio-fs device: fuse-backend-rs's [`PassthroughFs`] over one host directory,
//! wrapped so that the host, not the guest, enforces the share's policy.
//!
//! - Read-only shares answer `EROFS` to every request that would change the host (each mutating method
//!   PassthroughFs implements is written out here, none is left to a default) and open files only for
//!   reading. What PassthroughFs does not implement (DAX mappings, ioctl, locks, bmap, poll) is not
//!   forwarded in either mode and keeps the trait's `ENOSYS`/`ENOTTY` answer.
//! - Guest identities never reach the host: [`FileSystem::id_remap`] maps every request to uid/gid 0, which
//!   PassthroughFs treats as "do not switch credentials". Files are created as the VMM's own user, and the
//!   VMM needs no `CAP_SETUID`/`CAP_SETGID` (it may run unprivileged or as a user-namespace-mapped uid).
//! - Writable shares never plant set-user-ID/set-group-ID files or device nodes on the host: those mode bits
//!   are stripped (set-group-ID stays allowed on directories) and `mknod` of character/block devices is
//!   refused (this matters when the VMM runs as root).
//! - `O_NOATIME` is dropped from every open (see [`NOATIME`]).
//! - PassthroughFs sets the process umask to 0 when it imports its root (FUSE_INIT, FUSE_DESTROY); the
//!   share restores the previous umask, so files the guest creates are also masked by the VMM's umask.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FsOptions, OpenOptions, SetattrValid, stat64, statvfs64,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use nix::sys::stat::{Mode, umask};

/// Inode and handle numbers of PassthroughFs.
type Ino = u64;

/// Mode bits a guest may not set on host files.
const PRIVILEGE_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// `O_NOATIME`, never passed on: the guest's kernel asks for it on files the guest's caller owns (overlayfs
/// opens every lower file so, as the mounter), and the host allows it only to the file's owner or with
/// `CAP_FOWNER`, which the VMM's user rarely is (`EPERM`, and the guest's program cannot even be executed).
/// Access times of shared files are the host's business.
const NOATIME: u32 = libc::O_NOATIME as u32;

fn erofs<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EROFS))
}

/// Open flags that ask for more than reading.
fn wants_write(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY
        || flags & (libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND) != 0
}

/// A shared host directory as the FUSE server sees it.
pub(super) struct ShareFs {
    inner: PassthroughFs,
    readonly: bool,
}

impl ShareFs {
    pub(super) fn new(inner: PassthroughFs, readonly: bool) -> ShareFs {
        ShareFs { inner, readonly }
    }

    /// Runs `f` (PassthroughFs's `init`/`destroy`, which set the process umask to 0) and restores the
    /// process umask afterwards: the VMM may live in a library user's process.
    fn keeping_umask<T>(f: impl FnOnce() -> T) -> T {
        let old = umask(Mode::from_bits_truncate(0o022));
        umask(old);
        let out = f();
        umask(old);
        out
    }
}

impl FileSystem for ShareFs {
    type Inode = Ino;
    type Handle = Ino;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = Self::keeping_umask(|| self.inner.init(capable))?;
        // No DAX window on our transport.
        opts.remove(FsOptions::PERFILE_DAX);
        if self.readonly {
            opts.remove(FsOptions::WRITEBACK_CACHE);
        }
        Ok(opts)
    }

    fn destroy(&self) {
        Self::keeping_umask(|| self.inner.destroy())
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        ctx.uid = 0;
        ctx.gid = 0;
        Ok(())
    }

    // Read side: forwarded in both modes.

    fn lookup(&self, ctx: &Context, parent: Ino, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Ino, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Ino, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Option<Ino>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn readlink(&self, ctx: &Context, inode: Ino) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Ino,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Ino>, OpenOptions, Option<u32>)> {
        if self.readonly && wants_write(flags) {
            return erofs();
        }
        self.inner.open(ctx, inode, flags & !NOATIME, fuse_flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Ino,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(
            ctx,
            inode,
            handle,
            w,
            size,
            offset,
            lock_owner,
            flags & !NOATIME,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Ino,
        flags: u32,
        handle: Ino,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Ino,
        flags: u32,
    ) -> io::Result<(Option<Ino>, OpenOptions)> {
        if self.readonly && wants_write(flags) {
            return erofs();
        }
        self.inner.opendir(ctx, inode, flags & !NOATIME)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Ino,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Ino,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn releasedir(&self, ctx: &Context, inode: Ino, flags: u32, handle: Ino) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn statfs(&self, ctx: &Context, inode: Ino) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn access(&self, ctx: &Context, inode: Ino, mask: u32) -> io::Result<()> {
        if self.readonly && mask as i32 & libc::W_OK != 0 {
            return erofs();
        }
        self.inner.access(ctx, inode, mask)
    }

    fn flush(&self, ctx: &Context, inode: Ino, handle: Ino, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Ino, datasync: bool, handle: Ino) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fsyncdir(&self, ctx: &Context, inode: Ino, datasync: bool, handle: Ino) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Ino,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Ino, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Ino,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // Write side: EROFS on read-only shares, hardened pass-through otherwise.

    fn setattr(
        &self,
        ctx: &Context,
        inode: Ino,
        mut attr: stat64,
        handle: Option<Ino>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if self.readonly {
            return erofs();
        }
        if valid.contains(SetattrValid::MODE) {
            attr.st_mode &= !PRIVILEGE_BITS;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Ino,
        name: &CStr,
    ) -> io::Result<Entry> {
        if self.readonly {
            return erofs();
        }
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if self.readonly {
            return erofs();
        }
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.inner
            .mknod(ctx, parent, name, mode & !PRIVILEGE_BITS, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if self.readonly {
            return erofs();
        }
        // S_ISGID on a directory only makes new entries inherit its group: allowed.
        self.inner
            .mkdir(ctx, parent, name, mode & !libc::S_ISUID, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Ino, name: &CStr) -> io::Result<()> {
        if self.readonly {
            return erofs();
        }
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Ino, name: &CStr) -> io::Result<()> {
        if self.readonly {
            return erofs();
        }
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Ino,
        oldname: &CStr,
        newdir: Ino,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if self.readonly {
            return erofs();
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: Ino, newparent: Ino, newname: &CStr) -> io::Result<Entry> {
        if self.readonly {
            return erofs();
        }
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<Ino>, OpenOptions, Option<u32>)> {
        if self.readonly {
            return erofs();
        }
        args.mode &= !PRIVILEGE_BITS;
        args.flags &= !NOATIME;
        self.inner.create(ctx, parent, name, args)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Ino,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        if self.readonly {
            return erofs();
        }
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags & !NOATIME,
            fuse_flags,
        )
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Ino,
        handle: Ino,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        if self.readonly {
            return erofs();
        }
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Ino,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if self.readonly {
            return erofs();
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn removexattr(&self, ctx: &Context, inode: Ino, name: &CStr) -> io::Result<()> {
        if self.readonly {
            return erofs();
        }
        self.inner.removexattr(ctx, inode, name)
    }

    // Not forwarded in either mode (the trait's defaults answer ENOSYS/ENOTTY): setupmapping and
    // removemapping (no DAX window), ioctl, getlk/setlk/setlkw, bmap, poll, notify_reply, which
    // PassthroughFs does not implement either.
}
