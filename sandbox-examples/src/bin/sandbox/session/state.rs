//! Where the session commands keep their sessions: one private directory per user, in it one directory per
//! session named by its id (`session.json`, `ctl.sock`, `status`, `log`) and `names/NAME`, a symbolic link
//! to the id of the session that holds the name.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sandkasten::Detached;
use serde::{Deserialize, Serialize};

/// What `sandbox create` keeps of a session: `session.json` in its directory.
#[derive(Serialize, Deserialize)]
pub struct Record {
    /// 12 hex digits.
    pub id: String,
    pub name: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// The session's own program (its argv, as far as it is known: an image's command is read from the
    /// store); `None`: an idle session, which runs only what `exec` asks.
    pub program: Option<Vec<String>>,
    /// `sandbox start` started the program.
    pub started: bool,
    /// What the library needs to reach the session again and to remove it.
    pub session: Detached,
}

/// The directory of every session of this user (or `--state-dir`).
pub struct State {
    root: PathBuf,
}

impl State {
    /// `dir`, or the default: `$XDG_RUNTIME_DIR/sandbox/sessions`, else `/run/sandbox/sessions` for root,
    /// else `/tmp/sandbox-$UID/sessions`. Created mode 0700; refused unless it is this user's alone.
    pub fn open(dir: Option<&Path>) -> Result<State, String> {
        let root = match dir {
            Some(dir) => {
                let dir =
                    std::path::absolute(dir).map_err(|e| format!("--state-dir {dir:?}: {e}"))?;
                private_dir(&dir, true)?;
                dir
            }
            None => {
                let base = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
                    Some(run) => PathBuf::from(run).join("sandbox"),
                    None if euid() == 0 => PathBuf::from("/run/sandbox"),
                    None => PathBuf::from(format!("/tmp/sandbox-{}", euid())),
                };
                // The base is checked too: in /tmp another user could have made it first.
                private_dir(&base, true)?;
                private_dir(&base.join("sessions"), false)?;
                base.join("sessions")
            }
        };
        let names = root.join("names");
        match std::fs::DirBuilder::new().mode(0o700).create(&names) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                return Err(format!("cannot create {names:?}: {e}"));
            }
            _ => {}
        }
        Ok(State { root })
    }

    /// The directory of session `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// A new session's directory (mode 0700) under a fresh random id.
    pub fn new_session(&self) -> Result<String, String> {
        for _ in 0..16 {
            let id = random_id()?;
            match std::fs::DirBuilder::new().mode(0o700).create(self.dir(&id)) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create a session directory in {:?}: {e}",
                        self.root
                    ));
                }
            }
        }
        Err(format!(
            "no free session id in {:?} after 16 tries",
            self.root
        ))
    }

    /// Gives `name` to session `id`, or says which session has it. One claim at a time (a lock on
    /// `names/.lock`), so that a link left by a `create` that died can be taken over safely.
    pub fn claim_name(&self, name: &str, id: &str) -> Result<(), String> {
        let link = self.root.join("names").join(name);
        let _lock = self.lock_names()?;
        loop {
            match std::os::unix::fs::symlink(id, &link) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot claim the name {name:?} ({link:?}): {e}")),
            }
            let holder =
                std::fs::read_link(&link).map_err(|e| format!("cannot read {link:?}: {e}"))?;
            let holder = holder.to_string_lossy();
            // A session's directory is made before its name is claimed and removed after its name was
            // released: a link to a missing directory is a leftover.
            if self.dir(&holder).exists() {
                return Err(format!(
                    "the name {name:?} is in use by session {holder} (`sandbox rm {name}` frees it)"
                ));
            }
            std::fs::remove_file(&link).map_err(|e| format!("cannot remove {link:?}: {e}"))?;
        }
    }

    /// Frees `name` if session `id` holds it.
    pub fn release_name(&self, name: &str, id: &str) -> Result<(), String> {
        let link = self.root.join("names").join(name);
        let _lock = self.lock_names()?;
        if std::fs::read_link(&link).is_ok_and(|h| h == Path::new(id)) {
            std::fs::remove_file(&link).map_err(|e| format!("cannot remove {link:?}: {e}"))?;
        }
        Ok(())
    }

    fn lock_names(&self) -> Result<std::fs::File, String> {
        let path = self.root.join("names/.lock");
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("cannot open {path:?}: {e}"))?;
        loop {
            // SAFETY: flock on a descriptor this function owns; the lock goes with the file.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(f);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(format!("cannot lock {path:?}: {e}"));
            }
        }
    }

    /// The id of the session `arg` names: a name, a full id, or a unique prefix of one.
    pub fn find(&self, arg: &str) -> Result<String, String> {
        let unknown = || {
            format!(
                "no session is named {arg:?} or has an id starting with it (`sandbox ps -a` lists them)"
            )
        };
        if arg.is_empty() {
            return Err(unknown());
        }
        if valid_name(arg)
            && let Ok(id) = std::fs::read_link(self.root.join("names").join(arg))
            && let Some(id) = id.to_str()
            && self.dir(id).join("session.json").exists()
        {
            return Ok(id.to_string());
        }
        let ids = self.ids()?;
        if ids.iter().any(|id| id == arg) {
            return Ok(arg.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(arg)).collect();
        match matches[..] {
            [] => Err(unknown()),
            [one] => Ok(one.clone()),
            _ => Err(format!(
                "{arg:?} is the start of several session ids ({}): give more of the id",
                matches
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The ids of the sessions made to the end (a directory whose `session.json` is written).
    fn ids(&self) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| format!("cannot list {:?}: {e}", self.root))?;
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_id(n) && self.dir(n).join("session.json").exists())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn load(&self, id: &str) -> Result<Record, String> {
        let path = self.dir(id).join("session.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path:?} is damaged: {e}"))
    }

    /// Writes `record` as its session's `session.json` (a new file renamed over the old one).
    pub fn save(&self, record: &Record) -> Result<(), String> {
        let dir = self.dir(&record.id);
        let tmp = dir.join("session.json.tmp");
        let text = serde_json::to_string_pretty(record).expect("a record serializes");
        std::fs::File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, dir.join("session.json")))
            .map_err(|e| format!("cannot write {:?}: {e}", dir.join("session.json")))
    }

    /// Every session's record, newest first.
    pub fn list(&self) -> Result<Vec<Record>, String> {
        let mut all = Vec::new();
        for id in self.ids()? {
            match self.load(&id) {
                Ok(r) => all.push(r),
                // Removed meanwhile.
                Err(_) if !self.dir(&id).exists() => {}
                Err(e) => return Err(e),
            }
        }
        all.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Removes session `id`'s directory and everything left in it.
    pub fn remove_dir(&self, id: &str) -> Result<(), String> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(format!("cannot remove {dir:?}: {e}")),
            _ => Ok(()),
        }
    }
}

/// Makes `dir` (mode 0700, with its parents when `parents`) unless it exists, and refuses it unless it is a
/// directory of this user's that its group and others cannot enter.
fn private_dir(dir: &Path, parents: bool) -> Result<(), String> {
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(parents)
        .create(dir)
    {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            return Err(format!("cannot create the state directory {dir:?}: {e}"));
        }
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let fix = "it must be this user's alone: chmod 700 it, or choose another with --state-dir";
    if !meta.is_dir() {
        return Err(format!(
            "the state directory {dir:?} is not a directory (a symbolic link?); {fix}"
        ));
    }
    if meta.uid() != euid() {
        return Err(format!(
            "the state directory {dir:?} belongs to uid {}, not to this user (uid {}); {fix}",
            meta.uid(),
            euid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the state directory {dir:?} is open to its group or others (mode {:o}); {fix}",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// 12 random hex digits.
fn random_id() -> Result<String, String> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A session name: a letter or digit, then letters, digits, `_`, `.` or `-` (docker's rule), at most 64.
pub fn valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::{State, is_id, valid_name};

    /// A state directory with fabricated sessions: the lookup reads only directory names, name links and
    /// whether `session.json` exists.
    fn state(ids: &[&str], names: &[(&str, &str)]) -> (State, PathGuard) {
        let dir = std::env::temp_dir().join(format!(
            "sandbox-state-test-{}-{}",
            std::process::id(),
            ids.join("-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let state = State::open(Some(&dir)).unwrap();
        for id in ids {
            std::fs::create_dir(state.dir(id)).unwrap();
            std::fs::write(state.dir(id).join("session.json"), "{}").unwrap();
        }
        for (name, id) in names {
            state.claim_name(name, id).unwrap();
        }
        (state, PathGuard(dir))
    }

    struct PathGuard(std::path::PathBuf);

    impl Drop for PathGuard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn names_ids_and_prefixes() {
        let (s, _g) = state(
            &["abc111111111", "abc222222222", "def333333333"],
            &[("web", "def333333333"), ("abc", "abc111111111")],
        );
        assert_eq!(s.find("web").unwrap(), "def333333333");
        assert_eq!(s.find("abc222222222").unwrap(), "abc222222222");
        assert_eq!(s.find("abc2").unwrap(), "abc222222222");
        assert_eq!(s.find("d").unwrap(), "def333333333");
        // A name wins over an id prefix.
        assert_eq!(s.find("abc").unwrap(), "abc111111111");
        let e = s.find("ab").unwrap_err();
        assert!(e.contains("several") && e.contains("abc111111111"), "{e}");
        for unknown in ["", "x", "abc3", "names", "abc1111111110"] {
            let e = s.find(unknown).unwrap_err();
            assert!(e.contains("no session"), "{unknown}: {e}");
        }
        // A taken name is refused; one whose session's directory is gone is taken over.
        let e = s.claim_name("web", "abc222222222").unwrap_err();
        assert!(e.contains("in use by session def333333333"), "{e}");
        std::os::unix::fs::symlink("0123456789ab", s.root.join("names/stale")).unwrap();
        s.claim_name("stale", "abc222222222").unwrap();
        assert_eq!(s.find("stale").unwrap(), "abc222222222");
        s.release_name("stale", "def333333333").unwrap();
        assert_eq!(s.find("stale").unwrap(), "abc222222222", "not its holder");
        s.release_name("stale", "abc222222222").unwrap();
        assert!(s.find("stale").is_err());
    }

    #[test]
    fn a_state_directory_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let (s, _g) = state(&["aaa000000000"], &[]);
        std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = State::open(Some(&s.root)).err().unwrap();
        assert!(e.contains("open to its group or others (mode 755)"), "{e}");
    }

    #[test]
    fn names_and_ids() {
        for good in ["web", "a", "Web-1.2_x", "0abc"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-x", ".lock", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(is_id("0123456789ab"));
        assert!(!is_id("0123456789AB") && !is_id("names") && !is_id("0123456789abc"));
    }
}
