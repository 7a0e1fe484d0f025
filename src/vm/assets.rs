//! Where the VM backend finds its guest: the kernel, the static agent, and the initramfs packed from it.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::initramfs::InitramfsError;

/// Why the guest kernel, agent or initramfs cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// No kernel at `$SANDBOX_KERNEL` or in the kernel build cache.
    #[error("no guest kernel: build it with kernel-config/build.sh, or set SANDBOX_KERNEL")]
    NoKernel,
    /// No agent at `$SANDBOX_AGENT` or next to the running program.
    #[error("no guest agent: build it with scripts/build-guest.sh, or set SANDBOX_AGENT")]
    NoAgent,
    /// The agent links to libraries the guest does not have.
    #[error(
        "the guest agent {} is not a static executable (the guest has no libraries): build it with \
         scripts/build-guest.sh and set SANDBOX_AGENT to the path it prints", .0.display()
    )]
    AgentNotStatic(PathBuf),
    /// Reading the agent, creating the cache directory or writing the initramfs.
    #[error("packing the initramfs: {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Packing the agent into the archive.
    #[error("packing the initramfs: {0}")]
    Pack(#[from] InitramfsError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the VM backend finds what it runs, set by the program ([`set_assets`]) instead of the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmAssets {
    /// The guest kernel (`vmlinux`, built by `kernel-config/build.sh`).
    pub kernel: Option<PathBuf>,
    /// The static guest agent `sandbox-init` (built by `scripts/build-guest.sh`).
    pub agent: Option<PathBuf>,
    /// `qemu-system-x86_64`.
    pub qemu: Option<PathBuf>,
}

impl VmAssets {
    /// Nothing set: every asset is looked for as [`assets`] and [`find_qemu`](super::find_qemu) say.
    pub fn new() -> VmAssets {
        VmAssets::default()
    }

    /// The guest kernel.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> VmAssets {
        self.kernel = Some(path.into());
        self
    }

    /// The guest agent.
    pub fn agent(mut self, path: impl Into<PathBuf>) -> VmAssets {
        self.agent = Some(path.into());
        self
    }

    /// The QEMU binary.
    pub fn qemu(mut self, path: impl Into<PathBuf>) -> VmAssets {
        self.qemu = Some(path.into());
        self
    }
}

static SET: std::sync::RwLock<VmAssets> = std::sync::RwLock::new(VmAssets {
    kernel: None,
    agent: None,
    qemu: None,
});

/// Tells this process's VM backend where its kernel, agent and QEMU are (what is set wins over
/// `SANDBOX_KERNEL`, `SANDBOX_AGENT`, `SANDBOX_QEMU` and the default places); a service sets it once at start.
/// A VM session's keeper process is told the same.
pub fn set_assets(assets: VmAssets) {
    *SET.write().unwrap_or_else(|e| e.into_inner()) = assets;
}

/// What [`set_assets`] set.
pub(crate) fn configured() -> VmAssets {
    SET.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The sandkasten crate's own source directory (for a registry install, its copy in cargo's registry),
/// which holds `kernel-config/build.sh` and `scripts/build-guest.sh`, the two builds of the guest.
pub const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The per-user cache directory of the VM backend: `$XDG_CACHE_HOME/sandbox`, else `$HOME/.cache/sandbox`.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("sandbox"))
}

/// Where the kernel build (`kernel-config/build.sh`) leaves the current kernel, in [`cache_dir`].
pub fn default_kernel() -> Option<PathBuf> {
    cache_dir().map(|c| c.join("kernel/current/vmlinux"))
}

/// Where an installed agent is looked for after `$SANDBOX_AGENT` and the running program's directory, in
/// [`cache_dir`] (`sandbox vm-assets --build` puts it there).
pub fn default_agent() -> Option<PathBuf> {
    cache_dir().map(|c| c.join("agent/sandbox-init"))
}

/// Where one asset of the VM backend was looked for, and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Located {
    /// The usable file, if one was found.
    pub path: Option<PathBuf>,
    /// Where it came from (`set_assets`, an environment variable, a default place), or where the last place
    /// looked was.
    pub source: &'static str,
    /// Every place looked at, in order.
    pub tried: Vec<PathBuf>,
    /// Why nothing usable was found, and the fix.
    pub problem: Option<String>,
}

/// The VM backend's assets: the guest kernel, the static agent and QEMU, each looked for on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssetReport {
    /// The guest kernel.
    pub kernel: Located,
    /// The guest agent.
    pub agent: Located,
    /// QEMU (needed by the `qemu` engine only).
    pub qemu: Located,
}

/// Looks for each asset as a run would, and says where each was found or how to get it.
pub fn locate() -> AssetReport {
    let (kernel, agent) = locate_guest();
    AssetReport {
        kernel,
        agent,
        qemu: locate_qemu(),
    }
}

/// A place named by the program or the user is the only one tried.
fn pick(
    candidates: Vec<(Option<PathBuf>, &'static str)>,
    ok: &dyn Fn(&Path) -> bool,
) -> (Option<PathBuf>, &'static str, Vec<PathBuf>) {
    let mut tried = Vec::new();
    let mut last = "nowhere";
    for (p, source) in candidates {
        let Some(p) = p else { continue };
        tried.push(p.clone());
        last = source;
        if p.is_file() && ok(&p) {
            return (Some(p), source, tried);
        }
        if source == "set_assets" || source.starts_with("SANDBOX_") {
            break;
        }
    }
    (None, last, tried)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The kernel and the agent, as every VM run looks for them (QEMU is looked for only by its engine).
fn locate_guest() -> (Located, Located) {
    let set = configured();
    let env = env_path;
    let (kernel, source, tried) = pick(
        vec![
            (set.kernel, "set_assets"),
            (env("SANDBOX_KERNEL"), "SANDBOX_KERNEL"),
            (default_kernel(), "the kernel build cache"),
        ],
        &|_| true,
    );
    let kernel = Located {
        problem: kernel.is_none().then(|| {
            format!(
                "no guest kernel (looked at {}): build it with {SOURCE_DIR}/kernel-config/build.sh (about 12 \
                 minutes; it lands in the kernel build cache), or set SANDBOX_KERNEL",
                shown(&tried)
            )
        }),
        path: kernel,
        source,
        tried,
    };
    let beside = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("sandbox-init"));
    let (agent, source, tried) = pick(
        vec![
            (set.agent, "set_assets"),
            (env("SANDBOX_AGENT"), "SANDBOX_AGENT"),
            (beside, "next to the running program"),
            (default_agent(), "the agent cache"),
        ],
        &is_static_elf,
    );
    let not_static: Vec<&PathBuf> = tried
        .iter()
        .filter(|p| p.is_file() && !is_static_elf(p))
        .collect();
    let agent = Located {
        problem: agent.is_none().then(|| {
            let why = if not_static.is_empty() {
                String::new()
            } else {
                format!(
                    "; not static executables (the guest has no libraries): {}",
                    not_static
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!(
                "no static guest agent (looked at {}{why}): build it with {SOURCE_DIR}/scripts/build-guest.sh \
                 and set SANDBOX_AGENT to the path it prints, or run `sandbox vm-assets --build`",
                shown(&tried)
            )
        }),
        path: agent,
        source,
        tried,
    };
    (kernel, agent)
}

/// QEMU: what the program set, `SANDBOX_QEMU`, else `qemu-system-x86_64` on `PATH`.
pub(crate) fn locate_qemu() -> Located {
    let set = configured();
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut candidates: Vec<(Option<PathBuf>, &'static str)> = vec![
        (set.qemu, "set_assets"),
        (env_path("SANDBOX_QEMU"), "SANDBOX_QEMU"),
    ];
    candidates.extend(
        std::env::split_paths(&path_var).map(|d| (Some(d.join("qemu-system-x86_64")), "PATH")),
    );
    let (qemu, source, tried) = pick(candidates, &|_| true);
    Located {
        problem: qemu.is_none().then(|| {
            "qemu-system-x86_64 not found (Debian: apt-get install qemu-system-x86), or set SANDBOX_QEMU"
                .to_string()
        }),
        path: qemu,
        source,
        tried,
    }
}

fn shown(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing: no HOME, no variable set".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guest kernel and agent: what [`set_assets`] set, else `$SANDBOX_KERNEL` and `$SANDBOX_AGENT`, else the
/// kernel build cache (`kernel-config/build.sh`), and for the agent `sandbox-init` next to the running
/// program, then the agent cache ([`default_agent`]). [`locate`] says where each was looked for.
pub fn assets() -> Result<(PathBuf, PathBuf), AssetError> {
    let (kernel, agent) = locate_guest();
    let kernel = kernel.path.ok_or(AssetError::NoKernel)?;
    match agent.path {
        Some(path) => Ok((kernel, path)),
        None => match agent.tried.into_iter().find(|p| p.is_file()) {
            Some(not_static) => Err(AssetError::AgentNotStatic(not_static)),
            None => Err(AssetError::NoAgent),
        },
    }
}

/// Whether `path` is a 64-bit ELF executable without a program interpreter (`PT_INTERP`).
fn is_static_elf(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 64];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" || head[4] != 2 {
        return false;
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56));
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    use std::io::Seek;
    if phentsize < 4
        || f.seek(std::io::SeekFrom::Start(phoff)).is_err()
        || f.read_exact(&mut table).is_err()
    {
        return false;
    }
    const PT_INTERP: u32 = 3;
    !table
        .chunks_exact(usize::from(phentsize))
        .any(|ph| u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == PT_INTERP)
}

/// The initramfs holding `agent`, written once per agent into a per-user cache directory.
pub(crate) fn initramfs(agent: &Path) -> Result<PathBuf, AssetError> {
    let meta = std::fs::metadata(agent).map_err(io_at(agent))?;
    let stamp = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("sandbox-vm-{}", nix::unistd::geteuid()));
    let file = dir.join(format!("initramfs-{:x}-{stamp:x}.cpio", meta.len()));
    if let Ok(f) = std::fs::File::open(&file) {
        // Its modification time is its last use, for the pruning below.
        let _ = f.set_modified(std::time::SystemTime::now());
        return Ok(file);
    }
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let bytes = super::initramfs::pack_agent(agent, None, &[])?;
    // A name of its own for each writer: two runs starting at once in one process once shared a temporary
    // (named after the process), so one truncated it under the other's rename and a VM booted a torn
    // initramfs.
    let tmp = dir.join(format!(".initramfs-{}", unique_tag()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        // Linked, never renamed over: a run that opened the file another writer put there first must
        // still find it at its path when it binds it into the VMM's view (a bind of a replaced file fails).
        .and_then(|()| match std::fs::hard_link(&tmp, &file) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        });
    let _ = std::fs::remove_file(&tmp);
    written.map_err(io_at(&file))?;
    prune(&dir, &file, UNUSED_FOR);
    Ok(file)
}

/// How long an initramfs of another agent stays in the cache unused.
const UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes from `dir` the initramfs files of other agents unused for `unused_for`, and the temporaries of
/// processes that are gone: each build of the agent leaves one initramfs behind.
fn prune(dir: &Path, keep: &Path, unused_for: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if let Some(tag) = name.strip_prefix(".initramfs-") {
            writer_gone(tag)
        } else {
            name.starts_with("initramfs-")
                && name.ends_with(".cpio")
                && path != keep
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > unused_for)
        };
        if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `PID-N`, unique among the temporaries of this process (N counts), for names of files being written:
/// the process id first, so a cleanup can tell whether their writer is gone.
pub(crate) fn unique_tag() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Whether the process that named a temporary with this [`unique_tag`] (or a bare `PID`, the older form) is
/// gone; false for what is not such a tag.
pub(crate) fn writer_gone(tag: &str) -> bool {
    tag.split('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_uses_all_get_the_whole_initramfs() {
        // A fresh copy of a static executable (so its initramfs is not cached yet): eight threads ask at once.
        let dir = std::env::temp_dir().join(format!("assets-agent-{}", unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let agent = dir.join("sandbox-init");
        let mut bytes = b"\x7fELF\x02".to_vec();
        bytes.resize(3 << 20, 0xa5);
        std::fs::write(&agent, &bytes).unwrap();
        let want = crate::vm::initramfs::pack_agent(&agent, None, &[]).unwrap();
        let got: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        initramfs(&agent)
                            .map_err(|e| e.to_string())
                            .and_then(|f| std::fs::read(f).map_err(|e| e.to_string()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Cleaned up before any assertion.
        if let Ok(file) = initramfs(&agent) {
            let _ = std::fs::remove_file(file);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        for g in got {
            let g = g.unwrap();
            assert!(
                g == want,
                "a torn initramfs: {} of {} bytes",
                g.len(),
                want.len()
            );
        }
    }

    #[test]
    fn pruning_removes_unused_initramfs_files_and_dead_temporaries() {
        let dir = std::env::temp_dir().join(format!("assets-prune-{}", unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - UNUSED_FOR * 2;
        let names = [
            "initramfs-1-1.cpio",      // old: removed
            "initramfs-2-2.cpio",      // recent: kept
            "initramfs-3-3.cpio",      // old but the current one: kept
            ".initramfs-4000000000-0", // a dead writer's: removed
            "notes.txt",               // not ours: kept
        ];
        for n in names {
            std::fs::File::create(dir.join(n)).unwrap();
        }
        let live = dir.join(format!(".initramfs-{}", unique_tag()));
        std::fs::File::create(&live).unwrap();
        for n in [names[0], names[2]] {
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(n))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        prune(&dir, &dir.join(names[2]), UNUSED_FOR);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut want = vec![
            names[1].to_string(),
            names[2].to_string(),
            names[4].to_string(),
            live.file_name().unwrap().to_string_lossy().into_owned(),
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn static_executables_are_told_apart() {
        assert!(
            !is_static_elf(Path::new("/bin/sh")),
            "/bin/sh has an interpreter"
        );
        assert!(!is_static_elf(Path::new("/etc/passwd")));
        if let Some(agent) = std::env::var_os("SANDBOX_AGENT") {
            assert!(is_static_elf(Path::new(&agent)));
        }
    }
}
