//! Escape probes: small programs that try, from inside the sandbox, to reach what is outside it (host files
//! beyond the view, the host's processes, network and terminals, kernel interfaces, privileges), each with
//! the safe outcome asserted precisely: an errno, or state the test observes on the host.
//!
//! All probes run in one test, `escape_probes`, which prints a table probe → outcome (see it with
//! `--nocapture`) and fails listing every probe that did not end as expected. `SANDBOX_PROBE=<substring>[,...]`
//! runs a subset; `SANDBOX_TEST_BACKEND=namespace|vm|builtin|auto` picks the backend (namespace by default), so
//! the same probes can run against the VM backend (`builtin`: one warm VM of our own VMM).
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

use sandkasten::seccomp::SeccompProfile;
use sandkasten::{Network, Outcome, Policy, Sandbox, Stage, Status, Stdio};
use testkit::TempDir;

const PROBES_PY: &str = include_str!("escape/probes.py");
const IDENTITY_C: &str = include_str!("escape/identity.c");
const VECTORS_C: &str = include_str!("escape/vectors.c");
/// No probe needs more than a second (a few on TCG); a hung one must not hang the suite.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Under our VMM on this machine's software KVM (PVM) guest kernel code is emulated: starting python and
/// its imports alone takes tens of seconds there.
const PVM_PROBE_TIMEOUT: Duration = Duration::from_secs(240);

fn probe_timeout() -> Duration {
    if common::builtin() {
        PVM_PROBE_TIMEOUT
    } else {
        PROBE_TIMEOUT
    }
}

use common::backend;

/// The probes run in the microVM: where the guest kernel lacks a feature, its outcome differs from the
/// host's, and a probe may accept the guest's outcome when that is itself safe (each says why).
fn vm() -> bool {
    backend() == sandkasten::Backend::Vm
}

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
    /// probes.py's `probe` under `policy()`: it must exit 0 and print exactly `want` (on the VM backend,
    /// `vm_want` instead when given: the guest kernel lacks something the host has).
    Py {
        probe: &'static str,
        policy: fn() -> Policy,
        want: &'static str,
        vm_want: Option<&'static str>,
    },
    /// probes.py's `probe`: the seccomp filter must kill it with SIGSYS before it prints anything (on the VM
    /// backend, the signal given instead when the guest kernel refuses the call before the filter sees it).
    Killed(&'static str, Option<i32>),
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

/// The directory of this test's fixtures, as a module: `escape::custom` is `escape/custom.rs` (a test's crate
/// root looks for its modules beside it, so the inline `escape` gives them the directory).
mod escape {
    use super::*;

    pub(crate) mod ctx;
    pub(crate) mod custom;
    pub(crate) mod identity;
}
use escape::ctx::Ctx;
use escape::custom::*;
use escape::identity::*;

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
        vm_want: None,
    }
}

fn py_with(probe: &'static str, policy: fn() -> Policy, want: &'static str) -> How {
    How::Py {
        probe,
        policy,
        want,
        vm_want: None,
    }
}

/// `py_with`, with what the probe must print instead on the VM backend.
fn py_with_vm(
    probe: &'static str,
    policy: fn() -> Policy,
    want: &'static str,
    vm_want: &'static str,
) -> How {
    How::Py {
        probe,
        policy,
        want,
        vm_want: Some(vm_want),
    }
}

/// /proc/1's memory, environment and layout are unreadable, and its command line carries nothing of the
/// host's: the sandbox's init is named `sandbox-init` on every backend (in a VM the kernel gives the agent
/// room for that name, `vm::cmdline::INIT_ARGS`). The guest kernel has no CONFIG_STACKTRACE (no /proc/1/stack).
fn proc1_memory(ctx: &Ctx) -> Check {
    let stack = if vm() { "ENOENT" } else { "EACCES" };
    let want = format!(
        "environ=EACCES maps=EACCES mem=EACCES auxv=EACCES stack={stack} syscall=EACCES smaps=EACCES \
         cmdline=sandbox-init"
    );
    expect(&ctx.py("proc1_memory", &[], default()), &want)
}

/// A process's AVX registers must be its own: no other process may change (or read) them. Our guest kernel
/// on PVM cannot save AVX state (`noxsave`), so there it holds only while nothing else in the guest uses AVX:
/// the agent and every program get glibc tunables without it (`sandkasten::vm::cmdline::PVM_CMDLINE`), and this probe
/// fails if glibc still copies with AVX (as it did with AVX and AVX2 cleared but its AVX copies preferred)
/// or saves them with XSAVEC when it binds a function lazily (seen once in 6656 rounds, then cleared too).
fn vector_registers(ctx: &Ctx) -> Check {
    let bin = ctx.vectors()?;
    let dir = bin.parent().unwrap();
    let o = ctx.run("/probe/vectors", &["3"], default().ro_bind(dir, "/probe"));
    if no_avx(&o) {
        return Ok(Observed::Safe(
            "no AVX in this CPU or guest: nothing to hold".into(),
        ));
    }
    expect(&o, "clobbered=0")
}

/// vectors.c found no AVX to use (exit 3).
fn no_avx(o: &Outcome) -> bool {
    o.status == Status::Exited(3) && stdout(o) == "avx=absent"
}

/// What a program leaves in the AVX registers when it is killed must not reach the next run. On PVM the guest
/// kernel does not clear them (it saves and restores only SSE state), so the agent clears them before each run;
/// a warm VM (`builtin`, `pool`) runs both runs in one guest, as two tenants' runs would be.
fn vector_registers_between_runs(ctx: &Ctx) -> Check {
    let bin = ctx.vectors()?;
    let p = || default().ro_bind(bin.parent().unwrap(), "/probe");
    let planted = ctx.run("/probe/vectors", &["plant"], p());
    if no_avx(&planted) {
        return Ok(Observed::Safe(
            "no AVX in this CPU or guest: nothing to leak".into(),
        ));
    }
    if planted.status != Status::Signaled(9) {
        return Err(describe(&planted, "run 1 killed by its own SIGKILL"));
    }
    expect(&ctx.run("/probe/vectors", &["read"], p()), "leaked=0")
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
        // The guest kernel has no CONFIG_FHANDLE: neither call exists there (ENOSYS), so no handle can be used.
        open_by_handle_no_seccomp: "the same without the seccomp filter"
            => py_with_vm("open_by_handle", no_seccomp, "name_to_handle_at=OK open_by_handle_at=EPERM",
                          "name_to_handle_at=ENOSYS open_by_handle_at=ENOSYS");
        proc1_links: "readlink and open /proc/1/{root,cwd,exe} (the init's exe is the host program)"
            => py("proc1_links", "root=EACCES cwd=EACCES exe=EACCES list_root=EACCES open_exe=EACCES");
        proc_self_root: "walk /proc/self/root/../.."
            => py("proc_self_root", "readlink=/ dotdot_is_root=True");
        proc1_fds: "list and open /proc/1/fd/N, fdinfo, map_files (the init holds host pipes)"
            => py("proc1_fds", "fd=EACCES fdinfo=EACCES opened=none map_files=EACCES");
        proc1_memory: "read /proc/1/{environ,maps,mem,auxv,stack,syscall,smaps} and cmdline"
            => Custom(proc1_memory);
        vector_registers: "hold values in ymm0-15 while a sibling runs glibc's string functions"
            => Custom(vector_registers);
        vector_registers_between_runs: "run 1 fills ymm0-15 and is killed; run 2 reads them at its start"
            => Custom(vector_registers_between_runs);
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
        virtio_ports: "open the VM's virtio-serial ports (control, stdio), hvc0, /dev/console; mknod a port"
            => py("virtio_ports", "sandbox.control=ENOENT vport0p1=ENOENT vport1p1=ENOENT hvc0=ENOENT \
                                   console=ENOENT virtio-ports=ENOENT mknod=EPERM");
        forged_verdict: "print the agent's verdict line (exit 0) on stdout and stderr, then exit 7"
            => Custom(forged_verdict);
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
        range_foreign_files: "write, chmod, unlink files of host root and host user 1 in a rw sticky bind"
            => Custom(range_foreign_files);
        range_foreign_files_with_caps: "the same with every capability a policy may keep (chown, dac_override, ...)"
            => Custom(range_foreign_files_with_caps);
        kept_caps_no_escape: "with every capability a policy may keep: capset, unshare, mount, the host's pid"
            => py_with("kept_caps", || { let mut p = default(); p.capabilities = sandkasten::Capability::ALL.to_vec(); p },
                       "bounding=00000000000404fb capset_up=EPERM unshare_user=EPERM mount=EPERM setns=EPERM");
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
        // The guest kernel has no IA32 emulation: int 0x80 faults (SIGSEGV) before any system call is made.
        int80: "a 32-bit system call through int 0x80" => Killed("int80", Some(libc::SIGSEGV));
        x32: "an x32 system call (bit 30)" => Killed("x32", None);
        // The guest kernel has IPv6 too (since 2026-12-04): the same answers on every backend.
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
            vm_want,
        } => {
            let want = if vm() { vm_want.unwrap_or(want) } else { want };
            expect(&ctx.py(probe, &[], policy()), want)
        }
        How::Killed(probe, vm_signal) => {
            let o = ctx.py(probe, &[], default());
            let signal = if vm() {
                vm_signal.unwrap_or(libc::SIGSYS)
            } else {
                libc::SIGSYS
            };
            let name = if signal == libc::SIGSYS {
                "SIGSYS"
            } else {
                "SIGSEGV"
            };
            assert!(signal == libc::SIGSYS || signal == libc::SIGSEGV);
            if o.status == Status::Signaled(signal) && o.stdout.is_empty() {
                Ok(Observed::Safe(format!("killed by {name}")))
            } else {
                Err(describe(&o, &format!("killed by {name}, no output")))
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
                    // Progress as each probe ends (seen with --nocapture): on a slow VM the table comes late.
                    let verdict = match &check {
                        Ok(Observed::Safe(_)) => "safe".to_string(),
                        Ok(Observed::Skipped(_)) => "skipped".to_string(),
                        Err(e) => format!(
                            "not as expected: {}",
                            e.replace('\n', " | ").chars().take(600).collect::<String>()
                        ),
                    };
                    eprintln!(
                        "escape: {} {verdict} ({} ms)",
                        p.name,
                        start.elapsed().as_millis()
                    );
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
    let selected: Vec<&Probe> = all
        .iter()
        .filter(|p| filter.split(',').any(|f| p.name.contains(f)))
        .collect();
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
        "{} probes as uid {euid}, backend {:?}{}, {:.1} s\n",
        selected.len(),
        backend(),
        match ctx.session_commands.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} runs as session commands"),
        },
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
