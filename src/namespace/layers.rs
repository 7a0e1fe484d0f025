//! The security and resource layers of a run, prepared on the host before `clone`: the seccomp filter, the
//! landlock ruleset, the run's cgroup and the rlimits, together with the honest account of what will be
//! enforced.

use std::ffi::CString;

use super::cgroup::{CgroupLimits, RunCgroup};
use super::plan::{Inside, Plan};
use super::{landlock, seccomp};
use crate::outcome::{Enforced, SetupFailure, Stage};
use crate::policy::{Network, Policy, Protocol};

/// What the child applies, besides namespaces and mounts.
pub(crate) struct Layers {
    /// The seccomp filter, installed by the init just before it forks the program.
    pub filter: Option<seccomp::Filter>,
    /// The landlock ruleset (bind-source rules already added), applied by the child after pivot_root.
    pub landlock: Option<landlock::Prepared>,
    /// Rules the child adds for paths that exist only inside the sandbox: path, access mask.
    pub landlock_rules: Vec<(CString, u64)>,
    /// The run's cgroup, when limits were asked for and a cgroup could be created.
    pub cgroup: Option<RunCgroup>,
    /// `(resource, soft, hard)` for setrlimit in the init (inherited by the program).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// The account of what is enforced.
    pub enforced: Enforced,
}

fn failure(stage: Stage, message: String) -> SetupFailure {
    SetupFailure {
        stage,
        errno: None,
        message,
    }
}

/// Prepares every layer `policy` asks for.
pub(crate) fn prepare(
    policy: &Policy,
    plan: &Plan,
    host_ids: (u32, u32),
) -> Result<Layers, SetupFailure> {
    let mut enforced = Enforced {
        namespaces: ["user", "pid", "mount", "ipc", "uts", "cgroup"]
            .map(String::from)
            .to_vec(),
        host_uid: host_ids.0,
        host_gid: host_ids.1,
        capabilities_dropped: policy.capabilities.is_empty(),
        capabilities: policy
            .capabilities
            .iter()
            .map(|c| c.name().into())
            .collect(),
        no_new_privs: true,
        ..Enforced::default()
    };
    if policy.network != Network::Host {
        enforced.namespaces.push("net".into());
    }
    enforced.tmpfs = plan.tmpfs.clone();

    // seccomp: compiled here, installed by the init.
    let filter = match &policy.seccomp {
        seccomp::SeccompProfile::None => {
            enforced.seccomp = "none".into();
            None
        }
        profile => {
            enforced.seccomp = if matches!(profile, seccomp::SeccompProfile::Default) {
                "default"
            } else {
                "custom"
            }
            .into();
            let f = seccomp::compile(profile, policy.audit_denials)
                .map_err(|e| failure(Stage::Seccomp, e.to_string()))?;
            enforced.seccomp_audit = f.listener;
            Some(f)
        }
    };

    // landlock: the ruleset is made here; the child adds every path rule (binds by their mounted inode,
    // tmpfs, /dev, /proc, the root) after pivot_root.
    let (landlock, landlock_rules) = if policy.landlock.enabled {
        // TCP rules need ABI 4 (Linux 6.7). Asked for explicitly, they are required. By default they are on
        // only where they add something, when the policy lists ports: a sandbox's own network namespace
        // already isolates its loopback, where test suites start their servers, and user-mode networking
        // is for outbound connections. Implied by listed ports on an
        // older kernel, they are reported, not required.
        let listed =
            !policy.landlock.tcp_bind.is_empty() || !policy.landlock.tcp_connect.is_empty();
        let wanted = policy.landlock.restrict_tcp.unwrap_or(listed);
        let explicit = policy.landlock.restrict_tcp.is_some();
        let tcp_abi = landlock::abi().is_ok_and(|abi| abi >= 4);
        if wanted && !explicit && !tcp_abi {
            enforced
                .not_enforced
                .push("landlock TCP port rules: need landlock ABI 4 (Linux 6.7)".into());
        }
        // A port the policy publishes is one the program may listen on.
        let published = policy
            .publish
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp);
        let net = landlock::NetRules {
            tcp_bind: (policy.landlock.tcp_bind.iter().copied())
                .chain(published.map(|p| p.port))
                .collect(),
            tcp_connect: policy.landlock.tcp_connect.clone(),
            handle: wanted && (explicit || tcp_abi),
        };
        let prepared =
            landlock::prepare(&[], &net, 1).map_err(|e| failure(Stage::Landlock, e.to_string()))?;
        let rules = plan
            .inside
            .iter()
            .map(|(path, kind)| {
                let access = match kind {
                    Inside::Write => prepared.write_access,
                    Inside::Dev => prepared.dev_access,
                    Inside::Proc => prepared.proc_access,
                    Inside::Read => prepared.read_access,
                    Inside::Root => prepared.root_access,
                };
                (path.clone(), access)
            })
            .collect();
        enforced.landlock = Some(prepared.enforced.clone());
        (Some(prepared), rules)
    } else {
        (None, Vec::new())
    };

    // The run's cgroup.
    let l = &policy.limits;
    let limits = CgroupLimits {
        memory: l.memory,
        pids: l.pids,
        cpus: l.cpus,
    };
    let cgroup = if limits.any() {
        match RunCgroup::create(limits) {
            Ok(cg) => {
                enforced.cgroup = Some(cg.enforced());
                Some(cg)
            }
            Err(reason) if l.required => {
                return Err(failure(
                    Stage::Cgroup,
                    format!(
                        "the policy requires cgroup limits but none can be enforced here: {reason}; run as \
                         root, from a delegated cgroup, or use the VM backend"
                    ),
                ));
            }
            Err(reason) => {
                enforced
                    .not_enforced
                    .push(format!("memory/pids/cpus limits: {reason}"));
                None
            }
        }
    } else {
        None
    };

    // rlimits, set by the init before it forks the program. No core dumps, ever: 1, not 0, because the
    // kernel ignores a core limit of 0 when core_pattern pipes to a helper (systemd-coredump, apport), but
    // takes 1 as "do not dump" there, and 1 byte is too small for any core file.
    let mut rlimits = vec![(libc::RLIMIT_CORE, 1, 1)];
    enforced.rlimits.push(("core".into(), 1));
    if let Some(t) = l.cpu_time {
        // Whole seconds, rounded up: SIGXCPU at the soft limit, SIGKILL one second later.
        let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
        rlimits.push((libc::RLIMIT_CPU, secs, secs + 1));
        enforced.rlimits.push(("cpu".into(), secs));
    }
    for (res, name, v) in [
        (libc::RLIMIT_NOFILE, "nofile", l.nofile),
        (libc::RLIMIT_NPROC, "nproc", l.nproc),
        (libc::RLIMIT_FSIZE, "fsize", l.fsize),
    ] {
        if let Some(v) = v {
            rlimits.push((res, v, v));
            enforced.rlimits.push((name.into(), v));
        }
    }

    Ok(Layers {
        filter,
        landlock,
        landlock_rules,
        cgroup,
        rlimits,
        enforced,
    })
}
