//! What a hostile or broken guest can do to the builtin VMM, with a few bytes of guest code instead of a
//! kernel (`sandkasten_vmm::run_code`: flat 32-bit protected mode or 64-bit long mode, empty IDT): the boot
//! CPU states work; garbage port and MMIO
//! accesses are ignored and counted, the i8042 reset ends the VM, a triple fault and an endless loop end
//! as error values within the host-side timeout. (That a panicking guest kernel resets and ends the VM cleanly
//! needs our guest kernel and its command line: the sandkasten crate's `tests/vmm_kernel_panic.rs`.)
//! Each VM lives milliseconds. Without `/dev/kvm` these tests FAIL: they never skip.

use std::time::{Duration, Instant};

use sandkasten_vmm::regs::BootMode::{Long, Pvh};
use sandkasten_vmm::vcpu::VcpuError;
use sandkasten_vmm::{Console, GuestExit, VmmError, run_code};
use testkit::Capture;

/// Whether this user may use KVM. `/dev/kvm` must exist (else the test fails, it never skips); a user who
/// may not open it (CI's unprivileged pass: the device is often mode 0600) gets a checked, clean refusal
/// from the VMM instead of a run, and the test says so.
fn kvm_usable() -> bool {
    if testkit::kvm_access().is_ok() {
        return true;
    }
    let r = run_code(
        &[0xf4],
        Pvh,
        16,
        Duration::from_secs(5),
        Console::new(Capture::default()),
    );
    match r {
        Err(e @ VmmError::OpenKvm(_)) => {
            assert!(e.to_string().contains("/dev/kvm"), "{e}");
            eprintln!("this user cannot open /dev/kvm: checked the clean refusal only ({e})");
        }
        other => panic!("/dev/kvm cannot be opened here, yet the VMM returned {other:?}"),
    }
    false
}

#[test]
fn garbage_io_is_ignored_and_the_reset_command_ends_the_vm() {
    if !kvm_usable() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0x34, 0x12,       // mov dx, 0x1234
        0xee,                         // out dx, al        (no device)
        0xec,                         // in al, dx         (no device: all ones)
        0xbf, 0x00, 0x00, 0x00, 0xd0, // mov edi, 0xd0000000 (MMIO hole, no device)
        0x89, 0x07,                   // mov [edi], eax
        0x8b, 0x07,                   // mov eax, [edi]
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8    (serial)
        0xb0, b'A',                   // mov al, 'A'
        0xee,                         // out dx, al
        0xb0, 0xfe,                   // mov al, 0xfe      (i8042 reset)
        0xe6, 0x64,                   // out 0x64, al
        0xf4,                         // hlt
        0xeb, 0xfd,                   // jmp hlt
    ];
    let console = Capture::default();
    let report = run_code(
        &code,
        Pvh,
        16,
        Duration::from_secs(30),
        Console::new(console.clone()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.exit, GuestExit::Reset, "{report:?}");
    assert_eq!(report.unhandled_exits, 4, "{report:?}");
    assert_eq!(console.bytes().as_slice(), b"A");
}

#[test]
fn a_console_flood_is_capped_and_stopped_at_the_timeout() {
    if !kvm_usable() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xb0, b'A',                   // mov al, 'A'
        0xee,                         // out dx, al
        0xeb, 0xfd,                   // jmp out
    ];
    let console = Capture::default();
    let timeout = Duration::from_secs(2);
    let r = run_code(
        &code,
        Pvh,
        16,
        timeout,
        Console::new(console.clone()).limit(1000),
    );
    assert!(matches!(r, Err(VmmError::Timeout(_))), "{r:?}");
    let out = console.bytes();
    assert_eq!(&out[..1000], &[b'A'; 1000][..]);
    assert_eq!(&out[1000..], b"\n[console truncated at 1000 bytes]\n");
}

#[test]
fn long_mode_entry_runs_64_bit_code_on_the_identity_map() {
    if !kvm_usable() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x48, 0xb8, 0, 0, 0, 0, 0x64, 0, 0, 0, // mov rax, 0x64_0000_0000 (a 64-bit immediate)
        0x48, 0xc1, 0xe8, 0x20,               // shr rax, 32
        0x89, 0xc2,                           // mov edx, eax      (0x64 only if decoded as 64-bit code)
        0x50, 0x58,                           // push rax; pop rax (the boot stack)
        0xb0, 0xfe,                           // mov al, 0xfe
        0xee,                                 // out dx, al        (i8042 reset)
        0xf4,                                 // hlt
    ];
    let r = run_code(
        &code,
        Long,
        16,
        Duration::from_secs(30),
        Console::new(Capture::default()),
    );
    assert!(
        matches!(r, Ok(ref rep) if rep.exit == GuestExit::Reset),
        "{r:?}"
    );
    // The same bytes in 32-bit mode do not reach the reset.
    let r = run_code(
        &code,
        Pvh,
        16,
        Duration::from_secs(5),
        Console::new(Capture::default()),
    );
    assert!(
        !matches!(r, Ok(ref rep) if rep.exit == GuestExit::Reset),
        "{r:?}"
    );
}

#[test]
fn a_triple_fault_is_an_error() {
    if !kvm_usable() {
        return;
    }
    // ud2 with an empty IDT: #UD cannot be delivered → #GP → #DF → triple fault.
    let r = run_code(
        &[0x0f, 0x0b],
        Pvh,
        16,
        Duration::from_secs(30),
        Console::new(Capture::default()),
    );
    match r {
        Err(VmmError::Vcpu(VcpuError::TripleFault { rip })) => {
            eprintln!("triple fault reported at {rip:#x}")
        }
        other => panic!("expected a triple-fault error, got {other:?}"),
    }
}

#[test]
fn an_endless_loop_is_stopped_at_the_timeout() {
    if !kvm_usable() {
        return;
    }
    let timeout = Duration::from_secs(2);
    let t = Instant::now();
    let r = run_code(
        &[0xeb, 0xfe],
        Pvh,
        16,
        timeout,
        Console::new(Capture::default()),
    );
    assert!(
        matches!(r, Err(VmmError::Timeout(d)) if d == timeout),
        "{r:?}"
    );
    assert!(
        t.elapsed() < timeout + Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_halt_with_interrupts_off_is_stopped_at_the_timeout() {
    if !kvm_usable() {
        return;
    }
    let timeout = Duration::from_secs(2);
    let t = Instant::now();
    // cli; hlt: with the in-kernel irqchip KVM waits for an interrupt that never comes.
    let r = run_code(
        &[0xfa, 0xf4],
        Pvh,
        16,
        timeout,
        Console::new(Capture::default()),
    );
    assert!(
        matches!(
            r,
            Err(VmmError::Timeout(_))
                | Ok(sandkasten_vmm::VmReport {
                    exit: GuestExit::Halted,
                    ..
                })
        ),
        "{r:?}"
    );
    assert!(
        t.elapsed() < timeout + Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn executing_from_the_mmio_hole_ends_as_an_error() {
    if !kvm_usable() {
        return;
    }
    // mov eax, 0xd0000000; jmp eax: instruction fetch from where there is no memory.
    let code = [0xb8, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xe0];
    let t = Instant::now();
    let r = run_code(
        &code,
        Pvh,
        16,
        Duration::from_secs(10),
        Console::new(Capture::default()),
    );
    // KVM cannot emulate an instruction fetch from MMIO: KVM_EXIT_INTERNAL_ERROR (emulation failure).
    assert!(
        matches!(
            r,
            Err(VmmError::Vcpu(VcpuError::Internal {
                suberror: 1,
                rip: 0xd000_0000
            }))
        ),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(16));
}

#[test]
fn too_little_memory_or_a_missing_kernel_are_errors() {
    if !kvm_usable() {
        return;
    }
    let r = run_code(
        &[0xf4],
        Pvh,
        1,
        Duration::from_secs(5),
        Console::new(Capture::default()),
    );
    assert!(matches!(r, Err(VmmError::Memory(_))), "{r:?}");
    let r = run_code(
        &[0xf4],
        Pvh,
        u64::MAX,
        Duration::from_secs(5),
        Console::new(Capture::default()),
    );
    assert!(matches!(r, Err(VmmError::Memory(_))), "{r:?}");
    let r = sandkasten_vmm::run(sandkasten_vmm::VmConfig {
        kernel: "/no/such/vmlinux".into(),
        initramfs: Vec::new().into(),
        cmdline: "quiet".into(),
        memory_mib: 32,
        timeout: Duration::from_secs(5),
        console: Console::new(Capture::default()),
        devices: Vec::new(),
    });
    assert!(matches!(r, Err(VmmError::Boot(_))), "{r:?}");
}

/// `mov dword [addr], value` in 32-bit code.
fn store(addr: u32, value: u32) -> Vec<u8> {
    let mut v = vec![0xc7, 0x05];
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// A guest that acts as a hostile virtio driver: it brings up a virtio-fs device and a console properly,
/// then gives them rings that overlap (descriptor table, available and used ring on one page), an available
/// index far ahead of the ring, a descriptor pointing outside guest memory with a 4 GiB length, and notifies
/// every queue in an endless loop. The VMM must keep answering (each notification bounded) and stop the guest
/// at the timeout; the devices count what they refused.
#[test]
fn malformed_virtqueues_from_a_hostile_driver_end_at_the_timeout() {
    if !kvm_usable() {
        return;
    }
    use sandkasten_vmm::virtio::VirtioDevice;
    use sandkasten_vmm::virtio::console::VirtioConsole;
    use sandkasten_vmm::virtio::fs::VirtioFs;
    let share = std::env::temp_dir().join(format!("sandbox-hostile-share-{}", std::process::id()));
    std::fs::create_dir_all(&share).unwrap();
    let _cleanup = Cleanup(share.clone());
    let fs = VirtioFs::new("hostile", &share, true).unwrap();
    let fs_stats = fs.stats();
    let (console, _host_ends) = VirtioConsole::with_socketpairs(&["a"]).unwrap();
    let console_stats = console.stats();
    let devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(fs), Box::new(console)];

    const RINGS: u32 = 0x20_0000;
    let mut code = Vec::new();
    // Garbage where the descriptors, the available and the used ring all start: one chain available (whose
    // head is descriptor 1), descriptor 1 at an address beyond guest memory with a 4 GiB length and chained
    // to itself. The used ring the device writes is the available ring the driver reads.
    code.extend(store(RINGS, 0x0001_0000));
    code.extend(store(RINGS + 4, 1));
    code.extend(store(RINGS + 0x10, 0xffff_f000));
    code.extend(store(RINGS + 0x18, 0xffff_ffff));
    code.extend(store(RINGS + 0x1c, 0x0001_0001)); // flags NEXT, next = 1: itself
    for (base, queues) in [(0xd000_0000u32, 2u32), (0xd000_1000, 4)] {
        code.extend(store(base + 0x70, 1)); // ACKNOWLEDGE
        code.extend(store(base + 0x70, 3)); // DRIVER
        code.extend(store(base + 0x24, 1)); // driver features, word 1:
        code.extend(store(base + 0x20, 1)); // VIRTIO_F_VERSION_1
        if base == 0xd000_1000 {
            code.extend(store(base + 0x24, 0));
            code.extend(store(base + 0x20, 2)); // console: MULTIPORT
        }
        code.extend(store(base + 0x70, 0xb)); // FEATURES_OK
        for q in 0..queues {
            code.extend(store(base + 0x30, q)); // QueueSel
            code.extend(store(base + 0x38, 8)); // QueueNum
            code.extend(store(base + 0x80, RINGS)); // descriptors
            code.extend(store(base + 0x90, RINGS)); // available ring: the same page
            code.extend(store(base + 0xa0, RINGS)); // used ring: the same page
            code.extend(store(base + 0x44, 1)); // QueueReady
        }
        code.extend(store(base + 0x70, 0xf)); // DRIVER_OK
    }
    // Notify every queue of both devices, forever; and keep announcing chains far ahead of the ring (index
    // 0xffff), which the queue must refuse.
    let start = code.len();
    code.extend(store(RINGS, 0xffff_0000));
    for q in 0..2 {
        code.extend(store(0xd000_0050, q));
    }
    code.extend(store(RINGS, 0x0001_0000));
    for q in 0..2 {
        code.extend(store(0xd000_0050, q));
    }
    for q in 0..4 {
        code.extend(store(0xd000_1050, q));
    }
    let back = (start as i64 - (code.len() as i64 + 2)) as i8;
    code.extend([0xeb, back as u8]); // jmp start

    let timeout = Duration::from_secs(20);
    let started = Instant::now();
    let r = sandkasten_vmm::run_code_with_devices(
        &code,
        Pvh,
        16,
        timeout,
        Console::new(Capture::default()),
        devices,
    );
    let took = started.elapsed();
    assert!(
        matches!(r, Err(VmmError::Timeout(_))),
        "the hostile driver's VM should end at its timeout: {r:?}"
    );
    assert!(
        took < timeout + Duration::from_secs(10),
        "stopped only after {took:?}"
    );
    let fs_bad = fs_stats.bad_requests();
    let console_bad = console_stats
        .malformed_chains
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fs_bad > 0 && console_bad > 0,
        "the devices saw the malformed chains: fs {fs_bad}, console {console_bad}"
    );
    // The share is untouched.
    assert_eq!(std::fs::read_dir(&share).unwrap().count(), 0);
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
