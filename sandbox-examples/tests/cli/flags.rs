//! More of the `sandbox` CLI contract (see `tests/cli.rs`): environment files and pass-through, warnings and
//! one-line ends, `-v`, no `--`, completions and the manual page, tmpfs sizes, ulimits, groups and devices,
//! and the report against `docs/verdict.md`.

use std::process::Command;

use testkit::{TempDir, text};

use super::{bin, report, sandbox};

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
        let out = sandbox(&[
            "run",
            "--dev-bind",
            "/dev/kvm",
            "--",
            "/bin/test",
            "-c",
            "/dev/kvm",
        ]);
        assert!(out.status.success(), "bwrap's name for it: {out:?}");
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

/// `--report -` puts the verdict on stdout as one line after the program's output; `--report-fd N` writes it
/// to an inherited descriptor, which the sandbox never sees; a descriptor that is not open is refused before
/// the program runs.
#[test]
fn report_to_stdout_and_to_a_descriptor() {
    let out = sandbox(&[
        "run",
        "--report",
        "-",
        "--",
        "/bin/sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = text(&out.stdout);
    let (first, last) = stdout.trim_end().split_once('\n').expect("two lines");
    assert_eq!(first, "hi");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        (&v["status"], &v["exit_code"]),
        (&"exited".into(), &3.into()),
        "{v}"
    );

    let dir = TempDir::new("cli-report-fd");
    // The descriptor is 3 in the CLI: the shell opens it (`3>&`), as a user's shell would.
    let out = Command::new("/bin/sh")
        .args([
            "-c",
            r#""$0" run --report-fd 3 -- /bin/ls /proc/self/fd 3>"$1""#,
        ])
        .arg(bin())
        .arg(dir.join("verdict.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "0\n1\n2\n3\n",
        "only ls's own directory descriptor besides stdio"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("verdict.json")).unwrap()).unwrap();
    assert_eq!(v["status"], "exited", "{v}");

    let out = sandbox(&["run", "--report-fd", "9", "--", "/bin/echo", "never"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert_eq!(text(&out.stdout), "", "the program did not run");
    assert!(
        text(&out.stderr).contains("descriptor 9 is not open"),
        "{out:?}"
    );
}
