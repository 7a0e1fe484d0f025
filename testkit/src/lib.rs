//! Helpers shared by the tests of the workspace (`tests/`, `sandbox-examples/tests/`): a [`TempDir`] removed
//! on drop, an output [`Capture`], the KVM checks ([`kvm_usable`]), the binaries under test ([`binary`]) and
//! the host's processes ([`processes_with`]).
//! Helpers that need the `sandkasten` crate itself stay in `tests/common/`: this crate does not depend on it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// A fresh directory under the system temp dir, `sandbox-test-{tag}-{pid}-{n}`, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A directory writable by every uid (mode 0777), so that the sandbox user can write into it whether the
    /// tests run as root (which maps the sandbox to nobody) or unprivileged.
    pub fn new(tag: &str) -> TempDir {
        TempDir::with_mode(tag, 0o777)
    }

    /// A directory with permissions `mode` (e.g. 0755: written by this user only).
    pub fn with_mode(tag: &str, mode: u32) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sandbox-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier process with the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// The path as text (temp dirs have UTF-8 names), for command-line arguments.
    pub fn to_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Writes `contents` to `name` in this directory, readable by every uid (mode 0644); its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.path).is_err() {
            // A directory its owner may not read stops remove_dir_all for a caller who is not root (overlayfs
            // makes its `work/work` mode 000 in a kept writable layer): each directory gets u+rwx back.
            open_up(&self.path);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Gives `dir` and every directory below it (not through symbolic links) mode 0700.
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&e.path());
        }
    }
}

/// Everything written to it, kept for the assertions; clones share the buffer (one clone goes to the code
/// under test as its output, the test reads the other).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// The bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// The bytes written so far, as text.
    pub fn text(&self) -> String {
        text(&self.0.lock().unwrap())
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Host pids of processes whose command line contains `marker` (this process excluded).
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(pid);
            }
        }
    }
    found
}

/// Every live process with its parent's pid.
pub fn pids_and_parents() -> std::collections::BTreeMap<u32, u32> {
    let mut map = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The name in parentheses may hold anything: the fields after its last ')' are plain.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            map.insert(pid, ppid);
        }
    }
    map
}

/// Waits up to two seconds for no process to carry `marker` (the kernel tears a pid namespace down
/// asynchronously only when its init is not reaped; ours is reaped before the verdict returns, so this is
/// normally immediate).
pub fn assert_no_processes_with(marker: &str) {
    let start = std::time::Instant::now();
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(2) {
            panic!("processes left behind with {marker:?}: {left:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Output as text (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The binary under test: the path in the environment variable `var` when CI staged the binary elsewhere (the
/// unprivileged runs), else `built`, cargo's `env!("CARGO_BIN_EXE_<name>")`.
pub fn binary(var: &str, built: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(built), PathBuf::from)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `/dev/kvm` opened for reading and writing by this user, or why not (a missing device is an error too).
pub fn kvm_open() -> std::io::Result<File> {
    File::options().read(true).write(true).open("/dev/kvm")
}

/// Whether this user can open `/dev/kvm`, and why not. A missing `/dev/kvm` fails the test: tests that need
/// KVM never skip for that.
pub fn kvm_access() -> std::io::Result<()> {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this test needs KVM (it fails, it does not skip)"
    );
    kvm_open().map(drop)
}

/// Whether this user can open `/dev/kvm` (root here; uid 65534 cannot: a KVM test then says SKIPPED with the
/// reason and passes, as in the unprivileged CI pass). A missing `/dev/kvm` fails ([`kvm_access`]).
pub fn kvm_usable() -> bool {
    match kvm_access() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPED: this user cannot open /dev/kvm ({e})");
            false
        }
    }
}

/// Whether a long battery on our own VMM (the builtin engine) runs now: always on hardware KVM; under
/// software KVM (PVM, `/sys/module/kvm_pvm`), where each boot takes minutes, only in the `--full` mode of
/// `scripts/test.sh` (`SANDBOX_TEST_FULL=1`), so that CI keeps one batched builtin pass (the conformance
/// suite). Says SKIPPED with the reason otherwise.
pub fn builtin_battery(what: &str) -> bool {
    if std::env::var_os("SANDBOX_TEST_FULL").is_some() || !Path::new("/sys/module/kvm_pvm").exists()
    {
        return true;
    }
    eprintln!(
        "SKIPPED: {what} boots our VMM under software KVM (PVM), minutes per boot; it runs in \
         scripts/test.sh --full (SANDBOX_TEST_FULL=1) and on hardware KVM"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_unique_has_its_mode_and_is_removed_on_drop() {
        let (a, b) = (TempDir::new("kit"), TempDir::with_mode("kit", 0o755));
        assert_ne!(a.path(), b.path());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(a.path()), mode(b.path())), (0o777, 0o755));
        let name = a.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with(&format!("sandbox-test-kit-{}-", std::process::id())),
            "{name}"
        );
        let file = a.write("f", "x");
        assert_eq!(
            (mode(&file), std::fs::read_to_string(&file).unwrap()),
            (0o644, "x".into())
        );
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn a_capture_keeps_what_its_clones_write() {
        let c = Capture::default();
        let mut w = c.clone();
        write!(w, "a").unwrap();
        w.write_all(b"b\xff").unwrap();
        assert_eq!(c.bytes(), b"ab\xff");
        assert_eq!(c.text(), "ab\u{fffd}");
    }

    #[test]
    fn a_staged_binary_wins_over_cargo_s() {
        let var = "SANDKASTEN_TESTKIT_UNSET_FOR_THIS_TEST";
        assert_eq!(binary(var, "/built/x"), PathBuf::from("/built/x"));
        assert_eq!(
            binary("PATH", "/built/x"),
            PathBuf::from(std::env::var_os("PATH").unwrap())
        );
    }
}
