//! Unit tests of the filesystem plan (no privileges needed).

use super::*;

fn text(steps: &[Step]) -> Vec<String> {
    steps.iter().map(|s| s.op.to_string()).collect()
}

fn steps(p: &Policy) -> Result<Vec<Step>, PlanError> {
    plan(p).map(|p| p.steps)
}

#[test]
fn empty_policy_builds_dev_proc_and_pivots() {
    let steps = steps(&Policy::empty()).unwrap();
    let t = text(&steps);
    assert!(
        t[0].contains("\"/\"") && t[0].contains(&format!("{:#x}", libc::MS_REC | libc::MS_PRIVATE))
    );
    assert!(t.iter().any(|s| s.contains("\"/newroot/dev/null\"")));
    assert!(t.iter().any(|s| s.contains("\"devpts\"")));
    assert!(t.iter().any(|s| s.starts_with("mount(Some(\"proc\")")));
    assert!(
        t.iter()
            .any(|s| s.contains("/newroot/proc/sys") && s.contains("recursive"))
    );
    assert!(
        !t.iter().any(|s| s.contains("/newroot/usr")),
        "no system view in an empty policy"
    );
    let last = &steps[steps.len() - 1];
    assert_eq!(
        last.op,
        Op::SetAttr {
            path: lit("/"),
            set: MOUNT_ATTR_RDONLY,
            recursive: false
        }
    );
}

#[test]
fn system_view_is_read_only() {
    let steps = steps(&Policy::default()).unwrap();
    let usr = steps
        .iter()
        .position(
            |s| matches!(&s.op, Op::BindSource { dst, .. } if dst.as_bytes() == b"/newroot/usr"),
        )
        .expect("usr is bound");
    assert_eq!(
        steps[usr + 1].op,
        Op::SetAttr {
            path: lit("/newroot/usr"),
            set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            recursive: true
        }
    );
    assert!(
        text(&steps)
            .iter()
            .any(|s| s.contains("\"/newroot/tmp\"") && s.contains("mode=1777"))
    );
}

#[test]
fn rw_bind_is_not_read_only_and_sources_are_canonical() {
    let dir = std::env::temp_dir().join(format!("sandbox-plan-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let link = dir.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir.join("sub"), &link).unwrap();
    let p = plan(&Policy::empty().bind(&link, "/data/x")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let real = CString::new(dir.join("sub").as_os_str().as_bytes()).unwrap();
    let source = p
        .sources
        .iter()
        .position(|s| *s == real)
        .expect("the canonical source");
    let i = p
        .steps
        .iter()
        .position(|s| {
            s.op == Op::BindSource {
                source,
                dst: lit("/newroot/data/x"),
            }
        })
        .expect("bind step");
    assert_eq!(
        p.steps[i + 1].op,
        Op::SetAttr {
            path: lit("/newroot/data/x"),
            set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            recursive: true
        }
    );
    let t = text(&p.steps);
    assert!(t.iter().any(|s| s == "mkdir(\"/newroot/data\")"));
    assert!(t.iter().any(|s| s == "mkdir(\"/newroot/data/x\")"));
}

/// `dir/planted`, a link to `dir/real` owned by uid 65534 (as root only).
fn plant_link(dir: &Path) -> PathBuf {
    let planted = dir.join("planted");
    let _ = std::fs::remove_file(&planted);
    std::os::unix::fs::symlink(dir.join("real"), &planted).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &planted,
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    planted
}

#[test]
fn symlinks_owned_by_others_are_refused() {
    use std::os::unix::fs::symlink;
    let dir = std::env::temp_dir().join(format!("sandbox-plan-links-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("real")).unwrap();
    let mine = dir.join("mine");
    let _ = std::fs::remove_file(&mine);
    symlink(dir.join("real"), &mine).unwrap();
    assert!(
        plan(&Policy::empty().ro_bind(&mine, "/x")).is_ok(),
        "own links are fine"
    );
    if nix::unistd::geteuid().is_root() {
        let planted = plant_link(&dir);
        let err = plan(&Policy::empty().ro_bind(planted.join("."), "/x")).unwrap_err();
        assert!(matches!(err, PlanError::UntrustedSymlink { .. }), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The link check looks at each host directory once per view, and a source with no link on its way is taken
/// as it is written: the sources are still the canonical paths, and a link met after directories already
/// looked at is still checked.
#[test]
fn sources_are_canonical_and_links_checked_after_looked_up_directories() {
    use std::os::unix::fs::symlink;
    let dir = std::env::temp_dir().join(format!("sandbox-plan-direct-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("real/sub")).unwrap();
    std::fs::write(dir.join("real/file"), "x").unwrap();
    let mine = dir.join("mine");
    let _ = std::fs::remove_file(&mine);
    symlink(dir.join("real"), &mine).unwrap();
    let p = plan(
        &Policy::empty()
            .ro_bind(dir.join("real/./sub/"), "/a")
            .ro_bind(mine.join("sub"), "/b")
            .ro_bind(dir.join("real/file"), "/c"),
    )
    .unwrap();
    let sub = cstr(dir.join("real/sub")).unwrap();
    assert_eq!(
        p.sources.iter().filter(|s| **s == sub).count(),
        2,
        "{:?}",
        p.sources
    );
    assert!(p.sources.contains(&cstr(dir.join("real/file")).unwrap()));
    let t = text(&p.steps);
    assert!(
        t.iter()
            .any(|s| s == "creating mount point file \"/newroot/c\""),
        "a file's mount point is a file: {t:?}"
    );
    if nix::unistd::geteuid().is_root() {
        let planted = plant_link(&dir);
        // `dir` and `dir/real` were looked at for the first bind; the planted link is still seen.
        let err = plan(
            &Policy::empty()
                .ro_bind(dir.join("real/sub"), "/a")
                .ro_bind(planted.join("sub"), "/b"),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::UntrustedSymlink { .. }), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_source_is_an_error() {
    let err = plan(&Policy::empty().ro_bind("/nonexistent/sandbox/path", "/x")).unwrap_err();
    assert!(matches!(err, PlanError::Source { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/sandbox/path"));
}

#[test]
fn never_creates_mount_points_on_the_host() {
    // /usr is a host bind: a mount point below it must already exist on the host.
    let err = plan(&Policy::default().tmpfs("/usr/sandbox-nonexistent-dir")).unwrap_err();
    assert!(matches!(err, PlanError::MountpointMissing { .. }), "{err}");
    // An existing directory is fine.
    assert!(plan(&Policy::default().tmpfs("/usr/share")).is_ok());
    // Inside our own tmpfs anything may be created.
    assert!(plan(&Policy::default().tmpfs("/tmp/a/b")).is_ok());
}

#[test]
fn user_tmp_replaces_default_tmp() {
    let steps = steps(&Policy::default().tmpfs_sized("/tmp", 4096)).unwrap();
    let n = text(&steps)
        .iter()
        .filter(|s| s.contains("\"/newroot/tmp\"") && s.starts_with("mount("))
        .count();
    assert_eq!(n, 1);
}

#[test]
fn every_writable_tmpfs_is_bounded() {
    use crate::policy::{DEFAULT_TMPFS_SIZE, MIN_TMPFS_INODES};
    let mounted = |p: &Policy, dst: &str| -> String {
        let want = format!("\"/newroot{dst}\"");
        text(&plan(p).unwrap().steps)
            .into_iter()
            .find(|s| s.starts_with("mount(") && s.contains(&want) && s.contains("tmpfs"))
            .unwrap_or_else(|| panic!("no tmpfs at {dst}"))
    };
    // No memory limit: 64 MiB and one inode per 4 KiB, for /tmp, /dev/shm and an unsized policy tmpfs.
    let p = Policy::default().tmpfs("/scratch");
    let inodes = DEFAULT_TMPFS_SIZE / 4096;
    for dst in ["/tmp", "/dev/shm", "/scratch"] {
        let m = mounted(&p, dst);
        assert!(
            m.contains(&format!("size={DEFAULT_TMPFS_SIZE},nr_inodes={inodes}")),
            "{m}"
        );
    }
    let bounds = plan(&p).unwrap().tmpfs;
    assert_eq!(bounds.len(), 3, "{bounds:?}");
    assert!(
        bounds
            .iter()
            .all(|b| b.size == DEFAULT_TMPFS_SIZE && b.inodes == inodes)
    );
    // With a memory limit, the unsized ones follow it; a given size wins; tiny sizes keep a minimum of inodes.
    let p = Policy::default()
        .memory(256 << 20)
        .tmpfs("/scratch")
        .tmpfs_sized("/small", 4096);
    assert!(mounted(&p, "/tmp").contains(&format!("size={},nr_inodes=65536", 256 << 20)));
    assert!(mounted(&p, "/scratch").contains(&format!("size={}", 256 << 20)));
    assert!(mounted(&p, "/small").contains(&format!("size=4096,nr_inodes={MIN_TMPFS_INODES}")));
    // An empty root has no /tmp, but /dev/shm is still bounded.
    let bounds = plan(&Policy::empty()).unwrap().tmpfs;
    assert_eq!(bounds.len(), 1);
    assert_eq!(bounds[0].path, std::path::Path::new("/dev/shm"));
}

fn root(idmapped: bool, upper: Option<&str>) -> Root {
    Root {
        lowers: vec![
            "/store/layers/sha256/top/root".into(),
            "/store/layers/sha256/base/root".into(),
        ],
        upper: upper.map(PathBuf::from),
        flat: None,
        idmapped,
        owner: (0, 0),
        top: ["bin", "dev", "etc", "proc", "sys", "usr"]
            .map(Into::into)
            .to_vec(),
        config: None,
        user: None,
        report: Default::default(),
        _checkout: None,
    }
}

#[test]
fn an_own_root_is_an_overlay_of_its_layers_and_stays_writable() {
    for idmapped in [true, false] {
        let policy = Policy::default().tmpfs("/scratch");
        let plan = plan_with_root(&policy, Some(&root(idmapped, None))).unwrap();
        let t = text(&plan.steps);
        let overlay = t
            .iter()
            .find(|s| s.contains("\"overlay\""))
            .unwrap_or_else(|| panic!("no overlay: {t:#?}"));
        assert!(
            overlay.contains("/newroot")
                && overlay
                    .contains("lowerdir=/l/0:/l/1,upperdir=/rw/upper,workdir=/rw/work,userxattr"),
            "{overlay}"
        );
        // The layers: id-mapped trees the host sends (a root caller), else binds of host sources.
        let attached = t
            .iter()
            .filter(|s| s.starts_with("attaching the id-mapped"))
            .count();
        let bound = plan
            .steps
            .iter()
            .filter(|s| matches!(&s.op, Op::BindSource { dst, .. } if dst.as_bytes().starts_with(b"/l/")))
            .count();
        assert_eq!((attached, bound), if idmapped { (2, 0) } else { (0, 2) });
        assert_eq!(plan.trees.len(), attached);
        assert_eq!(
            plan.trees
                .iter()
                .map(|t| t.path.clone())
                .collect::<Vec<_>>(),
            if idmapped {
                vec![
                    lit("/store/layers/sha256/top/root"),
                    lit("/store/layers/sha256/base/root"),
                ]
            } else {
                vec![]
            }
        );
        // No system view, no /tmp of ours; the policy's own mounts still come.
        assert!(!t.iter().any(|s| s.contains("/newroot/usr\"")), "{t:#?}");
        assert!(!t.iter().any(|s| s.contains("\"/newroot/tmp\"")), "{t:#?}");
        assert!(
            t.iter().any(|s| s.contains("\"/newroot/scratch\"")),
            "{t:#?}"
        );
        // The writable layer is a bounded tmpfs, reported for "/"; the root is not frozen.
        assert!(plan.tmpfs.iter().any(|b| b.path == Path::new("/")));
        assert!(!plan.steps.iter().any(|s| s.op
            == Op::SetAttr {
                path: lit("/"),
                set: MOUNT_ATTR_RDONLY,
                recursive: false
            }));
        // Landlock: the root's top-level entries but /dev, /proc, /sys (rules of their own mounts).
        let written: Vec<&CString> = plan
            .inside
            .iter()
            .filter(|(_, k)| *k == Inside::Write)
            .map(|(p, _)| p)
            .collect();
        for name in ["/bin", "/etc", "/usr"] {
            assert!(written.contains(&&lit(name)), "{name}: {written:?}");
        }
        assert!(!written.contains(&&lit("/sys")) && !written.contains(&&lit("/proc")));
    }
}

#[test]
fn a_kept_upper_directory_is_mounted_instead_of_the_tmpfs() {
    let plan = plan_with_root(&Policy::default(), Some(&root(true, Some("/srv/upper")))).unwrap();
    assert_eq!(plan.trees.len(), 3);
    assert_eq!(plan.trees[2].path, lit("/srv/upper"));
    assert_eq!(plan.trees[2].attrs & MOUNT_ATTR_RDONLY, 0);
    assert!(
        plan.trees[..2]
            .iter()
            .all(|t| t.attrs & MOUNT_ATTR_RDONLY != 0)
    );
    assert!(!plan.tmpfs.iter().any(|b| b.path == Path::new("/")));
}

#[test]
fn masked_and_read_only_paths_come_last_inside_the_new_root() {
    let p = Policy::default()
        .mask("/etc/passwd")
        .read_only_path("/tmp")
        .mask("/proc/acpi");
    let steps = steps(&p).unwrap();
    let pivot = steps
        .iter()
        .rposition(|s| matches!(s.op, Op::PivotRoot { .. }))
        .unwrap();
    let tail: Vec<&Op> = steps[pivot..]
        .iter()
        .map(|s| &s.op)
        .filter(|op| matches!(op, Op::Mask { .. } | Op::ReadOnly { .. }))
        .collect();
    // Read-only paths first, then the masks (as runc orders them), all after the last pivot_root: paths of
    // the sandbox's own root, never the host's.
    assert_eq!(
        tail,
        [
            &Op::ReadOnly { path: lit("/tmp") },
            &Op::Mask {
                path: lit("/etc/passwd")
            },
            &Op::Mask {
                path: lit("/proc/acpi")
            },
        ]
    );
    let before = steps[..pivot]
        .iter()
        .filter(|s| matches!(s.op, Op::Mask { .. } | Op::ReadOnly { .. }))
        .count();
    assert_eq!(before, 0);
}
