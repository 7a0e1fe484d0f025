//! `mounts`: binds and tmpfs mounts become the policy's [`Mount`]s; the kernel filesystems a container
//! usually asks for are the sandbox's own (`/proc`, `/dev`, `/dev/pts`, `/dev/shm`) or deliberately absent
//! (`/sys`, `/dev/mqueue`, `/sys/fs/cgroup`).

use std::path::{Path, PathBuf};

use oci_spec::runtime as oci;
use sandkasten::{Mount, Policy};

use super::{SpecError, check};

/// Errors in `mounts`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// A destination is not absolute.
    #[error(
        "mounts[{index}]: destination {dst:?} is not an absolute path: give the path inside the container"
    )]
    Destination {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
    },
    /// A filesystem type the sandbox cannot mount.
    #[error(
        "mounts[{index}] ({dst:?}): filesystem type {fstype:?} is not supported: use a bind or a tmpfs (proc, \
         devpts, sysfs, mqueue and cgroup are accepted at their usual places)"
    )]
    UnknownType {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
        /// The type.
        fstype: String,
    },
    /// A kernel filesystem away from its usual place.
    #[error(
        "mounts[{index}]: {fstype} at {dst:?} is not supported: the sandbox mounts {fstype} only at {usual}; \
         remove the mount or move it there"
    )]
    Misplaced {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
        /// The type.
        fstype: String,
        /// Where it may be.
        usual: &'static str,
    },
    /// A bind has no source, or its source does not exist.
    #[error(
        "mounts[{index}] ({dst:?}): bind source {src:?} cannot be used: {source}; create it or fix \
         mounts[{index}].source"
    )]
    Source {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
        /// The source, resolved against the bundle.
        src: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An option nobody knows.
    #[error(
        "mounts[{index}] ({dst:?}): option {option:?} is unknown{kind}: remove it or fix its spelling"
    )]
    UnknownOption {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
        /// The option.
        option: String,
        /// For which kind of mount (empty, or " for a bind" etc.).
        kind: &'static str,
    },
    /// An option the sandbox refuses.
    #[error("mounts[{index}] ({dst:?}): {option} is not supported: {why}")]
    Refused {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
        /// The option (or field).
        option: String,
        /// Why, and what to do.
        why: &'static str,
    },
    /// A tmpfs size that is not a number.
    #[error(
        "mounts[{index}] ({dst:?}): {option:?} is not a size: give bytes, optionally with k, m or g, e.g. size=64m"
    )]
    BadSize {
        /// Index in `mounts`.
        index: usize,
        /// The destination.
        dst: PathBuf,
        /// The option.
        option: String,
    },
}

/// How a mount option of `config.json` is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionUse {
    /// Honoured: the sandbox's binds and tmpfs mounts behave so.
    Honoured,
    /// Accepted, without effect: access-time and write-sync behaviour no program relies on.
    NoEffect,
    /// Accepted but not applied; a note gives the reason.
    Differs(&'static str),
    /// Refused with an error giving the reason.
    Refused(&'static str),
}

const PRIVATE: OptionUse =
    OptionUse::Differs("the sandbox's mounts are private, nothing propagates to or from the host");
const EXEC: OptionUse = OptionUse::Differs("the sandbox's binds and tmpfs mounts stay executable");
const NOSUID: OptionUse = OptionUse::Differs("the sandbox's mounts are always nosuid");
const NODEV: OptionUse = OptionUse::Differs("the sandbox's mounts are always nodev");
const SYMLINKS: OptionUse = OptionUse::Differs("symlinks on the mount are followed");
const IDMAP: OptionUse = OptionUse::Refused(
    "id-mapped mounts are not available: the sandbox maps ids for the whole container; remove the option",
);

/// Every mount option the translation knows, and what it does with it (binds and tmpfs mounts; the kernel
/// filesystems the sandbox provides ignore their options). `features.json` lists the honoured ones.
pub const MOUNT_OPTIONS: &[(&str, OptionUse)] = &[
    ("defaults", OptionUse::Honoured),
    ("rw", OptionUse::Honoured),
    ("rrw", OptionUse::Honoured),
    ("ro", OptionUse::Honoured),
    ("rro", OptionUse::Honoured),
    ("bind", OptionUse::Honoured),
    ("rbind", OptionUse::Honoured),
    ("nosuid", OptionUse::Honoured),
    ("rnosuid", OptionUse::Honoured),
    ("nodev", OptionUse::Honoured),
    ("rnodev", OptionUse::Honoured),
    ("exec", OptionUse::Honoured),
    ("rexec", OptionUse::Honoured),
    ("private", OptionUse::Honoured),
    ("rprivate", OptionUse::Honoured),
    ("notmpcopyup", OptionUse::Honoured),
    ("symfollow", OptionUse::Honoured),
    ("rsymfollow", OptionUse::Honoured),
    ("async", OptionUse::NoEffect),
    ("sync", OptionUse::NoEffect),
    ("dirsync", OptionUse::NoEffect),
    ("atime", OptionUse::NoEffect),
    ("ratime", OptionUse::NoEffect),
    ("noatime", OptionUse::NoEffect),
    ("rnoatime", OptionUse::NoEffect),
    ("relatime", OptionUse::NoEffect),
    ("rrelatime", OptionUse::NoEffect),
    ("norelatime", OptionUse::NoEffect),
    ("rnorelatime", OptionUse::NoEffect),
    ("strictatime", OptionUse::NoEffect),
    ("rstrictatime", OptionUse::NoEffect),
    ("nostrictatime", OptionUse::NoEffect),
    ("rnostrictatime", OptionUse::NoEffect),
    ("diratime", OptionUse::NoEffect),
    ("rdiratime", OptionUse::NoEffect),
    ("nodiratime", OptionUse::NoEffect),
    ("rnodiratime", OptionUse::NoEffect),
    ("lazytime", OptionUse::NoEffect),
    ("nolazytime", OptionUse::NoEffect),
    ("iversion", OptionUse::NoEffect),
    ("noiversion", OptionUse::NoEffect),
    ("mand", OptionUse::NoEffect),
    ("nomand", OptionUse::NoEffect),
    ("loud", OptionUse::NoEffect),
    ("silent", OptionUse::NoEffect),
    ("noexec", EXEC),
    ("rnoexec", EXEC),
    ("suid", NOSUID),
    ("rsuid", NOSUID),
    ("dev", NODEV),
    ("rdev", NODEV),
    ("shared", PRIVATE),
    ("rshared", PRIVATE),
    ("slave", PRIVATE),
    ("rslave", PRIVATE),
    ("unbindable", PRIVATE),
    ("runbindable", PRIVATE),
    ("nosymfollow", SYMLINKS),
    ("rnosymfollow", SYMLINKS),
    (
        "tmpcopyup",
        OptionUse::Differs("the tmpfs starts empty, without the root's files at that path"),
    ),
    ("idmap", IDMAP),
    ("ridmap", IDMAP),
];

const TMPFS_OWNER: OptionUse =
    OptionUse::Differs("the sandbox's tmpfs is mode 0755, owned by the process's user");

/// The `KEY=VALUE` options of a tmpfs (`size` becomes the mount's size).
const TMPFS_DATA: &[(&str, OptionUse)] = &[
    ("size", OptionUse::Honoured),
    ("mode", TMPFS_OWNER),
    ("uid", TMPFS_OWNER),
    ("gid", TMPFS_OWNER),
    (
        "nr_inodes",
        OptionUse::Differs("the inode count follows from the size"),
    ),
    (
        "nr_blocks",
        OptionUse::Differs("the size is set by size= or the memory limit"),
    ),
    ("huge", OptionUse::NoEffect),
    ("mpol", OptionUse::NoEffect),
];

/// What the sandbox does with a kernel filesystem at its usual place.
enum Kernel {
    /// Mounted by the sandbox itself, its own way.
    Provided,
    /// Not mounted, for this reason.
    Absent(&'static str),
}

/// The kernel filesystems a container asks for: type, usual destination, what the sandbox does.
const KERNEL: &[(&str, &str, Kernel)] = &[
    ("proc", "/proc", Kernel::Provided),
    ("tmpfs", "/dev", Kernel::Provided),
    ("devpts", "/dev/pts", Kernel::Provided),
    ("tmpfs", "/dev/shm", Kernel::Provided),
    (
        "sysfs",
        "/sys",
        Kernel::Absent(
            "the sandbox shows no /sys, so the host's devices and kernel state stay hidden",
        ),
    ),
    (
        "mqueue",
        "/dev/mqueue",
        Kernel::Absent("POSIX message queues work without it, only the directory is missing"),
    ),
    (
        "cgroup",
        "/sys/fs/cgroup",
        Kernel::Absent("the sandbox shows no cgroup filesystem; its limits are set from outside"),
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        Kernel::Absent("the sandbox shows no cgroup filesystem; its limits are set from outside"),
    ),
];

/// Translates `mounts` into `policy.mounts`.
pub(super) fn translate(
    mounts: &[oci::Mount],
    bundle: &Path,
    policy: &mut Policy,
    notes: &mut Vec<String>,
) -> Result<(), SpecError> {
    let mut provided = Vec::new();
    for (index, m) in mounts.iter().enumerate() {
        let dst = m.destination();
        if !dst.is_absolute() {
            return Err(MountError::Destination {
                index,
                dst: dst.clone(),
            }
            .into());
        }
        let fstype = m.typ().as_deref().unwrap_or_default();
        let options = m.options().as_deref().unwrap_or_default();
        let bind = fstype == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let src = m.source().as_deref().unwrap_or(Path::new(""));
        // A bind of the host's /sys at /sys is how rootless runtimes ask for sysfs.
        let kind = if bind && src == Path::new("/sys") {
            "sysfs"
        } else {
            fstype
        };
        let usual = KERNEL.iter().find(|k| k.0 == kind && Path::new(k.1) == dst);
        match usual {
            Some((_, _, Kernel::Provided)) => {
                provided.push(dst.clone());
                continue;
            }
            Some((kind, _, Kernel::Absent(why))) => {
                notes.push(format!(
                    "mounts[{index}] ({kind} at {}) is not made: {why}.",
                    dst.display()
                ));
                continue;
            }
            None => {}
        }
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(refused(index, dst, "uidMappings/gidMappings", IDMAP).into());
        }
        let mount = if bind {
            bind_mount(index, m, bundle, notes)?
        } else if fstype == "tmpfs" {
            tmpfs(index, dst, options, notes)?
        } else if let Some((_, usual, _)) = KERNEL.iter().find(|k| k.0 == fstype) {
            return Err(MountError::Misplaced {
                index,
                dst: dst.clone(),
                fstype: fstype.into(),
                usual,
            }
            .into());
        } else {
            return Err(MountError::UnknownType {
                index,
                dst: dst.clone(),
                fstype: fstype.into(),
            }
            .into());
        };
        let mut alone = Policy::default();
        alone.mounts.push(mount.clone());
        check(&format!("mounts[{index}]"), &alone)?;
        policy.mounts.push(mount);
    }
    let asked: Vec<&Path> = mounts.iter().map(|m| m.destination().as_path()).collect();
    provided_notes(&provided, &asked, notes);
    Ok(())
}

/// Notes on the mounts the sandbox makes itself: those asked for (`provided`), and those no mount of
/// config.json (`asked`) covers.
fn provided_notes(provided: &[PathBuf], asked: &[&Path], notes: &mut Vec<String>) {
    if !provided.is_empty() {
        let list: Vec<String> = provided.iter().map(|p| p.display().to_string()).collect();
        notes.push(format!(
            "mounts at {} are the sandbox's own (a minimal /dev, a /proc with host-wide files masked, /dev/shm \
             bounded by the memory limit or 64 MiB); their options are not applied.",
            list.join(", ")
        ));
    }
    let unasked: Vec<&str> = KERNEL
        .iter()
        .filter(|k| matches!(k.2, Kernel::Provided))
        .map(|k| k.1)
        .filter(|d| !asked.contains(&Path::new(d)))
        .collect();
    if !unasked.is_empty() {
        notes.push(format!(
            "the sandbox also mounts {} itself, which config.json does not ask for.",
            unasked.join(", ")
        ));
    }
}

fn refused(index: usize, dst: &Path, option: &str, how: OptionUse) -> MountError {
    let why = match how {
        OptionUse::Refused(why) => why,
        _ => "",
    };
    MountError::Refused {
        index,
        dst: dst.into(),
        option: option.into(),
        why,
    }
}

/// Looks an option up in `table`; notes what differs, refuses what is refused.
fn option(
    index: usize,
    dst: &Path,
    option: &str,
    table: &[(&str, OptionUse)],
    kind: &'static str,
    notes: &mut Vec<String>,
) -> Result<OptionUse, MountError> {
    let name = option.split_once('=').map_or(option, |(k, _)| k);
    let Some(&(_, how)) = table.iter().find(|(n, _)| *n == name) else {
        return Err(MountError::UnknownOption {
            index,
            dst: dst.into(),
            option: option.into(),
            kind,
        });
    };
    match how {
        OptionUse::Differs(why) => notes.push(format!(
            "mounts[{index}] ({}): {option} is not applied: {why}.",
            dst.display()
        )),
        OptionUse::Refused(_) => return Err(refused(index, dst, option, how)),
        OptionUse::Honoured | OptionUse::NoEffect => {}
    }
    Ok(how)
}

/// A bind: read-only with `ro`/`rro`, else read-write; the source resolved against the bundle must exist.
fn bind_mount(
    index: usize,
    m: &oci::Mount,
    bundle: &Path,
    notes: &mut Vec<String>,
) -> Result<Mount, MountError> {
    let dst = m.destination();
    let mut read_only = false;
    for o in m.options().as_deref().unwrap_or_default() {
        if o.contains('=') {
            return Err(MountError::UnknownOption {
                index,
                dst: dst.clone(),
                option: o.clone(),
                kind: " for a bind",
            });
        }
        option(index, dst, o, MOUNT_OPTIONS, " for a bind", notes)?;
        match o.as_str() {
            "ro" | "rro" => read_only = true,
            "rw" | "rrw" => read_only = false,
            _ => {}
        }
    }
    let source = m.source().clone().unwrap_or_default();
    let src = bundle.join(&source);
    let found = match source.as_os_str().is_empty() {
        true => Err(std::io::Error::other("a bind needs a source")),
        false => std::fs::metadata(&src).map(drop),
    };
    if let Err(source) = found {
        return Err(MountError::Source {
            index,
            dst: dst.clone(),
            src,
            source,
        });
    }
    let dst = dst.clone();
    Ok(if read_only {
        Mount::RoBind { src, dst }
    } else {
        Mount::Bind { src, dst }
    })
}

/// A tmpfs of the policy's own: its `size=` is kept, other data options are noted.
fn tmpfs(
    index: usize,
    dst: &Path,
    options: &[String],
    notes: &mut Vec<String>,
) -> Result<Mount, MountError> {
    let mut size = None;
    for o in options {
        let Some((key, value)) = o.split_once('=') else {
            option(index, dst, o, MOUNT_OPTIONS, " for a tmpfs", notes)?;
            if o == "ro" || o == "rro" {
                notes.push(format!(
                    "mounts[{index}] ({}): ro is not applied: the sandbox's tmpfs mounts are writable.",
                    dst.display()
                ));
            }
            continue;
        };
        if key == "mode" && u32::from_str_radix(value, 8) == Ok(0o755) {
            continue; // what the sandbox's tmpfs has anyway
        }
        option(index, dst, o, TMPFS_DATA, " for a tmpfs", notes)?;
        if key != "size" {
            continue;
        }
        size = match parse_size(value) {
            Some(0) => {
                notes.push(format!(
                    "mounts[{index}] ({}): size=0 (unbounded) is not applied: the tmpfs is bounded by the memory \
                     limit or 64 MiB.",
                    dst.display()
                ));
                None
            }
            Some(bytes) => Some(bytes),
            None if value.ends_with('%') => {
                notes.push(format!(
                    "mounts[{index}] ({}): {o} is not applied: the tmpfs is bounded by the memory limit or 64 MiB.",
                    dst.display()
                ));
                None
            }
            None => {
                return Err(MountError::BadSize {
                    index,
                    dst: dst.into(),
                    option: o.clone(),
                });
            }
        };
    }
    Ok(Mount::Tmpfs {
        dst: dst.into(),
        size,
    })
}

/// A tmpfs size: bytes, or a number with `k`, `m`, `g` or `t` (binary units, as tmpfs reads them).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 10),
        (i, 'm' | 'M') => (&text[..i], 20),
        (i, 'g' | 'G') => (&text[..i], 30),
        (i, 't' | 'T') => (&text[..i], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536k"), Some(64 << 20));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "k", "12x", "-1", "1.5g", "50%"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(parse_size("99999999999999999999t"), None);
    }

    #[test]
    fn every_option_once() {
        for (i, (name, _)) in MOUNT_OPTIONS.iter().enumerate() {
            assert!(
                !MOUNT_OPTIONS[..i].iter().any(|(n, _)| n == name),
                "{name} twice"
            );
        }
    }
}
