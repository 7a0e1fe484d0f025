//! The QEMU engine's side of a snapshot: QEMU's machine protocol (QMP, one JSON object per line) on a
//! socket pair QEMU got as its monitor (`-chardev socket,fd=N -mon mode=control`).
//!
//! A save stops the guest at READY, hands QEMU the snapshot file (`getfd`, the descriptor passed with
//! `SCM_RIGHTS`), migrates the machine's state into it (`migrate fd:NAME`: RAM with its zero pages as
//! markers, the devices), and lets the guest go on with its run. A restore is a QEMU started with
//! `-incoming fd:N` (the file): once the state is loaded (`query-status` leaves `inmigrate`), `cont`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::SnapshotError;
use crate::vmm::snapshot::SaveReport;

/// The name the snapshot file's descriptor gets in QEMU (`getfd`).
const FD_NAME: &str = "snapshot";
/// The migration's bandwidth limit for a save, bytes per second: none in practice.
const MAX_BANDWIDTH: u64 = 1 << 40;
/// How often the state of a migration is asked for.
const POLL: Duration = Duration::from_millis(2);

/// A QMP connection, past its greeting and capabilities negotiation.
pub(super) struct Qmp<'a> {
    r: &'a mut BufReader<UnixStream>,
    deadline: Instant,
}

impl<'a> Qmp<'a> {
    /// Reads the greeting and leaves the negotiation mode, within `limit` for everything this connection does.
    pub(super) fn connect(
        r: &'a mut BufReader<UnixStream>,
        limit: Duration,
    ) -> Result<Qmp<'a>, SnapshotError> {
        let mut q = Qmp {
            r,
            deadline: Instant::now() + limit,
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(unexpected("greeting", &greeting));
        }
        q.execute("qmp_capabilities", json!({}), None)?;
        Ok(q)
    }

    /// One line of JSON within the deadline.
    fn line(&mut self) -> Result<Value, SnapshotError> {
        let limit = self.deadline.saturating_duration_since(Instant::now());
        self.r
            .get_ref()
            .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            .map_err(SnapshotError::Timeout)?;
        let mut line = String::new();
        match self.r.by_ref().take(1 << 20).read_line(&mut line) {
            Ok(0) => Err(SnapshotError::Closed),
            Ok(_) => serde_json::from_str(&line).map_err(|_| SnapshotError::Unexpected {
                what: "QMP line",
                line: line.trim().into(),
            }),
            Err(source) => Err(SnapshotError::NoAnswer { limit, source }),
        }
    }

    /// Runs a command (with `fd` passed alongside, for `getfd`) and returns its `return` value; events
    /// that arrive meanwhile are skipped, an `error` is the command's refusal.
    fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, SnapshotError> {
        let mut text = json!({"execute": command, "arguments": arguments}).to_string();
        text.push('\n');
        let socket = self.r.get_ref();
        match fd {
            None => (&*socket).write_all(text.as_bytes()),
            Some(fd) => send_with_fd(socket, text.as_bytes(), fd),
        }
        .map_err(SnapshotError::Ask)?;
        loop {
            let reply = self.line()?;
            if let Some(v) = reply.get("return") {
                return Ok(v.clone());
            }
            if let Some(e) = reply.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(SnapshotError::Refused(format!("QEMU's {command}: {desc}")));
            }
            if reply.get("event").is_none() {
                return Err(unexpected("QMP reply", &reply));
            }
        }
    }
}

fn unexpected(what: &'static str, v: &Value) -> SnapshotError {
    SnapshotError::Unexpected {
        what,
        line: v.to_string(),
    }
}

/// Writes `data` with `fd` as `SCM_RIGHTS` (the whole command goes in one message: QEMU takes the
/// descriptor with the bytes it arrived with).
fn send_with_fd(socket: &UnixStream, data: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(data)];
    let n = sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if n < data.len() {
        (&*socket).write_all(&data[n..])?;
    }
    Ok(())
}

/// A restored QEMU: waits until it has loaded the snapshot (it started with `-incoming fd:N`), then lets
/// the guest run.
pub(super) fn resume(r: &mut BufReader<UnixStream>, limit: Duration) -> Result<(), SnapshotError> {
    let mut q = Qmp::connect(r, limit)?;
    loop {
        let status = q.execute("query-status", json!({}), None)?;
        match status.get("status").and_then(Value::as_str) {
            Some("inmigrate") => std::thread::sleep(POLL),
            Some("paused" | "postmigrate" | "prelaunch") => break,
            // Started by itself (a snapshot of a running guest).
            Some("running") => return Ok(()),
            _ => return Err(unexpected("status after the restore", &status)),
        }
    }
    q.execute("cont", json!({}), None)?;
    Ok(())
}

/// A booted QEMU whose guest is at READY: stops it, migrates its state into `file`, and lets it go on.
pub(super) fn save(
    r: &mut BufReader<UnixStream>,
    file: &File,
    limit: Duration,
) -> Result<SaveReport, SnapshotError> {
    let mut q = Qmp::connect(r, limit)?;
    let paused = Instant::now();
    q.execute("stop", json!({}), None)?;
    let result = (|| {
        q.execute(
            "getfd",
            json!({"fdname": FD_NAME}),
            Some(std::os::fd::AsFd::as_fd(file)),
        )?;
        // QEMU throttles a migration to 128 MiB/s by default (a live migration shares the link with the guest);
        // into a file with the guest stopped, that is just waiting: ~0.35 s for 45 MB.
        q.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": MAX_BANDWIDTH}),
            None,
        )?;
        q.execute("migrate", json!({"uri": format!("fd:{FD_NAME}")}), None)?;
        loop {
            let m = q.execute("query-migrate", json!({}), None)?;
            match m.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(m),
                Some("failed" | "cancelled") => {
                    let why = m
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(SnapshotError::Refused(format!(
                        "QEMU's migration into the snapshot failed: {why}"
                    )));
                }
                _ => std::thread::sleep(POLL),
            }
        }
    })();
    // The guest goes on with its run whether or not the save worked.
    let resumed = q.execute("cont", json!({}), None);
    let m = result?;
    resumed?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let ram = m.get("ram");
    let field = |k: &str| ram.and_then(|r| r.get(k)).and_then(Value::as_u64);
    Ok(SaveReport {
        file_len,
        ram_written: field("normal-bytes").unwrap_or(0),
        state_len: file_len.saturating_sub(field("transferred").unwrap_or(file_len)),
        paused_ms: paused.elapsed().as_millis() as u64,
        refused: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted QEMU: answers each command from `answers` in turn (after a greeting), and records them.
    fn fake(answers: Vec<&'static str>) -> (UnixStream, std::thread::JoinHandle<Vec<String>>) {
        let (host, qemu) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = qemu.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = BufReader::new(qemu);
            let mut seen = Vec::new();
            for a in answers {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    break;
                }
                let v: Value = serde_json::from_str(&l).unwrap();
                seen.push(v["execute"].as_str().unwrap().to_string());
                w.write_all(a.as_bytes()).unwrap();
                w.write_all(b"\n").unwrap();
            }
            seen
        });
        (host, t)
    }

    #[test]
    fn a_restore_waits_for_the_load_then_continues() {
        let (host, t) = fake(vec![
            r#"{"return": {}}"#,
            r#"{"return": {"status": "inmigrate", "running": false}}"#,
            // An event before the answer is skipped.
            "{\"event\": \"MIGRATION\", \"data\": {}}\n{\"return\": {\"status\": \"paused\"}}",
            r#"{"return": {}}"#,
        ]);
        let mut r = BufReader::new(host);
        resume(&mut r, Duration::from_secs(5)).unwrap();
        assert_eq!(
            t.join().unwrap(),
            ["qmp_capabilities", "query-status", "query-status", "cont"]
        );
    }

    #[test]
    fn a_failed_migration_is_reported_and_the_guest_goes_on() {
        let (host, t) = fake(vec![
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"return": {"status": "failed", "error-desc": "disk full"}}"#,
            r#"{"return": {}}"#,
        ]);
        let file = tempfile_in_tmp();
        let mut r = BufReader::new(host);
        let e = save(&mut r, &file, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(
            t.join().unwrap(),
            [
                "qmp_capabilities",
                "stop",
                "getfd",
                "migrate-set-parameters",
                "migrate",
                "query-migrate",
                "cont"
            ]
        );
    }

    #[test]
    fn a_refusal_a_silent_qemu_and_a_closed_one_are_errors() {
        let (host, _t) = fake(vec![
            r#"{"error": {"class": "GenericError", "desc": "nope"}}"#,
        ]);
        let e = resume(&mut BufReader::new(host), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let (host, _qemu) = UnixStream::pair().unwrap();
        let e = resume(&mut BufReader::new(host), Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
        let (host, qemu) = UnixStream::pair().unwrap();
        drop(qemu);
        let e = resume(&mut BufReader::new(host), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    }

    fn tempfile_in_tmp() -> File {
        let p = std::env::temp_dir().join(format!("qmp-test-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }
}
