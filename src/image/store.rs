//! The store on disk: its directories, the image index (read and written under the index lock), the paths
//! and locks of layers, lookups by name or id, removal and prune. Imports are in `import.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::lock;
use super::source::valid_sha256;
use super::{ImageError, ImageInfo, Pruned, Reference};

pub(super) fn store_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Store {
        path: path.into(),
        what,
        source,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Index {
    #[serde(default)]
    pub(super) images: BTreeMap<String, ImageInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LayerMeta {
    pub(super) size: u64,
    pub(super) entries: u64,
    pub(super) setid_cleared: u64,
}

/// A store of images on disk. Many processes may import, list, remove and run at once.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(super) root: PathBuf,
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

    pub(super) fn layer_dir(&self, hex: &str) -> PathBuf {
        self.root.join("layers/sha256").join(hex)
    }

    pub(super) fn layer_lock(&self, hex: &str) -> PathBuf {
        self.root.join("layers/sha256").join(format!("{hex}.lock"))
    }

    pub(super) fn lock_index(&self) -> Result<lock::Held, ImageError> {
        let path = self.root.join("lock");
        lock::lock(&path, true, true)
            .map_err(store_err(&path, "locking the index"))?
            .ok_or_else(|| unreachable_lock(&path))
    }

    pub(super) fn read_index(&self) -> Result<Index, ImageError> {
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
    pub(super) fn write_index(&self, index: &Index) -> Result<(), ImageError> {
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
    pub(super) fn clean_tmp(&self, only: Option<&str>) -> Result<usize, ImageError> {
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

    pub(super) fn tmp_path(&self, stem: &str) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{stem}.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

pub(super) fn unreachable_lock(path: &Path) -> ImageError {
    store_err(path, "locking")(io::Error::other(
        "a blocking lock returned without the lock",
    ))
}

pub(super) fn read_meta(dir: &Path) -> Option<LayerMeta> {
    let bytes = std::fs::read(dir.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) fn find<'a>(index: &'a Index, name: &str) -> Option<&'a ImageInfo> {
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
