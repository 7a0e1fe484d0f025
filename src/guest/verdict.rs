//! The verdict line, and how the agent ends: every path, a panic included, ends in one verdict and a reboot
//! that stops the VM.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::protocol::{AgentInfo, CONTROL_PORT, VERDICT_PREFIX, verdict_json};
use crate::{BackendKind, Outcome, SetupFailure, Stage};

/// The control port's descriptor, for the panic hook (-1: none).
static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);

/// Guest uptime in milliseconds, from `/proc/uptime`.
pub fn uptime_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// The verdict of a failure of the agent itself (exit status 125).
pub fn agent_failure(stage: Stage, errno: Option<i32>, message: String) -> Outcome {
    Outcome::setup_failed(
        SetupFailure {
            stage,
            errno,
            message: format!("guest agent: {message}"),
        },
        BackendKind::Vm,
    )
}

/// Writes a line to the console (standard error), ignoring failures: PID 1 must not panic on a lost console.
pub(crate) fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.write_all(b"\n");
}

/// Remembers the control port for the panic hook.
pub(crate) fn set_control(fd: Option<std::os::fd::RawFd>) {
    CONTROL_FD.store(fd.unwrap_or(-1), Ordering::SeqCst);
}

/// Sends the verdict line on the console (standard output, after a newline in case the program's output
/// did not end with one) and on the control port when there is one. The port write gives up after
/// [`PORT_WRITE_LIMIT`]: a host that stopped reading must not keep the VM alive.
pub(crate) fn send(v: &serde_json::Value) {
    let line = format!("{VERDICT_PREFIX}{v}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("\n{line}").as_bytes());
    let _ = out.flush();
    let fd = CONTROL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the descriptor belongs to the control port File that the agent keeps open until it ends
        // the VM; it is only borrowed for this write.
        let port = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(e) = port_write(port, line.as_bytes()) {
            say(&format!(
                "sandbox-init: the verdict could not be sent on {}: {e}",
                CONTROL_PORT
            ));
        }
    }
}

/// Writes a whole line to a virtio port, waiting at most [`PORT_WRITE_LIMIT`] for the host to take it (a
/// port write blocks while the host end is not connected). The descriptor's flags are restored after.
pub(crate) fn port_write(port: BorrowedFd<'_>, buf: &[u8]) -> nix::Result<()> {
    nonblocking_write(port, buf, Some(PORT_WRITE_LIMIT), false)
}

/// Writes all of `buf` to a virtio port for as long as the host end stays connected, within `limit` if
/// any: a host that reads slowly is waited for, one that hung up gets `EPIPE` (a blocking write would wait
/// for it forever), and `ETIMEDOUT` once the limit passed.
pub(crate) fn port_write_until(
    port: BorrowedFd<'_>,
    buf: &[u8],
    limit: Option<Duration>,
) -> nix::Result<()> {
    nonblocking_write(port, buf, limit, true)
}

/// [`write_within`] on the port made non-blocking for the call; its flags are restored after.
fn nonblocking_write(
    port: BorrowedFd<'_>,
    buf: &[u8],
    limit: Option<Duration>,
    while_connected: bool,
) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(port, FcntlArg::F_GETFL)?);
    fcntl(port, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let written = write_within(port, buf, limit, while_connected);
    let restored = fcntl(port, FcntlArg::F_SETFL(flags));
    written.and(restored.map(drop))
}

/// Whether `port` has something to read (or its end) within `limit` (none: waits as long as it takes).
pub(crate) fn readable_within(port: &impl AsFd, limit: Option<Duration>) -> bool {
    let start = Instant::now();
    loop {
        let ms = match limit {
            Some(l) => {
                let left = l.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return false;
                }
                left.as_millis().clamp(1, 1000) as u16
            }
            None => 1000,
        };
        let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return true,
        }
    }
}

/// How long the agent tries to hand the verdict to a control port whose host end does not read.
pub const PORT_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// Writes the whole buffer, retrying short writes and interruptions; on a non-blocking descriptor it waits
/// for room at most `limit` in total (none: as long as it takes), and with `while_connected`, only while the
/// port's host end is connected.
fn write_within(
    fd: BorrowedFd<'_>,
    mut buf: &[u8],
    limit: Option<Duration>,
    while_connected: bool,
) -> nix::Result<()> {
    let start = Instant::now();
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = match limit {
                    Some(limit) => limit.saturating_sub(start.elapsed()),
                    None => Duration::from_secs(1),
                };
                if left.is_zero() {
                    return Err(Errno::ETIMEDOUT);
                }
                let ms = left.as_millis().min(1000) as u16;
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e),
                }
                let hung_up = fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLHUP));
                if while_connected && hung_up {
                    return Err(Errno::EPIPE);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends the VM: flush the filesystems and the console, then `reboot(RB_AUTOBOOT)`, which with `reboot=k` on
/// the kernel command line resets through the i8042 controller, and a `-no-reboot` VMM exits. Should the
/// reboot fail, PID 1 exits, the kernel panics, and `panic=-1` reboots at once.
pub(crate) fn end_vm() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::termios::tcdrain(std::io::stdout().as_fd());
    let _ = nix::sys::termios::tcdrain(std::io::stderr().as_fd());
    // SAFETY: reboot(2) takes no pointers; with RB_AUTOBOOT it does not return on success.
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    say(&format!(
        "sandbox-init: reboot(RB_AUTOBOOT) returned {rc} ({}); exiting PID 1 instead",
        std::io::Error::last_os_error()
    ));
    std::process::exit(125)
}

/// A panic becomes a verdict (exit status 125) and, in PID 1, the end of the VM: a PID 1 that unwound and
/// exited would panic the kernel without telling the host why.
pub(crate) fn install_panic_hook(pid1: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let message = format!("internal error (panic): {info}");
        say(&format!("sandbox-init: {message}"));
        let outcome = agent_failure(Stage::Prepare, None, message);
        send(&verdict_json(
            &outcome,
            &AgentInfo {
                version: super::VERSION,
                uptime_end_ms: uptime_ms(),
                ..AgentInfo::default()
            },
        ));
        if pid1 {
            end_vm();
        }
        std::process::exit(125);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use crate::protocol::find_verdict;

    #[test]
    fn verdict_line_round_trips() {
        let mut o = agent_failure(Stage::Mounts, Some(19), "mount failed".into());
        let v = verdict_json(&o, &AgentInfo::default());
        assert_eq!(v["exit_status"], 125);
        assert_eq!(v["status"], "setup_failed");
        assert_eq!(v["backend"], "vm");
        assert_eq!(v["setup_error"]["errno"], 19);
        let console = format!(
            "[    0.9] some kernel line\nprogram output{VERDICT_PREFIX}{v}\nreboot: Restarting system\n"
        );
        assert_eq!(find_verdict(&console).unwrap(), v);
        o.status = Status::Exited(7);
        let v = verdict_json(&o, &AgentInfo::default());
        assert_eq!(v["exit_status"], 7);
        assert_eq!(v["exit_code"], 7);
        assert!(find_verdict("no verdict here\nSANDBOX-VERDICT {broken").is_none());
    }
}
