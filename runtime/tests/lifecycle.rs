//! The runtime's command line driven directly, as conmon and containerd's shim drive it: create (the
//! container's init a child of `create`, adopted by this test process as their subreaper is), start, exec
//! (foreground and --detach with its relay), kill, delete; bad bundles and ids. As root and unprivileged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::TempDir;

fn runtime() -> PathBuf {
    testkit::binary("SANDBOX_RUNTIME_BIN", env!("CARGO_BIN_EXE_sandbox-runtime"))
}

/// This test process adopts orphans (as conmon and containerd's shims do), so it reaps containers' inits
/// and exec relays and learns their exit codes.
fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
}

/// Waits for an adopted process; its exit code (128+N for signal N).
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is writable.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(r, pid as i32, "pid {pid} is not our (adopted) child");
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// A bundle: a busybox root (with /tmp) and a config.json running `script` under `sh -c`.
fn bundle(dir: &Path, script: &str, extra: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let b = dir.join("bundle");
    let root = b.join("rootfs");
    for d in ["bin", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for app in ["sh", "cat", "echo", "sleep", "id", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    let mut config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "hostname": "oci-test",
        "process": {
            "args": ["sh", "-c", script],
            "cwd": "/",
            "env": ["PATH=/bin", "GREETING=hello"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}
            ]
        }
    });
    extra(&mut config);
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    b
}

/// A fresh file in `dir`.
fn tempfile(dir: &TempDir, tag: &str) -> (std::fs::File, PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{tag}-{n}"));
    (std::fs::File::create(&path).unwrap(), path)
}

struct Rt {
    root: TempDir,
    /// The runtime's captured output.
    files: TempDir,
}

impl Rt {
    fn new() -> Rt {
        Rt {
            root: TempDir::new("oci-root"),
            files: TempDir::new("oci-out"),
        }
    }

    /// Runs the runtime with its output in files: a container's program inherits `create`'s streams (as
    /// conmon gives them), so pipes would stay open as long as the container lives.
    fn run(&self, args: &[&str]) -> Output {
        let out = tempfile(&self.files, "out");
        let err = tempfile(&self.files, "err");
        let status = Command::new(runtime())
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.0.try_clone().unwrap())
            .stderr(err.0.try_clone().unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(&out.1).unwrap(),
            stderr: std::fs::read(&err.1).unwrap(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        testkit::text(&o.stdout)
    }

    fn fails(&self, args: &[&str], want: &str) {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = testkit::text(&o.stderr);
        assert!(err.contains(want), "{args:?}: {want:?} in {err}");
    }

    fn status(&self, id: &str) -> String {
        let s: serde_json::Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        s["status"].as_str().unwrap().to_string()
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        // Whatever a failed test left: killed and removed.
        if let Ok(entries) = std::fs::read_dir(self.root.path()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.run(&["delete", "--force", &id]);
            }
        }
    }
}

#[test]
fn create_start_exec_kill_delete() {
    become_subreaper();
    let dir = TempDir::new("oci-life");
    let b = bundle(
        dir.path(),
        "echo $GREETING from $(hostname) > /tmp/greeting; exec sleep 1000",
        |_| {},
    );
    let rt = Rt::new();
    let pid_file = dir.join("pid");
    rt.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "c1",
    ]);
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the init outlives create"
    );
    assert_eq!(rt.status("c1"), "created");
    rt.fails(&["exec", "c1", "true"], "exec needs a running container");
    rt.ok(&["start", "c1"]);
    assert_eq!(rt.status("c1"), "running");
    rt.fails(&["start", "c1"], "only a created container can be started");

    // A foreground exec: its output and exit code are the caller's.
    let o = rt.run(&[
        "exec",
        "c1",
        "sh",
        "-c",
        "while [ ! -s /tmp/greeting ]; do sleep 0.05; done; cat /tmp/greeting; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(testkit::text(&o.stdout), "hello from oci-test\n");
    // A detached exec, as conmon runs `podman exec`: a relay waits for the process and ends with its code.
    let process = dir.write(
        "process.json",
        serde_json::json!({
            "args": ["sh", "-c", "exit 9"],
            "cwd": "/tmp",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0}
        })
        .to_string(),
    );
    let relay_pid = dir.join("relay-pid");
    rt.ok(&[
        "exec",
        "--detach",
        "--process",
        process.to_str().unwrap(),
        "--pid-file",
        relay_pid.to_str().unwrap(),
        "c1",
    ]);
    let relay: u32 = std::fs::read_to_string(&relay_pid)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(reap(relay), 9);
    // Another user than the container's is refused.
    rt.fails(&["exec", "--user", "1000", "c1", "true"], "not supported");
    let ps: Vec<u32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", "c1"])).unwrap();
    assert!(ps.contains(&pid) && ps.len() >= 2, "{ps:?}");

    // SIGTERM reaches the program; its end is the container's, and its code the init's.
    rt.ok(&["kill", "c1", "TERM"]);
    assert_eq!(reap(pid), 128 + libc::SIGTERM);
    assert_eq!(rt.status("c1"), "stopped");
    rt.fails(
        &["kill", "c1", "KILL"],
        "only a created or running container",
    );
    rt.ok(&["delete", "c1"]);
    assert!(!rt.root.join("c1").exists());
    rt.fails(&["state", "c1"], "does not exist");
    rt.fails(&["delete", "c1"], "does not exist");
    rt.ok(&["delete", "--force", "c1"]);
}

#[test]
fn a_created_container_is_deleted_without_force_and_a_running_one_only_with_it() {
    become_subreaper();
    let dir = TempDir::new("oci-del");
    let b = bundle(dir.path(), "exec sleep 1000", |_| {});
    let rt = Rt::new();
    let pid_file = dir.join("pid");
    let create = |id: &str| {
        rt.ok(&[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ]);
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    // The runtime is gone between create and start (it always is): delete still finds and ends it.
    let pid = create("made");
    rt.ok(&["delete", "made"]);
    assert_eq!(reap(pid), 128 + libc::SIGKILL);
    let pid = create("runs");
    rt.ok(&["start", "runs"]);
    rt.fails(&["delete", "runs"], "delete --force");
    rt.ok(&["delete", "--force", "runs"]);
    assert_eq!(reap(pid), 128 + libc::SIGKILL);
    assert_eq!(std::fs::read_dir(rt.root.path()).unwrap().count(), 0);
}

#[test]
fn two_creates_of_one_id_at_once_one_wins() {
    become_subreaper();
    let dir = TempDir::new("oci-race");
    let b = bundle(dir.path(), "exec sleep 1000", |_| {});
    let rt = Rt::new();
    let spawn = || {
        Command::new(runtime())
            .arg("--root")
            .arg(rt.root.path())
            .args(["create", "--bundle", b.to_str().unwrap(), "same"])
            .stdout(std::process::Stdio::null())
            .stderr(tempfile(&rt.files, "race").0)
            .spawn()
            .unwrap()
    };
    let (mut a, mut b2) = (spawn(), spawn());
    let (sa, sb) = (a.wait().unwrap(), b2.wait().unwrap());
    let won = [sa, sb].iter().filter(|s| s.success()).count();
    assert_eq!(won, 1, "{sa:?} {sb:?}");
    let errs: String = std::fs::read_dir(rt.files.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("race-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(errs.contains("already exists"), "{errs}");
    let pid = serde_json::from_str::<serde_json::Value>(&rt.ok(&["state", "same"])).unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    rt.ok(&["delete", "same"]);
    assert_eq!(reap(pid), 128 + libc::SIGKILL);
}

#[test]
fn bad_bundles_and_ids_are_clear_errors_and_leave_nothing() {
    let dir = TempDir::new("oci-bad");
    let rt = Rt::new();
    rt.fails(
        &["create", "--bundle", "/no/such/bundle", "x"],
        "/no/such/bundle",
    );
    let b = bundle(dir.path(), "true", |c| {
        c["process"]["cwd"] = "relative".into();
    });
    rt.fails(&["create", "--bundle", b.to_str().unwrap(), "x"], "cwd");
    std::fs::write(b.join("config.json"), "{ not json").unwrap();
    rt.fails(
        &["create", "--bundle", b.to_str().unwrap(), "x"],
        "config.json",
    );
    let b2 = TempDir::new("oci-bad2");
    let b = bundle(b2.path(), "true", |c| {
        c["process"]["terminal"] = true.into();
    });
    let not_a_socket = dir.write("plain-file", "");
    rt.fails(
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--console-socket",
            not_a_socket.to_str().unwrap(),
            "x",
        ],
        "console socket",
    );
    rt.fails(
        &["create", "--bundle", b.to_str().unwrap(), "x"],
        "--console-socket",
    );
    rt.fails(
        &["create", "--bundle", b.to_str().unwrap(), "../escape"],
        "invalid",
    );
    rt.fails(&["kill", "nobody", "TERM"], "does not exist");
    rt.fails(&["start", "nobody"], "does not exist");
    rt.fails(&["kill", "nobody", "NOSUCHSIG"], "does not exist");
    // Nothing of the failed creates is left.
    assert_eq!(std::fs::read_dir(rt.root.path()).unwrap().count(), 0);
}

#[test]
fn features_describe_the_runtime() {
    let rt = Rt::new();
    let f: serde_json::Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert!(
        f["ociVersionMin"].as_str().unwrap().starts_with("1."),
        "{f}"
    );
    assert!(
        f["linux"]["namespaces"].as_array().unwrap().len() >= 6,
        "{f}"
    );
}

/// `linux.maskedPaths` and `linux.readonlyPaths` of the bundle are applied inside the container's root: a
/// masked file reads empty, a masked directory lists nothing, a read-only directory refuses writes, a listed
/// path the root lacks is skipped; the rest of the root stays as it was.
#[test]
fn masked_and_read_only_paths_are_applied() {
    become_subreaper();
    let dir = TempDir::new("oci-masked");
    let b = bundle(dir.path(), "exec sleep 1000", |c| {
        c["linux"]["maskedPaths"] = serde_json::json!(["/etc/secret", "/opt/private", "/no/such"]);
        c["linux"]["readonlyPaths"] = serde_json::json!(["/data"]);
    });
    let root = b.join("rootfs");
    std::fs::write(root.join("etc/secret"), "hidden\n").unwrap();
    std::fs::write(root.join("etc/open"), "shown\n").unwrap();
    std::fs::create_dir_all(root.join("opt/private")).unwrap();
    std::fs::write(root.join("opt/private/key"), "k").unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    let rt = Rt::new();
    let pid_file = dir.join("pid");
    rt.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "m1",
    ]);
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    rt.ok(&["start", "m1"]);
    let o = rt.run(&[
        "exec",
        "m1",
        "sh",
        "-c",
        "echo \"[$(cat /etc/secret)]\"; cat /etc/open; ls -A /opt/private; echo x > /data/x 2>&1 || echo data-ro; \
         echo y > /tmp/y && echo tmp-ok",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        testkit::text(&o.stdout),
        "[]\nshown\ndata-ro\ntmp-ok\n",
        "{o:?}"
    );
    assert!(!root.join("data/x").exists());
    rt.ok(&["delete", "--force", "m1"]);
    assert_eq!(reap(pid), 128 + libc::SIGKILL);
}
