//! The filesystem view as a list of primitive steps, computed on the host before the sandbox is cloned.
//!
//! The child only walks this list and makes one system call per step, so it needs no allocation; the host
//! keeps the list to describe a failing step by its index. Pure logic: unit-tested without privileges.
//!
//! `step` holds the step vocabulary (`Op`, `Step`), `links` the trust check of a bind source's symlinks.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::c_ulong;

use super::rootfs::Root;
use super::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::outcome::{Stage, TmpfsBound};
use crate::policy::{Mount, Policy};

mod links;
mod step;

#[cfg(feature = "vm")]
pub(crate) use self::links::check_links;
pub use self::step::{Op, Step};

/// Errors found while planning the filesystem view.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A bind source does not exist (or cannot be resolved).
    #[error("bind source {path:?} cannot be used: {source}; create it or fix the path")]
    Source {
        /// The source as given.
        path: PathBuf,
        /// Why it cannot be resolved.
        source: std::io::Error,
    },
    /// A mount point would have to be created inside a host directory.
    #[error(
        "cannot mount at {dst:?}: the mount point {host:?} does not exist on the host inside the bind at {cover:?} \
         (the sandbox never creates files on the host); create it or mount elsewhere"
    )]
    MountpointMissing {
        /// Destination inside the sandbox.
        dst: PathBuf,
        /// The enclosing bind's destination.
        cover: PathBuf,
        /// The host path that would have to exist.
        host: PathBuf,
    },
    /// A device named by the policy is not a character device directly below /dev, or is one of ours.
    #[error(
        "{0:?} is not a character device directly below /dev on this host, or is one the sandbox provides \
         itself (ptmx, pts, shm, fd, std*, null, zero, full)"
    )]
    NotADevice(PathBuf),
    /// A bind source passes through a symlink owned by someone the caller should not trust.
    #[error(
        "bind source {path:?} passes through the symlink {link:?}, owned by uid {owner}: a sandbox (or another \
         user) may have planted it; give the real path"
    )]
    UntrustedSymlink {
        /// The source as given.
        path: PathBuf,
        /// The symlink.
        link: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// A path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(PathBuf),
}

/// Where the host's root is while the view is built.
const OLD: &str = "/oldroot";
/// Where the new root is built.
pub(super) const NEW: &str = "/newroot";
/// An existing host directory on which the staging tmpfs is mounted (inside the new mount namespace only).
const STAGE: &str = "/tmp";

pub(super) fn cstr(p: impl AsRef<Path>) -> Result<CString, PlanError> {
    let p = p.as_ref();
    CString::new(p.as_os_str().as_bytes()).map_err(|_| PlanError::Nul(p.into()))
}

pub(super) fn lit(s: &str) -> CString {
    CString::new(s).expect("literal without NUL")
}

/// What lies under a path of the new root, deciding whether mount points may be created there.
#[derive(Debug, Clone)]
pub(super) enum Cover {
    /// A filesystem of ours (tmpfs): anything may be created.
    Ours,
    /// A host directory bound here: mount points must already exist on the host under this source.
    Host(PathBuf),
    /// A filesystem nothing may be created in (proc).
    Fixed,
}

/// Kind of host entry a bind refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
}

/// Builds the step list for a policy.
pub struct Planner {
    pub(super) steps: Vec<Step>,
    /// Mounted destinations (inside the sandbox) and what covers them, in mount order.
    pub(super) covers: Vec<(PathBuf, Cover)>,
    /// Symlinks we created at the top of the new root: name -> target.
    pub(super) links: Vec<(PathBuf, PathBuf)>,
    /// Directories already created, to avoid repeating mkdir steps.
    pub(super) made: BTreeSet<PathBuf>,
    /// Canonical host paths of bind sources.
    pub(super) sources: Vec<CString>,
    /// Paths that exist only inside the sandbox, with the landlock rights they get.
    pub(super) inside: Vec<(CString, Inside)>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The writable tmpfs mounts and their bounds, for the verdict.
    pub(super) bounded: Vec<TmpfsBound>,
    /// Host directories the host clones as id-mapped trees for [`Op::AttachTree`].
    pub(super) trees: Vec<Tree>,
    /// The root is a filesystem of the policy's own, writable: not frozen read-only at the end.
    pub(super) own_root: bool,
    /// Bind sources that are id-mapped trees the host sends ([`Policy`]'s `idmap_binds`, a root caller).
    pub(super) idmap_binds: Vec<PathBuf>,
    /// The host files [`Op::CopyFile`] copies, open for reading.
    pub(super) copies: Vec<std::os::fd::OwnedFd>,
    /// Host directories the link check of bind sources has looked at ([`links::check_links_with`]).
    pub(super) looked_up: BTreeSet<PathBuf>,
}

impl Planner {
    fn new(uid: u32, gid: u32) -> Self {
        Planner {
            steps: Vec::new(),
            covers: vec![(PathBuf::from("/"), Cover::Ours)],
            links: Vec::new(),
            made: BTreeSet::new(),
            looked_up: BTreeSet::new(),
            sources: Vec::new(),
            inside: Vec::new(),
            uid,
            gid,
            bounded: Vec::new(),
            trees: Vec::new(),
            own_root: false,
            idmap_binds: Vec::new(),
            copies: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, stage: Stage, op: Op) {
        self.steps.push(Step { stage, op });
    }

    pub(super) fn mount(
        &mut self,
        src: Option<CString>,
        dst: CString,
        fstype: Option<&str>,
        flags: c_ulong,
        data: Option<String>,
    ) {
        self.push(
            Stage::Mounts,
            Op::Mount {
                src,
                dst,
                fstype: fstype.map(lit),
                flags,
                data: data.map(|d| CString::new(d).expect("mount options without NUL")),
            },
        );
    }

    pub(super) fn set_attr(&mut self, path: CString, set: u64, recursive: bool) {
        self.push(
            Stage::Mounts,
            Op::SetAttr {
                path,
                set,
                recursive,
            },
        );
    }

    /// The host path of a canonical host path while building (under the old root).
    pub(super) fn host(p: &Path) -> PathBuf {
        Path::new(OLD).join(p.strip_prefix("/").unwrap_or(p))
    }

    /// The build path of a sandbox path (under the new root).
    pub(super) fn new_path(p: &Path) -> PathBuf {
        Path::new(NEW).join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Rewrites a sandbox path through the top-level symlinks we created (e.g. `/bin/x` -> `/usr/bin/x`).
    fn resolve(&self, dst: &Path) -> PathBuf {
        for (link, target) in &self.links {
            if let Ok(rest) = dst.strip_prefix(link) {
                let base = if target.is_absolute() {
                    target.clone()
                } else {
                    link.parent().unwrap_or(Path::new("/")).join(target)
                };
                return base.join(rest);
            }
        }
        dst.to_path_buf()
    }

    /// The innermost mount that covers `dst`.
    fn cover_of(&self, dst: &Path) -> (PathBuf, Cover) {
        self.covers
            .iter()
            .rev()
            .find(|(d, _)| dst.starts_with(d))
            .cloned()
            .expect("the root covers every path")
    }

    /// Adds the steps that make `dst` exist as a mount point of `kind`.
    pub(super) fn mountpoint(&mut self, dst: &Path, kind: Kind) -> Result<(), PlanError> {
        let (cover_dst, cover) = self.cover_of(dst);
        match cover {
            Cover::Ours => {
                let rel = dst.strip_prefix(&cover_dst).expect("cover is a prefix");
                let mut cur = cover_dst.clone();
                let comps: Vec<_> = rel.components().collect();
                for (i, c) in comps.iter().enumerate() {
                    cur.push(c);
                    let last = i + 1 == comps.len();
                    if last && kind == Kind::File {
                        self.push(
                            Stage::Mounts,
                            Op::Touch {
                                path: cstr(Self::new_path(&cur))?,
                            },
                        );
                    } else if self.made.insert(cur.clone()) {
                        self.push(
                            Stage::Mounts,
                            Op::Mkdir {
                                path: cstr(Self::new_path(&cur))?,
                                mode: 0o755,
                            },
                        );
                    }
                }
                Ok(())
            }
            Cover::Host(src) => {
                let rel = dst.strip_prefix(&cover_dst).expect("cover is a prefix");
                let host = src.join(rel);
                let ok = match std::fs::metadata(&host) {
                    Ok(m) => m.is_dir() == (kind == Kind::Dir),
                    Err(_) => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(PlanError::MountpointMissing {
                        dst: dst.into(),
                        cover: cover_dst,
                        host,
                    })
                }
            }
            Cover::Fixed => Err(PlanError::MountpointMissing {
                dst: dst.into(),
                cover: cover_dst.clone(),
                host: cover_dst,
            }),
        }
    }

    /// A bind of the host path `src` (as given) at `dst`.
    pub(super) fn bind(&mut self, src: &Path, dst: &Path, writable: bool) -> Result<(), PlanError> {
        let (real, is_dir) = match links::check_links_with(src, &mut self.looked_up)? {
            Some(direct) => (direct.path, direct.is_dir),
            None => {
                let real = std::fs::canonicalize(src).map_err(|source| PlanError::Source {
                    path: src.into(),
                    source,
                })?;
                let is_dir = real.is_dir();
                (real, is_dir)
            }
        };
        let kind = if is_dir { Kind::Dir } else { Kind::File };
        let dst = self.resolve(dst);
        self.mountpoint(&dst, kind)?;
        // Landlock rules follow the bind inside the sandbox, by the mounted inode: a rule on the host path
        // would miss file systems that give each lookup a new inode (9p without a cache, in the VM's guest).
        self.inside.push((
            cstr(&dst)?,
            if writable {
                Inside::Write
            } else {
                Inside::Read
            },
        ));
        let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if !writable {
            attrs |= MOUNT_ATTR_RDONLY;
        }
        let staged = Self::new_path(&dst);
        self.attach(
            &real,
            staged.to_str().unwrap_or("/"),
            self.idmap_binds.contains(&real),
            attrs,
        )?;
        let cover = if kind == Kind::Dir {
            Cover::Host(real)
        } else {
            Cover::Fixed
        };
        self.covers.push((dst, cover));
        Ok(())
    }

    /// A tmpfs at `dst` with the given mount options.
    pub(super) fn tmpfs(
        &mut self,
        dst: &Path,
        options: String,
        flags: c_ulong,
        inside: Inside,
    ) -> Result<(), PlanError> {
        let dst = self.resolve(dst);
        self.inside.push((cstr(&dst)?, inside));
        self.mountpoint(&dst, Kind::Dir)?;
        self.mount(
            Some(lit("tmpfs")),
            cstr(Self::new_path(&dst))?,
            Some("tmpfs"),
            flags,
            Some(options),
        );
        self.covers.push((dst, Cover::Ours));
        Ok(())
    }

    /// A symlink at `path` inside the sandbox.
    pub(super) fn symlink(&mut self, target: &Path, path: &Path) -> Result<(), PlanError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if parent != Path::new("/") {
            self.mountpoint(parent, Kind::Dir)?;
        }
        self.push(
            Stage::Mounts,
            Op::Symlink {
                target: cstr(target)?,
                path: cstr(Self::new_path(path))?,
            },
        );
        Ok(())
    }

    fn finish(mut self) -> Plan {
        self.inside.push((lit("/"), Inside::Root));
        // Into the new root; the staging root and the host's old root go away with one lazy unmount.
        self.push(Stage::PivotRoot, Op::Chdir { path: lit(NEW) });
        self.push(
            Stage::PivotRoot,
            Op::PivotRoot {
                new_root: lit("."),
                put_old: lit("."),
            },
        );
        self.push(Stage::PivotRoot, Op::Detach { path: lit(".") });
        self.push(Stage::PivotRoot, Op::Chdir { path: lit("/") });
        // The root tmpfs and /dev hold only what we made: freeze them (a root of the policy's own stays
        // writable: its writable layer is the point).
        self.set_attr(lit("/dev"), MOUNT_ATTR_RDONLY, false);
        if !self.own_root {
            self.set_attr(lit("/"), MOUNT_ATTR_RDONLY, false);
        }
        Plan {
            steps: self.steps,
            sources: self.sources,
            inside: self.inside,
            tmpfs: self.bounded,
            trees: self.trees,
            copies: self.copies,
        }
    }
}

/// The filesystem view as steps.
#[derive(Debug)]
pub struct Plan {
    /// From the host's root to the finished new root.
    pub steps: Vec<Step>,
    /// Host paths of bind sources, canonical. The child opens them (`O_PATH`) while it still has the caller's
    /// credentials, so a root caller can bind what only root can reach, and the sandbox user never needs
    /// search permission on the host path.
    pub sources: Vec<CString>,
    /// Paths inside the sandbox (the binds' mount points, tmpfs, /dev, /proc, the root), with the landlock
    /// rights they get; the child adds these rules after pivot_root.
    pub inside: Vec<(CString, Inside)>,
    /// The writable tmpfs mounts (`/tmp`, `/dev/shm`, the policy's) and their bounds.
    pub tmpfs: Vec<TmpfsBound>,
    /// Host directories the host clones as id-mapped trees once the child's user namespace has its maps,
    /// and sends with the release (a root caller's root filesystem, see `namespace/rootfs.rs`).
    pub trees: Vec<Tree>,
    /// The host files the view copies ([`Op::CopyFile`]), opened by the host with the caller's rights; the
    /// child inherits them with the clone. Open until the plan is dropped, after the child's start.
    pub copies: Vec<std::os::fd::OwnedFd>,
}

/// A host directory shown through an id-mapped mount.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Its canonical host path.
    pub path: CString,
    /// `MOUNT_ATTR_*` flags set with the id map.
    pub attrs: u64,
}

/// Landlock rights of a path that exists only inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inside {
    /// A tmpfs: read and write.
    Write,
    /// `/dev`: device access.
    Dev,
    /// `/proc`: read.
    Proc,
    /// Files we wrote (the copied `/etc` files): read.
    Read,
    /// The root: listing only.
    Root,
}

/// Where a host bind source's descriptor is reached during the build (the host's proc is under the old root).
pub const SOURCE_FD_DIR: &str = "/oldroot/proc/self/fd/";

/// The complete list of filesystem steps for `policy`, from the host's root to the finished new root.
#[cfg(test)]
pub fn plan(policy: &Policy) -> Result<Plan, PlanError> {
    plan_with_root(policy, None)
}

/// [`plan`], with the policy's root filesystem resolved (`root`, when the policy has one).
pub(crate) fn plan_with_root(policy: &Policy, root: Option<&Root>) -> Result<Plan, PlanError> {
    let mut p = Planner::new(policy.uid, policy.gid);
    if nix::unistd::geteuid().is_root() {
        p.idmap_binds = policy.idmap_binds.clone();
    }
    // Private propagation: nothing we mount leaks to the host, nothing the host mounts appears here.
    p.mount(None, lit("/"), None, libc::MS_REC | libc::MS_PRIVATE, None);
    // A staging root whose /oldroot is the host root and /newroot the root being built.
    p.mount(
        Some(lit("tmpfs")),
        lit(STAGE),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0700".into()),
    );
    for d in [OLD, NEW] {
        p.push(
            Stage::Mounts,
            Op::Mkdir {
                path: cstr(Path::new(STAGE).join(&d[1..]))?,
                mode: 0o700,
            },
        );
    }
    p.push(
        Stage::PivotRoot,
        Op::PivotRoot {
            new_root: lit(STAGE),
            put_old: cstr(Path::new(STAGE).join(&OLD[1..]))?,
        },
    );
    p.push(Stage::PivotRoot, Op::Chdir { path: lit("/") });
    match root {
        Some(root) if root.flat.is_none() => p.own_root(root, policy.tmpfs_bounds(None))?,
        _ => {
            p.mount(
                Some(lit("tmpfs")),
                lit(NEW),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("mode=0755,size=1048576".into()),
            );
            match root.and_then(|r| r.flat.as_deref().map(|f| (r, f))) {
                Some((root, entries)) => {
                    p.read_only_root(root, entries, policy.tmpfs_bounds(None))?
                }
                None if policy.system => p.system(&super::network::etc_files(policy))?,
                None => {}
            }
        }
    }
    p.dev(&policy.devices)?;
    p.proc()?;
    let (size, inodes) = policy.tmpfs_bounds(None);
    p.tmpfs(
        Path::new("/dev/shm"),
        format!("mode=1777,size={size},nr_inodes={inodes}"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Inside::Write,
    )?;
    p.bounded.push(TmpfsBound {
        path: "/dev/shm".into(),
        size,
        inodes,
    });
    let user_tmp = policy.mounts.iter().any(|m| m.dst() == Path::new("/tmp"));
    if policy.system && root.is_none() && !user_tmp {
        p.tmpfs(
            Path::new("/tmp"),
            format!("mode=1777,size={size},nr_inodes={inodes}"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Inside::Write,
        )?;
        p.bounded.push(TmpfsBound {
            path: "/tmp".into(),
            size,
            inodes,
        });
    }
    for m in &policy.mounts {
        match m {
            Mount::RoBind { src, dst } => p.bind(src, dst, false)?,
            Mount::Bind { src, dst } => p.bind(src, dst, true)?,
            Mount::Tmpfs { dst, size } => {
                let (size, inodes) = policy.tmpfs_bounds(*size);
                let opts = format!(
                    "mode=0755,uid={},gid={},size={size},nr_inodes={inodes}",
                    p.uid, p.gid
                );
                p.tmpfs(dst, opts, libc::MS_NOSUID | libc::MS_NODEV, Inside::Write)?;
                p.bounded.push(TmpfsBound {
                    path: dst.clone(),
                    size,
                    inodes,
                });
            }
        }
    }
    let mut plan = p.finish();
    // Inside the finished root, as runc orders them: read-only paths, then masked ones (a masked path below
    // a read-only one is still hidden).
    for path in &policy.readonly_paths {
        plan.steps.push(Step {
            stage: Stage::Mounts,
            op: Op::ReadOnly { path: cstr(path)? },
        });
    }
    for path in &policy.masked_paths {
        plan.steps.push(Step {
            stage: Stage::Mounts,
            op: Op::Mask { path: cstr(path)? },
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
