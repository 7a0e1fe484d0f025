//! `linux` (but `seccomp`): namespaces, id mappings, resources, and the fields the sandbox does not apply.

use std::path::PathBuf;

use oci_spec::runtime::{self as oci, LinuxNamespaceType};
use sandkasten::policy::{Limits, RANGE_SIZE};
use sandkasten::{IdMapping, Network, Policy};

use super::{SpecError, check};

/// Errors in `linux`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinuxError {
    /// A namespace to join that the sandbox always creates itself.
    #[error(
        "linux.namespaces: joining the existing {kind} namespace {path:?} is not supported (only a network \
         namespace can be joined); remove its path to get a new one"
    )]
    NamespacePath {
        /// The namespace type as config.json names it.
        kind: String,
        /// The path given.
        path: PathBuf,
    },
    /// Clock offsets, which need a time namespace.
    #[error(
        "linux.timeOffsets is not supported: the sandbox creates no time namespace, so its clocks are the \
         host's; remove timeOffsets"
    )]
    TimeOffsets,
    /// A CPU period of zero.
    #[error(
        "linux.resources.cpu.period is 0: give the period in microseconds, e.g. 100000, or leave it out"
    )]
    CpuPeriod,
}

/// What the sandbox does with a namespace of `linux.namespaces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamespaceUse {
    /// Always a new one, listed or not; a `path` to join is refused.
    New,
    /// A new one when listed without a path, the caller joins it when listed with a `path`, the host's when
    /// not listed ([`Network::Host`]).
    Network,
    /// Not created (a note gives the reason; a `path` is refused).
    NotCreated(&'static str),
}

/// Every namespace type of the runtime-spec and what the sandbox does with it.
pub const NAMESPACES: [(LinuxNamespaceType, NamespaceUse); 8] = [
    (LinuxNamespaceType::Pid, NamespaceUse::New),
    (LinuxNamespaceType::Mount, NamespaceUse::New),
    (LinuxNamespaceType::Ipc, NamespaceUse::New),
    (LinuxNamespaceType::Uts, NamespaceUse::New),
    (LinuxNamespaceType::User, NamespaceUse::New),
    (LinuxNamespaceType::Cgroup, NamespaceUse::New),
    (LinuxNamespaceType::Network, NamespaceUse::Network),
    (
        LinuxNamespaceType::Time,
        NamespaceUse::NotCreated("without linux.timeOffsets its clocks would be the host's anyway"),
    ),
];

/// What `linux` asks that the caller does around the sandbox.
pub(super) struct Outside {
    pub netns_path: Option<PathBuf>,
}

/// The name config.json gives a namespace type (`mount`, not the kernel's `mnt`).
pub(crate) fn namespace_name(kind: LinuxNamespaceType) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(name)) => name,
        _ => kind.to_string(),
    }
}

/// Translates `linux` but `seccomp` (see `seccomp.rs`). The process is translated first: the id mapping is
/// checked against its user.
pub(super) fn translate(
    linux: &oci::Linux,
    policy: &mut Policy,
    notes: &mut Vec<String>,
) -> Result<Outside, SpecError> {
    if linux.time_offsets().is_some() {
        return Err(LinuxError::TimeOffsets.into());
    }
    let netns_path = namespaces(
        linux.namespaces().as_deref().unwrap_or_default(),
        policy,
        notes,
    )?;
    ids(linux, policy, notes)?;
    if let Some(r) = linux.resources() {
        let mut limits = std::mem::take(&mut policy.limits);
        resources(r, &mut limits, notes)?;
        let mut alone = Policy::default();
        alone.limits = limits.clone();
        check("linux.resources", &alone)?;
        policy.limits = limits;
    }
    others(linux, notes);
    // Applied by the sandbox inside the finished root (checked with the policy: absolute, no `..`).
    let paths = |list: &Option<Vec<String>>| -> Vec<PathBuf> {
        list.iter().flatten().map(PathBuf::from).collect()
    };
    policy.masked_paths = paths(linux.masked_paths());
    policy.readonly_paths = paths(linux.readonly_paths());
    Ok(Outside { netns_path })
}

/// `linux.namespaces`: sets the network; returns the network namespace to join.
fn namespaces(
    list: &[oci::LinuxNamespace],
    policy: &mut Policy,
    notes: &mut Vec<String>,
) -> Result<Option<PathBuf>, SpecError> {
    let mut network = Network::Host;
    let mut join = None;
    for ns in list {
        let kind = ns.typ();
        let path = ns.path().as_ref().filter(|p| !p.as_os_str().is_empty());
        let how = NAMESPACES
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(NamespaceUse::New, |(_, how)| *how);
        match (how, path) {
            (NamespaceUse::Network, Some(path)) => {
                network = Network::None;
                join = Some(path.clone());
            }
            (NamespaceUse::Network, None) => network = Network::None,
            (_, Some(path)) => {
                return Err(LinuxError::NamespacePath {
                    kind: namespace_name(kind),
                    path: path.clone(),
                }
                .into());
            }
            (NamespaceUse::New, None) => {}
            (NamespaceUse::NotCreated(why), None) => notes.push(format!(
                "linux.namespaces {} is not created: {why}.",
                namespace_name(kind)
            )),
        }
    }
    let unlisted: Vec<String> = NAMESPACES
        .iter()
        .filter(|(k, how)| *how == NamespaceUse::New && !list.iter().any(|ns| ns.typ() == *k))
        .map(|(k, _)| namespace_name(*k))
        .collect();
    if !unlisted.is_empty() {
        notes.push(format!(
            "linux.namespaces does not list {}, which the sandbox always creates anew.",
            unlisted.join(", ")
        ));
    }
    policy.network = network;
    Ok(join)
}

/// `linux.uidMappings` and `gidMappings` onto [`IdMapping`] where it can express them: one mapping each, from
/// container id 0. Size 1 is [`IdMapping::Single`] with `host_uid`/`host_gid` (a root caller maps exactly
/// that; an unprivileged caller always maps its own ids), a larger size an [`IdMapping::Range`] (root callers
/// only). Anything else, or host id 0: the sandbox maps its own ids ([`IdMapping::Auto`]), noted.
fn ids(linux: &oci::Linux, policy: &mut Policy, notes: &mut Vec<String>) -> Result<(), SpecError> {
    let uids = linux.uid_mappings().as_deref().unwrap_or_default();
    let gids = linux.gid_mappings().as_deref().unwrap_or_default();
    if uids.is_empty() && gids.is_empty() {
        return Ok(());
    }
    let mapping = match (uids, gids) {
        ([u], [g]) if u.container_id() == 0 && g.container_id() == 0 => {
            let (uid, gid, size) = (u.host_id(), g.host_id(), u.size());
            if uid == 0 || gid == 0 || size != g.size() || size > RANGE_SIZE {
                None
            } else if size == 1 {
                policy.host_uid = uid;
                policy.host_gid = gid;
                Some(IdMapping::Single)
            } else {
                Some(IdMapping::Range {
                    uid,
                    gid,
                    count: size,
                })
            }
        }
        _ => None,
    };
    match mapping {
        Some(ids) => policy.ids = ids,
        None => notes.push(
            "linux.uidMappings/gidMappings are not applied as given: the sandbox maps its own ids (65536 where \
             the caller has them, never host root)."
                .into(),
        ),
    }
    let mut alone = Policy::default().user(policy.uid, policy.gid);
    alone.ids = policy.ids.clone();
    alone.host_uid = policy.host_uid;
    alone.host_gid = policy.host_gid;
    check("linux.uidMappings", &alone)
}

/// `linux.resources`: memory, pids and CPU bandwidth become limits; the rest is noted.
fn resources(
    r: &oci::LinuxResources,
    limits: &mut Limits,
    notes: &mut Vec<String>,
) -> Result<(), SpecError> {
    let mut unapplied = |field: &str, value: String, why: &str| {
        notes.push(format!(
            "linux.resources.{field} ({value}) is not applied: {why}."
        ));
    };
    if let Some(m) = r.memory() {
        limits.memory = m.limit().filter(|&l| l > 0).map(|l| l as u64);
        if let Some(swap) = m.swap().filter(|&s| Some(s) != m.limit()) {
            unapplied(
                "memory.swap",
                swap.to_string(),
                "the memory limit counts swap too",
            );
        }
        #[allow(deprecated)] // kernel: still read, to say it is not applied
        let others = [
            ("memory.reservation", m.reservation().map(|v| v.to_string())),
            ("memory.kernel", m.kernel().map(|v| v.to_string())),
            ("memory.kernelTCP", m.kernel_tcp().map(|v| v.to_string())),
            ("memory.swappiness", m.swappiness().map(|v| v.to_string())),
            (
                "memory.disableOOMKiller",
                m.disable_oom_killer().map(|v| v.to_string()),
            ),
        ];
        for (field, value) in others {
            if let Some(value) = value {
                unapplied(
                    field,
                    value,
                    "the sandbox limits memory only by memory.limit",
                );
            }
        }
    }
    if let Some(p) = r.pids() {
        limits.pids = (p.limit() > 0).then_some(p.limit() as u64);
    }
    if let Some(c) = r.cpu() {
        if let Some(quota) = c.quota().filter(|&q| q > 0) {
            let period = c.period().unwrap_or(100_000);
            if period == 0 {
                return Err(LinuxError::CpuPeriod.into());
            }
            limits.cpus = Some(quota as f64 / period as f64);
        }
        let others = [
            ("cpu.shares", c.shares().map(|v| v.to_string())),
            ("cpu.idle", c.idle().map(|v| v.to_string())),
            ("cpu.burst", c.burst().map(|v| v.to_string())),
            (
                "cpu.realtimeRuntime",
                c.realtime_runtime().map(|v| v.to_string()),
            ),
            (
                "cpu.realtimePeriod",
                c.realtime_period().map(|v| v.to_string()),
            ),
            ("cpu.cpus", c.cpus().clone()),
            ("cpu.mems", c.mems().clone()),
        ];
        for (field, value) in others {
            if let Some(value) = value {
                unapplied(
                    field,
                    value,
                    "the sandbox limits CPU only by quota and period",
                );
            }
        }
    }
    let allowed = r.devices().iter().flatten().filter(|d| d.allow()).count();
    if allowed > 0 {
        unapplied(
            "devices",
            format!("allow rules: {allowed}"),
            "the sandbox's /dev is a fixed minimal set, whatever the rules allow",
        );
    }
    let set = [
        ("blockIO", r.block_io().is_some()),
        ("hugepageLimits", r.hugepage_limits().is_some()),
        ("network", r.network().is_some()),
        ("rdma", r.rdma().is_some()),
    ];
    for (field, present) in set {
        if present {
            unapplied(field, "set".into(), "the sandbox sets no such cgroup limit");
        }
    }
    if let Some(unified) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        let mut keys: Vec<&str> = unified.keys().map(String::as_str).collect();
        keys.sort();
        unapplied(
            "unified",
            keys.join(", "),
            "the sandbox writes only its own memory, pids and cpu limits",
        );
    }
    Ok(())
}

/// The fields of `linux` the sandbox does not apply: each noted.
fn others(linux: &oci::Linux, notes: &mut Vec<String>) {
    if let Some(sysctl) = linux.sysctl().as_ref().filter(|s| !s.is_empty()) {
        let mut keys: Vec<&str> = sysctl.keys().map(String::as_str).collect();
        keys.sort();
        notes.push(format!(
            "linux.sysctl ({}) is not applied: the sandbox sets no kernel parameters.",
            keys.join(", ")
        ));
    }
    const OURS: [&str; 7] = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
    ];
    let devices: Vec<String> = (linux.devices().iter().flatten())
        .map(|d| d.path().display().to_string())
        .filter(|p| !OURS.contains(&p.as_str()))
        .collect();
    if !devices.is_empty() {
        notes.push(format!(
            "linux.devices are not created ({}): the sandbox's /dev is a fixed minimal set (null, zero, full, \
             random, urandom, tty, pts).",
            devices.join(", ")
        ));
    }
    if let Some(p) = linux.rootfs_propagation().as_deref()
        && !["", "private", "rprivate"].contains(&p)
    {
        notes.push(format!(
            "linux.rootfsPropagation ({p}) is not applied: the sandbox's mounts are private."
        ));
    }
    if let Some(p) = linux.personality()
        && (p.domain() != oci::LinuxPersonalityDomain::PerLinux || p.flags().is_some())
    {
        notes.push(
            "linux.personality is not applied: the process runs with the standard Linux personality.".into(),
        );
    }
    if linux.cgroups_path().is_some() {
        notes.push(
            "linux.cgroupsPath is not used: the sandbox makes its own cgroup beneath the runtime's.".into(),
        );
    }
    let unapplied = [
        ("linux.mountLabel", linux.mount_label().is_some()),
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
        ("linux.netDevices", linux.net_devices().is_some()),
    ];
    for (field, present) in unapplied {
        if present {
            notes.push(format!(
                "{field} is not applied: the sandbox does not support it."
            ));
        }
    }
}
