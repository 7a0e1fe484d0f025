//! The builtin VMM (`sandbox::vmm`) boots our guest kernel under KVM with the agent in the initramfs and
//! runs the agent's specification to its verdict on the serial console, ending with the i8042 reset.
//!
//! One boot (about 1-2 minutes on PVM, well under a second on hardware KVM). Artifacts: `SANDBOX_KERNEL`
//! (a PVH `vmlinux`) and `SANDBOX_AGENT` (the static agent), else `kernel-config/build.sh` and
//! `scripts/build-guest.sh` of this checkout. Without `/dev/kvm` the test FAILS: it never skips.
//! `SANDBOX_VMM_ECHO=1` also copies the guest console to stderr as it arrives; `SANDBOX_VMM_CMDLINE` adds
//! kernel options (e.g. `loglevel=7` for the whole kernel log, which `quiet` hides);
//! `SANDBOX_VMM_SAVE_INITRAMFS=path` keeps the initramfs, to boot the same guest under QEMU for a comparison.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::Policy;
use sandbox::guest::{RunSpec, VERDICT_PREFIX, find_verdict};
use sandbox::vm::initramfs::pack_agent;
use sandbox::vmm::{self, GuestExit, VmConfig, regs::BootMode};

/// The guest is stopped after this long: a hung guest fails the test instead of hanging it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

/// The artifact named by `var`, else the last stdout line of the checkout's build `script`.
fn built(var: &str, script: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={p:?} is not a file");
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}; set {var}"));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        out.status.success() && Path::new(&last).is_file(),
        "{script:?} failed ({}); set {var}",
        out.status
    );
    PathBuf::from(last)
}

/// The console, kept for the assertions (and echoed when asked).
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        if std::env::var_os("SANDBOX_VMM_ECHO").is_some() {
            let _ = std::io::stderr().write_all(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
#[ignore = "boots under KVM: ~1-2 min on PVM; run with --ignored"]
fn boots_the_guest_to_the_agent_verdict() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the builtin VM engine needs KVM (this test fails, it does not skip)"
    );
    let kernel = built("SANDBOX_KERNEL", "kernel-config/build.sh");
    let agent = built("SANDBOX_AGENT", "scripts/build-guest.sh");

    // No shares yet: the program is the agent itself, bound into the sandbox from the initramfs.
    let mut spec = RunSpec::new("/init");
    spec.args = vec!["--version".into()];
    spec.policy = Policy::default().ro_bind("/init", "/init");
    let initramfs = pack_agent(&agent, Some(&spec), &[]).unwrap();
    if let Some(p) = std::env::var_os("SANDBOX_VMM_SAVE_INITRAMFS") {
        std::fs::write(&p, &initramfs).unwrap();
    }

    let pvm = vmm::pvm_detected();
    let console = Console::default();
    let result = vmm::run(VmConfig {
        kernel: kernel.clone(),
        initramfs,
        cmdline: vmm::kernel_cmdline(
            pvm,
            &std::env::var("SANDBOX_VMM_CMDLINE").unwrap_or_default(),
        ),
        memory_mib: 256,
        timeout: BOOT_TIMEOUT,
        console: vmm::Console::new(console.clone()),
    });
    let log = console.text();
    let report = result.unwrap_or_else(|e| panic!("the VM failed: {e}\nconsole:\n{log}"));
    eprintln!(
        "builtin VMM: {kernel:?} booted and ended in {:.1} s ({}; {:?}, {:?} entry; {} PIO, {} MMIO, {} unhandled exits)",
        report.elapsed.as_secs_f64(),
        report.kvm_flavour,
        report.exit,
        report.boot_mode,
        report.pio_exits,
        report.mmio_exits,
        report.unhandled_exits
    );
    assert_eq!(report.exit, GuestExit::Reset, "console:\n{log}");
    // Our vmlinux has a PVH note; a bzImage (SANDBOX_KERNEL=.../bzImage) takes the 64-bit entry.
    let mut magic = [0u8; 4];
    std::fs::File::open(&kernel)
        .and_then(|mut f| f.read_exact(&mut magic))
        .unwrap();
    let elf = magic == *b"\x7fELF";
    let mode = if elf { BootMode::Pvh } else { BootMode::Long };
    assert_eq!(report.boot_mode, mode);
    assert_eq!(report.kvm_flavour == "pvm", pvm);
    assert!(
        log.contains("sandbox-init") && log.contains(": PID 1, guest uptime"),
        "the console (kernel log, agent messages) is on the serial port:\n{log}"
    );
    let verdict_line = log
        .lines()
        .find(|l| l.contains(VERDICT_PREFIX.trim()))
        .unwrap_or_else(|| panic!("no verdict line on the console:\n{log}"));
    let v = find_verdict(&log).unwrap_or_else(|| panic!("unreadable verdict {verdict_line}"));
    assert_eq!(v["status"], "exited", "{v:#}\n{log}");
    assert_eq!(v["exit_code"], 0, "{v:#}");
    eprintln!(
        "guest uptime: agent started at {} ms, verdict at {} ms; the program ran {} ms",
        v["agent"]["uptime_start_ms"], v["agent"]["uptime_end_ms"], v["wall_ms"]
    );
    assert_eq!(v["agent"]["spec_source"], "initramfs", "{v:#}");
    assert!(
        log.contains(&format!("sandbox-init {}", env!("CARGO_PKG_VERSION"))),
        "the program's output (the agent's --version) is on the console:\n{log}"
    );
}
