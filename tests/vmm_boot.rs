//! The builtin VMM (`sandkasten_vmm`) boots our guest kernel under KVM with the agent in the initramfs and a
//! virtio-console device carrying the agent's four named ports: the host reads the agent's READY line on
//! `sandbox.control`, sends the run specification there, reads the verdict back from it, and gets the
//! program's output from `sandbox.stdout`; the guest ends with the i8042 reset.
//!
//! One boot (about 1-2 minutes on PVM, well under a second on hardware KVM). Artifacts: `SANDBOX_KERNEL`
//! (a PVH `vmlinux`) and `SANDBOX_AGENT` (the static agent), else `kernel-config/build.sh` and
//! `scripts/build-guest.sh` of this checkout. Without `/dev/kvm` the test FAILS: it never skips.
//! `SANDBOX_VMM_ECHO=1` also copies the guest console to stderr as it arrives; `SANDBOX_VMM_CMDLINE` adds
//! kernel options (e.g. `loglevel=7` for the whole kernel log, which `quiet` hides);
//! `SANDBOX_VMM_SAVE_INITRAMFS=path` keeps the initramfs, to boot the same guest under QEMU for a comparison.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sandkasten::Policy;
use sandkasten::protocol::{
    CONTROL_PORT, READY_PREFIX, RunSpec, STDERR_PORT, STDIN_PORT, STDOUT_PORT, VERDICT_PREFIX,
    find_verdict,
};
use sandkasten::vm::cmdline::kernel_cmdline;
use sandkasten::vm::pack_agent;
use sandkasten_vmm::virtio::console::VirtioConsole;
use sandkasten_vmm::{self as vmm, GuestExit, KvmFlavour, VmConfig, regs::BootMode};

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

/// The host side of the control port: waits for the agent's READY line, sends `spec`, then keeps every
/// line until the port closes (the VM ended). Returns the lines.
fn drive_control(port: UnixStream, spec: String) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut writer = port.try_clone().unwrap();
        let mut lines = Vec::new();
        let mut sent = false;
        for line in BufReader::new(port).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with(READY_PREFIX) {
                writer.write_all(spec.as_bytes()).unwrap();
                sent = true;
            }
            lines.push(line);
        }
        lines
    })
}

/// Everything that arrives on `port` until it closes.
fn collect(mut port: UnixStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = port.read_to_end(&mut out);
        out
    })
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

    // No shares yet: the program is the agent itself, bound into the sandbox from the initramfs. The
    // specification goes over the control port; the initramfs carries none.
    let mut spec = RunSpec::new("/init");
    spec.args = vec!["--version".into()];
    spec.policy = Policy::default().ro_bind("/init", "/init");
    let initramfs = pack_agent(&agent, None, &[]).unwrap();
    let (console_device, mut host) =
        VirtioConsole::with_socketpairs(&[CONTROL_PORT, STDIN_PORT, STDOUT_PORT, STDERR_PORT])
            .unwrap();
    let stderr = collect(host.pop().unwrap());
    let stdout = collect(host.pop().unwrap());
    // No input: the program's stdin ends at once.
    drop(host.pop().unwrap());
    let control = drive_control(host.pop().unwrap(), spec.to_json_line());
    if let Some(p) = std::env::var_os("SANDBOX_VMM_SAVE_INITRAMFS") {
        std::fs::write(&p, &initramfs).unwrap();
    }

    let pvm = KvmFlavour::detect().is_pvm();
    let console = Console::default();
    let result = vmm::run(VmConfig {
        kernel: kernel.clone(),
        initramfs: initramfs.into(),
        cmdline: kernel_cmdline(
            true,
            pvm,
            &std::env::var("SANDBOX_VMM_CMDLINE").unwrap_or_default(),
        ),
        memory_mib: 256,
        timeout: BOOT_TIMEOUT,
        console: vmm::Console::new(console.clone()),
        devices: vec![Box::new(console_device)],
    });
    let log = console.text();
    // The VM is gone, and with it the device's ends of the ports.
    let control = control.join().unwrap().join("\n");
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    eprintln!("control port:\n{control}\nstdout port: {stdout:?}\nstderr port: {stderr:?}");
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
    assert_eq!(report.kvm_flavour.is_pvm(), pvm);
    assert!(
        log.contains("sandbox-init") && log.contains(": PID 1, guest uptime"),
        "the console (kernel log, agent messages) is on the serial port:\n{log}"
    );
    assert!(
        control.contains(READY_PREFIX),
        "the agent announced itself on the control port:\n{control}\nconsole:\n{log}"
    );
    let verdict_line = control
        .lines()
        .find(|l| l.contains(VERDICT_PREFIX.trim()))
        .unwrap_or_else(|| panic!("no verdict line on the control port:\n{control}\n{log}"));
    let v = find_verdict(&control).unwrap_or_else(|| panic!("unreadable verdict {verdict_line}"));
    assert_eq!(v["status"], "exited", "{v:#}\n{log}");
    assert_eq!(v["exit_code"], 0, "{v:#}");
    eprintln!(
        "guest uptime: agent started at {} ms, verdict at {} ms; the program ran {} ms",
        v["agent"]["uptime_start_ms"], v["agent"]["uptime_end_ms"], v["wall_ms"]
    );
    assert_eq!(v["agent"]["spec_source"], "control_port", "{v:#}");
    assert!(
        stdout.contains(&format!("sandbox-init {}", env!("CARGO_PKG_VERSION"))),
        "the program's output (the agent's --version) is on the stdout port: {stdout:?}\nconsole:\n{log}"
    );
}
