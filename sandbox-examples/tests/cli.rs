//! The `sandbox` CLI contract: flags, exit codes, the JSON report, and die-with-parent.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::{TempDir, text};

/// The CLI under test: `SANDBOX_BIN` when the binary was staged elsewhere (unprivileged CI runs), else cargo's.
fn bin() -> PathBuf {
    testkit::binary("SANDBOX_BIN", env!("CARGO_BIN_EXE_sandbox"))
}

fn sandbox(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir("/")
        .output()
        .expect("the CLI runs")
}

fn report(args: &[&str]) -> (Output, serde_json::Value) {
    let dir = TempDir::new("report");
    let file = dir.join("report.json");
    let mut all = vec!["run", "--report", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = sandbox(&all);
    let json = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", text(&out.stderr)));
    (out, serde_json::from_str(&json).unwrap())
}

#[test]
fn prints_and_exits_with_the_programs_code() {
    let (out, r) = report(&["--", "/bin/sh", "-c", "echo hi; exit 3"]);
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r["status"], "exited");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["backend"], "namespace");
    assert!(r["wall_ms"].as_u64().is_some());
    assert!(r["fallback_reason"].is_null());
}

#[test]
fn signals_map_to_128_plus_n() {
    let (out, r) = report(&["--", "/bin/sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(r["status"], "signaled");
    assert_eq!(r["signal"], 9);
}

#[test]
fn timeout_is_124() {
    let start = Instant::now();
    let (out, r) = report(&["--timeout", "0.3", "--", "/bin/sleep", "30"]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(r["status"], "timed_out");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn not_found_is_127_and_not_executable_is_126() {
    let (out, r) = report(&["--", "no-such-program-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(r["status"], "setup_failed");
    let out = sandbox(&["run", "--", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126));
}

#[test]
fn bad_input_is_one_clear_line_and_125() {
    for args in [
        vec!["run", "--no-such-flag", "--", "true"],
        vec!["run", "--ro-bind", "/nonexistent/cli-src", "--", "true"],
        vec!["run", "--hostname", "bad name", "--", "true"],
        vec!["run", "--timeout", "-1", "--", "true"],
        vec!["run", "--env", "=NONAME", "--", "true"],
        vec!["run", "--tmpfs", "relative", "--", "true"],
        vec!["run", "--policy", "/nonexistent/policy.toml", "--", "true"],
        vec!["run", "--cwd", "/nonexistent", "--", "true"],
        vec!["run", "--memory", "lots", "--", "true"],
        vec!["run", "--cpus", "0", "--", "true"],
        vec!["run", "--cpu-time", "0", "--", "true"],
        vec![
            "run",
            "--seccomp",
            "/nonexistent/profile.toml",
            "--",
            "true",
        ],
    ] {
        let out = sandbox(&args);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("sandbox") || err.contains("error"),
            "{args:?}: {err}"
        );
    }
    let err = text(&sandbox(&["run", "--ro-bind", "/nonexistent/cli-src", "--", "true"]).stderr);
    assert!(err.contains("/nonexistent/cli-src"), "{err}");
}

#[test]
fn mounts_env_cwd_hostname_from_flags() {
    let ro = TempDir::new("ro");
    let rw = TempDir::new("rw");
    std::fs::write(ro.join("in"), "input").unwrap();
    let ro_spec = format!("{}:/in", ro.to_str());
    let out = sandbox(&[
        "run",
        "--ro-bind",
        &ro_spec,
        "--bind",
        rw.to_str(),
        "--tmpfs",
        "/scratch",
        "--env",
        "WHO=judge",
        "--cwd",
        "/scratch",
        "--hostname",
        "box1",
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "cat /in/in > {rw}/copy && echo $WHO $(hostname) $(pwd) > {rw}/facts; echo x > /in/new",
            rw = rw.to_str()
        ),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the ro write fails last: {}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(rw.join("copy")).unwrap(), "input");
    assert_eq!(
        std::fs::read_to_string(rw.join("facts")).unwrap(),
        "judge box1 /scratch\n"
    );
    assert!(!ro.join("new").exists());
}

/// `--bind SRC:DST:ro` (docker `-v` syntax) is read-only; a mode that is not honoured is refused, never
/// dropped into the destination path (it once gave a writable mount at `DST:ro`).
#[test]
fn bind_mode_suffix_is_honoured_or_refused() {
    let dir = TempDir::new("bind-mode");
    let spec = format!("{}:/data:ro", dir.to_str());
    let out = sandbox(&[
        "run",
        "--bind",
        &spec,
        "--",
        "/bin/sh",
        "-c",
        "test -d /data || exit 9; echo x > /data/new; echo written=$?; test -e /data:ro && echo colon",
    ]);
    assert_eq!(text(&out.stdout), "written=2\n", "{}", text(&out.stderr));
    assert!(!dir.join("new").exists());
    let rw = format!("{}:/data:rw", dir.to_str());
    let out = sandbox(&[
        "run",
        "--bind",
        &rw,
        "--",
        "/bin/sh",
        "-c",
        "echo x > /data/new",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.join("new").exists());
    for (flag, spec) in [
        ("--ro-bind", format!("{}:/data:rw", dir.to_str())),
        ("--bind", format!("{}:/data:readonly", dir.to_str())),
        ("--bind", format!("{}:ro", dir.to_str())),
    ] {
        let out = sandbox(&["run", flag, &spec, "--", "true"]);
        assert_eq!(out.status.code(), Some(125), "{flag} {spec}");
        assert!(text(&out.stderr).contains(&spec), "{}", text(&out.stderr));
    }
}

#[test]
fn policy_file_and_network_flag() {
    let dir = TempDir::new("policy");
    let policy = dir.join("p.toml");
    std::fs::write(&policy, "hostname = \"from-file\"\nnetwork = \"none\"\n").unwrap();
    let out = sandbox(&[
        "run",
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "hostname; grep -c : /proc/net/dev",
    ]);
    assert_eq!(text(&out.stdout), "from-file\n1\n");
    let out = sandbox(&["run", "--net", "host", "--", "/bin/cat", "/proc/net/dev"]);
    let host = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    assert_eq!(text(&out.stdout).lines().count(), host);
    std::fs::write(&policy, "hostnme = \"typo\"\n").unwrap();
    let out = sandbox(&["run", "--policy", policy.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("hostnme"),
        "{}",
        text(&out.stderr)
    );
}

/// `--net user` and `--publish`: their help, and every refusal before a sandbox starts (the runs themselves
/// are in the root crate's tests/network.rs, which need a network namespace of their own).
#[test]
fn user_network_flags_refuse_clearly() {
    let help = text(&sandbox(&["run", "--help"]).stdout);
    assert!(
        help.contains("--publish <HOSTPORT:PORT[/tcp|/udp]>"),
        "{help}"
    );
    assert!(help.contains("pasta"), "{help}");
    let refused = |args: &[&str], wanted: &str, env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin());
        cmd.args(args).current_dir("/").env_remove("SANDBOX_PASTA");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    };
    for bad in ["80", "0:80", "8080:0", "70000:80", "8080:80/sctp", "a:b"] {
        refused(
            &["run", "--net", "user", "--publish", bad, "--", "true"],
            "HOSTPORT:PORT[/tcp|/udp]",
            &[],
        );
    }
    refused(
        &[
            "run",
            "--net",
            "user",
            "--publish",
            "8080:80",
            "--publish",
            "8080:81",
            "--",
            "true",
        ],
        "published twice",
        &[],
    );
    for net in [&["--net", "none"][..], &[]] {
        let mut args = vec!["run"];
        args.extend_from_slice(net);
        args.extend_from_slice(&["--publish", "8080:80", "--", "true"]);
        refused(&args, "need network = \"user\" (--net user)", &[]);
    }
    refused(
        &["run", "--net", "user", "--", "true"],
        "install the Debian package passt",
        &[("PATH", "/nonexistent")],
    );
    refused(
        &[
            "run",
            "--backend",
            "vm",
            "--vm-engine",
            "qemu",
            "--net",
            "user",
            "--",
            "true",
        ],
        "--net user (network = \"user\") is only available on the namespace backend for now",
        &[],
    );
}

#[test]
fn limits_and_seccomp_flags() {
    let (out, r) = report(&[
        "--cpu-time",
        "1",
        "--",
        "/bin/sh",
        "-c",
        "while :; do :; done",
    ]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(r["status"], "timed_out");
    assert_eq!(r["timeout"], "cpu");
    let (_, r) = report(&["--seccomp", "none", "--", "/bin/true"]);
    assert_eq!(r["enforced"]["seccomp"], "none");
    let (_, r) = report(&["--", "/bin/sh", "-c", "unshare -U true; true"]);
    assert_eq!(r["denied_syscalls"][0]["syscall"], "unshare", "{r}");
    let (out, r) = report(&[
        "--memory",
        "64M",
        "--pids",
        "32",
        "--cpus",
        "0.5",
        "--",
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(0));
    if r["enforced"]["cgroup"].is_null() {
        assert!(
            !r["enforced"]["not_enforced"].as_array().unwrap().is_empty(),
            "{r}"
        );
        let out = sandbox(&[
            "run",
            "--backend",
            "namespace",
            "--memory",
            "64M",
            "--require-limits",
            "--",
            "/bin/true",
        ]);
        assert_eq!(out.status.code(), Some(125));
        // Auto takes the VM instead, whose guest has cgroups, and says why.
        let (out, r) = report(&["--memory", "64M", "--require-limits", "--", "/bin/true"]);
        assert_eq!(out.status.code(), Some(0), "{r}");
        assert_eq!(r["backend"], "vm", "{r}");
        assert!(
            r["fallback_reason"]
                .as_str()
                .unwrap_or("")
                .contains("cgroup"),
            "{r}"
        );
        assert_eq!(r["enforced"]["cgroup"]["memory"], 64 << 20);
    } else {
        assert_eq!(r["enforced"]["cgroup"]["memory"], 64 << 20);
        assert_eq!(r["enforced"]["cgroup"]["pids"], 32);
    }
}

#[test]
fn doctor_reports_the_host() {
    let out = sandbox(&["doctor", "--json"]);
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["user_namespaces"], true, "{r}");
    assert!(r["kernel"].as_str().unwrap().len() > 2);
    assert!(["v1", "v2", "hybrid", "none"].contains(&r["cgroup"]["layout"].as_str().unwrap()));
    assert!(["hardware", "pvm", "none"].contains(&r["kvm"]["flavour"].as_str().unwrap()));
    assert!(
        r["pasta"].is_string() || r["user_network_problem"].is_string(),
        "{r}"
    );
    let out = sandbox(&["doctor"]);
    assert!(text(&out.stdout).contains("user namespaces:  yes"));
    assert!(text(&out.stdout).contains("user network:     "));
    assert_eq!(out.status.code(), Some(0));
    // Where nothing can run (inside a sandbox: no user namespaces, and no guest kernel), it says so and
    // exits 1, with --json too.
    let inside = format!("{}:/sbx", bin().display());
    for json in [false, true] {
        let mut args = vec![
            "run",
            "--ro-bind",
            &inside,
            "--env",
            "SANDBOX_KERNEL=/nonexistent",
            "--",
            "/sbx",
            "doctor",
        ];
        if json {
            args.push("--json");
        }
        let out = sandbox(&args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            text(&out.stderr).contains("no backend can run here"),
            "{out:?}"
        );
    }
}

#[test]
fn sandbox_dies_with_the_cli() {
    let marker = format!("{}", 600_000 + std::process::id() % 100_000);
    let mut cli = Command::new(bin())
        .args(["run", "--", "/bin/sh", "-c"])
        .arg(format!("sleep {marker} & sleep {marker}"))
        .spawn()
        .unwrap();
    let pattern = format!("sleep {marker}");
    let start = Instant::now();
    while testkit::processes_with(&pattern).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the sandbox did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cli.kill().unwrap();
    cli.wait().unwrap();
    let start = Instant::now();
    while !testkit::processes_with(&pattern).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "sandboxed processes survived their supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the lines it added to the subordinate id files when dropped (also when the test fails).
struct SubIds {
    line: String,
}

impl SubIds {
    /// Gives `user` `count` subordinate uids and gids beyond every range the files hold.
    fn add(user: &str, count: u32) -> SubIds {
        let mut top = 100_000u64;
        for f in ["/etc/subuid", "/etc/subgid"] {
            for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
                let v: Vec<&str> = l.split(':').collect();
                if let [_, a, b] = v[..]
                    && let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>())
                {
                    top = top.max(a + b);
                }
            }
        }
        let first = top.div_ceil(65536) * 65536;
        let line = format!("{user}:{first}:{count}\n");
        for f in ["/etc/subuid", "/etc/subgid"] {
            let mut text = std::fs::read_to_string(f).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            Self::replace(f, &text);
        }
        SubIds { line }
    }

    fn first(&self) -> u32 {
        self.line.split(':').nth(1).unwrap().parse().unwrap()
    }

    fn replace(path: &str, text: &str) {
        let tmp = format!("{path}.sandbox-test");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

impl Drop for SubIds {
    fn drop(&mut self) {
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            Self::replace(f, &text.replacen(&self.line, "", 1));
        }
    }
}

/// An unprivileged caller (uid 65534 here) without subordinate ids gets one id, and the verdict says why and
/// how to get more; with them (added for the test), 65536 through newuidmap/newgidmap: its own uid for the
/// sandbox user, its subordinate range for the rest.
#[test]
fn unprivileged_caller_maps_its_subordinate_ranges() {
    if !testkit::is_root() {
        eprintln!("SKIPPED: needs root to stage a user with subordinate ids");
        return;
    }
    let stage = TempDir::with_mode("subid-stage", 0o755);
    let staged = stage.join("sandbox");
    std::fs::copy(bin(), &staged).unwrap();
    let out_dir = TempDir::new("subid-report");
    let report = out_dir.join("report.json");
    let run = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&staged)
            .args([
                "run",
                "--report",
                report.to_str().unwrap(),
                "--",
                "/bin/sh",
                "-c",
            ])
            .arg("cat /proc/self/uid_map /proc/self/gid_map; id -u")
            .current_dir("/")
            .output()
            .expect("setpriv runs");
        let words: Vec<String> = text(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
                .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out.stderr)));
        (words.join(" "), json)
    };
    let (maps, r) = run();
    assert_eq!(maps, "0 65534 1 0 65534 1 0", "{r}");
    let said = r["not_enforced"].to_string() + &r["enforced"]["not_enforced"].to_string();
    assert!(
        said.contains("uid/gid range") && said.contains("usermod"),
        "{r}"
    );

    let ids = SubIds::add("nobody", 65536);
    let first = ids.first();
    let (maps, r) = run();
    let want = format!("0 65534 1 1 {first} 65535 0 65534 1 1 {first} 65535 0");
    assert_eq!(maps, want, "{r}");
    drop(ids);
}

/// Bad id mappings are refused before anything runs, with the file and the fix; a free explicit range is used.
#[test]
fn id_mappings_are_checked() {
    let out = sandbox(&["run", "--ids", "range:0:1:10", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("host id 0"),
        "{}",
        text(&out.stderr)
    );
    let out = sandbox(&["run", "--ids", "many", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("--ids \"many\""),
        "{}",
        text(&out.stderr)
    );
    let out = sandbox(&["run", "--user", "alice", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    if !testkit::is_root() {
        let out = sandbox(&[
            "run",
            "--ids",
            "range:1000000:1000000:65536",
            "--",
            "/bin/true",
        ]);
        assert_eq!(out.status.code(), Some(125));
        assert!(
            text(&out.stderr).contains("needs a root caller"),
            "{}",
            text(&out.stderr)
        );
        return;
    }
    // Host user 1 (daemon on Debian) is in /etc/passwd.
    let out = sandbox(&["run", "--ids", "range:1:1:10", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("/etc/passwd"),
        "{}",
        text(&out.stderr)
    );
    let out = sandbox(&[
        "run",
        "--ids",
        "subordinate:no-such-user-here",
        "--",
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("/etc/subuid"),
        "{}",
        text(&out.stderr)
    );
    // Far above any range this machine hands out (the reserved one starts near 100000 + users).
    let out = sandbox(&[
        "run",
        "--ids",
        "range:3000000000:3000000000:65536",
        "--user",
        "7:8",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/self/uid_map; id -u; id -g",
    ]);
    let words: Vec<String> = text(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        words.join(" "),
        "0 3000000000 65536 7 8",
        "{}",
        text(&out.stderr)
    );
}

/// `--env KEY` passes the caller's value in, `--env-file` reads entries (before `--env`); the end of a run
/// that is the sandbox's doing (timeout, OOM) and every limit not enforced is one line on stderr; `-v` shows
/// the library's log.
#[test]
fn environment_files_warnings_and_verbose() {
    let dir = TempDir::new("cli-env");
    let file = dir.join("vars.env");
    std::fs::write(&file, "# settings\nFROM_FILE=1\nOVER=file\n").unwrap();
    let out = Command::new(bin())
        .args([
            "run",
            "--env-file",
            file.to_str().unwrap(),
            "--env",
            "OVER=flag",
        ])
        .args([
            "--env",
            "PASSED",
            "--env",
            "SANDBOX_TEST_UNSET_VARIABLE",
            "--",
        ])
        .args([
            "/bin/sh",
            "-c",
            "echo $FROM_FILE $OVER $PASSED ${SANDBOX_TEST_UNSET_VARIABLE-unset}",
        ])
        .env("PASSED", "through")
        .env_remove("SANDBOX_TEST_UNSET_VARIABLE")
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "1 flag through unset\n", "{out:?}");
    let out = sandbox(&["run", "--env", "two words", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");

    let out = sandbox(&["run", "--timeout", "0.2", "--", "/bin/sleep", "5"]);
    assert_eq!(out.status.code(), Some(124));
    let err = text(&out.stderr);
    assert_eq!(err.matches("wall-clock time limit").count(), 1, "{err}");

    // Every limit the verdict lists as not enforced is a warning line (a caller without a writable cgroup
    // gets one for the memory limit; one with a cgroup gets none).
    let (out, r) = report(&["--memory", "64M", "--", "/bin/true"]);
    let missing = r["enforced"]["not_enforced"].as_array().unwrap();
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("sandbox: warning: not enforced: ").count(),
        missing.len(),
        "{err} {r}"
    );
    for m in missing {
        assert!(err.contains(m.as_str().unwrap()), "{err}");
    }

    let out = sandbox(&["-vv", "run", "--", "/bin/true"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("sandkasten"), "{out:?}");
    let out = sandbox(&["run", "--", "/bin/true"]);
    assert!(!text(&out.stderr).contains("DEBUG"), "{out:?}");
}

/// `--` is optional: the first word that is not an option is the program, and everything after it is the
/// program's (flags included); an unknown option before it is still refused.
#[test]
fn the_program_needs_no_double_dash() {
    let out = sandbox(&[
        "run",
        "--hostname",
        "h",
        "/bin/sh",
        "-c",
        "echo $(hostname) $0 $1",
        "--x",
        "-y",
    ]);
    assert_eq!(text(&out.stdout), "h --x -y\n", "{out:?}");
    let out = sandbox(&["run", "--", "/bin/echo", "--", "z"]);
    assert_eq!(text(&out.stdout), "-- z\n", "{out:?}");
    let out = sandbox(&["run", "--no-such-flag", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
}

/// Shell completions and the manual page come from the same flag definitions as the parser.
#[test]
fn completions_and_manual_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sandbox(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        assert!(
            script.contains("memory") && script.contains("env-file"),
            "{shell}"
        );
    }
    assert_eq!(
        sandbox(&["completions", "cmd.exe"]).status.code(),
        Some(125)
    );
    let out = sandbox(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH sandbox 1"),
        "{page}"
    );
    assert!(
        page.contains("doctor") && page.contains("Examples"),
        "{page}"
    );
    let out = sandbox(&["run", "--help"]);
    assert!(text(&out.stdout).contains("Examples:"), "{out:?}");
}

/// `--tmpfs DST:size=N`, `--ulimit`, `--group-add` and `--device` reach the policy.
#[test]
fn tmpfs_size_ulimits_groups_and_devices() {
    let (out, r) = report(&[
        "--tmpfs",
        "/scratch:size=1M",
        "--ulimit",
        "nofile=77:77",
        "--",
        "/bin/sh",
        "-c",
        "df -k /scratch | tail -1; ulimit -n",
    ]);
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert!(lines[0].contains(" 1024 "), "{out:?}");
    assert_eq!(lines[1], "77", "{out:?}");
    let rl = r["enforced"]["rlimits"].to_string();
    assert!(rl.contains("77"), "{r}");
    let out = sandbox(&["run", "--ulimit", "nofile=1:2", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let out = sandbox(&["run", "--tmpfs", "/s:mode=1777", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    if std::path::Path::new("/dev/kvm").exists() {
        let out = sandbox(&[
            "run",
            "--device",
            "/dev/kvm",
            "--",
            "/bin/sh",
            "-c",
            "test -c /dev/kvm && echo dev",
        ]);
        assert_eq!(text(&out.stdout), "dev\n", "{out:?}");
    }
    let out = sandbox(&["run", "--device", "/dev/null", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "the sandbox's own: {out:?}");
    // Supplementary groups: where the caller has a range of ids (root here) they are the program's; with
    // one id only the run fails at set-up and says why.
    let out = sandbox(&["run", "--group-add", "5", "--", "/bin/sh", "-c", "id -G"]);
    if testkit::is_root() {
        assert_eq!(text(&out.stdout), "0 5\n", "{out:?}");
    } else if !out.status.success() {
        assert!(
            text(&out.stderr).contains("supplementary groups"),
            "{out:?}"
        );
    }
}

/// Every key of a report (`path`, `path[]`, `path[].field`), recursively.
fn report_keys(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // An array is listed as `key[]` (below), not as `key`.
                if !v.is_array() {
                    out.insert(path.clone());
                }
                report_keys(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            out.insert(format!("{prefix}[]"));
            for item in items.iter().filter(|i| i.is_object()) {
                report_keys(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The verdict's schema (docs/verdict.md) against the CLI's reports: every key a report holds is documented,
/// the version is the library's, and a report reads back into the same verdict.
#[test]
fn reports_match_the_documented_schema() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/verdict.md"))
        .expect("docs/verdict.md");
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once('`')
                .map(|(k, _)| k.to_string())
        })
        .collect();
    let dir = TempDir::new("schema");
    std::fs::write(dir.join("f"), "x").unwrap();
    let bind = format!("{}:/data", dir.path().display());
    let runs: Vec<Vec<&str>> = vec![
        vec!["--", "/bin/sh", "-c", "exit 3"],
        vec![
            "--memory",
            "64M",
            "--tmpfs",
            "/s:size=1M",
            "--ro-bind",
            &bind,
            "--",
            "/bin/true",
        ],
        vec!["--", "/no/such/program"],
        vec!["--timeout", "0.2", "--", "/bin/sleep", "5"],
        vec![
            "--seccomp",
            "default",
            "--",
            "/bin/sh",
            "-c",
            "unshare -U true 2>/dev/null; true",
        ],
        vec!["--", "/bin/sh", "-c", "kill -9 $$"],
    ];
    let mut seen = std::collections::BTreeSet::new();
    for args in &runs {
        let (_, r) = report(args);
        assert_eq!(
            r["report_version"],
            sandkasten::outcome::REPORT_VERSION,
            "{r}"
        );
        report_keys(&r, "", &mut seen);
        let back = sandkasten::Outcome::from_report_json(&r).expect("a report reads back");
        assert_eq!(
            back.report_json(),
            r,
            "a report reads back into the same verdict"
        );
    }
    let undocumented: Vec<&String> = seen.iter().filter(|k| !documented.contains(*k)).collect();
    assert!(
        undocumented.is_empty(),
        "keys not in docs/verdict.md: {undocumented:?}"
    );
    for status in ["exited", "signaled", "timed_out", "setup_failed"] {
        assert!(doc.contains(&format!("`{status}`")), "{status}");
    }
}
