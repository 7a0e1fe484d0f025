//! One primitive step of the filesystem view (`Op`), the stage it belongs to (`Step`), and how a step is
//! described when it fails.

use std::ffi::CString;

use libc::c_ulong;

use crate::outcome::Stage;

/// One primitive step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `mount(2)`.
    Mount {
        src: Option<CString>,
        dst: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    /// A recursive bind of host source number `source` (opened by the child before it drops host
    /// credentials, see [`Plan::sources`](super::Plan::sources)) at `dst`.
    BindSource { source: usize, dst: CString },
    /// Attaches the detached mount number `tree` that the host sent with the release (an id-mapped clone of
    /// a host directory, see [`Plan::trees`](super::Plan::trees)) at `dst`.
    AttachTree { tree: usize, dst: CString },
    /// `mount_setattr(2)` setting `MOUNT_ATTR_*` flags.
    SetAttr {
        path: CString,
        set: u64,
        recursive: bool,
    },
    /// `mkdir(2)` (existing is fine).
    Mkdir { path: CString, mode: u32 },
    /// `lchown(2)` (ids as the sandbox sees them).
    Chown { path: CString, uid: u32, gid: u32 },
    /// Create an empty file (existing is fine).
    Touch { path: CString },
    /// Create a file with these contents (a file the sandbox's settings make, e.g. `/etc/hosts`).
    WriteFile { path: CString, contents: Vec<u8> },
    /// Create a file with a copy of the small host file open as `fd` (held by the plan,
    /// [`Plan::copies`](super::Plan::copies)); cheaper than a bind mount and its remount. The kernel copies
    /// (`sendfile(2)`), at most `limit` bytes.
    CopyFile { path: CString, fd: i32, limit: u64 },
    /// `symlink(2)`.
    Symlink { target: CString, path: CString },
    /// `pivot_root(2)`.
    PivotRoot { new_root: CString, put_old: CString },
    /// `chdir(2)`.
    Chdir { path: CString },
    /// `umount2(2)` with `MNT_DETACH`.
    Detach { path: CString },
    /// Hides `path` (inside the finished root): an empty read-only tmpfs over a directory, `/dev/null` over
    /// anything else; nothing when it does not exist.
    Mask { path: CString },
    /// Makes `path` and everything mounted below it read-only (a recursive bind of itself); nothing when it
    /// does not exist.
    ReadOnly { path: CString },
}

/// A step and the stage it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub stage: Stage,
    pub op: Op,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Mount {
                src,
                dst,
                fstype,
                flags,
                data,
            } => write!(
                f,
                "mount({:?} on {:?}, type {:?}, flags {:#x}, options {:?})",
                src, dst, fstype, flags, data
            ),
            Op::BindSource { source, dst } => {
                write!(f, "bind mount of host source #{source} on {dst:?}")
            }
            Op::AttachTree { tree, dst } => {
                write!(f, "attaching the id-mapped host tree #{tree} on {dst:?}")
            }
            Op::SetAttr {
                path,
                set,
                recursive,
            } => write!(
                f,
                "mount_setattr({path:?}, set {set:#x}{})",
                if *recursive { ", recursive" } else { "" }
            ),
            Op::Mkdir { path, .. } => write!(f, "mkdir({path:?})"),
            Op::Chown { path, uid, gid } => write!(f, "lchown({path:?}, {uid}, {gid})"),
            Op::Touch { path } => write!(f, "creating mount point file {path:?}"),
            Op::WriteFile { path, contents } => {
                write!(f, "writing {path:?} ({} bytes)", contents.len())
            }
            Op::CopyFile { path, .. } => write!(f, "copying a host file to {path:?}"),
            Op::Symlink { target, path } => write!(f, "symlink({path:?} -> {target:?})"),
            Op::PivotRoot { new_root, put_old } => {
                write!(f, "pivot_root({new_root:?}, {put_old:?})")
            }
            Op::Chdir { path } => write!(f, "chdir({path:?})"),
            Op::Detach { path } => write!(f, "umount2({path:?}, MNT_DETACH)"),
            Op::Mask { path } => write!(f, "masking {path:?}"),
            Op::ReadOnly { path } => write!(f, "making {path:?} read-only"),
        }
    }
}
