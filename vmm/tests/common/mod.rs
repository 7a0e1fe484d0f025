//! Helpers shared by the VMM's integration tests (copied from the sandkasten crate's `tests/common/mod.rs`
//! until the test helpers are consolidated).
#![allow(dead_code)]

use std::path::Path;

/// Whether this user can open /dev/kvm (root here; uid 65534 cannot: a KVM test then says SKIPPED and
/// passes, as in the unprivileged CI pass). A missing /dev/kvm fails: these tests never skip for that.
pub fn kvm_usable() -> bool {
    let dev = Path::new("/dev/kvm");
    assert!(
        dev.exists(),
        "/dev/kvm is missing (this test fails, it does not skip)"
    );
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: this user cannot open /dev/kvm");
    }
    ok
}
