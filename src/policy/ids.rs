//! Which host ids the sandbox's user namespace maps: the description (how a backend finds the ids is the
//! backend's business, see `namespace/idmap.rs`).

use serde::{Deserialize, Serialize};

/// How many uids and how many gids a sandbox's user namespace maps when it gets a range: inside ids 0 to 65535,
/// the usual range of a Linux system (`nobody` is 65534).
pub const RANGE_SIZE: u32 = 65536;

/// Where the sandbox's ids come from on the host. Inside, the program runs as the policy's `uid` and `gid`
/// either way; with a range, the other inside ids (0 to 65535) exist too, so `chown`, `setgroups`,
/// `initgroups` and privilege-dropping servers work as on a normal system. Never host id 0.
///
/// In TOML: `ids = "auto"`, `ids = "single"`, `ids = { subordinate = "alice" }`,
/// `ids = { range = { uid = 1000000, gid = 1000000, count = 65536 } }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum IdMapping {
    /// 65536 ids where the caller can have them, else one. A root caller gets a block of 65536 ids of its own
    /// for the run, leased from the range reserved for sandboxes (the `/etc/subuid` and `/etc/subgid` entries
    /// of the user `sandkasten`, added on first use beyond every existing user and range); no two live
    /// sandboxes share a block. An unprivileged caller maps its own uid and gid to the sandbox user and its
    /// subordinate ranges (`/etc/subuid`, `/etc/subgid`) to the other ids, through `newuidmap` and
    /// `newgidmap` (Debian package `uidmap`); without those it gets one id, and the verdict's `not_enforced`
    /// says so and how to fix it.
    #[default]
    Auto,
    /// One id: the sandbox user maps to `host_uid`/`host_gid` (root caller) or to the caller itself.
    Single,
    /// The subordinate ranges of this user (a name or a uid) in `/etc/subuid` and `/etc/subgid`: any user's
    /// for a root caller, only the caller's own otherwise.
    Subordinate(String),
    /// An explicit host range (root callers only): inside id `i` is host `uid + i` (gids alike), for `i` below
    /// `count`. It must not contain host id 0 nor any id of an existing user, group or another user's
    /// subordinate range.
    Range {
        /// First host uid.
        uid: u32,
        /// First host gid.
        gid: u32,
        /// How many ids (at most 65536; more than the policy's `uid` and `gid`).
        count: u32,
    },
}

impl IdMapping {
    /// Checks what needs no system call: an explicit range is non-empty, avoids host id 0, does not wrap, and
    /// holds the sandbox user `uid` and group `gid`.
    pub(crate) fn validate(&self, uid: u32, gid: u32) -> Result<(), String> {
        match self {
            IdMapping::Range {
                uid: host_uid,
                gid: host_gid,
                count,
            } => {
                if *count == 0 || *count > RANGE_SIZE {
                    return Err(format!(
                        "ids.range.count is {count}: give 1 to {RANGE_SIZE} ids"
                    ));
                }
                if *host_uid == 0 || *host_gid == 0 {
                    return Err(
                        "ids.range must not start at host id 0: the sandbox never runs as host \
                                root"
                            .into(),
                    );
                }
                for (what, start) in [("uid", host_uid), ("gid", host_gid)] {
                    if start
                        .checked_add(*count)
                        .is_none_or(|end| end > u32::MAX - 1)
                    {
                        return Err(format!(
                            "ids.range.{what} {start} + count {count} runs past the largest host id"
                        ));
                    }
                }
                if uid >= *count || gid >= *count {
                    return Err(format!(
                        "the sandbox user {uid}:{gid} is outside ids.range (count {count}): give a count \
                         above both"
                    ));
                }
                Ok(())
            }
            IdMapping::Subordinate(user) if user.is_empty() || user.contains([':', '\n']) => Err(
                format!("ids.subordinate {user:?} is not a user name or uid"),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        let r = |uid, gid, count| IdMapping::Range { uid, gid, count };
        assert!(r(100_000, 100_000, 65536).validate(0, 0).is_ok());
        assert!(r(0, 100_000, 65536).validate(0, 0).is_err());
        assert!(r(100_000, 0, 65536).validate(0, 0).is_err());
        assert!(r(100_000, 100_000, 0).validate(0, 0).is_err());
        assert!(r(100_000, 100_000, 65537).validate(0, 0).is_err());
        assert!(r(u32::MAX - 10, 100_000, 65536).validate(0, 0).is_err());
        assert!(r(100_000, 100_000, 1000).validate(1000, 0).is_err());
        assert!(r(100_000, 100_000, 1001).validate(1000, 1000).is_ok());
        assert!(IdMapping::Subordinate("a:b".into()).validate(0, 0).is_err());
        assert!(
            IdMapping::Subordinate(String::new())
                .validate(0, 0)
                .is_err()
        );
        assert!(IdMapping::Auto.validate(5, 5).is_ok());
    }

    #[test]
    fn toml_forms() {
        #[derive(Deserialize, Serialize, PartialEq, Debug)]
        struct W {
            ids: IdMapping,
        }
        for (text, want) in [
            ("ids = \"auto\"", IdMapping::Auto),
            ("ids = \"single\"", IdMapping::Single),
            (
                "ids = { subordinate = \"alice\" }",
                IdMapping::Subordinate("alice".into()),
            ),
            (
                "ids = { range = { uid = 1000000, gid = 2000000, count = 65536 } }",
                IdMapping::Range {
                    uid: 1_000_000,
                    gid: 2_000_000,
                    count: 65536,
                },
            ),
        ] {
            let w: W = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(w.ids, want, "{text}");
            let back: W = toml::from_str(&toml::to_string(&w).unwrap()).unwrap();
            assert_eq!(back, w);
        }
        assert!(toml::from_str::<W>("ids = \"many\"").is_err());
    }
}
