//! The guest agent `sandbox-init`: PID 1 of the sandbox microVM.
//!
//! As PID 1, in order: leave the initramfs root (so the sandboxes' `pivot_root` works) → mount proc, sysfs,
//! devtmpfs (+ devpts, shm), cgroup2 (cpu, memory, pids enabled for children), tmpfs on `/tmp` and `/run` →
//! find the named virtio-serial ports ([`Channels`]) → read the [`RunSpec`] from the `sandbox.control` port,
//! else from `/sandbox/spec.json` in the initramfs → mount its shares (9p or virtio-fs) and create its links →
//! run the program with the library's [`Sandbox`](crate::Sandbox) on the namespace backend, so cgroups,
//! seccomp, landlock and namespaces apply inside the guest exactly as on a host → send the verdict line
//! (`SANDBOX-VERDICT {json}`, see [`verdict_json`]) on the console and the control port → write the run's end
//! mark on the output ports and wait until the host relayed them ([`RunSpec::end_mark`]) → `sync` and
//! `reboot(RB_AUTOBOOT)`, which ends a `-no-reboot` VM.
//!
//! The agent never panics or hangs on its own account: every failure becomes a verdict (exit status 125 for
//! the agent or sandbox, 126 not executable, 127 not found), and a panic hook turns a bug into one too.
//!
//! Not as PID 1, `sandbox-init run SPEC.json` runs a specification on the host (shares and links are
//! skipped) and prints the verdict: a way to try a specification without a VM.

pub(crate) mod entropy;
mod mounts;
mod ports;
mod serve;
mod session;
mod verdict;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;

pub use ports::Channels;
pub use verdict::{agent_failure, uptime_ms};

use crate::protocol::{
    AgentInfo, CONTROL_PORT, DRAINED_LINE, GuestNet, PING_LINE, READY_PREFIX, RunSpec, SPEC_PATH,
    parse_hex, verdict_json,
};
use crate::{Backend, BackendKind, Outcome, Sandbox, Stage, Stdio};
use verdict::say;

/// The agent's version, sent with every verdict.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The largest specification the agent reads.
const MAX_SPEC: u64 = 16 << 20;

/// Errors of the agent itself, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A mount failed.
    #[error("mount -t {fstype} {device} {target:?} (options {options:?}) failed: {errno}{hint}")]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Source (device, share tag).
        device: String,
        /// Mount point.
        target: PathBuf,
        /// Filesystem options.
        options: String,
        /// Why.
        errno: Errno,
        /// What to check.
        hint: &'static str,
    },
    /// A directory or link could not be created.
    #[error("cannot create {path:?}: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A share's mount point passes through a symbolic link.
    #[error(
        "share mount point {path:?} resolves to {real:?}: mount points must not pass through links"
    )]
    Symlinked {
        /// The mount point as given.
        path: PathBuf,
        /// Where it leads.
        real: PathBuf,
    },
    /// Leaving the initramfs root failed.
    #[error("leaving the initramfs root failed at `{step}`: {errno}")]
    LeaveRootfs {
        /// The failing step.
        step: &'static str,
        /// Why.
        errno: Errno,
    },
    /// A virtio-serial port could not be opened.
    #[error("cannot open virtio port {name} ({path:?}): {source}")]
    Port {
        /// The port's name.
        name: String,
        /// Its device.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Ports the VMM announced (`sandbox.ports=` on the kernel command line) never appeared.
    #[error(
        "the VMM announced virtio ports that did not appear within {waited:?}: {}: the guest is starved or its virtio-serial device broken",
        .missing.join(", ")
    )]
    PortsMissing {
        /// The ports still missing.
        missing: Vec<String>,
        /// How long the agent waited.
        waited: std::time::Duration,
    },
    /// No specification arrived.
    #[error("no run specification: {0}")]
    NoSpec(String),
    /// The specification is not valid.
    #[error("the run specification from {from} is invalid: {message}")]
    BadSpec {
        /// Where it came from.
        from: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The sandbox API refused the run before building anything (an invalid policy).
    #[error("{0}")]
    Sandbox(#[from] crate::Error),
    /// This guest was restored from a snapshot and could not reseed its random generator.
    #[error(
        "this guest was restored from a snapshot and could not reseed its random generator ({0}), so it \
         would draw the same random numbers as every guest restored from that snapshot: it runs nothing \
         (delete the snapshot cache, or turn snapshots off: --vm-snapshots off, SnapshotCache::Off)"
    )]
    Unseeded(String),
    /// The VM's network device could not be configured (`network = "user"`).
    #[error(
        "configuring the guest's network ({step}) failed: {}; the VM needs its virtio-net device (the QEMU \
         engine gives it one for network = \"user\", and the guest kernel needs CONFIG_VIRTIO_NET)",
        std::io::Error::from_raw_os_error(*errno)
    )]
    Network {
        /// The step that failed.
        step: &'static str,
        /// Why.
        errno: i32,
    },
}

impl GuestError {
    /// The construction stage to report.
    pub fn stage(&self) -> Stage {
        match self {
            GuestError::Mount { .. }
            | GuestError::Create { .. }
            | GuestError::Symlinked { .. }
            | GuestError::LeaveRootfs { .. } => Stage::Mounts,
            GuestError::Network { .. } => Stage::Network,
            _ => Stage::Prepare,
        }
    }

    /// The OS error number, when a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            GuestError::Mount { errno, .. } | GuestError::LeaveRootfs { errno, .. } => {
                Some(*errno as i32)
            }
            GuestError::Network { errno, .. } => Some(*errno),
            GuestError::Create { source, .. } | GuestError::Port { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    /// The verdict of this failure (exit status 125).
    pub fn into_outcome(self) -> Outcome {
        agent_failure(self.stage(), self.errno(), self.to_string())
    }
}

/// The agent's entry point (the `sandbox-init` binary calls only this).
pub fn main() -> ! {
    let pid1 = std::process::id() == 1;
    verdict::install_panic_hook(pid1);
    if pid1 {
        init_main()
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["run", path] => host_run(Path::new(path)),
        // The same static binary is the builtin engine's VMM process on the host.
        ["vmm", config] => sandkasten_vmm::process::main(config),
        // And the keeper of a VM session that outlives its creator (descriptors 3-6 from the creator).
        ["keep-session"] => crate::vm::keeper::main(),
        ["--version"] => {
            println!("sandbox-init {VERSION}");
            std::process::exit(0)
        }
        _ => {
            say("usage: sandbox-init (as PID 1 of the sandbox VM)\n       \
                 sandbox-init run SPEC.json   (run a specification here, without shares or links)\n       \
                 sandbox-init vmm CONFIG-JSON (the builtin engine's VMM process, started by the host)\n       \
                 sandbox-init --version");
            std::process::exit(125)
        }
    }
}

/// PID 1: boot the guest, run the specification (or serve one run after another), report, end the VM.
fn init_main() -> ! {
    let mut info = AgentInfo {
        version: VERSION,
        ..AgentInfo::default()
    };
    // Held until the VM ends: the verdict goes back through it.
    let mut control = None;
    let mut drain = None;
    let outcome = match boot_and_run(&mut info, &mut control, &mut drain) {
        Ok(Some(o)) => o,
        // Served runs ended because the host closed the control port: every verdict is sent.
        Ok(None) => {
            drop(control);
            verdict::end_vm()
        }
        Err(e) => {
            say(&format!("sandbox-init: {e}"));
            e.into_outcome()
        }
    };
    let outcome = match (drain, &control) {
        (Some(drain), Some(control)) => drain.finish(control, outcome),
        _ => outcome,
    };
    info.uptime_end_ms = uptime_ms();
    verdict::send(&verdict_json(&outcome, &info));
    drop(control);
    verdict::end_vm()
}

/// A one-shot run's output ports and its end mark ([`RunSpec::end_mark`]), kept for after the run.
struct Drain {
    mark: Vec<u8>,
    ports: Vec<std::fs::File>,
    /// The run's time limit, counted from before its shares were mounted (so a little early).
    deadline: Option<Instant>,
}

impl Drain {
    /// The ports of `channels` to mark after a run of `spec`, when it has an end mark.
    fn of(spec: &RunSpec, channels: &Channels) -> Option<Drain> {
        let mark = crate::protocol::end_mark_bytes(spec.end_mark.as_deref()?);
        let ports = [&channels.stdout, &channels.stderr]
            .into_iter()
            .flatten()
            .filter_map(|f| f.try_clone().ok())
            .collect();
        let deadline = spec.policy.timeout.map(|t| Instant::now() + t);
        Some(Drain {
            mark,
            ports,
            deadline,
        })
    }

    /// Writes the mark after the last byte of each port (the sandbox is gone: nothing else writes there),
    /// then waits until the host says it relayed them all ([`DRAINED_LINE`]) or closes the control port. A
    /// host that reads slowly is waited for, within the run's time limit: output that has not left the VM
    /// when it passes makes the run one that timed out, as a program blocked on a full pipe would on a host.
    fn finish(self, control: &std::fs::File, outcome: Outcome) -> Outcome {
        let left = || {
            self.deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
        };
        for port in &self.ports {
            match verdict::port_write_until(std::os::fd::AsFd::as_fd(port), &self.mark, left()) {
                Ok(()) => {}
                Err(Errno::ETIMEDOUT) => return timed_out(outcome),
                Err(e) => say(&format!(
                    "sandbox-init: writing the end mark on an output port: {e}"
                )),
            }
        }
        let mut lines = std::io::BufReader::new(control);
        loop {
            let waiting = lines.buffer().is_empty();
            if waiting && !verdict::readable_within(control, left()) {
                return timed_out(outcome);
            }
            match read_line(&mut lines) {
                Ok(line) if line == DRAINED_LINE.as_bytes() => return outcome,
                Ok(_) => {}
                Err(_) => return outcome,
            }
        }
    }
}

/// A run whose output did not leave the VM within its time limit.
fn timed_out(outcome: Outcome) -> Outcome {
    say("sandbox-init: the run's output had not left the VM when its time limit passed");
    outcome.with_status(crate::Status::TimedOut(crate::outcome::TimeLimit::Wall))
}

/// Boots, then runs the first specification; a served one (`serve`) is followed by more until the host
/// closes the control port (`Ok(None)`).
fn boot_and_run(
    info: &mut AgentInfo,
    control: &mut Option<std::fs::File>,
    drain: &mut Option<Drain>,
) -> Result<Option<Outcome>, GuestError> {
    mounts::leave_rootfs()?;
    let mounted = mounts::mount_system();
    mounts::ensure_stdio();
    raise_limits();
    info.warnings = mounted?;
    info.uptime_start_ms = uptime_ms();
    say(&format!(
        "sandbox-init {VERSION}: PID 1, guest uptime {:.3} s",
        info.uptime_start_ms.unwrap_or(0) as f64 / 1000.0
    ));
    for w in &info.warnings {
        say(&format!("sandbox-init: warning: {w}"));
    }

    let ports = ports::discover()?;
    ports::link_by_name(&ports);
    let mut channels = Channels::open(&ports)?;
    *control = channels.control.take();
    verdict::set_control(control.as_ref().map(|f| f.as_raw_fd()));

    let Some(port) = control.as_ref() else {
        info.spec_source = Some("initramfs");
        let spec = parse_spec(&read_file(Path::new(SPEC_PATH))?, "initramfs")?;
        return prepare_and_run(&spec, channels).map(Some);
    };
    let ready = serde_json::json!({"version": VERSION, "uptime_ms": info.uptime_start_ms});
    // The host end must be connected from the start: a read from an unconnected port ends at once.
    if let Err(e) = verdict::port_write(
        std::os::fd::AsFd::as_fd(port),
        format!("{READY_PREFIX}{ready}\n").as_bytes(),
    ) {
        say(&format!(
            "sandbox-init: cannot announce readiness on {CONTROL_PORT}: {e}"
        ));
    }
    info.spec_source = Some("control_port");
    let mut server = serve::Server::default();
    let mut lines = std::io::BufReader::with_capacity(64 << 10, port);
    // Set when a ping's seed could not reseed the random generator: this guest, restored from a snapshot,
    // would draw the same numbers as every other guest restored from it, so it runs nothing.
    let mut unseeded: Option<String> = None;
    loop {
        let line = match read_line(&mut lines) {
            Ok(line) => line,
            Err(_) if server.served() > 0 => return Ok(None),
            Err(e) => return Err(e),
        };
        // A host that restored this VM from a snapshot taken after READY asks whether it runs.
        if let Some(rest) = line.strip_prefix(PING_LINE.as_bytes())
            && (rest.is_empty() || rest.starts_with(b" "))
        {
            let seed = std::str::from_utf8(rest).ok().and_then(parse_hex);
            let reseeded = match seed.as_deref().map(entropy::reseed) {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    say(&format!(
                        "sandbox-init: reseeding the random generator: {e}"
                    ));
                    unseeded = Some(e.to_string());
                    false
                }
                None => false,
            };
            let ready = serde_json::json!({"version": VERSION, "uptime_ms": uptime_ms(),
                "pong": true, "reseeded": reseeded});
            let _ = verdict::port_write(
                std::os::fd::AsFd::as_fd(port),
                format!("{READY_PREFIX}{ready}\n").as_bytes(),
            );
            continue;
        }
        if let Some(why) = &unseeded {
            let e = GuestError::Unseeded(why.clone());
            verdict::send(&verdict_json(&e.into_outcome(), info));
            continue;
        }
        let spec = match parse_spec(&line, "control_port") {
            Ok(spec) if spec.session && server.served() == 0 => {
                return session::serve(&spec, &channels, &mut lines);
            }
            Ok(spec) if spec.serve => spec,
            Ok(spec) if server.served() == 0 => {
                *drain = Drain::of(&spec, &channels);
                return prepare_and_run(&spec, channels).map(Some);
            }
            Ok(_) => {
                let e = GuestError::BadSpec {
                    from: "control_port",
                    message: "a warm VM serves only served runs (`serve`)".into(),
                };
                verdict::send(&verdict_json(&e.into_outcome(), info));
                continue;
            }
            Err(e) => {
                verdict::send(&verdict_json(&e.into_outcome(), info));
                continue;
            }
        };
        let started = uptime_ms();
        let mut outcome = server.run(&spec, &channels).unwrap_or_else(|e| {
            say(&format!("sandbox-init: {e}"));
            e.into_outcome()
        });
        outcome.backend = BackendKind::Vm;
        let mut run_info = info.clone();
        run_info.uptime_start_ms = started;
        run_info.uptime_end_ms = uptime_ms();
        verdict::send(&verdict_json(&outcome, &run_info));
    }
}

/// Raises the hard limits on processes and open files that every process of the guest inherits. The kernel
/// derives the process limit from the guest's small RAM (below a thousand in 256 MiB), and a sandbox cannot
/// raise a hard limit inside its user namespace: a policy asking for `nproc = 1024` (what podman asks for)
/// would fail where the host allows it. The sandbox's own limits are set from the policy, as on a host.
fn raise_limits() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    for (resource, hard) in [
        (Resource::RLIMIT_NPROC, libc::RLIM_INFINITY),
        (Resource::RLIMIT_NOFILE, nr_open),
    ] {
        if let Ok((soft, _)) = getrlimit(resource)
            && let Err(e) = setrlimit(resource, soft, hard)
        {
            say(&format!(
                "sandbox-init: raising the {resource:?} hard limit: {e}"
            ));
        }
    }
}

fn parse_spec(bytes: &[u8], from: &'static str) -> Result<RunSpec, GuestError> {
    RunSpec::from_json(bytes)
        .and_then(|s| s.validate().map(|()| s))
        .map_err(|message| GuestError::BadSpec { from, message })
}

/// A one-shot run: its shares and links, then the program.
fn prepare_and_run(spec: &RunSpec, channels: Channels) -> Result<Outcome, GuestError> {
    mounts::mount_shares(&spec.shares)?;
    mounts::make_links(&spec.links)?;
    if let Some(net) = &spec.net {
        network(net)?;
    }
    let mut outcome = run(spec, channels)?;
    outcome.backend = BackendKind::Vm;
    Ok(outcome)
}

/// The guest's network for `network = "user"`: loopback up (the sandbox shares the guest's network
/// namespace then, [`crate::namespace::Launch::new_netns`]), `eth0` (the virtio-net device whose frames go to
/// passt on the host) with the host's address and prefix, up, and the default route through the gateway,
/// where passt answers.
fn network(net: &GuestNet) -> Result<(), GuestError> {
    use crate::namespace::sys;
    let fail = |step| move |errno| GuestError::Network { step, errno };
    sys::interface_up(c"lo").map_err(fail("bringing lo up"))?;
    sys::interface_ipv4(c"eth0", net.address, net.prefix)
        .map_err(|(step, errno)| GuestError::Network { step, errno })?;
    // A gratuitous ARP when eth0 comes up: passt learns the guest's MAC address from the first frame the
    // guest sends, and until then it cannot deliver a published port's connection to a program that only
    // listens. (QEMU's device has no link-status feature, so the link is up at once and the ARP goes out.)
    std::fs::write("/proc/sys/net/ipv4/conf/eth0/arp_notify", "1").map_err(|e| {
        GuestError::Network {
            step: "writing /proc/sys/net/ipv4/conf/eth0/arp_notify",
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    })?;
    sys::interface_up(c"eth0").map_err(fail("bringing eth0 up"))?;
    sys::default_route(net.gateway).map_err(fail("ioctl(SIOCADDRT) for the default route"))
}

/// Runs the specification with the namespace backend and the given channels; stdout and stderr default to
/// the agent's own (the console), stdin to `/dev/null`.
pub fn run(spec: &RunSpec, channels: Channels) -> Result<Outcome, GuestError> {
    let mut cmd = sandbox_for(spec);
    pvm_env(&mut cmd, spec);
    cmd.stdin(channels.stdin.map_or(Stdio::Null, Stdio::from));
    if let Some(f) = channels.stdout {
        cmd.stdout(Stdio::from(f));
    }
    if let Some(f) = channels.stderr {
        cmd.stderr(Stdio::from(f));
    }
    clear_vector_registers();
    Ok(cmd.status()?)
}

/// On PVM the kernel gives the agent `GLIBC_TUNABLES` ([`crate::vm::cmdline::PVM_CMDLINE`]: no AVX in glibc,
/// whose registers the guest kernel cannot preserve there); every program gets it too unless its spec sets one.
pub(crate) fn pvm_env(cmd: &mut crate::Sandbox, spec: &RunSpec) {
    if std::process::id() == 1
        && let Ok(v) = std::env::var("GLIBC_TUNABLES")
        && !spec.env.contains_key("GLIBC_TUNABLES")
    {
        cmd.env("GLIBC_TUNABLES", v);
    }
}

/// Zeroes the AVX registers just before a run's program is started. On PVM the guest kernel saves and restores
/// only the SSE part of each process's registers ([`crate::vm::cmdline::PVM_CMDLINE`]), so what a program left
/// in the upper halves of ymm0-15 when it was killed would otherwise still be there for the next run's program
/// to read. Between this and the program's start only the agent runs, and it uses no AVX (glibc is tuned
/// without it there). Elsewhere the kernel keeps each process's registers and this only clears the agent's.
pub(crate) fn clear_vector_registers() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU and the kernel support AVX (checked just above), which is all `zero_avx` requires.
        unsafe { zero_avx() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn zero_avx() {
    std::arch::x86_64::_mm256_zeroall();
}

/// Reads one line (the specification) from the control port. Buffered: the host sends nothing after it.
/// Reads one line from the control port. The reader lives as long as the port: what the host sent after a
/// line (a ping, then at once a specification) waits in its buffer for the next call.
fn read_line(reader: &mut std::io::BufReader<&std::fs::File>) -> Result<Vec<u8>, GuestError> {
    use std::io::{BufRead, Read};
    let mut line = Vec::new();
    loop {
        match reader
            .by_ref()
            .take(MAX_SPEC + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(GuestError::NoSpec(format!(
                    "reading {CONTROL_PORT} failed: {e}"
                )));
            }
        }
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() as u64 > MAX_SPEC {
        return Err(GuestError::NoSpec(format!(
            "the specification on {CONTROL_PORT} exceeds {MAX_SPEC} bytes"
        )));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(GuestError::NoSpec(format!(
            "the host closed {CONTROL_PORT} without sending one"
        )));
    }
    Ok(line)
}

fn read_file(path: &Path) -> Result<Vec<u8>, GuestError> {
    let f = std::fs::File::open(path).map_err(|e| {
        GuestError::NoSpec(format!(
            "there is no {CONTROL_PORT} port and {path:?} cannot be read: {e}"
        ))
    })?;
    let mut buf = Vec::new();
    f.take(MAX_SPEC + 1)
        .read_to_end(&mut buf)
        .map_err(|e| GuestError::NoSpec(format!("reading {path:?} failed: {e}")))?;
    if buf.len() as u64 > MAX_SPEC {
        return Err(GuestError::NoSpec(format!(
            "{path:?} exceeds {MAX_SPEC} bytes"
        )));
    }
    Ok(buf)
}

/// `sandbox-init run SPEC.json` on a host: the same specification, verdict and exit status, without the
/// guest's mounts, shares, links or reboot.
fn host_run(path: &Path) -> ! {
    let mut info = AgentInfo {
        version: VERSION,
        spec_source: Some("file"),
        ..AgentInfo::default()
    };
    let result = read_file(path).and_then(|bytes| {
        let spec = RunSpec::from_json(&bytes)
            .and_then(|s| s.validate().map(|()| s))
            .map_err(|message| GuestError::BadSpec {
                from: "file",
                message,
            })?;
        if !spec.shares.is_empty() || !spec.links.is_empty() {
            info.warnings
                .push("shares and links are only set up in the guest; skipped".into());
        }
        run(&spec, Channels::default())
    });
    let outcome = result.unwrap_or_else(|e| {
        say(&format!("sandbox-init: {e}"));
        e.into_outcome()
    });
    verdict::send(&verdict_json(&outcome, &info));
    std::process::exit(outcome.status.exit_code())
}

/// The sandbox a specification describes, on the namespace backend (inside the guest there is no other), with
/// the streams left to the caller.
pub(crate) fn sandbox_for(spec: &RunSpec) -> Sandbox {
    let mut cmd = Sandbox::new(&spec.program);
    if let Some(a) = &spec.arg0 {
        cmd.arg0(a);
    }
    cmd.args(&spec.args)
        .policy(spec.policy.clone())
        .backend(Backend::Namespace);
    // The guest's full id range only as PID 1 of our guest: `sandbox-init run SPEC` on a host maps ids as any
    // host caller does (an unprivileged one cannot write the guest's map).
    if std::process::id() == 1 {
        cmd.in_guest();
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}
