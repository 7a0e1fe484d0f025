//! Named virtio-serial ports and the agent's [`Channels`] to the host.
//!
//! A VMM names each port (QEMU: `-device virtserialport,name=...`); the guest kernel shows the name in
//! `/sys/class/virtio-ports/vportNpM/name` and the device as `/dev/vportNpM`. There is no udev in the guest,
//! so the agent adds the `/dev/virtio-ports/<name>` links itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::GuestError;
use crate::protocol::ports::{CONTROL_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT, announced};

const SYS_PORTS: &str = "/sys/class/virtio-ports";
const BY_NAME: &str = "/dev/virtio-ports";
/// How long the agent waits for the ports of a VMM that did not announce them to be named by the host.
const NAME_WAIT: Duration = Duration::from_secs(2);
/// How long the agent waits for announced ports. Ports are added and named by messages the host sends one
/// by one after the driver is up; a starved VM (a TCG guest on a loaded host: its clock runs on while it does
/// not) can take seconds for that, and a run whose stdout port is not there yet would lose its output.
const ANNOUNCED_WAIT: Duration = Duration::from_secs(60);

/// The named ports: name → device path. With announced names (`sandbox.ports=` on the kernel command line),
/// waits for all of them and fails naming the ones still missing after [`ANNOUNCED_WAIT`]; without,
/// takes what is there once the device looks settled.
pub(crate) fn discover() -> Result<BTreeMap<String, PathBuf>, GuestError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match announced(&cmdline) {
        Some(names) => discover_announced(&names, ANNOUNCED_WAIT),
        None => Ok(discover_settled()),
    }
}

fn discover_announced(
    names: &[String],
    limit: Duration,
) -> Result<BTreeMap<String, PathBuf>, GuestError> {
    let started = Instant::now();
    loop {
        let (named, _) = scan();
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !named.contains_key(*n))
            .cloned()
            .collect();
        if missing.is_empty() {
            if started.elapsed() >= NAME_WAIT {
                super::say(&format!(
                    "sandbox-init: the announced ports took {:.1} s to appear",
                    started.elapsed().as_secs_f64()
                ));
            }
            return Ok(named);
        }
        if started.elapsed() >= limit {
            return Err(GuestError::PortsMissing {
                missing,
                waited: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn discover_settled() -> BTreeMap<String, PathBuf> {
    let started = Instant::now();
    loop {
        let (named, unnamed) = scan();
        // Ports are added and named by control messages the host sends after the driver is up; a device
        // without any port yet, or a port without its name, may still be settling.
        let settling = unnamed > 0 || (named.is_empty() && serial_device_present());
        if !settling || started.elapsed() >= NAME_WAIT {
            return named;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Named ports, and how many ports have no name yet.
fn scan() -> (BTreeMap<String, PathBuf>, usize) {
    let mut named = BTreeMap::new();
    let mut unnamed = 0;
    let Ok(dir) = std::fs::read_dir(SYS_PORTS) else {
        return (named, 0);
    };
    for e in dir.flatten() {
        let dev = e.file_name();
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        let name = name.trim();
        if name.is_empty() {
            unnamed += 1;
        } else {
            named.insert(name.to_string(), Path::new("/dev").join(&dev));
        }
    }
    (named, unnamed)
}

/// Whether a virtio-serial (multiport console) device is bound to its driver.
fn serial_device_present() -> bool {
    std::fs::read_dir("/sys/bus/virtio/drivers/virtio_console")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        })
        .unwrap_or(false)
}

/// Adds `/dev/virtio-ports/<name>` links, as udev would.
pub(crate) fn link_by_name(ports: &BTreeMap<String, PathBuf>) {
    if ports.is_empty() || std::fs::create_dir_all(BY_NAME).is_err() {
        return;
    }
    for (name, dev) in ports {
        if name.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink(dev, Path::new(BY_NAME).join(name));
    }
}

/// The agent's connections to the host. Each is a named virtio-serial port when the VMM provides it;
/// otherwise the program's stdin is `/dev/null`, its stdout and stderr are the console (the agent's own),
/// the specification comes from the initramfs and the verdict goes to the console only.
#[derive(Debug, Default)]
pub struct Channels {
    /// The program's standard input.
    pub stdin: Option<File>,
    /// The program's standard output.
    pub stdout: Option<File>,
    /// The program's standard error.
    pub stderr: Option<File>,
    /// Run specification in, verdict out.
    pub control: Option<File>,
}

impl Channels {
    /// Opens the ports among `ports` that carry a known name.
    pub(crate) fn open(ports: &BTreeMap<String, PathBuf>) -> Result<Channels, GuestError> {
        let open = |name: &str, read: bool, write: bool| -> Result<Option<File>, GuestError> {
            let Some(path) = ports.get(name) else {
                return Ok(None);
            };
            std::fs::OpenOptions::new()
                .read(read)
                .write(write)
                .open(path)
                .map(Some)
                .map_err(|source| GuestError::Port {
                    name: name.into(),
                    path: path.clone(),
                    source,
                })
        };
        Ok(Channels {
            control: open(CONTROL_PORT, true, true)?,
            stdin: open(STDIN_PORT, true, false)?,
            stdout: open(STDOUT_PORT, false, true)?,
            stderr: open(STDERR_PORT, false, true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_announced_ports_are_named() {
        // No such port exists where the tests run (and /sys/class/virtio-ports is absent or foreign).
        let e = discover_announced(&["sandbox.test-no-such-port".into()], Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sandbox.test-no-such-port"), "{e}");
    }
}
