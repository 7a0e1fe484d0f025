//! A panicking guest kernel ends the builtin VMM's VM cleanly: our guest kernel (`SANDBOX_KERNEL`) with the
//! engines' command line ([`sandkasten::vm::cmdline`]) and no initramfs resets at once, and the VMM reports the
//! reset with the panic on the console. (The VMM crate's own tests, `vmm/tests/hostile.rs`, run guest code
//! without a kernel.) Without `/dev/kvm` the test FAILS: it never skips.

mod common;

use std::time::{Duration, Instant};

use sandkasten::vm::cmdline::kernel_cmdline;
use sandkasten_vmm::{Console, GuestExit, KvmFlavour};
use testkit::Capture;

/// A real guest kernel that panics (no initramfs, so no init and no root file system): with the engine's
/// `panic=-1 reboot=k` it resets at once, and the VMM ends cleanly with the panic on the console. It boots
/// a kernel (`SANDBOX_KERNEL`; about 30 s on PVM, under a second on hardware KVM).
#[test]
fn a_guest_kernel_panic_ends_the_vm_with_its_last_words() {
    if !testkit::kvm_usable() {
        return;
    }
    let kernel = std::env::var_os("SANDBOX_KERNEL").expect(
        "SANDBOX_KERNEL: the guest kernel (kernel-config/build.sh; scripts/test.sh sets it)",
    );
    let console = Capture::default();
    let t = Instant::now();
    let r = sandkasten_vmm::run(sandkasten_vmm::VmConfig {
        kernel: kernel.into(),
        initramfs: Vec::new().into(),
        cmdline: kernel_cmdline(true, KvmFlavour::detect().is_pvm(), ""),
        memory_mib: 128,
        timeout: Duration::from_secs(300),
        console: Console::new(console.clone()),
        devices: Vec::new(),
    });
    let log = console.text();
    let report =
        r.unwrap_or_else(|e| panic!("the VMM failed instead of ending cleanly: {e}\n{log}"));
    assert_eq!(report.exit, GuestExit::Reset, "{log}");
    assert!(
        log.contains("Kernel panic"),
        "no panic on the console:\n{log}"
    );
    eprintln!(
        "a panicking guest kernel ended in {:.1} s ({}): {}",
        t.elapsed().as_secs_f64(),
        report.kvm_flavour,
        log.lines()
            .find(|l| l.contains("Kernel panic"))
            .unwrap_or("")
    );
}
