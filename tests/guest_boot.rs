//! The guest agent in a real microVM: our kernel (`kernel-config/`) and `sandbox-init` packed by
//! `sandkasten::vm::pack_agent`, booted under `qemu-system-x86_64 -M microvm -accel tcg` (no
//! privileges needed), each boot killed after [`BOOT_TIMEOUT`].
//!
//! Artifacts: `SANDBOX_KERNEL` (a PVH `vmlinux`) and `SANDBOX_AGENT` (the static agent), else the output of
//! `kernel-config/build.sh` and `scripts/build-guest.sh` in this checkout (cached; slow only the first time).
//! `SANDBOX_QEMU` overrides `qemu-system-x86_64` from `PATH`. A missing QEMU, kernel or agent fails the tests:
//! they never skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandkasten::Policy;
use sandkasten::protocol::{
    CONTROL_PORT, Link, READY_PREFIX, RunSpec, STDERR_PORT, STDOUT_PORT, Share, ShareFs,
    VERDICT_PREFIX, find_verdict,
};
use sandkasten::vm::pack_agent;
use serde_json::Value;
use testkit::TempDir;

/// QEMU is killed after this long: a guest that hangs fails the test instead of hanging it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1";

struct Artifacts {
    qemu: PathBuf,
    kernel: PathBuf,
    agent: PathBuf,
}

fn artifacts() -> &'static Artifacts {
    static A: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    match A.get_or_init(find_artifacts) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

fn find_artifacts() -> Result<Artifacts, String> {
    let qemu = match std::env::var_os("SANDBOX_QEMU") {
        Some(q) => PathBuf::from(q),
        None => find_in_path("qemu-system-x86_64").ok_or(
            "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86), or set SANDBOX_QEMU",
        )?,
    };
    let kernel = built(
        "SANDBOX_KERNEL",
        "kernel-config/build.sh",
        "the guest kernel (vmlinux)",
    )?;
    let agent = built(
        "SANDBOX_AGENT",
        "scripts/build-guest.sh",
        "the static guest agent (sandbox-init)",
    )?;
    Ok(Artifacts {
        qemu,
        kernel,
        agent,
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The artifact named by `var`, else the last stdout line of the checkout's build `script`.
fn built(var: &str, script: &str, what: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={p:?} is not a readable file ({what})"))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            format!("cannot run {script:?} to build {what}: {e}; set {var} to a built one")
        })?;
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if !out.status.success() || !Path::new(&last).is_file() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(format!(
            "{script:?} failed to build {what} ({}), and {var} is not set; its last stderr lines:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(PathBuf::from(last))
}

/// What one boot left behind.
struct Boot {
    console: String,
    exited_by_itself: bool,
    success: bool,
    wall: Duration,
}

/// Boots the kernel with `initramfs` and extra QEMU arguments; kills QEMU after [`BOOT_TIMEOUT`].
fn boot(tmp: &TempDir, initramfs: &[u8], extra: &[String]) -> Boot {
    let a = artifacts();
    let initrd = tmp.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs).unwrap();
    let mut cmd = Command::new(&a.qemu);
    cmd.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-device",
        "i8042",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&a.kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", CMDLINE])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", a.qemu));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let (status, exited_by_itself) = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break (st, true);
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            break (child.wait().unwrap(), false);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    let mut console = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let qemu_err = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    if !qemu_err.trim().is_empty() {
        console.push_str("\n--- qemu stderr ---\n");
        console.push_str(&qemu_err);
    }
    eprintln!(
        "boot: initramfs {} bytes, {:.2} s wall, qemu {status}, console:\n{console}\n--- end of console ---",
        initramfs.len(),
        wall.as_secs_f64()
    );
    Boot {
        console,
        exited_by_itself,
        success: status.success(),
        wall,
    }
}

/// The verdict on the console; fails with the whole console when there is none.
fn verdict_of(b: &Boot) -> Value {
    assert!(
        b.exited_by_itself,
        "QEMU did not exit by itself within {BOOT_TIMEOUT:?}; console:\n{}",
        b.console
    );
    assert!(
        b.success,
        "QEMU exited with an error; console:\n{}",
        b.console
    );
    find_verdict(&b.console)
        .unwrap_or_else(|| panic!("no {VERDICT_PREFIX:?} line on the console:\n{}", b.console))
}

fn share_args(id: &str, path: &Path, readonly: bool) -> Vec<String> {
    vec![
        "-fsdev".into(),
        format!(
            "local,id={id},path={},security_model=none{}",
            path.display(),
            if readonly { ",readonly=on" } else { "" }
        ),
        "-device".into(),
        format!("virtio-9p-device,fsdev={id},mount_tag={id}"),
    ]
}

fn share(tag: &str, guest_path: &str, readonly: bool) -> Share {
    Share {
        tag: tag.into(),
        guest_path: guest_path.into(),
        fs: ShareFs::NineP,
        readonly,
    }
}

/// The host's `/usr`, read-only at the guest's `/usr`, with the merged-`/usr` links: the guest then runs the
/// host's programs, as the VM backend will.
fn with_host_usr(spec: &mut RunSpec, qemu: &mut Vec<String>) {
    spec.shares.push(share("usr", "/usr", true));
    spec.links = Link::merged_usr();
    qemu.extend(share_args("usr", Path::new("/usr"), true));
}

/// The value of a `PROBE key=value` line the guest program printed.
fn probe<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("PROBE {key}=");
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
}

/// The shell probe: what the sandboxed program sees, as `PROBE key=value` lines.
const PROBE_SCRIPT: &str = r#"
echo "PROBE pid=$$"
echo "PROBE hostname=$(cat /proc/sys/kernel/hostname)"
echo "PROBE init=$(cat /proc/1/comm)"
while read -r k v rest; do
    case "$k" in
        Cap*:|NoNewPrivs:|Seccomp:) echo "PROBE ${k%:}=$v" ;;
    esac
done < /proc/self/status
echo "PROBE data=$(cat /data/hello.txt)"
if (echo x > /data/new) 2>/dev/null; then echo "PROBE data_write=allowed"; else echo "PROBE data_write=denied"; fi
if echo "written in the guest" > /out/result; then echo "PROBE out_write=ok"; fi
exit 7
"#;

#[test]
fn guest_runs_a_host_shell_in_a_sandbox_with_shares() {
    let tmp = TempDir::with_mode("guest-shares", 0o755);
    let data = tmp.join("data");
    let out = tmp.join("out");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    // The sandbox user is an unprivileged guest uid: let it write the shared output directory.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();

    let mut spec = RunSpec::new("/bin/sh");
    spec.args = vec!["-c".into(), PROBE_SCRIPT.into()];
    let mut qemu = Vec::new();
    with_host_usr(&mut spec, &mut qemu);
    spec.shares.push(share("data", "/mnt/data", true));
    spec.shares.push(share("out", "/mnt/out", false));
    qemu.extend(share_args("data", &data, true));
    qemu.extend(share_args("out", &out, false));
    // The data share is bound writable into the sandbox: the guest's read-only share must still refuse writes.
    spec.policy = Policy::default()
        .hostname("guestbox")
        .bind("/mnt/data", "/data")
        .bind("/mnt/out", "/out")
        .memory(128 << 20)
        .pids(64)
        .timeout(Duration::from_secs(30));

    let initramfs = pack_agent(&artifacts().agent, Some(&spec), &[]).unwrap();
    let b = boot(&tmp, &initramfs, &qemu);
    let v = verdict_of(&b);
    let c = &b.console;

    assert!(
        c.contains("sandbox-init 0.1.0: PID 1, guest uptime"),
        "the agent did not report itself as PID 1:\n{c}"
    );
    assert_eq!(
        probe(c, "pid"),
        Some("2"),
        "the program is PID 2 under the sandbox's init:\n{c}"
    );
    assert_eq!(probe(c, "init"), Some("sandbox-init"), "{c}");
    assert_eq!(probe(c, "hostname"), Some("guestbox"), "{c}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(probe(c, cap), Some("0000000000000000"), "{cap}:\n{c}");
    }
    assert_eq!(probe(c, "NoNewPrivs"), Some("1"), "{c}");
    assert_eq!(
        probe(c, "Seccomp"),
        Some("2"),
        "a seccomp filter is installed:\n{c}"
    );
    assert_eq!(probe(c, "data"), Some("hello from the host"), "{c}");
    assert_eq!(
        probe(c, "data_write"),
        Some("denied"),
        "the read-only share refuses writes:\n{c}"
    );
    assert_eq!(probe(c, "out_write"), Some("ok"), "{c}");
    assert_eq!(
        std::fs::read_to_string(out.join("result")).unwrap_or_default(),
        "written in the guest\n",
        "the guest's write reached the host"
    );
    assert!(!data.join("new").exists());

    assert_eq!(v["status"], "exited", "{v:#}");
    assert_eq!(v["exit_code"], 7, "{v:#}");
    assert_eq!(v["exit_status"], 7, "{v:#}");
    assert_eq!(v["backend"], "vm", "{v:#}");
    assert_eq!(v["agent"]["spec_source"], "initramfs", "{v:#}");
    assert_eq!(
        v["agent"]["warnings"],
        serde_json::json!([]),
        "proc, sys, dev, cgroup2 with cpu, memory and pids: {v:#}"
    );
    let e = &v["enforced"];
    assert_eq!(e["seccomp"], "default", "{v:#}");
    assert!(
        e["landlock"].is_object(),
        "landlock applies in the guest: {v:#}"
    );
    assert!(
        e["cgroup"].is_object(),
        "the guest cgroup limits apply: {v:#}"
    );
    assert_eq!(e["no_new_privs"], true, "{v:#}");
    assert_eq!(e["capabilities_dropped"], true, "{v:#}");
    assert!(
        v["agent"]["uptime_start_ms"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{v:#}"
    );
    eprintln!(
        "boot to agent: {} ms guest uptime; boot+run+exit: {:.2} s wall",
        v["agent"]["uptime_start_ms"],
        b.wall.as_secs_f64()
    );
}

#[test]
fn spec_and_verdict_travel_over_the_control_port_and_stdio_over_ports() {
    let tmp = TempDir::with_mode("guest-ports", 0o755);
    let sock = tmp.join("control.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (stdout, stderr) = (tmp.join("stdout"), tmp.join("stderr"));

    let mut spec = RunSpec::new("/bin/sh");
    spec.args = vec![
        "-c".into(),
        "echo to-stdout; echo to-stderr >&2; exit 3".into(),
    ];
    let mut qemu = Vec::new();
    with_host_usr(&mut spec, &mut qemu);
    qemu.extend([
        "-device".to_string(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!("socket,id=ctl,path={}", sock.display()),
        "-device".into(),
        format!("virtserialport,chardev=ctl,name={CONTROL_PORT}"),
        "-chardev".into(),
        format!("file,id=out,path={}", stdout.display()),
        "-device".into(),
        format!("virtserialport,chardev=out,name={STDOUT_PORT}"),
        "-chardev".into(),
        format!("file,id=err,path={}", stderr.display()),
        "-device".into(),
        format!("virtserialport,chardev=err,name={STDERR_PORT}"),
    ]);

    // The host side of the control port: wait for READY, send the spec, read until the verdict.
    let line = spec.to_json_line();
    let host = std::thread::spawn(move || -> Result<String, String> {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let stream: UnixStream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(format!("QEMU never connected to the control socket: {e}")),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut transcript = String::new();
        let mut reader = BufReader::new(stream);
        loop {
            let mut l = String::new();
            match reader.read_line(&mut l) {
                Ok(0) => return Ok(transcript),
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "reading the control port: {e}; so far: {transcript}"
                    ));
                }
            }
            transcript.push_str(&l);
            if l.starts_with(READY_PREFIX) {
                writer.write_all(line.as_bytes()).unwrap();
            }
            if l.starts_with(VERDICT_PREFIX) {
                return Ok(transcript);
            }
        }
    });

    let initramfs = pack_agent(&artifacts().agent, None, &[]).unwrap();
    let b = boot(&tmp, &initramfs, &qemu);
    let transcript = host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", b.console));
    let console_verdict = verdict_of(&b);
    assert!(
        transcript.starts_with(READY_PREFIX),
        "the agent announces itself first: {transcript}"
    );
    let v = find_verdict(&transcript)
        .unwrap_or_else(|| panic!("no verdict on the control port: {transcript}"));
    assert_eq!(v, console_verdict, "the same verdict on both");
    assert_eq!(v["exit_code"], 3, "{v:#}");
    assert_eq!(v["agent"]["spec_source"], "control_port", "{v:#}");
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "to-stdout\n");
    assert_eq!(std::fs::read_to_string(&stderr).unwrap(), "to-stderr\n");
    assert!(
        !b.console.contains("to-stdout"),
        "program output stays off the console"
    );
}

#[test]
fn a_missing_program_is_127_and_the_vm_still_ends() {
    let tmp = TempDir::with_mode("guest-missing", 0o755);
    let spec = RunSpec::new("/no/such/program");
    let initramfs = pack_agent(&artifacts().agent, Some(&spec), &[]).unwrap();
    let v = verdict_of(&boot(&tmp, &initramfs, &[]));
    assert_eq!(v["status"], "setup_failed", "{v:#}");
    assert_eq!(v["exit_status"], 127, "{v:#}");
    assert_eq!(v["setup_error"]["stage"], "exec", "{v:#}");
}

#[test]
fn an_agent_failure_is_125_and_the_vm_still_ends() {
    let tmp = TempDir::with_mode("guest-nospec", 0o755);
    // No specification anywhere, and a share whose device does not exist would fail next.
    let initramfs = pack_agent(&artifacts().agent, None, &[]).unwrap();
    let v = verdict_of(&boot(&tmp, &initramfs, &[]));
    assert_eq!(v["status"], "setup_failed", "{v:#}");
    assert_eq!(v["exit_status"], 125, "{v:#}");
    let msg = v["setup_error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("no run specification"), "{v:#}");

    let mut spec = RunSpec::new("/bin/true");
    spec.shares.push(share("absent", "/mnt/absent", true));
    let initramfs = pack_agent(&artifacts().agent, Some(&spec), &[]).unwrap();
    let v = verdict_of(&boot(&tmp, &initramfs, &[]));
    assert_eq!(v["exit_status"], 125, "{v:#}");
    assert_eq!(v["setup_error"]["stage"], "mounts", "{v:#}");
    let msg = v["setup_error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("mount -t 9p absent"), "{v:#}");
}

/// Outside a VM, `sandbox-init run SPEC.json` runs a specification on the host with the namespace backend:
/// the same specification-to-sandbox mapping and verdict line, without booting anything.
#[test]
fn the_agent_runs_a_spec_on_the_host_too() {
    let tmp = TempDir::with_mode("guest-hostrun", 0o755);
    let mut spec = RunSpec::new("sh");
    spec.args = vec![
        "-c".into(),
        r#"echo "pid=$$ host=$(cat /proc/sys/kernel/hostname) x=$X cwd=$PWD"; exit 4"#.into(),
    ];
    spec.env.insert("X".into(), "y".into());
    spec.cwd = Some("/tmp".into());
    spec.policy = Policy::default().hostname("hostrun");
    let path = tmp.join("spec.json");
    std::fs::write(&path, spec.to_json_line()).unwrap();
    let out = Command::new(&artifacts().agent)
        .arg("run")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("pid=2 host=hostrun x=y cwd=/tmp"),
        "{stdout}\n{stderr}"
    );
    let v = find_verdict(&stdout).unwrap_or_else(|| panic!("no verdict: {stdout}"));
    assert_eq!(v["exit_code"], 4, "{v:#}");
    assert_eq!(v["backend"], "namespace", "{v:#}");
    assert_eq!(v["agent"]["spec_source"], "file", "{v:#}");
}

/// A host that connects and hangs up without sending a specification gets no hung VM: the agent reports
/// the failure (125) on the console and ends the VM even though the control port can no longer take it.
#[test]
fn a_host_that_hangs_up_does_not_keep_the_vm_alive() {
    let tmp = TempDir::with_mode("guest-hangup", 0o755);
    let sock = tmp.join("control.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let qemu = vec![
        "-device".to_string(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!("socket,id=ctl,path={}", sock.display()),
        "-device".into(),
        format!("virtserialport,chardev=ctl,name={CONTROL_PORT}"),
    ];
    let host = std::thread::spawn(move || {
        // Accept QEMU's connection, wait for the agent's READY line, then hang up.
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
        let mut first = String::new();
        let _ = BufReader::new(&stream).read_line(&mut first);
        first
    });
    let initramfs = pack_agent(&artifacts().agent, None, &[]).unwrap();
    let b = boot(&tmp, &initramfs, &qemu);
    let first = host.join().unwrap();
    assert!(first.starts_with(READY_PREFIX), "{first}");
    let v = verdict_of(&b);
    assert_eq!(v["exit_status"], 125, "{v:#}");
    let msg = v["setup_error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("without sending one"), "{v:#}");
}
