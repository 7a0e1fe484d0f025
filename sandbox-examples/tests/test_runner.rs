//! `sandbox-test-runner`, the cargo target runner. Most tests run a copy of `/bin/sh` as a fake test binary
//! inside a fake project (a `Cargo.toml` and a `target/` with cargo's `CACHEDIR.TAG`) and check one
//! property each; the last two run `cargo test` for real (on a generated crate, and on the loopback TCP
//! fixture crate `tests/fixtures/loopback-crate`). Runs as root and as an unprivileged user (CI stages the
//! binary and sets `SANDBOX_TEST_RUNNER_BIN`).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{TempDir, text};

/// The runner under test: `SANDBOX_TEST_RUNNER_BIN` when staged elsewhere, else cargo's.
fn runner() -> PathBuf {
    testkit::binary(
        "SANDBOX_TEST_RUNNER_BIN",
        env!("CARGO_BIN_EXE_sandbox-test-runner"),
    )
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A fake project in the temp dir: `Cargo.toml`, `src/`, and `target/` with `CACHEDIR.TAG`, `debug/fake-test`
/// (a copy of `/bin/sh`) and `tmp/` writable by anyone (a root caller's sandbox runs as uid 65534).
struct Project {
    root: PathBuf,
    /// Removes the project on drop.
    _dir: TempDir,
}

impl Project {
    fn new(tag: &str) -> Project {
        let dir = TempDir::with_mode(&format!("runner-{tag}"), 0o755);
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::create_dir_all(root.join("target/tmp")).unwrap();
        for d in ["", "src", "target", "target/debug"] {
            chmod(&root.join(d), 0o755);
        }
        chmod(&root.join("target/tmp"), 0o777);
        std::fs::write(
            root.join("Cargo.toml"),
            "[package]\nname = \"fake\"\nversion = \"0.1.0\"\n\n[workspace]\n",
        )
        .unwrap();
        std::fs::write(
            root.join("target/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n",
        )
        .unwrap();
        std::fs::copy("/bin/sh", root.join("target/debug/fake-test")).unwrap();
        chmod(&root.join("target/debug/fake-test"), 0o755);
        Project { root, _dir: dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn s(&self) -> &str {
        self.root.to_str().unwrap()
    }

    /// The runner, as cargo calls it: from the package dir with CARGO_MANIFEST_DIR set.
    fn command(&self, runner_args: &[&str], binary: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(runner());
        c.args(runner_args)
            .arg(binary)
            .args(args)
            .current_dir(&self.root)
            .env("CARGO_MANIFEST_DIR", &self.root)
            .env_remove("SANDBOX_TEST_RUNNER_POLICY");
        c
    }

    /// Runs `script` with the fake test binary (`sh -c script`) through the runner.
    fn sh(&self, script: &str) -> Output {
        self.command(&[], &self.path("target/debug/fake-test"), &["-c", script])
            .output()
            .expect("the runner starts")
    }
}

/// Proves: the test's exit code reaches cargo unchanged (0, 7), a death by signal N becomes 128+N, and a
/// binary from the system view (not in the project) runs too.
#[test]
fn exit_code_passes_through() {
    let p = Project::new("exit");
    assert_eq!(p.sh("exit 0").status.code(), Some(0));
    assert_eq!(p.sh("exit 7").status.code(), Some(7));
    let out = p.sh("kill -TERM $$");
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    assert!(
        text(&out.stderr).contains("signal"),
        "{}",
        text(&out.stderr)
    );
    let out = p
        .command(&[], Path::new("/bin/sh"), &["-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

/// Proves: the project is visible read-only at its own path, and the working directory is the same.
#[test]
fn project_is_read_only_at_its_own_path() {
    let p = Project::new("ro");
    let out = p.sh(
        "pwd; head -1 Cargo.toml; touch new-file 2>/dev/null || echo project-ro; \
         echo x >> Cargo.toml 2>/dev/null || echo manifest-ro",
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}\n[package]\nproject-ro\nmanifest-ro\n", p.s()),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!p.path("new-file").exists());
}

/// Proves: `target/tmp` is the only writable host directory; the binary's own dir is read-only; `/tmp` is
/// a private tmpfs whose files never reach the host; the system is read-only.
#[test]
fn only_target_tmp_is_writable() {
    let p = Project::new("rw");
    let private = format!("runner-private-{}", std::process::id());
    let out = p.sh(&format!(
        "echo data > {root}/target/tmp/out && echo target-tmp-rw; \
         echo x > {root}/target/debug/x 2>/dev/null || echo target-debug-ro; \
         echo x > /tmp/{private} && echo tmp-rw; \
         touch /usr/x 2>/dev/null || echo usr-ro; touch /etc/x 2>/dev/null || echo etc-ro",
        root = p.s()
    ));
    assert_eq!(
        text(&out.stdout),
        "target-tmp-rw\ntarget-debug-ro\ntmp-rw\nusr-ro\netc-ro\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(p.path("target/tmp/out")).unwrap(),
        "data\n"
    );
    assert!(!p.path("target/debug/x").exists());
    assert!(!Path::new("/tmp").join(&private).exists());
}

/// Proves: no network interface but loopback.
#[test]
fn no_network_but_loopback() {
    let p = Project::new("net");
    let out = p.sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert_eq!(text(&out.stdout), "lo\n", "{}", text(&out.stderr));
}

/// Proves: HOME is /tmp and no home directory is visible; only RUST_*, CARGO_* (and TERM, …) pass.
#[test]
fn home_and_environment_are_filtered() {
    let p = Project::new("env");
    let out = p
        .command(
            &[],
            &p.path("target/debug/fake-test"),
            &[
                "-c",
                "echo HOME=$HOME; test -e /root || echo no-root; test -e /home || echo no-home; env | sort",
            ],
        )
        .env("HOME", "/root")
        .env("RUST_BACKTRACE", "1")
        .env("CARGO_RUNNER_TEST_MARK", "yes")
        .env("RUNNER_TEST_SECRET", "s3cret")
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(o.starts_with("HOME=/tmp\nno-root\nno-home\n"), "{o}");
    assert!(o.contains("\nRUST_BACKTRACE=1\n"), "{o}");
    assert!(o.contains("\nCARGO_RUNNER_TEST_MARK=yes\n"), "{o}");
    assert!(!o.contains("s3cret"), "{o}");
}

/// Proves: SIGINT sent to the runner (a Ctrl-C) reaches the test, whose own exit code then comes back.
#[test]
fn signals_are_forwarded() {
    let p = Project::new("sig");
    let mut child = p
        .command(
            &[],
            &p.path("target/debug/fake-test"),
            &[
                "-c",
                "trap 'echo got-int; exit 42' INT; echo ready; while :; do sleep 0.1; done",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // SAFETY: kill with our own child's pid and a valid signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let start = Instant::now();
    assert_eq!(lines.next().unwrap().unwrap(), "got-int");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Proves: `--policy FILE` and `SANDBOX_TEST_RUNNER_POLICY` are the base policy (here a hostname), and a
/// bad policy is a clear failure (125), not a silent default.
#[test]
fn policy_from_option_or_environment() {
    let p = Project::new("policy");
    let file = p.path("target/tmp/p.toml");
    std::fs::write(&file, "hostname = \"from-policy\"\n").unwrap();
    let sh = p.path("target/debug/fake-test");
    let out = p
        .command(
            &["--policy", file.to_str().unwrap()],
            &sh,
            &["-c", "hostname"],
        )
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "from-policy\n", "{}", text(&out.stderr));
    let out = p
        .command(&[], &sh, &["-c", "hostname"])
        .env("SANDBOX_TEST_RUNNER_POLICY", &file)
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "from-policy\n", "{}", text(&out.stderr));
    std::fs::write(&file, "hostnme = \"typo\"\n").unwrap();
    let out = p
        .command(&["--policy", file.to_str().unwrap()], &sh, &["-c", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("hostnme"),
        "{}",
        text(&out.stderr)
    );
    let out = p
        .command(&["--bogus"], &sh, &["-c", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Proves, end to end with cargo itself: `cargo test` on a generated crate (no dependencies, offline)
/// with the runner as target runner passes tests that only pass inside the sandbox (the project is
/// read-only, HOME is /tmp, only loopback), and a failing test makes cargo fail (exit code 101).
#[test]
fn real_cargo_test_through_the_runner() {
    let Some(cargo) = usable_cargo("real_cargo_test_through_the_runner") else {
        return;
    };
    let p = Project::new("cargo");
    std::fs::remove_dir_all(p.path("target")).unwrap();
    std::fs::write(
        p.path("Cargo.toml"),
        "[package]\nname = \"runner-probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        p.path("src/lib.rs"),
        r#"
#[cfg(test)]
mod tests {
    #[test]
    fn project_is_read_only() {
        let probe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("probe");
        assert!(std::fs::write(probe, "x").is_err());
    }
    #[test]
    fn temp_dir_is_writable_and_home_is_tmp() {
        std::fs::write(std::env::temp_dir().join("probe"), "x").unwrap();
        assert_eq!(std::env::var("HOME").unwrap(), "/tmp");
    }
    #[test]
    fn only_loopback() {
        let dev = std::fs::read_to_string("/proc/net/dev").unwrap();
        assert_eq!(dev.lines().count(), 3, "{dev}");
    }
    #[test]
    #[ignore]
    fn fails_when_asked() {
        panic!("failing on request");
    }
}
"#,
    )
    .unwrap();
    let cargo_test = |extra: &[&str]| cargo_test_through_runner(&cargo, &p.root, extra);
    let out = cargo_test(&[]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("test result: ok. 3 passed"), "{all}");
    assert!(!p.path("probe").exists());
    let out = cargo_test(&["--", "--ignored"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{all}");
    assert!(all.contains("failing on request"), "{all}");
}

/// Cargo, when this user can run it; else None after printing SKIPPED for `test` (as uid 65534 here: the
/// toolchain is root's, and the run as root covers the test).
fn usable_cargo(test: &str) -> Option<OsString> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let usable = Command::new(&cargo)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!(
            "SKIPPED {test}: cargo ({cargo:?}) cannot be run by this user; the run as the toolchain's owner \
             covers it"
        );
        return None;
    }
    Some(cargo)
}

/// `cargo test --offline --quiet --lib EXTRA` in the crate at `root` (its own target directory), with the
/// runner under test as cargo's target runner and its default policy.
fn cargo_test_through_runner(cargo: &OsStr, root: &Path, extra: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(cargo)
        .args(["test", "--offline", "--quiet", "--lib"])
        .args(extra)
        .current_dir(root)
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", runner())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("SANDBOX_TEST_RUNNER_POLICY")
        .output()
        .unwrap();
    eprintln!("cargo test {extra:?} took {:?}", start.elapsed());
    out
}

/// Proves: with its default policy the runner runs a crate whose tests bind loopback TCP ports
/// (`tests/fixtures/loopback-crate`: bind 127.0.0.1:0, connect, bytes both ways; two listeners), as the
/// tests of many ordinary crates do. Nothing leaves the sandbox's own network namespace (loopback only).
#[test]
fn loopback_tcp_tests_pass_through_the_runner() {
    let Some(cargo) = usable_cargo("loopback_tcp_tests_pass_through_the_runner") else {
        return;
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/loopback-crate");
    // A copy in a directory uid 65534 can read (a root caller's sandbox runs as that uid), with its own
    // target directory, so that the source tree stays clean.
    let p = Project::new("loopback");
    std::fs::remove_dir_all(p.path("target")).unwrap();
    for file in ["Cargo.toml", "src/lib.rs"] {
        std::fs::copy(fixture.join(file), p.path(file)).unwrap();
    }
    let out = cargo_test_through_runner(&cargo, &p.root, &[]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("test result: ok. 2 passed"), "{all}");
}
