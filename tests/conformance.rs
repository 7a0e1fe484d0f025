//! One conformance suite, written once, run against both backends: every property is a function of the
//! backend, and `conformance!` makes a `namespace::` and a `vm::` test of each.
//!
//! The VM tests boot our guest under QEMU (TCG here, about a second a run); they need the guest kernel and
//! agent (`SANDBOX_KERNEL`, `SANDBOX_AGENT`: scripts/test.sh sets both) and fail, never skip, without them.

use std::time::Duration;

use sandkasten::outcome::TimeLimit;
use std::ffi::OsString;

use sandkasten::{
    Backend, BackendKind, Outcome, Policy, Rootfs, Sandbox, SandboxChild, Session, Stage, Status,
    Stdio,
};
use testkit::TempDir;

/// More properties: ids and groups, capabilities, masked paths, the pollable end, bounded output.
#[path = "conformance/more.rs"]
mod more;
use more::*;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod namespace {
            $( #[test] fn $name() { super::$name(super::B::Namespace) } )*
        }
        /// The same properties through a session: each run is a command of a fresh session with the policy.
        mod session {
            $( #[test] fn $name() { super::$name(super::B::Session) } )*
        }
        #[cfg(feature = "vm")]
        mod vm {
            $( #[test] fn $name() { super::$name(super::B::Vm) } )*
        }
        /// The same properties through a session in a VM (QEMU engine): each run is a command of a fresh VM
        /// session with the policy.
        #[cfg(feature = "vm")]
        mod vm_session {
            $( #[test] fn $name() { super::$name(super::B::VmSession) } )*
        }
        /// The same properties on warm VMs of one pool (one or two boots for the whole suite).
        #[cfg(feature = "vm")]
        mod warm {
            $( #[test] fn $name() { super::$name(super::B::Warm) } )*
        }
        /// The same properties on our own VMM (`--vm-engine builtin`), on two warm VMs: a boot costs minutes on
        /// PVM. Run only with `SANDBOX_TEST_BUILTIN=1` (scripts/test.sh does, as root, with two test threads),
        /// where they fail, never skip.
        #[cfg(feature = "vm")]
        mod builtin {
            $( #[test] fn $name() {
                if std::env::var_os("SANDBOX_TEST_BUILTIN").is_none() {
                    eprintln!("builtin engine: set SANDBOX_TEST_BUILTIN=1 to run (needs /dev/kvm)");
                    return;
                }
                super::$name(super::B::Builtin)
            } )*
        }
    };
}

/// Where a property runs (without the `vm` feature: the namespace backend only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "vm"), allow(dead_code))]
enum B {
    /// The namespace backend.
    Namespace,
    /// A command of a session on the namespace backend.
    Session,
    /// A fresh VM per run.
    Vm,
    /// A command of a session in a VM (QEMU engine).
    VmSession,
    /// A warm VM of a shared pool.
    Warm,
    /// A warm VM of our own VMM.
    Builtin,
}

/// The warm VMs of this test process: the temp dir is shared, so the bind properties can run.
#[cfg(feature = "vm")]
fn pool(engine: sandkasten::VmEngine) -> &'static sandkasten::VmPool {
    static QEMU: std::sync::OnceLock<sandkasten::VmPool> = std::sync::OnceLock::new();
    static BUILTIN: std::sync::OnceLock<sandkasten::VmPool> = std::sync::OnceLock::new();
    let cell = if engine == sandkasten::VmEngine::Builtin {
        &BUILTIN
    } else {
        &QEMU
    };
    cell.get_or_init(|| {
        // Two VMs of our own VMM: its boots and runs are CPU-bound under software KVM, one core each.
        let n = if engine == sandkasten::VmEngine::Builtin {
            2
        } else {
            1
        };
        sandkasten::VmPool::new(sandkasten::PoolOptions {
            engine,
            max_vms: n,
            max_idle: n,
            shares: vec![sandkasten::PoolShare {
                path: std::env::temp_dir(),
                writable: true,
            }],
            ..Default::default()
        })
        .expect("pool")
    })
}

/// A run of a property, built like `Sandbox`: on `B::Session` a command of a fresh session started with the
/// policy (stopped once the command ended), else a plain sandbox on that backend.
struct Cmd {
    program: OsString,
    arg0: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<std::path::PathBuf>,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    limits: Option<(sandkasten::OutputLimit, sandkasten::OutputLimit)>,
    policy: Policy,
    b: B,
}

/// A started run; holds its session (if any) while it runs.
struct Running {
    child: SandboxChild,
    _session: Option<Session>,
}

impl std::ops::Deref for Running {
    type Target = SandboxChild;
    fn deref(&self) -> &SandboxChild {
        &self.child
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut SandboxChild {
        &mut self.child
    }
}

impl Cmd {
    fn new(program: &str) -> Cmd {
        Cmd {
            program: program.into(),
            arg0: None,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            stdout: None,
            limits: None,
            policy: Policy::default(),
            b: B::Namespace,
        }
    }
    fn output_limits(
        &mut self,
        stdout: sandkasten::OutputLimit,
        stderr: sandkasten::OutputLimit,
    ) -> &mut Self {
        self.limits = Some((stdout, stderr));
        self
    }
    fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) -> &mut Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.push((k.into(), v.into()));
        self
    }
    fn arg0(&mut self, a: &str) -> &mut Self {
        self.arg0 = Some(a.into());
        self
    }
    fn current_dir(&mut self, d: &str) -> &mut Self {
        self.cwd = Some(d.into());
        self
    }
    fn stdin(&mut self, s: Stdio) -> &mut Self {
        self.stdin = Some(s);
        self
    }
    fn stdout(&mut self, s: Stdio) -> &mut Self {
        self.stdout = Some(s);
        self
    }
    fn policy(&mut self, p: Policy) -> &mut Self {
        self.policy = p;
        self
    }
    fn on(&mut self, b: B) -> &mut Self {
        self.b = b;
        self
    }

    /// The sandbox builder (and the session it belongs to), or why its session could not start.
    fn build(&mut self) -> Result<(Sandbox, Option<Session>), sandkasten::SetupFailure> {
        let session = match self.b {
            B::Session => Some(Session::start(self.policy.clone()).map_err(|e| match e {
                sandkasten::Error::Setup(f) => f,
                e => panic!("{e}"),
            })?),
            #[cfg(feature = "vm")]
            B::VmSession => Some(
                Session::start_vm(self.policy.clone(), sandkasten::VmEngine::Qemu).map_err(
                    |e| match e {
                        sandkasten::Error::Setup(f) => f,
                        e => panic!("{e}"),
                    },
                )?,
            ),
            _ => None,
        };
        let mut cmd = match &session {
            Some(s) => s.command(&self.program),
            None => {
                let mut c = Sandbox::new(&self.program);
                c.policy(self.policy.clone());
                match self.b {
                    B::Namespace | B::Session => c.backend(Backend::Namespace),
                    B::Vm | B::VmSession => c.backend(Backend::Vm),
                    #[cfg(feature = "vm")]
                    B::Warm => c.vm_pool(pool(sandkasten::VmEngine::Qemu)),
                    #[cfg(feature = "vm")]
                    B::Builtin => c.vm_pool(pool(sandkasten::VmEngine::Builtin)),
                    #[cfg(not(feature = "vm"))]
                    B::Warm | B::Builtin => unreachable!("warm VMs need the `vm` feature"),
                };
                c
            }
        };
        cmd.args(&self.args);
        if let Some(a) = &self.arg0 {
            cmd.arg0(a);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        if let Some(s) = self.stdin.take() {
            cmd.stdin(s);
        }
        if let Some(s) = self.stdout.take() {
            cmd.stdout(s);
        }
        if let Some((out, err)) = self.limits {
            cmd.output_limits(out, err);
        }
        Ok((cmd, session))
    }

    fn output(&mut self) -> Result<Outcome, sandkasten::Error> {
        let (mut cmd, session) = match self.build() {
            Ok(b) => b,
            Err(f) => {
                let kind = match self.b {
                    B::Namespace | B::Session => BackendKind::Namespace,
                    _ => BackendKind::Vm,
                };
                return Ok(Outcome::setup_failed(f, kind));
            }
        };
        let o = cmd.output();
        if let Some(s) = session {
            let v = s.stop(Duration::from_secs(1))?;
            assert_eq!(
                v.status,
                Status::Exited(0),
                "the session ends as asked: {v:?}"
            );
        }
        o
    }

    fn spawn(&mut self) -> Result<Running, sandkasten::Error> {
        let (mut cmd, session) = self.build().map_err(sandkasten::Error::Setup)?;
        Ok(Running {
            child: cmd.spawn()?,
            _session: session,
        })
    }
}

conformance!(
    exit_code_and_output,
    signals,
    not_found_and_not_executable,
    pid_namespace_and_init,
    hostname,
    only_loopback,
    loopback_server,
    id_range,
    supplementary_groups,
    capabilities_kept,
    environment_cleared,
    read_only_bind,
    read_write_bind,
    system_view_read_only,
    sized_tmpfs,
    masked_and_read_only_paths,
    working_directory,
    stdin_piped,
    output_streams,
    pollable_end,
    setup_failure_in_the_verdict,
    arg0_is_the_programs_own,
    bounded_output,
    many_small_writes,
    late_reader,
    wall_timeout_kills_the_tree,
    no_privileges,
    seccomp_denials_reported,
    landlock_refuses,
    cpu_time_limit,
    rlimits,
    memory_limit,
    own_root,
);

fn sh(backend: B, script: &str, policy: Policy) -> Outcome {
    let o = Cmd::new("/bin/sh")
        .args(["-c", script])
        .on(backend)
        .policy(policy)
        .output()
        .expect("valid policy");
    let want = match backend {
        B::Namespace | B::Session => BackendKind::Namespace,
        _ => BackendKind::Vm,
    };
    assert_eq!(o.backend, want, "{o:?}");
    o
}

fn out(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn exit_code_and_output(b: B) {
    let o = sh(b, "echo hello; echo oops >&2; exit 3", Policy::default());
    assert_eq!(o.status, Status::Exited(3), "{o:?}");
    assert_eq!(
        out(&o),
        "hello\n",
        "program output only, never the kernel log"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
}

fn signals(b: B) {
    assert_eq!(
        sh(b, "kill -9 $$", Policy::default()).status,
        Status::Signaled(9)
    );
    assert_eq!(
        sh(b, "kill -TERM $$", Policy::default()).status,
        Status::Signaled(15)
    );
}

fn not_found_and_not_executable(b: B) {
    let o = Cmd::new("no-such-program").on(b).output().unwrap();
    assert_eq!(o.status.exit_code(), 127, "{:?}", o.status);
    let o = Cmd::new("/etc/passwd").on(b).output().unwrap();
    assert_eq!(o.status.exit_code(), 126, "{:?}", o.status);
}

fn pid_namespace_and_init(b: B) {
    let o = sh(b, "echo $$; cat /proc/1/comm", Policy::default());
    assert_eq!(out(&o), "2\nsandbox-init\n");
}

fn hostname(b: B) {
    let o = sh(b, "hostname", Policy::default().hostname("conform"));
    assert_eq!(out(&o), "conform\n");
}

fn only_loopback(b: B) {
    let o = sh(
        b,
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        Policy::default(),
    );
    assert_eq!(out(&o), "lo\n");
}

/// A server on the sandbox's own loopback: bind, listen, connect and a byte exchange work by default.
fn loopback_server(b: B) {
    let script = "import socket\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
        c = socket.create_connection(s.getsockname()); a, _ = s.accept()\n\
        c.sendall(b'ping'); print(a.recv(4).decode())\n\
        u = socket.socket(type=socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))\n\
        u.sendto(b'pong', u.getsockname()); print(u.recv(4).decode())\n";
    let o = Cmd::new("/usr/bin/python3")
        .args(["-c", script])
        .on(b)
        .output()
        .unwrap();
    assert_eq!(out(&o), "ping\npong\n", "{o:?}");
}

fn environment_cleared(b: B) {
    let o = Cmd::new("/usr/bin/env")
        .env("ONLY", "this")
        .on(b)
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let mut lines: Vec<String> = out(&o).lines().map(String::from).collect();
    lines.sort();
    // On PVM our VMM's guest hands programs glibc tunables without AVX (the guest kernel cannot preserve AVX
    // registers there: sandkasten::vm::cmdline::PVM_CMDLINE): the one variable beyond the caller's.
    #[cfg(feature = "vm")]
    if b == B::Builtin && sandkasten::probe::probe_kvm().flavour.is_pvm() {
        let tunables = format!(
            "GLIBC_TUNABLES={}",
            sandkasten::vm::cmdline::pvm_glibc_tunables()
        );
        let i = lines.iter().position(|l| *l == tunables);
        lines.remove(i.unwrap_or_else(|| panic!("no AVX-free glibc tunables on PVM: {lines:?}")));
    }
    assert_eq!(
        lines,
        [
            "ONLY=this".to_string(),
            format!("PATH={}", sandkasten::DEFAULT_PATH)
        ],
        "{o:?}"
    );
}

fn read_only_bind(b: B) {
    let dir = TempDir::new("conf-ro");
    std::fs::write(dir.path().join("f"), "original").unwrap();
    let o = sh(
        b,
        "cat /data/f; echo changed > /data/f",
        Policy::default().ro_bind(dir.path(), "/data"),
    );
    assert_eq!(out(&o), "original");
    assert_ne!(o.status, Status::Exited(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "{o:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f")).unwrap(),
        "original"
    );
}

fn read_write_bind(b: B) {
    let dir = TempDir::new("conf-rw");
    let o = sh(
        b,
        "echo landed > /data/out && mkdir /data/d",
        Policy::default().bind(dir.path(), "/data"),
    );
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "landed\n"
    );
    assert!(dir.path().join("d").is_dir());
}

fn system_view_read_only(b: B) {
    let o = sh(
        b,
        "touch /usr/x 2>&1; touch /etc/x 2>&1; test -e /home || echo no-home; touch /tmp/ok && echo tmp-ok",
        Policy::default(),
    );
    let text = out(&o);
    // Refused by the read-only mount (EROFS) or, first, by landlock (EACCES), depending on the kernel.
    let refused =
        text.matches("Read-only file system").count() + text.matches("Permission denied").count();
    assert_eq!(refused, 2, "{text}");
    assert!(
        text.contains("no-home") && text.contains("tmp-ok"),
        "{text}"
    );
}

fn sized_tmpfs(b: B) {
    let o = sh(
        b,
        "df -k /scratch | tail -1",
        Policy::default().tmpfs_sized("/scratch", 1 << 20),
    );
    assert!(out(&o).contains(" 1024 "), "{}", out(&o));
}

fn working_directory(b: B) {
    let o = Cmd::new("/bin/pwd")
        .current_dir("/tmp")
        .on(b)
        .output()
        .unwrap();
    assert_eq!(out(&o), "/tmp\n");
}

fn stdin_piped(b: B) {
    use std::io::{Read, Write};
    let mut child = Cmd::new("/bin/cat")
        .on(b)
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"through the sandbox").unwrap();
    drop(input);
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "through the sandbox");
    assert_eq!(child.wait().unwrap().status, Status::Exited(0));
}

fn wall_timeout_kills_the_tree(b: B) {
    let o = sh(
        b,
        "sleep 100 & (setsid sleep 100 &); sleep 100",
        Policy::default().timeout(Duration::from_millis(700)),
    );
    assert_eq!(o.status, Status::TimedOut(TimeLimit::Wall), "{o:?}");
}

fn no_privileges(b: B) {
    let o = sh(
        b,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
        Policy::default(),
    );
    let text = out(&o);
    for want in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(o.enforced.capabilities_dropped && o.enforced.no_new_privs);
    assert_eq!(o.enforced.seccomp, "default");
}

fn seccomp_denials_reported(b: B) {
    let o = sh(b, "unshare -U true; echo rc=$?", Policy::default());
    assert!(out(&o).contains("rc=1"), "{}", out(&o));
    assert!(
        o.denied_syscalls.iter().any(|d| d.syscall == "unshare"),
        "{:?}",
        o.denied_syscalls
    );
}

fn landlock_refuses(b: B) {
    let o = sh(
        b,
        "echo x > /proc/self/comm && echo wrote",
        Policy::default(),
    );
    assert!(!out(&o).contains("wrote"), "{o:?}");
    assert!(
        o.enforced
            .landlock
            .as_ref()
            .is_some_and(|l| l.landlock_abi >= 1)
    );
}

fn cpu_time_limit(b: B) {
    let o = sh(
        b,
        "while :; do :; done",
        Policy::default().cpu_time(Duration::from_secs(1)),
    );
    assert_eq!(o.status, Status::TimedOut(TimeLimit::Cpu), "{o:?}");
}

fn rlimits(b: B) {
    let mut p = Policy::default();
    p.limits.nofile = Some(50);
    let o = sh(b, "ulimit -n; ulimit -c", p);
    assert_eq!(out(&o), "50\n0\n");
}

fn memory_limit(b: B) {
    let mut p = Policy::default().memory(64 << 20);
    let o = Cmd::new("/usr/bin/python3")
        .args(["-c", "x = bytearray(400 << 20); print('survived')"])
        .on(b)
        .policy(p.clone())
        .output()
        .unwrap();
    if o.enforced.cgroup.is_none() {
        // The namespace backend for a caller without a writable cgroup: reported, and refused when required.
        assert!(
            matches!(b, B::Namespace | B::Session),
            "the guest always has cgroup v2"
        );
        assert!(!o.enforced.not_enforced.is_empty());
        p.limits.required = true;
        let o = sh(b, "true", p);
        assert!(
            matches!(o.status, Status::SetupFailed(ref f) if f.stage == Stage::Cgroup),
            "{o:?}"
        );
        return;
    }
    assert_eq!(o.status, Status::OomKilled, "{o:?}");
    assert!(!out(&o).contains("survived"));
}

/// A root of its own, two layers (what an image becomes): the top layer's files win, the lower one's show
/// through, writes land in a discarded writable layer (a directory removed and made again is empty), the
/// layers never change, no host system in view.
fn own_root(b: B) {
    let dir = TempDir::new("conf-root");
    let (top, base) = (dir.path().join("top"), dir.path().join("base"));
    for d in [base.join("bin"), base.join("etc"), top.join("etc")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).expect("busybox-static is installed");
    std::fs::write(base.join("etc/marker"), "base\n").unwrap();
    std::fs::write(base.join("etc/base-only"), "from the base\n").unwrap();
    std::fs::write(top.join("etc/marker"), "top\n").unwrap();
    std::fs::create_dir_all(base.join("etc/sub")).unwrap();
    std::fs::write(base.join("etc/sub/old"), "old\n").unwrap();
    let policy = Policy::default().rootfs(Rootfs::stack(vec![top.clone(), base.clone()]));
    let o = Cmd::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "busybox cat /etc/marker /etc/base-only; busybox id -u; \
             echo written > /etc/marker && busybox cat /etc/marker; \
             busybox rm -r /etc/sub && busybox mkdir /etc/sub && busybox ls -A /etc/sub | busybox wc -l; \
             [ -e /usr/bin ] && echo HOST-USR || echo no-usr",
        ])
        .on(b)
        .policy(policy)
        .output()
        .expect("valid policy");
    // A directory made again over a removed lower one is empty (opaque in the writable layer).
    assert_eq!(
        out(&o),
        "top\nfrom the base\n0\nwritten\n0\nno-usr\n",
        "{o:?}"
    );
    assert_eq!(
        std::fs::read_to_string(top.join("etc/marker")).unwrap(),
        "top\n"
    );
    assert_eq!(
        std::fs::read_to_string(base.join("etc/marker")).unwrap(),
        "base\n"
    );
    let root = o
        .enforced
        .rootfs
        .as_ref()
        .unwrap_or_else(|| panic!("{o:?}"));
    assert_eq!(root.source, "2 layers", "{o:?}");
    assert_eq!(root.writable, "overlay on a tmpfs (discarded)", "{o:?}");
}
