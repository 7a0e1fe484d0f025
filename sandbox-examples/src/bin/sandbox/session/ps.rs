//! `sandbox ps`: the sessions as a table or as JSON, with their state (`created`, `running`, `exited (CODE)`,
//! `killed`, `timed out`), init pid, age and program.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use sandkasten::{DetachedState, Status};

use super::state::{Record, State};

/// A session's state as `ps` shows it (`exited (143)`), its name in JSON (`exited`) and its exit code.
pub struct Shown {
    pub text: String,
    name: &'static str,
    exit_code: Option<i32>,
}

impl Shown {
    fn of(r: &Record) -> Shown {
        let live = |name: &'static str| Shown {
            text: name.into(),
            name,
            exit_code: None,
        };
        match r.session.state() {
            DetachedState::Ended(how) => Shown::ended(&how),
            _ if r.program.is_some() && !r.started => live("created"),
            _ => live("running"),
        }
    }

    pub fn ended(how: &Status) -> Shown {
        let (text, name, exit_code) = match how {
            Status::Signaled(libc::SIGKILL) => ("killed".into(), "killed", None),
            Status::TimedOut(_) => ("timed out".into(), "timed_out", None),
            other => {
                let code = other.exit_code();
                (format!("exited ({code})"), "exited", Some(code))
            }
        };
        Shown {
            text,
            name,
            exit_code,
        }
    }

    fn live(&self) -> bool {
        matches!(self.name, "created" | "running")
    }
}

pub fn ps(state: &State, all: bool, json: bool) -> Result<ExitCode, String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rows: Vec<(Record, Shown)> = state
        .list()?
        .into_iter()
        .map(|r| {
            let s = Shown::of(&r);
            (r, s)
        })
        .filter(|(_, s)| all || s.live())
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, s)| {
                serde_json::json!({
                    "id": r.id,
                    "name": r.name,
                    "state": s.name,
                    "exit_code": s.exit_code,
                    "pid": r.session.pid,
                    "created": r.created,
                    "command": r.program,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&list).expect("serializes");
        let _ = writeln!(out, "{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let _ = writeln!(
        out,
        "{:<12}  {:<16}  {:<12}  {:>7}  {:<14}  COMMAND",
        "ID", "NAME", "STATE", "PID", "CREATED"
    );
    for (r, shown) in &rows {
        let _ = writeln!(
            out,
            "{:<12}  {:<16}  {:<12}  {:>7}  {:<14}  {}",
            r.id,
            r.name.as_deref().unwrap_or(""),
            shown.text,
            r.session.pid,
            age(now.saturating_sub(r.created)),
            r.program
                .as_deref()
                .map_or_else(|| "(idle)".to_string(), command_line)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `12 seconds ago`, `3 minutes ago`, ...
fn age(secs: u64) -> String {
    let (n, unit) = match secs {
        0..120 => (secs, "second"),
        120..7200 => (secs / 60, "minute"),
        7200..172_800 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// An argv as one line, arguments with spaces or quotes (or empty) quoted.
fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::{Shown, age, command_line};
    use sandkasten::Status;

    #[test]
    fn ages_states_and_command_lines() {
        assert_eq!(age(0), "0 seconds ago");
        assert_eq!(age(1), "1 second ago");
        assert_eq!(age(150), "2 minutes ago");
        assert_eq!(age(7300), "2 hours ago");
        assert_eq!(age(200_000), "2 days ago");
        assert_eq!(Shown::ended(&Status::Exited(3)).text, "exited (3)");
        let term = Shown::ended(&Status::Signaled(libc::SIGTERM));
        assert_eq!(
            (term.text.as_str(), term.exit_code),
            ("exited (143)", Some(143))
        );
        assert_eq!(
            Shown::ended(&Status::Signaled(libc::SIGKILL)).name,
            "killed"
        );
        let argv = ["sh", "-c", "echo hi", ""].map(String::from);
        assert_eq!(command_line(&argv), r#"sh -c "echo hi" """#);
    }
}
