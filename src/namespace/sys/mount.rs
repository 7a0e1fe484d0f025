//! Mounts and the paths they need: `mount(2)`, `mount_setattr(2)` with its pre-5.12 fallback, `umount2`,
//! `pivot_root`, and the directories, files, links and `O_PATH` opens the namespace view makes.

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_int, c_long, c_ulong, c_void};

use super::{SysResult, check, close, write_all};

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: c_int = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// `mount(2)`.
pub fn mount(
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            opt_ptr(src),
            dst.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast::<c_void>(),
        )
    };
    check(ret as c_long).map(drop)
}

/// Sets mount attributes (`MOUNT_ATTR_*`) on the mount at `path`, and on all below it when `recursive`.
/// Falls back to a bind remount (top mount only) on kernels without `mount_setattr(2)` (before 5.12).
pub fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is NUL-terminated; `attr` is a valid mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match check(ret) {
        Err(libc::ENOSYS) => remount_with(path, set),
        r => r.map(drop),
    }
}

/// The pre-5.12 way: a bind remount that keeps the flags the kernel locked on the mount.
fn remount_with(path: &CStr, set: u64) -> SysResult<()> {
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) } as c_long)?;
    let keep = libc::ST_RDONLY
        | libc::ST_NOSUID
        | libc::ST_NODEV
        | libc::ST_NOEXEC
        | libc::ST_NOATIME
        | libc::ST_NODIRATIME
        | libc::ST_RELATIME;
    let mut flags = (st.f_flag & keep) | libc::MS_REMOUNT | libc::MS_BIND;
    for (attr, ms) in [
        (MOUNT_ATTR_RDONLY, libc::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, libc::MS_NOSUID),
        (MOUNT_ATTR_NODEV, libc::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
    ] {
        if set & attr != 0 {
            flags |= ms;
        }
    }
    mount(None, path, None, flags, None)
}

/// `umount2(2)`.
pub fn umount2(path: &CStr, flags: c_int) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::umount2(path.as_ptr(), flags) } as c_long).map(drop)
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: both paths are NUL-terminated.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `mkdir(2)`; an existing entry is not an error.
pub fn mkdir(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) } as c_long) {
        Err(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// Whether `path` (symlinks followed, as `mount(2)` follows them) is a directory; `None` when it does not
/// exist (a missing component, or one that is not a directory).
pub fn is_dir(path: &CStr) -> SysResult<Option<bool>> {
    // SAFETY: an all-zero stat is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    match check(unsafe { libc::stat(path.as_ptr(), &mut st) } as c_long) {
        Err(libc::ENOENT) | Err(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
        Ok(_) => Ok(Some(st.st_mode & libc::S_IFMT == libc::S_IFDIR)),
    }
}

/// Creates an empty regular file (a mount point for a file bind) if none exists.
pub fn touch(path: &CStr) -> SysResult<()> {
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `path` is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags, 0o644) } as c_long)?;
    close(fd as RawFd);
    Ok(())
}

/// Creates `path` (mode 0644) holding `contents`.
pub fn write_file(path: &CStr, contents: &[u8]) -> SysResult<()> {
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `path` is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags, 0o644) } as c_long)? as RawFd;
    let written = write_all(fd, contents);
    close(fd);
    written
}

/// Creates `path` with a copy of the file open as `from` (from its start, at most `limit` bytes): the kernel
/// copies with `sendfile(2)`; where the source's filesystem cannot (`EINVAL`, `ENOSYS`), through a buffer
/// on the stack. No allocation.
pub fn copy_file(from: RawFd, path: &CStr, limit: u64) -> SysResult<()> {
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `path` is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags, 0o644) } as c_long)? as RawFd;
    let copied = copy_into(from, fd, limit);
    close(fd);
    copied
}

fn copy_into(from: RawFd, to: RawFd, limit: u64) -> SysResult<()> {
    let mut offset: libc::off_t = 0;
    while (offset as u64) < limit {
        let want = (limit - offset as u64) as usize;
        // SAFETY: two open descriptors and a pointer to our offset (the source's own offset is untouched).
        match check(unsafe { libc::sendfile(to, from, &mut offset, want) } as c_long) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(libc::EINTR) => {}
            Err(libc::EINVAL | libc::ENOSYS) if offset == 0 => break,
            Err(e) => return Err(e),
        }
    }
    if offset != 0 {
        return Ok(());
    }
    let mut buf = [0u8; 8192];
    while (offset as u64) < limit {
        let want = buf.len().min((limit - offset as u64) as usize);
        // SAFETY: `buf` has room for `want` bytes; pread leaves the source's offset alone.
        let n = unsafe { libc::pread(from, buf.as_mut_ptr().cast(), want, offset) };
        match check(n as c_long) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                write_all(to, &buf[..n as usize])?;
                offset += n as libc::off_t;
            }
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `symlink(2)`.
pub fn symlink(target: &CStr, path: &CStr) -> SysResult<()> {
    // SAFETY: both are NUL-terminated.
    check(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) } as c_long).map(drop)
}

/// `lchown(2)`.
pub fn lchown(path: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::lchown(path.as_ptr(), uid, gid) } as c_long).map(drop)
}

/// `chdir(2)`.
pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chdir(path.as_ptr()) } as c_long).map(drop)
}

/// Opens the canonical path `path` with `O_PATH | O_CLOEXEC`, following no symlink anywhere in it (so a link
/// planted after the host resolved the path fails with ELOOP instead of redirecting the open).
pub fn open_path(path: &CStr) -> SysResult<RawFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `path` is NUL-terminated and `how` is an open_how of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    match check(ret) {
        // Before 5.6: the last component at least.
        Err(libc::ENOSYS) => {
            let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            // SAFETY: `path` is NUL-terminated.
            check(unsafe { libc::open(path.as_ptr(), flags) } as c_long).map(|fd| fd as RawFd)
        }
        r => r.map(|fd| fd as RawFd),
    }
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached copy of the mount at `path` (not its submounts), `O_CLOEXEC`: `open_tree(OPEN_TREE_CLONE)`.
/// Host side only (it needs `CAP_SYS_ADMIN` over the caller's mount namespace).
pub fn open_tree_clone(path: &CStr) -> SysResult<RawFd> {
    // SAFETY: `path` is NUL-terminated; the call only returns a new descriptor.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    check(ret).map(|fd| fd as RawFd)
}

/// Makes the detached mount `tree` show its files through the id map of the user namespace `userns` (a
/// file owned by id N on disk is owned by what N is inside that namespace), with the other `MOUNT_ATTR_*`
/// flags in `set`.
pub fn set_idmap(tree: RawFd, userns: RawFd, set: u64) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: set | MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    // SAFETY: the path is an empty NUL-terminated string; `attr` is a valid mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// Attaches the detached mount `tree` at `dst`: `move_mount(MOVE_MOUNT_F_EMPTY_PATH)`.
pub fn attach_tree(tree: RawFd, dst: &CStr) -> SysResult<()> {
    // SAFETY: both paths are NUL-terminated; the call takes no other memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}
