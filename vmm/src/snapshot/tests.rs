//! Restore's checks of a snapshot file and state, without KVM.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::state::{FpuState, Raw, Region, SerialState, Snapshot, VcpuState, VmState};
use super::*;

fn identity() -> Identity {
    Identity {
        memory_mib: 32,
        cmdline: "quiet".into(),
        devices: vec![],
        vcpus: 1,
    }
}

fn snapshot(identity: Identity) -> Snapshot {
    let regions = layout::ram_regions(identity.memory_mib << 20)
        .unwrap()
        .into_iter()
        .scan(0, |offset, (a, len)| {
            let r = Region {
                guest: a.0,
                len: len as u64,
                offset: *offset,
            };
            *offset += len as u64;
            Some(r)
        })
        .collect();
    let chip = |chip_id| {
        Raw(kvm_bindings::kvm_irqchip {
            chip_id,
            ..Default::default()
        })
    };
    Snapshot {
        identity,
        long_mode_entry: false,
        regions,
        vm: VmState {
            pic_master: chip(0),
            pic_slave: chip(1),
            ioapic: chip(2),
            pit: Raw(Default::default()),
            clock: Raw(Default::default()),
        },
        vcpus: vec![VcpuState {
            cpuid: vec![],
            regs: Raw(Default::default()),
            sregs: Raw(Default::default()),
            fpu: FpuState::from(&kvm_bindings::kvm_fpu::default()),
            xsave: None,
            xcrs: None,
            debugregs: None,
            lapic: Raw(Default::default()),
            mp_state: Raw(Default::default()),
            events: Raw(Default::default()),
            msrs: vec![(0x10, 5)],
        }],
        serial: SerialState::default(),
        transports: vec![],
        refused: vec![],
    }
}

/// A snapshot file with `state` and the RAM of 32 MiB (holes).
fn file(state: &[u8]) -> File {
    let path = std::env::temp_dir().join(format!(
        "snapshot-mod-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    format::write_head(&f, state, 32 << 20).unwrap();
    f
}

#[test]
fn a_good_state_is_accepted_and_its_memory_maps() {
    let json = serde_json::to_vec(&snapshot(identity())).unwrap();
    let r = Restore::open(file(&json), &identity()).unwrap();
    let mem = r.map_memory().unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0);
    // Copy-on-write: the guest writes, the file does not change.
    mem.write_obj(7u64, GuestAddress(0x1000)).unwrap();
    let mut b = [0u8; 8];
    r.file
        .read_exact_at(&mut b, r.header.memory_offset + 0x1000)
        .unwrap();
    assert_eq!(b, [0; 8]);
}

#[test]
fn bad_or_foreign_states_are_refused_with_the_reason() {
    let e = Restore::open(file(b"{not json"), &identity()).unwrap_err();
    assert!(matches!(e, SnapshotError::State(_)), "{e}");
    let e = Restore::open(file(b"{\"identity\":1}"), &identity()).unwrap_err();
    assert!(matches!(e, SnapshotError::State(_)), "{e}");

    let mut other = identity();
    other.cmdline = "loud".into();
    let json = serde_json::to_vec(&snapshot(other)).unwrap();
    let e = Restore::open(file(&json), &identity()).unwrap_err();
    assert!(e.to_string().contains("command line"), "{e}");

    let mut s = snapshot(identity());
    s.vcpus.clear();
    let e = Restore::open(file(&serde_json::to_vec(&s).unwrap()), &identity()).unwrap_err();
    assert!(matches!(e, SnapshotError::Invalid(_)), "{e}");

    let mut s = snapshot(identity());
    s.regions[0].offset = 4096;
    let e = Restore::open(file(&serde_json::to_vec(&s).unwrap()), &identity()).unwrap_err();
    assert!(e.to_string().contains("memory layout"), "{e}");

    // A field of the wrong size inside a valid file.
    let json = serde_json::to_string(&snapshot(identity())).unwrap();
    let regs = serde_json::to_string(&Raw(kvm_bindings::kvm_regs::default())).unwrap();
    let cut = json.replacen(&regs, "[0,0,0]", 1);
    assert_ne!(cut, json);
    let e = Restore::open(file(cut.as_bytes()), &identity()).unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
}

#[test]
fn a_gate_without_a_vcpu_refuses_to_pause() {
    let g = PauseGate::default();
    let e = g
        .pause(libc::SIGRTMIN() + 1, Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(e, SnapshotError::Pause(_)), "{e}");
}
