//! The host's id files: `/etc/subuid` and `/etc/subgid` (subordinate ranges), `/etc/passwd` and `/etc/group`
//! (the ids in use), and the range reserved for root callers' sandboxes with its per-run leases.
//!
//! The reserved range is the subordinate range of the user [`RESERVED_USER`] in both files, added on first use
//! beyond every id and range the files name, so `useradd` (which allocates new subordinate ranges after the
//! existing ones) never hands it out again. It holds [`SLOTS`] blocks of [`RANGE_SIZE`] ids; a run leases one
//! block with an exclusive `flock` on `<state>/slots/N`, released when the run has ended, so no two live
//! sandboxes share a host id.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::IdMapError;
use crate::policy::RANGE_SIZE;

/// The user whose subordinate ranges are reserved for root callers' sandboxes.
pub const RESERVED_USER: &str = "sandkasten";
/// Blocks of [`RANGE_SIZE`] ids in the reserved range: that many root-started sandboxes may live at once.
pub const SLOTS: u32 = 1024;
/// Reserved ranges start at or above this id (the first id `useradd` gives out as subordinate).
const FLOOR: u64 = 100_000;

/// Where the id files are (the system's, or a test's).
#[derive(Clone, Debug)]
pub struct Files {
    pub subuid: PathBuf,
    pub subgid: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// Lock files of the reservation and the leases.
    pub state: PathBuf,
}

impl Files {
    /// The system's files; leases under `/run/sandkasten/ids` (a tmpfs: leases do not outlive a boot).
    pub fn system() -> Self {
        Files {
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            state: "/run/sandkasten/ids".into(),
        }
    }
}

/// One line of a subordinate id file: `owner:first:count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRange {
    pub owner: String,
    pub first: u32,
    pub count: u32,
}

impl SubRange {
    fn end(&self) -> u64 {
        u64::from(self.first) + u64::from(self.count)
    }
}

fn read(path: &Path) -> Result<String, IdMapError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(IdMapError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// The ranges of a subordinate id file (lines that are not `owner:first:count` are skipped, as `newuidmap`
/// does).
pub fn ranges(path: &Path) -> Result<Vec<SubRange>, IdMapError> {
    Ok(parse_ranges(&read(path)?))
}

pub fn parse_ranges(text: &str) -> Vec<SubRange> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (owner, first, count) = (f.next()?, f.next()?, f.next()?);
            if owner.is_empty() || owner.starts_with('#') || f.next().is_some() {
                return None;
            }
            Some(SubRange {
                owner: owner.into(),
                first: first.parse().ok()?,
                count: count.parse().ok().filter(|&c| c > 0)?,
            })
        })
        .collect()
}

/// `(name, id)` of each entry of `/etc/passwd` (uid) or `/etc/group` (gid).
pub fn ids_in_use(path: &Path) -> Result<Vec<(String, u32)>, IdMapError> {
    Ok(read(path)?
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((name.to_string(), id))
        })
        .collect())
}

/// The ranges of `user` (a name, or its uid as the files may also say) in `ranges`.
pub fn owned_by<'a>(ranges: &'a [SubRange], name: &str, uid: Option<u32>) -> Vec<&'a SubRange> {
    let uid = uid.map(|u| u.to_string());
    ranges
        .iter()
        .filter(|r| r.owner == name || uid.as_deref() == Some(r.owner.as_str()))
        .collect()
}

/// Refuses an explicit host range that holds host id 0, an id in use (`/etc/passwd` or `/etc/group`) or an id
/// of someone's subordinate range (the reserved range included).
pub fn check_free(
    files: &Files,
    kind: &str,
    first: u32,
    count: u32,
    allowed_owner: Option<&str>,
) -> Result<(), IdMapError> {
    let (users, subs) = if kind == "uid" {
        (&files.passwd, &files.subuid)
    } else {
        (&files.group, &files.subgid)
    };
    let end = u64::from(first) + u64::from(count);
    let inside = |id: u32| u64::from(id) >= u64::from(first) && u64::from(id) < end;
    if inside(0) {
        return Err(IdMapError::Overlap(format!(
            "the {kind} range holds host id 0"
        )));
    }
    for (name, id) in ids_in_use(users)? {
        if inside(id) {
            return Err(IdMapError::Overlap(format!(
                "host {kind} {id} of {name:?} ({}) is in the range {first}+{count}",
                users.display()
            )));
        }
    }
    for r in ranges(subs)? {
        if Some(r.owner.as_str()) != allowed_owner
            && u64::from(r.first) < end
            && r.end() > u64::from(first)
        {
            return Err(IdMapError::Overlap(format!(
                "the {kind} range {first}+{count} overlaps {}:{}:{} in {}",
                r.owner,
                r.first,
                r.count,
                subs.display()
            )));
        }
    }
    Ok(())
}

/// A run's block of the reserved range, held until dropped.
#[derive(Debug)]
pub struct Lease {
    _lock: File,
    /// The block's number.
    pub slot: u32,
    /// Its first host uid and gid.
    pub uid: u32,
    pub gid: u32,
}

impl Lease {
    /// The descriptor whose lock is the lease (a session that outlives its creator has its init hold it).
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        self._lock.as_raw_fd()
    }
}

fn flock(file: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn state_dir(path: &Path) -> Result<(), IdMapError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| IdMapError::Write {
            path: path.into(),
            source,
        })
}

fn lock_file(path: &Path) -> Result<File, IdMapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| IdMapError::Write {
            path: path.into(),
            source,
        })
}

/// The first id of the reserved range in `subs`, when it holds all [`SLOTS`] blocks.
fn reserved(subs: &[SubRange]) -> Option<u32> {
    subs.iter()
        .find(|r| r.owner == RESERVED_USER && u64::from(r.count) >= u64::from(SLOTS * RANGE_SIZE))
        .map(|r| r.first)
}

/// Where a new reserved range goes: at or above [`FLOOR`], beyond every subordinate range of both files and
/// every id below 2^31 that `/etc/passwd` or `/etc/group` names, aligned to a block.
fn place(files: &Files) -> Result<u32, IdMapError> {
    let mut top = FLOOR;
    for subs in [&files.subuid, &files.subgid] {
        for r in ranges(subs)? {
            top = top.max(r.end());
        }
    }
    for users in [&files.passwd, &files.group] {
        for (_, id) in ids_in_use(users)? {
            if id < 1 << 31 {
                top = top.max(u64::from(id) + 1);
            }
        }
    }
    let block = u64::from(RANGE_SIZE);
    let first = top.div_ceil(block) * block;
    let last = first + u64::from(SLOTS) * block;
    if last >= u64::from(u32::MAX) {
        return Err(IdMapError::Overlap(format!(
            "no room for {SLOTS} blocks of {RANGE_SIZE} ids above {top}: the subordinate id files are full"
        )));
    }
    Ok(first as u32)
}

fn append(path: &Path, line: &str) -> Result<(), IdMapError> {
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        // A file without a final newline must not swallow our line into its last one.
        let text = std::fs::read(path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            f.write_all(b"\n")?;
        }
        f.write_all(line.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|source| IdMapError::Write {
        path: path.into(),
        source,
    })
}

/// The reserved range's first uid and gid, adding the entries when they are missing (under a lock, so
/// concurrent first runs add them once).
pub fn reserve(files: &Files) -> Result<(u32, u32), IdMapError> {
    let found = |files: &Files| -> Result<(Option<u32>, Option<u32>), IdMapError> {
        Ok((
            reserved(&ranges(&files.subuid)?),
            reserved(&ranges(&files.subgid)?),
        ))
    };
    if let (Some(u), Some(g)) = found(files)? {
        return Ok((u, g));
    }
    state_dir(&files.state)?;
    let lock_path = files.state.join("reserve.lock");
    let lock = lock_file(&lock_path)?;
    flock(&lock, libc::LOCK_EX).map_err(|source| IdMapError::Write {
        path: lock_path,
        source,
    })?;
    let (mut u, mut g) = found(files)?;
    // One place for both when both are missing, so a block's uids and gids have the same numbers.
    let first = place(files)?;
    for (path, id) in [(&files.subuid, &mut u), (&files.subgid, &mut g)] {
        if id.is_none() {
            append(
                path,
                &format!("{RESERVED_USER}:{first}:{}\n", SLOTS * RANGE_SIZE),
            )?;
            tracing::info!(
                "reserved host ids {first}-{} for sandboxes in {}",
                first + SLOTS * RANGE_SIZE - 1,
                path.display()
            );
            *id = Some(first);
        }
    }
    Ok((u.unwrap_or_default(), g.unwrap_or_default()))
}

/// Leases a free block of the reserved range (reserving it first when needed).
pub fn lease(files: &Files) -> Result<Lease, IdMapError> {
    let (uid, gid) = reserve(files)?;
    let dir = files.state.join("slots");
    state_dir(&dir)?;
    // Start somewhere that differs between processes, so concurrent callers rarely try the same block.
    let start = std::process::id() % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let file = lock_file(&dir.join(slot.to_string()))?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {
                return Ok(Lease {
                    _lock: file,
                    slot,
                    uid: uid + slot * RANGE_SIZE,
                    gid: gid + slot * RANGE_SIZE,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => continue,
            Err(source) => {
                return Err(IdMapError::Write {
                    path: dir.join(slot.to_string()),
                    source,
                });
            }
        }
    }
    Err(IdMapError::NoFreeSlot { slots: SLOTS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Files {
        Files {
            subuid: dir.join("subuid"),
            subgid: dir.join("subgid"),
            passwd: dir.join("passwd"),
            group: dir.join("group"),
            state: dir.join("state"),
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sandkasten-subid-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parsing_skips_what_newuidmap_skips() {
        let r = parse_ranges("alice:100000:65536\n# c\nbad\nbob:1:0\n1000:200000:10\nx:1:2:3\n");
        assert_eq!(
            r,
            vec![
                SubRange {
                    owner: "alice".into(),
                    first: 100_000,
                    count: 65536
                },
                SubRange {
                    owner: "1000".into(),
                    first: 200_000,
                    count: 10
                }
            ]
        );
        assert_eq!(owned_by(&r, "carol", Some(1000)).len(), 1);
        assert_eq!(owned_by(&r, "alice", None).len(), 1);
    }

    #[test]
    fn reservation_goes_beyond_everything_and_happens_once() {
        let d = tmp("reserve");
        let f = files(&d);
        std::fs::write(&f.subuid, "alice:100000:65536\nbob:165536:65536").unwrap();
        std::fs::write(&f.subgid, "alice:100000:65536\n").unwrap();
        std::fs::write(
            &f.passwd,
            "root:x:0:0::/:/bin/sh\nbig:x:300000:1::/:/bin/sh\nnfs:x:4294967294:1::/:/\n",
        )
        .unwrap();
        std::fs::write(&f.group, "root:x:0:\n").unwrap();
        let (u, g) = reserve(&f).unwrap();
        assert_eq!((u, g), (327_680, 327_680), "aligned above uid 300000");
        let again = reserve(&f).unwrap();
        assert_eq!(again, (u, g));
        let subuid = std::fs::read_to_string(&f.subuid).unwrap();
        assert_eq!(subuid.matches(RESERVED_USER).count(), 1, "{subuid}");
        assert!(
            subuid.contains("bob:165536:65536\nsandkasten:327680:67108864\n"),
            "{subuid}"
        );
        // Two leases at once get different blocks; a dropped lease frees its block.
        let a = lease(&f).unwrap();
        let b = lease(&f).unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(a.uid, u + a.slot * RANGE_SIZE);
        let slot = a.slot;
        drop(a);
        let c = lease(&f).unwrap();
        assert_eq!(c.slot, slot);
        // An explicit range must avoid ids in use and others' subordinate ranges.
        assert!(check_free(&f, "uid", 400_000_000, 65536, None).is_ok());
        assert!(
            check_free(&f, "uid", 290_000, 65536, None).is_err(),
            "holds uid 300000"
        );
        assert!(
            check_free(&f, "uid", 150_000, 100, None).is_err(),
            "overlaps alice"
        );
        assert!(check_free(&f, "uid", 150_000, 100, Some("alice")).is_ok());
        assert!(
            check_free(&f, "uid", 327_680, 10, None).is_err(),
            "the reserved range"
        );
        assert!(check_free(&f, "gid", 0, 10, None).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
