//! The run specification: what the host asks the guest agent to run, as JSON.
//!
//! ```json
//! {
//!   "program": "/bin/sh",
//!   "args": ["-c", "echo hi > /out/hi"],
//!   "env": {"LANG": "C.UTF-8"},
//!   "cwd": "/",
//!   "policy": {"hostname": "judge", "mount": [{"type": "bind", "src": "/mnt/out", "dst": "/out"}]},
//!   "shares": [
//!     {"tag": "usr", "guest_path": "/usr", "fs": "9p", "readonly": true},
//!     {"tag": "out", "guest_path": "/mnt/out", "fs": "virtiofs", "readonly": false}
//!   ],
//!   "links": [{"path": "/bin", "target": "usr/bin"}]
//! }
//! ```
//! Only `program` is required. `policy` is the same [`Policy`] as on the host (its JSON form mirrors the TOML
//! form); its paths are guest paths, so a share mounted at `/mnt/out` is bound into the sandbox from there.
//! Unknown fields are refused, so a host never believes a newer field was applied by an older agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// What to run in the guest, and the host directories it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The program, looked up in the sandbox's `PATH` unless it contains a `/`.
    pub program: String,
    /// Its `argv[0]` when it is not `program`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg0: Option<String>,
    /// Its arguments (without the program name).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables added to the sandbox's (which holds only `PATH` otherwise).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (absolute); `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// The sandbox policy, applied inside the guest by the namespace backend.
    #[serde(default)]
    pub policy: Policy,
    /// Host directories shared with the guest, mounted by the agent before the sandbox is built.
    #[serde(default)]
    pub shares: Vec<Share>,
    /// Symbolic links the agent creates in the guest root after mounting the shares, e.g. the merged-`/usr`
    /// links when the host's `/usr` is shared ([`Link::merged_usr`]).
    #[serde(default)]
    pub links: Vec<Link>,
    /// A served run (a warm VM): the program's streams travel as frames over the ports
    /// ([`frames`](super::frames)), and after the verdict the agent waits for the next specification instead
    /// of ending the VM. Shares already mounted by an earlier run are kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub serve: bool,
    /// A session ([`session`](super::session)): the agent starts the sandbox without a program (`program` is
    /// ignored), with `env` and `cwd` as its commands' defaults, and runs commands in it as the host asks until
    /// it is stopped or the host closes the control port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
    /// The guest's `eth0` for `network = "user"`: the agent configures it before the sandbox is built (the
    /// VM's virtio-net device, whose frames go to passt on the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<GuestNet>,
    /// A one-shot run's end mark (hex, from the host's random source): once the sandbox is gone the agent
    /// writes [`end_mark_bytes`](super::end_mark_bytes) on the stdout and stderr ports and waits for the
    /// host's [`DRAINED_LINE`](super::DRAINED_LINE) before it ends the VM. A virtio port's writes complete
    /// when they are queued, not when the host took them, so without it the output still queued when the
    /// program ended (the host reading slowly) was lost with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_mark: Option<String>,
}

/// The address of the guest's `eth0`, its prefix and its default gateway (IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNet {
    /// The interface's address.
    pub address: std::net::Ipv4Addr,
    /// Its prefix length (0 to 32).
    pub prefix: u8,
    /// The default route's gateway, on the link.
    pub gateway: std::net::Ipv4Addr,
}

/// A host directory shared with the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The device's mount tag (QEMU `mount_tag=`, virtio-fs `tag=`).
    pub tag: String,
    /// Where the agent mounts it in the guest (absolute; created when missing).
    pub guest_path: PathBuf,
    /// The transport.
    #[serde(default)]
    pub fs: ShareFs,
    /// Mount read-only in the guest (the host side should refuse writes as well).
    #[serde(default)]
    pub readonly: bool,
}

/// How a share reaches the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareFs {
    /// 9P2000.L over virtio (`virtio-9p-device`): QEMU's engine.
    #[default]
    #[serde(rename = "9p")]
    NineP,
    /// virtio-fs (FUSE over virtio): our own VMM's engine.
    #[serde(rename = "virtiofs")]
    Virtiofs,
}

impl ShareFs {
    /// The filesystem type given to mount(2).
    pub fn fstype(self) -> &'static str {
        match self {
            ShareFs::NineP => "9p",
            ShareFs::Virtiofs => "virtiofs",
        }
    }
}

/// A symbolic link in the guest root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The link's absolute path.
    pub path: PathBuf,
    /// What it points to (stored as given).
    pub target: PathBuf,
}

impl Link {
    /// The links of a merged-`/usr` system (`/bin` → `usr/bin`, `/sbin`, `/lib`, `/lib64`), for a guest whose
    /// `/usr` is the host's.
    pub fn merged_usr() -> Vec<Link> {
        ["bin", "sbin", "lib", "lib64"]
            .into_iter()
            .map(|d| Link {
                path: Path::new("/").join(d),
                target: Path::new("usr").join(d),
            })
            .collect()
    }
}

impl RunSpec {
    /// A specification that runs `program` with the default policy, no shares and no links.
    pub fn new(program: impl Into<String>) -> RunSpec {
        RunSpec {
            program: program.into(),
            arg0: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            policy: Policy::default(),
            shares: Vec::new(),
            links: Vec::new(),
            serve: false,
            session: false,
            net: None,
            end_mark: None,
        }
    }

    /// Parses the JSON form.
    pub fn from_json(text: &[u8]) -> Result<RunSpec, String> {
        serde_json::from_slice(text).map_err(|e| e.to_string())
    }

    /// The JSON form on one line (as sent over the control port).
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a RunSpec always serialises");
        s.push('\n');
        s
    }

    /// Checks what the agent needs before it mounts anything: absolute, normal guest paths without
    /// duplicates, tags usable as mount sources, a program name, and a valid policy.
    pub fn validate(&self) -> Result<(), String> {
        if (self.program.is_empty() && !self.session) || self.program.contains('\0') {
            return Err("program is empty or contains a NUL byte".into());
        }
        let mut seen = BTreeSet::new();
        for s in &self.shares {
            if s.tag.is_empty() || s.tag.len() > 36 || s.tag.contains(['\0', ',', ' ']) {
                return Err(format!(
                    "share tag {:?} is invalid: use 1 to 36 characters without commas or spaces",
                    s.tag
                ));
            }
            check_guest_path(&s.guest_path, "share guest_path")?;
            if !seen.insert(s.guest_path.clone()) {
                return Err(format!("two shares are mounted at {:?}", s.guest_path));
            }
        }
        for l in &self.links {
            check_guest_path(&l.path, "link path")?;
            if l.target.as_os_str().is_empty() {
                return Err(format!("link {:?} has an empty target", l.path));
            }
            if !seen.insert(l.path.clone()) {
                return Err(format!(
                    "{:?} is both a share and a link, or two links",
                    l.path
                ));
            }
        }
        if let Some(cwd) = &self.cwd
            && !cwd.is_absolute()
        {
            return Err(format!("cwd {cwd:?} is not absolute"));
        }
        if let Some(n) = &self.net
            && (n.prefix == 0 || n.prefix > 32)
        {
            return Err(format!("net prefix {} is not 1 to 32", n.prefix));
        }
        if let Some(m) = &self.end_mark
            && (!(16..=128).contains(&m.len()) || !m.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("end_mark {m:?} is not 16 to 128 hex digits"));
        }
        self.policy.validate().map_err(|e| e.to_string())
    }
}

/// An absolute path of normal components, not `/` itself.
fn check_guest_path(p: &Path, what: &str) -> Result<(), String> {
    let mut comps = p.components();
    let ok = comps.next() == Some(Component::RootDir)
        && comps.clone().next().is_some()
        && comps.all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {p:?} must be an absolute path without `.` or `..`, other than `/`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_takes_defaults() {
        let s = RunSpec::from_json(br#"{"program": "/bin/true"}"#).unwrap();
        assert_eq!(s, RunSpec::new("/bin/true"));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn full_json_round_trips() {
        let text = br#"{
            "program": "/bin/sh",
            "args": ["-c", "echo hi"],
            "env": {"LANG": "C.UTF-8"},
            "cwd": "/tmp",
            "policy": {"hostname": "judge", "timeout_secs": 2.5,
                       "mount": [{"type": "bind", "src": "/mnt/out", "dst": "/out"}]},
            "shares": [{"tag": "usr", "guest_path": "/usr", "fs": "9p", "readonly": true},
                       {"tag": "out", "guest_path": "/mnt/out", "fs": "virtiofs"}],
            "links": [{"path": "/bin", "target": "usr/bin"}]
        }"#;
        let s = RunSpec::from_json(text).unwrap();
        assert_eq!(s.policy.hostname, "judge");
        assert_eq!(s.shares[1].fs, ShareFs::Virtiofs);
        assert!(!s.shares[1].readonly);
        assert_eq!(s.shares[0].fs.fstype(), "9p");
        assert!(s.validate().is_ok());
        let line = s.to_json_line();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(RunSpec::from_json(line.as_bytes()).unwrap(), s);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = RunSpec::from_json(br#"{"program": "x", "sharez": []}"#).unwrap_err();
        assert!(err.contains("sharez"), "{err}");
        assert!(
            RunSpec::from_json(br#"{"args": []}"#).is_err(),
            "program is required"
        );
        assert!(
            RunSpec::from_json(
                br#"{"program": "x", "shares": [{"tag": "a", "guest_path": "/a", "fs": "nfs"}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let share = |tag: &str, p: &str| Share {
            tag: tag.into(),
            guest_path: p.into(),
            fs: ShareFs::NineP,
            readonly: true,
        };
        let with = |shares: Vec<Share>| RunSpec {
            shares,
            ..RunSpec::new("x")
        };
        assert!(with(vec![share("a", "/a")]).validate().is_ok());
        for p in ["a", "/", "/a/../b", "../a"] {
            let err = with(vec![share("a", p)]).validate().unwrap_err();
            assert!(err.contains("guest_path"), "{p}: {err}");
        }
        assert!(with(vec![share("", "/a")]).validate().is_err());
        assert!(with(vec![share("a,b", "/a")]).validate().is_err());
        let err = with(vec![share("a", "/a"), share("b", "/a")])
            .validate()
            .unwrap_err();
        assert!(err.contains("two shares"), "{err}");
        let marked = |m: &str| RunSpec {
            end_mark: Some(m.into()),
            ..RunSpec::new("x")
        };
        assert!(marked("0123456789abcdef").validate().is_ok());
        for m in ["0123456789abcde", "0123456789abcdeg", "0123456789abcdef\n"] {
            let err = marked(m).validate().unwrap_err();
            assert!(err.contains("end_mark"), "{m:?}: {err}");
        }
        let mut s = RunSpec::new("x");
        s.links = Link::merged_usr();
        assert!(s.validate().is_ok());
        s.links.push(Link {
            path: "/bin".into(),
            target: "x".into(),
        });
        assert!(s.validate().is_err());
        assert!(RunSpec::new("").validate().is_err());
        let mut s = RunSpec::new("x");
        s.cwd = Some("rel".into());
        assert!(s.validate().is_err());
        let mut s = RunSpec::new("x");
        s.policy.hostname = "bad name".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn merged_usr_links() {
        let l = Link::merged_usr();
        assert_eq!(l[0].path, Path::new("/bin"));
        assert_eq!(l[0].target, Path::new("usr/bin"));
        assert_eq!(l.len(), 4);
    }
}
