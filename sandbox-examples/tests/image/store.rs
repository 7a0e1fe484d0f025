//! The store over several commands: `rm` and `prune`, concurrent imports, an unprivileged importer.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use testkit::{TempDir, text};

use super::build::{self, Compression, Entry, Image, Layer};
use super::{Store, bin, check_demo_trees, ok};

/// `prune` removes `n` layers, and says so in one line that starts `removed N layers` (the CLI adds the bytes
/// freed and the leftovers of interrupted imports it removed, in parentheses and after a comma).
fn prune(store: &Store, n: usize) {
    let out = ok(&store.run(&["prune"]), "prune");
    let want = format!("removed {n} layers");
    assert!(
        out.lines().count() == 1
            && out
                .strip_prefix(&want)
                .is_some_and(|rest| rest == "\n" || rest.starts_with(' ')),
        "prune: {out:?}, wanted {want:?}"
    );
}

/// Two images sharing the demo's base layer: removing one and pruning removes only its own top layer;
/// removing what is not there fails with 125.
#[test]
fn rm_and_prune_keep_the_layers_still_in_use() {
    let work = TempDir::new("image-prune");
    let store = Store::new("image-store");
    let first = build::demo(Compression::Gzip).write_oci(&work.join("first"));
    let second = Image::new(vec![
        Layer::new(Compression::Gzip, build::base_layer()),
        Layer::new(
            Compression::Gzip,
            vec![Entry::dir("srv"), Entry::file("srv/second", "second\n")],
        ),
    ])
    .write_oci(&work.join("second"));
    assert_eq!(first.diff_ids[0], second.diff_ids[0]);
    store.import_ok(
        &work.join("first"),
        &["--name", "first"],
        "first:latest",
        &first.id,
    );
    store.import_ok(
        &work.join("second"),
        &["--name", "second:2"],
        "second:2",
        &second.id,
    );
    let dirs = |w: &[&build::Written]| -> BTreeSet<String> {
        w.iter()
            .flat_map(|w| w.diff_ids.iter().map(|d| build::hex(d).to_string()))
            .collect()
    };
    assert_eq!(store.layer_dirs(), dirs(&[&first, &second]));

    ok(&store.run(&["rm", "first"]), "rm first");
    assert_eq!(store.names(), ["second:2"]);
    prune(&store, 1);
    assert_eq!(store.layer_dirs(), dirs(&[&second]));
    let bb = store.tree(&second.diff_ids[0]).join("bin/busybox");
    let out = Command::new(&bb)
        .args(["echo", "still here"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "still here\n");
    prune(&store, 0);

    for missing in ["first", "first:latest", "second:1", "never-imported:x"] {
        let out = store.run(&["rm", missing]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "rm {missing}: {err}");
        assert!(err.starts_with("sandbox: "), "rm {missing}: {err}");
        assert!(err.contains(missing), "rm {missing}: {err}");
    }
    assert!(!store.run(&["inspect", "first"]).status.success());
    assert_eq!(store.names(), ["second:2"]);

    ok(&store.run(&["rm", "second:2"]), "rm second:2");
    prune(&store, 2);
    assert_eq!(store.layer_dirs(), BTreeSet::new());
    assert!(store.ls().is_empty());
    assert_eq!(store.tmp(), Vec::<PathBuf>::new());
}

/// Four processes importing the same image into one store at once all succeed, print the same line, and
/// leave one directory per layer.
#[test]
fn concurrent_imports_share_one_tree_per_layer() {
    let work = TempDir::new("image-concurrent");
    let store = Store::new("image-store");
    let layout = work.join("layout");
    let w = build::demo(Compression::Zstd).write_oci(&layout);
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(bin())
                .arg("image")
                .arg("--store")
                .arg(store.path())
                .arg("import")
                .arg(&layout)
                .args(["--name", "same:1"])
                .current_dir("/")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the CLI starts")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            ok(&out, &format!("import {i}")),
            format!("same:1 {}\n", w.id)
        );
    }
    let want: BTreeSet<String> = w.diff_ids.iter().map(|d| build::hex(d).into()).collect();
    assert_eq!(store.layer_dirs(), want);
    assert_eq!(store.names(), ["same:1"]);
    assert_eq!(store.tmp(), Vec::<PathBuf>::new());
    check_demo_trees(&store, &w, super::importer());
}

/// An unprivileged importer (uid 65534: staged through setpriv when the tests run as root, else the user
/// running them) imports into a store it owns: every file of the trees is its own, whiteouts and the opaque
/// xattr included.
#[test]
fn an_unprivileged_importer_owns_every_file() {
    let work = TempDir::new("image-unprivileged");
    let layout = work.join("layout");
    let w = build::demo(Compression::Gzip).write_oci(&layout);
    let store = Store::new("image-store");
    let (uid, out) = if testkit::is_root() {
        // The binary where uid 65534 can read and execute it (cargo's target dir may not be).
        let stage = TempDir::with_mode("image-stage", 0o755);
        let staged = stage.join("sandbox");
        std::fs::copy(bin(), &staged).unwrap();
        std::os::unix::fs::chown(store.path(), Some(65534), Some(65534)).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&staged)
            .arg("image")
            .arg("--store")
            .arg(store.path())
            .arg("import")
            .arg(&layout)
            .args(["--name", "unprivileged:1"])
            .current_dir("/")
            .output()
            .expect("setpriv runs");
        (65534, out)
    } else {
        let me = super::importer().unwrap();
        (me, store.import(&layout, &["--name", "unprivileged:1"]))
    };
    assert_eq!(
        ok(&out, "unprivileged import"),
        format!("unprivileged:1 {}\n", w.id)
    );
    check_demo_trees(&store, &w, Some(uid));
    assert_eq!(store.names(), ["unprivileged:1"]);
    assert_eq!(store.tmp(), Vec::<PathBuf>::new());
}
