//! The VM engines' snapshot cache: a booted guest, saved once its agent has said READY and before it
//! mounted anything, is restored instead of booted the next time the same guest is asked for.
//!
//! A snapshot is keyed by what the guest is: the kernel and initramfs (their contents), RAM, the kernel
//! command line and the devices as the guest sees them (console port names, share tags and access), and the
//! snapshot format version. Files live in the [`SnapshotCache`](crate::SnapshotCache) directory (by default
//! `~/.cache/sandbox/snapshots`, next to the kernel cache) as `guest-<engine>-<key>.vmsnap`, mode 0600 in a
//! 0700 directory, written to a temporary name and renamed into place only once complete and synced; each
//! engine keeps its [`KEPT`] most recently used. A snapshot that fails to restore is deleted, so the next
//! start boots and saves a new one.
//!
//! The host side of one VM's snapshot: [`Session`] over the VMM's snapshot channel: our VMM's
//! (`sandbox-init vmm`'s `snapshot` config, see [`crate::vmm::snapshot::serve`]), or QEMU's monitor ([`qmp`]),
//! whose snapshots are its own migration stream. The key names the engine (and QEMU's binary), so the two
//! never take each other's files.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::PING_LINE;
use crate::vmm::snapshot::SaveReport;
use crate::vmm::snapshot::format::VERSION;

mod qmp;

/// What went wrong on a VM's snapshot channel or with its snapshot file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// Setting the channel's read timeout.
    #[error("setting the timeout of the VMM's snapshot channel: {0}")]
    Timeout(#[source] std::io::Error),
    /// The VMM ended (its own error tells why).
    #[error("the VMM closed its snapshot channel (it failed: see its error)")]
    Closed,
    /// The VMM said nothing in time.
    #[error("no answer from the VMM's snapshot channel within {limit:?}: {source}")]
    NoAnswer {
        limit: Duration,
        source: std::io::Error,
    },
    /// The VMM said something else than the protocol's next line.
    #[error("unexpected {what} {line:?}")]
    Unexpected { what: &'static str, line: String },
    /// No random seed for a restored guest.
    #[error("reading /dev/urandom for the restored guest's random seed: {0}")]
    Seed(#[source] std::io::Error),
    /// The ping to a restored agent.
    #[error("asking the restored agent whether it runs: {0}")]
    Ping(#[source] std::io::Error),
    /// A save asked of a restored VM.
    #[error("this VM was restored, not booted")]
    NotBooted,
    /// Asking the VMM to save.
    #[error("asking for a snapshot: {0}")]
    Ask(#[source] std::io::Error),
    /// The VMM could not save (its reason).
    #[error("{0}")]
    Refused(String),
    /// The VMM's save report is not what it should be.
    #[error("bad save report: {0}")]
    BadReport(#[source] serde_json::Error),
    /// Syncing or renaming the saved file into place.
    #[error("{call} {}: {source}", path.display())]
    File {
        call: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How many snapshots a cache directory keeps of each engine (the engines' guests never share a snapshot, and
/// QEMU's many variants of a guest must not push out the one our VMM restores from).
pub const KEPT: usize = 4;

/// The engine a snapshot's file name names (`guest-<engine>-<key>.vmsnap`). `None`: not a snapshot;
/// `Some(None)`: a snapshot of the older name without the engine, which no key makes any more.
fn engine_of(name: &str) -> Option<Option<&str>> {
    let inner = name.strip_prefix("guest-")?.strip_suffix(".vmsnap")?;
    Some(inner.rsplit_once('-').map(|(engine, _)| engine))
}

/// Keeps the most recently used snapshots in `dir`, `keep` of `engine`'s and [`KEPT`] of each other engine's,
/// and removes the others, snapshots of the old unnamed form, and the temporary files of processes that are
/// gone (a save that was killed): called at every start that uses the cache.
fn prune(dir: &Path, engine: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut snapshots: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match engine_of(&name) {
            Some(Some(owner)) => {
                let used = e.metadata().and_then(|m| m.modified()).ok();
                snapshots
                    .entry(owner.to_string())
                    .or_default()
                    .push((used, e.path()));
            }
            Some(None) => {
                tracing::info!(path = %e.path().display(), "snapshot cache: removing a snapshot of the old name");
                let _ = std::fs::remove_file(e.path());
            }
            None if name.starts_with(".guest-")
                && name
                    .strip_suffix(".tmp")
                    .and_then(|n| n.rsplit('.').next())
                    .is_some_and(super::assets::writer_gone) =>
            {
                let _ = std::fs::remove_file(e.path());
            }
            None => {}
        }
    }
    for (owner, mut files) in snapshots {
        let keep = if owner == engine { keep } else { KEPT };
        files.sort_by_key(|s| std::cmp::Reverse(s.0));
        for (_, path) in files.into_iter().skip(keep) {
            tracing::info!(path = %path.display(), "snapshot cache: removing the least recently used");
            let _ = std::fs::remove_file(path);
        }
    }
}

/// FNV-1a, 64 bits: a cache key, not a defence (the cache is the user's own, like the kernel cache).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, data: &[u8]) -> &mut Fnv {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// A length-prefixed field, so fields cannot run into each other.
    fn field(&mut self, data: &[u8]) -> &mut Fnv {
        self.bytes(&(data.len() as u64).to_le_bytes()).bytes(data)
    }
}

/// What a snapshot must match.
#[derive(Clone, Debug)]
pub(crate) struct GuestKey<'a> {
    /// The kernel file.
    pub kernel: &'a Path,
    /// The initramfs file (the agent).
    pub initramfs: &'a Path,
    /// Guest RAM.
    pub memory_mib: u64,
    /// The kernel command line (before the VMM adds its virtio-mmio options).
    pub cmdline: &'a str,
    /// The devices as the guest sees them, in slot order.
    pub devices: Vec<String>,
    /// The engine's name in the file name (`builtin`, `qemu`): each engine's snapshots are counted apart.
    pub engine: &'static str,
}

impl<'a> GuestKey<'a> {
    /// The guest `engine` (`builtin`, `qemu`) makes for `request`: its files, RAM, command line and devices as it
    /// sees them. `identity` tells one build of the engine from another (QEMU's binary and accelerator; empty
    /// for our VMM, whose build is the initramfs's).
    pub(crate) fn of(
        engine: &'static str,
        identity: &str,
        kernel: &'a Path,
        initramfs: &'a Path,
        request: &super::hypervisor::Request<'_>,
        cmdline: &'a str,
    ) -> GuestKey<'a> {
        let names: Vec<&str> = request.ports.iter().map(|&(n, _)| n).collect();
        let engine_line = match identity {
            "" => format!("engine {engine}"),
            id => format!("engine {engine} {id}"),
        };
        let mut devices = vec![engine_line, format!("console {}", names.join(","))];
        devices.extend(
            request
                .shares
                .iter()
                .map(|s| format!("fs {} {}", s.tag, s.readonly)),
        );
        if request.net_fd.is_some() {
            devices.push("net".to_string());
        }
        GuestKey {
            kernel,
            initramfs,
            memory_mib: request.memory_mib,
            cmdline,
            devices,
            engine,
        }
    }

    /// The file name of the snapshot of this guest.
    pub(crate) fn file_name(&self) -> std::io::Result<String> {
        let mut h = Fnv::new();
        h.field(&VERSION.to_le_bytes());
        for p in [self.kernel, self.initramfs] {
            let mut f = File::open(p)?;
            let mut buf = vec![0u8; 1 << 20];
            h.field(p.as_os_str().as_encoded_bytes());
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.bytes(&buf[..n]);
            }
        }
        h.field(&self.memory_mib.to_le_bytes())
            .field(self.cmdline.as_bytes());
        for d in &self.devices {
            h.field(d.as_bytes());
        }
        Ok(format!("guest-{}-{:016x}.vmsnap", self.engine, h.0))
    }
}

/// A cache this user may not write is the usual case of a process whose `HOME` is another user's (a service
/// started with `setpriv`, `sudo -u`): said at info level, since the VM just boots; anything else warns.
fn unusable(path: &Path, e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        tracing::info!("snapshot cache {}: {e}; the VM boots", path.display());
    } else {
        tracing::warn!("snapshot cache {}: {e}; the VM boots", path.display());
    }
}

/// What a VMM start does with the cache.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Restore from this snapshot.
    Restore {
        /// Open for reading.
        file: File,
        /// Where it is (deleted when the restore fails).
        path: PathBuf,
    },
    /// Boot, then save into this temporary file, renamed to `path` when complete.
    Save {
        /// Open for writing, empty.
        file: File,
        /// The temporary name.
        tmp: PathBuf,
        /// The final name.
        path: PathBuf,
    },
}

impl Plan {
    /// Restore when the snapshot of `key` exists, else save one; `None` when the cache is unusable (then
    /// the VM just boots).
    pub(crate) fn for_guest(dir: &Path, key: &GuestKey<'_>) -> Option<Plan> {
        let name = key
            .file_name()
            .map_err(|e| tracing::warn!("snapshot cache: cannot read the guest's files: {e}"))
            .ok()?;
        let path = dir.join(&name);
        if let Ok(file) = File::open(&path) {
            // Its modification time is its last use, for [`prune`].
            let _ = file.set_modified(std::time::SystemTime::now());
            prune(dir, key.engine, KEPT);
            return Some(Plan::Restore { file, path });
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unusable(dir, &e))
            .ok()?;
        // Room for the new one.
        prune(dir, key.engine, KEPT - 1);
        // Its own name: two VMs of one process saving the same guest at once must not write one file.
        let tmp = dir.join(format!(".{name}.{}.tmp", super::assets::unique_tag()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| unusable(&tmp, &e))
            .ok()?;
        Some(Plan::Save { file, tmp, path })
    }

    /// The file the VMM gets.
    pub(crate) fn file(&self) -> &File {
        match self {
            Plan::Restore { file, .. } | Plan::Save { file, .. } => file,
        }
    }

    /// A descriptor of the file for the VMM's process.
    pub(crate) fn dup_file(&self) -> Result<std::os::fd::OwnedFd, super::error::VmError> {
        let file = self.file();
        file.try_clone()
            .map(Into::into)
            .map_err(|source| super::error::VmError::Dup {
                what: "the snapshot file",
                fd: std::os::fd::AsRawFd::as_raw_fd(file),
                source,
            })
    }

    /// Whether the VM is restored rather than booted.
    pub(crate) fn restores(&self) -> bool {
        matches!(self, Plan::Restore { .. })
    }
}

/// One VM's snapshot channel, host side.
#[derive(Debug)]
pub(crate) struct Session {
    channel: BufReader<UnixStream>,
    plan: Plan,
    protocol: Protocol,
}

/// What the VMM speaks on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// Our VMM's lines (`started`, `save`, `saved {...}`, `restored`).
    Vmm,
    /// QEMU's machine protocol ([`qmp`]).
    Qmp,
}

/// Reads one line within `limit`; an error when the channel closes or stays silent.
fn read_reply(r: &mut BufReader<UnixStream>, limit: Duration) -> Result<String, SnapshotError> {
    r.get_ref()
        .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
        .map_err(SnapshotError::Timeout)?;
    let mut line = String::new();
    match r.by_ref().take(1 << 16).read_line(&mut line) {
        Ok(0) => Err(SnapshotError::Closed),
        Ok(_) => Ok(line.trim().to_string()),
        Err(source) => Err(SnapshotError::NoAnswer { limit, source }),
    }
}

impl Session {
    /// A session over the host end of our VMM's channel.
    pub(crate) fn new(channel: UnixStream, plan: Plan) -> Session {
        Session {
            channel: BufReader::new(channel),
            plan,
            protocol: Protocol::Vmm,
        }
    }

    /// A session over the host end of QEMU's QMP monitor.
    pub(crate) fn qmp(channel: UnixStream, plan: Plan) -> Session {
        let mut s = Session::new(channel, plan);
        s.protocol = Protocol::Qmp;
        s
    }

    /// Whether the VM is being restored.
    pub(crate) fn restores(&self) -> bool {
        self.plan.restores()
    }

    /// Waits for the VMM to say it restored the VM, then asks the agent, on its `control` port, for a new
    /// READY line: the agent sent its first before the snapshot, and answering proves the guest runs. The
    /// ping carries fresh random bytes, with which the agent reseeds the kernel's random generator (its
    /// state is in the snapshot, the same for every guest restored from it).
    pub(crate) fn resume_restored(
        &mut self,
        control: &UnixStream,
        limit: Duration,
    ) -> Result<(), SnapshotError> {
        match self.protocol {
            Protocol::Qmp => qmp::resume(&mut self.channel, limit)?,
            Protocol::Vmm => match read_reply(&mut self.channel, limit)?.as_str() {
                "restored" => {}
                other => {
                    return Err(SnapshotError::Unexpected {
                        what: "answer",
                        line: other.into(),
                    });
                }
            },
        }
        let mut seed = [0u8; crate::protocol::MAX_SEED];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(SnapshotError::Seed)?;
        let hex = crate::protocol::to_hex(&seed);
        (&*control)
            .write_all(format!("{PING_LINE} {hex}\n").as_bytes())
            .map_err(SnapshotError::Ping)
    }

    /// The restore failed: the snapshot is deleted so the next start boots and saves a new one.
    pub(crate) fn discard(self) {
        if let Plan::Restore { path, .. } = &self.plan {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Asks the VMM (whose guest is at its quiescent point) for a snapshot and puts it into the cache.
    pub(crate) fn save(mut self, limit: Duration) -> Result<(PathBuf, SaveReport), SnapshotError> {
        let Plan::Save { file, tmp, path } = &self.plan else {
            return Err(SnapshotError::NotBooted);
        };
        let result = (|| {
            let report = match self.protocol {
                Protocol::Qmp => qmp::save(&mut self.channel, file, limit)?,
                Protocol::Vmm => vmm_save(&mut self.channel, limit)?,
            };
            let at = |call, path: &Path| {
                let path = path.to_path_buf();
                move |source| SnapshotError::File { call, path, source }
            };
            file.sync_all().map_err(at("fsync", tmp))?;
            std::fs::rename(tmp, path).map_err(at("rename", tmp))?;
            Ok((path.clone(), report))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        result
    }
}

/// Our VMM's save: it greets when its guest is at the quiescent point, then saves when asked.
fn vmm_save(
    channel: &mut BufReader<UnixStream>,
    limit: Duration,
) -> Result<SaveReport, SnapshotError> {
    let deadline = Instant::now() + limit;
    let left = || deadline.saturating_duration_since(Instant::now());
    match read_reply(channel, left())?.as_str() {
        "started" => {}
        other => {
            return Err(SnapshotError::Unexpected {
                what: "greeting",
                line: other.into(),
            });
        }
    }
    channel
        .get_mut()
        .write_all(b"save\n")
        .map_err(SnapshotError::Ask)?;
    let reply = read_reply(channel, left())?;
    let Some(json) = reply.strip_prefix("saved ") else {
        let why = reply.strip_prefix("failed ").unwrap_or(&reply);
        return Err(SnapshotError::Refused(why.to_string()));
    };
    serde_json::from_str(json).map_err(SnapshotError::BadReport)
}

impl Drop for Session {
    fn drop(&mut self) {
        // A save that never happened leaves no temporary file.
        if let Plan::Save { tmp, .. } = &self.plan {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_every_input() {
        let dir = std::env::temp_dir().join(format!("snapshot-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, i) = (dir.join("vmlinux"), dir.join("init.cpio"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"agent").unwrap();
        let key = GuestKey {
            kernel: &k,
            initramfs: &i,
            memory_mib: 512,
            cmdline: "quiet",
            devices: vec!["console ports a,b".into()],
            engine: "qemu",
        };
        let base = key.file_name().unwrap();
        assert!(base.starts_with("guest-qemu-") && base.ends_with(".vmsnap"));
        assert_eq!(engine_of(&base), Some(Some("qemu")));
        assert_eq!(key.file_name().unwrap(), base, "stable");
        let mut other = vec![
            GuestKey {
                memory_mib: 256,
                ..key.clone()
            },
            GuestKey {
                cmdline: "quiet x",
                ..key.clone()
            },
            GuestKey {
                devices: vec!["console ports a,c".into()],
                ..key.clone()
            },
            GuestKey {
                devices: vec!["console ports a,b".into(), "fs usr ro".into()],
                ..key.clone()
            },
        ]
        .into_iter()
        .map(|k| k.file_name().unwrap())
        .collect::<Vec<_>>();
        std::fs::write(&i, b"agent2").unwrap();
        other.push(key.file_name().unwrap());
        for o in &other {
            assert_ne!(*o, base);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            key.file_name().is_err(),
            "missing files are an error, not a key"
        );
    }

    #[test]
    fn the_engine_names_the_file_and_its_identity_is_in_the_key() {
        let (k, i) = (Path::new("/k"), Path::new("/i"));
        let request = super::super::hypervisor::Request {
            shares: &[],
            memory_mib: 256,
            cpus: 1,
            deadline: None,
            cache: None,
            ports: &[],
            console_fd: -1,
            net_fd: None,
        };
        let builtin = GuestKey::of("builtin", "", k, i, &request, "");
        assert_eq!(builtin.engine, "builtin");
        assert_eq!(builtin.devices[0], "engine builtin");
        let qemu = GuestKey::of(
            "qemu",
            "/usr/bin/qemu-system-x86_64 1 2 tcg",
            k,
            i,
            &request,
            "",
        );
        assert_eq!(qemu.engine, "qemu");
        assert_eq!(
            qemu.devices[0],
            "engine qemu /usr/bin/qemu-system-x86_64 1 2 tcg"
        );
    }

    #[test]
    fn pruning_keeps_the_most_recently_used_of_each_engine_and_live_temporaries() {
        let dir = std::env::temp_dir().join(format!("snapshot-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = std::time::SystemTime::now() - Duration::from_secs(3600);
        // Six of QEMU's, newer than the two of our VMM's, and two of the old name without an engine.
        let name = |engine: &str, i: u64| format!("guest-{engine}-{i:016x}.vmsnap");
        let mut made = Vec::new();
        for i in 0..6u64 {
            made.push((name("qemu", i), 100 + i));
        }
        for i in 0..2u64 {
            made.push((name("builtin", i), i));
            made.push((format!("guest-{i:016x}.vmsnap"), 200 + i));
        }
        for (n, minute) in &made {
            let f = File::create(dir.join(n)).unwrap();
            f.set_modified(t0 + Duration::from_secs(minute * 60))
                .unwrap();
        }
        let live = dir.join(format!(
            ".guest-qemu-1.vmsnap.{}.tmp",
            super::super::assets::unique_tag()
        ));
        let dead = dir.join(".guest-qemu-2.vmsnap.4000000000-3.tmp");
        let dead_old_name = dir.join(".guest-3.vmsnap.4000000000.tmp");
        let other = dir.join("notes.txt");
        for p in [&live, &dead, &dead_old_name, &other] {
            File::create(p).unwrap();
        }
        let left = || {
            let mut left: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            left
        };
        // Room for one more of QEMU's: its KEPT - 1 newest stay, and both of our VMM's.
        prune(&dir, "qemu", KEPT - 1);
        let mut want: Vec<String> = (3..6u64).map(|i| name("qemu", i)).collect();
        want.extend((0..2u64).map(|i| name("builtin", i)));
        want.push(live.file_name().unwrap().to_string_lossy().into_owned());
        want.push("notes.txt".into());
        want.sort();
        assert_eq!(
            left(),
            want,
            "KEPT - 1 newest of the engine's, the other engine's, the live temporary, other files"
        );
        // Room for one more of our VMM's: nothing of QEMU's goes.
        prune(&dir, "builtin", 1);
        want.retain(|n| n != &name("builtin", 0));
        assert_eq!(left(), want, "the oldest of our VMM's only");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_session_reports_a_failed_or_silent_vmm_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("snapshot-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tmp, path) = (dir.join(".x.tmp"), dir.join("x.vmsnap"));
        let plan = || Plan::Save {
            file: File::create(&tmp).unwrap(),
            tmp: tmp.clone(),
            path: path.clone(),
        };
        // The VMM refuses.
        let (host, mut vmm) = UnixStream::pair().unwrap();
        let s = Session::new(host, plan());
        let t = std::thread::spawn(move || {
            vmm.write_all(b"started\n").unwrap();
            let mut r = BufReader::new(vmm.try_clone().unwrap());
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert_eq!(l, "save\n");
            vmm.write_all(b"failed share busy\n").unwrap();
        });
        assert_eq!(
            s.save(Duration::from_secs(5)).unwrap_err().to_string(),
            "share busy"
        );
        t.join().unwrap();
        assert!(!tmp.exists() && !path.exists());
        // The VMM dies.
        let (host, vmm) = UnixStream::pair().unwrap();
        drop(vmm);
        let e = Session::new(host, plan())
            .save(Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("closed"), "{e}");
        // The VMM says nothing.
        let (host, _vmm) = UnixStream::pair().unwrap();
        let e = Session::new(host, plan())
            .save(Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no answer"), "{e}");
        assert!(!tmp.exists() && !path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
