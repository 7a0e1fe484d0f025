//! The runtime's log: errors and notes on stderr and, with `--log`, in a file, as text or as runc's JSON lines
//! (`{"level":"error","msg":"...","time":"..."}`), which podman and containerd read back to show a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::state::Timestamp;

/// Where messages go.
#[derive(Debug)]
pub struct Log {
    file: Option<PathBuf>,
    json: bool,
}

impl Log {
    /// A log to stderr and, if given, to `file` (JSON lines when `json`).
    pub fn new(file: Option<PathBuf>, json: bool) -> Log {
        Log { file, json }
    }

    /// Writes one message at `level` (`error`, `warning`, `info`).
    pub fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.file else {
            return;
        };
        let line = if self.json {
            serde_json::json!({
                "level": level,
                "msg": msg,
                "time": Timestamp(SystemTime::now()).to_string(),
            })
            .to_string()
        } else {
            format!("{level}: {msg}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// A note on what is honoured differently (in the log file only: the caller's streams are the
    /// container's).
    pub fn note(&self, msg: &str) {
        self.write("warning", msg);
    }

    /// Reports a failure and gives runc's exit code for it.
    pub fn fail(&self, e: &dyn std::fmt::Display) -> ExitCode {
        let msg = e.to_string();
        eprintln!("sandbox-runtime: {msg}");
        self.write("error", &msg);
        ExitCode::from(1)
    }
}
