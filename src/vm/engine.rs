//! The VM backend, host side: the same run as on the namespace backend, inside a microVM.
//!
//! In order: find the guest kernel, agent and QEMU → pack the agent into an initramfs (once per agent) →
//! turn the run into a [`RunSpec`]: the host's `/usr` and `/etc` (as the host sandbox shows them) and every
//! bind source become read-only or writable virtio-9p shares, the policy's bind sources are rewritten to
//! where the agent mounts them → start QEMU, itself confined in a namespace sandbox when the host allows
//! (it sees only the system, the kernel, the initramfs and the shares; no network), else under `no_new_privs`
//! and our seccomp filter → send the spec on the control port → when QEMU ends, read the agent's verdict.
//! The program's stdout and stderr go from their virtio-serial ports straight into pipes the host reads;
//! the kernel log goes to the serial console, kept apart and shown only when a run fails.

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::control::{ControlState, Stdin, relay_stdin};
use super::drain::{Drained, EndMark, Ended, relay};
use super::error::VmError;
pub(crate) use super::launch::{Engine, Host, Started, VmChannels};
use super::run_spec::guest_spec;
use crate::backend::{BootWatch, Run};
use crate::error::Error;
use crate::namespace::network::DNS_FORWARD;
use crate::namespace::network::passt;
use crate::namespace::network::pasta::Helper;
use crate::namespace::{Launch, sys};
use crate::outcome::{BackendKind, Outcome, SetupFailure, Stage, Status, TimeLimit, VmInfo};
#[cfg(test)]
use crate::policy::Mount;
use crate::policy::{Network, Policy, Publish};
use crate::protocol::GuestNet;
#[cfg(test)]
use crate::protocol::ShareFs;

/// How much of the kernel log is kept for a failed run's verdict.
const CONSOLE_TAIL: usize = 16 * 1024;
/// How long the verdict waits for the output copiers after QEMU ended.
const THREAD_DRAIN: Duration = Duration::from_secs(10);
/// Guest RAM beyond the policy's memory limit: the kernel and the agent.
const GUEST_OVERHEAD_MIB: u64 = 128;

/// Text collected by a reader thread, keeping at most the last `cap` bytes.
#[derive(Clone, Default)]
pub(super) struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    pub(super) fn reader(
        &self,
        mut from: impl Read + Send + 'static,
        cap: usize,
    ) -> JoinHandle<()> {
        let tail = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(&buf[..n]);
                if t.len() > cap {
                    let cut = t.len() - cap;
                    t.drain(..cut);
                }
            }
        })
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// A running VM, host side.
pub(crate) struct VmRun {
    host: Host,
    control: ControlState,
    console: Tail,
    qemu_stderr: Tail,
    threads: Vec<JoinHandle<()>>,
    info: VmInfo,
    fallback_reason: Option<String>,
    boot_limit: Duration,
    /// A root of its own: holds the image's layers in the store until the run ends; its report completes
    /// the guest's (which knows only shares).
    root: Option<crate::namespace::rootfs::Root>,
    /// Whether the program's output left the VM to its last byte.
    drained: Drained,
    /// With `network = "user"`: passt (ended when this is dropped) and the published ports.
    network: Option<(Helper, Vec<Publish>)>,
}

impl std::fmt::Debug for VmRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRun").field("host", &self.host).finish()
    }
}

pub(super) fn is_dev_null(fd: RawFd) -> bool {
    // SAFETY: `fd` stays open for the duration of the call (the caller owns it); ManuallyDrop keeps it so.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let null = std::fs::metadata("/dev/null").ok();
    f.metadata().is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.file_type().is_char_device() && null.is_some_and(|n| n.rdev() == m.rdev())
    })
}

/// A duplicate of `fd` (the host's own stream `inherit` for -1).
pub(super) fn dup(fd: RawFd, inherit: RawFd) -> Result<OwnedFd, VmError> {
    let src = if fd >= 0 { fd } else { inherit };
    // SAFETY: borrowing a descriptor that stays open for this call.
    let b = unsafe { BorrowedFd::borrow_raw(src) };
    b.try_clone_to_owned().map_err(|source| VmError::Dup {
        what: "the run's standard stream",
        fd: src,
        source,
    })
}

/// Writes all of `buf` to a socket with `MSG_NOSIGNAL`: a peer that is gone gives EPIPE, never a SIGPIPE
/// to the caller's process.
pub(super) fn send_all(s: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the socket stays open for the call.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Guest RAM and vCPUs for a policy's limits.
pub(super) fn machine_size(policy: &Policy) -> (u64, u32) {
    let memory_mib = policy
        .limits
        .memory
        .map_or(256, |m| (m >> 20) + GUEST_OVERHEAD_MIB)
        .max(128);
    let cpus = policy
        .limits
        .cpus
        .map_or(1, |c| c.ceil().clamp(1.0, 8.0) as u32);
    (memory_mib, cpus)
}

/// Starts the run in a VM; with a snapshot `cache` directory, restored from (or saved into) the cache ([`super::cold_snapshot`]).
pub(crate) fn spawn(
    launch: &Launch<'_>,
    fallback_reason: Option<String>,
    engine: Engine,
    cache: Option<&Path>,
) -> Result<VmRun, SetupFailure> {
    // The one place where a cold run's errors become the public failure.
    start(launch, fallback_reason, engine, cache).map_err(SetupFailure::from)
}

fn start(
    launch: &Launch<'_>,
    fallback_reason: Option<String>,
    engine: Engine,
    cache: Option<&Path>,
) -> Result<VmRun, VmError> {
    // A root of its own: the image checked out here (its layers held until the run ends), its config
    // applied here; the guest gets the layers as shares.
    let (root, applied) = super::run_spec::on_root(launch)?;
    let on_root = applied.as_ref().map(|a| a.launch(launch));
    let launch = on_root.as_ref().unwrap_or(launch);
    let policy = launch.policy;
    let network = user_network(policy)?;
    let (mut spec, shares) = guest_spec(launch, engine.share_fs(), network.as_ref().map(|n| n.2))?;
    let mark = EndMark::new()?;
    spec.end_mark = Some(mark.hex);
    let (memory_mib, cpus) = machine_size(policy);
    let stdin = launch.stdio[0];
    let with_stdin = !(stdin >= 0 && is_dev_null(stdin));
    // Before the VM starts: a failure here leaves nothing to clean up.
    let stdin_source = if with_stdin {
        Some(dup(stdin, 0)?)
    } else {
        None
    };
    let stdout_target = dup(launch.stdio[1], 1)?;
    let stderr_target = dup(launch.stdio[2], 2)?;

    let boot_limit = engine.boot_limit();
    let deadline = policy.timeout.map(|t| t + boot_limit);
    let (
        Started {
            host,
            channels,
            info,
            snapshot: _,
        },
        save,
    ) = super::cold_snapshot::start(
        engine,
        &shares,
        (memory_mib, cpus),
        with_stdin,
        deadline,
        cache,
        network.as_ref().map(|n| &n.1),
    )?;
    // The VMM holds the socket now; passt ends when the VMM closes it, or with the run.
    let network = network.map(|(helper, _, _)| (helper, policy.publish.clone()));
    let VmChannels {
        console: console_host,
        control: control_host,
        stdin: stdin_host,
        stdout,
        stderr,
        vmm_stderr,
    } = channels;
    let mut threads = Vec::new();
    let drained = Drained::new(2, clone_socket(&control_host, "the control socket")?);
    let mark = Arc::new(mark.bytes);
    for (mut from, target) in [(stdout, stdout_target), (stderr, stderr_target)] {
        let (drained, mark) = (drained.clone(), mark.clone());
        threads.push(std::thread::spawn(move || {
            let mut to = std::fs::File::from(target);
            let ended = relay(&mut from, &mut to, &mark);
            drained.relay_ended(ended == Ended::Mark);
        }));
    }
    let control = ControlState::default();
    // Started with the spec: after the save of a VM being saved, so that no byte of this run's input is in
    // the snapshot (and so in every later run restored from it).
    let mut start_stdin = None;
    if let (Some(source), Some(host)) = (stdin_source, stdin_host) {
        let ready = control.clone();
        start_stdin = Some(move || {
            // Not joined: it may wait on the caller's stream; it ends at that stream's end or QEMU's.
            std::thread::spawn(move || {
                if ready.wait_ready(boot_limit) {
                    let never = AtomicBool::new(false);
                    relay_stdin(Some(source), host, Stdin::Raw, &never);
                }
            });
        });
    }
    // The spec waits in the socket until the agent reads it.
    // The spec is sent by a thread: one larger than the socket's buffer (argv near ARG_MAX) waits for the
    // agent to read it, which happens only after the boot. It ends when the agent has read the spec, or with
    // EPIPE when the VMM is gone (then the run has no verdict). A VM to be saved gets it after the save.
    let control_w = clone_socket(&control_host, "the control socket")?;
    let spec_line = spec.to_json_line().into_bytes();
    let ready = control.clone();
    threads.push(std::thread::spawn(move || {
        super::cold_snapshot::save_then_send(save, &ready, boot_limit, || {
            if let Some(start) = start_stdin {
                start();
            }
            let _ = send_all(&control_w, &spec_line);
        });
    }));
    let console = Tail::default();
    let qemu_stderr = Tail::default();
    threads.push(console.reader(console_host, CONSOLE_TAIL));
    threads.push(qemu_stderr.reader(vmm_stderr, 4096));
    threads.push(control.reader(control_host));
    let run = VmRun {
        host,
        control,
        console,
        qemu_stderr,
        threads,
        info,
        fallback_reason,
        boot_limit,
        root,
        drained,
        network,
    };
    run.watch_boot();
    Ok(run)
}

impl VmRun {
    /// How long the guest may take to boot.
    pub(crate) fn boot_limit(&self) -> Duration {
        self.boot_limit
    }

    /// Kills the VMM when the agent has not said READY within the engine's boot limit.
    fn watch_boot(&self) {
        let limit = self.boot_limit;
        let control = self.control.clone();
        let Ok(pidfd) = self.pidfd().try_clone_to_owned() else {
            return;
        };
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if control.ready() {
                    return;
                }
                // Also stop watching once QEMU has ended.
                let mut pfd = [libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if sys::poll(&mut pfd, 50).unwrap_or(0) > 0 {
                    return;
                }
            }
            let _ = sys::pidfd_signal(&pidfd, libc::SIGKILL);
        });
    }
}

impl Run for VmRun {
    fn pid(&self) -> u32 {
        self.host.pid()
    }

    fn pidfd(&self) -> BorrowedFd<'_> {
        self.host.pidfd()
    }

    /// Signals are not forwarded into the VM yet: only SIGKILL, which ends it.
    fn forwards_signals(&self) -> bool {
        false
    }

    /// A handle that tells when the guest's agent is up.
    fn boot_watch(&self) -> Option<BootWatch> {
        let control = self.control.clone();
        Some(BootWatch::new(move || control.ready()))
    }

    /// Collects QEMU (ended or about to) and reads the agent's verdict.
    fn finish(self: Box<Self>, wall: Duration, host_timeout: bool) -> Result<Outcome, Error> {
        let qemu_status = match self.host {
            Host::Sandboxed(s) => crate::namespace::Started::finish(*s, wall, host_timeout)
                .map(|o| o.status)
                .map_err(|source| Error::Io {
                    what: "waiting for QEMU",
                    source,
                })?,
            Host::Plain(mut c, _) => {
                let st = c.wait().map_err(|source| Error::Io {
                    what: "waiting for QEMU",
                    source,
                })?;
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(c), _) => Status::Exited(c),
                    (_, Some(s)) => Status::Signaled(s),
                    _ => Status::Signaled(libc::SIGKILL),
                }
            }
        };
        // The copiers finish once they have passed on what QEMU left in the sockets; one whose reader does not
        // read (a caller that waits before reading a piped stdout) is left to finish on its own.
        let until = Instant::now() + THREAD_DRAIN;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let mut info = self.info;
        let verdict = self.control.verdict().and_then(|v| {
            // A restored guest's boot was the snapshot's.
            info.boot_ms = v["agent"]["uptime_start_ms"]
                .as_u64()
                .filter(|_| !info.restored);
            Outcome::from_report_json(&v)
        });
        let mut outcome = match verdict {
            // The program ended in time, but its output was still leaving the VM at the deadline: the run
            // as a whole did not end in time, and the caller did not get all of its output.
            Some(o) if host_timeout && !self.drained.complete() => {
                o.with_status(Status::TimedOut(TimeLimit::Wall))
            }
            Some(o) => o,
            None => {
                let console = self.console.text();
                info.console_tail = Some(console.clone());
                let status = if host_timeout {
                    Status::TimedOut(TimeLimit::Wall)
                } else {
                    Status::SetupFailed(
                        VmError::NoVerdict {
                            status: qemu_status,
                            vmm_said: self.qemu_stderr.text(),
                            console: last_lines(&console, 15),
                        }
                        .into(),
                    )
                };
                Outcome::setup_failed(no_failure(), BackendKind::Vm).with_status(status)
            }
        };
        outcome.backend = BackendKind::Vm;
        outcome.usage.wall = wall;
        outcome.fallback_reason = self.fallback_reason;
        super::run_spec::report_root(&mut outcome, self.root.as_ref());
        if let Some((helper, published)) = &self.network {
            report_network(&mut outcome.enforced.network, helper, published);
        }
        outcome.vm = Some(info);
        Ok(outcome)
    }

    /// Kills QEMU and reaps it.
    fn abort(self: Box<Self>) {
        self.host.abort();
    }
}

/// A VM of its own with `network = "user"`: passt started (its socket's other end is for the VMM), and the
/// link the guest configures. None for the other modes.
pub(super) fn user_network(
    policy: &Policy,
) -> Result<Option<(Helper, OwnedFd, GuestNet)>, VmError> {
    if policy.network != Network::User {
        return Ok(None);
    }
    let link = passt::host_link().map_err(VmError::Confine)?;
    let (helper, socket) = start_passt(&link, &policy.publish)?;
    Ok(Some((helper, socket, guest_net(&link))))
}

/// passt for a guest on `link`, publishing `publish`: its helper (passt ends when it is dropped) and the
/// VMM's end of its socket.
pub(super) fn start_passt(
    link: &passt::Link,
    publish: &[Publish],
) -> Result<(Helper, OwnedFd), VmError> {
    let (ours, theirs) = super::launch::socket_pair()?;
    let helper = passt::start(link, publish, theirs).map_err(VmError::Confine)?;
    Ok((helper, OwnedFd::from(ours)))
}

/// What the guest's agent configures `eth0` with.
pub(super) fn guest_net(link: &passt::Link) -> GuestNet {
    GuestNet {
        address: link.address,
        prefix: link.prefix,
        gateway: link.gateway,
    }
}

/// What the verdict's network says of a VM's passt (the guest reports the mode; the stack is here).
pub(super) fn report_network(
    n: &mut crate::outcome::NetworkEnforced,
    helper: &Helper,
    published: &[Publish],
) {
    n.helper = Some(format!("passt {}", helper.program.display()));
    n.dns_forward = Some(DNS_FORWARD.to_string());
    n.published = published.to_vec();
}

fn clone_socket(s: &UnixStream, what: &'static str) -> Result<UnixStream, VmError> {
    s.try_clone().map_err(|source| VmError::Dup {
        what,
        fd: s.as_raw_fd(),
        source,
    })
}

/// The placeholder failure of an outcome whose status is set right after.
pub(super) fn no_failure() -> SetupFailure {
    SetupFailure {
        stage: Stage::Vm,
        errno: None,
        message: String::new(),
    }
}

pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests;
