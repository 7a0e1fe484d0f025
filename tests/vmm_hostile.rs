//! What a hostile or broken guest can do to the builtin VMM, with a few bytes of guest code instead of a
//! kernel (`sandbox::vmm::run_code`: flat 32-bit protected mode or 64-bit long mode, empty IDT): the boot
//! CPU states work; garbage port and MMIO
//! accesses are ignored and counted, the i8042 reset ends the VM, a triple fault and an endless loop end
//! as error values within the host-side timeout. Each VM lives milliseconds. Without `/dev/kvm` these
//! tests FAIL: they never skip.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandbox::vmm::regs::BootMode::{Long, Pvh};
use sandbox::vmm::vcpu::VcpuError;
use sandbox::vmm::{Console, GuestExit, VmmError, run_code};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether this user may use KVM. `/dev/kvm` must exist (else the test fails, it never skips); a user who
/// may not open it (CI's unprivileged pass: the device is often mode 0600) gets a checked, clean refusal
/// from the VMM instead of a run, and the test says so.
fn kvm_usable() -> bool {
    let dev = std::path::Path::new("/dev/kvm");
    assert!(
        dev.exists(),
        "/dev/kvm is missing: the builtin VM engine needs KVM (this test fails, it does not skip)"
    );
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .is_ok()
    {
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
    assert_eq!(console.0.lock().unwrap().as_slice(), b"A");
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
    let out = console.0.lock().unwrap().clone();
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
                | Ok(sandbox::vmm::VmReport {
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
    let r = sandbox::vmm::run(sandbox::vmm::VmConfig {
        kernel: "/no/such/vmlinux".into(),
        initramfs: Vec::new(),
        cmdline: "quiet".into(),
        memory_mib: 32,
        timeout: Duration::from_secs(5),
        console: Console::new(Capture::default()),
        devices: Vec::new(),
    });
    assert!(matches!(r, Err(VmmError::Boot(_))), "{r:?}");
}
