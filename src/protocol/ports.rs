//! The named virtio-serial ports between a VMM and the agent, and how a VMM announces them on the kernel
//! command line (the agent waits for every announced port before a run starts).

/// The port the run specification arrives on and the verdict leaves on.
pub const CONTROL_PORT: &str = "sandbox.control";
/// The port the program's standard input is read from (else `/dev/null`).
pub const STDIN_PORT: &str = "sandbox.stdin";
/// The port the program's standard output goes to (else the console).
pub const STDOUT_PORT: &str = "sandbox.stdout";
/// The port the program's standard error goes to (else the console).
pub const STDERR_PORT: &str = "sandbox.stderr";

/// The kernel parameter by which a VMM announces the names of the ports it provides (comma-separated):
/// the agent waits until each of them has appeared and been named.
pub const PORTS_PARAM: &str = "sandbox.ports";

/// `sandbox.ports=a,b,c` for a kernel command line: the port names a VMM provides.
pub fn ports_param<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    format!("{PORTS_PARAM}={}", names.join(","))
}

/// The port names announced on a kernel command line, if any.
pub fn announced(cmdline: &str) -> Option<Vec<String>> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        let v = w.strip_prefix(PORTS_PARAM)?.strip_prefix('=')?;
        Some(
            v.split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_ports_round_trip() {
        let p = ports_param([CONTROL_PORT, STDOUT_PORT, STDERR_PORT]);
        assert_eq!(
            p,
            "sandbox.ports=sandbox.control,sandbox.stdout,sandbox.stderr"
        );
        let line = format!("console=ttyS0 {p} sandbox-init");
        assert_eq!(
            announced(&line).unwrap(),
            [CONTROL_PORT, STDOUT_PORT, STDERR_PORT]
        );
        assert_eq!(announced("console=ttyS0 sandbox.portsx=a"), None);
        assert_eq!(announced("console=ttyS0"), None);
        assert_eq!(announced("sandbox.ports="), Some(vec![]));
    }
}
