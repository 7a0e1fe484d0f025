//! Unit tests of the VM engine's host side (no VM is started).

use super::*;

fn launch<'a>(policy: &'a Policy, args: &'a [std::ffi::OsString]) -> Launch<'a> {
    Launch {
        serve: None,
        program: "/bin/sh".as_ref(),
        arg0: None,
        args,
        env: &[],
        cwd: None,
        policy,
        stdio: [-1; 3],
        extra_fds: &[],
        guest: false,
    }
}

#[test]
fn spec_shares_the_system_and_rewrites_binds() {
    let dir = std::env::temp_dir().join(format!("sandbox-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    let policy = Policy::default()
        .bind(&dir, "/data")
        .ro_bind(dir.join("f"), "/in/f")
        .tmpfs("/scratch");
    let args = vec!["-c".into(), "true".into()];
    let (spec, shares) = guest_spec(&launch(&policy, &args), ShareFs::NineP, None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        shares
            .iter()
            .any(|s| s.path == Path::new("/usr") && s.readonly)
    );
    assert!(
        shares
            .iter()
            .any(|s| s.path == Path::new("/etc") && s.readonly)
    );
    assert!(
        shares
            .iter()
            .any(|s| s.tag == "b0" && s.path == dir && !s.readonly)
    );
    assert!(
        shares
            .iter()
            .any(|s| s.tag == "b1" && s.path == dir && s.readonly)
    );
    assert_eq!(
        spec.policy.mounts[0],
        Mount::Bind {
            src: "/run/sandbox/share/0".into(),
            dst: "/data".into()
        }
    );
    assert_eq!(
        spec.policy.mounts[1],
        Mount::RoBind {
            src: "/run/sandbox/share/1/f".into(),
            dst: "/in/f".into()
        }
    );
    assert!(matches!(spec.policy.mounts[2], Mount::Tmpfs { .. }));
    assert_eq!(spec.args, ["-c", "true"]);
    if std::fs::symlink_metadata("/bin").is_ok_and(|m| m.file_type().is_symlink()) {
        assert!(spec.links.iter().any(|l| l.path == Path::new("/bin")));
    }
}
