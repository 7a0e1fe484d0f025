//! `sandbox create`, `start`, `exec`, `stop`, `rm`, `ps`, `logs`: sessions that outlive the command that made
//! them, each test with a state directory of its own (`--state-dir`), every session ended and removed at the
//! end even when an assertion failed ([`Sessions`]' drop).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{TempDir, text};

/// The CLI under test: `SANDBOX_BIN` when the binary was staged elsewhere (unprivileged CI runs), else cargo's.
fn bin() -> PathBuf {
    testkit::binary("SANDBOX_BIN", env!("CARGO_BIN_EXE_sandbox"))
}

/// A state directory, and the clean-up of every session in it.
struct Sessions {
    _dir: TempDir,
    state: PathBuf,
}

impl Sessions {
    fn new(tag: &str) -> Sessions {
        let dir = TempDir::new(tag);
        let state = dir.join("state");
        Sessions { _dir: dir, state }
    }

    /// `sandbox SUB --state-dir STATE ARGS...`, run from `/`.
    fn command(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg(sub)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, sub: &str, args: &[&str]) -> Output {
        self.command(sub, args).output().expect("the CLI runs")
    }

    /// Runs a subcommand that must succeed; its stdout.
    fn ok(&self, sub: &str, args: &[&str]) -> String {
        let out = self.run(sub, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "sandbox {sub} {args:?}: stdout {:?}, stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a subcommand that must fail as the sandbox (125, one line on stderr); that line.
    fn fails(&self, sub: &str, args: &[&str]) -> String {
        let out = self.run(sub, args);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(125),
            "sandbox {sub} {args:?}: stdout {:?}, stderr {err}",
            text(&out.stdout)
        );
        assert!(
            err.starts_with("sandbox: ") && err.lines().count() == 1,
            "{err}"
        );
        err
    }

    /// `create ARGS`; the new session's id.
    fn create(&self, args: &[&str]) -> String {
        let id = self.ok("create", args).trim().to_string();
        assert!(
            id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id:?}"
        );
        id
    }

    /// `ps --json` (with `-a`: every session).
    fn ps(&self, all: bool) -> Vec<Value> {
        let args: &[&str] = if all { &["-a", "--json"] } else { &["--json"] };
        let out = self.ok("ps", args);
        match serde_json::from_str(&out).unwrap() {
            Value::Array(rows) => rows,
            other => panic!("{other}"),
        }
    }

    /// `ps -a --json`'s row of session `id`.
    fn row(&self, id: &str) -> Value {
        self.ps(true)
            .into_iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed"))
    }

    /// The session directories in the state directory.
    fn dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "names")
            .collect();
        v.sort();
        v
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.state) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(json) = std::fs::read_to_string(e.path().join("session.json")) else {
                continue;
            };
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.run("rm", &["--force", &id]);
            // Whatever the CLI left running: the init itself, if it is still the same process.
            let Ok(record) = serde_json::from_str::<Value>(&json) else {
                continue;
            };
            let pid = record["session"]["pid"].as_u64().unwrap_or(0) as i32;
            let start = record["session"]["start_time"].as_u64();
            if pid > 0
                && start.is_some()
                && stat(pid as u32).is_some_and(|(s, t)| s != 'Z' && Some(t) == start)
            {
                // SAFETY: kill takes a pid and a signal; no memory is passed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Process `pid`'s state letter and start time (fields 3 and 22 of /proc/PID/stat).
fn stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Whether `pid` is a live session init (not a zombie waiting for its reaper).
fn init_runs(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim() == "sandbox-init" && stat(pid).is_some_and(|(s, _)| s != 'Z')
}

fn pid_of(row: &Value) -> u32 {
    row["pid"].as_u64().expect("a pid") as u32
}

#[test]
fn a_sessions_program_lives_through_create_start_exec_stop_and_rm() {
    let s = Sessions::new("session-life");
    let id = s.create(&[
        "--name",
        "life",
        "--",
        "/bin/sh",
        "-c",
        "echo started > /tmp/ready; echo to the log; echo and its errors >&2; exec sleep 1000",
    ]);
    let rows = s.ps(false);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["name"], "life");
    assert_eq!(row["state"], "created", "{row}");
    assert_eq!(row["command"][0], "/bin/sh", "{row}");
    assert!(row["created"].as_u64().unwrap() > 0);
    // `create` has returned: its session's init lives on.
    let pid = pid_of(row);
    assert!(init_runs(pid), "the init {pid} outlives `sandbox create`");
    let table = s.ok("ps", &[]);
    assert!(
        table.starts_with("ID") && table.contains(&id) && table.contains("created"),
        "{table}"
    );

    // Not started yet: exec runs, the program has not.
    let out = s.ok(
        "exec",
        &[
            "life",
            "--",
            "/bin/sh",
            "-c",
            "cat /tmp/ready 2>/dev/null || echo none",
        ],
    );
    assert_eq!(out, "none\n");
    assert_eq!(s.ok("start", &["life"]), "life\n");
    let err = s.fails("start", &["life"]);
    assert!(err.contains("started already"), "{err}");
    assert_eq!(s.row(&id)["state"], "running");

    // By a prefix of its id: the program's file.
    let out = s.ok(
        "exec",
        &[
            &id[..5],
            "--",
            "/bin/sh",
            "-c",
            "while [ ! -s /tmp/ready ]; do sleep 0.05; done; cat /tmp/ready",
        ],
    );
    assert_eq!(out, "started\n");
    // The command's exit code, its environment and working directory, and our stdin passed straight in.
    let out = s.run("exec", &["life", "--", "/bin/sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = s.ok(
        "exec",
        &[
            "--env",
            "A=b",
            "--cwd",
            "/tmp",
            &id,
            "--",
            "/bin/sh",
            "-c",
            "echo $A; pwd",
        ],
    );
    assert_eq!(out, "b\n/tmp\n");
    let mut cat = s
        .command("exec", &[&id, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let out = s.run("exec", &["life", "--", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    assert_eq!(s.ok("logs", &["life"]), "to the log\nand its errors\n");
    assert_eq!(s.ok("stop", &["-t", "5", "life"]), "life\n");
    assert!(s.ps(false).is_empty(), "ps lists live sessions only");
    let row = s.row(&id);
    assert_eq!(row["state"], "exited", "{row}");
    // The program ended of the stop's SIGTERM.
    assert_eq!(row["exit_code"], 128 + libc::SIGTERM, "{row}");
    assert!(!init_runs(pid));
    // Stopping it again: nothing to do.
    assert_eq!(s.ok("stop", &[&id]), format!("{id}\n"));
    let err = s.fails("exec", &["life", "--", "true"]);
    assert!(err.contains("has ended"), "{err}");
    assert_eq!(s.ok("logs", &["life"]), "to the log\nand its errors\n");

    assert_eq!(s.ok("rm", &["life"]), "life\n");
    assert!(s.ps(true).is_empty());
    assert!(s.dirs().is_empty(), "{:?}", s.dirs());
    assert!(!init_runs(pid));
    let err = s.fails("logs", &["life"]);
    assert!(err.contains("no session"), "{err}");
}

#[test]
fn an_idle_session_runs_what_exec_asks_until_stopped() {
    let s = Sessions::new("session-idle");
    let id = s.create(&["--hostname", "idle"]);
    let row = s.row(&id);
    assert_eq!(row["state"], "running", "{row}");
    assert!(row["command"].is_null(), "{row}");
    assert!(row["name"].is_null(), "{row}");
    assert!(init_runs(pid_of(&row)));
    // Nothing to start.
    assert_eq!(s.ok("start", &[&id]), "");
    s.ok("exec", &[&id, "--", "/bin/sh", "-c", "echo one > /tmp/f"]);
    assert_eq!(
        s.ok(
            "exec",
            &[&id, "--", "/bin/sh", "-c", "cat /tmp/f; hostname"]
        ),
        "one\nidle\n"
    );
    assert_eq!(s.ok("logs", &[&id]), "");
    s.ok("stop", &[&id]);
    let row = s.row(&id);
    assert_eq!(row["state"], "exited", "{row}");
    assert_eq!(row["exit_code"], 0, "{row}");
    s.ok("rm", &[&id]);
    assert!(s.dirs().is_empty(), "{:?}", s.dirs());
}

#[test]
fn names_are_unique_even_between_creates_at_once() {
    let s = Sessions::new("session-names");
    let first = s.create(&["--name", "dup"]);
    let err = s.fails("create", &["--name", "dup"]);
    assert!(
        err.contains("in use by session") && err.contains(&first),
        "{err}"
    );
    let err = s.fails("create", &["--name", "no/slash"]);
    assert!(err.contains("--name"), "{err}");
    assert_eq!(
        s.dirs(),
        [first.as_str()],
        "a refused create leaves nothing"
    );

    // Four creates of one name at once: exactly one wins, the others leave nothing behind.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            s.command("create", &["--name", "race"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "{outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert_eq!(o.status.code(), Some(125));
        assert!(text(&o.stderr).contains("in use by session"), "{o:?}");
    }
    let winner = text(&won[0].stdout).trim().to_string();
    let mut want = vec![first.clone(), winner.clone()];
    want.sort();
    assert_eq!(s.dirs(), want);
    let named: Vec<Value> = s
        .ps(true)
        .into_iter()
        .filter(|r| r["name"] == "race")
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0]["id"], winner.as_str());

    // A name is free again once its session is removed (not while it only ended).
    s.ok("stop", &["dup"]);
    let err = s.fails("create", &["--name", "dup"]);
    assert!(err.contains("in use"), "{err}");
    s.ok("rm", &["dup"]);
    let again = s.create(&["--name", "dup"]);
    assert_ne!(again, first);
    s.ok("rm", &["--force", "dup", "race"]);
    assert!(s.dirs().is_empty(), "{:?}", s.dirs());
}

#[test]
fn unknown_sessions_are_one_clear_error() {
    let s = Sessions::new("session-unknown");
    let id = s.create(&[]);
    for (sub, args) in [
        ("start", vec!["nosuch"]),
        ("exec", vec!["nosuch", "--", "true"]),
        ("stop", vec!["nosuch"]),
        ("rm", vec!["nosuch"]),
        ("logs", vec!["nosuch"]),
        ("start", vec![""]),
        // A longer "prefix" than any id.
        ("exec", vec![&format!("{id}0"), "--", "true"]),
    ] {
        let err = s.fails(sub, &args);
        assert!(err.contains("no session is named"), "{sub} {args:?}: {err}");
    }
    // Several at once: the known one is done, the unknown one said, and the exit code is 125.
    let out = s.run("stop", &["nosuch", &id]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(text(&out.stdout), format!("{id}\n"));
    assert!(
        text(&out.stderr).contains("sandbox: nosuch: no session"),
        "{out:?}"
    );
    // A state directory others may enter is refused.
    let open = TempDir::new("session-open-state");
    let out = Command::new(bin())
        .args(["ps", "--state-dir", open.to_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("open to its group or others"),
        "{out:?}"
    );
}

#[test]
fn a_running_session_is_removed_only_by_force() {
    let s = Sessions::new("session-force");
    let id = s.create(&["--name", "busy", "--", "sleep", "1000"]);
    s.ok("start", &["busy"]);
    let pid = pid_of(&s.row(&id));
    let err = s.fails("rm", &["busy"]);
    assert!(
        err.contains("is running") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(s.row(&id)["state"], "running");
    assert!(init_runs(pid));
    assert_eq!(s.ok("rm", &["-f", "busy"]), "busy\n");
    assert!(s.ps(true).is_empty());
    assert!(s.dirs().is_empty(), "{:?}", s.dirs());
    // Gone, or a zombie its adopter (PID 1 or a subreaper) has not reaped yet.
    assert!(!init_runs(pid), "the init {pid} still runs");
}

#[test]
fn exec_passes_on_signals_and_keeps_the_sessions_time_limit() {
    let s = Sessions::new("session-signals");
    let id = s.create(&["--timeout", "1"]);
    let mut c = s
        .command(
            "exec",
            &[
                &id,
                "--",
                "/bin/sh",
                "-c",
                "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 100 & wait",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: kill takes a pid and a signal; no memory is passed.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got TERM\n");
    assert_eq!(c.wait().unwrap().code(), Some(3));

    // The session's --timeout is each command's limit.
    let start = Instant::now();
    let out = s.run("exec", &[&id, "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // The session outlives both.
    assert_eq!(s.row(&id)["state"], "running");
}

#[test]
fn a_failed_create_leaves_nothing_behind() {
    let s = Sessions::new("session-failed");
    let err = s.fails("create", &["--name", "kept", "--net", "user"]);
    assert!(err.contains("user-mode networking"), "{err}");
    let err = s.fails(
        "create",
        &["--name", "kept", "--ro-bind", "/nonexistent/session-src"],
    );
    assert!(err.contains("/nonexistent/session-src"), "{err}");
    s.fails("create", &["--env", "=NONAME"]);
    assert!(s.dirs().is_empty(), "{:?}", s.dirs());
    // The name was not kept either.
    let id = s.create(&["--name", "kept"]);
    assert_eq!(s.row(&id)["name"], "kept");
}

/// `create --backend vm`: the session is kept in a VM (QEMU engine) by a keeper process; exec, ps, stop and
/// rm work on it as on a namespace session. Needs the guest kernel and agent (`SANDBOX_KERNEL`,
/// `SANDBOX_AGENT`; scripts/test.sh sets both).
#[test]
fn a_vm_session_is_made_and_driven_like_a_namespace_one() {
    let s = Sessions::new("session-vm");
    let id = s.create(&[
        "--backend",
        "vm",
        "--vm-engine",
        "qemu",
        "--hostname",
        "in-a-vm",
        "--name",
        "vm1",
    ]);
    let row = s.row(&id);
    assert_eq!(row["state"], "running", "{row}");
    assert!(init_runs(pid_of(&row)), "the keeper runs");
    s.ok("exec", &["vm1", "--", "/bin/sh", "-c", "echo one > /tmp/f"]);
    assert_eq!(
        s.ok(
            "exec",
            &["vm1", "--", "/bin/sh", "-c", "cat /tmp/f; hostname"]
        ),
        "one\nin-a-vm\n"
    );
    // The guest's own kernel, not the host's.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(s.ok("exec", &["vm1", "--", "uname", "-r"]), host);
    let out = s.run(
        "exec",
        &["vm1", "--", "/bin/sh", "-c", "echo gone >&2; exit 9"],
    );
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert_eq!(text(&out.stderr), "gone\n");
    s.ok("stop", &["vm1"]);
    let row = s.row(&id);
    assert_eq!(row["state"], "exited", "{row}");
    assert!(
        !init_runs(pid_of(&row)),
        "the keeper ended with its session"
    );
    s.ok("rm", &["vm1"]);
    assert!(s.dirs().is_empty(), "{:?}", s.dirs());
}
