//! Real clients drive the runtime: podman (`--runtime`) and containerd (`ctr run --runc-binary`), on an
//! image this test builds from busybox and loads from a local archive, on the namespace backend and on the VM
//! backend (the annotation `run.oci.sandbox.backend=vm`: QEMU here). Root only (both keep their state in
//! system directories); as another user these tests say SKIPPED.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::TempDir;

fn runtime() -> PathBuf {
    testkit::binary("SANDBOX_RUNTIME_BIN", env!("CARGO_BIN_EXE_sandbox-runtime"))
}

/// The runtime for a client: for the VM backend a copy next to the guest agent (`SANDBOX_AGENT`), where the
/// runtime finds it whatever environment the client gives it (podman passes none of ours).
fn staged(vm: bool, dir: &TempDir) -> PathBuf {
    if !vm {
        return runtime();
    }
    let agent = std::env::var_os("SANDBOX_AGENT").expect("SANDBOX_AGENT: the static guest agent");
    let rt = dir.join("bin/sandbox-runtime");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(runtime(), &rt).unwrap();
    std::fs::copy(agent, dir.join("bin/sandbox-init")).unwrap();
    rt
}

/// The annotation that selects the VM backend, as podman and ctr take it.
const VM: [&str; 2] = ["--annotation", "run.oci.sandbox.backend=vm"];

/// The backend's extra arguments for `run`.
fn backend(vm: bool) -> &'static [&'static str] {
    if vm { &VM } else { &[] }
}

/// podman asks for rlimits above this machine's hard limits without these (runc fails the same way).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null()).output().unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?}: {o:?}");
    testkit::text(&o.stdout)
}

fn root_or_skip(what: &str) -> bool {
    if !testkit::is_root() {
        eprintln!(
            "SKIPPED {what}: podman and containerd keep their state in system directories (root)"
        );
        return false;
    }
    true
}

/// A busybox root with /tmp, as a tar archive.
fn rootfs_tar(dir: &TempDir) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for app in ["sh", "cat", "echo", "sleep", "id", "ls", "hostname"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// A podman image made for one test, removed (with its containers) at the end.
struct PodmanImage {
    name: String,
    containers: Vec<String>,
    runtime: PathBuf,
}

impl PodmanImage {
    fn new(dir: &TempDir, tag: &str) -> PodmanImage {
        let name = format!(
            "localhost/sandbox-runtime-test:{tag}-{}",
            std::process::id()
        );
        ok(Command::new("podman")
            .arg("import")
            .arg(rootfs_tar(dir))
            .arg(&name));
        PodmanImage {
            name,
            containers: Vec::new(),
            runtime: runtime(),
        }
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--runtime").arg(&self.runtime);
        c
    }
}

impl Drop for PodmanImage {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run(self.podman().args(["rm", "-f", "-t", "0", c]));
        }
        let _ = run(Command::new("podman").args(["rmi", "-f", &self.name]));
    }
}

#[test]
fn podman_runs_execs_stops_and_removes() {
    podman_flow(false);
}

#[test]
fn podman_runs_execs_stops_and_removes_in_a_vm() {
    podman_flow(true);
}

fn podman_flow(vm: bool) {
    if !root_or_skip("podman") {
        return;
    }
    let dir = TempDir::new("podman");
    let mut img = PodmanImage::new(&dir, if vm { "podman-vm" } else { "podman" });
    img.runtime = staged(vm, &dir);
    let out = ok(img
        .podman()
        .args(["run", "--rm", "--group-add", "4242"])
        .args(backend(vm))
        .args(ULIMITS)
        .arg(&img.name)
        .args([
            "sh",
            "-c",
            "echo hello from $(id -u); echo x > /etc/new && cat /etc/new; grep ^Groups: /proc/self/status",
        ]));
    let (first, groups) = out.split_at(out.find("Groups:").unwrap_or(out.len()));
    assert_eq!(first, "hello from 0\nx\n", "{out}");
    // process.user.additionalGids (podman's --group-add) are the process's supplementary groups.
    assert!(groups.split_whitespace().any(|g| g == "4242"), "{out}");

    if !vm {
        // `-t`: conmon's pseudo-terminal through the console socket is the process's controlling terminal
        // (field 7 of /proc/self/stat, tty_nr, is not 0).
        let out = ok(img
            .podman()
            .args(["run", "--rm", "-t"])
            .args(ULIMITS)
            .arg(&img.name)
            .args([
                "sh",
                "-c",
                "cut -d' ' -f7 /proc/self/stat; test -t 0 && echo tty",
            ]));
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert!(
            lines.len() == 2 && lines[0] != "0" && lines[1] == "tty",
            "{out:?}"
        );
    }

    let name = format!("sandbox-runtime-test-{}-{vm}", std::process::id());
    img.containers.push(name.clone());
    ok(img
        .podman()
        .args(["run", "-d", "--name", &name])
        .args(backend(vm))
        .args(ULIMITS)
        .arg(&img.name)
        .args(["sh", "-c", "echo up > /tmp/state; exec sleep 1000"]));
    // Exec sees what the container's program wrote (once it did).
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let o = run(img.podman().args(["exec", &name, "cat", "/tmp/state"]));
        // Not only present: written (the shell creates the file before it writes to it).
        if o.stdout == b"up\n" || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(testkit::text(&seen.stdout), "up\n", "{seen:?}");
    let o = run(img.podman().args(["exec", &name, "sh", "-c", "exit 7"]));
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let mut child = img
        .podman()
        .args(["exec", "-i", &name, "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(testkit::text(&o.stdout), "piped\n", "{o:?}");

    ok(img.podman().args(["stop", "-t", "5", &name]));
    let status = ok(img.podman().args([
        "ps",
        "-a",
        "--filter",
        &format!("name={name}"),
        "--format",
        "{{.Status}}",
    ]));
    assert!(status.starts_with("Exited (143)"), "{status}");
    ok(img.podman().args(["rm", &name]));
    img.containers.clear();
}

/// containerd with its own root, state and socket in a temp dir, ended and cleaned at the end.
struct Containerd {
    dir: TempDir,
    daemon: std::process::Child,
    /// The test's container ids: their runtime state is removed at the end.
    ids: Vec<String>,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = TempDir::new("containerd");
        let config = dir.write(
            "config.toml",
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/sock\"\n",
                dir.to_str()
            ),
        );
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            daemon,
            ids: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.dir.join("sock").exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.dir.join("sock"));
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.daemon.wait();
        // Its shims, and any mount left beneath its root.
        let sock = self.dir.join("sock");
        for pid in testkit::processes_with(sock.to_str().unwrap()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(self.dir.path()))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for id in &self.ids {
            let _ = Command::new(runtime())
                .args([
                    "--root",
                    "/run/containerd/runc/default",
                    "delete",
                    "--force",
                    id,
                ])
                .output();
        }
    }
}

#[test]
fn containerd_runs_with_the_runtime_as_its_runc() {
    containerd_flow(false);
}

#[test]
fn containerd_runs_with_the_runtime_as_its_runc_in_a_vm() {
    containerd_flow(true);
}

fn containerd_flow(vm: bool) {
    if !root_or_skip("containerd") {
        return;
    }
    let dir = TempDir::new("ctr-image");
    let img = PodmanImage::new(&dir, if vm { "ctr-vm" } else { "ctr" });
    let archive = dir.join("image.tar");
    ok(Command::new("podman")
        .args(["save", "-o"])
        .arg(&archive)
        .arg(&img.name));
    let mut c = Containerd::start();
    // Unique names: the runtime keeps its state under containerd's runc root in /run, shared with any other
    // containerd of this host (removed with the daemon's other leftovers).
    let (one, two) = (
        format!("one-{}-{vm}", std::process::id()),
        format!("two-{}-{vm}", std::process::id()),
    );
    c.ids = vec![one.clone(), two.clone()];
    ok(c.ctr().args(["images", "import"]).arg(&archive));
    let rt = staged(vm, &dir);
    let out = ok(c
        .ctr()
        .args(["run", "--rm", "--runc-binary"])
        .arg(&rt)
        .args(backend(vm))
        .args([
            &img.name,
            &one,
            "sh",
            "-c",
            "echo hello as $(id -u); exit 0",
        ]));
    assert_eq!(out, "hello as 0\n", "{}", c.log());
    // A task in the background, a process exec'd into it, then killed and removed.
    ok(c.ctr()
        .args(["run", "-d", "--runc-binary"])
        .arg(&rt)
        .args(backend(vm))
        .args([
            &img.name,
            &two,
            "sh",
            "-c",
            "echo bg > /tmp/bg; exec sleep 1000",
        ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let o = run(c
            .ctr()
            .args(["task", "exec", "--exec-id", "look", &two, "cat", "/tmp/bg"]));
        // Not only present: written (the shell creates the file before it writes to it).
        if o.stdout == b"bg\n" || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(testkit::text(&seen.stdout), "bg\n", "{seen:?} {}", c.log());
    ok(c.ctr().args(["task", "kill", "-s", "SIGKILL", &two]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(c.ctr().args(["task", "ls"])).contains("STOPPED") {
        assert!(Instant::now() < deadline, "{}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(c.ctr().args(["task", "delete", &two]));
    ok(c.ctr().args(["container", "rm", &two]));
    assert!(!ok(c.ctr().args(["task", "ls"])).contains(&two));
}
