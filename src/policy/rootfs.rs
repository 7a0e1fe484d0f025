//! A root filesystem of the sandbox's own: [`Rootfs`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::PolicyError;

/// A root filesystem of the sandbox's own: a host directory (`dir`, as `bwrap --bind DIR /`) or an image of
/// an [`ImageStore`](crate::image::ImageStore) (`image`). Either is read-only underneath, with a writable
/// layer on top (overlayfs): a tmpfs discarded at the end of the run (bounded like `/tmp`), or the directory
/// `upper` (kept; it holds `upper/` and `work/`). A root caller's directory or image is shown through an
/// id-mapped mount, so the files its root owns are owned by root inside the sandbox too.
///
/// ```toml
/// [rootfs]
/// image = "alpine:3"        # or: dir = "/srv/rootfs"
/// # store = "/var/lib/sandbox/images"   (default: ImageStore::default_path())
/// # upper = "/srv/work/upper"            (default: a tmpfs)
/// # user = "app"                          (default: the image's User)
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Rootfs {
    /// A host directory as the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Host directories stacked as the root, top first (overlayfs' lower layers): what the VM backend gives
    /// its guest for an image, usable directly too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PathBuf>,
    /// An image `NAME[:TAG]` (or id) of the store as the root; its config gives the command, environment,
    /// working directory and user the run does not set itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image store (default: [`ImageStore::default_path`](crate::image::ImageStore::default_path)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<PathBuf>,
    /// A host directory for the writable layer, kept after the run (default: a tmpfs, discarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
    /// The user to run as, `NAME|UID[:GROUP|GID]`, resolved in the root's own `/etc/passwd` and
    /// `/etc/group`; overrides the image's `User` and the policy's `uid`/`gid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// No writable layer: the root read-only, with empty tmpfs at `/tmp`, `/run` and `/var/tmp` (where the
    /// root has `/var`), as `docker run --read-only`. A directory or a one-layer image only. This is also what
    /// a run gets where overlayfs is unavailable (the verdict says so).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl Rootfs {
    /// A host directory as the root.
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        Rootfs {
            dir: Some(path.into()),
            ..Rootfs::default()
        }
    }

    /// An image of the default store as the root.
    pub fn image(name: impl Into<String>) -> Self {
        Rootfs {
            image: Some(name.into()),
            ..Rootfs::default()
        }
    }

    /// Host directories stacked as the root, top first.
    pub fn stack(layers: Vec<PathBuf>) -> Self {
        Rootfs {
            layers,
            ..Rootfs::default()
        }
    }

    /// No writable layer (see the `read_only` field).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Uses the image store at `store`.
    pub fn store(mut self, store: impl Into<PathBuf>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// Keeps the writable layer in `upper` (created if missing).
    pub fn upper(mut self, upper: impl Into<PathBuf>) -> Self {
        self.upper = Some(upper.into());
        self
    }

    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        let given = [
            self.dir.is_some(),
            self.image.is_some(),
            !self.layers.is_empty(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(PolicyError::BadRootfs(
                "give one of `dir`, `image` and `layers`, not both",
            ));
        }
        if self.layers.iter().any(|l| !l.is_absolute()) {
            return Err(PolicyError::BadRootfs("`layers` must be absolute paths"));
        }
        if self.layers.len() > 127 {
            return Err(PolicyError::BadRootfs("at most 127 `layers`"));
        }
        if !self.layers.is_empty() && self.store.is_some() {
            return Err(PolicyError::BadRootfs(
                "`store` goes with `image`, not `layers`",
            ));
        }
        match (&self.dir, &self.image) {
            (Some(_), Some(_)) => {
                return Err(PolicyError::BadRootfs("give `dir` or `image`, not both"));
            }
            (None, None) if self.layers.is_empty() => {
                return Err(PolicyError::BadRootfs("give `dir` or `image`"));
            }
            (Some(d), None) if !d.is_absolute() => {
                return Err(PolicyError::BadRootfs("`dir` must be an absolute path"));
            }
            (None, Some(i)) if i.is_empty() => {
                return Err(PolicyError::BadRootfs("`image` is empty"));
            }
            (Some(_), None) if self.store.is_some() => {
                return Err(PolicyError::BadRootfs(
                    "`store` goes with `image`, not `dir`",
                ));
            }
            _ => {}
        }
        for p in [&self.store, &self.upper].into_iter().flatten() {
            if !p.is_absolute() {
                return Err(PolicyError::BadRootfs(
                    "`store` and `upper` must be absolute paths",
                ));
            }
        }
        if self.read_only && self.upper.is_some() {
            return Err(PolicyError::BadRootfs(
                "`read_only` has no writable layer to keep in `upper`",
            ));
        }
        if self.user.as_deref() == Some("") {
            return Err(PolicyError::BadRootfs("`user` is empty"));
        }
        Ok(())
    }
}
