//! Helpers of the root crate's integration tests: those that need the `sandkasten` crate itself, and a few
//! only these tests use. The workspace's other test helpers are in the `testkit` crate (`TempDir`,
//! `kvm_usable`, `is_root`, `processes_with`...).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

/// A unique number to tag processes of one test.
pub fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{:03}",
        700_000 + std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The host's mount table as this process sees it.
pub fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// The backend under test: `SANDBOX_TEST_BACKEND` (namespace, vm, builtin or auto; `session`: the namespace
/// backend, each run a command of a session where a test supports it), namespace by default.
/// `builtin` is the VM backend on our own VMM, one warm VM serving every run ([`on`]).
pub fn backend() -> sandkasten::Backend {
    use sandkasten::Backend;
    match std::env::var("SANDBOX_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("namespace") | Ok("session") => Backend::Namespace,
        Ok("vm") | Ok("builtin") | Ok("pool") | Ok("vm-session") => Backend::Vm,
        Ok("auto") => Backend::Auto,
        Ok(other) => {
            panic!(
                "SANDBOX_TEST_BACKEND={other:?}: use namespace, session, vm, vm-session, pool, builtin or auto"
            )
        }
    }
}

/// Whether runs are commands of sessions (`SANDBOX_TEST_BACKEND=session`: namespace sessions; `vm-session`:
/// sessions in VMs of the QEMU engine).
#[allow(dead_code)]
pub fn in_sessions() -> bool {
    matches!(
        std::env::var("SANDBOX_TEST_BACKEND").as_deref(),
        Ok("session") | Ok("vm-session")
    )
}

/// A session with `policy` on the backend under test ([`in_sessions`]).
#[allow(dead_code)]
pub fn start_session(policy: sandkasten::Policy) -> Result<sandkasten::Session, sandkasten::Error> {
    if backend() == sandkasten::Backend::Vm {
        #[cfg(not(feature = "vm"))]
        panic!("SANDBOX_TEST_BACKEND=vm-session: these tests were built without the `vm` feature");
        #[cfg(feature = "vm")]
        return sandkasten::Session::start_vm(policy, sandkasten::VmEngine::Qemu);
    }
    sandkasten::Session::start(policy)
}

/// Whether the backend under test is our own VMM (`SANDBOX_TEST_BACKEND=builtin`).
pub fn builtin() -> bool {
    std::env::var("SANDBOX_TEST_BACKEND").as_deref() == Ok("builtin")
}

/// Whether runs are served by warm VMs: `SANDBOX_TEST_BACKEND=builtin` (our own VMM) or `pool` (QEMU).
pub fn pooled() -> bool {
    builtin() || std::env::var("SANDBOX_TEST_BACKEND").as_deref() == Ok("pool")
}

#[cfg(feature = "vm")]
static POOL: std::sync::OnceLock<sandkasten::VmPool> = std::sync::OnceLock::new();

/// Puts `s` on the backend under test: [`backend`], or for `builtin` and `pool` warm VMs of our own VMM or
/// of QEMU (a pool of up to two per test process; a builtin boot takes about a minute on PVM) that share the
/// temp dir, where the tests' binds come from.
pub fn on(s: &mut sandkasten::Sandbox) -> &mut sandkasten::Sandbox {
    if !pooled() {
        return s.backend(backend());
    }
    #[cfg(not(feature = "vm"))]
    panic!("SANDBOX_TEST_BACKEND=pool or builtin: these tests were built without the `vm` feature");
    #[cfg(feature = "vm")]
    let pool = POOL.get_or_init(|| {
        let pool = sandkasten::VmPool::new(sandkasten::PoolOptions {
            engine: if builtin() {
                sandkasten::VmEngine::Builtin
            } else {
                sandkasten::VmEngine::Qemu
            },
            // Two VMs for the two cores of our CI machines (the escape probes run on four threads).
            max_vms: 2,
            max_idle: 2,
            shares: vec![sandkasten::PoolShare {
                path: std::env::temp_dir(),
                writable: true,
            }],
            ..Default::default()
        })
        .expect("a VM pool");
        // Booted before the first run, so that no run's wall time includes the boot.
        pool.prewarm(1).expect("a warm VM boots");
        pool
    });
    #[cfg(feature = "vm")]
    s.vm_pool(pool)
}

/// Live pids.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Processes whose parent chain leads to this process (thread ids are not listed in /proc, so threads of
/// this process are not counted), except the warm VMs of [`on`]'s pool and what runs under them: they
/// outlive runs by design.
pub fn descendants() -> Vec<u32> {
    #[cfg(feature = "vm")]
    let pool: Vec<u32> = POOL.get().map(|p| p.pids()).unwrap_or_default();
    #[cfg(not(feature = "vm"))]
    let pool: Vec<u32> = Vec::new();
    use std::collections::BTreeMap;
    let parent: BTreeMap<u32, u32> = pids()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            Some((pid, ppid.parse().ok()?))
        })
        .collect();
    let me = std::process::id();
    let leads_here = |mut p: u32| {
        for _ in 0..64 {
            if pool.contains(&p) {
                return false;
            }
            match parent.get(&p) {
                Some(&pp) if pp == me => return true,
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parent.keys().copied().filter(|&p| leads_here(p)).collect()
}

/// No process started by this one is left, within two seconds (QEMU, its confining sandbox, a sandbox's
/// init: each is reaped before a run's verdict returns, so this is normally immediate).
pub fn assert_no_descendants() {
    let start = std::time::Instant::now();
    loop {
        let left = descendants();
        if left.is_empty() {
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(2) {
            let names: Vec<String> = left
                .iter()
                .map(|p| {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
                })
                .collect();
            panic!("processes left behind: {names:#?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
