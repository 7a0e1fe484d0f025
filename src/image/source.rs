//! Where an import reads from: an OCI image layout (a directory, or a tar archive of one as `skopeo copy ...
//! oci-archive:` writes) or a `docker save` archive (or its unpacked directory), and the resolution of its
//! index or manifest.json to one linux/amd64 image: the verified config and the layers to apply, in order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{
    Arch, Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// JSON documents (index, manifest, config) are read into memory up to this size.
const JSON_LIMIT: u64 = 4 << 20;
/// Nested indexes followed at most.
const NESTING: usize = 4;
/// The annotation that names an image in an OCI layout's index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd.
    Zstd,
    /// By the blob's first bytes (docker archives say nothing).
    Detect,
}

/// One layer to apply.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The member of the source that holds the blob.
    pub member: String,
    /// The blob's digest and size when the source names them: checked before the blob is parsed.
    pub digest: Option<(String, Option<u64>)>,
    /// Its compression.
    pub compression: Compression,
    /// `sha256:HEX` of the uncompressed tar, from the verified config.
    pub diff_id: String,
    /// How error messages name it: the blob's digest, else the member and the diff_id.
    pub label: String,
}

/// One image of the source, resolved.
#[derive(Debug)]
pub struct Resolved {
    /// `sha256:HEX` of the manifest (OCI sources).
    pub manifest: Option<String>,
    /// `sha256:HEX` of the config blob: the image id.
    pub config_digest: String,
    /// The config blob as read.
    pub config_bytes: Vec<u8>,
    /// The config, parsed.
    pub config: ImageConfiguration,
    /// Bottom layer first.
    pub layers: Vec<LayerBlob>,
    /// The name the source gives the image (`org.opencontainers.image.ref.name`, docker's RepoTags).
    pub ref_name: Option<String>,
}

/// A member of a tar source: its data's offset and size, or another member it links to.
#[derive(Debug, Clone)]
pub enum Member {
    Data { offset: u64, size: u64 },
    Alias(String),
}

/// The files of the source.
pub enum Source {
    /// A directory.
    Dir(PathBuf),
    /// A tar archive, indexed once.
    Tar {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// A member name as plain relative components, or `None`.
fn clean_name(name: &str) -> Option<String> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let s = out.to_str()?.to_owned();
    (!s.is_empty()).then_some(s)
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:` and 64 lowercase hex digits: the only digests this store takes.
pub fn valid_sha256(digest: &str) -> Option<&str> {
    let h = digest.strip_prefix("sha256:")?;
    (h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(h)
}

impl Source {
    /// Opens `path`: a directory, or a tar archive (indexed now).
    pub fn open(path: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(|source| ImageError::Input {
            path: path.into(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.into()));
        }
        let file = File::open(path).map_err(|source| ImageError::Input {
            path: path.into(),
            source,
        })?;
        let bad = |e: io::Error| ImageError::Format {
            path: path.into(),
            what: format!("not an OCI image layout directory, nor a readable tar archive ({e})"),
        };
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let Some(name) = std::str::from_utf8(&entry.path_bytes())
                .ok()
                .and_then(clean_name)
            else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::Data {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().ok().flatten() else {
                    continue;
                };
                let target = target.to_string_lossy();
                let joined = if kind.is_symlink() && !target.starts_with('/') {
                    match Path::new(&name).parent() {
                        Some(dir) => dir.join(&*target).to_string_lossy().into_owned(),
                        None => target.into_owned(),
                    }
                } else {
                    target.trim_start_matches('/').to_owned()
                };
                match normalize(&joined) {
                    Some(t) => Member::Alias(t),
                    None => continue,
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        if members.is_empty() {
            return Err(ImageError::Format {
                path: path.into(),
                what: "an empty archive".into(),
            });
        }
        Ok(Source::Tar {
            path: path.into(),
            members,
        })
    }

    fn path(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Tar { path: p, .. } => p,
        }
    }

    fn member(&self, name: &str) -> Option<(u64, u64)> {
        let Source::Tar { members, .. } = self else {
            return None;
        };
        let mut name = name.to_owned();
        for _ in 0..8 {
            match members.get(&name)? {
                Member::Data { offset, size } => return Some((*offset, *size)),
                Member::Alias(t) => name = t.clone(),
            }
        }
        None
    }

    /// Whether the source has the member `name`.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Tar { .. } => self.member(name).is_some(),
        }
    }

    /// Opens the member `name` (plain relative components only) and gives its length.
    pub fn open_member(&self, name: &str) -> io::Result<(Box<dyn Read + Send + '_>, u64)> {
        let clean = clean_name(name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path")
        })?;
        match self {
            Source::Dir(d) => {
                let file = File::open(d.join(&clean))?;
                let len = file.metadata()?.len();
                Ok((Box::new(file), len))
            }
            Source::Tar { path, .. } => {
                let (offset, size) = self.member(&clean).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "no such member in the archive")
                })?;
                let mut file = File::open(path)?;
                file.seek(SeekFrom::Start(offset))?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// Reads a small member whole (JSON), up to [`JSON_LIMIT`].
    fn read_small(&self, name: &str, blob: &str) -> Result<Vec<u8>, ImageError> {
        let (mut r, len) = self.open_member(name).map_err(|source| ImageError::Blob {
            blob: blob.into(),
            what: format!("cannot be read from {:?} ({name})", self.path()),
            source: Some(source),
        })?;
        if len > JSON_LIMIT {
            return Err(ImageError::Blob {
                blob: blob.into(),
                what: format!(
                    "is {len} bytes, more than the {JSON_LIMIT} a JSON document may have"
                ),
                source: None,
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.read_to_end(&mut buf).map_err(|source| ImageError::Blob {
            blob: blob.into(),
            what: "cannot be read".into(),
            source: Some(source),
        })?;
        Ok(buf)
    }

    /// Reads the blob of `desc` (a JSON document), checking its size and digest.
    fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let (digest, hexd) = descriptor_digest(desc)?;
        let data = self.read_small(&format!("blobs/sha256/{hexd}"), &digest)?;
        if data.len() as u64 != desc.size() {
            return Err(ImageError::Blob {
                blob: digest,
                what: format!(
                    "is {} bytes, but its descriptor says {}",
                    data.len(),
                    desc.size()
                ),
                source: None,
            });
        }
        let actual = sha256_hex(&data);
        if actual != hexd {
            return Err(ImageError::Blob {
                blob: digest,
                what: format!(
                    "has the digest sha256:{actual}: the blob is not what its descriptor names"
                ),
                source: None,
            });
        }
        Ok(data)
    }

    /// Resolves the source to one linux/amd64 image; `want` (a tag or `name:tag`) picks one of several.
    pub fn resolve(&self, want: Option<&str>) -> Result<Resolved, ImageError> {
        if self.has("manifest.json") {
            self.resolve_docker(want)
        } else if self.has("index.json") {
            self.resolve_oci(want)
        } else {
            Err(ImageError::Format {
                path: self.path().into(),
                what: "neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)"
                    .into(),
            })
        }
    }

    fn resolve_oci(&self, want: Option<&str>) -> Result<Resolved, ImageError> {
        if let Ok(layout) = self.read_small("oci-layout", "oci-layout") {
            let v: serde_json::Value = serde_json::from_slice(&layout).unwrap_or_default();
            let version = v["imageLayoutVersion"].as_str().unwrap_or("");
            if !version.starts_with("1.") {
                return Err(ImageError::Format {
                    path: self.path().into(),
                    what: format!(
                        "oci-layout says imageLayoutVersion {version:?}; only 1.x is known"
                    ),
                });
            }
        }
        let index_bytes = self.read_small("index.json", "index.json")?;
        let index = ImageIndex::from_reader(&index_bytes[..]).map_err(|e| ImageError::Json {
            blob: "index.json".into(),
            what: e.to_string(),
        })?;
        let mut found = Vec::new();
        let mut skipped = Vec::new();
        self.candidates(&index, None, 0, &mut found, &mut skipped)?;
        if let Some(w) = want
            && found.len() > 1
        {
            let tag = w.rsplit_once(':').map_or(w, |(_, t)| t);
            found.retain(|(_, name)| name.as_deref().is_some_and(|n| n == w || n == tag));
        }
        let (desc, ref_name) = match found.len() {
            1 => found.remove(0),
            0 if !skipped.is_empty() => {
                return Err(ImageError::Platform {
                    available: skipped.join(", "),
                });
            }
            0 => {
                return Err(ImageError::Format {
                    path: self.path().into(),
                    what: "the index lists no image manifest (for the name asked for)".into(),
                });
            }
            _ => {
                let names: Vec<_> = found
                    .iter()
                    .map(|(d, n)| n.clone().unwrap_or_else(|| d.digest().to_string()))
                    .collect();
                return Err(ImageError::Format {
                    path: self.path().into(),
                    what: format!(
                        "the layout holds several images ({}): pick one with --name NAME:TAG, the tag being its \
                         org.opencontainers.image.ref.name",
                        names.join(", ")
                    ),
                });
            }
        };
        let manifest_bytes = self.read_blob(&desc)?;
        let (manifest_digest, _) = descriptor_digest(&desc)?;
        let manifest =
            ImageManifest::from_reader(&manifest_bytes[..]).map_err(|e| ImageError::Json {
                blob: manifest_digest.clone(),
                what: e.to_string(),
            })?;
        let cdesc = manifest.config();
        match cdesc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(t) if t == DOCKER_CONFIG => {}
            other => {
                return Err(ImageError::MediaType {
                    blob: cdesc.digest().to_string(),
                    media_type: other.to_string(),
                });
            }
        }
        let config_bytes = self.read_blob(cdesc)?;
        let (config_digest, _) = descriptor_digest(cdesc)?;
        let config = parse_config(&config_bytes, &config_digest)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Json {
                blob: config_digest,
                what: format!(
                    "the config lists {} layers (rootfs.diff_ids), the manifest {}",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let (digest, hexd) = descriptor_digest(desc)?;
            let compression = match desc.media_type() {
                MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
                MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                    Compression::Gzip
                }
                MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                    Compression::Zstd
                }
                MediaType::Other(t) if t == DOCKER_LAYER_GZIP => Compression::Gzip,
                MediaType::Other(t) if t == DOCKER_LAYER => Compression::None,
                other => {
                    return Err(ImageError::MediaType {
                        blob: digest,
                        media_type: other.to_string(),
                    });
                }
            };
            layers.push(LayerBlob {
                member: format!("blobs/sha256/{hexd}"),
                digest: Some((digest.clone(), Some(desc.size()))),
                compression,
                diff_id: checked_diff_id(diff_id, &config_digest)?,
                label: digest,
            });
        }
        Ok(Resolved {
            manifest: Some(manifest_digest),
            config_digest,
            config_bytes,
            config,
            layers,
            ref_name,
        })
    }

    /// Image manifests of `index` (nested indexes followed) for linux/amd64, with their ref names; the
    /// platforms passed over go to `skipped`.
    fn candidates(
        &self,
        index: &ImageIndex,
        parent_name: Option<&str>,
        depth: usize,
        found: &mut Vec<(Descriptor, Option<String>)>,
        skipped: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        for desc in index.manifests() {
            let name = desc
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME).cloned())
                .or_else(|| parent_name.map(str::to_owned));
            if let Some(p) = desc.platform()
                && (*p.os() != Os::Linux || *p.architecture() != Arch::Amd64)
            {
                skipped.push(format!("{}/{}", p.os(), p.architecture()));
                continue;
            }
            match desc.media_type() {
                MediaType::ImageManifest => found.push((desc.clone(), name.clone())),
                MediaType::Other(t) if t == DOCKER_MANIFEST => {
                    found.push((desc.clone(), name.clone()))
                }
                MediaType::ImageIndex => {}
                MediaType::Other(t) if t == DOCKER_LIST => {}
                _ => continue, // artifacts, attestations: not images
            }
            if matches!(desc.media_type(), MediaType::ImageIndex)
                || matches!(desc.media_type(), MediaType::Other(t) if t == DOCKER_LIST)
            {
                if depth >= NESTING {
                    return Err(ImageError::Json {
                        blob: desc.digest().to_string(),
                        what: format!("indexes nested more than {NESTING} deep"),
                    });
                }
                let bytes = self.read_blob(desc)?;
                let nested = ImageIndex::from_reader(&bytes[..]).map_err(|e| ImageError::Json {
                    blob: desc.digest().to_string(),
                    what: e.to_string(),
                })?;
                self.candidates(&nested, name.as_deref(), depth + 1, found, skipped)?;
            }
        }
        Ok(())
    }

    fn resolve_docker(&self, want: Option<&str>) -> Result<Resolved, ImageError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let bytes = self.read_small("manifest.json", "manifest.json")?;
        let mut entries: Vec<Entry> =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Json {
                blob: "manifest.json".into(),
                what: e.to_string(),
            })?;
        if let Some(w) = want
            && entries.len() > 1
        {
            entries.retain(|e| e.repo_tags.iter().flatten().any(|t| t == w));
        }
        if entries.len() != 1 {
            return Err(ImageError::Format {
                path: self.path().into(),
                what: format!(
                    "manifest.json lists {} images: name the one to import with --name NAME:TAG (one of its \
                     RepoTags)",
                    entries.len()
                ),
            });
        }
        let entry = entries.remove(0);
        let config_member = clean_name(&entry.config).ok_or_else(|| ImageError::Json {
            blob: "manifest.json".into(),
            what: format!("Config {:?} is not a plain relative path", entry.config),
        })?;
        let config_bytes = self.read_small(&config_member, &config_member)?;
        let actual = sha256_hex(&config_bytes);
        // The config's name is its digest (`HEX.json` before docker 25, `blobs/sha256/HEX` since).
        let named = Path::new(&config_member)
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".json").to_owned())
            .filter(|n| valid_sha256(&format!("sha256:{n}")).is_some());
        if let Some(named) = named
            && named != actual
        {
            return Err(ImageError::Blob {
                blob: format!("sha256:{named}"),
                what: format!(
                    "has the digest sha256:{actual}: the config is not what its name says"
                ),
                source: None,
            });
        }
        let config_digest = format!("sha256:{actual}");
        let config = parse_config(&config_bytes, &config_digest)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != entry.layers.len() {
            return Err(ImageError::Json {
                blob: config_digest,
                what: format!(
                    "the config lists {} layers (rootfs.diff_ids), manifest.json {}",
                    diff_ids.len(),
                    entry.layers.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (member, diff_id) in entry.layers.iter().zip(diff_ids) {
            let diff_id = checked_diff_id(diff_id, &config_digest)?;
            let member = clean_name(member).ok_or_else(|| ImageError::Json {
                blob: "manifest.json".into(),
                what: format!("layer {member:?} is not a plain relative path"),
            })?;
            let digest = member
                .strip_prefix("blobs/sha256/")
                .map(|h| format!("sha256:{h}"))
                .filter(|d| valid_sha256(d).is_some());
            layers.push(LayerBlob {
                label: digest
                    .clone()
                    .unwrap_or_else(|| format!("{member} ({diff_id})")),
                member,
                digest: digest.map(|d| (d, None)),
                compression: Compression::Detect,
                diff_id,
            });
        }
        Ok(Resolved {
            manifest: None,
            config_digest,
            config_bytes,
            config,
            layers,
            ref_name: entry.repo_tags.and_then(|t| t.into_iter().next()),
        })
    }
}

/// Collapses `a/../b` in an archive-internal link target; `None` when it leaves the archive.
fn normalize(p: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn descriptor_digest(desc: &Descriptor) -> Result<(String, String), ImageError> {
    let digest = desc.digest().to_string();
    if *desc.digest().algorithm() != DigestAlgorithm::Sha256 {
        return Err(ImageError::Blob {
            blob: digest,
            what: "uses a digest algorithm other than sha256, which this store does not take"
                .into(),
            source: None,
        });
    }
    match valid_sha256(&digest) {
        Some(h) => Ok((digest.clone(), h.to_owned())),
        None => Err(ImageError::Blob {
            blob: digest,
            what: "is not sha256: and 64 lowercase hex digits".into(),
            source: None,
        }),
    }
}

fn checked_diff_id(diff_id: &str, config: &str) -> Result<String, ImageError> {
    valid_sha256(diff_id)
        .map(|_| diff_id.to_owned())
        .ok_or_else(|| ImageError::Json {
            blob: config.into(),
            what: format!("rootfs.diff_ids holds {diff_id:?}, not a sha256 digest"),
        })
}

fn parse_config(bytes: &[u8], digest: &str) -> Result<ImageConfiguration, ImageError> {
    let config = ImageConfiguration::from_reader(bytes).map_err(|e| ImageError::Json {
        blob: digest.into(),
        what: e.to_string(),
    })?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        return Err(ImageError::Platform {
            available: format!("{}/{}", config.os(), config.architecture()),
        });
    }
    Ok(config)
}
