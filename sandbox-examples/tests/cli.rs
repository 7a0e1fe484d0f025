//! The `sandbox` CLI contract: flags, exit codes, the JSON report, and die-with-parent.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::{TempDir, text};

/// The flags and outputs added for services: environment files, warnings, `-v`, no `--`, completions and the
/// manual page, tmpfs sizes and ulimits, the report's documented schema.
#[path = "cli/flags.rs"]
mod flags;

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
