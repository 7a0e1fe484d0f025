//! `coderun`, the judge-style runner: every verdict, stdin handling, the strict defaults, exit codes and the
//! temp dir's cleanup. Runs as root and as an unprivileged user (CI stages the binary and sets `CODERUN_BIN`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::TempDir;

/// The binary under test: `CODERUN_BIN` when staged elsewhere (unprivileged CI runs), else cargo's.
fn bin() -> PathBuf {
    testkit::binary("CODERUN_BIN", env!("CARGO_BIN_EXE_coderun"))
}

/// Runs coderun with `args`, feeding `input` to its standard input.
fn coderun_with(args: &[&str], input: &[u8], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("coderun starts");
    let mut stdin = child.stdin.take().unwrap();
    // The program may not read it all (a closed pipe is fine).
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// Runs coderun and parses its one JSON object; coderun must exit 0 (a verdict was produced).
fn verdict(args: &[&str], input: &[u8]) -> Value {
    let out = coderun_with(args, input, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: stdout {stdout} stderr {stderr}"
    );
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A shell snippet from standard input.
fn sh(snippet: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--lang", "sh", "--time-limit", "2", "--memory", "64M"];
    args.extend_from_slice(extra);
    verdict(&args, snippet.as_bytes())
}

/// Compiles a C program with gcc into `dir`.
fn gcc(dir: &TempDir, name: &str, code: &str) -> PathBuf {
    let src = dir.write(&format!("{name}.c"), code);
    let exe = dir.join(name);
    let out = Command::new("gcc")
        .arg("-O0")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("gcc is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

// --- verdicts ------------------------------------------------------------------------------------------

/// OK, with the program's stdout and stderr, the exit code and the usage figures beside the verdict.
#[test]
fn ok_with_output() {
    let v = sh("echo hello; echo oops >&2", &[]);
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(v["stdout"], "hello\n");
    assert_eq!(v["stderr"], "oops\n");
    assert_eq!(v["exit_code"], 0);
    assert!(v["signal"].is_null());
    assert_eq!(v["stdout_truncated"], false);
    for k in ["wall_ms", "cpu_ms", "peak_memory_bytes"] {
        assert!(v[k].is_u64(), "{k}: {v}");
    }
    assert_eq!(v["limits"]["memory_bytes"], 64 << 20);
}

/// RE on a non-zero exit.
#[test]
fn re_on_exit_1() {
    let v = sh("echo partial; exit 1", &[]);
    assert_eq!(v["verdict"], "RE", "{v}");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["stdout"], "partial\n");
}

/// RE on a segfault of a C program compiled with gcc, run as `--lang exe`.
#[test]
fn re_on_segfault_of_a_compiled_program() {
    let dir = TempDir::new("segv");
    let exe = gcc(
        &dir,
        "segv",
        "int main(void) { volatile int *p = 0; *p = 1; return 0; }\n",
    );
    let v = verdict(
        &[
            "--lang",
            "exe",
            "--time-limit",
            "2",
            "--memory",
            "64M",
            exe.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(v["verdict"], "RE", "{v}");
    assert_eq!(v["signal"], libc::SIGSEGV);
    assert!(v["exit_code"].is_null());
}

/// A compiled program that reads its input from `--stdin FILE` and answers OK.
#[test]
fn compiled_program_reads_stdin_file() {
    let dir = TempDir::new("sum");
    let exe = gcc(
        &dir,
        "sum",
        "#include <stdio.h>\nint main(void) { long a, b; if (scanf(\"%ld %ld\", &a, &b) != 2) return 3;\n\
         printf(\"%ld\\n\", a + b); return 0; }\n",
    );
    let input = dir.write("input.txt", "40 2\n");
    let v = verdict(
        &[
            "--lang",
            "exe",
            "--time-limit",
            "2",
            "--memory",
            "64M",
            "--stdin",
            input.to_str().unwrap(),
            exe.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(v["stdout"], "42\n");
}

/// TLE on a CPU-bound loop: the CPU limit (RLIMIT_CPU and the tree's CPU time), not the wall limit.
#[test]
fn tle_on_an_infinite_loop() {
    let start = Instant::now();
    let v = verdict(
        &[
            "--lang",
            "sh",
            "--time-limit",
            "1",
            "--wall-limit",
            "30",
            "--memory",
            "64M",
        ],
        b"while :; do :; done",
    );
    assert_eq!(v["verdict"], "TLE", "{v}");
    assert_eq!(v["time_limit"], "cpu", "{v}");
    assert!(v["cpu_ms"].as_u64().unwrap() >= 500, "{v}");
    assert!(start.elapsed() < Duration::from_secs(20));
}

/// TLE on `sleep`: no CPU used, the wall limit ends it.
#[test]
fn tle_on_sleep() {
    let start = Instant::now();
    let v = verdict(
        &[
            "--lang",
            "sh",
            "--time-limit",
            "0.5",
            "--wall-limit",
            "1",
            "--memory",
            "64M",
        ],
        b"echo before; sleep 30; echo after",
    );
    assert_eq!(v["verdict"], "TLE", "{v}");
    assert_eq!(v["time_limit"], "wall", "{v}");
    assert_eq!(v["stdout"], "before\n", "output before the kill is kept");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// MLE when allocating 512 MiB under a 64 MiB limit. When this host cannot enforce the memory limit for
/// this user (no writable cgroup), the honest report is checked instead, and the test says so.
#[test]
fn mle_on_a_big_allocation() {
    let v = verdict(
        &["--lang", "python3", "--time-limit", "10", "--memory", "64M"],
        b"b = b'x' * (512 << 20)\nprint(len(b))\n",
    );
    if v["memory_limit_enforced"] == true {
        assert_eq!(v["verdict"], "MLE", "{v}");
        assert!(v["memory_limit_not_enforced_reason"].is_null());
        assert_eq!(v["stdout"], "");
    } else {
        let reason = v["memory_limit_not_enforced_reason"].as_str().unwrap_or("");
        eprintln!(
            "NOTE mle_on_a_big_allocation: the memory limit is not enforceable for this user here, so the \
             honest report was checked instead of MLE: {reason}"
        );
        assert!(!reason.is_empty(), "{v}");
        assert!(
            v["not_enforced"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == reason),
            "{v}"
        );
        assert_ne!(v["verdict"], "MLE", "{v}");
    }
}

/// OLE on `yes`: coderun stops reading and kills the program once stdout passes the limit; the kept
/// output is exactly the limit, and it happens long before the time limit.
#[test]
fn ole_on_yes() {
    let start = Instant::now();
    let v = verdict(
        &[
            "--lang",
            "sh",
            "--time-limit",
            "10",
            "--memory",
            "64M",
            "--output-limit",
            "1000",
        ],
        b"yes",
    );
    assert_eq!(v["verdict"], "OLE", "{v}");
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1000);
    assert!(v["stdout"].as_str().unwrap().starts_with("y\ny\n"));
    assert_eq!(v["stdout_truncated"], true);
    assert!(v["stdout_bytes"].as_u64().unwrap() > 1000);
    assert!(start.elapsed() < Duration::from_secs(8), "killed early");
}

/// Standard error is kept but bounded, and does not count as output.
#[test]
fn stderr_is_bounded_but_not_ole() {
    let v = sh(
        "i=0; while [ $i -lt 2000 ]; do echo 0123456789012345678901234567890123456789 >&2; i=$((i+1)); done",
        &["--output-limit", "10"],
    );
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(v["stderr_bytes"], 2000 * 41);
    assert_eq!(v["stderr_truncated"], true);
    assert_eq!(v["stderr"].as_str().unwrap().len(), 64 << 10);
}

// --- languages and stdin -------------------------------------------------------------------------------

/// A python3 snippet from a FILE, reading its input from --stdin.
#[test]
fn python3_snippet() {
    let dir = TempDir::new("py");
    let src = dir.write(
        "main.py",
        "import sys\nn = int(sys.stdin.readline())\nprint(sum(range(n)))\nprint('err', file=sys.stderr)\n",
    );
    let input = dir.write("in", "10\n");
    let v = verdict(
        &[
            "--lang",
            "python3",
            "--time-limit",
            "5",
            "--memory",
            "256M",
            "--stdin",
            input.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(v["stdout"], "45\n");
    assert_eq!(v["stderr"], "err\n");
    let v = verdict(
        &["--lang", "python3", "--time-limit", "5", "--memory", "256M"],
        b"raise SystemExit(4)",
    );
    assert_eq!(v["verdict"], "RE", "{v}");
    assert_eq!(v["exit_code"], 4);
}

/// Where the program's standard input comes from: source on stdin → the program's stdin is empty (or
/// `--stdin FILE`); source from FILE → the program reads coderun's own stdin.
#[test]
fn stdin_handling() {
    let v = sh("cat; echo end", &[]);
    assert_eq!(v["stdout"], "end\n", "source came from stdin: empty input");

    let dir = TempDir::new("stdin");
    let input = dir.write("in", "from file\n");
    let v = sh(
        "read line; echo got: $line",
        &["--stdin", input.to_str().unwrap()],
    );
    assert_eq!(v["stdout"], "got: from file\n", "{v}");

    let src = dir.write("echo.sh", "read a; read b; echo \"$b $a\"\n");
    let v = verdict(
        &[
            "--lang",
            "sh",
            "--time-limit",
            "2",
            "--memory",
            "64M",
            src.to_str().unwrap(),
        ],
        b"first\nsecond\n",
    );
    assert_eq!(v["stdout"], "second first\n", "{v}");
}

// --- the strict defaults -------------------------------------------------------------------------------

/// The sandbox coderun builds: cwd /work (a small tmpfs), a 16 MiB /tmp, read-only system and source, no
/// network but loopback, hostname coderun, the pids limit.
#[test]
fn strict_defaults() {
    let v = sh(
        "pwd; hostname; echo x > /work/f && echo work-rw; echo x > /tmp/f && echo tmp-rw; \
         touch /usr/x 2>/dev/null || echo usr-ro; echo x >> /work/main.sh 2>/dev/null || echo source-ro; \
         grep -c : /proc/net/dev; df -k /tmp | tail -1 | awk '{print $2}'; test -e /root || echo no-root",
        &[],
    );
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(
        v["stdout"], "/work\ncoderun\nwork-rw\ntmp-rw\nusr-ro\nsource-ro\n1\n16384\nno-root\n",
        "{v}"
    );
    assert_eq!(v["limits"]["pids"], 64);
    if v["pids_limit_enforced"] != true {
        eprintln!("NOTE strict_defaults: the pids limit is not enforceable for this user here");
    }
}

// --- exit codes and cleanup ----------------------------------------------------------------------------

/// Bad usage exits 2 without a verdict.
#[test]
fn bad_usage_is_2() {
    for args in [
        vec!["--time-limit", "1", "--memory", "64M"],
        vec!["--lang", "cobol", "--time-limit", "1", "--memory", "64M"],
        vec!["--lang", "sh", "--time-limit", "0", "--memory", "64M"],
        vec!["--lang", "sh", "--time-limit", "1", "--memory", "lots"],
        vec!["--lang", "exe", "--time-limit", "1", "--memory", "64M"],
        vec![
            "--lang",
            "sh",
            "--time-limit",
            "1",
            "--memory",
            "64M",
            "/nonexistent/x.sh",
        ],
    ] {
        let out = coderun_with(&args, b"true", &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// A sandbox failure (here: the temp dir cannot be created) exits 125 with a JSON error object.
#[test]
fn sandbox_failure_is_125_with_json() {
    let out = coderun_with(
        &["--lang", "sh", "--time-limit", "1", "--memory", "64M"],
        b"true",
        &[("TMPDIR", Path::new("/nonexistent/coderun-tmp"))],
    );
    assert_eq!(out.status.code(), Some(125));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["verdict"].is_null());
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/coderun-tmp"),
        "{v}"
    );
}

/// The host temp dir holding the source is removed after OK, after TLE and after OLE.
#[test]
fn temp_dir_is_removed() {
    let tmp = TempDir::new("cleanup");
    for (snippet, expect) in [("echo hi", "OK"), ("sleep 10", "TLE"), ("yes", "OLE")] {
        let out = coderun_with(
            &[
                "--lang",
                "sh",
                "--time-limit",
                "0.5",
                "--wall-limit",
                "1",
                "--memory",
                "64M",
                "--output-limit",
                "100",
            ],
            snippet.as_bytes(),
            &[("TMPDIR", tmp.path())],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["verdict"], expect, "{v}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{snippet}: left behind {left:?}");
    }
}

/// SIGTERM to coderun kills the sandbox, removes the temp dir and exits 128+15 with a JSON error.
#[test]
fn sigterm_cleans_up() {
    let tmp = TempDir::new("sigterm");
    let mut child = Command::new(bin())
        .args(["--lang", "sh", "--time-limit", "30", "--memory", "64M"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"sleep 60").unwrap();
    // Wait until the source was staged (the sandbox is starting or running).
    let start = Instant::now();
    while std::fs::read_dir(tmp.path()).unwrap().next().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill with our own child's pid and a valid signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("signal"));
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}
