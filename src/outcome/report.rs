//! The verdict as data: one serde model ([`Report`]) for the CLI's `--report`, the guest agent's verdict
//! line and the library (`Outcome` is `Serialize` and `Deserialize` through it). Its fields are documented,
//! key by key, in `docs/verdict.md`; `report_version` changes when a key changes meaning or goes away (new keys
//! may appear without it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    BackendKind, Capture, Denial, Enforced, Outcome, SetupFailure, Stage, Status, TimeLimit, Usage,
    VmInfo,
};

/// The version of the report's shape written into every report (`report_version`).
pub const REPORT_VERSION: u32 = 1;

/// A verdict as JSON carries it (see `docs/verdict.md`). Captured output is not part of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// [`REPORT_VERSION`] of the writer (absent in reports older than the field: read as 1).
    #[serde(default = "version_one")]
    pub report_version: u32,
    /// `exited`, `signaled`, `timed_out`, `oom_killed` or `setup_failed`.
    pub status: String,
    /// The exit code, with `exited`.
    pub exit_code: Option<i32>,
    /// The signal number, with `signaled`.
    pub signal: Option<i32>,
    /// Which limit ran out, with `timed_out`.
    #[serde(default)]
    pub timeout: Option<TimeLimit>,
    /// Why the sandbox could not be built or the program not started, with `setup_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_error: Option<SetupError>,
    /// The backend that ran it.
    pub backend: BackendKind,
    /// Why Auto did not take the namespace backend.
    #[serde(default)]
    pub fallback_reason: Option<String>,
    /// Wall-clock milliseconds.
    #[serde(default)]
    pub wall_ms: u64,
    /// User CPU milliseconds of the whole tree.
    #[serde(default)]
    pub cpu_user_ms: u64,
    /// System CPU milliseconds of the whole tree.
    #[serde(default)]
    pub cpu_sys_ms: u64,
    /// Peak memory of the whole tree, when a cgroup measured it.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// Where the usage figures come from.
    #[serde(default)]
    pub usage_source: String,
    /// What was enforced.
    #[serde(default)]
    pub enforced: Enforced,
    /// System calls the filter denied.
    #[serde(default)]
    pub denied_syscalls: Vec<Denial>,
    /// The VM engine, on the VM backend (also in `vm`).
    #[serde(default)]
    pub vm_engine: Option<String>,
    /// The VM's accelerator, on the VM backend (also in `vm`).
    #[serde(default)]
    pub accelerator: Option<String>,
    /// The VM, on the VM backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmInfo>,
    /// What was captured of piped streams, when anything was.
    #[serde(default, skip_serializing_if = "is_default")]
    pub capture: Capture,
}

fn version_one() -> u32 {
    1
}

fn is_default(c: &Capture) -> bool {
    *c == Capture::default()
}

/// A setup failure as a report carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SetupError {
    /// The step that failed.
    pub stage: Stage,
    /// The errno, when a system call failed.
    pub errno: Option<i32>,
    /// What failed, on which path or call, and what to do.
    pub message: String,
}

impl From<&Outcome> for Report {
    fn from(o: &Outcome) -> Report {
        let (exit_code, signal, timeout, setup_error) = match &o.status {
            Status::Exited(c) => (Some(*c), None, None, None),
            Status::Signaled(s) => (None, Some(*s), None, None),
            Status::TimedOut(l) => (None, None, Some(*l), None),
            Status::OomKilled => (None, None, None, None),
            Status::SetupFailed(f) => (
                None,
                None,
                None,
                Some(SetupError {
                    stage: f.stage,
                    errno: f.errno,
                    message: f.message.clone(),
                }),
            ),
        };
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        Report {
            report_version: REPORT_VERSION,
            status: o.status.name().into(),
            exit_code,
            signal,
            timeout,
            setup_error,
            backend: o.backend,
            fallback_reason: o.fallback_reason.clone(),
            wall_ms: ms(o.usage.wall),
            cpu_user_ms: ms(o.usage.cpu_user),
            cpu_sys_ms: ms(o.usage.cpu_sys),
            peak_memory_bytes: o.usage.peak_memory_bytes,
            usage_source: o.usage.source.clone(),
            enforced: o.enforced.clone(),
            denied_syscalls: o.denied_syscalls.clone(),
            vm_engine: o.vm.as_ref().map(|v| v.engine.clone()),
            accelerator: o.vm.as_ref().map(|v| v.accelerator.clone()),
            vm: o.vm.clone(),
            capture: o.capture.clone(),
        }
    }
}

impl From<Outcome> for Report {
    fn from(o: Outcome) -> Report {
        Report::from(&o)
    }
}

/// A report that is not a verdict: an unknown status, or a status without its detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a verdict: {0}")]
pub struct BadReport(&'static str);

impl TryFrom<Report> for Outcome {
    type Error = BadReport;

    fn try_from(r: Report) -> Result<Outcome, BadReport> {
        let status = match r.status.as_str() {
            "exited" => Status::Exited(
                r.exit_code
                    .ok_or(BadReport("`exited` without `exit_code`"))?,
            ),
            "signaled" => {
                Status::Signaled(r.signal.ok_or(BadReport("`signaled` without `signal`"))?)
            }
            "timed_out" => Status::TimedOut(r.timeout.unwrap_or(TimeLimit::Wall)),
            "oom_killed" => Status::OomKilled,
            "setup_failed" => {
                let e = r
                    .setup_error
                    .ok_or(BadReport("`setup_failed` without `setup_error`"))?;
                Status::SetupFailed(SetupFailure {
                    stage: e.stage,
                    errno: e.errno,
                    message: e.message,
                })
            }
            _ => return Err(BadReport("unknown `status`")),
        };
        Ok(Outcome {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
            usage: Usage {
                wall: Duration::from_millis(r.wall_ms),
                cpu_user: Duration::from_millis(r.cpu_user_ms),
                cpu_sys: Duration::from_millis(r.cpu_sys_ms),
                peak_memory_bytes: r.peak_memory_bytes,
                source: r.usage_source,
            },
            backend: r.backend,
            fallback_reason: r.fallback_reason,
            enforced: r.enforced,
            denied_syscalls: r.denied_syscalls,
            vm: r.vm,
            capture: r.capture,
        })
    }
}

impl Outcome {
    /// Reads back a verdict written by [`Outcome::report_json`] (the guest agent's verdict line, a CLI
    /// report); `None` when it is not one. Captured output is not part of a report.
    pub fn from_report_json(v: &serde_json::Value) -> Option<Outcome> {
        let report: Report = serde_json::from_value(v.clone()).ok()?;
        Outcome::try_from(report).ok()
    }

    /// The verdict as the JSON object of the CLI's `--report` contract ([`Report`], `docs/verdict.md`).
    pub fn report_json(&self) -> serde_json::Value {
        serde_json::to_value(Report::from(self)).unwrap_or_default()
    }
}
