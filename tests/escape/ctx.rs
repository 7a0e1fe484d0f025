//! `Ctx`: what every escape probe may need (host facts, the compiled C probes, a scratch directory) and how
//! a probe runs on the backend under test (one-shot, or a command of a fresh namespace or VM session). Part of
//! tests/escape.rs (the module `escape::ctx`).

use super::*;

/// Facts about the host and the sandbox every probe may need.
pub(crate) struct Ctx {
    pub(crate) root: bool,
    /// `HOST_NS_<NS>` = this process's namespace links, passed to every probe.
    pub(crate) host_ns: Vec<(String, String)>,
    /// What landlock enforces by default here (from a first run).
    pub(crate) landlock: Option<sandkasten::outcome::LandlockEnforced>,
    /// The compiled C probes.
    pub(crate) identity: OnceLock<Result<PathBuf, String>>,
    pub(crate) vectors: OnceLock<Result<PathBuf, String>>,
    pub(crate) scratch: TempDir,
    /// `SANDBOX_TEST_BACKEND=session` or `vm-session`: the sessions whose commands the probes are, with the
    /// thread that made each (a namespace session lives until the end; a VM session until its thread's
    /// probe has run).
    pub(crate) sessions: Mutex<Vec<(std::thread::ThreadId, sandkasten::Session)>>,
    /// How many probe runs were session commands.
    pub(crate) session_commands: AtomicUsize,
}

impl Ctx {
    pub(crate) fn new() -> Ctx {
        let host_ns = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts", "time"]
            .iter()
            .map(|ns| {
                let link = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
                let name = format!("HOST_NS_{}", ns.to_uppercase());
                (name, link.to_string_lossy().into_owned())
            })
            .collect();
        let first = common::on(&mut Sandbox::new("/bin/true")).output().unwrap();
        assert_eq!(
            first.status,
            Status::Exited(0),
            "the sandbox does not work at all here: {first:?}"
        );
        Ctx {
            root: testkit::is_root(),
            host_ns,
            landlock: first.enforced.landlock.clone(),
            identity: OnceLock::new(),
            vectors: OnceLock::new(),
            scratch: TempDir::new("escape-bin"),
            sessions: Mutex::default(),
            session_commands: AtomicUsize::new(0),
        }
    }

    pub(crate) fn sandbox(&self, program: &str, args: &[&str], policy: Policy) -> Sandbox {
        let policy = policy.timeout(probe_timeout());
        let mut s = if common::in_sessions() {
            // The probe runs through exec: a command of a fresh session with its policy (a fork of the
            // session's init, or a command of a VM's session), kept alive while the probe may run.
            // A session that cannot start (a planted bind, say) fails as the one-shot run would: that run
            // reports it.
            match common::start_session(policy.clone()) {
                Ok(session) => {
                    self.session_commands.fetch_add(1, Ordering::Relaxed);
                    let cmd = session.command(program);
                    let me = std::thread::current().id();
                    self.sessions.lock().unwrap().push((me, session));
                    cmd
                }
                Err(_) => {
                    let mut s = Sandbox::new(program);
                    s.backend(common::backend()).policy(policy);
                    s
                }
            }
        } else {
            let mut s = Sandbox::new(program);
            common::on(&mut s).policy(policy);
            s
        };
        s.args(args);
        for (k, v) in &self.host_ns {
            s.env(k, v);
        }
        s
    }

    pub(crate) fn run(&self, program: &str, args: &[&str], policy: Policy) -> Outcome {
        let mut s = self.sandbox(program, args, policy);
        let o = s.output().expect("the probe's policy is valid");
        self.end_vm_sessions();
        o
    }

    /// `SANDBOX_TEST_BACKEND=vm-session`: stops this thread's sessions (each holds a VM).
    pub(crate) fn end_vm_sessions(&self) {
        if common::backend() != sandkasten::Backend::Vm {
            return;
        }
        let me = std::thread::current().id();
        let mine: Vec<_> = {
            let mut all = self.sessions.lock().unwrap();
            let (mine, rest) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|(t, _)| *t == me);
            *all = rest;
            mine
        };
        for (_, s) in mine {
            let _ = s.kill();
        }
    }

    /// probes.py's `probe` with `args`, not started yet.
    pub(crate) fn py_sandbox(&self, probe: &str, args: &[&str], policy: Policy) -> Sandbox {
        let mut all = vec!["-c", PROBES_PY, probe];
        all.extend_from_slice(args);
        self.sandbox("/usr/bin/python3", &all, policy)
    }

    /// Runs `probe` of probes.py with `args`.
    pub(crate) fn py(&self, probe: &str, args: &[&str], policy: Policy) -> Outcome {
        let mut s = self.py_sandbox(probe, args, policy);
        let o = s.output().expect("the probe's policy is valid");
        self.end_vm_sessions();
        o
    }

    /// Whether landlock can restrict TCP here (ABI 4+; a policy turns it on, the default does not).
    pub(crate) fn landlock_net(&self) -> bool {
        self.landlock.as_ref().is_some_and(|l| l.landlock_abi >= 4)
    }

    pub(crate) fn landlock_scope(&self, scope: &str) -> bool {
        let scopes = self.landlock.as_ref().map(|l| &l.scopes[..]);
        scopes.unwrap_or_default().iter().any(|s| s == scope)
    }

    /// The set-user-ID and file-capability C probe, compiled once.
    pub(crate) fn identity(&self) -> Result<&Path, String> {
        self.compiled(&self.identity, "identity", IDENTITY_C)
    }

    /// The vector-register C probe, compiled once, alone in its directory.
    pub(crate) fn vectors(&self) -> Result<&Path, String> {
        self.compiled(&self.vectors, "vectors/vectors", VECTORS_C)
    }

    pub(crate) fn compiled<'a>(
        &self,
        cell: &'a OnceLock<Result<PathBuf, String>>,
        name: &str,
        source: &str,
    ) -> Result<&'a Path, String> {
        let compiled = cell.get_or_init(|| {
            let bin = self.scratch.path().join(name);
            let src = bin.with_extension("c");
            std::fs::create_dir_all(bin.parent().unwrap()).map_err(|e| e.to_string())?;
            std::fs::write(&src, source).map_err(|e| e.to_string())?;
            let out = std::process::Command::new("cc")
                .args(["-O2", "-o"])
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
