//! One VM from start to end, in the order of a build: KVM → VM with in-kernel irqchip and PIT → guest RAM
//! → kernel, command line, initramfs, boot information and MP table → devices on the buses → vCPU → run on its own
//! thread under a host-side deadline.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::KvmFlavour;
use super::VmmError;
use super::boot::{self, Entry};
use super::bus::Bus;
use super::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use super::devices::serial::{Console, SERIAL_BASE, SERIAL_IRQ, SERIAL_LEN, SerialPort};
use super::regs::BootMode;
use super::snapshot::{self, SnapshotOptions};
use super::vcpu::{self, ExitCounts, GuestExit, VcpuError};
use super::virtio::VirtioDevice;
use super::virtio::mmio::{self, MmioTransport};
use super::{layout, memory};

/// Where KVM may put the three pages of the TSS it needs on Intel (just below the BIOS area, in the MMIO
/// hole, never RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// How long the host keeps interrupting a vCPU that does not notice its stop request.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to boot.
pub struct VmConfig {
    /// The guest kernel: an ELF `vmlinux` (PVH note preferred).
    pub kernel: PathBuf,
    /// The initramfs (uncompressed cpio), possibly empty.
    pub initramfs: boot::Initramfs,
    /// The full kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The VM is stopped after this long (a guest that never ends).
    pub timeout: Duration,
    /// Where the serial console (the kernel log) goes.
    pub console: Console,
    /// Virtio devices, each on its own virtio-mmio slot ([`mmio::slot`]) in this order; their
    /// `virtio_mmio.device=` options are added to the command line.
    pub devices: Vec<Box<dyn VirtioDevice>>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initramfs_len", &self.initramfs.len().ok())
            .field("cmdline", &self.cmdline)
            .field("memory_mib", &self.memory_mib)
            .field("timeout", &self.timeout)
            .field(
                "devices",
                &self
                    .devices
                    .iter()
                    .map(|d| d.device_type())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// How a VM ended by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmReport {
    /// The guest's way out.
    pub exit: GuestExit,
    /// How the kernel was entered.
    pub boot_mode: BootMode,
    /// The KVM underneath: hardware, PVM (software, slow) or unknown ([`KvmFlavour::detect`]).
    pub kvm_flavour: KvmFlavour,
    /// From the start of the build to the end of the guest.
    pub elapsed: Duration,
    /// Port I/O exits.
    pub pio_exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
    /// Accesses that reached no device.
    pub unhandled_exits: u64,
}

/// Boots `config` and runs it to its end; every way the guest can fail is an error value.
pub fn run(config: VmConfig) -> Result<VmReport, VmmError> {
    run_with(Kvm::new().map_err(VmmError::OpenKvm)?, config)
}

/// [`run`] on an already opened KVM (e.g. `/dev/kvm` opened by a more privileged parent and passed down).
pub fn run_with(kvm: Kvm, config: VmConfig) -> Result<VmReport, VmmError> {
    run_with_snapshots(kvm, config, SnapshotOptions::default())
}

/// [`run_with`], restored from a snapshot instead of booted when `snapshots.restore` is given, and serving
/// snapshot requests on `snapshots.channel` ([`snapshot::serve`]).
pub fn run_with_snapshots(
    kvm: Kvm,
    config: VmConfig,
    snapshots: SnapshotOptions,
) -> Result<VmReport, VmmError> {
    let VmConfig {
        kernel,
        mut initramfs,
        cmdline,
        memory_mib,
        timeout,
        console,
        devices,
    } = config;
    let full = with_virtio_devices(&cmdline, devices.len())?;
    let identity = snapshot::identity(memory_mib, &full, &devices);
    let cmdline = boot::cmdline(&full)?;
    let snapshots = Some((snapshots, identity));
    execute(
        kvm,
        memory_mib,
        timeout,
        console,
        devices,
        snapshots,
        // Moved in, so the initramfs (bytes, or the file read straight into guest RAM) is freed once loaded.
        move |mem| Ok(boot::load(mem, &kernel, &cmdline, &mut initramfs)?),
    )
}

/// `cmdline` with the `virtio_mmio.device=` options of `count` devices, before any `--` (what follows
/// it goes to init).
fn with_virtio_devices(cmdline: &str, count: usize) -> Result<String, VmmError> {
    let mut options = Vec::new();
    for i in 0..count {
        let (addr, irq) = mmio::slot(i).ok_or(VmmError::TooManyDevices(count))?;
        options.push(mmio::cmdline_fragment(addr, irq));
    }
    let options = options.join(" ");
    let cmdline = cmdline.trim();
    if options.is_empty() {
        return Ok(cmdline.to_string());
    }
    Ok(match cmdline.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel} {options} -- {init}"),
        None if cmdline.is_empty() => options,
        None => format!("{cmdline} {options}"),
    })
}

/// Where [`run_code`] puts the code and starts it.
pub const CODE_START: u64 = layout::HIMEM_START;

/// Runs raw code in a VM with the same devices, entered at [`CODE_START`] in the CPU state of `mode`
/// (PVH: flat 32-bit protected mode, paging off; Long: 64-bit on the boot identity map) with an empty IDT:
/// a way to check the boot CPU state, and how the VMM handles what a hostile guest can do (garbage I/O,
/// triple faults, endless loops), without booting a kernel.
pub fn run_code(
    code: &[u8],
    mode: BootMode,
    memory_mib: u64,
    timeout: Duration,
    console: Console,
) -> Result<VmReport, VmmError> {
    run_code_with_devices(code, mode, memory_mib, timeout, console, Vec::new())
}

/// [`run_code`] with virtio devices on their slots ([`mmio::slot`]): a way to drive the devices' transport
/// and queues from hostile guest code.
pub fn run_code_with_devices(
    code: &[u8],
    mode: BootMode,
    memory_mib: u64,
    timeout: Duration,
    console: Console,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<VmReport, VmmError> {
    let snapshots = SnapshotOptions::default();
    run_code_with_snapshots(code, mode, memory_mib, timeout, console, devices, snapshots)
}

/// [`run_code_with_devices`] with snapshots ([`run_with_snapshots`]): a way to check save and restore
/// without booting a kernel.
pub fn run_code_with_snapshots(
    code: &[u8],
    mode: BootMode,
    memory_mib: u64,
    timeout: Duration,
    console: Console,
    devices: Vec<Box<dyn VirtioDevice>>,
    snapshots: SnapshotOptions,
) -> Result<VmReport, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
    let snapshots = Some((snapshots, snapshot::identity(memory_mib, "", &devices)));
    execute(
        kvm,
        memory_mib,
        timeout,
        console,
        devices,
        snapshots,
        |mem| {
            mem.write_slice(code, GuestAddress(CODE_START))
                .map_err(|e| boot::BootError::Write {
                    what: "code",
                    addr: CODE_START,
                    reason: e.to_string(),
                })?;
            Ok(Entry {
                mode,
                rip: CODE_START,
                boot_info: 0,
            })
        },
    )
}

/// Builds the VM, lets `load` fill guest memory, and runs the vCPU until the guest ends or `timeout`.
fn execute(
    kvm: Kvm,
    memory_mib: u64,
    timeout: Duration,
    console: Console,
    devices: Vec<Box<dyn VirtioDevice>>,
    snapshots: Option<(SnapshotOptions, snapshot::state::Identity)>,
    load: impl FnOnce(&memory::GuestMemoryMmap) -> Result<Entry, VmmError>,
) -> Result<VmReport, VmmError> {
    let started = Instant::now();
    let (mut snapshots, restore) = snapshot::prepare(snapshots)?;
    let missing = missing_capabilities(|c| kvm.check_extension(c));
    if !missing.is_empty() {
        return Err(VmmError::MissingCapabilities(missing));
    }
    let setup = |what| move |source| VmmError::Kvm { what, source };
    let vm = Arc::new(kvm.create_vm().map_err(setup("KVM_CREATE_VM"))?);
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(setup("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(setup("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(setup("KVM_CREATE_PIT2"))?;

    let (mem, entry) = match &restore {
        // The MP table, like all of guest RAM, comes from the snapshot.
        Some(r) => {
            drop(load);
            r.memory_and_vm(&vm)?
        }
        None => {
            // An absurd size saturates and is refused by the layout (not a multiple of the page size).
            let mem = memory::create(memory_mib.saturating_mul(1 << 20))?;
            memory::register(&vm, &mem)?;
            let entry = load(&mem)?;
            super::mptable::write(&mem, 1)?;
            (mem, entry)
        }
    };

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(setup("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(match &restore {
        Some(r) => r.serial(serial_irq, console)?,
        None => SerialPort::new(serial_irq, console),
    }));
    let mut pio = Bus::new();
    pio.insert(SERIAL_BASE, SERIAL_LEN, serial.clone())?;
    pio.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new())))?;
    let mut mmio = Bus::new();
    let mut transports = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        let (addr, irq) = mmio::slot(i).ok_or(VmmError::TooManyDevices(i + 1))?;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&irqfd, irq).map_err(setup("KVM_IRQFD"))?;
        let mut transport = MmioTransport::new(device, mem.clone(), irqfd)?;
        if let Some(r) = &restore {
            r.transport(i, &mut transport)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        transports.push(transport.clone());
        mmio.insert(addr, layout::VIRTIO_MMIO_SIZE, transport)?;
    }

    let mut vcpu = match &restore {
        Some(r) => r.vcpu(&kvm, &vm, 0)?,
        None => vcpu::create(&kvm, &vm, &mem, 0, 1, &entry)?,
    };
    let gate = Arc::new(snapshot::gate(&kvm, &snapshots)?);

    install_kick_handler()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(ExitCounts::default());
    let (tx, rx) = mpsc::channel();
    let thread = {
        let (stop, counts) = (stop.clone(), counts.clone());
        // The thread keeps the guest memory mapped for as long as it may run the guest.
        let (mem, gate) = (mem.clone(), gate.clone());
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let registered = gate.register();
                let r = vcpu::run(&mut vcpu, &pio, &mmio, &stop, &counts, &gate);
                drop(registered);
                drop(mem);
                let _ = tx.send(r);
            })
            .map_err(VmmError::Thread)?
    };
    // The VM's descriptor must stay open until the guest ends, whether or not a snapshot thread takes a
    // clone: closing the last one releases the VM file, and KVM then deactivates every irqfd (the serial
    // port's and the virtio devices' interrupts stop: the guest waits forever).
    let live = snapshot::Live {
        vm: vm.clone(),
        mem,
        serial,
        transports,
        gate,
        boot_mode: entry.mode,
        kick: kick_signal(),
    };
    snapshot::start_serving(snapshots.take(), live, restore.is_some())?;

    let deadline = started + timeout;
    let result = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Disconnected) => return Err(VmmError::VcpuPanicked),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            stop.store(true, Ordering::Release);
            let grace = Instant::now() + STOP_GRACE;
            // The stop flag is read only when KVM_RUN returns: interrupt it until the thread answers (a
            // signal that arrives just before KVM_RUN starts is lost, hence the repetition).
            loop {
                let _ = thread.kill(kick_signal());
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(Err(VcpuError::Stopped)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break;
                    }
                    Ok(r) => return finish(r, &counts, entry.mode, started),
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > grace => {
                        return Err(VmmError::Unstoppable(timeout));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            let _ = thread.join();
            return Err(VmmError::Timeout(timeout));
        }
    };
    let _ = thread.join();
    finish(result, &counts, entry.mode, started)
}

fn finish(
    result: Result<GuestExit, VcpuError>,
    counts: &ExitCounts,
    boot_mode: BootMode,
    started: Instant,
) -> Result<VmReport, VmmError> {
    let exit = result?;
    Ok(VmReport {
        exit,
        boot_mode,
        kvm_flavour: KvmFlavour::detect(),
        elapsed: started.elapsed(),
        pio_exits: counts.pio.load(Ordering::Relaxed),
        mmio_exits: counts.mmio.load(Ordering::Relaxed),
        unhandled_exits: counts.unhandled.load(Ordering::Relaxed),
    })
}

/// The KVM capabilities this VMM relies on, by name.
const REQUIRED_CAPABILITIES: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// The names of the required capabilities that `has` denies.
fn missing_capabilities(has: impl Fn(Cap) -> bool) -> Vec<&'static str> {
    REQUIRED_CAPABILITIES
        .iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, name)| *name)
        .collect()
}

/// The real-time signal that interrupts KVM_RUN on a vCPU thread.
fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal once per process: its only effect is that KVM_RUN
/// returns EINTR.
fn install_kick_handler() -> Result<(), VmmError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(|errno| VmmError::Signal(std::io::Error::from_raw_os_error(errno)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_devices_are_declared_on_the_command_line() {
        assert_eq!(with_virtio_devices(" quiet ", 0).unwrap(), "quiet");
        assert_eq!(
            with_virtio_devices("quiet", 2).unwrap(),
            "quiet virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(
            with_virtio_devices("quiet -- init arg", 1).unwrap(),
            "quiet virtio_mmio.device=4K@0xd0000000:5 -- init arg"
        );
        assert_eq!(
            with_virtio_devices("", 1).unwrap(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert!(matches!(
            with_virtio_devices("", layout::VIRTIO_IRQS.len() + 1),
            Err(VmmError::TooManyDevices(n)) if n == layout::VIRTIO_IRQS.len() + 1
        ));
    }

    #[test]
    fn missing_capabilities_are_named() {
        assert!(missing_capabilities(|_| true).is_empty());
        assert_eq!(
            missing_capabilities(|c| !matches!(c, Cap::Irqfd | Cap::Pit2)),
            vec!["KVM_CAP_PIT2", "KVM_CAP_IRQFD"]
        );
        assert_eq!(
            missing_capabilities(|_| false).len(),
            REQUIRED_CAPABILITIES.len()
        );
    }
}
