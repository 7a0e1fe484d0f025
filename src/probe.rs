//! What this host can enforce, found by trying rather than guessing.

use std::path::PathBuf;

use serde::Serialize;

use crate::namespace::{cgroup, sys};

/// Which KVM `/dev/kvm` is and whether this caller can use it (the VMM crate's detection).
#[cfg(feature = "vm")]
pub use sandkasten_vmm::{KvmFlavour, KvmReport, probe_kvm};

/// The cgroup layout the caller sits in.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupReport {
    /// "v2" (unified only), "v1" (legacy controllers only), "hybrid" (v1 controllers beside an empty v2) or "none".
    pub layout: &'static str,
    /// Controllers usable through the unified (v2) hierarchy in the caller's cgroup.
    pub v2_controllers: Vec<String>,
    /// v1 hierarchies mounted, by controller.
    pub v1_controllers: Vec<String>,
    /// The caller's own cgroup directories, per hierarchy, that this caller can write (where sandboxes go).
    pub writable: Vec<PathBuf>,
}

/// The host report printed by `sandbox doctor`.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct HostReport {
    /// `uname -r`.
    pub kernel: String,
    /// Running as root.
    pub root: bool,
    /// New user, pid, mount, net, ipc, uts and cgroup namespaces can be created by this caller (tried).
    pub user_namespaces: bool,
    /// Why not, when not.
    pub user_namespaces_error: Option<String>,
    /// The cgroup layout.
    pub cgroup: CgroupReport,
    /// seccomp filters are available.
    pub seccomp: bool,
    /// The landlock ABI version, when landlock is enabled.
    pub landlock_abi: Option<u32>,
    /// KVM.
    #[cfg(feature = "vm")]
    pub kvm: KvmReport,
    /// The VM backend's engines and guest.
    pub vm: VmReport,
    /// pasta, for user-mode networking (`network = "user"`), when found.
    pub pasta: Option<PathBuf>,
    /// Why user-mode networking cannot run here, when it cannot.
    pub user_network_problem: Option<String>,
    /// passt, for user-mode networking in a VM of its own, when found.
    pub passt: Option<PathBuf>,
}

/// What the VM backend would use here.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct VmReport {
    /// `qemu-system-x86_64`, when found.
    pub qemu: Option<PathBuf>,
    /// The accelerator QEMU would use ("kvm" or "tcg"), and why.
    pub accelerator: String,
    /// The guest kernel, when found.
    pub kernel: Option<PathBuf>,
    /// The static guest agent, when found.
    pub agent: Option<PathBuf>,
    /// Why the VM backend cannot run here, when it cannot.
    pub problem: Option<String>,
}

/// Probes the host.
pub fn probe() -> HostReport {
    let (user_namespaces, user_namespaces_error) = match try_namespaces() {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e)),
    };
    #[cfg(feature = "vm")]
    let kvm = probe_kvm();
    HostReport {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        root: nix::unistd::geteuid().is_root(),
        user_namespaces,
        user_namespaces_error,
        cgroup: cgroups(),
        // SAFETY: prctl(PR_GET_SECCOMP) only reads this thread's mode.
        seccomp: unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0,
        landlock_abi: crate::namespace::landlock::abi().ok(),
        #[cfg(feature = "vm")]
        vm: vm_report(&kvm),
        #[cfg(not(feature = "vm"))]
        vm: VmReport {
            qemu: None,
            accelerator: String::new(),
            kernel: None,
            agent: None,
            problem: Some(
                "this build has no VM backend (sandkasten without its `vm` feature)".into(),
            ),
        },
        #[cfg(feature = "vm")]
        kvm,
        pasta: crate::namespace::network::pasta::find().ok(),
        user_network_problem: crate::namespace::network::pasta::problem(),
        #[cfg(feature = "vm")]
        passt: crate::namespace::network::passt::find().ok(),
        #[cfg(not(feature = "vm"))]
        passt: None,
    }
}

#[cfg(feature = "vm")]
fn vm_report(kvm: &KvmReport) -> VmReport {
    let qemu = crate::vm::find_qemu();
    let (accel, why) = crate::vm::choose_accel(kvm);
    let assets = crate::vm::locate();
    let problem = match (&qemu, &assets.kernel.problem, &assets.agent.problem) {
        (None, _, _) => {
            Some("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".to_string())
        }
        (_, Some(k), Some(a)) => Some(format!("{k}; {a}")),
        (_, Some(p), None) | (_, None, Some(p)) => Some(p.clone()),
        _ => None,
    };
    let (kernel, agent) = (assets.kernel.path, assets.agent.path);
    VmReport {
        qemu,
        accelerator: format!("{}: {why}", accel.name()),
        kernel,
        agent,
        problem,
    }
}

/// Creates, for real, a child in all the namespaces a sandbox uses; it exits at once.
fn try_namespaces() -> Result<(), String> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP
        | libc::SIGCHLD;
    let mut pidfd = -1;
    // SAFETY: the child only calls _exit.
    match unsafe { sys::clone(flags as libc::c_ulong, &mut pidfd) } {
        Ok(0) => sys::exit(0),
        Ok(pid) => {
            let _ = sys::wait_pid(pid);
            Ok(())
        }
        Err(e) => Err(format!(
            "clone with new namespaces failed: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

fn cgroups() -> CgroupReport {
    let own = cgroup::own_cgroups();
    let mounts = cgroup::cgroup_mounts();
    let mut v1 = Vec::new();
    let mut v2_controllers = Vec::new();
    let mut writable = Vec::new();
    for (mnt, fstype, opts) in &mounts {
        let (dir, controllers) = if fstype == "cgroup2" {
            let Some((_, path)) = own.iter().find(|(c, _)| c.is_empty()) else {
                continue;
            };
            let dir = mnt.join(path.trim_start_matches('/'));
            v2_controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
            (dir, Vec::new())
        } else {
            let ctrls: Vec<String> = opts
                .split(',')
                .filter(|o| {
                    [
                        "memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "blkio", "devices",
                    ]
                    .contains(o)
                })
                .map(String::from)
                .collect();
            let Some((_, path)) = own
                .iter()
                .find(|(c, _)| c.split(',').any(|x| ctrls.contains(&x.to_string())))
            else {
                continue;
            };
            (mnt.join(path.trim_start_matches('/')), ctrls)
        };
        v1.extend(controllers);
        if nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok() {
            writable.push(dir);
        }
    }
    v1.sort();
    v1.dedup();
    let has_v2 = mounts.iter().any(|m| m.1 == "cgroup2");
    let layout = match (has_v2, v1.is_empty()) {
        (true, true) => "v2",
        (true, false) => "hybrid",
        (false, false) => "v1",
        (false, true) => "none",
    };
    CgroupReport {
        layout,
        v2_controllers,
        v1_controllers: v1,
        writable,
    }
}
