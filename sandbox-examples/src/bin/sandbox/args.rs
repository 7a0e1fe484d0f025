//! The parsers of `sandbox`'s flag values: users, capabilities, id mappings, binds, environment entries and
//! sizes. Each error names the flag and its value, and says what to give instead.

use std::ffi::OsString;
use std::path::PathBuf;

use sandkasten::{Capability, IdMapping, Mount};

/// `UID[:GID]` (docker `--user`, numbers only: names would be looked up in the host's files, not the
/// sandbox's).
pub(crate) fn parse_user(spec: &str, gid: u32) -> Result<(u32, u32), String> {
    let num = |s: &str| {
        s.parse::<u32>().map_err(|_| {
            format!("--user {spec:?}: give numeric ids, UID or UID:GID (e.g. --user 1000:1000)")
        })
    };
    match spec.split_once(':') {
        Some((u, g)) => Ok((num(u)?, num(g)?)),
        None => Ok((num(spec)?, gid)),
    }
}

/// A capability name (`chown`, `CAP_CHOWN`), or `all` of those offered.
pub(crate) fn parse_cap(name: &str) -> Result<Vec<Capability>, String> {
    if name == "all" {
        return Ok(Capability::ALL.to_vec());
    }
    Capability::from_name(name).map(|c| vec![c]).ok_or_else(|| {
        let offered: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
        format!(
            "--cap-add {name:?}: not offered (only capabilities whose power stays in the sandbox's user \
             namespace): give one of {}, or all",
            offered.join(", ")
        )
    })
}

/// `auto`, `single`, `subordinate:USER` or `range:UID:GID:COUNT`.
pub(crate) fn parse_ids(spec: &str) -> Result<IdMapping, String> {
    let bad = || {
        format!(
            "--ids {spec:?}: give auto, single, subordinate:USER or range:UID:GID:COUNT (e.g. \
             range:1000000:1000000:65536)"
        )
    };
    let mut parts = spec.split(':');
    let ids = match (parts.next(), parts.next()) {
        (Some("auto"), None) => IdMapping::Auto,
        (Some("single"), None) => IdMapping::Single,
        (Some("subordinate"), Some(user)) if parts.clone().next().is_none() => {
            IdMapping::Subordinate(user.into())
        }
        (Some("range"), Some(uid)) => {
            let rest: Vec<&str> = parts.collect();
            let [gid, count] = rest[..] else {
                return Err(bad());
            };
            let n = |s: &str| s.parse::<u32>().map_err(|_| bad());
            IdMapping::Range {
                uid: n(uid)?,
                gid: n(gid)?,
                count: n(count)?,
            }
        }
        _ => return Err(bad()),
    };
    Ok(ids)
}

/// `SRC[:DST[:ro|rw]]` (docker `-v` syntax) into a mount: read-only when `ro` is given, or when `flag` is
/// `--ro-bind`. Every suffix is either honoured or refused: a `:ro` that became part of the destination would
/// leave the mount writable.
pub(crate) fn parse_bind(flag: &str, spec: &str) -> Result<Mount, String> {
    let mut parts = spec.split(':');
    let src = parts.next().unwrap_or_default();
    let dst = parts.next().unwrap_or(src);
    let mode = parts.next();
    if parts.next().is_some() {
        return Err(format!(
            "{flag} {spec}: too many ':'-separated fields; give SRC[:DST[:ro|rw]]"
        ));
    }
    if src.is_empty() || dst.is_empty() {
        return Err(format!(
            "{flag} {spec}: empty source or destination; give SRC[:DST[:ro|rw]]"
        ));
    }
    if !dst.starts_with('/') {
        return Err(format!(
            "{flag} {spec}: the destination {dst:?} is not an absolute path (a mode goes last: SRC:DST:ro)"
        ));
    }
    let read_only = match (flag, mode) {
        (_, None) => flag == "--ro-bind",
        (_, Some("ro")) => true,
        ("--bind", Some("rw")) => false,
        ("--ro-bind", Some("rw")) => {
            return Err(format!(
                "{flag} {spec}: a read-only bind cannot be `rw`; use --bind {spec}"
            ));
        }
        (_, Some(other)) => {
            return Err(format!(
                "{flag} {spec}: unknown mode {other:?}; the modes are `ro` and `rw`"
            ));
        }
    };
    let (src, dst) = (PathBuf::from(src), PathBuf::from(dst));
    Ok(if read_only {
        Mount::RoBind { src, dst }
    } else {
        Mount::Bind { src, dst }
    })
}

/// The environment of `--env-file FILE`s (in order) then `--env` flags, as pairs. `KEY=VALUE` sets a
/// variable; `KEY` alone passes this process's own value in (nothing when it has none, as docker does). An
/// env file holds one such entry per line; blank lines and lines starting with `#` are skipped.
pub(crate) fn parse_env(
    files: &[PathBuf],
    flags: &[String],
) -> Result<Vec<(OsString, OsString)>, String> {
    let mut out = Vec::new();
    let mut one = |entry: &str, from: &dyn Fn() -> String| -> Result<(), String> {
        match entry.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.into(), v.into())),
            Some(_) => return Err(format!("{}: {entry:?} has no name before `=`", from())),
            None if entry.is_empty() || entry.contains(char::is_whitespace) => {
                return Err(format!(
                    "{}: {entry:?}: give KEY=VALUE, or KEY to pass this process's own value",
                    from()
                ));
            }
            None => {
                if let Some(v) = std::env::var_os(entry) {
                    out.push((entry.into(), v));
                }
            }
        }
        Ok(())
    };
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--env-file {}: {e}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            one(line, &|| {
                format!("--env-file {} line {}", file.display(), n + 1)
            })?;
        }
    }
    for flag in flags {
        one(flag, &|| "--env".to_string())?;
    }
    Ok(out)
}

/// `--tmpfs DST[:size=SIZE]` (docker's `--tmpfs` syntax for the size).
pub(crate) fn parse_tmpfs(spec: &str) -> Result<Mount, String> {
    let (dst, size) = match spec.split_once(':') {
        None => (spec, None),
        Some((dst, opts)) => {
            let Some(size) = opts.strip_prefix("size=") else {
                return Err(format!(
                    "--tmpfs {spec:?}: the only option is size=SIZE (e.g. --tmpfs /scratch:size=64M)"
                ));
            };
            let size = parse_size(size).map_err(|e| format!("--tmpfs {spec:?}: {e}"))?;
            (dst, Some(size))
        }
    };
    Ok(Mount::Tmpfs {
        dst: PathBuf::from(dst),
        size,
    })
}

/// One `--ulimit NAME=VALUE[:VALUE]` (docker's syntax) set on `limits`: `nofile`, `nproc` (counts), `fsize`
/// (a size) or `cpu` (seconds). The sandbox sets one value as both soft and hard limit, so a pair must be
/// equal.
pub(crate) fn apply_ulimit(
    spec: &str,
    limits: &mut sandkasten::policy::Limits,
) -> Result<(), String> {
    let bad = |why: &str| {
        format!("--ulimit {spec:?}: {why} (give nofile=N, nproc=N, fsize=SIZE or cpu=SECONDS)")
    };
    let (name, value) = spec.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let value = match value.split_once(':') {
        Some((soft, hard)) if soft == hard => soft,
        Some(_) => {
            return Err(bad(
                "the sandbox sets one value as soft and hard limit: give it once, or twice the same",
            ));
        }
        None => value,
    };
    let count = || {
        value
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("not a positive whole number"))
    };
    match name {
        "nofile" => limits.nofile = Some(count()?),
        "nproc" => limits.nproc = Some(count()?),
        "fsize" => limits.fsize = Some(parse_size(value).map_err(|e| bad(&e))?),
        "cpu" => limits.cpu_time = Some(std::time::Duration::from_secs(count()?)),
        _ => return Err(bad("unknown limit")),
    }
    Ok(())
}

/// A size (`512M`, `512MiB`, `4096`): the library's one parser, as policies read them.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    sandkasten::policy::parse_size(text).map_err(|e| e.to_string())
}

/// `--report-fd N`: descriptor N of this process, as a file to write the verdict to (a duplicate: N itself
/// stays as it was). Refused with the fix when N is not open.
pub fn report_fd(n: i32) -> Result<std::fs::File, String> {
    // SAFETY: fcntl(F_GETFD) takes no pointers and only reads the descriptor table.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(format!(
            "--report-fd {n}: descriptor {n} is not open in this process (open it in the shell, e.g. \
             `sandbox run --report-fd 3 -- prog 3>verdict.json`)"
        ));
    }
    // SAFETY: `n` was just checked to be an open descriptor; it is only borrowed here to duplicate it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
    fd.try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("--report-fd {n}: cannot duplicate descriptor {n}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_id_mappings() {
        assert_eq!(parse_user("1000", 7), Ok((1000, 7)));
        assert_eq!(parse_user("1000:1001", 7), Ok((1000, 1001)));
        for bad in ["", "alice", "1000:", ":5", "1:2:3", "-1"] {
            assert!(parse_user(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(parse_cap("CAP_SETUID"), Ok(vec![Capability::Setuid]));
        assert_eq!(parse_cap("all").map(|v| v.len()), Ok(Capability::ALL.len()));
        assert!(parse_cap("sys_admin").unwrap_err().contains("dac_override"));
        assert_eq!(parse_ids("auto"), Ok(IdMapping::Auto));
        assert_eq!(parse_ids("single"), Ok(IdMapping::Single));
        assert_eq!(
            parse_ids("subordinate:alice"),
            Ok(IdMapping::Subordinate("alice".into()))
        );
        assert_eq!(
            parse_ids("range:1000000:2000000:65536"),
            Ok(IdMapping::Range {
                uid: 1_000_000,
                gid: 2_000_000,
                count: 65536
            })
        );
        for bad in [
            "",
            "many",
            "auto:x",
            "subordinate",
            "subordinate:a:b",
            "range:1:2",
            "range:1:2:3:4",
            "range:a:2:3",
        ] {
            assert!(parse_ids(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bind_modes_are_honoured_or_refused() {
        let ro = |s: &str, d: &str| Mount::RoBind {
            src: s.into(),
            dst: d.into(),
        };
        let rw = |s: &str, d: &str| Mount::Bind {
            src: s.into(),
            dst: d.into(),
        };
        assert_eq!(parse_bind("--bind", "/srv"), Ok(rw("/srv", "/srv")));
        assert_eq!(parse_bind("--bind", "/srv:/data"), Ok(rw("/srv", "/data")));
        assert_eq!(
            parse_bind("--bind", "/srv:/data:ro"),
            Ok(ro("/srv", "/data"))
        );
        assert_eq!(
            parse_bind("--bind", "/srv:/data:rw"),
            Ok(rw("/srv", "/data"))
        );
        assert_eq!(parse_bind("--ro-bind", "/srv"), Ok(ro("/srv", "/srv")));
        assert_eq!(
            parse_bind("--ro-bind", "/srv:/data:ro"),
            Ok(ro("/srv", "/data"))
        );
        for (flag, spec) in [
            ("--ro-bind", "/srv:/data:rw"),
            ("--bind", "/srv:/data:RO"),
            ("--bind", "/srv:/data:ro:x"),
            ("--bind", "/srv:ro"),
            ("--bind", "/srv:"),
            ("--bind", ":/data"),
        ] {
            let err = parse_bind(flag, spec).expect_err(spec);
            assert!(err.contains(spec), "{err}");
        }
    }

    #[test]
    fn environment_entries_files_and_pass_through() {
        let dir = std::env::temp_dir().join(format!("sandbox-env-file-{}", std::process::id()));
        std::fs::write(
            &dir,
            "# a comment\n\nA=1\nB=two words=3\nPATH\nSANDBOX_SURELY_UNSET_VAR\n",
        )
        .unwrap();
        let got = parse_env(
            std::slice::from_ref(&dir),
            &["A=over".into(), "HOME".into()],
        );
        let _ = std::fs::remove_file(&dir);
        let got = got.unwrap();
        let pairs: Vec<(String, String)> = got
            .iter()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect();
        let path = std::env::var("PATH").unwrap();
        let home = std::env::var("HOME").unwrap_or_default();
        let mut want = vec![
            ("A".to_string(), "1".to_string()),
            ("B".into(), "two words=3".into()),
            ("PATH".into(), path),
            ("A".into(), "over".into()),
        ];
        if std::env::var_os("HOME").is_some() {
            want.push(("HOME".into(), home));
        }
        assert_eq!(pairs, want);
        for bad in ["=x", "", "two words"] {
            assert!(parse_env(&[], &[bad.into()]).is_err(), "{bad:?}");
        }
        let e = parse_env(&["/nonexistent/env".into()], &[]).unwrap_err();
        assert!(e.contains("/nonexistent/env"), "{e}");
    }

    #[test]
    fn tmpfs_and_ulimits() {
        assert_eq!(
            parse_tmpfs("/scratch:size=1M"),
            Ok(Mount::Tmpfs {
                dst: "/scratch".into(),
                size: Some(1 << 20)
            })
        );
        assert_eq!(
            parse_tmpfs("/scratch"),
            Ok(Mount::Tmpfs {
                dst: "/scratch".into(),
                size: None
            })
        );
        for bad in ["/s:mode=1777", "/s:size=lots", "/s:size="] {
            assert!(parse_tmpfs(bad).unwrap_err().contains(bad), "{bad}");
        }
        let mut l = sandkasten::policy::Limits::default();
        for ok in ["nofile=1024:1024", "nproc=64", "fsize=1M", "cpu=3"] {
            apply_ulimit(ok, &mut l).unwrap();
        }
        assert_eq!(
            (l.nofile, l.nproc, l.fsize, l.cpu_time),
            (
                Some(1024),
                Some(64),
                Some(1 << 20),
                Some(std::time::Duration::from_secs(3))
            )
        );
        for bad in [
            "nofile=1024:2048",
            "core=0",
            "nofile",
            "nofile=0",
            "nproc=x",
        ] {
            assert!(
                apply_ulimit(bad, &mut l).unwrap_err().contains(bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-5K").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
