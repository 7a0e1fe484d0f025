//! The builtin engine: our own VMM, the agent binary in its `vmm` role (`sandbox-init vmm`), on KVM.
//!
//! It is confined like QEMU ([`super::launch`]: a namespace sandbox that shows it only its binary, the
//! kernel, the initramfs and the shares; or a plain child under `no_new_privs` and seccomp), then confines
//! itself further (landlock, a seccomp allowlist). `/dev/kvm` is opened here, with the caller's rights, and
//! passed down (descriptor 8); so are the snapshot channel (11) and file (12) with a snapshot cache
//! directory ([`super::snapshot_cache`]): the VM is then restored from the cached snapshot of the same guest
//! when there is one, else booted with a file to save into, and [`Invocation::snapshot`] carries on from
//! there.

use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use super::error::VmError;
use super::hypervisor::{Hypervisor, Invocation, Request};
use super::launch::{guest_files, socket_pair};
use super::snapshot_cache::{GuestKey, Plan, Session};
use crate::outcome::VmInfo;
use crate::protocol::ShareFs;
use crate::vmm::process::{ProcessConfig, ShareConfig, SnapshotConfig};

/// How long a guest may take from the VMM's start to the agent's READY line on hardware KVM.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// The same on PVM (software KVM), where a boot takes minutes.
const PVM_BOOT_LIMIT: Duration = Duration::from_secs(420);

/// The most virtio devices our VMM places (one virtio-mmio slot per free I/O APIC pin).
const BUILTIN_MAX_DEVICES: usize = crate::vmm::layout::VIRTIO_IRQS.len();

/// Our own VMM.
#[derive(Debug)]
pub(crate) struct Builtin;

impl Hypervisor for Builtin {
    fn share_fs(&self) -> ShareFs {
        ShareFs::Virtiofs
    }

    fn boot_limit(&self) -> Duration {
        if crate::vmm::KvmFlavour::detect().is_pvm() {
            PVM_BOOT_LIMIT
        } else {
            BOOT_LIMIT
        }
    }

    fn max_shares(&self) -> Option<usize> {
        // One device is the console.
        Some(BUILTIN_MAX_DEVICES - 1)
    }

    fn snapshots(&self) -> bool {
        true
    }

    fn invocation(&self, request: &Request<'_>) -> Result<Invocation, VmError> {
        let kvm: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(VmError::NoKvm)?
            .into();
        let (kernel, agent, initrd) = guest_files()?;
        let pvm = crate::vmm::KvmFlavour::detect().is_pvm();
        let ports: Vec<(String, RawFd)> = request
            .ports
            .iter()
            .map(|&(n, fd)| (n.to_string(), fd))
            .collect();
        let mut fds = vec![(kvm, 8)];
        // The ports are announced: the agent waits for each of them.
        let cmdline = super::cmdline::kernel_cmdline_with_ports(
            true,
            pvm,
            "",
            ports.iter().map(|(n, _)| n.as_str()),
        );
        let (snapshot, snapshot_config) = match request.cache {
            Some(dir) => {
                let key = GuestKey::of("builtin", "", &kernel, &initrd, request, &cmdline);
                snapshot_fds(dir, &key, &mut fds)?
            }
            None => (None, None),
        };
        let config = ProcessConfig {
            kernel: kernel.clone(),
            initramfs: initrd.clone(),
            cmdline,
            memory_mib: request.memory_mib,
            timeout_secs: request.deadline.map_or(7 * 24 * 3600, |d| d.as_secs() + 1),
            kvm_fd: 8,
            console_fd: request.console_fd,
            ports,
            shares: request
                .shares
                .iter()
                .map(|s| ShareConfig {
                    tag: s.tag.clone(),
                    path: s.path.clone(),
                    readonly: s.readonly,
                })
                .collect(),
            net_fd: request.net_fd,
            snapshot: snapshot_config,
        };
        let args = move |kernel: &Path, initrd: &Path| {
            let mut c = config.clone();
            c.kernel = kernel.to_path_buf();
            c.initramfs = initrd.to_path_buf();
            let json = serde_json::to_string(&c).unwrap_or_default();
            vec![std::ffi::OsString::from("vmm"), json.into()]
        };
        Ok(Invocation {
            program: agent,
            program_at: Some("/sandbox-vmm"),
            system_view: false,
            // Opened here and passed down.
            kvm_device: false,
            kernel,
            initramfs: initrd,
            shares: request.shares.to_vec(),
            fds,
            args: Box::new(args),
            // 8 is /dev/kvm.
            plain_files: [9, 10],
            info: VmInfo {
                engine: "builtin".into(),
                accelerator: "kvm".into(),
                accelerator_reason: if pvm {
                    "our own VMM on KVM; this KVM is PVM (software, no VT-x/SVM): slow, and the guest gets the \
                     PVM boot options"
                        .into()
                } else {
                    "our own VMM on hardware KVM".into()
                },
                ..VmInfo::default()
            },
            snapshot,
        })
    }
}

/// The snapshot plan for this guest, and its descriptors for the VMM (channel 11, file 12); none when
/// the cache cannot be used (the VM then just boots).
fn snapshot_fds(
    dir: &Path,
    key: &GuestKey<'_>,
    fds: &mut Vec<(OwnedFd, RawFd)>,
) -> Result<(Option<Session>, Option<SnapshotConfig>), VmError> {
    let Some(plan) = Plan::for_guest(dir, key) else {
        return Ok((None, None));
    };
    let file = plan.dup_file()?;
    let (host, vmm) = socket_pair()?;
    fds.push((vmm, 11));
    fds.push((file, 12));
    let config = SnapshotConfig {
        channel_fd: 11,
        file_fd: 12,
        restore: plan.restores(),
    };
    Ok((Some(Session::new(host, plan)), Some(config)))
}
