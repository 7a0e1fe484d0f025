//! The QEMU engine: a `qemu-system-x86_64 -M microvm` command line for our guest, and the choice of
//! accelerator.
//!
//! Devices: the kernel log on the 8250 serial port (never mixed with program output); a virtio-serial
//! controller with named ports (`sandbox.control`, `sandbox.stdin`, `sandbox.stdout`, `sandbox.stderr`)
//! whose QEMU ends are connected sockets handed to QEMU as descriptors; one virtio-9p device per shared directory (QEMU's own
//! server; read-only shares with `readonly=on`); an i8042 so that the guest's reboot ends the VM
//! (`reboot=k` and `-no-reboot`).

use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use std::time::Duration;

use super::cmdline;
use super::error::VmError;
use super::hypervisor::{Hypervisor, Invocation, Request};
use super::launch::{guest_files, socket_pair};
use super::snapshot_cache::{GuestKey, Plan, Session};
use crate::outcome::VmInfo;
use crate::protocol::ShareFs;
use crate::vmm::{KvmFlavour, KvmReport};

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulator.
    Tcg,
}

impl Accel {
    /// The name used in verdicts: "kvm" or "tcg".
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Picks the accelerator: hardware KVM when usable, TCG otherwise and on PVM hosts, with the reason.
pub fn choose_accel(kvm: &KvmReport) -> (Accel, String) {
    match (kvm.usable, kvm.flavour) {
        (true, KvmFlavour::Hardware) => (Accel::Kvm, "hardware KVM is usable".into()),
        (true, KvmFlavour::Pvm) => (
            Accel::Tcg,
            "/dev/kvm is kvm_pvm (software, no VT-x/SVM): TCG boots our guest about 35x faster here".into(),
        ),
        (true, _) => (Accel::Kvm, "/dev/kvm is usable".into()),
        (false, _) => (
            Accel::Tcg,
            format!(
                "no usable KVM ({}): software emulation",
                kvm.reason.as_deref().unwrap_or("no /dev/kvm")
            ),
        ),
    }
}

/// A directory shared with the guest over virtio-9p.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The mount tag the guest mounts.
    pub tag: String,
    /// The directory on the host (as QEMU sees it).
    pub path: PathBuf,
    /// Refused writes, enforced by QEMU on the host side.
    pub readonly: bool,
}

/// A virtio-serial port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The name the guest sees under /dev/virtio-ports/.
    pub name: &'static str,
    /// The descriptor number, in QEMU's process, of a connected socket whose other end the host holds
    /// (passed, never reopened by path, so QEMU needs no access to any file for it).
    pub fd: RawFd,
}

/// Everything one QEMU run needs.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The guest kernel (PVH vmlinux).
    pub kernel: PathBuf,
    /// The uncompressed initramfs with the agent.
    pub initramfs: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// `/dev/kvm` is kvm_pvm: with [`Accel::Kvm`], QEMU's `-cpu host` aborts there (it cannot set
    /// IA32_ARCH_CAPABILITIES), so the vCPU gets `host,-arch-capabilities` (the CPUID KVM supports, as our own
    /// VMM passes), and the guest gets the PVM boot options ([`cmdline::PVM_CMDLINE`]).
    pub pvm: bool,
    /// Extra kernel command line options.
    pub cmdline: String,
    /// Shared directories.
    pub shares: Vec<Share>,
    /// virtio-serial ports.
    pub ports: Vec<Port>,
    /// Descriptor number (in QEMU's process) of the connected socket the serial console (kernel log) goes to.
    pub console_fd: RawFd,
    /// Descriptor number (in QEMU's process) of the connected stream socket to passt: the guest gets a
    /// virtio-net device whose frames go there (`-netdev stream`, length-prefixed frames, passt's protocol).
    pub net_fd: Option<RawFd>,
    /// Descriptor number (in QEMU's process) of the connected socket QEMU's machine protocol (QMP) is served
    /// on: the snapshot channel of a VM that is saved or restored ([`super::snapshot_cache`]).
    pub qmp_fd: Option<RawFd>,
    /// Descriptor number (in QEMU's process) of the snapshot file to restore the machine from, instead of
    /// booting it (`-incoming fd:N`; the guest waits, paused, for the host's `cont`).
    pub incoming_fd: Option<RawFd>,
}

impl Machine {
    /// The guest kernel's command line. The ports are announced, so the agent waits for each of them (else a
    /// run on a starved guest could start before its stdout port is named, and its output would go to the
    /// console).
    pub fn kernel_cmdline(&self) -> String {
        cmdline::kernel_cmdline_with_ports(
            self.accel == Accel::Kvm,
            self.pvm,
            &self.cmdline,
            self.ports.iter().map(|p| p.name),
        )
    }

    /// The QEMU arguments (after the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        push("-M".into());
        push("microvm,acpi=off,pit=on,pic=on,rtc=on".into());
        push("-accel".into());
        push(self.accel.name().into());
        push("-cpu".into());
        push(
            if self.accel == Accel::Kvm && self.pvm {
                "host,-arch-capabilities"
            } else if self.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            }
            .into(),
        );
        push("-m".into());
        push(format!("{}M", self.memory_mib));
        push("-smp".into());
        push(self.cpus.to_string());
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-display",
            "none",
        ] {
            push(s.into());
        }
        push("-device".into());
        push("i8042".into());
        push("-chardev".into());
        push(format!("socket,id=console,fd={}", self.console_fd));
        push("-serial".into());
        push("chardev:console".into());
        push("-kernel".into());
        push(path_arg(&self.kernel));
        push("-initrd".into());
        push(path_arg(&self.initramfs));
        push("-append".into());
        push(self.kernel_cmdline());
        if !self.ports.is_empty() {
            push("-device".into());
            push("virtio-serial-device,max_ports=8".into());
        }
        for (i, p) in self.ports.iter().enumerate() {
            push("-chardev".into());
            push(format!("socket,id=port{i},fd={}", p.fd));
            push("-device".into());
            push(format!("virtserialport,chardev=port{i},name={}", p.name));
        }
        if let Some(fd) = self.net_fd {
            push("-netdev".into());
            push(format!(
                "stream,id=net0,server=off,addr.type=fd,addr.str={fd}"
            ));
            push("-device".into());
            // No link-status feature: the link is up from the start (passt holds the socket's other end
            // before QEMU starts), so the guest's gratuitous ARP when eth0 comes up is sent, not dropped
            // while the driver waits for a status update; passt learns the guest's MAC address from it.
            // The MAC address our own VMM gives its guest: the same guest on either engine.
            let mac = crate::vmm::process::GUEST_MAC
                .map(|b| format!("{b:02x}"))
                .join(":");
            push(format!(
                "virtio-net-device,netdev=net0,status=off,mac={mac}"
            ));
        }
        for (i, s) in self.shares.iter().enumerate() {
            push("-fsdev".into());
            push(format!(
                "local,id=fs{i},path={},security_model=none{}",
                escape_opt(&s.path),
                if s.readonly { ",readonly=on" } else { "" }
            ));
            push("-device".into());
            push(format!("virtio-9p-device,fsdev=fs{i},mount_tag={}", s.tag));
        }
        if let Some(fd) = self.qmp_fd {
            push("-chardev".into());
            push(format!("socket,id=qmp,fd={fd}"));
            push("-mon".into());
            push("chardev=qmp,mode=control".into());
        }
        if let Some(fd) = self.incoming_fd {
            push("-incoming".into());
            push(format!("fd:{fd}"));
        }
        a
    }
}

/// How long a guest may take from QEMU's start to the agent's READY line.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// The QEMU engine.
#[derive(Debug)]
pub(crate) struct Qemu;

impl Hypervisor for Qemu {
    fn share_fs(&self) -> ShareFs {
        ShareFs::NineP
    }

    fn boot_limit(&self) -> Duration {
        BOOT_LIMIT
    }

    fn max_shares(&self) -> Option<usize> {
        None
    }

    fn snapshots(&self) -> bool {
        true
    }

    fn invocation(&self, request: &Request<'_>) -> Result<Invocation, VmError> {
        let qemu_bin = find_qemu().ok_or(VmError::NoQemu)?;
        let (kernel, _agent, initrd) = guest_files()?;
        let (accel, accel_reason) = choose_accel(&crate::vmm::probe_kvm());
        let mut machine = Machine {
            kernel: kernel.clone(),
            initramfs: initrd.clone(),
            memory_mib: request.memory_mib,
            cpus: request.cpus,
            accel,
            // `choose_accel` never picks KVM on kvm_pvm.
            pvm: false,
            cmdline: String::new(),
            shares: request.shares.to_vec(),
            ports: request
                .ports
                .iter()
                .map(|&(name, fd)| Port { name, fd })
                .collect(),
            console_fd: request.console_fd,
            net_fd: request.net_fd,
            qmp_fd: None,
            incoming_fd: None,
        };
        let mut fds = Vec::new();
        let snapshot = match request.cache {
            Some(dir) => {
                let cmdline = machine.kernel_cmdline();
                let identity = qemu_identity(&qemu_bin, accel);
                let key = GuestKey::of("qemu", &identity, &kernel, &initrd, request, &cmdline);
                snapshot_fds(dir, &key, &mut fds)?
            }
            None => None,
        };
        machine.qmp_fd = snapshot.is_some().then_some(QMP_FD);
        machine.incoming_fd = snapshot
            .as_ref()
            .is_some_and(Session::restores)
            .then_some(INCOMING_FD);
        let args = move |kernel: &Path, initrd: &Path| {
            let mut m = machine.clone();
            m.kernel = kernel.to_path_buf();
            m.initramfs = initrd.to_path_buf();
            m.args()
        };
        Ok(Invocation {
            program: qemu_bin,
            program_at: None,
            system_view: true,
            kvm_device: accel == Accel::Kvm,
            kernel,
            initramfs: initrd,
            shares: request.shares.to_vec(),
            fds,
            args: Box::new(args),
            plain_files: [8, 9],
            info: VmInfo {
                engine: "qemu".into(),
                accelerator: accel.name().into(),
                accelerator_reason: accel_reason,
                ..VmInfo::default()
            },
            snapshot,
        })
    }
}

/// QEMU's monitor socket and the snapshot file to restore from, as descriptors of the QEMU process (3-10 are
/// the console, the ports, the kernel, the initramfs and the network).
const QMP_FD: RawFd = 11;
const INCOMING_FD: RawFd = 12;

/// Which QEMU runs the guest, for the snapshot key: its binary (path, size and modification time: another
/// version may not load this one's snapshots) and accelerator.
fn qemu_identity(bin: &Path, accel: Accel) -> String {
    let (len, modified) = std::fs::metadata(bin)
        .map(|m| (m.len(), m.modified().ok()))
        .unwrap_or((0, None));
    format!("{} {len} {modified:?} {}", bin.display(), accel.name())
}

/// The snapshot plan for this guest, and its descriptors for QEMU (the QMP socket; the file when it restores;
/// a save hands QEMU the file later, with `getfd`); none when the cache cannot be used (the VM then boots).
fn snapshot_fds(
    dir: &Path,
    key: &GuestKey<'_>,
    fds: &mut Vec<(OwnedFd, RawFd)>,
) -> Result<Option<Session>, VmError> {
    let Some(plan) = Plan::for_guest(dir, key) else {
        return Ok(None);
    };
    if plan.restores() {
        fds.push((plan.dup_file()?, INCOMING_FD));
    }
    let (host, qemu) = socket_pair()?;
    fds.push((qemu, QMP_FD));
    Ok(Some(Session::qmp(host, plan)))
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// QEMU option values escape a comma by doubling it.
fn escape_opt(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// `qemu-system-x86_64`: what [`set_assets`](super::set_assets) set, else `$SANDBOX_QEMU`, else the `PATH`.
pub fn find_qemu() -> Option<PathBuf> {
    super::assets::locate_qemu().path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::cmdline::{BASE_CMDLINE, INIT_ARGS, PVM_CMDLINE, TCG_CMDLINE};

    fn machine() -> Machine {
        Machine {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/init.cpio".into(),
            memory_mib: 256,
            cpus: 1,
            accel: Accel::Tcg,
            pvm: false,
            cmdline: String::new(),
            shares: vec![Share {
                tag: "s0".into(),
                path: "/data,x".into(),
                readonly: true,
            }],
            ports: vec![
                Port {
                    name: "sandbox.control",
                    fd: 5,
                },
                Port {
                    name: "sandbox.stdout",
                    fd: 6,
                },
            ],
            console_fd: 4,
            net_fd: None,
            qmp_fd: None,
            incoming_fd: None,
        }
    }

    #[test]
    fn command_line() {
        let args: Vec<String> = machine()
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-accel tcg",
            "-cpu max",
            "-m 256M",
            "-no-reboot",
            "-device i8042",
            "-kernel /k/vmlinux",
            "-initrd /k/init.cpio",
            "socket,id=port0,fd=5",
            "virtserialport,chardev=port0,name=sandbox.control",
            "socket,id=port1,fd=6",
            "local,id=fs0,path=/data,,x,security_model=none,readonly=on",
            "virtio-9p-device,fsdev=fs0,mount_tag=s0",
            "socket,id=console,fd=4",
        ] {
            assert!(joined.contains(want), "{want:?} missing in {joined}");
        }
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        let init = INIT_ARGS;
        let ports = "sandbox.ports=sandbox.control,sandbox.stdout";
        assert_eq!(
            append,
            &format!("{BASE_CMDLINE} {TCG_CMDLINE} {ports} {init}")
        );
    }

    #[test]
    fn kvm_on_pvm_gets_a_cpu_model_that_starts_and_the_pvm_boot_options() {
        let args = |accel, pvm| -> Vec<String> {
            Machine {
                accel,
                pvm,
                ..machine()
            }
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
        };
        let after =
            |a: &[String], flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        let pvm = args(Accel::Kvm, true);
        assert_eq!(after(&pvm, "-cpu"), "host,-arch-capabilities");
        let init = INIT_ARGS;
        let ports = "sandbox.ports=sandbox.control,sandbox.stdout";
        let pvm_options = format!("{PVM_CMDLINE} {ports} {init}");
        assert!(after(&pvm, "-append").ends_with(&pvm_options));
        let hw = args(Accel::Kvm, false);
        assert_eq!(after(&hw, "-cpu"), "host");
        assert_eq!(
            after(&hw, "-append"),
            format!("{BASE_CMDLINE} {ports} {init}")
        );
        // Under TCG the PVM options are never needed.
        assert_eq!(
            after(&args(Accel::Tcg, true), "-append"),
            format!("{BASE_CMDLINE} {TCG_CMDLINE} {ports} {init}")
        );
    }

    #[test]
    fn accelerator_choice() {
        let r = |usable, flavour| KvmReport {
            usable,
            flavour,
            reason: None,
        };
        assert_eq!(choose_accel(&r(true, KvmFlavour::Hardware)).0, Accel::Kvm);
        assert_eq!(choose_accel(&r(true, KvmFlavour::Pvm)).0, Accel::Tcg);
        assert!(choose_accel(&r(true, KvmFlavour::Pvm)).1.contains("pvm"));
        assert_eq!(choose_accel(&r(false, KvmFlavour::Unknown)).0, Accel::Tcg);
    }
}
