//! Escape probes: small programs that try, from inside the sandbox, to reach what is outside it (host files
//! beyond the view, the host's processes, network and terminals, kernel interfaces, privileges), each with
//! the safe outcome asserted precisely: an errno, or state the test observes on the host.
//!
//! All probes run in one test, `escape_probes`, which prints a table probe → outcome (see it with
//! `--nocapture`) and fails listing every probe that did not end as expected. `SANDBOX_PROBE=<substring>`
//! runs a subset; `SANDBOX_TEST_BACKEND=namespace|vm|auto` picks the backend (namespace by default), so the
//! same probes can run against the VM backend.
//!
//! The probes are python (`escape/probes.py`, ctypes for raw system calls) and one C program
//! (`escape/identity.c`, compiled with `cc` at test time) for the set-user-ID and file-capability probes.
//! Every probe is harmless if it succeeds (see the header of probes.py). CI runs this as root and as uid
//! 65534; the two probes that need host root to build their fixture say `SKIPPED` in the unprivileged run.

mod common;

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::TempDir;
use sandbox::seccomp::SeccompProfile;
use sandbox::{Network, Outcome, Policy, Sandbox, Stage, Status, Stdio};

const PROBES_PY: &str = include_str!("escape/probes.py");
const IDENTITY_C: &str = include_str!("escape/identity.c");
/// No probe needs more than a second; a hung one must not hang the suite.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

use common::backend;

/// What a probe observed, when it ended as expected.
enum Observed {
    /// The attempt failed the expected way; the text says how.
    Safe(String),
    /// Not run here, and why (CI runs it as root).
    Skipped(String),
}

type Check = Result<Observed, String>;

/// How a probe runs.
enum How {
    /// probes.py's `probe` under `policy()`: it must exit 0 and print exactly `want`.
    Py {
        probe: &'static str,
        policy: fn() -> Policy,
        want: &'static str,
    },
    /// probes.py's `probe`: the seccomp filter must kill it with SIGSYS before it prints anything.
    Killed(&'static str),
    /// A fixture on the host, or an expectation that depends on the host.
    Custom(fn(&Ctx) -> Check),
}

struct Probe {
    name: &'static str,
    /// What it tries.
    attempt: &'static str,
    how: How,
    /// A weakness of the sandbox this probe reproduces (see SECURITY.md): reported, not failed, by
    /// `escape_probes`, and asserted by an ignored test of its own.
    weakness: Option<&'static str>,
}

fn default() -> Policy {
    Policy::default()
}

fn no_seccomp() -> Policy {
    Policy::default().seccomp(SeccompProfile::None)
}

/// Facts about the host and the sandbox every probe may need.
struct Ctx {
    root: bool,
    /// `HOST_NS_<NS>` = this process's namespace links, passed to every probe.
    host_ns: Vec<(String, String)>,
    /// What landlock enforces by default here (from a first run).
    landlock: Option<sandbox::landlock::Enforced>,
    /// The compiled C probe.
    identity: OnceLock<Result<PathBuf, String>>,
    scratch: TempDir,
}

impl Ctx {
    fn new() -> Ctx {
        let host_ns = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts", "time"]
            .iter()
            .map(|ns| {
                let link = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
                let name = format!("HOST_NS_{}", ns.to_uppercase());
                (name, link.to_string_lossy().into_owned())
            })
            .collect();
        let first = Sandbox::new("/bin/true")
            .backend(backend())
            .output()
            .unwrap();
        assert_eq!(
            first.status,
            Status::Exited(0),
            "the sandbox does not work at all here: {first:?}"
        );
        Ctx {
            root: common::is_root(),
            host_ns,
            landlock: first.enforced.landlock.clone(),
            identity: OnceLock::new(),
            scratch: TempDir::new("escape-bin"),
        }
    }

    fn sandbox(&self, program: &str, args: &[&str], policy: Policy) -> Sandbox {
        let mut s = Sandbox::new(program);
        s.args(args)
            .backend(backend())
            .policy(policy.timeout(PROBE_TIMEOUT));
        for (k, v) in &self.host_ns {
            s.env(k, v);
        }
        s
    }

    fn run(&self, program: &str, args: &[&str], policy: Policy) -> Outcome {
        let mut s = self.sandbox(program, args, policy);
        s.output().expect("the probe's policy is valid")
    }

    /// probes.py's `probe` with `args`, not started yet.
    fn py_sandbox(&self, probe: &str, args: &[&str], policy: Policy) -> Sandbox {
        let mut all = vec!["-c", PROBES_PY, probe];
        all.extend_from_slice(args);
        self.sandbox("/usr/bin/python3", &all, policy)
    }

    /// Runs `probe` of probes.py with `args`.
    fn py(&self, probe: &str, args: &[&str], policy: Policy) -> Outcome {
        let mut s = self.py_sandbox(probe, args, policy);
        s.output().expect("the probe's policy is valid")
    }

    fn landlock_net(&self) -> bool {
        self.landlock.as_ref().is_some_and(|l| l.net.is_some())
    }

    fn landlock_scope(&self, scope: &str) -> bool {
        let scopes = self.landlock.as_ref().map(|l| &l.scopes[..]);
        scopes.unwrap_or_default().iter().any(|s| s == scope)
    }

    /// The C probe, compiled once.
    fn identity(&self) -> Result<&Path, String> {
        let compiled = self.identity.get_or_init(|| {
            let src = self.scratch.path().join("identity.c");
            let bin = self.scratch.path().join("identity");
            std::fs::write(&src, IDENTITY_C).map_err(|e| e.to_string())?;
            let out = std::process::Command::new("cc")
                .arg("-o")
                .arg(&bin)
                .arg(&src)
                .output()
                .map_err(|e| format!("cannot run cc ({e}): install gcc"))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(format!("cc failed: {err}"));
            }
            Ok(bin)
        });
        compiled.as_deref().map_err(Clone::clone)
    }
}

fn stdout(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn describe(o: &Outcome, want: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let skip = err.chars().count().saturating_sub(400);
    let tail: String = err.chars().skip(skip).collect();
    format!(
        "expected {want:?}\n      got {:?} with stdout {:?}\n      stderr: {tail}",
        o.status,
        stdout(o)
    )
}

/// The probe exited 0 and printed exactly `want`.
fn expect(o: &Outcome, want: &str) -> Check {
    if o.status == Status::Exited(0) && stdout(o) == want {
        Ok(Observed::Safe(want.to_string()))
    } else {
        Err(describe(o, want))
    }
}

fn mkdir(p: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_path_buf()
}

fn write(p: &Path, text: &str, mode: u32) -> PathBuf {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A line of `key=value` for each name, in order.
fn each(names: &[&str], value: impl Fn(&str) -> String) -> String {
    let parts: Vec<String> = names.iter().map(|n| format!("{n}={}", value(n))).collect();
    parts.join(" ")
}

/// An error when a listener on the host got anything within a short wait.
fn nothing_arrives(mut poll: impl FnMut() -> std::io::Result<()>) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(200) {
        match poll() {
            Ok(()) => return Err("a connection or datagram arrived on the host".into()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("host listener error: {e}")),
        }
    }
    Ok(())
}

// --- the filesystem view ------------------------------------------------------------------------------------

fn inherited_fds(c: &Ctx) -> Check {
    // A careless host: a descriptor of the host's root directory without close-on-exec, at a high number.
    let root = std::fs::File::open("/").unwrap();
    // SAFETY: F_DUPFD on a descriptor we own; the duplicate is closed below.
    let leaked = unsafe { libc::fcntl(root.as_raw_fd(), libc::F_DUPFD, 200) };
    assert!(leaked >= 200, "{}", std::io::Error::last_os_error());
    let o = c.py("inherited_fds", &[], default());
    // SAFETY: closing the duplicate made above, which nothing else uses.
    unsafe { libc::close(leaked) };
    expect(&o, "open=0,1,2")
}

/// `..` out of a read-only bind of `T/inner`, looking for the canary at `T/canary-escape`.
fn bind_dotdot(c: &Ctx, probe: &str, want: &str) -> Check {
    let t = TempDir::new("escape-dotdot");
    let inner = mkdir(&t.path().join("inner"), 0o755);
    write(&t.path().join("canary-escape"), "host", 0o644);
    let o = c.py(
        probe,
        &["canary-escape"],
        default().ro_bind(&inner, "/data"),
    );
    expect(&o, want)
}

fn bind_dotdot_fd(c: &Ctx) -> Check {
    let want = "parent_is_root=True top_is_root=True canary=ENOENT";
    bind_dotdot(c, "bind_dotdot_fd", want)
}

fn bind_dotdot_path(c: &Ctx) -> Check {
    bind_dotdot(
        c,
        "bind_dotdot_path",
        "canary=ENOENT deep=ENOENT realpath=/",
    )
}

/// A host file the sandbox must never see: outside every bind, in a directory only its owner may enter.
fn secret(t: &TempDir) -> (PathBuf, String) {
    let dir = mkdir(&t.path().join("private"), 0o700);
    let text = format!("host-secret-{}", std::process::id());
    (write(&dir.join("secret"), &text, 0o644), text)
}

fn planted_symlinks(c: &Ctx) -> Check {
    let t = TempDir::new("escape-plant");
    let (secret, text) = secret(&t);
    let data = mkdir(&t.path().join("data"), 0o777);
    let policy = default().bind(&data, "/data");
    let planted = c.py("plant_symlinks", &[s(&secret)], policy.clone());
    expect(&planted, "planted")?;
    let o = c.py("follow_planted", &[], policy);
    if std::fs::read_to_string(&secret).unwrap() != text {
        return Err("the host file behind the planted links changed".into());
    }
    expect(&o, "abs=ENOENT rel=ENOENT via-init=EACCES")
}

fn planted_bind_source(c: &Ctx) -> Check {
    let t = TempDir::new("escape-source");
    let (secret, text) = secret(&t);
    let data = mkdir(&t.path().join("data"), 0o777);
    let input = write(&data.join("input"), "harmless input", 0o666);
    // Run 1 may write `data` (a build step, say) and replaces the next step's input by a link.
    let planted = c.py(
        "plant_input_link",
        &[s(&secret)],
        default().bind(&data, "/data"),
    );
    expect(&planted, "planted")?;
    // Run 2 binds that input, as a pipeline would.
    let o = c.py("read_input", &[&text], default().ro_bind(&input, "/input"));
    match (&o.status, stdout(&o).as_str()) {
        (Status::SetupFailed(f), _) => Ok(Observed::Safe(format!("refused: {f}"))),
        (Status::Exited(0), out @ ("input=harmless" | "input=ENOENT")) => {
            Ok(Observed::Safe(out.into()))
        }
        // An unprivileged caller's sandboxes plant links owned by the caller itself, which the sandbox cannot
        // tell from the caller's own links (SECURITY.md, Fixed weaknesses 1); the file is one the caller may
        // read anyway. For a root caller the link is nobody's, and refused.
        (_, "input=HOST-SECRET") if !common::is_root() => Ok(Observed::Skipped(
            "unprivileged caller: a link planted by its own sandbox is owned by the caller and followed \
             (documented limit; only the caller's own files are reachable)"
                .into(),
        )),
        (_, "input=HOST-SECRET") => Err(format!(
            "the bind source {input:?} is a link an earlier run planted, and the host file it points to \
             ({secret:?}, outside every bind of both runs) was bound: input=HOST-SECRET"
        )),
        _ => Err(describe(&o, "setup refused, or input=harmless")),
    }
}

fn planted_bind_destination(c: &Ctx) -> Check {
    // A destination is a mount point inside a read-write host bind, so an earlier run can replace it by a link.
    // (Inside a tmpfs this cannot happen: every tmpfs is new and filled before the program starts.) The link
    // leads, while the view is built, into the host's root at /oldroot (see probes.py).
    let w = TempDir::new("escape-dest");
    mkdir(&w.path().join("a"), 0o777);
    let data = mkdir(&w.path().join("a/data"), 0o777);
    mkdir(&data.join("sub"), 0o777);
    let t = TempDir::new("escape-dest-target");
    let target = mkdir(&t.path().join("target"), 0o755);
    write(&target.join("canary"), "host", 0o644);
    let before = common::host_mounts();
    let planted = c.py(
        "plant_destination_link",
        &[s(&target)],
        default().bind(w.path(), "/w"),
    );
    expect(&planted, "planted")?;
    let policy = default().bind(&data, "/data").tmpfs("/data/sub");
    let with = c.py("look_at_destination", &["canary"], policy.clone());
    let mut off = policy;
    off.landlock.enabled = false;
    let without = c.py("look_at_destination", &["canary"], off);
    let listing: Vec<_> = std::fs::read_dir(&target).unwrap().flatten().collect();
    if listing.len() != 1 || std::fs::read_to_string(target.join("canary")).unwrap() != "host" {
        return Err(format!(
            "the host directory behind the link changed: {listing:?}"
        ));
    }
    if common::host_mounts() != before {
        return Err("the host's mount table changed".into());
    }
    let refused = matches!(&with.status,
        Status::SetupFailed(f) if f.stage == Stage::Landlock && f.errno == Some(libc::ENOENT));
    if !refused {
        return Err(describe(
            &with,
            "setup failure at landlock (ENOENT): the rule's path dangles",
        ));
    }
    expect(&without, "sub=ENOENT canary=ENOENT")?;
    Ok(Observed::Safe(
        "setup fails at landlock; without landlock the tmpfs lands on the detached host root and /data/sub \
         dangles; host untouched"
            .into(),
    ))
}

/// Every way to change a file of a read-only bind fails with EROFS, although the host file and its directory
/// are writable by everyone (modes 0666 and 0777): the mount is what refuses.
const RO_WRITES: &str = "write=EROFS create=EROFS mkdir=EROFS unlink=EROFS rename=EROFS chmod=EROFS \
                         utime=EROFS truncate=EROFS reopen_rw=EROFS system=EROFS etc=EROFS";

/// probes.py's `probe` with a read-only bind of a world-writable host directory at /data, which must be
/// unchanged afterwards.
fn ro_probe(c: &Ctx, probe: &str, policy: Policy, want: &str) -> Check {
    let t = TempDir::new("escape-ro");
    let f = write(&t.path().join("f"), "original", 0o666);
    let o = c.py(probe, &[], policy.ro_bind(t.path(), "/data"));
    let entries = std::fs::read_dir(t.path()).unwrap().count();
    if std::fs::read_to_string(&f).unwrap() != "original" || entries != 1 {
        return Err("the read-only bind's host directory changed".into());
    }
    expect(&o, want)
}

fn ro_bind_writes(c: &Ctx) -> Check {
    ro_probe(c, "ro_bind_writes", default(), RO_WRITES)
}

fn ro_bind_writes_no_landlock(c: &Ctx) -> Check {
    let mut p = default();
    p.landlock.enabled = false;
    ro_probe(c, "ro_bind_writes", p, RO_WRITES)
}

fn remount_rw(c: &Ctx) -> Check {
    ro_probe(
        c,
        "remount_rw",
        default(),
        "data=EPERM root=EPERM usr=EPERM",
    )
}

fn mount_setattr_rw(c: &Ctx) -> Check {
    ro_probe(c, "mount_setattr_rw", default(), "data=EPERM root=EPERM")
}

fn open_tree_move_mount(c: &Ctx) -> Check {
    let want = "open_tree=EPERM move_mount=EPERM";
    ro_probe(c, "open_tree_move_mount", default(), want)
}

fn fsopen_new_mount(c: &Ctx) -> Check {
    let want = "fsopen=EPERM fspick=EPERM fsmount=EPERM";
    ro_probe(c, "fsopen_new_mount", default(), want)
}

fn no_caps_mount_layer(c: &Ctx) -> Check {
    let want = "remount=EPERM setattr=EPERM open_tree=EPERM fsopen=EPERM umount_masked=EPERM chroot=EPERM \
                pivot_root=EPERM";
    ro_probe(c, "no_caps_mount_layer", no_seccomp(), want)
}

fn masked_proc(c: &Ctx) -> Check {
    let masked = [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
        "sysrq-trigger",
    ];
    let mut want = each(&masked, |f| {
        let there = Path::new("/proc").join(f).exists();
        if there {
            "1:3,0B,umount:EPERM"
        } else {
            "absent"
        }
        .to_string()
    });
    for d in ["acpi", "scsi", "asound"] {
        if Path::new("/proc").join(d).is_dir() {
            want.push_str(&format!(" {d}=0"));
        }
    }
    expect(&c.py("masked_proc", &[], default()), &want)
}

fn proc_root_only(c: &Ctx) -> Check {
    let files = [
        "kpagecount",
        "kpageflags",
        "kpagecgroup",
        "slabinfo",
        "vmallocinfo",
        "pagetypeinfo",
        "kmsg",
    ];
    let present: Vec<&str> = files
        .into_iter()
        .filter(|f| Path::new("/proc").join(f).exists())
        .collect();
    let mut want = each(&present, |_| "EACCES".into());
    if Path::new("/proc/mtrr").exists() {
        want.push_str(" mtrr_write=EACCES");
    }
    expect(&c.py("proc_root_only", &[], default()), want.trim())
}

fn sysrq_trigger(c: &Ctx) -> Check {
    let want = if Path::new("/proc/sysrq-trigger").exists() {
        "dev=1:3 open_write=EACCES"
    } else {
        "sysrq-trigger=absent"
    };
    expect(&c.py("sysrq_trigger", &[], default()), want)
}

fn proc_sys_write(c: &Ctx) -> Check {
    let sysctls = [
        "kernel/core_pattern",
        "kernel/sysrq",
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/hostname",
    ];
    let present: Vec<&str> = sysctls
        .into_iter()
        .filter(|p| Path::new("/proc/sys").join(p).exists())
        .collect();
    let want = each(&present, |_| "EROFS".into());
    expect(&c.py("proc_sys_write", &[], default()), &want)
}

fn kernel_info_leaks(c: &Ctx) -> Check {
    let kmsg = if Path::new("/proc/kmsg").exists() {
        "EACCES"
    } else {
        "ENOENT"
    };
    let want = format!("kallsyms_nonzero=0 proc_kmsg={kmsg} dev_kmsg=ENOENT");
    expect(&c.py("kernel_info_leaks", &[], default()), &want)
}

fn core_dumps(c: &Ctx) -> Check {
    let pattern = std::fs::read("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pipe = if pattern.starts_with(b"|") {
        "yes"
    } else {
        "no"
    };
    let want = format!("core_limit=1/1 pipe_pattern={pipe}");
    expect(&c.py("core_dumps", &[], default()), &want)
}

fn dev_nodes(c: &Ctx) -> Check {
    let standard = ["null", "zero", "full", "random", "urandom", "tty"];
    let mut dev: Vec<&str> = standard
        .into_iter()
        .filter(|n| Path::new("/dev").join(n).exists())
        .chain(["pts", "ptmx", "shm", "fd", "stdin", "stdout", "stderr"])
        .collect();
    dev.sort_unstable();
    let absent = [
        "kvm", "mem", "kmem", "port", "sda", "vda", "nvme0", "kmsg", "fuse", "net/tun", "dri",
        "mapper",
    ];
    let want = format!(
        "dev={} pts=ptmx {}",
        dev.join(","),
        each(&absent, |_| "ENOENT".into())
    );
    expect(&c.py("dev_nodes", &[], default()), &want)
}

fn system_setuid_nosuid(c: &Ctx) -> Check {
    let some = ["/usr/bin", "/usr/sbin"].iter().any(|d| {
        let entries = std::fs::read_dir(d).into_iter().flatten().flatten();
        entries
            .filter_map(|e| e.path().symlink_metadata().ok())
            .any(|m| m.is_file() && m.mode() & 0o4000 != 0)
    });
    let some = if some { "some" } else { "none" };
    let want = format!("setuid_files={some} nosuid=True rdonly=True");
    expect(&c.py("system_setuid_nosuid", &[], default()), &want)
}

/// A copy of the C probe and a file only host root may read, both owned by host root, in a read-write bind.
fn privileged_fixture(c: &Ctx, tag: &str, mode: u32) -> Result<TempDir, String> {
    let bin = c.identity()?;
    let t = TempDir::new(tag);
    let secret = write(&t.path().join("rootonly"), "secret", 0o600);
    let copy = t.path().join("probe");
    std::fs::copy(bin, &copy).unwrap();
    for p in [&secret, &copy] {
        std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    Ok(t)
}

fn setuid_root_copy(c: &Ctx) -> Check {
    if !c.root {
        let why = "needs host root to make a root-owned set-user-ID file";
        return Ok(Observed::Skipped(why.into()));
    }
    let t = privileged_fixture(c, "escape-suid", 0o4755)?;
    // A sandbox user other than 0, so that a gain would show in the effective uid.
    let p = default().bind(t.path(), "/data").user(1000, 1000);
    let o = c.run("/data/probe", &["/data/rootonly"], p);
    expect(
        &o,
        "ruid=1000 euid=1000 suid=1000 caps=0000000000000000 open=EACCES",
    )
}

fn file_caps_binary(c: &Ctx) -> Check {
    if !c.root {
        return Ok(Observed::Skipped(
            "needs host root to give a file capabilities".into(),
        ));
    }
    let t = privileged_fixture(c, "escape-fcap", 0o755)?;
    // What `setcap cap_dac_override,cap_dac_read_search+ep` writes: vfs_cap_data revision 2, effective.
    let data: Vec<u8> = [0x0200_0001u32, 0b110, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let path = CString::new(s(&t.path().join("probe"))).unwrap();
    // SAFETY: NUL-terminated path and name; `data` is valid for its length.
    let r = unsafe {
        let name = c"security.capability".as_ptr();
        libc::setxattr(path.as_ptr(), name, data.as_ptr().cast(), data.len(), 0)
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "setting the file capability on the host failed: {e}"
        ));
    }
    let o = c.run(
        "/data/probe",
        &["/data/rootonly"],
        default().bind(t.path(), "/data"),
    );
    expect(&o, "ruid=0 euid=0 suid=0 caps=0000000000000000 open=EACCES")
}

fn plant_setuid_in_rw_bind(c: &Ctx) -> Check {
    let t = TempDir::new("escape-plant-suid");
    let o = c.py("plant_setuid", &[], default().bind(t.path(), "/data"));
    let planted: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let mode = e.metadata().ok()?.mode();
            let name = e.file_name().to_string_lossy().into_owned();
            (mode & 0o6000 != 0).then(|| format!("{name} ({mode:o})"))
        })
        .collect();
    if !planted.is_empty() {
        return Err(format!(
            "set-user/group-ID files left on the host, owned by the sandbox's host uid: {planted:?} ({})",
            stdout(&o)
        ));
    }
    expect(
        &o,
        "chmod_suid=EPERM chmod_sgid=EPERM open_creat=EPERM mknod=EPERM",
    )
}

fn identity(c: &Ctx) -> Check {
    let t = TempDir::new("escape-identity");
    let o = c.py("identity", &[], default().bind(t.path(), "/data"));
    let (uid, gid) = if c.root {
        (default().host_uid, default().host_gid)
    } else {
        // SAFETY: geteuid and getegid have no preconditions.
        unsafe { (libc::geteuid(), libc::getegid()) }
    };
    for name in ["owned", "owned-dir"] {
        match std::fs::metadata(t.path().join(name)) {
            Ok(m) if m.uid() == uid && m.gid() == gid && (m.uid() != 0 || !c.root) => {}
            Ok(m) => {
                let (u, g) = (m.uid(), m.gid());
                return Err(format!(
                    "{name} made inside is owned by {u}:{g} on the host, not {uid}:{gid}"
                ));
            }
            Err(e) => return Err(format!("{name} was not made ({e}): {}", describe(&o, ""))),
        }
    }
    let want =
        format!("uid=0 gid=0 uid_map=0 {uid} 1 gid_map=0 {gid} 1 setuid1=EINVAL chown=EINVAL");
    expect(&o, &want)
}

// --- namespaces, processes, network -------------------------------------------------------------------------

fn with_host_pid(c: &Ctx, probe: &str, want: &str) -> Check {
    let pid = std::process::id().to_string();
    expect(&c.py(probe, &[&pid], default()), want)
}

fn pid_visibility(c: &Ctx) -> Check {
    with_host_pid(
        c,
        "pid_visibility",
        "host_pid_visible=False count_small=True",
    )
}

fn host_signal(c: &Ctx) -> Check {
    with_host_pid(c, "host_signal", "kill=ESRCH pidfd_open=ESRCH")
}

const DENIED: [&str; 19] = [
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "iopl",
    "ioperm",
    "syslog",
    "reboot",
    "process_vm_readv",
];

fn dangerous_syscalls(c: &Ctx) -> Check {
    let want = format!(
        "{} dev_userfaultfd=ENOENT",
        each(&DENIED, |_| "EPERM".into())
    );
    let o = c.py("dangerous_syscalls", &[], default());
    let r = expect(&o, &want)?;
    // The verdict names each denied call.
    let listed = |n: &&str| o.denied_syscalls.iter().any(|d| d.syscall == *n);
    let missing: Vec<_> = DENIED.iter().filter(|n| !listed(n)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "denied but missing from the verdict's denied_syscalls: {missing:?}"
        ));
    }
    Ok(r)
}

fn tiocsti_inherited_pty(c: &Ctx) -> Check {
    let pty = nix::pty::openpty(None, None).unwrap();
    let (master, slave) = (pty.master, pty.slave);
    // Raw mode, so that one injected byte is readable at once; non-blocking, to look without waiting.
    let mut t = nix::sys::termios::tcgetattr(&slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    let flags = nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&slave, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    let stdin = slave.try_clone().unwrap();
    let mut s = c.py_sandbox("tiocsti_stdin", &[], default());
    let o = s.stdin(Stdio::Fd(stdin)).output().unwrap();
    let mut buf = [0u8; 16];
    if nix::unistd::read(&slave, &mut buf).is_ok_and(|n| n > 0) {
        return Err("input was typed into the host's terminal".into());
    }
    drop(master);
    // The program may take a terminal nobody controls (its session has none); typing into it is refused.
    expect(&o, "sctty=OK tiocsti=EPERM")
}

fn host_tcp_with(c: &Ctx, allow_port: bool) -> Check {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = default();
    if allow_port {
        p.landlock.tcp_connect = vec![port];
    }
    let o = c.py("host_tcp", &[&port.to_string()], p);
    nothing_arrives(|| listener.accept().map(drop))?;
    // Landlock (ABI 4+) refuses the port before the (empty) loopback of the sandbox's own netns does.
    let landlock_first = c.landlock_net() && !allow_port;
    let want = if landlock_first {
        "connect=EACCES"
    } else {
        "connect=ECONNREFUSED"
    };
    expect(&o, want)
}

fn host_tcp(c: &Ctx) -> Check {
    host_tcp_with(c, false)
}

fn host_tcp_netns_only(c: &Ctx) -> Check {
    host_tcp_with(c, true)
}

fn host_udp(c: &Ctx) -> Check {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let o = c.py("host_udp", &[&port], default());
    let mut buf = [0u8; 64];
    nothing_arrives(|| sock.recv(&mut buf).map(drop))?;
    // Sent, to the sandbox's own loopback, where nobody listens.
    expect(&o, "sendto=OK")
}

fn host_abstract_with(c: &Ctx, policy: Policy, want: &str) -> Check {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("sandbox-escape-{}-{n}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let o = c.py("host_abstract", &[&name], policy);
    nothing_arrives(|| listener.accept().map(drop))?;
    expect(&o, want)
}

/// Abstract unix sockets belong to a network namespace: the host's are not there to find.
fn host_abstract(c: &Ctx) -> Check {
    host_abstract_with(c, default(), "connect=ECONNREFUSED")
}

/// With the host's network (opt-in) the host's abstract sockets are found; landlock's scope (ABI 6+) refuses.
fn host_abstract_host_network(c: &Ctx) -> Check {
    if !c.landlock_scope("abstract_unix_socket") {
        let why = "landlock ABI < 6: with Network::Host the host's abstract sockets are reachable (SECURITY.md)";
        return Ok(Observed::Skipped(why.into()));
    }
    host_abstract_with(c, default().network(Network::Host), "connect=EPERM")
}

macro_rules! probes {
    ($($name:ident: $attempt:literal => $how:expr $(, weakness = $w:literal)?;)*) => {
        vec![$(Probe {
            name: stringify!($name),
            attempt: $attempt,
            how: $how,
            weakness: None$(.or(Some($w)))?,
        }),*]
    };
}

fn py(probe: &'static str, want: &'static str) -> How {
    How::Py {
        probe,
        policy: default,
        want,
    }
}

fn py_with(probe: &'static str, policy: fn() -> Policy, want: &'static str) -> How {
    How::Py {
        probe,
        policy,
        want,
    }
}

/// Every probe, in the order of the table.
fn probes() -> Vec<Probe> {
    use How::{Custom, Killed};
    probes![
        chroot_dotdot: "chroot into a subdirectory, then chdir(\"..\") 64 times"
            => py("chroot_dotdot", "chroot=EPERM dotdot_is_root=True host_entries=none");
        pivot_root: "pivot_root(\".\", \".\")" => py("pivot_root", "pivot_root=EPERM");
        open_by_handle: "name_to_handle_at, open_by_handle_at of the host fs's root inode (shocker)"
            => py("open_by_handle", "name_to_handle_at=EPERM open_by_handle_at=EPERM");
        open_by_handle_no_seccomp: "the same without the seccomp filter"
            => py_with("open_by_handle", no_seccomp, "name_to_handle_at=OK open_by_handle_at=EPERM");
        proc1_links: "readlink and open /proc/1/{root,cwd,exe} (the init's exe is the host program)"
            => py("proc1_links", "root=EACCES cwd=EACCES exe=EACCES list_root=EACCES open_exe=EACCES");
        proc_self_root: "walk /proc/self/root/../.."
            => py("proc_self_root", "readlink=/ dotdot_is_root=True");
        proc1_fds: "list and open /proc/1/fd/N, fdinfo, map_files (the init holds host pipes)"
            => py("proc1_fds", "fd=EACCES fdinfo=EACCES opened=none map_files=EACCES");
        proc1_memory: "read /proc/1/{environ,maps,mem,auxv,stack,syscall,smaps} and cmdline"
            => py("proc1_memory", "environ=EACCES maps=EACCES mem=EACCES auxv=EACCES stack=EACCES \
                                   syscall=EACCES smaps=EACCES cmdline=sandbox-init");
        proc1_stat_addresses: "read the host process's address layout from /proc/1/stat"
            => py("proc1_stat_addresses", "address_fields=hidden ppid=0");
        inherited_fds: "find descriptors beyond 0-2 (the host leaks an fd of / without CLOEXEC)"
            => Custom(inherited_fds);
        bind_dotdot_fd: "openat(fd, \"..\") 16 times from a bind's root" => Custom(bind_dotdot_fd);
        bind_dotdot_path: "/data/../<sibling of the bound host directory>" => Custom(bind_dotdot_path);
        planted_symlinks: "run 1 plants links to a host file in a rw bind; run 2 reads them"
            => Custom(planted_symlinks);
        planted_bind_source: "run 1 replaces a file by a link to a host secret; run 2 binds that file"
            => Custom(planted_bind_source);
        planted_bind_destination: "run 1 replaces a mount point in a rw bind by a link into /oldroot"
            => Custom(planted_bind_destination);
        ro_bind_writes: "write, create, unlink, rename, chmod, utime, truncate, reopen rw on a ro bind"
            => Custom(ro_bind_writes);
        ro_bind_writes_no_landlock: "the same without landlock: the mount alone refuses"
            => Custom(ro_bind_writes_no_landlock);
        remount_rw: "mount -o remount,rw on a ro bind, on / and /usr" => Custom(remount_rw);
        mount_setattr_rw: "mount_setattr clearing MOUNT_ATTR_RDONLY" => Custom(mount_setattr_rw);
        open_tree_move_mount: "open_tree(OPEN_TREE_CLONE) of a ro bind + move_mount"
            => Custom(open_tree_move_mount);
        fsopen_new_mount: "fsopen, fspick, fsmount" => Custom(fsopen_new_mount);
        no_caps_mount_layer: "the mount family, umount of a mask, chroot, pivot_root without seccomp"
            => Custom(no_caps_mount_layer);
        masked_proc: "read and umount the masked /proc files" => Custom(masked_proc);
        proc_root_only: "read /proc files only host root may read, open /proc/mtrr for writing"
            => Custom(proc_root_only);
        sysrq_trigger: "open /proc/sysrq-trigger for writing (nothing is written)" => Custom(sysrq_trigger);
        proc_sys_write: "write sysctls (core_pattern, sysrq, ...) back with their current values"
            => Custom(proc_sys_write);
        kernel_info_leaks: "kernel addresses in /proc/kallsyms, /proc/kmsg, /dev/kmsg" => Custom(kernel_info_leaks);
        core_dumps: "could a crash reach the host's core_pattern helper (RLIMIT_CORE)"
            => Custom(core_dumps);
        sys_absent: "look at /sys, mount sysfs" => py("sys_absent", "sys=ENOENT mount_sysfs=EPERM");
        cgroup_view: "read /proc/self/cgroup, mount cgroup2 and cgroup v1, write pids.max (with a pids limit)"
            => py_with("cgroup_view", || default().pids(64), "paths=/ cgroupfs=ENOENT mount_cgroup2=EPERM \
                                                           mount_cgroup1=EPERM pids_max=ENOENT");
        host_paths_absent: "look for /home, /root, /run, /var, /etc/shadow, docker.sock, ..."
            => py("host_paths_absent", "present=none");
        dev_nodes: "list /dev and /dev/pts, look for kvm, mem, disks, kmsg, fuse, tun" => Custom(dev_nodes);
        mknod_devices: "mknod /dev/mem- and disk-like nodes in /tmp and /dev/shm"
            => py("mknod_devices", "chr_mem_tmp=EPERM chr_mem_dev_shm=EPERM blk_tmp=EPERM blk_dev_shm=EPERM");
        setuid_root_copy: "run a set-user-ID-root copy of a probe from a rw bind, read a root-only file"
            => Custom(setuid_root_copy);
        file_caps_binary: "run a probe given cap_dac_override+ep on the host (setcap)" => Custom(file_caps_binary);
        system_setuid_nosuid: "the host's set-user-ID programs under /usr" => Custom(system_setuid_nosuid);
        plant_setuid_in_rw_bind: "leave set-user-ID/set-group-ID files in a rw bind for the host"
            => Custom(plant_setuid_in_rw_bind);
        file_caps_xattr: "write security.capability from inside (what setcap does)"
            => py("file_caps_xattr", "security.capability=EPERM");
        identity: "uid, maps, setuid(1), chown; host owner of files made in a rw bind" => Custom(identity);
        capabilities: "capability sets, unlock securebits, no_new_privs off, capset, sethostname"
            => py("capabilities", "caps=0 nnp=1 seccomp=2 securebits=0xef unlock=EPERM nnp_off=EINVAL \
                                   capset=EPERM sethostname=EPERM");
        rlimit_raise: "raise the hard RLIMIT_NOFILE (policy: 64) and RLIMIT_CORE, own and init's"
            => py_with("rlimit_raise", || { let mut p = default(); p.limits.nofile = Some(64); p },
                       "nofile=EPERM core=EPERM init_nofile=EPERM");
        unshare_namespaces: "unshare(CLONE_NEW*) for every namespace, and CLONE_NEWTIME"
            => py("unshare_namespaces", "mnt=EPERM cgroup=EPERM uts=EPERM ipc=EPERM user=EPERM pid=EPERM \
                                         net=EPERM time=EPERM");
        unshare_command: "unshare -U / -r -m / -n as a user would" => py("unshare_command", "-U=rc1 -r-m=rc1 -n=rc1");
        clone_namespaces: "clone(CLONE_NEW*), with high bits set, and clone3"
            => py("clone_namespaces", "mnt=EPERM cgroup=EPERM uts=EPERM ipc=EPERM user=EPERM pid=EPERM \
                                       net=EPERM user_hi=EPERM clone3=ENOSYS");
        setns_init: "open /proc/1/ns/mnt, setns to own namespaces"
            => py("setns_init", "open_init_mnt=EACCES setns_user=EPERM setns_mnt=EPERM setns_net=EPERM");
        nested_userns_cannot_unmask: "without seccomp: own user+mount ns, umount a mask, mount proc/sysfs"
            => py_with("nested_userns_cannot_unmask", no_seccomp, "unshare=OK umount_masked=EINVAL \
                       masked=1:3,0B mount_proc=EPERM mount_sysfs=EPERM remount_usr_rw=EPERM");
        namespaces_differ: "compare /proc/self/ns/* with the host's"
            => py("namespaces_differ", "differ=cgroup,ipc,mnt,net,pid,user,uts same=time");
        pid_visibility: "see the test's host pid in /proc" => Custom(pid_visibility);
        host_signal: "kill(<test pid>, 0), pidfd_open(<test pid>)" => Custom(host_signal);
        kill_init: "SIGKILL and SIGSTOP to the sandbox's init"
            => py("kill_init", "kill=OK stop=OK init_state=S");
        ptrace_init: "PTRACE_ATTACH and PTRACE_SEIZE of pid 1" => py("ptrace_init", "attach=EPERM seize=EPERM");
        ptrace_init_no_seccomp: "the same without seccomp (init is not dumpable, no capabilities)"
            => py_with("ptrace_init", no_seccomp, "attach=EPERM seize=EPERM");
        dangerous_syscalls: "keyctl, bpf, userfaultfd, perf_event_open, io_uring, kexec, modules, iopl, \
                             syslog, reboot, process_vm_readv" => Custom(dangerous_syscalls);
        tiocsti: "TIOCSTI (and 0x1_0000_5412, TIOCLINUX) on a pty from /dev/ptmx"
            => py("tiocsti", "tiocsti=EPERM tiocsti_high=EPERM tioclinux=EPERM injected=no");
        tiocsti_inherited_pty: "stdin is a host pty: TIOCSCTTY it, then TIOCSTI into it"
            => Custom(tiocsti_inherited_pty);
        int80: "a 32-bit system call through int 0x80" => Killed("int80");
        x32: "an x32 system call (bit 30)" => Killed("x32");
        sockets: "AF_PACKET, AF_ALG, AF_VSOCK, raw IPv4/IPv6, AF_PACKET with high bits"
            => py("sockets", "packet=EPERM alg=EPERM vsock=EPERM raw4=EPERM raw6=EPERM packet_high=EPERM");
        host_tcp: "connect to a TCP port the test listens on at the host's 127.0.0.1" => Custom(host_tcp);
        host_tcp_netns_only: "the same with landlock allowing the port: the netns alone refuses"
            => Custom(host_tcp_netns_only);
        host_udp: "send a datagram to a UDP port the test listens on at the host's 127.0.0.1" => Custom(host_udp);
        host_abstract: "connect to an abstract unix socket the test listens on" => Custom(host_abstract);
        host_abstract_host_network: "the same with Network::Host: landlock's scope alone refuses"
            => Custom(host_abstract_host_network);
    ]
}

fn run_one(ctx: &Ctx, p: &Probe) -> Check {
    match &p.how {
        How::Py {
            probe,
            policy,
            want,
        } => expect(&ctx.py(probe, &[], policy()), want),
        How::Killed(probe) => {
            let o = ctx.py(probe, &[], default());
            if o.status == Status::Signaled(libc::SIGSYS) && o.stdout.is_empty() {
                Ok(Observed::Safe("killed by SIGSYS".into()))
            } else {
                Err(describe(&o, "killed by SIGSYS, no output"))
            }
        }
        How::Custom(f) => f(ctx),
    }
}

/// Runs `probes` on four threads; returns each one's check and time, in order.
fn run_all(ctx: &Ctx, probes: &[&Probe]) -> Vec<(Check, Duration)> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<(Check, Duration)>>> =
        Mutex::new(probes.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = probes.get(i) else { break };
                    let start = Instant::now();
                    let check = std::panic::catch_unwind(AssertUnwindSafe(|| run_one(ctx, p)))
                        .unwrap_or_else(|e| {
                            let msg = e.downcast_ref::<String>().cloned();
                            let msg =
                                msg.or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                            Err(format!(
                                "the probe's host side panicked: {}",
                                msg.unwrap_or_default()
                            ))
                        });
                    results.lock().unwrap()[i] = Some((check, start.elapsed()));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    results
        .into_iter()
        .map(|r| r.expect("every probe ran"))
        .collect()
}

#[test]
fn escape_probes() {
    let ctx = Ctx::new();
    let filter = std::env::var("SANDBOX_PROBE").unwrap_or_default();
    let all = probes();
    let selected: Vec<&Probe> = all.iter().filter(|p| p.name.contains(&filter)).collect();
    assert!(
        !selected.is_empty(),
        "no probe matches SANDBOX_PROBE={filter:?}"
    );
    let start = Instant::now();
    let results = run_all(&ctx, &selected);
    let mut failures = Vec::new();
    let mut table = format!(
        "\n{:<28} {:<15} {:>5}  observed\n",
        "probe", "outcome", "ms"
    );
    for (p, (check, took)) in selected.iter().zip(&results) {
        let name = p.name;
        let (outcome, text) = match (check, p.weakness) {
            (Ok(Observed::Safe(t)), None) => ("safe", t.clone()),
            (Ok(Observed::Skipped(why)), _) => ("SKIPPED", why.clone()),
            (Err(e), Some(w)) => ("KNOWN WEAKNESS", format!("{w}: {}", e.replace('\n', " "))),
            (Ok(Observed::Safe(t)), Some(_)) => {
                failures.push(format!(
                    "{name}: the known weakness no longer reproduces ({t}); drop `weakness` from the probe \
                     and its #[ignore] test, and update SECURITY.md"
                ));
                ("FIXED?", t.clone())
            }
            (Err(e), None) => {
                failures.push(format!("{name} ({}): {e}", p.attempt));
                ("FAILED", e.lines().next().unwrap_or("").to_string())
            }
        };
        table.push_str(&format!(
            "{name:<28} {outcome:<15} {:>5}  {text}\n",
            took.as_millis()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    table.push_str(&format!(
        "{} probes as uid {euid}, backend {:?}, {:.1} s\n",
        selected.len(),
        backend(),
        start.elapsed().as_secs_f64()
    ));
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{} probe(s) did not end as expected:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
