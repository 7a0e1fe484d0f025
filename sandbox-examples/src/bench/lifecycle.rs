//! The `lifecycle` section of `sandbox-bench`: what a whole container run and an exec into a live one cost,
//! each next to its peer measured in the same run (the two interleaved, one warm-up each, medians of N):
//! - `podman run --rm IMAGE true` with runc against the same with our `sandbox-runtime`;
//! - `podman exec CTR true` into a `podman run -d` container, runc against ours;
//! - the library: `Session::command("true").status()` in a live session against a one-shot
//!   `Sandbox::new("true").status()` (namespace backend, default policy);
//! - the CLI: `sandbox exec ID -- true` into a `sandbox create` session against `sandbox run -- true`.
//!
//! podman keeps its storage and state in a temp dir of its own (`--root`, `--runroot`, `--tmpdir`), removed
//! at the end, after a failure too; its image is a busybox root imported from a tar archive made here (no
//! registry), and its containers have `--network none` (podman's bridge is podman's cost with either runtime
//! and would stay behind on the host). A missing peer (podman, runc) is skipped with the reason.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandkasten::{Backend, Policy, Sandbox, Session, Status};

/// podman asks for rlimits above this machine's hard limits without these (runc fails the same way).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// One step of a case: `Err` says what failed.
type Step<'a> = Box<dyn FnMut() -> Result<(), String> + 'a>;

/// Runs `cmd` without stdin; its stdout, or what failed with the end of its stderr.
fn quiet(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    Err(format!(
        "{cmd:?}: {}: {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

/// `name` in a directory of `PATH`, else in /usr/sbin or /usr/bin.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `ours` and `peer` interleaved `runs` times after one warm-up each; prints both rows and the ratio of the
/// medians, or why the pair was not measured.
fn pair(runs: usize, ours: (&str, Step), peer: Option<(&str, Step)>) {
    pair_timed(
        runs,
        (ours.0, self_timed(ours.1)),
        peer.map(|(n, s)| (n, self_timed(s))),
    );
}

/// `step`, timed whole.
fn self_timed<'a>(mut step: Step<'a>) -> Timed<'a> {
    Box::new(move || {
        let t = Instant::now();
        step()?;
        Ok(t.elapsed())
    })
}

/// One step of a case that times itself (what it does before or after the timed part is not counted).
type Timed<'a> = Box<dyn FnMut() -> Result<Duration, String> + 'a>;

/// [`pair`] of steps that time themselves.
fn pair_timed(runs: usize, ours: (&str, Timed), peer: Option<(&str, Timed)>) {
    let (ours_name, mut ours_step) = ours;
    let mut peer = peer;
    let mut times = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let timed = |step: &mut Timed, into: &mut Vec<Duration>, warm: bool| {
        let t = step()?;
        if !warm {
            into.push(t);
        }
        Ok::<(), String>(())
    };
    let measured = (0..=runs).try_for_each(|i| {
        timed(&mut ours_step, &mut times.0, i == 0)?;
        match &mut peer {
            Some((_, step)) => timed(step, &mut times.1, i == 0),
            None => Ok(()),
        }
    });
    if let Err(e) = measured {
        println!("{ours_name:<40} failed: {e}");
        return;
    }
    let row = |name: &str, t: &[Duration], ratio: &str| {
        let (min, max) = (t.iter().min().copied(), t.iter().max().copied());
        println!(
            "{name:<40} {:>10.2} {:>10.2} {:>10.2} {ratio:>10}",
            ms(median(t)),
            ms(min.unwrap_or_default()),
            ms(max.unwrap_or_default())
        );
    };
    match &peer {
        Some((peer_name, _)) => {
            row(peer_name, &times.1, "1.00x");
            let ratio = median(&times.0).as_secs_f64() / median(&times.1).as_secs_f64();
            row(ours_name, &times.0, &format!("{ratio:.2}x"));
        }
        None => row(ours_name, &times.0, "-"),
    }
}

/// The whole section: `runs` of each case; `cli` is our `sandbox`, `runtime` our `sandbox-runtime`.
pub fn lifecycle(runs: usize, cli: &Path, runtime: &Path) {
    let runs = runs.max(1);
    println!(
        "\nlifecycle: {runs} runs each after one warm-up, each case interleaved with its peer (the 1.00x row)"
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>10}",
        "case", "median ms", "min ms", "max ms", "vs peer"
    );
    podman(runs, runtime);
    library(runs);
    command_line(runs, cli);
}

/// podman with an isolated storage: its temp dir, the image imported into it, and the containers left to
/// remove; all of it removed on drop.
struct Podman {
    dir: PathBuf,
    image: String,
    live: Vec<(PathBuf, String)>,
}

impl Podman {
    fn new(runtime: &Path) -> Result<Podman, String> {
        let dir = std::env::temp_dir().join(format!("sandbox-bench-podman.{}", std::process::id()));
        let mut podman = Podman {
            dir,
            image: "localhost/sandbox-bench:lifecycle".into(),
            live: Vec::new(),
        };
        let tar = podman.rootfs_tar()?;
        quiet(
            podman
                .cmd(runtime)
                .arg("import")
                .arg(&tar)
                .arg(&podman.image),
        )?;
        Ok(podman)
    }

    /// A busybox root (static busybox, its applets as links, /tmp) as a tar archive in the temp dir.
    fn rootfs_tar(&mut self) -> Result<PathBuf, String> {
        let busybox =
            find("busybox").ok_or("busybox is missing (apt-get install busybox-static)")?;
        let root = self.dir.join("rootfs");
        let made = ["bin", "tmp", "etc"]
            .iter()
            .try_for_each(|d| std::fs::create_dir_all(root.join(d)))
            .and_then(|()| std::fs::copy(&busybox, root.join("bin/busybox")).map(drop))
            .and_then(|()| {
                ["sh", "true", "sleep"].iter().try_for_each(|a| {
                    std::os::unix::fs::symlink("busybox", root.join("bin").join(a))
                })
            });
        made.map_err(|e| format!("the image's root in {}: {e}", root.display()))?;
        let tar = self.dir.join("rootfs.tar");
        quiet(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        Ok(tar)
    }

    fn cmd(&self, runtime: &Path) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--runtime")
            .arg(runtime);
        c
    }

    /// `podman run --rm IMAGE true` with `runtime`.
    fn run_true(&self, runtime: &Path) -> Result<(), String> {
        quiet(
            self.cmd(runtime)
                .args(["run", "--rm", "--network", "none"])
                .args(ULIMITS)
                .args([&self.image, "true"]),
        )
        .map(drop)
    }

    /// A container running `sleep` with `runtime`, once an exec into it works; its name.
    fn start(&mut self, runtime: &Path, name: &str) -> Result<String, String> {
        self.live.push((runtime.to_path_buf(), name.to_string()));
        quiet(
            self.cmd(runtime)
                .args(["run", "-d", "--network", "none", "--name", name])
                .args(ULIMITS)
                .args([&self.image, "sleep", "100000"]),
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.exec_true(runtime, name) {
                Ok(()) => return Ok(name.to_string()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn exec_true(&self, runtime: &Path, name: &str) -> Result<(), String> {
        quiet(self.cmd(runtime).args(["exec", name, "true"])).map(drop)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for (runtime, name) in &self.live {
            let _ = quiet(self.cmd(runtime).args(["rm", "-f", "-t", "0", name]));
        }
        // conmon starts `podman container cleanup` after a container ends, which mounts the storage again:
        // wait (a few seconds at most) for every process naming this storage to end.
        let marker = self.dir.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while users_of(&marker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut last = None;
        for _ in 0..5 {
            // What podman left mounted beneath its storage (its overlay home, a container's shm), deepest
            // first.
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut mounts: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&self.dir))
                .collect();
            mounts.reverse();
            for m in mounts {
                let _ = quiet(Command::new("umount").args(["-l", m]));
            }
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => last = Some(e),
                _ => return,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        if let Some(e) = last {
            println!(
                "podman's temp storage {} not removed: {e}",
                self.dir.display()
            );
        }
    }
}

/// Whether a process other than this one has `marker` in its command line.
fn users_of(marker: &str) -> bool {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && name != me
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
    })
}

/// Cases 1 and 2: podman's run and exec with runc and with ours.
fn podman(runs: usize, runtime: &Path) {
    if find("podman").is_none() {
        println!("podman: skipped (podman is missing: apt-get install podman)");
        return;
    }
    if !sandkasten::probe().root {
        println!("podman: skipped (run as root: rootless podman needs a set-up of its own)");
        return;
    }
    if !runtime.is_file() {
        println!(
            "podman: skipped ({} is missing: cargo build --release -p sandbox-runtime)",
            runtime.display()
        );
        return;
    }
    let runc = find("runc");
    if runc.is_none() {
        println!("podman with runc: skipped (runc is missing: apt-get install runc); ours alone");
    }
    let version = quiet(Command::new("podman").arg("--version")).unwrap_or_default();
    println!(
        "({}, runc: {})",
        version.trim(),
        runc.as_ref()
            .map_or("-".into(), |r| r.display().to_string())
    );
    let mut podman = match Podman::new(runtime) {
        Ok(p) => p,
        Err(e) => {
            println!("podman: skipped (importing the image failed: {e})");
            return;
        }
    };
    let p = &podman;
    pair(
        runs,
        (
            "podman run --rm, sandbox-runtime",
            Box::new(|| p.run_true(runtime)),
        ),
        runc.as_deref().map(|r| {
            (
                "podman run --rm, runc",
                Box::new(move || p.run_true(r)) as Step,
            )
        }),
    );
    let id = std::process::id();
    let ours = podman.start(runtime, &format!("sandbox-bench-ours-{id}"));
    let theirs = runc
        .as_deref()
        .map(|r| (r, podman.start(r, &format!("sandbox-bench-runc-{id}"))));
    let ours = match ours {
        Ok(name) => name,
        Err(e) => {
            println!("{:<40} failed: {e}", "podman exec, sandbox-runtime");
            return;
        }
    };
    let p = &podman;
    let peer = match theirs {
        Some((r, Ok(name))) => Some((
            "podman exec, runc",
            Box::new(move || p.exec_true(r, &name)) as Step,
        )),
        Some((_, Err(e))) => {
            println!("{:<40} failed: {e}", "podman exec, runc");
            None
        }
        None => None,
    };
    pair(
        runs,
        (
            "podman exec, sandbox-runtime",
            Box::new(|| p.exec_true(runtime, &ours)),
        ),
        peer,
    );
}

fn exited_0(
    what: &str,
    outcome: Result<sandkasten::Outcome, sandkasten::Error>,
) -> Result<(), String> {
    match outcome {
        Ok(o) if o.status == Status::Exited(0) => Ok(()),
        Ok(o) => Err(format!("{what}: {:?}", o.status)),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Case 3: a command in a live session against a one-shot sandbox, in-process.
fn library(runs: usize) {
    let session = match Session::start(Policy::default()) {
        Ok(s) => s,
        Err(e) => {
            println!(
                "{:<40} failed: Session::start: {e}",
                "lib: Session::command"
            );
            return;
        }
    };
    pair(
        runs,
        (
            "lib: Session::command(\"true\").status()",
            Box::new(|| exited_0("Session::command", session.command("true").status())),
        ),
        Some((
            "lib: Sandbox::new(\"true\").status()",
            Box::new(|| {
                exited_0(
                    "Sandbox::status",
                    Sandbox::new("true").backend(Backend::Namespace).status(),
                )
            }),
        )),
    );
    let _ = session.stop(Duration::from_secs(1));
    vm_library(runs);
}

/// Case 3 in a VM (QEMU engine): a command of a live VM session against a one-shot VM run (a boot each).
fn vm_library(runs: usize) {
    let name = "lib: VM Session::command(\"true\") (qemu)";
    let session = match Session::start_vm(Policy::default(), sandkasten::VmEngine::Qemu) {
        Ok(s) => s,
        Err(e) => {
            println!("{name:<40} skipped: Session::start_vm: {e}");
            return;
        }
    };
    pair(
        runs,
        (
            name,
            Box::new(|| exited_0("VM Session::command", session.command("true").status())),
        ),
        Some((
            "lib: VM Sandbox::new(\"true\") (qemu, cold)",
            Box::new(|| {
                exited_0(
                    "VM Sandbox::status",
                    Sandbox::new("true")
                        .backend(Backend::Vm)
                        .vm_engine(sandkasten::VmEngine::Qemu)
                        .status(),
                )
            }),
        )),
    );
    let _ = session.stop(Duration::from_secs(1));
    vm_pooled_sessions(runs);
}

/// A VM session's start and first command: from a pool's VM booted ahead (`VmPool::prewarm_sessions`, not
/// timed) against a VM booted for it (`Session::start_vm`), QEMU engine; each stopped after (not timed).
fn vm_pooled_sessions(runs: usize) {
    let name = "lib: VM session start+true (qemu, pooled)";
    let pool = match sandkasten::VmPool::new(sandkasten::PoolOptions {
        engine: sandkasten::VmEngine::Qemu,
        memory_mib: 256,
        ..Default::default()
    }) {
        Ok(p) => p,
        Err(e) => {
            println!("{name:<40} skipped: VmPool::new: {e}");
            return;
        }
    };
    let first = |s: &Session| exited_0("VM Session::command", s.command("true").status());
    pair_timed(
        runs,
        (
            name,
            Box::new(|| {
                pool.prewarm_sessions(1).map_err(|e| e.to_string())?;
                let t = Instant::now();
                let s = Session::start_pooled(Policy::default(), &pool)
                    .map_err(|e| format!("Session::start_pooled: {e}"))?;
                first(&s)?;
                let took = t.elapsed();
                let _ = s.stop(Duration::from_secs(1));
                Ok(took)
            }),
        ),
        Some((
            "lib: VM session start+true (qemu, cold)",
            Box::new(|| {
                let t = Instant::now();
                let s = Session::start_vm(Policy::default(), sandkasten::VmEngine::Qemu)
                    .map_err(|e| format!("Session::start_vm: {e}"))?;
                first(&s)?;
                let took = t.elapsed();
                let _ = s.stop(Duration::from_secs(1));
                Ok(took)
            }),
        )),
    );
}

/// A session made with `sandbox create` in a state directory of its own, removed on drop.
struct CliSession<'a> {
    cli: &'a Path,
    state: PathBuf,
    id: String,
}

impl CliSession<'_> {
    fn create(cli: &Path) -> Result<CliSession<'_>, String> {
        let state =
            std::env::temp_dir().join(format!("sandbox-bench-state.{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .map_err(|e| format!("{}: {e}", state.display()))?;
        let mut s = CliSession {
            cli,
            state,
            id: String::new(),
        };
        s.id = quiet(
            Command::new(cli)
                .arg("create")
                .arg("--state-dir")
                .arg(&s.state),
        )?
        .trim()
        .to_string();
        Ok(s)
    }

    fn exec_true(&self) -> Result<(), String> {
        quiet(
            Command::new(self.cli)
                .arg("exec")
                .arg("--state-dir")
                .arg(&self.state)
                .args([&self.id, "--", "true"]),
        )
        .map(drop)
    }
}

impl Drop for CliSession<'_> {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = quiet(
                Command::new(self.cli)
                    .arg("rm")
                    .arg("--state-dir")
                    .arg(&self.state)
                    .args(["-f", &self.id]),
            );
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Case 3 through the CLI: `sandbox exec ID -- true` against `sandbox run -- true`.
fn command_line(runs: usize, cli: &Path) {
    let session = match CliSession::create(cli) {
        Ok(s) => s,
        Err(e) => {
            println!("{:<40} failed: sandbox create: {e}", "cli: sandbox exec");
            return;
        }
    };
    pair(
        runs,
        (
            "cli: sandbox exec ID -- true",
            Box::new(|| session.exec_true()),
        ),
        Some((
            "cli: sandbox run -- true",
            Box::new(|| quiet(Command::new(cli).args(["run", "--", "true"])).map(drop)),
        )),
    );
}
