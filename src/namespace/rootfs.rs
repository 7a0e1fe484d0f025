//! A root filesystem of the policy's own ([`Policy::rootfs`]): a host directory or an image of the store.
//!
//! Host side, before the clone: the image is checked out of its store (its layers held until the run ends),
//! the run's user resolved in the root's own `/etc/passwd` and `/etc/group`, and the image's config turned
//! into the command, environment and working directory the run does not set itself ([`resolve`],
//! [`Root::apply`]). Planned as steps: each layer (top first) is mounted at `/l/N` of the staging root, the
//! writable layer at `/rw` (a bounded tmpfs, or the caller's `upper` directory), and overlayfs with
//! `userxattr` (the form a user namespace may mount) at the new root.
//!
//! A root caller's layers are owned by the image's own ids on the host (uid 0 for most files), which the
//! sandbox's user namespace does not map: overlayfs would show them as `nobody` and refuse to copy them up.
//! So for a root caller each layer is an id-mapped mount: once the child's maps are written, the host clones
//! each layer directory (`open_tree`) and maps it through the child's user namespace (`mount_setattr` with
//! `MOUNT_ATTR_IDMAP`), so a file owned by uid N on disk is owned by uid N inside the sandbox; the detached
//! trees travel to the child with its release (`SCM_RIGHTS`) and are attached with `move_mount`. An
//! unprivileged caller's store is its own (every file owned by the caller, who is uid 0 inside): plain binds.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::Launch;
use super::plan::{Cover, Inside, Kind, Op, PlanError, Planner, Tree, cstr, lit};
use super::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::image::{Checkout, ImageConfig, ImageStore, ResolvedUser, RootFiles};
use crate::outcome::{RootfsEnforced, SetupFailure, Stage, TmpfsBound};
use crate::policy::Policy;

/// Most layers a root may have (each is one descriptor of the release message, and one overlay layer).
pub const MAX_LAYERS: usize = sys::MAX_PASSED_FDS - 1;

/// Where the layers are mounted in the staging root (`/l/0` is the top layer).
const LAYERS: &str = "/l";
/// Where the writable layer is mounted in the staging root.
const RW: &str = "/rw";

/// Top-level names of a root that get no landlock rule of their own: the sandbox mounts its own there.
const OURS: [&str; 3] = ["dev", "proc", "sys"];

/// A top-level entry of a root shown without overlayfs.
#[derive(Debug, Clone)]
pub(crate) struct TopEntry {
    pub name: OsString,
    pub kind: TopKind,
}

#[derive(Debug, Clone)]
pub(crate) enum TopKind {
    Dir,
    File,
    Symlink(PathBuf),
}

/// Whether this kernel has overlayfs (listed in `/proc/filesystems`; the module may load on first use, so a
/// missing `overlay` module file is checked too).
fn overlay_available() -> bool {
    let listed = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    });
    listed || {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = Path::new("/lib/modules")
            .join(release)
            .join("kernel/fs/overlayfs");
        dir.is_dir()
    }
}

/// The top-level entries of the directory `layer` (whiteouts and other special files left out).
fn top_entries(layer: &Path) -> Result<Vec<TopEntry>, SetupFailure> {
    let read = std::fs::read_dir(layer)
        .map_err(|e| failure(format!("cannot list the root {layer:?}: {e}")))?;
    let mut entries = Vec::new();
    for e in read {
        let e = e.map_err(|e| failure(format!("cannot list the root {layer:?}: {e}")))?;
        let meta = std::fs::symlink_metadata(e.path())
            .map_err(|err| failure(format!("{:?}: {err}", e.path())))?;
        let kind = if meta.is_dir() {
            TopKind::Dir
        } else if meta.is_file() {
            TopKind::File
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path())
                .map_err(|err| failure(format!("{:?}: {err}", e.path())))?;
            TopKind::Symlink(target)
        } else {
            continue;
        };
        entries.push(TopEntry {
            name: e.file_name(),
            kind,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// A policy's root filesystem, resolved on the host.
#[derive(Debug)]
pub(crate) struct Root {
    /// The read-only layers, top first (one for a directory).
    pub lowers: Vec<PathBuf>,
    /// The caller's directory for the writable layer (holding `upper/` and `work/`), or `None` for a tmpfs.
    pub upper: Option<PathBuf>,
    /// No overlay: the single layer's top-level entries, bound read-only on the sandbox's own root (a
    /// read-only root, or overlayfs unavailable).
    pub flat: Option<Vec<TopEntry>>,
    /// Layers (and the upper directory) are id-mapped mounts (a root caller).
    pub idmapped: bool,
    /// The owner of the top layer's root directory (in the guest: the id the VMM's shares show every file
    /// with, which the sandbox's root then maps to).
    pub owner: (u32, u32),
    /// The names at the top of the root.
    pub top: Vec<OsString>,
    /// The image's config (none for a directory).
    pub config: Option<ImageConfig>,
    /// The user the run takes from `rootfs.user` or the image's `User`.
    pub user: Option<ResolvedUser>,
    /// For the verdict.
    pub report: RootfsEnforced,
    /// Holds the image's layers in the store until the run ends.
    pub _checkout: Option<Checkout>,
}

fn failure(message: String) -> SetupFailure {
    SetupFailure {
        stage: Stage::Prepare,
        errno: None,
        message,
    }
}

/// Resolves the policy's root filesystem, if it has one. `guest`: the caller is our guest agent, whose
/// layers are shares of the VMM (9p, virtio-fs), which have no id-mapped mounts.
pub(crate) fn resolve(policy: &Policy, guest: bool) -> Result<Option<Root>, SetupFailure> {
    let Some(spec) = &policy.rootfs else {
        return Ok(None);
    };
    let idmapped = nix::unistd::geteuid().is_root() && !guest;
    let (lowers, config, checkout, mut report) = match (&spec.dir, &spec.image) {
        (None, None) if !spec.layers.is_empty() => {
            let lowers = spec
                .layers
                .iter()
                .map(|l| {
                    std::fs::canonicalize(l)
                        .ok()
                        .filter(|p| p.is_dir())
                        .ok_or_else(|| {
                            failure(format!(
                                "rootfs layer {l:?} does not exist or is not a directory"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let report = RootfsEnforced {
                source: format!("{} layers", lowers.len()),
                ..RootfsEnforced::default()
            };
            (lowers, None, None, report)
        }
        (Some(dir), _) => {
            let real = std::fs::canonicalize(dir)
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| {
                    failure(format!(
                        "rootfs directory {dir:?} does not exist or is not a directory"
                    ))
                })?;
            // An overlayfs mount cannot be id-mapped: a root caller stacks its layers instead (its upper
            // layer read-only on top, writes going to the run's own writable layer).
            if idmapped
                && !spec.read_only
                && let Some(layers) = overlay_layers(&real)
            {
                let report = RootfsEnforced {
                    source: format!(
                        "dir {} (an overlay mount: its {} layers)",
                        real.display(),
                        layers.len()
                    ),
                    ..RootfsEnforced::default()
                };
                (layers, None, None, report)
            } else {
                let report = RootfsEnforced {
                    source: format!("dir {}", real.display()),
                    ..RootfsEnforced::default()
                };
                (vec![real], None, None, report)
            }
        }
        (None, Some(name)) => {
            let store_path = spec.store.clone().unwrap_or_else(ImageStore::default_path);
            let store = ImageStore::open(&store_path).map_err(|e| failure(e.to_string()))?;
            let checkout = store.checkout(name).map_err(|e| failure(e.to_string()))?;
            if checkout.lowers.len() > MAX_LAYERS {
                return Err(failure(format!(
                    "image {name:?} has {} layers; a root may have at most {MAX_LAYERS}",
                    checkout.lowers.len()
                )));
            }
            let info = &checkout.info;
            let report = RootfsEnforced {
                source: format!("image {}:{}", info.name, info.tag),
                image_id: Some(info.id.clone()),
                image_digest: info.manifest.clone(),
                ..RootfsEnforced::default()
            };
            (
                checkout.lowers.clone(),
                Some(info.config.clone()),
                Some(checkout),
                report,
            )
        }
        (None, None) => return Err(failure("rootfs: give `dir` or `image`".into())),
    };
    let files = RootFiles::new(lowers.clone());
    let image_user = config
        .as_ref()
        .and_then(|c| c.user.clone())
        .filter(|u| !u.is_empty() && policy.uid == 0 && policy.gid == 0);
    let user = match spec.user.clone().or(image_user) {
        Some(u) => {
            let resolved = files.user(&u).map_err(|e| failure(e.to_string()))?;
            report.user = Some(format!("{u} ({}:{})", resolved.uid, resolved.gid));
            Some(resolved)
        }
        None => None,
    };
    let overlay = overlay_available();
    let flat = if spec.read_only || !overlay {
        let why = if spec.read_only {
            "read-only root"
        } else {
            "overlayfs is not available in this kernel"
        };
        if lowers.len() != 1 {
            return Err(failure(format!(
                "{}: a {why} needs a directory or a one-layer image, and this image has {} layers",
                report.source,
                lowers.len()
            )));
        }
        if spec.upper.is_some() {
            return Err(failure(format!(
                "{why}: there is no writable layer to keep in {:?}",
                spec.upper
            )));
        }
        Some(top_entries(&lowers[0])?)
    } else {
        None
    };
    let upper = match &spec.upper {
        Some(dir) => Some(prepare_upper(dir)?),
        None => None,
    };
    report.writable = match (&flat, &upper) {
        (Some(_), _) => {
            let var_tmp =
                std::fs::symlink_metadata(lowers[0].join("var/tmp")).is_ok_and(|m| m.is_dir());
            format!(
                "read-only, with tmpfs at /tmp, /run{}{}",
                if var_tmp { ", /var/tmp" } else { "" },
                if overlay {
                    ""
                } else {
                    " (overlayfs is not available in this kernel)"
                }
            )
        }
        (None, Some(d)) => format!("overlay on {} (kept)", d.display()),
        (None, None) => "overlay on a tmpfs (discarded)".into(),
    };
    report.idmapped = idmapped;
    let owner = std::fs::metadata(&lowers[0])
        .map(|m| (m.uid(), m.gid()))
        .map_err(|e| failure(format!("{:?}: {e}", lowers[0])))?;
    Ok(Some(Root {
        owner,
        top: files.top_level(),
        lowers,
        upper,
        flat,
        idmapped,
        config,
        user,
        report,
        _checkout: checkout,
    }))
}

/// Creates the caller's writable-layer directory with its `upper/` (mode 0755: the root directory of the
/// sandbox takes its mode) and `work/`; returns its canonical path.
fn prepare_upper(dir: &Path) -> Result<PathBuf, SetupFailure> {
    let make = |d: &Path, mode: u32| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(d)
            .map_err(|e| {
                failure(format!(
                    "cannot create the writable layer's directory {d:?}: {e}"
                ))
            })
    };
    make(dir, 0o700)?;
    let real = std::fs::canonicalize(dir).map_err(|e| {
        failure(format!(
            "cannot resolve the writable layer's directory {dir:?}: {e}"
        ))
    })?;
    make(&real.join("upper"), 0o755)?;
    make(&real.join("work"), 0o700)?;
    Ok(real)
}

/// The layers of the overlayfs mounted at `dir` (upper first, then the lower ones, top first), from
/// /proc/self/mountinfo; `None` when `dir` is no overlay mount point or a layer cannot be resolved.
fn overlay_layers(dir: &Path) -> Option<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = dir.as_os_str().as_bytes();
    // The last mount on a path is the one on top.
    let line = info.lines().rev().find(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        f.get(4).map(|m| unescape(m)) == Some(target.to_vec()) && fstype == Some("overlay")
    })?;
    let options = line.split(" - ").nth(1)?.split(' ').nth(2)?;
    let mut upper = Vec::new();
    let mut lowers = Vec::new();
    for opt in options.split(',').map(unescape) {
        if let Some(v) = opt.strip_prefix(b"upperdir=") {
            upper.push(v.to_vec());
        } else if let Some(v) = opt.strip_prefix(b"lowerdir=") {
            lowers.extend(split_unescaped_bytes(v, b':'));
        } else if let Some(v) = opt.strip_prefix(b"lowerdir+=") {
            lowers.push(v.to_vec());
        }
    }
    if lowers.is_empty() {
        return None;
    }
    upper
        .into_iter()
        .chain(lowers)
        .map(|l| {
            let p = PathBuf::from(std::ffi::OsString::from_vec(
                l.into_iter().filter(|&b| b != b'\\').collect(),
            ));
            std::fs::canonicalize(p).ok().filter(|p| p.is_dir())
        })
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `b` split at `sep` unless escaped with a backslash.
fn split_unescaped_bytes(b: &[u8], sep: u8) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    let mut escaped = false;
    for &c in b {
        if c == sep && !escaped {
            parts.push(Vec::new());
        } else {
            parts.last_mut().expect("one part at least").push(c);
        }
        escaped = c == b'\\' && !escaped;
    }
    parts
}

impl Root {
    /// The command, environment and working directory of a run on this root: the image's `Entrypoint` and
    /// `Cmd` (replaced by the run's own arguments, `program` first; an empty `program` means none), its
    /// `Env` under the run's own variables, its `WorkingDir` unless the run sets one.
    pub fn apply(&self, launch: &Launch<'_>) -> Result<Applied, SetupFailure> {
        let (program, args, env, cwd) = (launch.program, launch.args, launch.env, launch.cwd);
        let given: Vec<OsString> = if program.is_empty() {
            Vec::new()
        } else {
            std::iter::once(program.to_os_string())
                .chain(args.iter().cloned())
                .collect()
        };
        let argv = match &self.config {
            // A session without a program of its own: only its execs run. (A session whose program waits
            // for its start takes the image's command.)
            _ if given.is_empty() && launch.serve.is_some_and(|s| !s.wait_start) => Vec::new(),
            Some(c) => c.command(&given).ok_or_else(|| {
                failure(crate::image::ImageError::NoCommand(self.report.source.clone()).to_string())
            })?,
            None if given.is_empty() => {
                return Err(failure(
                    "the run names no program, and a directory root has no default command".into(),
                ));
            }
            None => given,
        };
        let mut vars = self
            .config
            .as_ref()
            .map(ImageConfig::env_pairs)
            .unwrap_or_default();
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k.clone(), v.clone()));
        }
        let cwd = cwd.map(Path::to_path_buf).or_else(|| {
            self.config
                .as_ref()
                .and_then(|c| c.working_dir.as_deref())
                .filter(|d| d.starts_with('/'))
                .map(PathBuf::from)
        });
        let mut policy = launch.policy.clone();
        if let Some(u) = self.user {
            (policy.uid, policy.gid) = (u.uid, u.gid);
        }
        // Resolved: the root is now its layers (what a VM's guest is given).
        let asked = policy.rootfs.take().unwrap_or_default();
        policy.rootfs = Some(crate::policy::Rootfs {
            layers: self.lowers.clone(),
            upper: asked.upper,
            read_only: asked.read_only,
            ..crate::policy::Rootfs::default()
        });
        Ok(Applied {
            argv,
            env: vars,
            cwd,
            policy,
        })
    }
}

/// A run's command, environment, working directory and policy on a root of its own.
pub(crate) struct Applied {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// The policy with the root's user as its `uid`/`gid`.
    pub policy: Policy,
}

impl Applied {
    /// The launch of `base` with this command, environment, directory and policy.
    pub fn launch<'a>(&'a self, base: &Launch<'a>) -> Launch<'a> {
        // A session may have no program of its own.
        let (program, args) = match self.argv.split_first() {
            Some((p, a)) => (p.as_os_str(), a),
            None => (std::ffi::OsStr::new(""), &[][..]),
        };
        Launch {
            serve: base.serve,
            program,
            arg0: base.arg0,
            args,
            env: &self.env,
            cwd: self.cwd.as_deref(),
            policy: &self.policy,
            stdio: base.stdio,
            extra_fds: base.extra_fds,
            guest: base.guest,
        }
    }
}

impl Planner {
    /// A root without a writable layer: the sandbox's own root tmpfs (frozen read-only at the end) with
    /// each top-level entry of the one layer bound read-only (symlinks recreated), then empty tmpfs at
    /// `/tmp`, `/run` and `/var/tmp`.
    pub(super) fn read_only_root(
        &mut self,
        root: &Root,
        entries: &[TopEntry],
        (size, inodes): (u64, u64),
    ) -> Result<(), PlanError> {
        let layer = &root.lowers[0];
        let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        for e in entries {
            let name = e.name.as_bytes();
            if [&b"dev"[..], b"proc", b"tmp", b"run"].contains(&name) {
                continue;
            }
            let inside = Path::new("/").join(OsStr::from_bytes(name));
            let host = layer.join(OsStr::from_bytes(name));
            match &e.kind {
                TopKind::Symlink(target) => {
                    self.symlink(target, &inside)?;
                    self.links.push((inside, target.clone()));
                }
                TopKind::Dir | TopKind::File => {
                    let kind = if matches!(e.kind, TopKind::Dir) {
                        Kind::Dir
                    } else {
                        Kind::File
                    };
                    self.mountpoint(&inside, kind)?;
                    let dst = Self::new_path(&inside);
                    self.attach(&host, dst.to_str().unwrap_or("/"), root.idmapped, attrs)?;
                    self.inside.push((cstr(&inside)?, Inside::Read));
                    let cover = if kind == Kind::Dir {
                        Cover::Host(host)
                    } else {
                        Cover::Fixed
                    };
                    self.covers.push((inside, cover));
                }
            }
        }
        let var_tmp = std::fs::symlink_metadata(layer.join("var/tmp")).is_ok_and(|m| m.is_dir());
        for dir in ["/tmp", "/run", "/var/tmp"] {
            if dir == "/var/tmp" && !var_tmp {
                continue;
            }
            self.tmpfs(
                Path::new(dir),
                format!("mode=1777,size={size},nr_inodes={inodes}"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Inside::Write,
            )?;
            self.bounded.push(TmpfsBound {
                path: dir.into(),
                size,
                inodes,
            });
        }
        Ok(())
    }

    /// The root: the layers at `/l/N`, the writable layer at `/rw`, overlayfs on the new root.
    pub(super) fn own_root(
        &mut self,
        root: &Root,
        (size, inodes): (u64, u64),
    ) -> Result<(), PlanError> {
        self.own_root = true;
        let layer_attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        self.push(
            Stage::Mounts,
            Op::Mkdir {
                path: lit(LAYERS),
                mode: 0o700,
            },
        );
        let mut lowerdir = String::from("lowerdir=");
        for (i, layer) in root.lowers.iter().enumerate() {
            let dst = format!("{LAYERS}/{i}");
            self.push(
                Stage::Mounts,
                Op::Mkdir {
                    path: lit(&dst),
                    mode: 0o700,
                },
            );
            self.attach(layer, &dst, root.idmapped, layer_attrs)?;
            if i > 0 {
                lowerdir.push(':');
            }
            lowerdir.push_str(&dst);
        }
        self.push(
            Stage::Mounts,
            Op::Mkdir {
                path: lit(RW),
                mode: 0o700,
            },
        );
        match &root.upper {
            Some(dir) => {
                self.attach(dir, RW, root.idmapped, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?
            }
            None => {
                self.mount(
                    Some(lit("tmpfs")),
                    lit(RW),
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(format!("mode=0755,size={size},nr_inodes={inodes}")),
                );
                // Made by the sandbox user (the child mounts as the run's user): given to root inside, since
                // the upper directory's owner is the owner of the sandbox's `/`.
                for (d, mode) in [("upper", 0o755), ("work", 0o700)] {
                    let path = lit(&format!("{RW}/{d}"));
                    self.push(
                        Stage::Mounts,
                        Op::Mkdir {
                            path: path.clone(),
                            mode,
                        },
                    );
                    self.push(
                        Stage::Mounts,
                        Op::Chown {
                            path,
                            uid: 0,
                            gid: 0,
                        },
                    );
                }
                self.bounded.push(TmpfsBound {
                    path: "/".into(),
                    size,
                    inodes,
                });
            }
        }
        self.mount(
            Some(lit("overlay")),
            lit(super::plan::NEW),
            Some("overlay"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(format!(
                "{lowerdir},upperdir={RW}/upper,workdir={RW}/work,userxattr"
            )),
        );
        // Landlock: the root's own top-level entries are the sandbox's to read, write and run; `/` itself
        // stays list-only (as with the system view), and /dev, /proc get the rules of their own mounts.
        for name in &root.top {
            if OURS.iter().any(|o| OsStr::new(o) == name.as_os_str()) {
                continue;
            }
            let path = Path::new("/").join(Path::new(OsStr::from_bytes(name.as_bytes())));
            self.inside.push((cstr(&path)?, Inside::Write));
        }
        Ok(())
    }

    /// Mounts the host directory `src` at the staging path `dst`: an id-mapped tree the host sends (a root
    /// caller), or a bind of a source the child opens with the caller's credentials.
    pub(super) fn attach(
        &mut self,
        src: &Path,
        dst: &str,
        idmapped: bool,
        attrs: u64,
    ) -> Result<(), PlanError> {
        if idmapped {
            self.trees.push(Tree {
                path: cstr(src)?,
                attrs,
            });
            self.push(
                Stage::Mounts,
                Op::AttachTree {
                    tree: self.trees.len() - 1,
                    dst: lit(dst),
                },
            );
        } else {
            self.sources.push(cstr(src)?);
            self.push(
                Stage::Mounts,
                Op::BindSource {
                    source: self.sources.len() - 1,
                    dst: lit(dst),
                },
            );
            self.set_attr(lit(dst), attrs, true);
        }
        Ok(())
    }
}

/// Host side, once the child's maps are written: clones each tree and maps it through the user namespace of
/// the process `pid`. The descriptors go to the child with its release.
pub(crate) fn idmapped_trees(
    pid: libc::pid_t,
    trees: &[Tree],
) -> Result<Vec<OwnedFd>, SetupFailure> {
    if trees.is_empty() {
        return Ok(Vec::new());
    }
    let ns_path = format!("/proc/{pid}/ns/user");
    let userns = std::fs::File::open(&ns_path).map_err(|e| SetupFailure {
        stage: Stage::Mounts,
        errno: e.raw_os_error(),
        message: format!("cannot open the sandbox's user namespace {ns_path}: {e}"),
    })?;
    trees
        .iter()
        .map(|t| {
            let fail = |what: &str, e: i32| SetupFailure {
                stage: Stage::Mounts,
                errno: Some(e),
                message: format!(
                    "{what} of {:?} failed: {}; id-mapped mounts need Linux 5.12 and a filesystem that \
                     supports them under the image store or root directory (ext4, xfs, btrfs; tmpfs from 6.3)",
                    t.path,
                    std::io::Error::from_raw_os_error(e)
                ),
            };
            let fd = sys::open_tree_clone(&t.path).map_err(|e| fail("open_tree", e))?;
            // SAFETY: open_tree just returned this descriptor, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            sys::set_idmap(fd.as_raw_fd(), userns.as_raw_fd(), t.attrs)
                .map_err(|e| fail("an id-mapped mount (mount_setattr)", e))?;
            Ok(fd)
        })
        .collect()
}
