//! The virtio-fs device (device ID 26): one host directory shared with the guest, served in-process by
//! fuse-backend-rs's FUSE server over its passthrough file system.
//!
//! ```no_run
//! use sandkasten_vmm::virtio::fs::VirtioFs;
//!
//! // The guest mounts it with `mount -t virtiofs -o ro usr /usr`.
//! let dev = VirtioFs::new("usr", "/usr", true)?;
//! # Ok::<(), sandkasten_vmm::virtio::fs::FsError>(())
//! ```
//!
//! Queues: 0 is the high-priority queue (FORGET and INTERRUPT), 1 the single request queue. Both are served
//! the same way on the vCPU thread when the driver notifies them: every available chain becomes a FUSE
//! request (the device-readable descriptors) and its reply (the device-writable ones).
//!
//! Policy lives in `share.rs`: read-only shares are enforced here on the host (`EROFS`), never trusted to the
//! guest's `ro` mount flag; guest uids/gids are not used for host credentials; symlinks are returned to the
//! guest as symlinks and resolved by the guest kernel, never followed by the host (PassthroughFs opens one
//! name at a time relative to a directory fd, with `O_NOFOLLOW`), and `..` of the share root is the root.
//!
//! The passthrough file system needs `/proc/self/fd` and `/proc/self/mountinfo` in the VMM's mount
//! namespace, and no capabilities (no file handles, so no `open_by_handle_at`; no credential switching).

mod share;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, Interrupt, StateError, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::snapshot::state::{DeviceState, FsState, QueueState};
use share::ShareFs;

/// The virtio device ID of a file system device.
pub const DEVICE_ID: u32 = 26;
/// The longest tag (the guest's `mount -t virtiofs <tag>`), in bytes.
pub const TAG_MAX_LEN: usize = 36;
/// Largest size of each queue.
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Size of the configuration space: `tag[36]` then `num_request_queues: le32`.
const CONFIG_LEN: usize = TAG_MAX_LEN + 4;

/// Why a share could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or contains a NUL byte.
    #[error("virtio-fs tag {tag:?} must be 1 to {TAG_MAX_LEN} bytes without NUL")]
    Tag {
        /// The rejected tag.
        tag: String,
    },
    /// The shared directory does not exist or cannot be resolved.
    #[error("virtio-fs share {path}: cannot resolve the directory: {source}")]
    Resolve {
        /// The directory as given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The shared path is not a directory.
    #[error("virtio-fs share {path}: not a directory (share a directory, not a file)")]
    NotADirectory {
        /// The path, resolved.
        path: PathBuf,
    },
    /// The passthrough file system needs a UTF-8 path.
    #[error("virtio-fs share {path}: the path is not valid UTF-8")]
    NotUtf8 {
        /// The path, resolved.
        path: PathBuf,
    },
    /// fuse-backend-rs could not set up its passthrough file system (it opens /proc/self/fd and
    /// /proc/self/mountinfo).
    #[error(
        "virtio-fs share {path}: cannot start the passthrough file system (is /proc mounted?): {source}"
    )]
    Passthrough {
        /// The path, resolved.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters of a device, readable while the device works.
#[derive(Debug, Default)]
pub struct FsStats {
    requests: AtomicU64,
    bad_requests: AtomicU64,
}

impl FsStats {
    /// Chains served (well-formed or not).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Chains that were malformed or could not be answered (out-of-range buffers, a readable part too
    /// short for a FUSE header, an invalid head index, a reply that did not fit).
    pub fn bad_requests(&self) -> u64 {
        self.bad_requests.load(Ordering::Relaxed)
    }
}

/// The queues and memory of an activated device.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// A virtio-fs device sharing one host directory.
pub struct VirtioFs {
    tag: String,
    root: PathBuf,
    readonly: bool,
    fs: Arc<ShareFs>,
    server: Server<Arc<ShareFs>>,
    acked_features: u64,
    active: Option<Active>,
    stats: Arc<FsStats>,
}

impl std::fmt::Debug for VirtioFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioFs")
            .field("tag", &self.tag)
            .field("root", &self.root)
            .field("readonly", &self.readonly)
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

/// The PassthroughFs options for a share.
fn passthrough_config(root: &str, readonly: bool) -> Config {
    Config {
        root_dir: root.to_owned(),
        // We are not under fuse-backend-rs's Vfs: PassthroughFs imports its root itself on FUSE_INIT and
        // validates names of new entries.
        do_import: true,
        // The guest's page cache must not hold writes the host has not seen.
        writeback: false,
        // Extended attributes: off (security.* and trusted.* handling, and speed).
        xattr: false,
        // O_PATH fds instead of file handles: open_by_handle_at needs CAP_DAC_READ_SEARCH.
        inode_file_handles: false,
        // Dropping CAP_FSETID around writes needs capabilities we do not have.
        killpriv_v2: false,
        // No DAX window.
        dax_file_size: None,
        // A read-only share is not changed by the guest and, by contract, not by the host while the sandbox
        // runs: let the guest keep file data and metadata cached (each miss is a VM exit on the vCPU).
        // A writable share keeps close-to-open consistency so the host sees the guest's files.
        cache_policy: if readonly {
            CachePolicy::Always
        } else {
            CachePolicy::Auto
        },
        entry_timeout: Duration::from_secs(if readonly { 60 } else { 5 }),
        attr_timeout: Duration::from_secs(if readonly { 60 } else { 5 }),
        ..Config::default()
    }
}

impl VirtioFs {
    /// A device that shares `host_dir` under `tag`, read-only (enforced on the host) or writable.
    pub fn new(tag: &str, host_dir: impl AsRef<Path>, readonly: bool) -> Result<VirtioFs, FsError> {
        if tag.is_empty() || tag.len() > TAG_MAX_LEN || tag.contains('\0') {
            return Err(FsError::Tag {
                tag: tag.to_owned(),
            });
        }
        let given = host_dir.as_ref();
        // PassthroughFs opens its root with O_NOFOLLOW: give it the resolved, absolute path.
        let root = std::fs::canonicalize(given).map_err(|source| FsError::Resolve {
            path: given.to_owned(),
            source,
        })?;
        let meta = std::fs::metadata(&root).map_err(|source| FsError::Resolve {
            path: given.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory { path: root });
        }
        let root_str = root
            .to_str()
            .ok_or_else(|| FsError::NotUtf8 { path: root.clone() })?;
        let passthrough =
            PassthroughFs::new(passthrough_config(root_str, readonly)).map_err(|source| {
                FsError::Passthrough {
                    path: root.clone(),
                    source,
                }
            })?;
        let fs = Arc::new(ShareFs::new(passthrough, readonly));
        Ok(VirtioFs {
            tag: tag.to_owned(),
            root,
            readonly,
            server: Server::new(fs.clone()),
            fs,
            acked_features: 0,
            active: None,
            stats: Arc::default(),
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The shared host directory (resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the share is read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The device's counters (shared: still readable after the device moved into the transport).
    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        config[TAG_MAX_LEN..].copy_from_slice(&1u32.to_le_bytes());
        config
    }
}

/// Serves one chain: the FUSE request in its readable part, the reply into its writable part. Returns the
/// number of reply bytes.
/// The most descriptors a request may have: the largest FUSE request or reply (1 MiB of pages plus headers)
/// needs about 260; a hostile guest's indirect table could list 65,535, which the FUSE layer would collect
/// for every chain of the queue.
const MAX_DESCRIPTORS: usize = 512;

fn serve_chain(
    server: &Server<Arc<ShareFs>>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<u32, String> {
    if chain.clone().take(MAX_DESCRIPTORS + 1).count() > MAX_DESCRIPTORS {
        return Err(format!("more than {MAX_DESCRIPTORS} descriptors"));
    }
    let reader = Reader::from_descriptor_chain(mem, chain.clone())
        .map_err(|e| format!("request buffers: {e}"))?;
    let writer = VirtioFsWriter::new(mem, chain).map_err(|e| format!("reply buffers: {e}"))?;
    let written = server
        .handle_message(reader, Writer::VirtioFs(writer), None, None)
        .map_err(|e| format!("FUSE: {e}"))?;
    u32::try_from(written).map_err(|_| format!("reply of {written} bytes"))
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    /// The tag and access, not the host directory: before its first request (the only time a share is
    /// saved) the guest knows nothing of the directory behind it.
    fn describe(&self) -> String {
        format!(
            "fs {} {}",
            self.tag,
            if self.readonly { "ro" } else { "rw" }
        )
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config_space();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::Queues {
                got: queues.len(),
                want: QUEUE_SIZES.len(),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(usize::from(index)) else {
            self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mem = &active.mem;
        let mut used = false;
        // At most one ring's worth per notification: a driver never has more outstanding, and a hostile one
        // whose used ring overlaps its available ring would otherwise keep this loop fed forever.
        let mut budget = virtio_queue::QueueT::size(queue);
        while budget > 0
            && let Some(chain) = queue.pop_descriptor_chain(mem)
        {
            budget -= 1;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let head = chain.head_index();
            let len = serve_chain(&self.server, mem, chain).unwrap_or_else(|why| {
                tracing::debug!(queue = index, head, "virtio-fs: bad request: {why}");
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                0
            });
            match queue.add_used(mem, head, len) {
                Ok(()) => used = true,
                Err(e) => {
                    tracing::debug!(
                        queue = index,
                        head,
                        "virtio-fs: cannot return the chain: {e}"
                    );
                    self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if used && queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    fn reset(&mut self) {
        if self.active.take().is_some() {
            // Close every host fd the guest had open; a new FUSE_INIT imports the root again.
            fuse_backend_rs::api::filesystem::FileSystem::destroy(&*self.fs);
        }
    }

    /// Only before the guest's first request: a FUSE session (the inodes and open files the guest holds)
    /// lives in the host's passthrough file system and cannot be carried into another process.
    fn save(&mut self) -> Result<DeviceState, StateError> {
        if self.stats.requests() > 0 {
            return Err(StateError::Busy {
                device: DEVICE_ID,
                reason: format!(
                    "share {:?} has a FUSE session (the guest mounted it); snapshot before the first run",
                    self.tag
                ),
            });
        }
        Ok(DeviceState::Fs(FsState {
            acked: self.acked_features,
            queues: self.active.as_ref().map(|a| {
                a.queues
                    .iter()
                    .map(|q| QueueState::from(q.state()))
                    .collect()
            }),
        }))
    }

    fn restore(
        &mut self,
        state: &DeviceState,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), StateError> {
        let DeviceState::Fs(s) = state else {
            return Err(StateError::Mismatch(
                "a virtio-fs slot holds another device's state".into(),
            ));
        };
        if s.acked & !self.features() != 0 {
            return Err(StateError::Mismatch(format!(
                "virtio-fs features {:#x} beyond the device's",
                s.acked
            )));
        }
        self.acked_features = s.acked;
        self.active = None;
        let Some(saved) = &s.queues else {
            return Ok(());
        };
        if saved.len() != QUEUE_SIZES.len() {
            return Err(StateError::Mismatch(format!(
                "virtio-fs with {} queues saved",
                saved.len()
            )));
        }
        let queues = saved
            .iter()
            .zip(QUEUE_SIZES)
            .enumerate()
            .map(|(index, (q, max))| {
                if q.max_size != max {
                    return Err(StateError::Queue {
                        index,
                        reason: format!("maximum size {}, not {max}", q.max_size),
                    });
                }
                q.to_queue().map_err(|e| StateError::Queue {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }
}
