//! The import of an image into the store: every blob the store lacks checked first, then each layer made
//! present (unpacked into `tmp/`, checked against its diff_id, renamed into place), then the index written.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use super::source::{Compression, LayerBlob, Source, hex, valid_sha256};
use super::store::{ImageStore, LayerMeta, read_meta, store_err, unreachable_lock};
use super::{ImageConfig, ImageError, ImageInfo, ImportOptions, LayerInfo, Progress, Reference};
use super::{layer, lock};

impl ImageStore {
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
        let root = tmp.join("root");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(store_err(tmp, "creating a layer's directory"))?;
        let (raw, total) = open_blob(source, blob)?;
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

/// Opens a layer blob in the source: its bytes as stored (compressed or not) and their length.
fn open_blob<'s>(
    source: &'s Source,
    blob: &LayerBlob,
) -> Result<(Box<dyn Read + Send + 's>, u64), ImageError> {
    source
        .open_member(&blob.member)
        .map_err(|e| ImageError::Blob {
            blob: blob.label.clone(),
            what: format!("cannot be read ({})", blob.member),
            source: Some(e),
        })
}

/// Checks a layer blob's size and digest, when the source names them.
fn verify_blob(source: &Source, blob: &LayerBlob) -> Result<(), ImageError> {
    if let Some((digest, size)) = &blob.digest {
        let (mut r, len) = open_blob(source, blob)?;
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
