//! Container images: a content-addressed store of unpacked layers, and the import of OCI image layouts and
//! `docker save` archives into it.
//!
//! ```text
//! STORE/lock                      flock: the image index is read and written under it
//! STORE/images.json               name:tag -> image (id, manifest, layers, config summary)
//! STORE/configs/sha256/HEX        the config blobs, as imported
//! STORE/layers/sha256/HEX/root/   the unpacked tree of the layer whose diff_id is sha256:HEX
//! STORE/layers/sha256/HEX/meta.json  its size and entry count
//! STORE/layers/sha256/HEX.lock    flock: exclusive while the layer is unpacked or removed, shared while an
//!                                 import or a run uses it
//! STORE/tmp/                      layers being unpacked; renamed into layers/ when complete and verified
//! ```
//!
//! A layer used by ten images is unpacked once (its tree is keyed by the digest of its uncompressed tar).
//! Every blob is checked against its digest and size before it is parsed, every layer's uncompressed tar
//! against the config's `rootfs.diff_ids` before its tree becomes visible, and every entry of a layer is
//! applied without ever writing outside its tree (`image/layer.rs`). An interrupted import leaves at most a
//! directory in `tmp/`, removed by the next import of that layer or by `prune`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod layer;
mod lock;
mod run;
mod source;

pub use run::{Checkout, ResolvedUser, RootFiles};

pub use layer::OPAQUE_XATTR;
use source::{Compression, LayerBlob, Source, hex, valid_sha256};

/// Errors of the image store and of imports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file or directory to import cannot be read.
    #[error("cannot read {path:?}: {source}")]
    Input {
        /// What was given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The input is not an image this importer knows.
    #[error("{path:?}: {what}")]
    Format {
        /// What was given.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A blob is missing, of the wrong size or digest.
    #[error("blob {blob} {what}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Blob {
        /// The blob's digest (or its name in the source).
        blob: String,
        /// What is wrong.
        what: String,
        /// The I/O error, where there is one.
        source: Option<io::Error>,
    },
    /// A JSON document (index, manifest, config) is malformed or inconsistent.
    #[error("blob {blob}: {what}")]
    Json {
        /// The document's digest or name.
        blob: String,
        /// What is wrong.
        what: String,
    },
    /// A layer or config has a media type the importer does not know.
    #[error(
        "blob {blob} has the media type {media_type:?}, which is not an image layer or config this importer knows"
    )]
    MediaType {
        /// The blob.
        blob: String,
        /// Its media type.
        media_type: String,
    },
    /// The image is not for linux/amd64.
    #[error(
        "no linux/amd64 image in the input (found: {available}); import an image built for this machine"
    )]
    Platform {
        /// The platforms found.
        available: String,
    },
    /// A layer cannot be applied: a bad entry, a broken stream, or too large.
    #[error("layer {blob}: {what}")]
    Layer {
        /// The layer blob.
        blob: String,
        /// What is wrong, with the entry's path where there is one.
        what: String,
    },
    /// The store itself cannot be read or written.
    #[error("image store {path:?}: {what}: {source}")]
    Store {
        /// The path in the store.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// No image of that name or id.
    #[error("no image {0:?} in the store (see `sandbox image ls`)")]
    NotFound(String),
    /// A name that is not `NAME[:TAG]`.
    #[error(
        "{0:?} is not an image name: NAME[:TAG], NAME of letters, digits and . _ - / : (a host:port prefix \
         allowed), TAG of letters, digits and . _ - (at most 128)"
    )]
    BadName(String),
    /// A run's user cannot be resolved in the root's own files.
    #[error("user {user:?}: {what}")]
    User {
        /// The user as given (`NAME|UID[:GROUP|GID]`).
        user: String,
        /// What is wrong.
        what: String,
    },
    /// The run gives no command and the image names none.
    #[error(
        "image {0:?} names no command (no Entrypoint or Cmd in its config): give the program to run"
    )]
    NoCommand(String),
    /// A layer of the image is missing from the store (removed by a prune meanwhile, or never unpacked).
    #[error("layer {diff_id} of image {image:?} is not in the store: import the image again")]
    LayerMissing {
        /// The image.
        image: String,
        /// The layer.
        diff_id: String,
    },
}

fn store_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Store {
        path: path.into(),
        what,
        source,
    }
}

/// An image name and tag (`busybox:1.36`, `localhost:5000/app/web:latest`); the tag defaults to `latest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// The name.
    pub name: String,
    /// The tag.
    pub tag: String,
}

impl Reference {
    /// Parses `NAME[:TAG]`.
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad = || ImageError::BadName(s.into());
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (s, "latest"),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
            && !name.starts_with(['/', '.', '-', ':'])
            && !name.ends_with(['/', ':'])
            && !name.contains("//")
            && !name.split('/').any(|c| c == "." || c == "..");
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !tag.starts_with(['.', '-']);
        if name_ok && tag_ok {
            // Docker Hub's names, as docker shows them: `docker.io/library/busybox` is `busybox`.
            let short = name.strip_prefix("docker.io/").unwrap_or(name);
            let short = short.strip_prefix("library/").unwrap_or(short);
            Ok(Reference {
                name: if short.is_empty() { name } else { short }.into(),
                tag: tag.into(),
            })
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// What a run takes from the image's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageConfig {
    /// `Env`: `KEY=VALUE` lines.
    #[serde(default)]
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd` (replaced by the arguments of a run).
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`: a name or number, with an optional `:group`, resolved in the image's own files.
    pub user: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// `sha256:` of its uncompressed tar: its name in the store.
    pub diff_id: String,
    /// Bytes of file data in its tree.
    pub size: u64,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Its tag.
    pub tag: String,
    /// `sha256:` of its config blob: the image id.
    pub id: String,
    /// `sha256:` of its OCI manifest (none for a `docker save` archive, which has no manifest blob).
    pub manifest: Option<String>,
    /// Always `amd64` today.
    pub architecture: String,
    /// Always `linux`.
    pub os: String,
    /// Bottom layer first.
    pub layers: Vec<LayerInfo>,
    /// What a run takes from the config.
    pub config: ImageConfig,
    /// When it was imported, seconds since the epoch.
    pub imported: u64,
}

impl ImageInfo {
    /// Bytes of file data of all its layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Progress of an import, for a terminal.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Progress {
    /// Layer `index` (from 1) of `count` starts; `shared`: the store has it already.
    Layer {
        /// From 1.
        index: usize,
        /// Layers of the image.
        count: usize,
        /// Its diff_id.
        diff_id: String,
        /// Already in the store: nothing to unpack.
        shared: bool,
    },
    /// Bytes of the current layer's blob read so far, of `total` (when known).
    Bytes {
        /// Read.
        done: u64,
        /// The blob's size.
        total: Option<u64>,
    },
}

/// Options of an import.
#[non_exhaustive]
pub struct ImportOptions<'a> {
    /// The name to give the image (default: the one the source gives it, else an error).
    pub name: Option<Reference>,
    /// Most uncompressed bytes (tar stream, and file data counted by logical size) of one layer.
    pub max_layer_bytes: u64,
    /// Most entries in one layer.
    pub max_layer_entries: u64,
    /// Called with progress (at most every 200 ms for bytes).
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

impl Default for ImportOptions<'_> {
    fn default() -> Self {
        ImportOptions {
            name: None,
            max_layer_bytes: 32 << 30,
            max_layer_entries: 4_000_000,
            progress: None,
        }
    }
}

/// What `prune` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Layers removed.
    pub layers: usize,
    /// Bytes of file data they held.
    pub bytes: u64,
    /// Leftovers of interrupted imports removed.
    pub leftovers: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    images: BTreeMap<String, ImageInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerMeta {
    size: u64,
    entries: u64,
    setid_cleared: u64,
}

/// A store of images on disk. Many processes may import, list, remove and run at once.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// The default store: `/var/lib/sandbox/images` for root, else `$XDG_DATA_HOME/sandbox/images` or
    /// `~/.local/share/sandbox/images`.
    pub fn default_path() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/sandbox/images");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        data.join("sandbox/images")
    }

    /// Opens (creating, mode 0700) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        for dir in [
            root.clone(),
            root.join("layers/sha256"),
            root.join("configs/sha256"),
            root.join("tmp"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(store_err(&dir, "creating the store's directories"))?;
        }
        Ok(ImageStore { root })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The unpacked tree of the layer `diff_id` (`sha256:HEX`).
    pub fn layer_root(&self, diff_id: &str) -> Option<PathBuf> {
        let hex = valid_sha256(diff_id)?;
        Some(self.root.join("layers/sha256").join(hex).join("root"))
    }

    fn layer_dir(&self, hex: &str) -> PathBuf {
        self.root.join("layers/sha256").join(hex)
    }

    fn layer_lock(&self, hex: &str) -> PathBuf {
        self.root.join("layers/sha256").join(format!("{hex}.lock"))
    }

    fn lock_index(&self) -> Result<lock::Held, ImageError> {
        let path = self.root.join("lock");
        lock::lock(&path, true, true)
            .map_err(store_err(&path, "locking the index"))?
            .ok_or_else(|| unreachable_lock(&path))
    }

    fn read_index(&self) -> Result<Index, ImageError> {
        let path = self.root.join("images.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Store {
                path,
                what: "reading the image index",
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(store_err(&path, "reading the image index")(e)),
        }
    }

    /// Writes the index atomically (a temporary file renamed over it).
    fn write_index(&self, index: &Index) -> Result<(), ImageError> {
        let path = self.root.join("images.json");
        let tmp = self
            .root
            .join(format!("images.json.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(index).expect("the index serializes");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            store_err(&path, "writing the image index")(e)
        })
    }

    /// Every image, by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let _held = self.lock_index()?;
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// The image `name` (`NAME[:TAG]`), or the one whose id is or starts with `name` (`sha256:...`, or 12 or
    /// more hex digits).
    pub fn get(&self, name: &str) -> Result<ImageInfo, ImageError> {
        let _held = self.lock_index()?;
        let index = self.read_index()?;
        find(&index, name)
            .cloned()
            .ok_or_else(|| ImageError::NotFound(name.into()))
    }

    /// Removes the name `name` from the store (its layers stay until [`prune`](Self::prune)).
    pub fn remove(&self, name: &str) -> Result<ImageInfo, ImageError> {
        let _held = self.lock_index()?;
        let mut index = self.read_index()?;
        let key = find(&index, name)
            .map(|i| format!("{}:{}", i.name, i.tag))
            .ok_or_else(|| ImageError::NotFound(name.into()))?;
        let info = index.images.remove(&key).expect("found above");
        self.write_index(&index)?;
        Ok(info)
    }

    /// Removes the layers (and configs) no image refers to, and what interrupted imports left in `tmp/`.
    /// Layers in use by an import or a run are kept.
    pub fn prune(&self) -> Result<Pruned, ImageError> {
        let _held = self.lock_index()?;
        let index = self.read_index()?;
        let used: BTreeSet<&str> = index
            .images
            .values()
            .flat_map(|i| i.layers.iter().filter_map(|l| valid_sha256(&l.diff_id)))
            .collect();
        let configs: BTreeSet<&str> = index
            .images
            .values()
            .filter_map(|i| valid_sha256(&i.id))
            .collect();
        let mut pruned = Pruned::default();
        let dir = self.root.join("layers/sha256");
        for entry in std::fs::read_dir(&dir).map_err(store_err(&dir, "listing the layers"))? {
            let entry = entry.map_err(store_err(&dir, "listing the layers"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.trim_end_matches(".lock");
            if valid_sha256(&format!("sha256:{hex}")).is_none() || used.contains(hex) {
                continue;
            }
            let lock_path = self.layer_lock(hex);
            let Some(_layer) = lock::lock(&lock_path, true, false)
                .map_err(store_err(&lock_path, "locking a layer"))?
            else {
                continue; // an import or a run holds it
            };
            let layer_dir = self.layer_dir(hex);
            if layer_dir.exists() {
                let size = read_meta(&layer_dir).map(|m| m.size).unwrap_or(0);
                let trash = self.tmp_path(&format!("trash-{hex}"));
                std::fs::rename(&layer_dir, &trash)
                    .map_err(store_err(&layer_dir, "moving a layer away"))?;
                lock::remove_tree(&trash).map_err(store_err(&trash, "removing a layer"))?;
                pruned.layers += 1;
                pruned.bytes += size;
            }
            // Removed while held: a process that opened it before sees the path gone and locks anew.
            let _ = std::fs::remove_file(&lock_path);
        }
        let cdir = self.root.join("configs/sha256");
        for entry in std::fs::read_dir(&cdir).map_err(store_err(&cdir, "listing the configs"))? {
            let entry = entry.map_err(store_err(&cdir, "listing the configs"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !configs.contains(name.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        pruned.leftovers = self.clean_tmp(None)?;
        Ok(pruned)
    }

    /// Removes leftovers in `tmp/` of interrupted imports (of the layer `only`, or of every layer whose lock
    /// is free).
    fn clean_tmp(&self, only: Option<&str>) -> Result<usize, ImageError> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp).map_err(store_err(&tmp, "listing tmp"))? {
            let entry = entry.map_err(store_err(&tmp, "listing tmp"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name
                .split('.')
                .next()
                .unwrap_or("")
                .trim_start_matches("trash-");
            if valid_sha256(&format!("sha256:{hex}")).is_none() {
                continue;
            }
            match only {
                Some(h) if h != hex => continue,
                Some(_) => {} // the caller holds this layer's lock
                None => {
                    let lock_path = self.layer_lock(hex);
                    let held = lock::lock(&lock_path, true, false)
                        .map_err(store_err(&lock_path, "locking a layer"))?;
                    if held.is_none() {
                        continue;
                    }
                }
            }
            if lock::remove_tree(&entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn tmp_path(&self, stem: &str) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{stem}.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Imports the OCI image layout or `docker save` archive at `path`. Returns the image as stored.
    pub fn import(
        &self,
        path: &Path,
        mut opts: ImportOptions<'_>,
    ) -> Result<ImageInfo, ImageError> {
        let source = Source::open(path)?;
        let want = opts.name.as_ref().map(|r| r.to_string());
        let resolved = source.resolve(want.as_deref())?;
        let reference = match (&opts.name, &resolved.ref_name) {
            (Some(r), _) => r.clone(),
            (None, Some(n)) => Reference::parse(n)?,
            (None, None) => {
                return Err(ImageError::Format {
                    path: path.into(),
                    what: "the image has no name in the input: give one with --name NAME[:TAG]"
                        .into(),
                });
            }
        };
        // Every blob the store does not have yet is checked before any layer is unpacked, so that a bad blob
        // fails the import before it has changed anything.
        for blob in &resolved.layers {
            let present = self.layer_root(&blob.diff_id).is_some_and(|r| {
                read_meta(r.parent().expect("a layer's root has a parent")).is_some()
            });
            if !present {
                verify_blob(&source, blob)?;
            }
        }
        let count = resolved.layers.len();
        let mut held = Vec::new();
        let mut infos = Vec::new();
        let mut created = Vec::new();
        for (i, blob) in resolved.layers.iter().enumerate() {
            match self.ensure_layer(&source, blob, i + 1, count, &mut opts) {
                Ok((lock, info, new)) => {
                    held.push(lock);
                    infos.push(info);
                    if new {
                        created.push(blob.diff_id.clone());
                    }
                }
                Err(e) => {
                    drop(held);
                    self.discard(&created);
                    return Err(e);
                }
            }
        }
        let cfg_hex = valid_sha256(&resolved.config_digest).expect("checked when resolved");
        let cfg_path = self.root.join("configs/sha256").join(cfg_hex);
        if !cfg_path.exists() {
            let tmp = self.tmp_path("config");
            std::fs::write(&tmp, &resolved.config_bytes)
                .and_then(|()| std::fs::rename(&tmp, &cfg_path))
                .map_err(store_err(&cfg_path, "writing the config"))?;
        }
        let c = resolved.config.config().clone().unwrap_or_default();
        let info = ImageInfo {
            name: reference.name.clone(),
            tag: reference.tag.clone(),
            id: resolved.config_digest.clone(),
            manifest: resolved.manifest.clone(),
            architecture: resolved.config.architecture().to_string(),
            os: resolved.config.os().to_string(),
            layers: infos,
            config: ImageConfig {
                env: c.env().clone().unwrap_or_default(),
                entrypoint: c.entrypoint().clone(),
                cmd: c.cmd().clone(),
                working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
                user: c.user().clone().filter(|u| !u.is_empty()),
            },
            imported: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let written = self.lock_index().and_then(|_index| {
            let mut index = self.read_index()?;
            index.images.insert(reference.to_string(), info.clone());
            self.write_index(&index)
        });
        drop(held);
        if let Err(e) = written {
            self.discard(&created);
            return Err(e);
        }
        Ok(info)
    }

    /// Removes the layers a failed import unpacked, unless an image names them or another process holds
    /// them (best effort: what is left, `prune` removes).
    fn discard(&self, diff_ids: &[String]) {
        let Ok(_index) = self.lock_index() else {
            return;
        };
        let Ok(index) = self.read_index() else {
            return;
        };
        for diff_id in diff_ids {
            let Some(hex) = valid_sha256(diff_id) else {
                continue;
            };
            if index
                .images
                .values()
                .any(|i| i.layers.iter().any(|l| &l.diff_id == diff_id))
            {
                continue;
            }
            let lock_path = self.layer_lock(hex);
            let Ok(Some(_layer)) = lock::lock(&lock_path, true, false) else {
                continue;
            };
            let dir = self.layer_dir(hex);
            let trash = self.tmp_path(&format!("trash-{hex}"));
            if std::fs::rename(&dir, &trash).is_ok() {
                let _ = lock::remove_tree(&trash);
            }
            let _ = std::fs::remove_file(&lock_path);
        }
    }

    /// Makes the layer present in the store (unpacked now, or already there) and returns its lock, held
    /// shared until the image is in the index.
    fn ensure_layer(
        &self,
        source: &Source,
        blob: &LayerBlob,
        index: usize,
        count: usize,
        opts: &mut ImportOptions<'_>,
    ) -> Result<(lock::Held, LayerInfo, bool), ImageError> {
        let hex = valid_sha256(&blob.diff_id)
            .expect("checked when resolved")
            .to_owned();
        let dir = self.layer_dir(&hex);
        let lock_path = self.layer_lock(&hex);
        let lock_err = store_err(&lock_path, "locking a layer");
        // Fast path: present; a shared lock keeps prune away until the index names it.
        if let Some(shared) = lock::lock(&lock_path, false, true).map_err(lock_err)?
            && let Some(meta) = read_meta(&dir)
        {
            if let Some(p) = opts.progress.as_mut() {
                p(Progress::Layer {
                    index,
                    count,
                    diff_id: blob.diff_id.clone(),
                    shared: true,
                });
            }
            return Ok((
                shared,
                LayerInfo {
                    diff_id: blob.diff_id.clone(),
                    size: meta.size,
                },
                false,
            ));
        }
        let lock_err = store_err(&lock_path, "locking a layer");
        let exclusive = lock::lock(&lock_path, true, true)
            .map_err(lock_err)?
            .ok_or_else(|| unreachable_lock(&lock_path))?;
        if let Some(p) = opts.progress.as_mut() {
            p(Progress::Layer {
                index,
                count,
                diff_id: blob.diff_id.clone(),
                shared: read_meta(&dir).is_some(),
            });
        }
        let mut new = false;
        let meta = match read_meta(&dir) {
            Some(meta) => meta, // another import unpacked it while we waited
            None => {
                self.clean_tmp(Some(&hex))?;
                let tmp = self.tmp_path(&hex);
                let result = self.unpack(source, blob, &tmp, opts);
                match result {
                    Ok(meta) => {
                        if let Err(e) = std::fs::rename(&tmp, &dir) {
                            let _ = lock::remove_tree(&tmp);
                            return Err(store_err(&dir, "moving the unpacked layer into place")(e));
                        }
                        new = true;
                        meta
                    }
                    Err(e) => {
                        let _ = lock::remove_tree(&tmp);
                        return Err(e);
                    }
                }
            }
        };
        // Downgrade to shared: other imports of images with this layer may go on.
        let file = exclusive
            .unlock()
            .map_err(|(_, e)| store_err(&lock_path, "unlocking a layer")(e.into()))?;
        let shared = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared)
            .map_err(|(_, e)| store_err(&lock_path, "locking a layer")(e.into()))?;
        Ok((
            shared,
            LayerInfo {
                diff_id: blob.diff_id.clone(),
                size: meta.size,
            },
            new,
        ))
    }

    /// Applies the blob (checked by [`verify_blob`] before) into `tmp/…/root` and checks the uncompressed
    /// stream against the diff_id.
    fn unpack(
        &self,
        source: &Source,
        blob: &LayerBlob,
        tmp: &Path,
        opts: &mut ImportOptions<'_>,
    ) -> Result<LayerMeta, ImageError> {
        let layer_err = |what: String| ImageError::Layer {
            blob: blob.label.clone(),
            what,
        };
        let open = || {
            source
                .open_member(&blob.member)
                .map_err(|e| ImageError::Blob {
                    blob: blob.label.clone(),
                    what: format!("cannot be read ({})", blob.member),
                    source: Some(e),
                })
        };
        let root = tmp.join("root");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(store_err(tmp, "creating a layer's directory"))?;
        let (raw, total) = open()?;
        let counted = Counted {
            inner: raw,
            count: 0,
            total,
            last: Instant::now(),
            progress: opts.progress.as_deref_mut(),
        };
        let mut buffered = BufReader::with_capacity(1 << 16, counted);
        let compression = match blob.compression {
            Compression::Detect => {
                let head = io::BufRead::fill_buf(&mut buffered)
                    .map_err(|e| layer_err(format!("cannot be read: {e}")))?;
                if head.starts_with(&[0x1f, 0x8b]) {
                    Compression::Gzip
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    Compression::Zstd
                } else {
                    Compression::None
                }
            }
            c => c,
        };
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| layer_err(format!("the zstd stream cannot be started: {e}")))?,
            ),
            Compression::None | Compression::Detect => Box::new(buffered),
        };
        let mut tally = Tally {
            inner: decoded,
            hasher: Sha256::new(),
            bytes: 0,
            limit: opts.max_layer_bytes,
            over: false,
        };
        let bounds = layer::Bounds {
            max_bytes: opts.max_layer_bytes,
            max_entries: opts.max_layer_entries,
        };
        let keep_owner = nix::unistd::geteuid().is_root();
        let applied = layer::apply(&mut tally, &root, bounds, keep_owner);
        let too_large = || {
            layer_err(format!(
                "more than {} bytes once uncompressed (the bound on one layer; a decompression bomb?)",
                opts.max_layer_bytes
            ))
        };
        let applied = match applied {
            Ok(a) => a,
            Err(_) if tally.over => return Err(too_large()),
            Err(f) if f.path.is_empty() => return Err(layer_err(f.error.to_string())),
            Err(f) => return Err(layer_err(format!("entry {:?}: {}", f.path, f.error))),
        };
        // The rest of the stream (end-of-archive blocks, padding) belongs to the digest too.
        if let Err(e) = io::copy(&mut tally, &mut io::sink()) {
            return Err(if tally.over {
                too_large()
            } else {
                layer_err(format!("the stream after the archive cannot be read: {e}"))
            });
        }
        let actual = format!("sha256:{}", hex(&tally.hasher.finalize_reset()));
        if actual != blob.diff_id {
            return Err(layer_err(format!(
                "its uncompressed content has the digest {actual}, but the config's rootfs.diff_ids says {}",
                blob.diff_id
            )));
        }
        let meta = LayerMeta {
            size: applied.bytes,
            entries: applied.entries,
            setid_cleared: applied.setid_cleared,
        };
        let meta_path = tmp.join("meta.json");
        std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("serializes"))
            .map_err(store_err(&meta_path, "writing a layer's metadata"))?;
        Ok(meta)
    }
}

/// Checks a layer blob's size and digest, when the source names them.
fn verify_blob(source: &Source, blob: &LayerBlob) -> Result<(), ImageError> {
    let open = || {
        source
            .open_member(&blob.member)
            .map_err(|e| ImageError::Blob {
                blob: blob.label.clone(),
                what: format!("cannot be read ({})", blob.member),
                source: Some(e),
            })
    };
    if let Some((digest, size)) = &blob.digest {
        let (mut r, len) = open()?;
        if let Some(size) = size
            && *size != len
        {
            return Err(ImageError::Blob {
                blob: digest.clone(),
                what: format!("is {len} bytes, but its descriptor says {size}"),
                source: None,
            });
        }
        let mut hasher = Sha256::new();
        io::copy(&mut r, &mut HashWriter(&mut hasher)).map_err(|e| ImageError::Blob {
            blob: digest.clone(),
            what: "cannot be read".into(),
            source: Some(e),
        })?;
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if &actual != digest {
            return Err(ImageError::Blob {
                blob: digest.clone(),
                what: format!("has the digest {actual}: the blob is not what its descriptor names"),
                source: None,
            });
        }
    }
    Ok(())
}

fn unreachable_lock(path: &Path) -> ImageError {
    store_err(path, "locking")(io::Error::other(
        "a blocking lock returned without the lock",
    ))
}

fn read_meta(dir: &Path) -> Option<LayerMeta> {
    let bytes = std::fs::read(dir.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn find<'a>(index: &'a Index, name: &str) -> Option<&'a ImageInfo> {
    if let Ok(r) = Reference::parse(name)
        && let Some(i) = index.images.get(&r.to_string())
    {
        return Some(i);
    }
    let id = name.strip_prefix("sha256:").unwrap_or(name);
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut hits = index
            .images
            .values()
            .filter(|i| i.id.trim_start_matches("sha256:").starts_with(id));
        let first = hits.next()?;
        // Several names of one image: any of them is the image.
        if hits.all(|i| i.id == first.id) {
            return Some(first);
        }
    }
    None
}

/// Hashes what is written.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes read from the blob, for progress.
struct Counted<'a, 'b, R> {
    inner: R,
    count: u64,
    total: u64,
    last: Instant,
    progress: Option<&'a mut (dyn FnMut(Progress) + 'b)>,
}

impl<R: Read> Read for Counted<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(p) = self.progress.as_mut()
            && (self.last.elapsed() >= Duration::from_millis(200) || n == 0)
        {
            self.last = Instant::now();
            p(Progress::Bytes {
                done: self.count,
                total: Some(self.total),
            });
        }
        Ok(n)
    }
}

/// Hashes and bounds the uncompressed stream.
struct Tally<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
    over: bool,
}

impl<R: Read> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            self.over = true;
            return Err(io::Error::other("the layer is larger than its bound"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The layer bounds of the fuzz target (small, so that inputs stay fast).
#[cfg(fuzzing)]
pub(crate) fn fuzz_bounds() -> layer::Bounds {
    layer::Bounds {
        max_bytes: 1 << 20,
        max_entries: 4096,
    }
}

/// [`layer::apply`] for the fuzz target, as an unprivileged importer would (no owners kept).
#[cfg(fuzzing)]
pub(crate) fn apply_for_fuzzing(
    tar: &[u8],
    root: &Path,
    bounds: layer::Bounds,
) -> Result<u64, String> {
    layer::apply(tar, root, bounds, false)
        .map(|a| a.entries)
        .map_err(|f| format!("{}: {}", f.path, f.error))
}

/// Removes a tree a layer was applied into.
#[cfg(fuzzing)]
pub(crate) fn remove_for_fuzzing(dir: &Path) {
    let _ = lock::remove_tree(dir);
}

#[cfg(test)]
mod tests;
