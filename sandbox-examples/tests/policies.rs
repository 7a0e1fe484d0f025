//! The example policies in `sandbox-examples/policies/`: each loads with `Policy::from_toml_file`, runs a
//! program through the library, and loads with `sandbox run --policy FILE`. The files are compiled in, so
//! the staged unprivileged run checks the same text.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandkasten::{Network, Policy, Sandbox};
use testkit::TempDir;

const POLICIES: [(&str, &str); 3] = [
    ("strict", include_str!("../policies/strict.toml")),
    ("build", include_str!("../policies/build.toml")),
    ("python", include_str!("../policies/python.toml")),
];

/// The CLI: `SANDBOX_BIN` when staged elsewhere (unprivileged CI runs), else cargo's.
fn cli() -> PathBuf {
    testkit::binary("SANDBOX_BIN", env!("CARGO_BIN_EXE_sandbox"))
}

/// Writes the shipped policy text to a file and loads it the way users do.
fn load(dir: &Path, name: &str, text: &str) -> (PathBuf, Policy) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let policy = Policy::from_toml_file(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
    policy.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    (file, policy)
}

/// Every policy loads, is strict where it matters, and runs `/bin/true` through the library and the CLI.
#[test]
fn each_policy_loads_and_runs_true() {
    let dir = TempDir::new("all");
    for (name, text) in POLICIES {
        let (file, policy) = load(dir.path(), name, text);
        assert_eq!(policy.network, Network::None, "{name}");
        assert!(policy.system, "{name}");
        assert!(policy.timeout.is_some(), "{name}");
        assert!(
            policy.limits.memory.is_some() && policy.limits.pids.is_some(),
            "{name}"
        );
        assert!(policy.landlock.enabled, "{name}");
        let outcome = Sandbox::new("/bin/true")
            .policy(policy)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(outcome.status.success(), "{name}: {:?}", outcome.status);
        if !outcome.enforced.not_enforced.is_empty() {
            eprintln!(
                "NOTE {name}: not enforced here: {:?}",
                outcome.enforced.not_enforced
            );
        }
        let out = Command::new(cli())
            .args(["run", "--policy"])
            .arg(&file)
            .args(["--", "/bin/true"])
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "sandbox run --policy {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// strict: a 16 MiB /tmp, its hostname, the per-process rlimits, no network, a read-only system.
#[test]
fn strict_is_strict() {
    let dir = TempDir::new("strict");
    let (_, policy) = load(dir.path(), "strict", POLICIES[0].1);
    assert_eq!(policy.timeout, Some(Duration::from_secs(10)));
    let out = Sandbox::new("/bin/sh")
        .args([
            "-c",
            "hostname; df -k /tmp | tail -1 | awk '{print $2}'; ulimit -n; ulimit -t; \
             grep -c : /proc/net/dev; touch /usr/x 2>/dev/null || echo usr-ro",
        ])
        .policy(policy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "strict\n16384\n128\n5\n1\nusr-ro\n"
    );
}

/// python: python3 runs with HOME=/tmp and can write there.
#[test]
fn python_runs_python3() {
    let dir = TempDir::new("python");
    let (_, policy) = load(dir.path(), "python", POLICIES[2].1);
    let out = Sandbox::new("python3")
        .args([
            "-c",
            "import os, pathlib; p = pathlib.Path.home() / 'x'; p.write_text('hi'); print(os.environ['HOME'], p.read_text())",
        ])
        .env("HOME", "/tmp")
        .policy(policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp hi\n");
}

/// build: the documented `--bind` of a project dir, then a real compile and run with cc inside it.
#[test]
fn build_compiles_in_a_bound_project() {
    let dir = TempDir::new("build");
    let (file, _) = load(dir.path(), "build", POLICIES[1].1);
    let project = dir.join("proj");
    std::fs::create_dir(&project).unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        project.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"built\"); return 0; }\n",
    )
    .unwrap();
    let p = project.to_str().unwrap();
    let out = Command::new(cli())
        .args(["run", "--policy"])
        .arg(&file)
        .args(["--bind", p, "--cwd", p, "--env", "HOME=/tmp", "--"])
        .args(["/bin/sh", "-c", "cc -o hello hello.c && ./hello"])
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "built\n");
    assert!(
        project.join("hello").exists(),
        "the output lands on the host"
    );
}
