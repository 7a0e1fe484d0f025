//! The uid/gid maps of the sandbox's user namespace, as the policy's [`IdMapping`] asks and the caller can have
//! them (see `IdMapping` for the cases, SECURITY.md for why root callers lease disjoint blocks).
//!
//! The program never keeps host uid 0: a process with host uid 0 could rewrite root-owned host files such as
//! sysctls even with every capability dropped.

mod subid;

use std::path::PathBuf;
use std::process::Command;

use crate::outcome::{IdExtent, SetupFailure, Stage};
use crate::policy::{IdMapping, Policy, RANGE_SIZE};

pub(crate) use subid::Lease;

/// Why the maps could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdMapError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write {path}: {source}; the reserved id range and its leases need a root caller"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing the id range: {0}")]
    Overlap(String),
    #[error(
        "all {slots} blocks of the id range reserved for sandboxes are in use: wait for runs to end, or give \
         the policy ids = \"single\""
    )]
    NoFreeSlot { slots: u32 },
    #[error(
        "{user:?} has no entry in {path}: add one (e.g. `usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 {user}`), or give the policy ids = \"single\""
    )]
    NoSubordinate { user: String, path: PathBuf },
    #[error(
        "ids = {{ subordinate = {user:?} }}: this caller (uid {uid}) may only map its own subordinate ranges \
         (newuidmap checks them); run as that user or as root"
    )]
    NotCaller { user: String, uid: u32 },
    #[error(
        "ids = {{ range = ... }} needs a root caller: an unprivileged caller gets its subordinate ranges with ids = \"auto\""
    )]
    RangeNeedsRoot,
    #[error(
        "{tool} is not installed (Debian package `uidmap`): it maps the caller's subordinate ids; install it, or \
         give the policy ids = \"single\""
    )]
    NoHelper { tool: &'static str },
    #[error("{tool} {args} failed ({status}): {stderr}")]
    Helper {
        tool: &'static str,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("writing {text:?} to {path} failed: {source}")]
    Map {
        path: String,
        text: String,
        source: std::io::Error,
    },
}

impl From<IdMapError> for SetupFailure {
    fn from(e: IdMapError) -> Self {
        let errno = match &e {
            IdMapError::Read { source, .. }
            | IdMapError::Write { source, .. }
            | IdMapError::Map { source, .. } => source.raw_os_error(),
            _ => None,
        };
        SetupFailure {
            stage: Stage::IdMap,
            errno,
            message: e.to_string(),
        }
    }
}

/// Who writes the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// This process, into `/proc/PID/{uid,gid}_map` (root callers, and an unprivileged caller's own id).
    Kernel,
    /// `newuidmap` and `newgidmap`, which check the caller's subordinate ranges.
    Helpers,
}

/// Where the guest agent's sandboxes map: the guest kernel is the VM's own, with no other users.
pub(crate) const GUEST_FIRST_ID: u32 = 100_000;

/// The maps to write for one sandbox.
#[derive(Debug)]
pub(crate) struct IdMaps {
    uid: Vec<IdExtent>,
    gid: Vec<IdExtent>,
    writer: Writer,
    /// `setgroups` stays allowed (the gid map is not only the caller's own gid).
    setgroups: bool,
    /// The block of the reserved range this run holds (root callers, `ids = "auto"`).
    pub lease: Option<Lease>,
    /// What the policy asked for but this caller cannot have (for the verdict's `not_enforced`).
    pub note: Option<String>,
    /// The inside uid and gid the program runs as.
    inside: (u32, u32),
}

/// Inside ids `0..n` (at most [`RANGE_SIZE`]), except `skip`, laid onto the host `ranges` in order.
fn lay_out(ranges: &[(u32, u32)], skip: Option<u32>) -> Vec<IdExtent> {
    let mut out: Vec<IdExtent> = Vec::new();
    let mut inside = 0u32;
    for &(first, count) in ranges {
        let mut outside = first;
        let mut left = count;
        while left > 0 && inside < RANGE_SIZE {
            if Some(inside) == skip {
                inside += 1;
                continue;
            }
            // Up to the skipped id, the end of this host range, or the end of the inside range.
            let stop = match skip {
                Some(s) if s > inside => s,
                _ => RANGE_SIZE,
            };
            let n = left.min(stop - inside);
            out.push(IdExtent {
                inside,
                outside,
                count: n,
            });
            inside += n;
            outside += n;
            left -= n;
        }
    }
    out
}

fn one(inside: u32, outside: u32) -> Vec<IdExtent> {
    vec![IdExtent {
        inside,
        outside,
        count: 1,
    }]
}

fn whole(first: u32, count: u32) -> Vec<IdExtent> {
    vec![IdExtent {
        inside: 0,
        outside: first,
        count,
    }]
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn uid_of(name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

fn installed(tool: &str) -> bool {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(tool).exists())
}

impl IdMaps {
    /// The maps for the current caller and policy (`guest`: inside our VM, where the agent is root of a
    /// kernel of its own).
    pub fn for_caller(policy: &Policy, guest: bool) -> Result<Self, IdMapError> {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        Self::resolve(policy, euid, egid, guest, &subid::Files::system())
    }

    fn resolve(
        policy: &Policy,
        euid: u32,
        egid: u32,
        guest: bool,
        files: &subid::Files,
    ) -> Result<Self, IdMapError> {
        let inside = (policy.uid, policy.gid);
        let maps = |uid, gid, writer, setgroups| IdMaps {
            uid,
            gid,
            writer,
            setgroups,
            lease: None,
            note: None,
            inside,
        };
        let root = euid == 0;
        if guest && policy.ids != IdMapping::Single {
            let all = whole(GUEST_FIRST_ID, RANGE_SIZE);
            return Ok(maps(all.clone(), all, Writer::Kernel, true));
        }
        match &policy.ids {
            IdMapping::Single if root => Ok(maps(
                one(policy.uid, policy.host_uid),
                one(policy.gid, policy.host_gid),
                Writer::Kernel,
                true,
            )),
            IdMapping::Single => Ok(maps(
                one(policy.uid, euid),
                one(policy.gid, egid),
                Writer::Kernel,
                false,
            )),
            IdMapping::Range { uid, gid, count } if root => {
                subid::check_free(files, "uid", *uid, *count, None)?;
                subid::check_free(files, "gid", *gid, *count, None)?;
                Ok(maps(
                    whole(*uid, *count),
                    whole(*gid, *count),
                    Writer::Kernel,
                    true,
                ))
            }
            IdMapping::Range { .. } => Err(IdMapError::RangeNeedsRoot),
            IdMapping::Auto if root => {
                let lease = subid::lease(files)?;
                tracing::debug!("the run holds block {} of the reserved ids", lease.slot);
                let mut m = maps(
                    whole(lease.uid, RANGE_SIZE),
                    whole(lease.gid, RANGE_SIZE),
                    Writer::Kernel,
                    true,
                );
                m.lease = Some(lease);
                Ok(m)
            }
            IdMapping::Subordinate(user) if root => {
                let (u, g) = Self::subordinate(files, user, uid_of(user))?;
                let (u, g) = (lay_out(&u, None), lay_out(&g, None));
                let covers = |m: &[IdExtent], id: u32| {
                    m.iter().any(|e| id >= e.inside && id - e.inside < e.count)
                };
                if !covers(&u, policy.uid) || !covers(&g, policy.gid) {
                    return Err(IdMapError::Overlap(format!(
                        "the subordinate ranges of {user:?} are too small to hold the sandbox user {}:{}",
                        policy.uid, policy.gid
                    )));
                }
                Ok(maps(u, g, Writer::Kernel, true))
            }
            IdMapping::Subordinate(user) => {
                let name = user_name(euid).unwrap_or_default();
                if *user != name && *user != euid.to_string() {
                    return Err(IdMapError::NotCaller {
                        user: user.clone(),
                        uid: euid,
                    });
                }
                Self::unprivileged(policy, euid, egid, files)?.ok_or_else(|| {
                    IdMapError::NoSubordinate {
                        user: user.clone(),
                        path: files.subuid.clone(),
                    }
                })
            }
            // An unprivileged caller, `auto`: its subordinate ranges when it has them, else its own ids.
            _ => match Self::unprivileged(policy, euid, egid, files) {
                Ok(Some(m)) => Ok(m),
                Ok(None) | Err(IdMapError::NoHelper { .. }) => {
                    let mut m = maps(
                        one(policy.uid, euid),
                        one(policy.gid, egid),
                        Writer::Kernel,
                        false,
                    );
                    let name = user_name(euid).unwrap_or_else(|| euid.to_string());
                    m.note = Some(format!(
                        "uid/gid range: one id only (the caller's own), so chown, setgroups and other users do \
                         not work inside; for 65536, give {name} subordinate ids (`usermod --add-subuids \
                         100000-165535 --add-subgids 100000-165535 {name}`) and install newuidmap (Debian \
                         package uidmap)"
                    ));
                    Ok(m)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// The subordinate `(first, count)` ranges of `user` for uids and for gids.
    #[allow(clippy::type_complexity)]
    fn subordinate(
        files: &subid::Files,
        user: &str,
        uid: Option<u32>,
    ) -> Result<(Vec<(u32, u32)>, Vec<(u32, u32)>), IdMapError> {
        let mut out = Vec::new();
        for path in [&files.subuid, &files.subgid] {
            let all = subid::ranges(path)?;
            let mine: Vec<(u32, u32)> = subid::owned_by(&all, user, uid)
                .into_iter()
                .map(|r| (r.first, r.count))
                .collect();
            if mine.is_empty() {
                return Err(IdMapError::NoSubordinate {
                    user: user.into(),
                    path: path.clone(),
                });
            }
            out.push(mine);
        }
        let g = out.pop().unwrap_or_default();
        let u = out.pop().unwrap_or_default();
        Ok((u, g))
    }

    /// An unprivileged caller's maps through `newuidmap`/`newgidmap`: its own uid and gid for the sandbox
    /// user, its subordinate ranges for the other inside ids. `None` when it has no subordinate ranges.
    fn unprivileged(
        policy: &Policy,
        euid: u32,
        egid: u32,
        files: &subid::Files,
    ) -> Result<Option<Self>, IdMapError> {
        let name = user_name(euid).unwrap_or_else(|| euid.to_string());
        let (u, g) = match Self::subordinate(files, &name, Some(euid)) {
            Ok(r) => r,
            Err(IdMapError::NoSubordinate { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        for tool in ["newuidmap", "newgidmap"] {
            if !installed(tool) {
                return Err(IdMapError::NoHelper { tool });
            }
        }
        let with_own = |own: u32, inside: u32, ranges: &[(u32, u32)]| {
            let mut m = lay_out(ranges, Some(inside));
            m.extend(one(inside, own));
            m.sort_by_key(|e| e.inside);
            m
        };
        Ok(Some(IdMaps {
            uid: with_own(euid, policy.uid, &u),
            gid: with_own(egid, policy.gid, &g),
            writer: Writer::Helpers,
            setgroups: true,
            lease: None,
            note: None,
            inside: (policy.uid, policy.gid),
        }))
    }

    /// For a guest's run on a root of VMM shares: inside id 0 maps to `owner` (the one id the shares show
    /// their files with), the rest of the range stays the guest's own, unless the maps are a single id.
    pub fn give_root_to(&mut self, owner: (u32, u32)) {
        let split = |m: &mut Vec<IdExtent>, id: u32| {
            if let [whole] = &m[..]
                && whole.inside == 0
                && whole.count > 1
                && !(whole.outside..whole.outside + whole.count).contains(&id)
            {
                let rest = IdExtent {
                    inside: 1,
                    outside: whole.outside + 1,
                    count: whole.count - 1,
                };
                *m = vec![
                    IdExtent {
                        inside: 0,
                        outside: id,
                        count: 1,
                    },
                    rest,
                ];
            }
        };
        split(&mut self.uid, owner.0);
        split(&mut self.gid, owner.1);
    }

    /// The host uid and gid the sandbox user and group map to.
    pub fn host_ids(&self) -> (u32, u32) {
        let outside = |m: &[IdExtent], id: u32| {
            m.iter()
                .find(|e| id >= e.inside && id - e.inside < e.count)
                .map_or(u32::MAX, |e| e.outside + (id - e.inside))
        };
        (
            outside(&self.uid, self.inside.0),
            outside(&self.gid, self.inside.1),
        )
    }

    /// The uid and gid maps, for the verdict.
    pub fn extents(&self) -> (Vec<IdExtent>, Vec<IdExtent>) {
        (self.uid.clone(), self.gid.clone())
    }

    /// Whether the sandbox may call `setgroups` to drop the caller's supplementary groups.
    pub fn may_drop_groups(&self) -> bool {
        self.setgroups
    }

    /// Writes the maps for the process `pid` (which is waiting in its new user namespace).
    pub fn write(&self, pid: libc::pid_t) -> Result<(), IdMapError> {
        match self.writer {
            Writer::Kernel => {
                let write = |file: &str, text: &str| {
                    let path = format!("/proc/{pid}/{file}");
                    std::fs::write(&path, text).map_err(|source| IdMapError::Map {
                        path,
                        text: text.into(),
                        source,
                    })
                };
                if !self.setgroups {
                    write("setgroups", "deny")?;
                }
                let text = |m: &[IdExtent]| {
                    m.iter()
                        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
                        .collect::<String>()
                };
                write("uid_map", &text(&self.uid))?;
                write("gid_map", &text(&self.gid))
            }
            Writer::Helpers => {
                for (tool, m) in [("newuidmap", &self.uid), ("newgidmap", &self.gid)] {
                    let mut args = vec![pid.to_string()];
                    for e in m {
                        args.extend([e.inside, e.outside, e.count].map(|x| x.to_string()));
                    }
                    let out = Command::new(tool)
                        .args(&args)
                        .stdin(std::process::Stdio::null())
                        .output()
                        .map_err(|_| IdMapError::NoHelper { tool })?;
                    if !out.status.success() {
                        return Err(IdMapError::Helper {
                            tool,
                            args: args.join(" "),
                            status: out.status,
                            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(inside: u32, outside: u32, count: u32) -> IdExtent {
        IdExtent {
            inside,
            outside,
            count,
        }
    }

    fn files(name: &str) -> (PathBuf, subid::Files) {
        let d =
            std::env::temp_dir().join(format!("sandkasten-idmap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = subid::Files {
            subuid: d.join("subuid"),
            subgid: d.join("subgid"),
            passwd: d.join("passwd"),
            group: d.join("group"),
            state: d.join("state"),
        };
        std::fs::write(
            &f.passwd,
            "root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&f.group, "root:x:0:\n").unwrap();
        (d, f)
    }

    #[test]
    fn layout_skips_the_callers_id() {
        assert_eq!(
            lay_out(&[(100_000, 65536)], Some(0)),
            vec![e(1, 100_000, 65535)]
        );
        assert_eq!(
            lay_out(&[(100_000, 65536)], Some(1000)),
            vec![e(0, 100_000, 1000), e(1001, 101_000, 64535)]
        );
        assert_eq!(
            lay_out(&[(100_000, 10), (200_000, 65536)], None),
            vec![e(0, 100_000, 10), e(10, 200_000, 65526)]
        );
        assert_eq!(lay_out(&[(5, 3)], Some(1)), vec![e(0, 5, 1), e(2, 6, 2)]);
    }

    #[test]
    fn single_keeps_the_old_maps() {
        let (d, f) = files("single");
        let p = Policy::default().ids(IdMapping::Single);
        let m = IdMaps::resolve(&p, 0, 0, false, &f).unwrap();
        assert_eq!(m.host_ids(), (65534, 65534));
        assert!(m.may_drop_groups());
        let m = IdMaps::resolve(&p, 1234, 99, false, &f).unwrap();
        assert_eq!(m.extents(), (vec![e(0, 1234, 1)], vec![e(0, 99, 1)]));
        assert!(!m.may_drop_groups());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn root_leases_disjoint_blocks() {
        let (d, f) = files("root");
        let p = Policy::default();
        let a = IdMaps::resolve(&p, 0, 0, false, &f).unwrap();
        let b = IdMaps::resolve(&p, 0, 0, false, &f).unwrap();
        let (ua, ub) = (a.extents().0[0].clone(), b.extents().0[0].clone());
        assert_eq!((ua.inside, ua.count), (0, RANGE_SIZE));
        assert!(ua.outside >= 100_000 && ub.outside >= 100_000);
        assert!(ua.outside.abs_diff(ub.outside) >= RANGE_SIZE);
        assert_eq!(a.host_ids().0, ua.outside);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn explicit_ranges_and_subordinates() {
        let (d, f) = files("explicit");
        std::fs::write(&f.subuid, "alice:200000:65536\n").unwrap();
        std::fs::write(&f.subgid, "alice:200000:65536\n").unwrap();
        let range = |uid| {
            Policy::default().ids(IdMapping::Range {
                uid,
                gid: uid,
                count: RANGE_SIZE,
            })
        };
        assert!(IdMaps::resolve(&range(1_000_000), 0, 0, false, &f).is_ok());
        assert!(matches!(
            IdMaps::resolve(&range(30_000), 0, 0, false, &f),
            Err(IdMapError::Overlap(_))
        ));
        assert!(matches!(
            IdMaps::resolve(&range(1_000_000), 1000, 1000, false, &f),
            Err(IdMapError::RangeNeedsRoot)
        ));
        let sub = |u: &str| Policy::default().ids(IdMapping::Subordinate(u.into()));
        let m = IdMaps::resolve(&sub("alice"), 0, 0, false, &f).unwrap();
        assert_eq!(m.extents().0, vec![e(0, 200_000, 65536)]);
        assert!(matches!(
            IdMaps::resolve(&sub("bob"), 0, 0, false, &f),
            Err(IdMapError::NoSubordinate { .. })
        ));
        assert!(matches!(
            IdMaps::resolve(&sub("alice"), 4321, 4321, false, &f),
            Err(IdMapError::NotCaller { .. })
        ));
        // The guest always gets a whole range of its own kernel.
        let m = IdMaps::resolve(&Policy::default(), 0, 0, true, &f).unwrap();
        assert_eq!(m.host_ids(), (GUEST_FIRST_ID, GUEST_FIRST_ID));
        // A guest's run on the VMM's shares: root inside is the one id the shares show.
        let mut m = m;
        m.give_root_to((65534, 65533));
        assert_eq!(
            m.extents(),
            (
                vec![e(0, 65534, 1), e(1, GUEST_FIRST_ID + 1, 65535)],
                vec![e(0, 65533, 1), e(1, GUEST_FIRST_ID + 1, 65535)]
            )
        );
        assert_eq!(m.host_ids(), (65534, 65533));
        // A single id stays as it is.
        let mut single =
            IdMaps::resolve(&Policy::default().ids(IdMapping::Single), 0, 0, true, &f).unwrap();
        let before = single.extents();
        single.give_root_to((0, 0));
        assert_eq!(single.extents(), before);
        std::fs::remove_dir_all(d).unwrap();
    }
}
