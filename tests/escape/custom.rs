//! The escape probes that need more than one python call: fixtures on the host, two runs, or host-side
//! listeners. Part of tests/escape.rs (the module `escape::custom`).

use super::*;

/// /proc and /proc/sys entries the guest kernel is built without (kernel-config/guest.config): CONFIG_KEYS,
/// CONFIG_ACPI, CONFIG_PROC_KCORE, CONFIG_LATENCYTOP, CONFIG_MAGIC_SYSRQ, CONFIG_SCSI, CONFIG_SOUND,
/// CONFIG_SLUB_DEBUG, CONFIG_MTRR, CONFIG_COREDUMP. On the VM backend they must be absent, which is safe:
/// what does not exist can be neither read nor written.
const GUEST_LACKS: [&str; 11] = [
    "keys",
    "acpi",
    "kcore",
    "latency_stats",
    "sysrq-trigger",
    "scsi",
    "asound",
    "slabinfo",
    "mtrr",
    "sys/kernel/core_pattern",
    "sys/kernel/sysrq",
];

/// Whether the kernel the probe runs on has `/proc/<entry>`: the host's, less what the guest lacks on the VM
/// backend.
fn has_proc(entry: &str, is: impl Fn(&Path) -> bool) -> bool {
    is(&Path::new("/proc").join(entry)) && !(vm() && GUEST_LACKS.contains(&entry))
}

// --- the filesystem view ------------------------------------------------------------------------------------

pub(crate) fn inherited_fds(c: &Ctx) -> Check {
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
pub(crate) fn bind_dotdot(c: &Ctx, probe: &str, want: &str) -> Check {
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

pub(crate) fn bind_dotdot_fd(c: &Ctx) -> Check {
    let want = "parent_is_root=True top_is_root=True canary=ENOENT";
    bind_dotdot(c, "bind_dotdot_fd", want)
}

pub(crate) fn bind_dotdot_path(c: &Ctx) -> Check {
    bind_dotdot(
        c,
        "bind_dotdot_path",
        "canary=ENOENT deep=ENOENT realpath=/",
    )
}

/// A host file the sandbox must never see: outside every bind, in a directory only its owner may enter.
pub(crate) fn secret(t: &TempDir) -> (PathBuf, String) {
    let dir = mkdir(&t.path().join("private"), 0o700);
    let text = format!("host-secret-{}", std::process::id());
    (write(&dir.join("secret"), &text, 0o644), text)
}

pub(crate) fn planted_symlinks(c: &Ctx) -> Check {
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

pub(crate) fn planted_bind_source(c: &Ctx) -> Check {
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
    let secret_dir = secret.parent().unwrap().to_string_lossy().into_owned();
    match (&o.status, stdout(&o).as_str()) {
        // Not a refusal of the link: the host followed it and tried to share the secret's directory, which only
        // its mode (0700, not QEMU's uid) kept out. A world-readable target would have been bound.
        (Status::SetupFailed(f), _) if vm() && f.to_string().contains(&secret_dir) => Err(format!(
            "the planted link {input:?} was followed on the host: the VM backend tried to share the host \
             directory {secret_dir:?} (outside every bind of both runs), failing only for its mode: {f}"
        )),
        (Status::SetupFailed(f), _) => Ok(Observed::Safe(format!("refused: {f}"))),
        // Not a refusal either: the planted path was bound. On the VM backend a read-only bind of a single file
        // reads EACCES even for a harmless file, so this says nothing about which file it was.
        (Status::Exited(0), "input=EACCES") if vm() => Err(format!(
            "the bind source {input:?}, a link an earlier run planted, was bound instead of refused (the VM \
             backend shares the directory of the link's target); only reading it failed: input=EACCES"
        )),
        (Status::Exited(0), out @ ("input=harmless" | "input=ENOENT")) => {
            Ok(Observed::Safe(out.into()))
        }
        // An unprivileged caller's sandboxes plant links owned by the caller itself, which the sandbox cannot
        // tell from the caller's own links (SECURITY.md, Fixed weaknesses 1); the file is one the caller may
        // read anyway. For a root caller the link is nobody's, and refused.
        (_, "input=HOST-SECRET") if !testkit::is_root() => Ok(Observed::Skipped(
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

pub(crate) fn planted_bind_destination(c: &Ctx) -> Check {
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
    if vm() {
        // On the 9p share the sandbox may not create directories in ones it made itself (EACCES): make the
        // host-side half of the plant for it, so that run 2 is still tried against the planted link.
        for dir in Path::new("oldroot")
            .join(target.strip_prefix("/").unwrap())
            .ancestors()
        {
            if !dir.as_os_str().is_empty() {
                mkdir(&w.path().join(dir), 0o777);
            }
        }
    }
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
    if vm() {
        // In the guest the link resolves in the guest's own tree, where the host's root never is: the guest's
        // planner finds the mount point missing and refuses, with or without landlock (on a warm VM, whose
        // shares are mounted before the run, the mount on the dangling link fails with ENOENT instead).
        let dangles = |o: &Outcome| {
            matches!(&o.status, Status::SetupFailed(f)
                if f.stage == Stage::Mounts
                    && (f.message.contains("does not exist") || f.errno == Some(libc::ENOENT)))
        };
        if !dangles(&with) || !dangles(&without) {
            let o = if dangles(&with) { &without } else { &with };
            return Err(describe(
                o,
                "setup failure at mounts: the mount point does not exist",
            ));
        }
        return Ok(Observed::Safe(
            "setup fails at mounts in the guest (the link dangles there), with and without landlock; host \
             untouched"
                .into(),
        ));
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
pub(crate) const RO_WRITES: &str = "write=EROFS create=EROFS mkdir=EROFS unlink=EROFS rename=EROFS chmod=EROFS \
                         utime=EROFS truncate=EROFS reopen_rw=EROFS system=EROFS etc=EROFS";

/// probes.py's `probe` with a read-only bind of a world-writable host directory at /data, which must be
/// unchanged afterwards.
pub(crate) fn ro_probe(c: &Ctx, probe: &str, policy: Policy, want: &str) -> Check {
    let t = TempDir::new("escape-ro");
    let f = write(&t.path().join("f"), "original", 0o666);
    let o = c.py(probe, &[], policy.ro_bind(t.path(), "/data"));
    let entries = std::fs::read_dir(t.path()).unwrap().count();
    if std::fs::read_to_string(&f).unwrap() != "original" || entries != 1 {
        return Err("the read-only bind's host directory changed".into());
    }
    expect(&o, want)
}

pub(crate) fn ro_bind_writes(c: &Ctx) -> Check {
    ro_probe(c, "ro_bind_writes", default(), RO_WRITES)
}

pub(crate) fn ro_bind_writes_no_landlock(c: &Ctx) -> Check {
    let mut p = default();
    p.landlock.enabled = false;
    ro_probe(c, "ro_bind_writes", p, RO_WRITES)
}

pub(crate) fn remount_rw(c: &Ctx) -> Check {
    ro_probe(
        c,
        "remount_rw",
        default(),
        "data=EPERM root=EPERM usr=EPERM",
    )
}

pub(crate) fn mount_setattr_rw(c: &Ctx) -> Check {
    ro_probe(c, "mount_setattr_rw", default(), "data=EPERM root=EPERM")
}

pub(crate) fn open_tree_move_mount(c: &Ctx) -> Check {
    let want = "open_tree=EPERM move_mount=EPERM";
    ro_probe(c, "open_tree_move_mount", default(), want)
}

pub(crate) fn fsopen_new_mount(c: &Ctx) -> Check {
    let want = "fsopen=EPERM fspick=EPERM fsmount=EPERM";
    ro_probe(c, "fsopen_new_mount", default(), want)
}

pub(crate) fn no_caps_mount_layer(c: &Ctx) -> Check {
    let want = "remount=EPERM setattr=EPERM open_tree=EPERM fsopen=EPERM umount_masked=EPERM chroot=EPERM \
                pivot_root=EPERM";
    ro_probe(c, "no_caps_mount_layer", no_seccomp(), want)
}

pub(crate) fn masked_proc(c: &Ctx) -> Check {
    let masked = [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
        "sysrq-trigger",
    ];
    let mut want = each(&masked, |f| {
        if has_proc(f, Path::exists) {
            "1:3,0B,umount:EPERM"
        } else {
            "absent"
        }
        .to_string()
    });
    for d in ["acpi", "scsi", "asound"] {
        if has_proc(d, Path::is_dir) {
            want.push_str(&format!(" {d}=0"));
        }
    }
    expect(&c.py("masked_proc", &[], default()), &want)
}

pub(crate) fn proc_root_only(c: &Ctx) -> Check {
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
        .filter(|f| has_proc(f, Path::exists))
        .collect();
    let mut want = each(&present, |_| "EACCES".into());
    if has_proc("mtrr", Path::exists) {
        want.push_str(" mtrr_write=EACCES");
    }
    expect(&c.py("proc_root_only", &[], default()), want.trim())
}

pub(crate) fn sysrq_trigger(c: &Ctx) -> Check {
    let want = if has_proc("sysrq-trigger", Path::exists) {
        "dev=1:3 open_write=EACCES"
    } else {
        "sysrq-trigger=absent"
    };
    expect(&c.py("sysrq_trigger", &[], default()), want)
}

pub(crate) fn proc_sys_write(c: &Ctx) -> Check {
    let sysctls = [
        "kernel/core_pattern",
        "kernel/sysrq",
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/hostname",
    ];
    let present: Vec<&str> = sysctls
        .into_iter()
        .filter(|p| has_proc(&format!("sys/{p}"), Path::exists))
        .collect();
    let want = each(&present, |_| "EROFS".into());
    expect(&c.py("proc_sys_write", &[], default()), &want)
}

pub(crate) fn kernel_info_leaks(c: &Ctx) -> Check {
    let kmsg = if Path::new("/proc/kmsg").exists() {
        "EACCES"
    } else {
        "ENOENT"
    };
    let want = format!("kallsyms_nonzero=0 proc_kmsg={kmsg} dev_kmsg=ENOENT");
    expect(&c.py("kernel_info_leaks", &[], default()), &want)
}

pub(crate) fn core_dumps(c: &Ctx) -> Check {
    let pattern = std::fs::read("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pipe = if !has_proc("sys/kernel/core_pattern", Path::exists) {
        // The guest kernel has no CONFIG_COREDUMP: no crash there dumps anywhere, and a guest's crash never
        // reaches the host's core_pattern (the host process is QEMU, which does not crash with it).
        "absent"
    } else if pattern.starts_with(b"|") {
        "yes"
    } else {
        "no"
    };
    let want = format!("core_limit=1/1 pipe_pattern={pipe}");
    let o = c.py("core_dumps", &[], default());
    if std::fs::read("/proc/sys/kernel/core_pattern").unwrap_or_default() != pattern {
        return Err("the host's core_pattern changed".into());
    }
    expect(&o, &want)
}

pub(crate) fn dev_nodes(c: &Ctx) -> Check {
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

/// The host reads the verdict from the control port only, which the program cannot reach (`virtio_ports`):
/// verdict lines the program prints on its own streams are its output, nothing more.
pub(crate) fn forged_verdict(c: &Ctx) -> Check {
    let o = c.py("forge_verdict", &[], default());
    if o.status != Status::Exited(7) {
        return Err(format!("the forged verdict was believed: {:?}", o.status));
    }
    let out = String::from_utf8_lossy(&o.stdout);
    if !out.contains("SANDBOX-VERDICT") {
        return Err(format!("the program's output was lost: {out:?}"));
    }
    Ok(Observed::Safe(
        "exit=7, the forged lines stayed output".into(),
    ))
}

// --- namespaces, processes, network -------------------------------------------------------------------------

pub(crate) fn with_host_pid(c: &Ctx, probe: &str, want: &str) -> Check {
    let pid = std::process::id().to_string();
    expect(&c.py(probe, &[&pid], default()), want)
}

pub(crate) fn pid_visibility(c: &Ctx) -> Check {
    with_host_pid(
        c,
        "pid_visibility",
        "host_pid_visible=False count_small=True",
    )
}

pub(crate) fn host_signal(c: &Ctx) -> Check {
    with_host_pid(c, "host_signal", "kill=ESRCH pidfd_open=ESRCH")
}

pub(crate) const DENIED: [&str; 19] = [
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

pub(crate) fn dangerous_syscalls(c: &Ctx) -> Check {
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

pub(crate) fn tiocsti_inherited_pty(c: &Ctx) -> Check {
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
    // In the VM its stdin is a virtio port QEMU copies the pty's bytes to, not the host's terminal: no
    // terminal ioctl reaches the pty (ENOTTY), and the filter still refuses TIOCSTI.
    let want = if vm() {
        "sctty=ENOTTY tiocsti=EPERM"
    } else {
        "sctty=OK tiocsti=EPERM"
    };
    expect(&o, want)
}

/// `restrict`: landlock's TCP rules on with no port listed; else the default policy (no TCP rules: the
/// sandbox's own network namespace alone keeps the host's loopback away).
pub(crate) fn host_tcp_with(c: &Ctx, restrict: bool) -> Check {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = default();
    if restrict {
        p.landlock.restrict_tcp = Some(true);
    }
    let o = c.py("host_tcp", &[&port.to_string()], p);
    nothing_arrives(|| listener.accept().map(drop))?;
    // Landlock (ABI 4+) refuses the port before the (empty) loopback of the sandbox's own netns does.
    let landlock_first = c.landlock_net() && restrict;
    let want = if landlock_first {
        "connect=EACCES"
    } else {
        "connect=ECONNREFUSED"
    };
    expect(&o, want)
}

pub(crate) fn host_tcp(c: &Ctx) -> Check {
    host_tcp_with(c, true)
}

pub(crate) fn host_tcp_netns_only(c: &Ctx) -> Check {
    host_tcp_with(c, false)
}

pub(crate) fn host_udp(c: &Ctx) -> Check {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let o = c.py("host_udp", &[&port], default());
    let mut buf = [0u8; 64];
    nothing_arrives(|| sock.recv(&mut buf).map(drop))?;
    // Sent, to the sandbox's own loopback, where nobody listens.
    expect(&o, "sendto=OK")
}

pub(crate) fn host_abstract_with(c: &Ctx, policy: Policy, want: &str) -> Check {
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
pub(crate) fn host_abstract(c: &Ctx) -> Check {
    host_abstract_with(c, default(), "connect=ECONNREFUSED")
}

/// With the host's network (opt-in) the host's abstract sockets are found; landlock's scope (ABI 6+) refuses.
pub(crate) fn host_abstract_host_network(c: &Ctx) -> Check {
    if !c.landlock_scope("abstract_unix_socket") {
        let why = "landlock ABI < 6: with Network::Host the host's abstract sockets are reachable (SECURITY.md)";
        return Ok(Observed::Skipped(why.into()));
    }
    // The guest has a network stack of its own even with Network::Host: the host's abstract names are not
    // in it (ECONNREFUSED), and the host listener is checked to get nothing.
    let want = if vm() {
        "connect=ECONNREFUSED"
    } else {
        "connect=EPERM"
    };
    host_abstract_with(c, default().network(Network::Host), want)
}
