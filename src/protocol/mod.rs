//! The guest protocol: what the host and the guest agent say to each other, imported by both sides (the VM
//! host side in `vm/`, the agent in `guest/`) and by nothing else.
//!
//! - [`RunSpec`]: what to run, as JSON on the control port (or in the initramfs at [`SPEC_PATH`]);
//! - the control-port lines: the agent's [`READY_PREFIX`] line, the host's [`PING_LINE`] (with a random seed
//!   for a restored guest), the agent's [`VERDICT_PREFIX`] line ([`verdict_json`], read back by
//!   [`find_verdict`]), and the host's [`DRAINED_LINE`] after a one-shot run's output left the VM;
//! - [`ports`]: the named virtio-serial ports and their announcement on the kernel command line;
//! - [`frames`]: how a warm VM's ports carry the streams of many runs;
//! - [`session`]: a session in a VM (commands run in one live sandbox of the guest, their streams multiplexed).

pub mod frames;
pub mod ports;
pub mod session;
mod spec;

pub use ports::{CONTROL_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT, ports_param};
pub use spec::{GuestNet, Link, RunSpec, Share, ShareFs};

use crate::outcome::Outcome;

/// A line the host may send instead of a specification: the agent answers with a new READY line (how a
/// host checks that a VM restored from a snapshot, whose READY line was sent before the snapshot, runs).
/// It may carry fresh random bytes in hex after a space, which the agent reseeds the kernel's random
/// generator with.
pub const PING_LINE: &str = "SANDBOX-PING";
/// Where the agent looks for the specification when there is no control port.
pub const SPEC_PATH: &str = "/sandbox/spec.json";
/// The prefix of the verdict line on the console and on the control port: `SANDBOX-VERDICT {json}`.
pub const VERDICT_PREFIX: &str = "SANDBOX-VERDICT ";
/// The prefix of the line the agent sends on the control port when it is ready for the specification:
/// `SANDBOX-READY {"version": ..., "uptime_ms": ...}`.
pub const READY_PREFIX: &str = "SANDBOX-READY ";

/// The line the host sends on a one-shot run's control port once it has relayed the stdout and stderr ports
/// up to the run's end mark ([`RunSpec::end_mark`]): every byte the program wrote has left the VM, and the
/// agent may end it.
pub const DRAINED_LINE: &str = "SANDBOX-DRAINED";

/// What the agent writes on an output port after a run with an end mark: the last bytes of that port, which
/// the host does not pass on.
pub fn end_mark_bytes(mark: &str) -> Vec<u8> {
    format!("\0SANDBOX-END {mark}\0").into_bytes()
}

/// Facts about the agent's own run, sent with the verdict.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentInfo {
    /// The agent's version.
    pub version: &'static str,
    /// Guest uptime when the agent started (the boot time to the agent), in milliseconds.
    pub uptime_start_ms: Option<u64>,
    /// Guest uptime when the verdict was made, in milliseconds.
    pub uptime_end_ms: Option<u64>,
    /// Where the specification came from: `control_port`, `initramfs` or `file`.
    pub spec_source: Option<&'static str>,
    /// What the guest lacks without failing the run (e.g. a cgroup controller).
    pub warnings: Vec<String>,
}

/// The verdict JSON: [`Outcome::report_json`] plus `exit_status` (the exit code a shell would show: the
/// program's own, 128+N for a signal, 124 timeout, 125 sandbox or agent failure, 126 not executable, 127 not
/// found) and `agent`.
pub fn verdict_json(outcome: &Outcome, agent: &AgentInfo) -> serde_json::Value {
    let mut v = outcome.report_json();
    v["exit_status"] = outcome.status.exit_code().into();
    v["agent"] = serde_json::to_value(agent).unwrap_or_default();
    v
}

/// Finds the verdict in a console log or control-port transcript (the last verdict line wins).
pub fn find_verdict(text: &str) -> Option<serde_json::Value> {
    text.lines()
        .rev()
        .filter_map(|l| {
            l.find(VERDICT_PREFIX)
                .map(|i| &l[i + VERDICT_PREFIX.len()..])
        })
        .find_map(|json| serde_json::from_str(json.trim()).ok())
}

/// The most bytes a ping carries.
pub const MAX_SEED: usize = 64;

/// The bytes of a lowercase or uppercase hex string of at most [`MAX_SEED`] bytes.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() || !text.len().is_multiple_of(2) || text.len() > 2 * MAX_SEED {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_bad_hex_is_refused() {
        let bytes: Vec<u8> = (0..=63).collect();
        assert_eq!(parse_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert_eq!(parse_hex("00Ff").unwrap(), vec![0, 255]);
        for bad in ["", "0", "zz", "0g", &"00".repeat(MAX_SEED + 1), "é0"] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
    }
}
