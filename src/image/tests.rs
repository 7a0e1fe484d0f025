//! Unit tests of the layer applier and the store's names.

use super::*;

#[test]
fn references() {
    let r = Reference::parse("busybox").unwrap();
    assert_eq!((r.name.as_str(), r.tag.as_str()), ("busybox", "latest"));
    let r = Reference::parse("localhost:5000/app/web:1.2").unwrap();
    assert_eq!(
        (r.name.as_str(), r.tag.as_str()),
        ("localhost:5000/app/web", "1.2")
    );
    for bad in [
        "", ":x", "a:", "../x", "a//b", "a b", "a:t/x/", "-a", "a:.t", "/abs",
    ] {
        assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn docker_hub_names_are_shortened() {
    assert_eq!(
        Reference::parse("docker.io/library/busybox:1")
            .unwrap()
            .to_string(),
        "busybox:1"
    );
    assert_eq!(
        Reference::parse("docker.io/dock/img:2")
            .unwrap()
            .to_string(),
        "dock/img:2"
    );
}

mod apply {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    use crate::image::layer::{self, Bounds};

    /// A tar entry written raw, so that hostile paths (`..`, absolute) get through the builder.
    fn entry(
        tar: &mut Vec<u8>,
        path: &[u8],
        kind: tar::EntryType,
        data: &[u8],
        link: &[u8],
        mode: u32,
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }

    fn file(tar: &mut Vec<u8>, path: &str, data: &[u8]) {
        entry(
            tar,
            path.as_bytes(),
            tar::EntryType::Regular,
            data,
            b"",
            0o644,
        );
    }

    fn finish(mut tar: Vec<u8>) -> Vec<u8> {
        tar.extend_from_slice(&[0; 1024]);
        tar
    }

    const BOUNDS: Bounds = Bounds {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };

    fn run(tar: Vec<u8>) -> (testkit::TempDir, Result<layer::Applied, layer::Failed>) {
        let dir = testkit::TempDir::new("layer");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let r = layer::apply(&finish(tar)[..], &root, BOUNDS, false);
        (dir, r)
    }

    fn refused(tar: Vec<u8>, path: &str, why: &str) {
        let (dir, r) = run(tar);
        let f = r.expect_err("applied");
        assert_eq!(f.path, path);
        assert!(f.error.to_string().contains(why), "{path}: {}", f.error);
        // Nothing outside the layer's directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["root"]);
    }

    #[test]
    fn whiteouts_opaque_directories_and_set_id_bits() {
        let mut t = Vec::new();
        entry(&mut t, b"bin/", tar::EntryType::Directory, b"", b"", 0o755);
        entry(
            &mut t,
            b"bin/su",
            tar::EntryType::Regular,
            b"x",
            b"",
            0o4755,
        );
        file(&mut t, "etc/.wh.passwd", b"");
        file(&mut t, "var/cache/.wh..wh..opq", b"");
        entry(
            &mut t,
            b"bin/sh",
            tar::EntryType::Symlink,
            b"",
            b"busybox",
            0o777,
        );
        entry(
            &mut t,
            b"bin/su2",
            tar::EntryType::Link,
            b"",
            b"bin/su",
            0o755,
        );
        let (dir, r) = run(t);
        let applied = r.unwrap();
        assert_eq!(applied.setid_cleared, 1);
        let root = dir.path().join("root");
        let su = std::fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o755);
        assert_eq!(su.nlink(), 2);
        let wh = std::fs::symlink_metadata(root.join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        let opq = xattr::get(root.join("var/cache"), layer::OPAQUE_XATTR).unwrap();
        assert_eq!(opq.as_deref(), Some(&b"y"[..]));
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
    }

    #[test]
    fn hostile_entries_are_refused() {
        let mut t = Vec::new();
        file(&mut t, "../escape", b"x");
        refused(t, "../escape", "`..`");

        let mut t = Vec::new();
        file(&mut t, "/etc/escape", b"x");
        refused(t, "/etc/escape", "absolute");

        let mut t = Vec::new();
        entry(
            &mut t,
            b"link",
            tar::EntryType::Symlink,
            b"",
            b"/tmp",
            0o777,
        );
        file(&mut t, "link/escape", b"x");
        refused(t, "link/escape", "through a symlink");

        for target in [&b"../../etc/passwd"[..], b"/etc/passwd", b"missing"] {
            let mut t = Vec::new();
            entry(&mut t, b"hard", tar::EntryType::Link, b"", target, 0o644);
            refused(t, "hard", "hard link");
        }

        let mut t = Vec::new();
        entry(&mut t, b"dev/sda", tar::EntryType::Block, b"", b"", 0o600);
        refused(t, "dev/sda", "device node");

        let mut t = Vec::new();
        file(&mut t, "a", b"1");
        file(&mut t, "a", b"2");
        refused(t, "a", "second entry");

        for (wh, why) in [
            ("./.wh..", "whiteout of the root"),
            (".wh.", "whiteout of the root"),
            ("x/.wh..wh.x", "reserved"),
        ] {
            let mut t = Vec::new();
            file(&mut t, wh, b"");
            refused(t, wh, why);
        }
    }

    #[test]
    fn bounds_hold() {
        let mut t = Vec::new();
        file(&mut t, "big", &vec![0; (BOUNDS.max_bytes + 1) as usize]);
        refused(t, "big", "larger than");
        let mut t = Vec::new();
        for i in 0..=BOUNDS.max_entries {
            file(&mut t, &format!("f{i}"), b"");
        }
        refused(t, &format!("f{}", BOUNDS.max_entries), "more entries");
        // A truncated stream is an error, not a short file.
        let mut t = Vec::new();
        file(&mut t, "cut", &[7; 4096]);
        t.truncate(1024);
        let dir = testkit::TempDir::new("layer");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut r = &t[..];
        assert!(layer::apply((&mut r).take(u64::MAX), &root, BOUNDS, false).is_err());
    }
}
