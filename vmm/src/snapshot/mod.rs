//! Snapshot and restore of a running guest, so a VM need not boot: guest RAM, the vCPU (registers, FPU,
//! MSRs, LAPIC, events), the in-kernel PIC/IOAPIC/PIT and clock, and our devices (UART, virtio-mmio
//! transports, console ports, virtio-fs before its first request).
//!
//! Saving ([`save`]): the host asks on the VMM's snapshot channel ([`serve`]); the vCPU thread is kicked
//! out of KVM_RUN and parks at the [`PauseGate`] after reading its own state (KVM_RUN returns EINTR only
//! once a pending port or MMIO read has been completed, so no I/O is half done); the devices stop their
//! threads; RAM and state go to the file ([`format`](mod@format)); then everything resumes and the guest runs
//! on, unaware.
//!
//! Restoring ([`Restore`]): a new VMM process checks the file (header, checksums, sizes, identity of the
//! build), maps guest RAM from it `MAP_PRIVATE` (copy-on-write: only pages the guest touches are read, and
//! the file never changes), sets the in-kernel devices and the vCPU, rebuilds the devices around its own,
//! fresh host sockets, and lets the vCPU run where it stopped.
//!
//! The guest's clock moves on by the real time between save and restore when KVM reports it
//! (`KVM_CLOCK_REALTIME`), so the guest's date is right. A virtio-fs share with a FUSE session cannot be
//! saved (its open files live in the host process): save before the guest mounts its shares.

pub mod cpu;
pub mod format;
mod gate;
pub mod state;

pub use gate::{PauseGate, Registration};

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

use super::boot::Entry;
use super::devices::serial::{Console, SerialPort};
use super::memory::{self, GuestMemoryMmap};
use super::regs::BootMode;
use super::virtio::mmio::MmioTransport;
use super::virtio::{StateError, VirtioDevice};
use super::{VmmError, layout};
use format::{FormatError, Header, PAGE};
use state::{Identity, Region, Snapshot, VcpuState};
use vmm_sys_util::eventfd::EventFd;

/// How long a save waits for the vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of saving or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file is not a usable snapshot.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The state section is not valid JSON of this version's state.
    #[error("snapshot state is invalid: {0} (delete the file)")]
    State(String),
    /// The values make no sense (counts, sizes).
    #[error("snapshot state is invalid: {0} (delete the file)")]
    Invalid(String),
    /// The snapshot is of a differently built VM.
    #[error("the snapshot is of another VM ({0}): it cannot be restored into this one")]
    Identity(String),
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer MSRs than saved.
    #[error("KVM_SET_MSRS set {set} of {total} MSRs, refusing MSR {index:#x}")]
    Msr {
        /// The first MSR refused.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        total: usize,
    },
    /// A device could not be saved or restored.
    #[error("device {slot}: {source}")]
    Device {
        /// The virtio-mmio slot, or "serial".
        slot: String,
        /// Why.
        source: StateError,
    },
    /// Guest RAM could not be read, written or mapped.
    #[error("guest RAM: {0}")]
    Memory(String),
    /// The vCPU did not park in time, or is gone.
    #[error("the vCPU {0}")]
    Pause(&'static str),
}

/// What a VMM does with snapshots.
#[derive(Debug, Default)]
pub struct SnapshotOptions {
    /// Start from this snapshot file instead of booting.
    pub restore: Option<File>,
    /// The host's snapshot channel ([`serve`]).
    pub channel: Option<UnixStream>,
    /// Where a `save` request writes (an empty file, opened for writing).
    pub save_to: Option<File>,
}

/// The parts of a running VM a save needs.
pub struct Live {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The UART.
    pub serial: Arc<Mutex<SerialPort>>,
    /// The virtio-mmio slots in order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The vCPU's gate.
    pub gate: Arc<PauseGate>,
    /// How the guest kernel was entered at its boot.
    pub boot_mode: BootMode,
    /// The kick signal of the vCPU thread.
    pub kick: libc::c_int,
}

/// A VM's snapshot channel, with what a save needs besides the VM.
#[derive(Debug)]
pub struct Serving {
    channel: UnixStream,
    save_to: Option<File>,
    identity: Identity,
}

/// What a VM is, as far as a snapshot of it must match: RAM, command line (with the virtio-mmio slots),
/// the devices as the guest sees them, one vCPU.
pub fn identity(memory_mib: u64, cmdline: &str, devices: &[Box<dyn VirtioDevice>]) -> Identity {
    Identity {
        memory_mib,
        cmdline: cmdline.to_string(),
        devices: devices.iter().map(|d| d.describe()).collect(),
        vcpus: 1,
    }
}

/// Opens and checks the snapshot to restore, if any, and keeps the channel for [`start_serving`].
pub fn prepare(
    options: Option<(SnapshotOptions, Identity)>,
) -> Result<(Option<Serving>, Option<Restore>), SnapshotError> {
    let Some((options, identity)) = options else {
        return Ok((None, None));
    };
    let restore = options
        .restore
        .map(|f| Restore::open(f, &identity))
        .transpose()?;
    let serving = options.channel.map(|channel| Serving {
        channel,
        save_to: options.save_to,
        identity,
    });
    Ok((serving, restore))
}

/// The vCPU's gate: one that can save when a save may be asked for, else an inert one.
pub fn gate(kvm: &Kvm, serving: &Option<Serving>) -> Result<PauseGate, SnapshotError> {
    match serving {
        Some(s) if s.save_to.is_some() => PauseGate::new(kvm),
        _ => Ok(PauseGate::default()),
    }
}

/// Serves the snapshot channel, if any, on its own thread.
pub fn start_serving(
    serving: Option<Serving>,
    live: Live,
    restored: bool,
) -> Result<(), SnapshotError> {
    let Some(serving) = serving else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || serve(serving, live, restored))
        .map_err(|e| SnapshotError::Memory(format!("cannot start the snapshot thread: {e}")))?;
    Ok(())
}

/// What a save wrote.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SaveReport {
    /// The file's length (guest RAM included, holes too).
    pub file_len: u64,
    /// Bytes of guest RAM actually written (non-zero pages).
    pub ram_written: u64,
    /// The state section's length.
    pub state_len: u64,
    /// How long the guest was paused, in milliseconds.
    pub paused_ms: u64,
    /// State KVM refused to give (not in the snapshot).
    pub refused: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Saves the running VM, built as `identity`, into `file` (empty, writable); the guest runs on afterwards.
pub fn save(live: &Live, identity: &Identity, file: &File) -> Result<SaveReport, SnapshotError> {
    let started = Instant::now();
    let (vcpu, refused) = live.gate.pause(live.kick, PAUSE_TIMEOUT)?;
    let result = save_paused(live, identity, vcpu, &refused, file);
    for t in &live.transports {
        lock(t).resume();
    }
    live.gate.resume();
    let (file_len, ram_written, state_len) = result?;
    Ok(SaveReport {
        file_len,
        ram_written,
        state_len,
        paused_ms: started.elapsed().as_millis() as u64,
        refused,
    })
}

fn save_paused(
    live: &Live,
    identity: &Identity,
    vcpu: VcpuState,
    refused: &[String],
    file: &File,
) -> Result<(u64, u64, u64), SnapshotError> {
    let vm = cpu::save_vm(&live.vm)?;
    let serial = lock(&live.serial).save();
    let mut transports = Vec::new();
    for (i, t) in live.transports.iter().enumerate() {
        transports.push(lock(t).save().map_err(|source| SnapshotError::Device {
            slot: format!("virtio-mmio slot {i}"),
            source,
        })?);
    }
    let mut regions = Vec::new();
    let mut offset = 0;
    for r in live.mem.iter() {
        regions.push(Region {
            guest: r.start_addr().0,
            len: r.len(),
            offset,
        });
        offset += r.len();
    }
    let snapshot = Snapshot {
        identity: identity.clone(),
        long_mode_entry: live.boot_mode == BootMode::Long,
        regions,
        vm,
        vcpus: vec![vcpu],
        serial,
        transports,
        refused: refused.to_vec(),
    };
    let json = serde_json::to_vec(&snapshot).map_err(|e| SnapshotError::State(e.to_string()))?;
    let header = format::write_head(file, &json, offset)?;
    let written = write_memory(&live.mem, &snapshot.regions, file, header.memory_offset)?;
    Ok((header.file_len().unwrap_or(0), written, json.len() as u64))
}

/// Writes guest RAM; all-zero pages are left as holes. Returns the bytes written.
fn write_memory(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    file: &File,
    base: u64,
) -> Result<u64, SnapshotError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for r in regions {
        let mut at = 0;
        while at < r.len {
            let n = CHUNK.min((r.len - at) as usize);
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, GuestAddress(r.guest + at))
                .map_err(|e| SnapshotError::Memory(format!("reading {:#x}: {e}", r.guest + at)))?;
            // Runs of non-zero pages, each written at once.
            let pages = n / PAGE as usize;
            let mut p = 0;
            while p < pages {
                let zero = |i: usize| {
                    chunk[i * PAGE as usize..(i + 1) * PAGE as usize]
                        .iter()
                        .all(|&b| b == 0)
                };
                if zero(p) {
                    p += 1;
                    continue;
                }
                let start = p;
                while p < pages && !zero(p) {
                    p += 1;
                }
                let bytes = &chunk[start * PAGE as usize..p * PAGE as usize];
                file.write_all_at(bytes, base + r.offset + at + (start as u64) * PAGE)
                    .map_err(|e| SnapshotError::Memory(format!("writing the snapshot: {e}")))?;
                written += bytes.len() as u64;
            }
            at += n as u64;
        }
    }
    Ok(written)
}

/// A snapshot file, checked and ready to be restored.
pub struct Restore {
    file: Arc<File>,
    header: Header,
    /// The state.
    pub snapshot: Snapshot,
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore")
            .field("header", &self.header)
            .field("identity", &self.snapshot.identity)
            .finish_non_exhaustive()
    }
}

impl Restore {
    /// Reads and checks `file` for a VM built as `identity`.
    pub fn open(file: File, identity: &Identity) -> Result<Restore, SnapshotError> {
        let (header, json) = format::read(&file)?;
        let snapshot: Snapshot =
            serde_json::from_slice(&json).map_err(|e| SnapshotError::State(e.to_string()))?;
        Self::check(&snapshot, &header, identity)?;
        Ok(Restore {
            file: Arc::new(file),
            header,
            snapshot,
        })
    }

    /// The state's values against the header, the layout and the VM to build.
    fn check(s: &Snapshot, header: &Header, identity: &Identity) -> Result<(), SnapshotError> {
        if s.identity != *identity {
            let mine = identity;
            let theirs = &s.identity;
            let what = if theirs.memory_mib != mine.memory_mib {
                format!("{} MiB of RAM, not {}", theirs.memory_mib, mine.memory_mib)
            } else if theirs.devices != mine.devices {
                format!("devices {:?}, not {:?}", theirs.devices, mine.devices)
            } else if theirs.cmdline != mine.cmdline {
                "another kernel command line".to_string()
            } else {
                format!("{} vCPUs, not {}", theirs.vcpus, mine.vcpus)
            };
            return Err(SnapshotError::Identity(what));
        }
        if s.transports.len() != identity.devices.len() {
            return Err(SnapshotError::Invalid(format!(
                "{} device states for {} devices",
                s.transports.len(),
                identity.devices.len()
            )));
        }
        if s.vcpus.len() != usize::from(identity.vcpus) {
            return Err(SnapshotError::Invalid(format!(
                "{} vCPU states for {} vCPUs",
                s.vcpus.len(),
                identity.vcpus
            )));
        }
        let layout = layout::ram_regions(identity.memory_mib.saturating_mul(1 << 20))
            .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let mut offset = 0;
        let mut expected = Vec::new();
        for (addr, len) in layout {
            expected.push(Region {
                guest: addr.0,
                len: len as u64,
                offset,
            });
            offset += len as u64;
        }
        if s.regions != expected || offset != header.memory_len {
            return Err(SnapshotError::Identity(
                "another guest memory layout (a snapshot of an older build?)".into(),
            ));
        }
        Ok(())
    }

    /// Guest RAM mapped from the file and given to `vm`, the in-kernel devices and clock set; the entry
    /// (for the report: the vCPU state is restored by [`Restore::vcpu`]).
    pub fn memory_and_vm(&self, vm: &VmFd) -> Result<(GuestMemoryMmap, Entry), VmmError> {
        let mem = self.map_memory()?;
        memory::register(vm, &mem)?;
        cpu::restore_vm(vm, &self.snapshot.vm)?;
        let mode = if self.snapshot.long_mode_entry {
            BootMode::Long
        } else {
            BootMode::Pvh
        };
        Ok((
            mem,
            Entry {
                mode,
                rip: 0,
                boot_info: 0,
            },
        ))
    }

    /// The UART in its saved state.
    pub fn serial(&self, irq: EventFd, console: Console) -> Result<SerialPort, SnapshotError> {
        SerialPort::restore(irq, console, &self.snapshot.serial).map_err(|e| {
            SnapshotError::Device {
                slot: "serial".into(),
                source: StateError::Mismatch(e),
            }
        })
    }

    /// Puts slot `index`'s saved state into its new transport.
    pub fn transport(&self, index: usize, t: &mut MmioTransport) -> Result<(), SnapshotError> {
        let saved = self.snapshot.transports.get(index).ok_or_else(|| {
            SnapshotError::Invalid(format!("no state for virtio-mmio slot {index}"))
        })?;
        t.restore(saved).map_err(|source| SnapshotError::Device {
            slot: format!("virtio-mmio slot {index}"),
            source,
        })
    }

    /// vCPU `index` in its saved state.
    pub fn vcpu(&self, kvm: &Kvm, vm: &VmFd, index: u8) -> Result<VcpuFd, SnapshotError> {
        let s = self
            .snapshot
            .vcpus
            .get(usize::from(index))
            .ok_or_else(|| SnapshotError::Invalid(format!("no state for vCPU {index}")))?;
        cpu::restore_vcpu(kvm, vm, index, s)
    }

    /// Guest RAM, mapped copy-on-write from the file.
    pub fn map_memory(&self) -> Result<GuestMemoryMmap, SnapshotError> {
        use vm_memory::FileOffset;
        use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
        let mut regions = Vec::new();
        for r in &self.snapshot.regions {
            let offset = self.header.memory_offset + r.offset;
            let mapping = MmapRegionBuilder::new(r.len as usize)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .with_file_offset(FileOffset::from_arc(self.file.clone(), offset))
                .build()
                .map_err(|e| {
                    SnapshotError::Memory(format!(
                        "mapping {} bytes at file offset {offset}: {e}",
                        r.len
                    ))
                })?;
            regions.push(
                GuestRegionMmap::new(mapping, GuestAddress(r.guest)).ok_or_else(|| {
                    SnapshotError::Memory(format!("region at {:#x} overflows", r.guest))
                })?,
            );
        }
        GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Memory(e.to_string()))
    }
}

/// Serves the host's snapshot requests until the channel closes: a line `save` writes a snapshot into the
/// file given for it and answers `saved {SaveReport JSON}` or `failed {reason}`. The first line sent is
/// `started` or, for a restored VM, `restored`.
pub fn serve(serving: Serving, live: Live, restored: bool) {
    let Serving {
        channel,
        mut save_to,
        identity,
    } = serving;
    let mut out = match channel.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let _ = writeln!(out, "{}", if restored { "restored" } else { "started" });
    for line in BufReader::new(channel).lines() {
        let Ok(line) = line else { return };
        let reply = match line.trim() {
            "save" => match save_to.take() {
                Some(file) => match save(&live, &identity, &file) {
                    Ok(r) => format!("saved {}", serde_json::to_string(&r).unwrap_or_default()),
                    Err(e) => format!("failed {e}"),
                },
                None => "failed no snapshot file was given (or it was used)".to_string(),
            },
            other => format!("failed unknown request {other:?}"),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
