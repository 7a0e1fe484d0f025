//! `process`: the program, its environment and directory, its user, rlimits and capabilities.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::{self as oci, PosixRlimit, PosixRlimitType};
use sandkasten::policy::{IdMapping, Limits, RANGE_SIZE};
use sandkasten::{Capability, Policy};

use super::{SpecError, check};

/// Errors in `process`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// There is no `process`.
    #[error(
        "config.json has no process: give process.args, process.cwd and process.user (runtime-spec \
         `process`), the program the container runs"
    )]
    Missing,
    /// `process.args` is missing or empty.
    #[error("process.args is empty: give the program to run and its arguments, e.g. [\"sh\"]")]
    NoArgs,
    /// An environment entry is not `KEY=VALUE`.
    #[error("{field}[{index}] {entry:?} is not KEY=VALUE with a non-empty KEY: fix or remove it")]
    BadEnv {
        /// The list, e.g. `process.env`.
        field: String,
        /// The entry's index.
        index: usize,
        /// The entry.
        entry: String,
    },
    /// `process.cwd` is not absolute.
    #[error(
        "process.cwd {0:?} is not an absolute path: give the working directory inside the container, e.g. \"/\""
    )]
    RelativeCwd(PathBuf),
    /// An rlimit's soft value is above its hard value.
    #[error(
        "process.rlimits {kind}: the soft limit {soft} is above the hard limit {hard}, which the kernel refuses; \
         lower soft or raise hard"
    )]
    Rlimit {
        /// `RLIMIT_NOFILE` etc.
        kind: String,
        /// The soft limit.
        soft: u64,
        /// The hard limit.
        hard: u64,
    },
}

/// The process to run, as `config.json` describes it. The policy carries what the sandbox enforces itself
/// (user, rlimits, capabilities); this is what the caller hands to [`sandkasten::Sandbox`] and what it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Process {
    /// The program (`args[0]`, looked up in the container's `PATH` when it has no `/`) and its arguments.
    pub args: Vec<String>,
    /// The environment, in order.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory inside the container (absolute).
    pub cwd: PathBuf,
    /// The user id inside the container (also the policy's `uid`).
    pub uid: u32,
    /// The group id inside the container (also the policy's `gid`).
    pub gid: u32,
    /// `process.user.additionalGids`: the policy's `groups` where the container's user namespace maps more
    /// than one id; otherwise a note says they are not applied.
    pub additional_gids: Vec<u32>,
    /// `process.noNewPrivileges` as asked (absent: false). The sandbox sets `no_new_privs` whatever it says.
    pub no_new_privileges: bool,
    /// `process.rlimits` as given; those the policy carries are in `policy.limits` too, the others are noted.
    pub rlimits: Vec<PosixRlimit>,
}

/// Translates `process`: returns the process and `process.terminal`.
pub(super) fn translate(
    process: Option<&oci::Process>,
    policy: &mut Policy,
    notes: &mut Vec<String>,
) -> Result<(Process, bool), SpecError> {
    let p = process.ok_or(ProcessError::Missing)?;
    let args = p.args().clone().unwrap_or_default();
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(ProcessError::NoArgs.into());
    }
    let env = parse_env("process.env", p.env().as_deref().unwrap_or_default())?;
    if !p.cwd().is_absolute() {
        return Err(ProcessError::RelativeCwd(p.cwd().clone()).into());
    }

    let user = p.user();
    policy.uid = user.uid();
    policy.gid = user.gid();
    let additional_gids = user.additional_gids().clone().unwrap_or_default();
    if let Some(umask) = user.umask() {
        notes.push(format!(
            "process.user.umask {umask:04o} is not applied: the process inherits the runtime's umask."
        ));
    }

    let no_new_privileges = p.no_new_privileges().unwrap_or(false);
    if !no_new_privileges {
        notes.push(
            "process.noNewPrivileges is false: the sandbox always sets no_new_privs, so set-user-ID programs \
             gain nothing."
                .into(),
        );
    }
    let rlimits = p.rlimits().clone().unwrap_or_default();
    policy.limits = limits(&rlimits, notes)?;
    let mut limits_only = Policy::default();
    limits_only.limits = policy.limits.clone();
    check("process.rlimits", &limits_only)?;

    if let Some(caps) = p.capabilities() {
        policy.capabilities = capabilities(caps, user.uid(), notes);
    }
    for (field, set) in [
        ("process.apparmorProfile", p.apparmor_profile().is_some()),
        ("process.selinuxLabel", p.selinux_label().is_some()),
    ] {
        if set {
            notes.push(format!(
                "{field} is not applied: the sandbox confines the process with its own namespaces, seccomp and \
                 landlock."
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj() {
        notes.push(format!(
            "process.oomScoreAdj ({adj}) is not applied: the process keeps the runtime's OOM score."
        ));
    }
    for (field, set) in [
        ("process.ioPriority", p.io_priority().is_some()),
        ("process.scheduler", p.scheduler().is_some()),
        ("process.execCPUAffinity", p.exec_cpu_affinity().is_some()),
    ] {
        if set {
            notes.push(format!(
                "{field} is not applied: the process keeps the runtime's."
            ));
        }
    }

    let process = Process {
        args,
        env,
        cwd: p.cwd().clone(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids,
        no_new_privileges,
        rlimits,
    };
    Ok((process, p.terminal().unwrap_or(false)))
}

/// `KEY=VALUE` entries as pairs; `field` names the list in errors.
pub(super) fn parse_env(
    field: &str,
    entries: &[String],
) -> Result<Vec<(OsString, OsString)>, SpecError> {
    let pair = |(index, entry): (usize, &String)| match entry.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(ProcessError::BadEnv {
            field: field.into(),
            index,
            entry: entry.clone(),
        }),
    };
    let pairs = entries.iter().enumerate().map(pair);
    Ok(pairs.collect::<Result<_, _>>()?)
}

/// The rlimits the policy carries (`RLIMIT_NOFILE`, `RLIMIT_NPROC`, `RLIMIT_FSIZE`, `RLIMIT_CPU`); the others
/// are noted. The sandbox sets soft and hard to one value: the soft one (the limit the program meets).
fn limits(rlimits: &[PosixRlimit], notes: &mut Vec<String>) -> Result<Limits, SpecError> {
    let mut limits = Limits::default();
    for r in rlimits {
        let kind = r.typ().to_string();
        let (soft, hard) = (r.soft(), r.hard());
        if soft > hard {
            return Err(ProcessError::Rlimit { kind, soft, hard }.into());
        }
        // RLIM_INFINITY: no limit of the policy's own.
        let value = (soft != u64::MAX).then_some(soft);
        let slot = match r.typ() {
            PosixRlimitType::RlimitNofile => &mut limits.nofile,
            PosixRlimitType::RlimitNproc => &mut limits.nproc,
            PosixRlimitType::RlimitFsize => &mut limits.fsize,
            PosixRlimitType::RlimitCpu => {
                limits.cpu_time = value.map(Duration::from_secs);
                continue;
            }
            PosixRlimitType::RlimitCore => {
                notes.push(format!(
                    "process.rlimits {kind} is not applied: core dumps are always off in the sandbox."
                ));
                continue;
            }
            _ => {
                notes.push(format!(
                    "process.rlimits {kind} is not applied: the process inherits the runtime's limit."
                ));
                continue;
            }
        };
        *slot = value;
        if value.is_some() && hard != soft {
            notes.push(format!(
                "process.rlimits {kind}: the hard limit {hard} is lowered to the soft limit {soft} (the sandbox \
                 sets both to one value)."
            ));
        }
    }
    Ok(limits)
}

/// The capabilities the process's root keeps: those of its effective and permitted sets (within the bounding
/// set, when given) that the policy allows; the others are noted as dropped.
fn capabilities(
    caps: &oci::LinuxCapabilities,
    uid: u32,
    notes: &mut Vec<String>,
) -> Vec<Capability> {
    let mut asked = BTreeSet::new();
    for set in [caps.effective(), caps.permitted()].into_iter().flatten() {
        asked.extend(set.iter().map(|c| format!("CAP_{c}")));
    }
    if let Some(bounding) = caps.bounding() {
        let bounding: BTreeSet<_> = bounding.iter().map(|c| format!("CAP_{c}")).collect();
        asked.retain(|c| bounding.contains(c));
    }
    let (kept, dropped): (Vec<_>, Vec<_>) = asked
        .iter()
        .partition(|c| Capability::from_name(c).is_some());
    if !dropped.is_empty() {
        let names: Vec<&str> = dropped.iter().map(|c| c.as_str()).collect();
        notes.push(format!(
            "process.capabilities: the sandbox drops {}; it keeps only capabilities whose power stays inside \
             its user namespace.",
            names.join(", ")
        ));
    }
    let ambient = caps.ambient().as_ref().is_some_and(|a| !a.is_empty());
    if uid != 0 && (!kept.is_empty() || ambient) {
        notes.push(format!(
            "process.capabilities are not given to uid {uid}: the sandbox keeps capabilities only for uid 0 \
             inside."
        ));
    }
    let mut kept: Vec<Capability> = kept
        .iter()
        .filter_map(|c| Capability::from_name(c))
        .collect();
    kept.sort();
    kept
}

/// `process.user.additionalGids`, once `linux` chose the id mapping: the policy's supplementary groups where
/// the user namespace will map a range that holds them (setgroups is denied with a one-id map); otherwise a
/// note, and the process has only its own group.
pub(super) fn groups(gids: &[u32], policy: &mut Policy, notes: &mut Vec<String>) {
    if gids.is_empty() {
        return;
    }
    let range = match &policy.ids {
        IdMapping::Single => 1,
        IdMapping::Range { count, .. } => *count,
        IdMapping::Subordinate(_) => RANGE_SIZE,
        // A root caller always gets a range of its own; an unprivileged one only with subordinate ids,
        // which this translation cannot know for sure.
        IdMapping::Auto if nix::unistd::geteuid().is_root() => RANGE_SIZE,
        IdMapping::Auto => 1,
        _ => 1,
    };
    if range > 1 && gids.iter().all(|&g| g < range) {
        policy.groups = gids.to_vec();
    } else {
        notes.push(format!(
            "process.user.additionalGids {gids:?} are not applied: the container's user namespace does not \
             map them (a root caller's containers have them); the process has only its group {}.",
            policy.gid
        ));
    }
}
