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

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod import;
mod layer;
mod lock;
mod run;
mod source;
mod store;

pub use run::{Checkout, ResolvedUser, RootFiles};

pub use layer::OPAQUE_XATTR;
pub use store::ImageStore;

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
    root: &std::path::Path,
    bounds: layer::Bounds,
) -> Result<u64, String> {
    layer::apply(tar, root, bounds, false)
        .map(|a| a.entries)
        .map_err(|f| format!("{}: {}", f.path, f.error))
}

/// Removes a tree a layer was applied into.
#[cfg(fuzzing)]
pub(crate) fn remove_for_fuzzing(dir: &std::path::Path) {
    let _ = lock::remove_tree(dir);
}

#[cfg(test)]
mod tests;
