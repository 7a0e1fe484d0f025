//! The guest's initramfs: an uncompressed cpio archive in the "newc" format (magic `070701`), written by our
//! own small writer, and [`pack_agent`], which lays out what the guest agent needs.
//!
//! The archive stays uncompressed on purpose: decompression under emulation costs seconds (VM-NOTES.md), and
//! the kernel is built without any initramfs decompressor. Entries carry uid and gid 0 and mtime 0, so the same
//! inputs always give the same bytes. Missing parent directories are added (mode 0755) before an entry,
//! because the kernel's unpacker does not create them.
//!
//! ```
//! use sandkasten::vm::Initramfs;
//!
//! let mut cpio = Initramfs::new();
//! cpio.dir("/etc", 0o755)?
//!     .file("/etc/motd", 0o644, b"hello\n")?
//!     .symlink("/bin", "usr/bin")?;
//! let bytes = cpio.finish();
//! assert!(bytes.starts_with(b"070701"));
//! # Ok::<(), sandkasten::vm::InitramfsError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::protocol::{RunSpec, SPEC_PATH};

/// Where [`pack_agent`] puts the agent: the kernel runs `/init` from the initramfs as PID 1.
pub const AGENT_PATH: &str = "/init";

/// The newc magic: no checksums.
const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// Errors while building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path is empty, relative in a way that escapes, or contains `.`, `..`, empty components or NUL.
    #[error(
        "initramfs path {0:?} is not usable: give a path like /dir/name without `.`, `..`, empty components or \
         NUL bytes"
    )]
    BadPath(String),
    /// The same path was added twice (parents added automatically count as added).
    #[error(
        "initramfs entry {0:?} is added twice (add a directory before its contents to choose its mode)"
    )]
    Duplicate(String),
    /// A path lies below an entry that is not a directory.
    #[error("initramfs entry {path:?} cannot be added: {parent:?} is not a directory")]
    ParentNotDirectory {
        /// The entry.
        path: String,
        /// Its parent that was added as something else.
        parent: String,
    },
    /// A file does not fit the newc format's 32-bit size field.
    #[error(
        "initramfs file {path:?} has {size} bytes; the newc format holds at most 4 GiB - 1 per file"
    )]
    TooLarge {
        /// The entry.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A host file to pack could not be read.
    #[error("cannot read {path:?} to pack it into the initramfs: {source}")]
    Read {
        /// The host file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The run specification could not be serialised.
    #[error("cannot serialise the run specification: {0}")]
    Spec(#[from] serde_json::Error),
}

/// An uncompressed newc cpio archive being written in memory.
#[derive(Debug)]
pub struct Initramfs {
    out: Vec<u8>,
    next_ino: u32,
    /// Every name written so far (without the leading `/`), and whether it is a directory.
    names: BTreeMap<String, bool>,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Initramfs {
            out: Vec::new(),
            next_ino: 1,
            names: BTreeMap::new(),
        }
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`, `0o1777`).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, InitramfsError> {
        let name = self.prepare(path)?;
        self.entry(&name, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[]);
        self.names.insert(name, true);
        Ok(self)
    }

    /// Adds a regular file with permission bits `mode` and contents `data`.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
    ) -> Result<&mut Self, InitramfsError> {
        let name = self.prepare(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(InitramfsError::TooLarge {
                path: path.into(),
                size: data.len() as u64,
            });
        }
        self.entry(&name, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
        self.names.insert(name, false);
        Ok(self)
    }

    /// Adds a symbolic link at `path` pointing to `target` (stored as given, relative or absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        let name = self.prepare(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::BadPath(target.into()));
        }
        self.entry(&name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
        self.names.insert(name, false);
        Ok(self)
    }

    /// Adds a character device node (e.g. `/dev/console`, 5:1). Creating it needs privileges when a tool
    /// extracts the archive; the kernel's unpacker always can.
    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let name = self.prepare(path)?;
        self.entry(&name, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[]);
        self.names.insert(name, false);
        Ok(self)
    }

    /// Adds a block device node.
    pub fn block_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let name = self.prepare(path)?;
        self.entry(&name, S_IFBLK | (mode & 0o7777), 1, (major, minor), &[]);
        self.names.insert(name, false);
        Ok(self)
    }

    /// Ends the archive with its trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(TRAILER, 0, 0, 1, (0, 0), 0);
        self.out
    }

    /// Validates `path`, checks it is new, and writes any missing parent directories. Returns the archive name.
    fn prepare(&mut self, path: &str) -> Result<String, InitramfsError> {
        let name = archive_name(path)?;
        if self.names.contains_key(&name) {
            return Err(InitramfsError::Duplicate(path.into()));
        }
        let mut parent = String::new();
        let comps: Vec<&str> = name.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.names.get(&parent) {
                Some(true) => {}
                Some(false) => {
                    return Err(InitramfsError::ParentNotDirectory {
                        path: path.into(),
                        parent: format!("/{parent}"),
                    });
                }
                None => {
                    self.entry(&parent, S_IFDIR | 0o755, 2, (0, 0), &[]);
                    self.names.insert(parent.clone(), true);
                }
            }
        }
        Ok(name)
    }

    /// Writes one entry: header, name, data, each padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, rdev, data.len() as u32);
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32) {
        self.out.extend_from_slice(MAGIC);
        let namesize = name.len() as u32 + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// `/a/b` or `a/b` → `a/b`; rejects `.`, `..`, empty components, NUL and the root itself.
fn archive_name(path: &str) -> Result<String, InitramfsError> {
    let bad = || InitramfsError::BadPath(path.into());
    let rel = path.strip_prefix('/').unwrap_or(path);
    if rel.is_empty() || rel.contains('\0') {
        return Err(bad());
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    if rel == TRAILER {
        return Err(bad());
    }
    Ok(rel.into())
}

/// One more file for [`pack_agent`] to put into the initramfs.
#[derive(Clone, Copy, Debug)]
pub struct ExtraFile<'a> {
    /// Absolute path in the guest.
    pub path: &'a str,
    /// Contents.
    pub data: &'a [u8],
    /// Permission bits.
    pub mode: u32,
}

/// Packs the guest agent into an initramfs: the agent as `/init`, the mount points it uses, `/dev/console`
/// (so the kernel can give PID 1 its standard streams), the run specification as `/sandbox/spec.json` when
/// given (a guest whose host sends the spec over the `sandbox.control` port needs none), and `extra` files.
///
/// The agent must be a static executable: the initramfs holds no libraries.
pub fn pack_agent(
    agent: &Path,
    spec: Option<&RunSpec>,
    extra: &[ExtraFile<'_>],
) -> Result<Vec<u8>, InitramfsError> {
    let binary = std::fs::read(agent).map_err(|source| InitramfsError::Read {
        path: agent.into(),
        source,
    })?;
    let mut cpio = Initramfs::new();
    cpio.dir("/dev", 0o755)?
        .char_device("/dev/console", 0o600, 5, 1)?
        .dir("/proc", 0o555)?
        .dir("/sys", 0o555)?
        .dir("/tmp", 0o1777)?
        .dir("/run", 0o755)?
        .dir("/mnt", 0o755)?
        .dir("/etc", 0o755)?
        .dir("/sandbox", 0o755)?
        .file(AGENT_PATH, 0o755, &binary)?;
    if let Some(spec) = spec {
        let mut json = serde_json::to_vec_pretty(spec)?;
        json.push(b'\n');
        cpio.file(SPEC_PATH, 0o644, &json)?;
    }
    for f in extra {
        cpio.file(f.path, f.mode, f.data)?;
    }
    Ok(cpio.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use testkit::TempDir;

    /// A fresh empty directory (mode 0755) under the system temp dir, removed on drop.
    fn temp_dir(tag: &str) -> TempDir {
        TempDir::with_mode(&format!("cpio-{tag}"), 0o755)
    }

    /// Runs the system `cpio` with `args` in `dir`, the archive on stdin; returns stdout.
    fn cpio(dir: &Path, args: &[&str], archive: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the system `cpio` must be installed for these tests (Debian: apt-get install cpio)");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn sample() -> Vec<u8> {
        let mut a = Initramfs::new();
        a.dir("/tmp", 0o1777)
            .unwrap()
            .file("/init", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap()
            .file("/etc/deep/nested/secret", 0o600, b"s3cret")
            .unwrap()
            .file("odd-size", 0o644, b"12345")
            .unwrap()
            .file("/empty", 0o644, b"")
            .unwrap()
            .symlink("/bin", "usr/bin")
            .unwrap();
        a.finish()
    }

    #[test]
    fn system_cpio_lists_every_name() {
        let dir = temp_dir("list");
        let names: Vec<String> = cpio(dir.path(), &["-it", "--quiet"], &sample())
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(
            names,
            [
                "tmp",
                "init",
                "etc",
                "etc/deep",
                "etc/deep/nested",
                "etc/deep/nested/secret",
                "odd-size",
                "empty",
                "bin"
            ]
        );
    }

    #[test]
    fn system_cpio_extracts_contents_modes_and_links() {
        let dir = temp_dir("extract");
        cpio(
            dir.path(),
            &["-id", "--quiet", "--no-absolute-filenames"],
            &sample(),
        );
        let mode = |p: &str| {
            std::fs::symlink_metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("tmp"), 0o041777);
        assert_eq!(mode("init"), 0o100755);
        assert_eq!(mode("etc/deep"), 0o040755, "parents are added with 0755");
        assert_eq!(mode("etc/deep/nested/secret"), 0o100600);
        assert_eq!(
            std::fs::read(dir.path().join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("etc/deep/nested/secret")).unwrap(),
            b"s3cret"
        );
        assert_eq!(
            std::fs::read(dir.path().join("odd-size")).unwrap(),
            b"12345"
        );
        assert_eq!(std::fs::read(dir.path().join("empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read_link(dir.path().join("bin")).unwrap(),
            Path::new("usr/bin")
        );
    }

    #[test]
    fn device_nodes_carry_major_and_minor() {
        let mut a = Initramfs::new();
        a.char_device("/dev/console", 0o600, 5, 1)
            .unwrap()
            .block_device("/dev/vda", 0o660, 254, 0)
            .unwrap();
        let dir = temp_dir("dev");
        let listing = cpio(dir.path(), &["-itv", "--quiet"], &a.finish());
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x"), "{listing}");
        assert!(lines[1].starts_with("crw-------"), "{listing}");
        assert!(
            lines[1].contains("5,") && lines[1].ends_with("dev/console"),
            "{listing}"
        );
        assert!(lines[2].starts_with("brw-rw----"), "{listing}");
        assert!(
            lines[2].contains("254,") && lines[2].ends_with("dev/vda"),
            "{listing}"
        );
    }

    #[test]
    fn layout_is_aligned_and_ends_with_the_trailer() {
        let bytes = sample();
        assert!(bytes.len().is_multiple_of(4));
        let t = bytes
            .windows(TRAILER.len())
            .rposition(|w| w == TRAILER.as_bytes())
            .unwrap();
        // The trailer's header sits right before its name.
        assert_eq!(&bytes[t - 110..t - 104], MAGIC);
        assert_eq!(sample(), bytes, "the same inputs give the same bytes");
    }

    #[test]
    fn bad_paths_and_duplicates_are_refused() {
        let mut a = Initramfs::new();
        for p in [
            "",
            "/",
            "a//b",
            "/a/../b",
            "./a",
            "a/.",
            "x\0y",
            "TRAILER!!!",
        ] {
            assert!(
                matches!(a.file(p, 0o644, b""), Err(InitramfsError::BadPath(_))),
                "{p:?}"
            );
        }
        a.file("/a/b", 0o644, b"").unwrap();
        assert!(matches!(
            a.dir("/a", 0o700),
            Err(InitramfsError::Duplicate(_))
        ));
        assert!(matches!(
            a.file("/a/b", 0o644, b""),
            Err(InitramfsError::Duplicate(_))
        ));
        assert!(matches!(
            a.file("/a/b/c", 0o644, b""),
            Err(InitramfsError::ParentNotDirectory { .. })
        ));
        assert!(matches!(
            a.symlink("/l", ""),
            Err(InitramfsError::BadPath(_))
        ));
    }

    #[test]
    fn pack_agent_lays_out_init_spec_and_mount_points() {
        let dir = temp_dir("pack");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF not really").unwrap();
        let spec = RunSpec::new("/bin/true");
        let bytes = pack_agent(
            &agent,
            Some(&spec),
            &[ExtraFile {
                path: "/etc/hostname",
                data: b"guest\n",
                mode: 0o644,
            }],
        )
        .unwrap();
        let listing = cpio(dir.path(), &["-it", "--quiet"], &bytes);
        for name in [
            "init",
            "dev/console",
            "proc",
            "sys",
            "tmp",
            "sandbox/spec.json",
            "etc/hostname",
        ] {
            assert!(listing.lines().any(|l| l == name), "{name} in {listing}");
        }
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // Device nodes cannot be created unprivileged: extract everything else.
        cpio(
            &out,
            &[
                "-id",
                "--quiet",
                "--no-absolute-filenames",
                "--nonmatching",
                "dev/console",
            ],
            &bytes,
        );
        assert_eq!(
            std::fs::read(out.join("init")).unwrap(),
            b"\x7fELF not really"
        );
        let back: RunSpec =
            serde_json::from_slice(&std::fs::read(out.join("sandbox/spec.json")).unwrap()).unwrap();
        assert_eq!(back, spec);
        assert!(matches!(
            pack_agent(&dir.path().join("missing"), None, &[]),
            Err(InitramfsError::Read { .. })
        ));
    }
}
