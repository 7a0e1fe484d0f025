//! The escape probes about privileges and identity: set-ID binaries and file capabilities, the sandbox's
//! uid/gid maps, and files owned by ids outside them. Part of tests/escape.rs (the module `escape::identity`).

use super::*;

pub(crate) fn system_setuid_nosuid(c: &Ctx) -> Check {
    let some = ["/usr/bin", "/usr/sbin"].iter().any(|d| {
        let entries = std::fs::read_dir(d).into_iter().flatten().flatten();
        entries
            .filter_map(|e| e.path().symlink_metadata().ok())
            .any(|m| m.is_file() && m.mode() & 0o4000 != 0)
    });
    let some = if some { "some" } else { "none" };
    let want = format!("setuid_files={some} nosuid=True rdonly=True");
    expect(&c.py("system_setuid_nosuid", &[], default()), &want)
}

/// A copy of the C probe and a file only host root may read, both owned by host root, in a read-write bind.
pub(crate) fn privileged_fixture(c: &Ctx, tag: &str, mode: u32) -> Result<TempDir, String> {
    let bin = c.identity()?;
    let t = TempDir::new(tag);
    let secret = write(&t.path().join("rootonly"), "secret", 0o600);
    let copy = t.path().join("probe");
    std::fs::copy(bin, &copy).unwrap();
    for p in [&secret, &copy] {
        std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    Ok(t)
}

pub(crate) fn setuid_root_copy(c: &Ctx) -> Check {
    if !c.root {
        let why = "needs host root to make a root-owned set-user-ID file";
        return Ok(Observed::Skipped(why.into()));
    }
    let t = privileged_fixture(c, "escape-suid", 0o4755)?;
    // A sandbox user other than 0, so that a gain would show in the effective uid.
    let p = default().bind(t.path(), "/data").user(1000, 1000);
    let o = c.run("/data/probe", &["/data/rootonly"], p);
    expect(
        &o,
        "ruid=1000 euid=1000 suid=1000 caps=0000000000000000 open=EACCES",
    )
}

pub(crate) fn file_caps_binary(c: &Ctx) -> Check {
    if !c.root {
        return Ok(Observed::Skipped(
            "needs host root to give a file capabilities".into(),
        ));
    }
    let t = privileged_fixture(c, "escape-fcap", 0o755)?;
    // What `setcap cap_dac_override,cap_dac_read_search+ep` writes: vfs_cap_data revision 2, effective.
    let data: Vec<u8> = [0x0200_0001u32, 0b110, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let path = CString::new(s(&t.path().join("probe"))).unwrap();
    // SAFETY: NUL-terminated path and name; `data` is valid for its length.
    let r = unsafe {
        let name = c"security.capability".as_ptr();
        libc::setxattr(path.as_ptr(), name, data.as_ptr().cast(), data.len(), 0)
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "setting the file capability on the host failed: {e}"
        ));
    }
    let o = c.run(
        "/data/probe",
        &["/data/rootonly"],
        default().bind(t.path(), "/data"),
    );
    expect(&o, "ruid=0 euid=0 suid=0 caps=0000000000000000 open=EACCES")
}

pub(crate) fn plant_setuid_in_rw_bind(c: &Ctx) -> Check {
    let t = TempDir::new("escape-plant-suid");
    let o = c.py("plant_setuid", &[], default().bind(t.path(), "/data"));
    let planted: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let mode = e.metadata().ok()?.mode();
            let name = e.file_name().to_string_lossy().into_owned();
            (mode & 0o6000 != 0).then(|| format!("{name} ({mode:o})"))
        })
        .collect();
    if !planted.is_empty() {
        return Err(format!(
            "set-user/group-ID files left on the host, owned by the sandbox's host uid: {planted:?} ({})",
            stdout(&o)
        ));
    }
    expect(
        &o,
        "chmod_suid=EPERM chmod_sgid=EPERM open_creat=EPERM mknod=EPERM",
    )
}

/// The inside ids and the maps the kernel shows are the verdict's; files made in a writable bind belong on
/// the host to the sandbox user's mapped id (never root, and for a root caller no id of a host user); no
/// capability lets the sandbox change ids (`setuid(1)` and `chown` are EPERM where id 1 is mapped, EINVAL
/// where it is not).
pub(crate) fn identity(c: &Ctx) -> Check {
    let t = TempDir::new("escape-identity");
    let o = c.py("identity", &[], default().bind(t.path(), "/data"));
    let e = &o.enforced;
    let vm = o.backend == sandkasten::BackendKind::Vm;
    // Through the VM, files are made by the VMM: a root caller's VMM runs as nobody.
    let (uid, gid) = if vm && c.root {
        (65534, 65534)
    } else if c.root || !e.uid_map.iter().any(|x| x.count == 1) {
        (e.host_uid, e.host_gid)
    } else {
        // SAFETY: geteuid and getegid have no preconditions.
        unsafe { (libc::geteuid(), libc::getegid()) }
    };
    if c.root && !vm {
        let users = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let taken = users
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
            .any(|id| {
                e.uid_map
                    .iter()
                    .any(|x| id >= x.outside && id - x.outside < x.count)
            });
        if uid == 0 || taken {
            return Err(format!(
                "the uid map {:?} holds host root or a host user's id",
                e.uid_map
            ));
        }
    }
    for name in ["owned", "owned-dir"] {
        match std::fs::metadata(t.path().join(name)) {
            Ok(m) if m.uid() == uid && m.gid() == gid && (m.uid() != 0 || !c.root) => {}
            Ok(m) => {
                let (u, g) = (m.uid(), m.gid());
                return Err(format!(
                    "{name} made inside is owned by {u}:{g} on the host, not {uid}:{gid}"
                ));
            }
            Err(e) => return Err(format!("{name} was not made ({e}): {}", describe(&o, ""))),
        }
    }
    let text = |m: &[sandkasten::outcome::IdExtent]| {
        m.iter()
            .map(|x| format!("{} {} {}", x.inside, x.outside, x.count))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let one_mapped = e
        .uid_map
        .iter()
        .any(|x| x.inside <= 1 && 1 - x.inside < x.count);
    let change = if one_mapped { "EPERM" } else { "EINVAL" };
    let want = format!(
        "uid=0 gid=0 uid_map={} gid_map={} setuid1={change} chown={change}",
        text(&e.uid_map),
        text(&e.gid_map)
    );
    expect(&o, &want)
}

/// Files of other host users in a writable bind stay theirs: the ids of the sandbox's range own nothing
/// there, and no capability overrides permissions or the sticky bit. (Root callers only: the test makes files
/// of host root and of host user 1, daemon.)
pub(crate) fn range_foreign_files(c: &Ctx) -> Check {
    foreign_files_with(c, default())
}

/// The same with every capability a policy may keep: they act on the mapped ids only.
pub(crate) fn range_foreign_files_with_caps(c: &Ctx) -> Check {
    let mut p = default();
    p.capabilities = sandkasten::Capability::ALL.to_vec();
    foreign_files_with(c, p)
}

fn foreign_files_with(c: &Ctx, policy: Policy) -> Check {
    if !c.root {
        return Ok(Observed::Skipped(
            "needs root to make files of other users".into(),
        ));
    }
    let t = TempDir::with_mode("escape-foreign", 0o1777);
    for (name, id) in [("daemon", 1), ("root", 0)] {
        let f = t.path().join(name);
        std::fs::write(&f, "theirs\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&f, Some(id), Some(id)).unwrap();
    }
    let o = c.py("foreign_files", &[], policy.bind(t.path(), "/data"));
    for name in ["daemon", "root"] {
        let text = std::fs::read_to_string(t.path().join(name)).unwrap_or_default();
        if text != "theirs\n" {
            return Err(format!(
                "{name}'s file was changed to {text:?}: {}",
                describe(&o, "")
            ));
        }
    }
    expect(
        &o,
        "daemon_write=EACCES daemon_chmod=EPERM daemon_unlink=EPERM \
         root_write=EACCES root_chmod=EPERM root_unlink=EPERM",
    )
}
