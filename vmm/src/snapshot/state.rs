//! What a snapshot holds besides guest RAM, as serde types: the VM's identity (to refuse a restore into a
//! differently built VM), the in-kernel devices (PIC, IOAPIC, PIT, clock), each vCPU, and our devices.
//!
//! KVM's own structures travel as their raw bytes ([`Raw`], through kvm-bindings' `serde` feature), with
//! their exact size checked on the way back in.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A KVM structure kept as its bytes; reading it back refuses any other length.
#[derive(Clone, Copy)]
pub struct Raw<T>(pub T);

impl<T> std::fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: for<'a> Deserialize<'a>> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        let want = std::mem::size_of::<T>();
        if bytes.len() != want {
            return Err(serde::de::Error::custom(format!(
                "{}: {} bytes, {want} expected",
                std::any::type_name::<T>(),
                bytes.len()
            )));
        }
        let de = serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(&bytes);
        T::deserialize(de)
            .map(Raw)
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// Everything of a snapshot except guest RAM.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// How the VM was built: a restore into another build is refused.
    pub identity: Identity,
    /// The kernel was entered in 64-bit mode (else PVH), for the report.
    pub long_mode_entry: bool,
    /// Guest RAM: where each region is in the guest and in the file's RAM section.
    pub regions: Vec<Region>,
    /// The in-kernel devices and the clock.
    pub vm: VmState,
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// The 8250 UART.
    pub serial: SerialState,
    /// The virtio-mmio slots, in slot order.
    pub transports: Vec<TransportState>,
    /// State KVM refused to give (ioctl and error), for the report; what was refused is not restored.
    pub refused: Vec<String>,
}

/// How a VM was built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The full kernel command line the guest booted with.
    pub cmdline: String,
    /// The virtio devices in slot order: type and what the guest knows of them (port names, tags).
    pub devices: Vec<String>,
    /// vCPUs.
    pub vcpus: u8,
}

/// A region of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Guest physical address.
    pub guest: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the file's RAM section.
    pub offset: u64,
}

/// The VM-wide KVM state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// PIC master (chip 0).
    pub pic_master: Raw<kvm_irqchip>,
    /// PIC slave (chip 1).
    pub pic_slave: Raw<kvm_irqchip>,
    /// IOAPIC (chip 2).
    pub ioapic: Raw<kvm_irqchip>,
    /// The PIT.
    pub pit: Raw<kvm_pit_state2>,
    /// kvm-clock, with the host's real time when it was read (`KVM_CLOCK_REALTIME`) when KVM gives it.
    pub clock: Raw<kvm_clock_data>,
}

/// One vCPU.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// The CPUID it was given (set first on restore).
    pub cpuid: Vec<Raw<kvm_cpuid_entry2>>,
    /// General registers.
    pub regs: Raw<kvm_regs>,
    /// Segment, control and descriptor-table registers.
    pub sregs: Raw<kvm_sregs>,
    /// The legacy FPU/SSE state (always saved; restored when there is no XSAVE state).
    pub fpu: FpuState,
    /// The XSAVE area, when KVM gives it.
    pub xsave: Option<Raw<kvm_xsave>>,
    /// XCR0, when KVM gives it.
    pub xcrs: Option<Raw<kvm_xcrs>>,
    /// Debug registers, when KVM gives them.
    pub debugregs: Option<Raw<kvm_debugregs>>,
    /// The local APIC.
    pub lapic: Raw<kvm_lapic_state>,
    /// Running, halted, ...
    pub mp_state: Raw<kvm_mp_state>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: Raw<kvm_vcpu_events>,
    /// The MSRs of KVM's list that it gave back: index, value (TSC first, TSC deadline last).
    pub msrs: Vec<(u32, u64)>,
}

/// `kvm_fpu`, field by field (kvm-bindings has no serde for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FpuState {
    /// x87 registers.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// SSE registers.
    pub xmm: [[u8; 16]; 16],
    /// SSE control/status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The 8250 UART's registers (vm-superio's `SerialState`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    /// Divisor latch, low and high.
    pub divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 7],
    /// Received bytes not read yet.
    pub in_buffer: Vec<u8>,
}

/// A virtqueue's configuration and progress (virtio-queue's `QueueState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueState {
    /// The device's maximum size.
    pub max_size: u16,
    /// The next available entry the device takes.
    pub next_avail: u16,
    /// The next used entry the device fills.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX.
    pub event_idx: bool,
    /// The size the driver chose.
    pub size: u16,
    /// Configured.
    pub ready: bool,
    /// Guest addresses of the descriptor table, available ring, used ring.
    pub desc_table: u64,
    /// Available ring.
    pub avail_ring: u64,
    /// Used ring.
    pub used_ring: u64,
}

impl From<virtio_queue::QueueState> for QueueState {
    fn from(q: virtio_queue::QueueState) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl QueueState {
    /// The queue again; virtio-queue checks the sizes and alignments.
    pub fn to_queue(self) -> Result<virtio_queue::Queue, virtio_queue::Error> {
        virtio_queue::Queue::try_from(virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// A virtio-mmio slot: the transport's registers and its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    /// The virtio device type.
    pub device_type: u32,
    /// The status register.
    pub status: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// Feature page selectors (device, driver).
    pub features_sel: [u32; 2],
    /// Queue selector.
    pub queue_sel: u32,
    /// Configuration generation.
    pub config_generation: u32,
    /// Interrupt status bits not acknowledged yet.
    pub interrupt_status: u32,
    /// The device was started (DRIVER_OK).
    pub activated: bool,
    /// The transport's copy of each queue's configuration.
    pub queues: Vec<QueueState>,
    /// The device's own state.
    pub device: DeviceState,
}

/// A device's own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DeviceState {
    /// A console.
    Console(ConsoleState),
    /// A virtio-fs share (saved only before any FUSE session: see the module docs).
    Fs(FsState),
    /// A network card (saved only with no frame in flight to or from passt).
    Net(NetState),
}

/// A virtio-console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleState {
    /// Features the driver accepted.
    pub acked: u64,
    /// The queues and ports while the device runs.
    pub active: Option<ConsoleActive>,
}

/// A running virtio-console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleActive {
    /// Multiport was negotiated.
    pub multiport: bool,
    /// The device's queues.
    pub queues: Vec<QueueState>,
    /// The ports it serves.
    pub ports: Vec<PortState>,
    /// Control messages the guest has not taken yet.
    pub control_out: Vec<Vec<u8>>,
}

/// One console port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortState {
    /// Its name.
    pub name: String,
    /// The guest opened it.
    pub guest_open: bool,
    /// Guest bytes the host had not taken: chain head, the bytes, how many were written.
    pub pending: Option<(u16, Vec<u8>, usize)>,
}

/// A virtio-fs device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsState {
    /// Features the driver accepted.
    pub acked: u64,
    /// The device's queues while it runs.
    pub queues: Option<Vec<QueueState>>,
}

/// A virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// Features the driver accepted.
    pub acked: u64,
    /// The queues while the device runs.
    pub active: Option<NetActive>,
}

/// A running virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetActive {
    /// The receive and the transmit queue.
    pub queues: Vec<QueueState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_structures_round_trip_and_refuse_other_sizes() {
        let regs = kvm_regs {
            rip: 0x1234,
            rax: 7,
            rflags: 2,
            ..Default::default()
        };
        let json = serde_json::to_string(&Raw(regs)).unwrap();
        let back: Raw<kvm_regs> = serde_json::from_str(&json).unwrap();
        assert_eq!((back.0.rip, back.0.rax, back.0.rflags), (0x1234, 7, 2));
        // One byte short, and one too many.
        let mut bytes: Vec<u8> = serde_json::from_str(&json).unwrap();
        bytes.pop();
        let short = serde_json::to_string(&bytes).unwrap();
        let e = serde_json::from_str::<Raw<kvm_regs>>(&short).unwrap_err();
        assert!(e.to_string().contains("expected"), "{e}");
        bytes.extend([0, 0]);
        let long = serde_json::to_string(&bytes).unwrap();
        assert!(serde_json::from_str::<Raw<kvm_regs>>(&long).is_err());
        assert!(serde_json::from_str::<Raw<kvm_regs>>("\"text\"").is_err());
    }

    #[test]
    fn fpu_state_round_trips() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            last_ip: 99,
            ..Default::default()
        };
        f.xmm[3][7] = 5;
        f.fpr[7][0] = 1;
        let s = FpuState::from(&f);
        let json = serde_json::to_string(&s).unwrap();
        let back: FpuState = serde_json::from_str(&json).unwrap();
        let g = kvm_fpu::from(&back);
        assert_eq!(
            (g.fcw, g.mxcsr, g.last_ip, g.xmm[3][7], g.fpr[7][0]),
            (0x37f, 0x1f80, 99, 5, 1)
        );
    }

    #[test]
    fn queue_state_is_checked_when_the_queue_is_rebuilt() {
        use virtio_queue::QueueT;
        let q = virtio_queue::Queue::new(16).unwrap();
        let s = QueueState::from(q.state());
        assert!(s.to_queue().is_ok());
        let bad = QueueState { size: 3, ..s };
        assert!(bad.to_queue().is_err(), "a size that is not a power of two");
        let bad = QueueState { max_size: 0, ..s };
        assert!(bad.to_queue().is_err());
    }
}
