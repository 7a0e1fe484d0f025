//! `linux.seccomp` onto a [`CustomProfile`], checked by compiling it with sandkasten's own compiler, so a
//! profile the sandbox cannot install fails when the container is created, not when it starts.
//!
//! As runc does, system call names this architecture does not have are skipped. `SCMP_CMP_MASKED_EQ` takes
//! the mask from `value` and the compared value from `valueTwo`; both sides are masked (libseccomp's and
//! sandkasten's meaning alike). Arguments are compared on all 64 bits, as libseccomp does on x86_64. When
//! several rules match one call, the most restrictive action wins (sandkasten's rule); profiles written for
//! libseccomp (Docker's, podman's) do not let rules of different actions overlap, so they mean the same.

use oci_spec::runtime::{self as oci, Arch, LinuxSeccompAction, LinuxSeccompOperator};
use sandkasten::Policy;
use sandkasten::seccomp::{
    self as sk, Action, ArgCond, CmpOp, CustomProfile, Rule, SeccompProfile, syscall_number,
};

use super::SpecError;

/// Errors in `linux.seccomp`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// An action the sandbox refuses (`SCMP_ACT_NOTIFY`, or a listener path).
    #[error("{field}: {why}")]
    Refused {
        /// The field, e.g. `linux.seccomp.syscalls[4].action`.
        field: String,
        /// Why, and what to do.
        why: &'static str,
    },
    /// An errno the filter cannot return.
    #[error(
        "{field} is {errno}: the sandbox's filter returns errnos from 1 to 4095 (0 would make the call succeed \
         without running); give one in that range, or use SCMP_ACT_ALLOW"
    )]
    Errno {
        /// The field, e.g. `linux.seccomp.syscalls[2].errnoRet`.
        field: String,
        /// The errno given.
        errno: u32,
    },
    /// An argument index beyond the six a system call has.
    #[error("{field}.index is {index}: a system call has arguments 0 to 5")]
    ArgIndex {
        /// The argument, e.g. `linux.seccomp.syscalls[2].args[0]`.
        field: String,
        /// The index given.
        index: usize,
    },
    /// sandkasten's compiler rejects the translated profile.
    #[error("linux.seccomp cannot be installed by the sandbox: {0}")]
    Compile(#[source] sk::SeccompError),
}

/// The only architecture whose calls the sandbox's filter lets through (the others are killed).
pub const NATIVE_ARCH: Arch = Arch::ScmpArchX86_64;

/// errno 38 (the same on every Linux architecture): what a traced call returns when no tracer is attached.
const ENOSYS: u16 = 38;

/// What the translation does with a seccomp action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionUse {
    /// The same action.
    Honoured(Action),
    /// Another action, with its errno (when `errno`) and the reason, which a note gives.
    Differs(Action, Option<u16>, &'static str),
    /// Refused with an error giving the reason.
    Refused(&'static str),
}

const KILL_PROCESS: ActionUse = ActionUse::Differs(
    Action::Kill,
    None,
    "the sandbox's filter kills the whole process, not the thread",
);

/// Every action of the runtime-spec and what the translation does with it.
pub const ACTIONS: [(LinuxSeccompAction, ActionUse); 9] = [
    (
        LinuxSeccompAction::ScmpActAllow,
        ActionUse::Honoured(Action::Allow),
    ),
    (
        LinuxSeccompAction::ScmpActErrno,
        ActionUse::Honoured(Action::Errno),
    ),
    (
        LinuxSeccompAction::ScmpActKillProcess,
        ActionUse::Honoured(Action::Kill),
    ),
    (LinuxSeccompAction::ScmpActKill, KILL_PROCESS),
    (LinuxSeccompAction::ScmpActKillThread, KILL_PROCESS),
    (
        LinuxSeccompAction::ScmpActTrap,
        ActionUse::Differs(
            Action::Kill,
            None,
            "the sandbox's filter kills the process instead of sending a SIGSYS it could catch",
        ),
    ),
    (
        LinuxSeccompAction::ScmpActTrace,
        ActionUse::Differs(
            Action::Errno,
            Some(ENOSYS),
            "the call fails with ENOSYS, as it does when no tracer is attached",
        ),
    ),
    (
        LinuxSeccompAction::ScmpActLog,
        ActionUse::Differs(
            Action::Allow,
            None,
            "the call is allowed without being logged",
        ),
    ),
    (
        LinuxSeccompAction::ScmpActNotify,
        ActionUse::Refused(
            "SCMP_ACT_NOTIFY hands system calls to an agent outside the container, which the sandbox does \
             not support; use SCMP_ACT_ERRNO or SCMP_ACT_ALLOW",
        ),
    ),
];

/// Every comparison of the runtime-spec and the sandbox's (`SCMP_CMP_MASKED_EQ` takes its mask from `value`).
pub const OPERATORS: [(LinuxSeccompOperator, CmpOp); 7] = [
    (LinuxSeccompOperator::ScmpCmpNe, CmpOp::Ne),
    (LinuxSeccompOperator::ScmpCmpLt, CmpOp::Lt),
    (LinuxSeccompOperator::ScmpCmpLe, CmpOp::Le),
    (LinuxSeccompOperator::ScmpCmpEq, CmpOp::Eq),
    (LinuxSeccompOperator::ScmpCmpGe, CmpOp::Ge),
    (LinuxSeccompOperator::ScmpCmpGt, CmpOp::Gt),
    (LinuxSeccompOperator::ScmpCmpMaskedEq, CmpOp::MaskedEq),
];

/// The name config.json gives a value (`SCMP_ACT_ALLOW`, `SCMP_ARCH_X86_64`, ...).
pub(crate) fn json_name<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{value:?}"),
    }
}

/// Translates `linux.seccomp` into `policy.seccomp`; without one the sandbox's default profile stays.
pub(super) fn translate(
    seccomp: Option<&oci::LinuxSeccomp>,
    policy: &mut Policy,
    notes: &mut Vec<String>,
) -> Result<(), SpecError> {
    let Some(s) = seccomp else {
        notes.push(
            "linux.seccomp is absent: the sandbox's default profile applies (it denies what Docker's default \
             profile denies)."
                .into(),
        );
        return Ok(());
    };
    if s.listener_path().is_some() {
        return Err(SeccompError::Refused {
            field: "linux.seccomp.listenerPath".into(),
            why: "a seccomp agent outside the container is not supported; remove listenerPath and the \
                  SCMP_ACT_NOTIFY rules",
        }
        .into());
    }
    let (default_action, default_errno) = action(
        (
            "linux.seccomp.defaultAction",
            "linux.seccomp.defaultErrnoRet",
        ),
        s.default_action(),
        s.default_errno_ret(),
        notes,
    )?;
    if let Some(flags) = s.flags().as_ref().filter(|f| !f.is_empty()) {
        let names: Vec<String> = flags.iter().map(json_name).collect();
        notes.push(format!(
            "linux.seccomp.flags ({}) are not applied: the sandbox installs its filter without flags.",
            names.join(", ")
        ));
    }
    let foreign: Vec<String> = (s.architectures().iter().flatten())
        .filter(|a| **a != NATIVE_ARCH && **a != Arch::ScmpArchNative)
        .map(json_name)
        .collect();
    if !foreign.is_empty() {
        notes.push(format!(
            "linux.seccomp.architectures: calls of {} are killed, the sandbox's filter allows native x86_64 \
             calls only.",
            foreign.join(", ")
        ));
    }

    let mut rules = Vec::new();
    let mut unknown = Vec::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let (action_field, errno_field) = (format!("{field}.action"), format!("{field}.errnoRet"));
        let fields = (action_field.as_str(), errno_field.as_str());
        let (action, errno) = action(fields, sc.action(), sc.errno_ret(), notes)?;
        let args = (sc.args().iter().flatten().enumerate())
            .map(|(j, a)| condition(&format!("{field}.args[{j}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        for name in sc.names() {
            if syscall_number(name).is_none() {
                unknown.push(name.as_str());
                continue;
            }
            rules.push(Rule {
                syscall: name.clone(),
                action,
                errno,
                args: args.clone(),
            });
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        let shown = unknown
            .iter()
            .take(6)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if unknown.len() > 6 { ", ..." } else { "" };
        notes.push(format!(
            "linux.seccomp names system calls x86_64 does not have ({}: {shown}{more}); their rules are skipped, \
             as runc skips them.",
            unknown.len()
        ));
    }
    let profile = SeccompProfile::Custom(CustomProfile {
        default_action,
        default_errno,
        rules,
    });
    compile(&profile, policy, notes)?;
    policy.seccomp = profile;
    Ok(())
}

/// Compiles the profile as the sandbox will (with audit when the policy counts denials); a profile audit mode
/// cannot answer turns audit off, noted.
fn compile(
    profile: &SeccompProfile,
    policy: &mut Policy,
    notes: &mut Vec<String>,
) -> Result<(), SeccompError> {
    match sk::compile(profile, policy.audit_denials) {
        Ok(_) => Ok(()),
        Err(sk::SeccompError::AmbiguousErrno { syscall, errnos }) if policy.audit_denials => {
            sk::compile(profile, false).map_err(SeccompError::Compile)?;
            policy.audit_denials = false;
            notes.push(format!(
                "denied system calls are not counted in the verdict: linux.seccomp gives {syscall} several \
                 errnos ({errnos:?}), which the sandbox's counting cannot tell apart."
            ));
            Ok(())
        }
        Err(e) => Err(SeccompError::Compile(e)),
    }
}

/// An action and its errno (`errnoRet`, EPERM when absent; only for `SCMP_ACT_ERRNO`). `fields` names the
/// action and the errno in messages.
fn action(
    (field, errno_field): (&str, &str),
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    notes: &mut Vec<String>,
) -> Result<(Action, Option<u16>), SeccompError> {
    let how = ACTIONS
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, how)| *how)
        .unwrap_or(ActionUse::Refused(
            "this action is not known to the sandbox",
        ));
    match how {
        ActionUse::Honoured(Action::Errno) => match errno_ret {
            None => Ok((Action::Errno, None)),
            Some(e @ 1..=4095) => Ok((Action::Errno, Some(e as u16))),
            Some(errno) => Err(SeccompError::Errno {
                field: errno_field.into(),
                errno,
            }),
        },
        ActionUse::Honoured(a) => Ok((a, None)),
        ActionUse::Differs(a, errno, why) => {
            let note = format!(
                "{field} {} is honoured differently: {why}.",
                json_name(&action)
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
            Ok((a, errno))
        }
        ActionUse::Refused(why) => Err(SeccompError::Refused {
            field: field.into(),
            why,
        }),
    }
}

/// One argument condition.
fn condition(field: &str, a: &oci::LinuxSeccompArg) -> Result<ArgCond, SeccompError> {
    let index = u8::try_from(a.index())
        .ok()
        .filter(|&i| i <= 5)
        .ok_or_else(|| SeccompError::ArgIndex {
            field: field.into(),
            index: a.index(),
        })?;
    let op = OPERATORS
        .iter()
        .find(|(o, _)| *o == a.op())
        .map(|(_, op)| *op)
        .ok_or_else(|| SeccompError::Refused {
            field: format!("{field}.op"),
            why: "this comparison is not known to the sandbox",
        })?;
    let (value, mask) = match op {
        CmpOp::MaskedEq => (a.value_two().unwrap_or(0), Some(a.value())),
        _ => (a.value(), None),
    };
    Ok(ArgCond {
        index,
        op,
        value,
        mask,
        bits: 64,
    })
}
