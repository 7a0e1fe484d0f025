//! An image made by a real tool, Debian's umoci, rather than by this test's own builder.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use testkit::{TempDir, text};

use super::{Store, bin, build, installed, ok};

/// umoci with `args`, asserting that it succeeds.
fn umoci(args: &[&str]) {
    let out = Command::new("umoci")
        .args(args)
        .current_dir("/")
        .output()
        .expect("umoci runs");
    assert!(
        out.status.success(),
        "umoci {args:?}: {}",
        text(&out.stderr)
    );
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// umoci makes an OCI layout: a new image, busybox and a file unpacked into its bundle and repacked as a
/// layer, a Cmd set with `umoci config`. It imports, with that Cmd and umoci's config digest as its id.
#[test]
fn an_image_made_by_umoci_imports() {
    if !installed("/usr/bin/umoci", "umoci") {
        eprintln!("SKIPPED: umoci is missing and only root can install it (apt-get install umoci)");
        return;
    }
    let work = TempDir::new("image-umoci");
    let layout = work.join("layout");
    let (layout_arg, bundle) = (layout.to_str().unwrap(), work.join("bundle"));
    let image = format!("{layout_arg}:t");
    umoci(&["init", "--layout", layout_arg]);
    umoci(&["new", "--image", &image]);
    let mut unpack = vec!["unpack", "--image", &image, bundle.to_str().unwrap()];
    if !testkit::is_root() {
        unpack.insert(1, "--rootless");
    }
    umoci(&unpack);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("bin/busybox"), build::busybox()).unwrap();
    std::fs::set_permissions(
        rootfs.join("bin/busybox"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/made-by"), "umoci\n").unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(
        rootfs.join("etc/os-release"),
        "NAME=\"Made by umoci\"\nID=umoci-made\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1234:1234::/work:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nbuilder:x:1234:\n").unwrap();
    std::fs::create_dir_all(rootfs.join("work")).unwrap();
    umoci(&["repack", "--image", &image, bundle.to_str().unwrap()]);
    let cmd = ["/bin/busybox", "echo", "made by umoci"];
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        cmd[0],
        "--config.cmd",
        cmd[1],
        "--config.cmd",
        cmd[2],
        "--config.user",
        "builder",
        "--config.workingdir",
        "/work",
        "--config.env",
        "MADE_WITH=umoci",
    ]);

    // umoci's own answer: the manifest tagged `t` and its config.
    let index = read_json(&layout.join("index.json"));
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    let blob = |d: &Value| {
        layout
            .join("blobs/sha256")
            .join(build::hex(d.as_str().unwrap()))
    };
    let manifest = read_json(&blob(&listed[0]["digest"]));
    let id = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config = read_json(&blob(&manifest["config"]["digest"]));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap().clone();
    assert_eq!(diff_ids.len(), 1, "one repack, one layer: {config}");

    let store = Store::new("image-store");
    store.import_ok(&layout, &["--name", "umoci-made:1"], "umoci-made:1", &id);
    let r = store.inspect("umoci-made:1");
    assert_eq!(r["config"]["cmd"], json!(cmd), "{r}");
    assert_eq!(r["id"], json!(id), "{r}");
    assert_eq!(
        (&r["architecture"], &r["os"]),
        (&json!("amd64"), &json!("linux"))
    );
    assert_eq!(r["layers"][0]["diff_id"], diff_ids[0], "{r}");
    let tree = store.tree(diff_ids[0].as_str().unwrap());
    assert!(std::fs::read(tree.join("bin/busybox")).unwrap() == build::busybox());
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/made-by")).unwrap(),
        "umoci\n"
    );
    assert_eq!(store.layer_dirs().len(), 1);

    // And it runs: the image's files, user, working directory and environment; its Cmd without arguments.
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(["run", "--backend", "namespace", "--store"])
            .arg(store.path())
            .args(["--image", "umoci-made:1"])
            .args(args)
            .current_dir("/")
            .output()
            .unwrap()
    };
    let out = run(&["--", "/bin/sh", "-c", "cat /etc/os-release; id; pwd; env"]);
    let shown = ok(&out, "run --image umoci-made:1");
    for want in [
        "ID=umoci-made\n",
        "uid=1234(builder) gid=1234(builder)",
        "\n/work\n",
        "MADE_WITH=umoci\n",
    ] {
        assert!(shown.contains(want), "{want:?} not in {shown}");
    }
    assert_eq!(ok(&run(&[]), "the image's Cmd"), "made by umoci\n");
}

/// The test's own builder makes layouts that umoci reads: unpacked by umoci, the demo image is busybox with
/// its second layer's whiteouts and opaque directory applied (a check of the builder, not of the store).
#[test]
fn umoci_unpacks_the_builders_demo_image() {
    if !installed("/usr/bin/umoci", "umoci") {
        eprintln!("SKIPPED: umoci is missing and only root can install it (apt-get install umoci)");
        return;
    }
    let work = TempDir::new("image-umoci-builder");
    let layout = work.join("layout");
    let mut image = build::demo(build::Compression::Gzip);
    image.ref_name = Some("demo".into());
    image.write_oci(&layout);
    let bundle = work.join("bundle");
    let image = format!("{}:demo", layout.to_str().unwrap());
    let mut unpack = vec!["unpack", "--image", &image, bundle.to_str().unwrap()];
    if !testkit::is_root() {
        unpack.insert(1, "--rootless");
    }
    umoci(&unpack);
    let rootfs = bundle.join("rootfs");
    assert!(std::fs::read(rootfs.join("bin/busybox")).unwrap() == build::busybox());
    assert_eq!(
        std::fs::read(rootfs.join("bin/ls")).unwrap().len(),
        build::busybox().len()
    );
    for gone in ["etc/removed", "old", "opaque/hidden"] {
        assert!(
            std::fs::symlink_metadata(rootfs.join(gone)).is_err(),
            "{gone}"
        );
    }
    for here in [
        "opaque/fresh",
        "app/hello.sh",
        "etc/passwd",
        "home/app/profile",
    ] {
        assert!(rootfs.join(here).is_file(), "{here}");
    }
}
