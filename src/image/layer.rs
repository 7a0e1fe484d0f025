//! Applies one layer (an uncompressed tar stream) into a fresh, empty directory: the layer's own tree, with
//! its whiteouts written the way overlayfs reads them, so that the trees of an image's layers stacked as
//! overlay lower directories give the image's root.
//!
//! Every entry is untrusted. Nothing is ever written outside the directory: paths are made of plain
//! components only (no `..`, not absolute), every directory on the way is opened without following symlinks
//! (`O_NOFOLLOW` on each component), files are created with `O_EXCL`, hard links must name a file the layer
//! wrote before. Set-ID bits of files are cleared and device nodes refused: the store is a host directory.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, futimens, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown};
use tar::EntryType;

/// The prefix of a whiteout entry's name (OCI image spec, "Representing Changes").
const WHITEOUT: &str = ".wh.";
/// An opaque-directory marker: nothing of the lower layers shows through its directory.
const OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs mounted with `userxattr` (inside a user namespace) reads to find an opaque directory.
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Why one entry of a layer cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The entry's path or link target is not a plain relative path inside the layer.
    #[error("{0}")]
    Refused(&'static str),
    /// The tar stream itself is broken (truncated, corrupt, or cut short by the size bound).
    #[error("the tar stream cannot be read: {0}")]
    Tar(io::Error),
    /// Writing into the layer's directory failed.
    #[error("{what}: {source}")]
    Write {
        /// The operation.
        what: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

fn write_err(what: &'static str) -> impl FnOnce(Errno) -> EntryError {
    move |e| EntryError::Write {
        what,
        source: e.into(),
    }
}

/// An entry that failed, with its path as written in the layer.
#[derive(Debug)]
pub struct Failed {
    /// The entry's path (lossy UTF-8), empty when the stream failed before an entry.
    pub path: String,
    /// Why.
    pub error: EntryError,
}

/// What one applied layer holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// Entries in the tar stream.
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// Files whose set-user-ID or set-group-ID bit was cleared.
    pub setid_cleared: u64,
}

/// Bounds of one layer.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most bytes of file data (logical sizes: a sparse file counts in full).
    pub max_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
}

/// Applies the tar stream `input` into the empty directory `root`. `keep_owner`: give files the header's
/// numeric uid and gid (the importer is root); else they stay the importer's.
pub fn apply(
    input: impl Read,
    root: &Path,
    bounds: Bounds,
    keep_owner: bool,
) -> Result<Applied, Failed> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failed {
        path: String::new(),
        error: write_err("opening the layer's directory")(e),
    })?;
    let mut applier = Applier {
        root: root_fd,
        keep_owner,
        bounds,
        done: Applied::default(),
        dirs: Vec::new(),
        parent: None,
        created: HashMap::new(),
    };
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|e| Failed {
        path: String::new(),
        error: EntryError::Tar(e),
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Failed {
            path: String::new(),
            error: EntryError::Tar(e),
        })?;
        let raw = entry.path_bytes().into_owned();
        applier.entry(&mut entry).map_err(|error| Failed {
            path: String::from_utf8_lossy(&raw).into_owned(),
            error,
        })?;
    }
    // The end-of-archive blocks and anything after them still count towards the layer's digest: the caller
    // drains the stream.
    applier.finish_dirs()?;
    Ok(applier.done)
}

/// Directory metadata, applied once every entry is written (a read-only directory must still take its
/// entries, and writing entries changes its mtime).
struct DirMeta {
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: u64,
}

struct Applier {
    root: OwnedFd,
    keep_owner: bool,
    bounds: Bounds,
    done: Applied,
    dirs: Vec<DirMeta>,
    /// The last parent directory opened, by its path: tar entries come grouped by directory.
    parent: Option<(PathBuf, OwnedFd)>,
    /// What this layer created, by path: a second entry for the same path is refused unless both are
    /// directories.
    created: HashMap<PathBuf, bool>,
}

/// The entry's path as plain components; empty for the root itself.
fn clean(raw: &Path) -> Result<PathBuf, EntryError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(EntryError::Refused(
                    "an absolute path: layer entries are relative to the image's root",
                ));
            }
            Component::ParentDir => {
                return Err(EntryError::Refused(
                    "a `..` component: it could reach outside the image",
                ));
            }
        }
    }
    if out.as_os_str().len() > 4096 {
        return Err(EntryError::Refused("a path longer than 4096 bytes"));
    }
    Ok(out)
}

/// Gives the node `name` of `dir` that is not opened (a symlink, a fifo) its owner, without following it;
/// `what` names the operation in the error.
fn chown_at(
    dir: &OwnedFd,
    name: &OsStr,
    owner: Option<(u32, u32)>,
    what: &'static str,
) -> Result<(), EntryError> {
    if let Some((uid, gid)) = owner {
        nix::unistd::fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(write_err(what))?;
    }
    Ok(())
}

fn mtime_spec(mtime: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0)
}

impl Applier {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
        self.done.entries += 1;
        if self.done.entries > self.bounds.max_entries {
            return Err(EntryError::Refused(
                "more entries than the layer bound allows",
            ));
        }
        let path = clean(&entry.path().map_err(EntryError::Tar)?)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(EntryError::Tar)?;
        let owner = if self.keep_owner {
            Some((
                u32::try_from(header.uid().map_err(EntryError::Tar)?).unwrap_or(u32::MAX),
                u32::try_from(header.gid().map_err(EntryError::Tar)?).unwrap_or(u32::MAX),
            ))
        } else {
            None
        };
        let mtime = header.mtime().unwrap_or(0);
        let Some(name) = path.file_name().map(OsStr::to_os_string) else {
            // The root directory's own entry (`./`): its metadata is the image's business, not the layer's.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(EntryError::Refused(
                    "an entry for the root that is not a directory",
                ))
            };
        };
        let parent_path = path.parent().unwrap_or(Path::new("")).to_path_buf();

        if let Some(rest) = name.as_bytes().strip_prefix(WHITEOUT.as_bytes()) {
            return self.whiteout(&parent_path, &name, rest);
        }
        if let Some(&was_dir) = self.created.get(&path)
            && !(was_dir && kind.is_dir())
        {
            return Err(EntryError::Refused(
                "a second entry for a path this layer already wrote",
            ));
        }
        self.created.insert(path.clone(), kind.is_dir());
        let parent = self.parent_dir(&parent_path)?;

        match kind {
            EntryType::Directory => {
                match mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(write_err("creating the directory")(e)),
                }
                // An implicit parent made earlier is a directory; anything else in the way fails here.
                let fd = openat(
                    &parent,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(write_err("opening the directory"))?;
                drop(fd);
                self.dirs.push(DirMeta {
                    path,
                    // Set-group-ID and sticky bits of a directory only steer what is created in it.
                    mode: mode & 0o3777,
                    owner,
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if size > self.bounds.max_bytes.saturating_sub(self.done.bytes) {
                    return Err(EntryError::Refused(
                        "a file larger than what is left of the layer bound (a decompression bomb or a huge \
                         sparse file?)",
                    ));
                }
                let fd = openat(
                    &parent,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| match e {
                    Errno::EEXIST => {
                        EntryError::Refused("a second entry for a path this layer already wrote")
                    }
                    e => write_err("creating the file")(e),
                })?;
                let mut file = File::from(fd);
                let written =
                    io::copy(&mut entry.by_ref().take(size), &mut file).map_err(EntryError::Tar)?;
                if written != size {
                    return Err(EntryError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended inside the file's data",
                    )));
                }
                self.done.bytes += written;
                if mode & 0o6000 != 0 {
                    self.done.setid_cleared += 1;
                }
                self.finish_node(file.as_fd(), mode & 0o1777, owner, mtime)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(EntryError::Tar)?
                    .ok_or(EntryError::Refused("a symlink without a target"))?;
                nix::unistd::symlinkat(target.as_os_str(), &parent, name.as_os_str()).map_err(
                    |e| match e {
                        Errno::EEXIST => EntryError::Refused(
                            "a second entry for a path this layer already wrote",
                        ),
                        e => write_err("creating the symlink")(e),
                    },
                )?;
                chown_at(&parent, &name, owner, "setting the symlink's owner")?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(EntryError::Tar)?
                    .ok_or(EntryError::Refused("a hard link without a target"))?;
                let target = clean(&target).map_err(|_| {
                    EntryError::Refused(
                        "a hard link whose target is absolute or has a `..` component",
                    )
                })?;
                let (Some(target_name), Some(true)) = (
                    target.file_name().map(OsStr::to_os_string),
                    self.created.get(&target).map(|dir| !dir),
                ) else {
                    return Err(EntryError::Refused(
                        "a hard link to a file this layer did not write before it (links to a lower layer's \
                         files are not supported)",
                    ));
                };
                let target_parent = self.open_existing(target.parent().unwrap_or(Path::new("")))?;
                nix::unistd::linkat(
                    &target_parent,
                    target_name.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(write_err("creating the hard link"))?;
            }
            EntryType::Fifo => {
                mknodat(
                    &parent,
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(mode & 0o777),
                    0,
                )
                .map_err(|e| match e {
                    Errno::EEXIST => {
                        EntryError::Refused("a second entry for a path this layer already wrote")
                    }
                    e => write_err("creating the fifo")(e),
                })?;
                chown_at(&parent, &name, owner, "setting the fifo's owner")?;
            }
            EntryType::Char | EntryType::Block => {
                return Err(EntryError::Refused(
                    "a device node: images may not bring devices (the sandbox's /dev is its own)",
                ));
            }
            _ => {
                return Err(EntryError::Refused(
                    "an entry type the importer does not apply (not a file, directory, link or fifo)",
                ));
            }
        }
        Ok(())
    }

    /// `.wh.NAME`: NAME of the lower layers is deleted (an overlay whiteout: a 0:0 character device);
    /// `.wh..wh..opq`: the directory hides everything of the lower layers.
    fn whiteout(
        &mut self,
        parent_path: &Path,
        name: &OsString,
        rest: &[u8],
    ) -> Result<(), EntryError> {
        let parent = self.parent_dir(parent_path)?;
        if name.as_bytes() == OPAQUE.as_bytes() {
            let dir = File::from(parent.try_clone().map_err(|e| EntryError::Write {
                what: "duplicating a descriptor",
                source: e,
            })?);
            xattr::FileExt::set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(|source| EntryError::Write {
                what: "marking the directory opaque (the store's file system needs user xattrs)",
                source,
            })?;
            return Ok(());
        }
        if rest.starts_with(WHITEOUT.as_bytes()) {
            return Err(EntryError::Refused(
                "a `.wh..wh.` name other than the opaque marker (reserved by the OCI image spec)",
            ));
        }
        if rest.is_empty() || rest == b"." || rest == b".." || rest.contains(&b'/') {
            return Err(EntryError::Refused(
                "a whiteout of the root or of no name: only an entry of a directory can be deleted",
            ));
        }
        let target = parent_path.join(OsStr::from_bytes(rest));
        if self.created.contains_key(&target) {
            return Err(EntryError::Refused(
                "a whiteout of a path this layer itself wrote",
            ));
        }
        self.created.insert(target, false);
        mknodat(
            &parent,
            OsStr::from_bytes(rest),
            SFlag::S_IFCHR,
            Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .map_err(write_err(
            "creating the overlay whiteout (a 0:0 character device)",
        ))?;
        Ok(())
    }

    /// Sets a created node's owner (first: chown clears set-ID bits), mode and mtime.
    fn finish_node(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: u64,
    ) -> Result<(), EntryError> {
        if let Some((uid, gid)) = owner {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(write_err("setting the owner"))?;
        }
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(write_err("setting the mode"))?;
        let t = mtime_spec(mtime);
        futimens(fd, &t, &t).map_err(write_err("setting the times"))?;
        Ok(())
    }

    /// Opens (creating missing directories, mode 0700 until their own entry or the end) the directory `rel`
    /// of the layer, never following a symlink.
    fn parent_dir(&mut self, rel: &Path) -> Result<OwnedFd, EntryError> {
        if let Some((p, fd)) = &self.parent
            && p == rel
        {
            return fd.try_clone().map_err(|e| EntryError::Write {
                what: "duplicating a descriptor",
                source: e,
            });
        }
        let mut cur = self.root.try_clone().map_err(|e| EntryError::Write {
            what: "duplicating a descriptor",
            source: e,
        })?;
        let mut walked = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(c) = c else {
                return Err(EntryError::Refused("an unexpected path component"));
            };
            walked.push(c);
            match mkdirat(&cur, c, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {
                    self.created.insert(walked.clone(), true);
                    self.dirs.push(DirMeta {
                        path: walked.clone(),
                        mode: 0o755,
                        owner: self.keep_owner.then_some((0, 0)),
                        mtime: 0,
                    });
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(write_err("creating a parent directory")(e)),
            }
            cur = Self::step(&cur, c)?;
        }
        let keep = cur.try_clone().map_err(|e| EntryError::Write {
            what: "duplicating a descriptor",
            source: e,
        })?;
        self.parent = Some((rel.to_path_buf(), keep));
        Ok(cur)
    }

    /// Opens the existing directory `rel` of the layer without creating anything.
    fn open_existing(&self, rel: &Path) -> Result<OwnedFd, EntryError> {
        let mut cur = self.root.try_clone().map_err(|e| EntryError::Write {
            what: "duplicating a descriptor",
            source: e,
        })?;
        for c in rel.components() {
            let Component::Normal(c) = c else {
                return Err(EntryError::Refused("an unexpected path component"));
            };
            cur = Self::step(&cur, c)?;
        }
        Ok(cur)
    }

    /// One component down, refusing symlinks and non-directories.
    fn step(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, EntryError> {
        openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => EntryError::Refused(
                "a path through a symlink or a file of the layer (an entry may not be written through a link)",
            ),
            e => write_err("opening a parent directory")(e),
        })
    }

    /// Gives every directory its own metadata, deepest first.
    fn finish_dirs(&mut self) -> Result<(), Failed> {
        self.parent = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        // A directory may have an implicit entry (made as a parent) and its own: the last one wins.
        dirs.sort_by(|a, b| {
            b.path
                .components()
                .count()
                .cmp(&a.path.components().count())
        });
        let mut seen = std::collections::HashSet::new();
        // The last entry for a path wins (the sort is stable: insertion order within one depth).
        let mut last: HashMap<&Path, &DirMeta> = HashMap::new();
        for d in &dirs {
            last.insert(&d.path, d);
        }
        for d in &dirs {
            if !seen.insert(&d.path) {
                continue;
            }
            let meta = last[d.path.as_path()];
            let fail = |error| Failed {
                path: meta.path.to_string_lossy().into_owned(),
                error,
            };
            let fd = self.open_existing(&meta.path).map_err(fail)?;
            self.finish_node(fd.as_fd(), meta.mode, meta.owner, meta.mtime)
                .map_err(|error| Failed {
                    path: meta.path.to_string_lossy().into_owned(),
                    error,
                })?;
        }
        Ok(())
    }
}
