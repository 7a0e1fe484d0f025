//! What a run takes from the store: an image's layers, held so that no `prune` removes them while the run
//! uses them ([`Checkout`]), and the files of a root (an image's layers or a directory) in which a run's
//! user is resolved and its top-level entries are listed ([`RootFiles`]).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use xattr::FileExt as _;

use super::source::valid_sha256;
use super::store::{find, read_meta, store_err};
use super::{ImageConfig, ImageError, ImageInfo, ImageStore, OPAQUE_XATTR, lock};

/// The largest `/etc/passwd` or `/etc/group` read from a root.
const MAX_ID_FILE: u64 = 4 << 20;

/// How long a checkout waits for a layer another process holds exclusively (an import removing what it
/// unpacked after a failure).
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// An image of the store held for a run: its layers stay in the store (a shared lock on each) until this is
/// dropped.
#[derive(Debug)]
pub struct Checkout {
    /// The image.
    pub info: ImageInfo,
    /// Its layers' trees, top layer first (overlayfs' `lowerdir` order).
    pub lowers: Vec<PathBuf>,
    _held: Vec<lock::Held>,
}

impl Checkout {
    /// The descriptors whose shared locks keep the layers (a session that outlives its creator has its init
    /// hold them).
    pub fn lock_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self._held.iter().map(|h| h.as_raw_fd()).collect()
    }

    /// The files of the image's root.
    pub fn files(&self) -> RootFiles {
        RootFiles::new(self.lowers.clone())
    }
}

impl ImageStore {
    /// The image `name` (as [`get`](Self::get) finds it) with its layers held for a run.
    pub fn checkout(&self, name: &str) -> Result<Checkout, ImageError> {
        let start = Instant::now();
        loop {
            let index_lock = self.lock_index()?;
            let index = self.read_index()?;
            let info = find(&index, name)
                .cloned()
                .ok_or_else(|| ImageError::NotFound(name.into()))?;
            let missing = |diff_id: &str| ImageError::LayerMissing {
                image: format!("{}:{}", info.name, info.tag),
                diff_id: diff_id.into(),
            };
            let mut held = Vec::with_capacity(info.layers.len());
            let mut lowers = Vec::with_capacity(info.layers.len());
            for layer in &info.layers {
                let hex = valid_sha256(&layer.diff_id).ok_or_else(|| missing(&layer.diff_id))?;
                let path = self.layer_lock(hex);
                // Never wait under the index lock: an import holding a layer waits for the index.
                match lock::lock(&path, false, false)
                    .map_err(store_err(&path, "locking a layer for a run"))?
                {
                    Some(h) => held.push(h),
                    None => break,
                }
                if read_meta(&self.layer_dir(hex)).is_none() {
                    return Err(missing(&layer.diff_id));
                }
                lowers.push(self.layer_dir(hex).join("root"));
            }
            drop(index_lock);
            if held.len() == info.layers.len() {
                lowers.reverse();
                return Ok(Checkout {
                    info,
                    lowers,
                    _held: held,
                });
            }
            if start.elapsed() > BUSY_WAIT {
                return Err(ImageError::Store {
                    path: self.path().join("layers"),
                    what: "waiting for a layer another process holds",
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl ImageConfig {
    /// The command of a run: the image's `Entrypoint`, then `args` when there are any, else the image's
    /// `Cmd` (as `docker run IMAGE ARGS` does). `None` when that is empty.
    pub fn command(&self, args: &[OsString]) -> Option<Vec<OsString>> {
        let mut argv: Vec<OsString> = (self.entrypoint.iter().flatten())
            .map(OsString::from)
            .collect();
        if args.is_empty() {
            argv.extend(self.cmd.iter().flatten().map(OsString::from));
        } else {
            argv.extend(args.iter().cloned());
        }
        (!argv.is_empty()).then_some(argv)
    }

    /// The image's `Env` as pairs (lines without `=` are skipped).
    pub fn env_pairs(&self) -> Vec<(OsString, OsString)> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

/// The files of a root made of layers (top first; a directory root is one layer), read the way overlayfs
/// shows them: the topmost layer that has a path wins, a whiteout hides it. Every lookup stays inside its
/// layer (symlinks resolved with the layer as `/`).
#[derive(Debug, Clone)]
pub struct RootFiles {
    layers: Vec<PathBuf>,
}

/// A user resolved in a root's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl RootFiles {
    /// The root made of `layers`, top first.
    pub fn new(layers: Vec<PathBuf>) -> Self {
        RootFiles { layers }
    }

    /// Opens `rel` (relative, no `..` needed) in one layer, resolving symlinks inside the layer.
    fn open_in(layer: &Path, rel: &str, flags: OFlag) -> Result<File, Errno> {
        let dir = File::open(layer).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::empty())
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        openat2(&dir, rel, how).map(File::from)
    }

    /// The contents of the file `rel` as the root shows it, or `None` when the root has none.
    pub fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        let parent = Path::new(rel).parent().and_then(Path::to_str).unwrap_or("");
        for layer in &self.layers {
            // O_PATH first: a device or fifo is never opened, only looked at.
            match Self::open_in(layer, rel, OFlag::O_PATH) {
                Ok(file) => {
                    let meta = file.metadata()?;
                    if meta.file_type().is_char_device() && meta.rdev() == 0 {
                        return Ok(None); // a whiteout
                    }
                    if !meta.is_file() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{rel} is not a regular file"),
                        ));
                    }
                    let file = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
                    let mut bytes = Vec::new();
                    file.take(MAX_ID_FILE).read_to_end(&mut bytes)?;
                    return Ok(Some(bytes));
                }
                Err(Errno::ENOENT) => {
                    // An opaque parent directory in this layer hides the layers below.
                    if !parent.is_empty()
                        && let Ok(dir) = Self::open_in(
                            layer,
                            parent,
                            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
                        )
                        && dir.get_xattr(OPAQUE_XATTR).ok().flatten().is_some()
                    {
                        return Ok(None);
                    }
                }
                // A whiteout (or a file) where a parent directory would be.
                Err(Errno::ENOTDIR) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// The names at the top of the root (whiteouts applied).
    pub fn top_level(&self) -> Vec<OsString> {
        let mut names = BTreeSet::new();
        for layer in self.layers.iter().rev() {
            let Ok(entries) = std::fs::read_dir(layer) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.file_type().is_char_device() && meta.rdev() == 0 {
                    names.remove(&e.file_name());
                } else {
                    names.insert(e.file_name());
                }
            }
        }
        names.into_iter().collect()
    }

    /// Resolves `NAME|UID[:GROUP|GID]` in the root's `/etc/passwd` and `/etc/group`. A uid without a group
    /// gets its passwd entry's group, or 0 when it has no entry (as Docker does).
    pub fn user(&self, spec: &str) -> Result<ResolvedUser, ImageError> {
        let err = |what: String| ImageError::User {
            user: spec.into(),
            what,
        };
        let read = |rel: &str| {
            self.read(rel)
                .map(Option::unwrap_or_default)
                .map_err(|e| err(format!("reading /{rel} of the root: {e}")))
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group == Some("") {
            return Err(err("give NAME|UID[:GROUP|GID]".into()));
        }
        // A bare uid needs no passwd entry: an unreadable file only costs it the entry's group.
        let passwd = match (read("etc/passwd"), number(user.as_bytes())) {
            (Ok(text), _) => text,
            (Err(_), Some(_)) => Vec::new(),
            (Err(e), None) => return Err(e),
        };
        let entry = |pred: &dyn Fn(&[&[u8]]) -> bool| -> Option<(u32, u32)> {
            id_lines(&passwd)
                .find(|f| f.len() >= 4 && pred(f))
                .and_then(|f| Some((number(f[2])?, number(f[3])?)))
        };
        let (uid, passwd_gid) = match number(user.as_bytes()) {
            Some(uid) => (uid, entry(&|f| number(f[2]) == Some(uid)).map(|e| e.1)),
            None => {
                let (uid, gid) = entry(&|f| f[0] == user.as_bytes())
                    .ok_or_else(|| err(format!("no user {user:?} in the root's /etc/passwd")))?;
                (uid, Some(gid))
            }
        };
        let gid = match group {
            None => passwd_gid.unwrap_or(0),
            Some(g) => match number(g.as_bytes()) {
                Some(gid) => gid,
                None => {
                    let groups = read("etc/group")?;
                    id_lines(&groups)
                        .find(|f| f.len() >= 3 && f[0] == g.as_bytes())
                        .and_then(|f| number(f[2]))
                        .ok_or_else(|| err(format!("no group {g:?} in the root's /etc/group")))?
                }
            },
        };
        if uid == u32::MAX || gid == u32::MAX {
            return Err(err("uid and gid must be below 4294967295".into()));
        }
        Ok(ResolvedUser { uid, gid })
    }
}

/// The colon-separated fields of each line of a passwd or group file (comments and blank lines skipped).
fn id_lines(text: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .map(|l| l.split(|&b| b == b':').collect())
}

fn number(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(files: &[(&str, &str)]) -> (tempfile_dir::Dir, RootFiles) {
        let d = tempfile_dir::Dir::new();
        for (path, text) in files {
            let p = d.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let files = RootFiles::new(vec![d.0.clone()]);
        (d, files)
    }

    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("sandkasten-rootfiles-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn users_resolve_like_docker() {
        let (_d, f) = root(&[
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001::/home/app:/bin/sh\n",
            ),
            ("etc/group", "root:x:0:\nstaff:x:50:app\n"),
        ]);
        let u = |s| f.user(s).map(|u| (u.uid, u.gid));
        assert_eq!(u("app").unwrap(), (1000, 1001));
        assert_eq!(u("1000").unwrap(), (1000, 1001));
        assert_eq!(u("1234").unwrap(), (1234, 0));
        assert_eq!(u("app:staff").unwrap(), (1000, 50));
        assert_eq!(u("app:7").unwrap(), (1000, 7));
        assert_eq!(u("0").unwrap(), (0, 0));
        assert!(matches!(f.user("nobody"), Err(ImageError::User { .. })));
        assert!(matches!(f.user("app:wheel"), Err(ImageError::User { .. })));
        assert!(matches!(f.user("app:"), Err(ImageError::User { .. })));
        assert!(matches!(f.user("4294967295"), Err(ImageError::User { .. })));
    }

    #[test]
    fn lookups_stay_inside_the_root() {
        let (d, f) = root(&[("etc/group", "g:x:5:\n")]);
        // /etc/passwd is a symlink to the host's: resolved inside the root, where it does not exist.
        std::os::unix::fs::symlink("/../../../../etc/hostname", d.0.join("etc/passwd")).unwrap();
        assert_eq!(f.read("etc/passwd").unwrap(), None);
        assert!(f.user("root").is_err());
    }

    #[test]
    fn upper_layers_win_and_whiteouts_hide() {
        let (lower, _) = root(&[("etc/passwd", "a:x:1:1::/:/bin/sh\n"), ("bin/x", "")]);
        let (upper, _) = root(&[("etc/passwd", "a:x:2:2::/:/bin/sh\n"), ("opt/y", "")]);
        let f = RootFiles::new(vec![upper.0.clone(), lower.0.clone()]);
        assert_eq!(f.user("a").unwrap(), ResolvedUser { uid: 2, gid: 2 });
        let names: Vec<_> = f.top_level();
        assert_eq!(names, ["bin", "etc", "opt"].map(OsString::from));
        // A whiteout of etc/passwd in the upper layer (a 0:0 character device; needs root to make).
        if nix::unistd::geteuid().is_root() {
            std::fs::remove_file(upper.0.join("etc/passwd")).unwrap();
            nix::sys::stat::mknod(
                &upper.0.join("etc/passwd"),
                nix::sys::stat::SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap();
            assert_eq!(f.read("etc/passwd").unwrap(), None);
            nix::sys::stat::mknod(
                &upper.0.join("bin"),
                nix::sys::stat::SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap();
            assert_eq!(f.top_level(), ["etc", "opt"].map(OsString::from));
        }
    }

    #[test]
    fn commands_follow_entrypoint_and_cmd() {
        let c = ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            ..ImageConfig::default()
        };
        assert_eq!(
            c.command(&[]).unwrap(),
            ["/entry", "serve"].map(OsString::from)
        );
        assert_eq!(
            c.command(&["x".into()]).unwrap(),
            ["/entry", "x"].map(OsString::from)
        );
        assert_eq!(ImageConfig::default().command(&[]), None);
    }
}
