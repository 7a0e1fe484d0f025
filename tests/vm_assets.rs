//! The VM backend's assets set by the program (`sandkasten::vm::set_assets`) instead of the environment: a
//! cold VM run and a VM session's keeper (another process) both use them. Alone in its test binary: it
//! removes `SANDBOX_KERNEL` and `SANDBOX_AGENT` from this process's environment.
#![cfg(feature = "vm")]

use sandkasten::vm::{VmAssets, set_assets};
use sandkasten::{Backend, Detach, Policy, Sandbox, Session, Status, VmEngine};

#[test]
fn assets_set_by_the_program_are_used_everywhere() {
    let kernel =
        std::env::var_os("SANDBOX_KERNEL").expect("SANDBOX_KERNEL (scripts/test.sh sets it)");
    let agent = std::env::var_os("SANDBOX_AGENT").expect("SANDBOX_AGENT (scripts/test.sh sets it)");
    // SAFETY: the only test of this binary; no other thread reads the environment now.
    unsafe {
        std::env::remove_var("SANDBOX_KERNEL");
        std::env::remove_var("SANDBOX_AGENT");
        std::env::set_var("XDG_CACHE_HOME", "/nonexistent-cache");
    }
    let run = || {
        Sandbox::new("/bin/sh")
            .args(["-c", "uname -r"])
            .backend(Backend::Vm)
            .vm_engine(VmEngine::Qemu)
            .output()
            .unwrap()
    };
    // Nothing set, nothing in the environment: a clear refusal.
    let o = run();
    assert!(
        matches!(&o.status, Status::SetupFailed(f) if f.message.contains("no guest kernel")),
        "{o:?}"
    );
    set_assets(VmAssets::new().kernel(&kernel).agent(&agent));
    let o = run();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_ne!(
        String::from_utf8_lossy(&o.stdout).trim(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim(),
        "the guest's kernel"
    );

    // A detached VM session: its keeper, another process, gets the same assets.
    let dir = testkit::TempDir::new("vm-assets");
    let detached = Session::create(
        Policy::default(),
        Detach::new(dir.join("ctl.sock"), dir.join("status")).vm(VmEngine::Qemu),
    )
    .expect("a detached VM session with assets set by the program");
    let s = Session::attach(&detached).unwrap();
    let o = s.command("/bin/echo").arg("kept").output().unwrap();
    assert_eq!(o.stdout, b"kept\n", "{o:?}");
    s.stop(std::time::Duration::from_secs(1)).unwrap();
    let mut status = 0;
    // SAFETY: waiting for the keeper, our child; `status` is writable.
    unsafe { libc::waitpid(detached.pid as i32, &mut status, 0) };
    detached.remove().unwrap();

    // A QEMU that is not there: said so.
    set_assets(
        VmAssets::new()
            .kernel(&kernel)
            .agent(&agent)
            .qemu("/nonexistent/qemu"),
    );
    let o = run();
    assert!(matches!(o.status, Status::SetupFailed(_)), "{o:?}");
}
