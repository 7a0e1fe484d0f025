//! `sandbox image`: importing OCI image layouts and `docker save` archives into a store, `ls`, `inspect`, `rm`
//! and `prune`, and the layer trees the store keeps. The images are built here ([`build`]); hostile ones are
//! in [`hostile`], store operations (rm, prune, concurrent and unprivileged imports) in [`store`], an image
//! made by Debian's umoci in [`umoci`], a session on an image (`sandbox create --image`) in [`session`].

mod build;
mod hostile;
mod run;
mod session;
mod store;
mod umoci;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use serde_json::{Value, json};
use testkit::{TempDir, text};

use build::{Compression, Written};

/// The CLI under test: `SANDBOX_BIN` when the binary was staged elsewhere (unprivileged CI runs), else cargo's.
fn bin() -> PathBuf {
    testkit::binary("SANDBOX_BIN", env!("CARGO_BIN_EXE_sandbox"))
}

/// Whether `path` exists, after installing the Debian `package` that brings it when it is missing and this
/// user is root (as scripts/test.sh does). One installation at a time: the tests run in parallel.
fn installed(path: &str, package: &str) -> bool {
    static APT: Mutex<()> = Mutex::new(());
    let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
    if Path::new(path).exists() || !testkit::is_root() {
        return Path::new(path).exists();
    }
    let out = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .expect("apt-get runs");
    eprintln!(
        "apt-get install {package}: {}{}",
        out.status,
        text(&out.stderr)
    );
    Path::new(path).exists()
}

/// Asserts that the CLI succeeded; its stdout.
fn ok(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout {:?}, stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// An image store in a fresh directory. Dropping it makes its directories writable again before they are
/// removed, should the importer have left read-only ones (an unprivileged test run could not remove them).
struct Store {
    dir: TempDir,
}

impl Store {
    fn new(tag: &str) -> Store {
        Store {
            dir: TempDir::with_mode(tag, 0o755),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `sandbox image --store DIR ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("image")
            .arg("--store")
            .arg(self.path())
            .args(args)
            .current_dir("/")
            .output()
            .expect("the CLI runs")
    }

    fn import(&self, from: &Path, args: &[&str]) -> Output {
        let mut all = vec!["import", from.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Imports and checks the one line of stdout: `NAME:TAG <id>`.
    fn import_ok(&self, from: &Path, args: &[&str], name_tag: &str, id: &str) {
        let out = ok(
            &self.import(from, args),
            &format!("import {from:?} {args:?}"),
        );
        assert_eq!(out, format!("{name_tag} {id}\n"));
    }

    /// `ls --json`.
    fn ls(&self) -> Vec<Value> {
        let out = ok(&self.run(&["ls", "--json"]), "ls --json");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ls --json: {e}: {out}"))
    }

    /// `NAME:TAG` of every image listed.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ls()
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i["name"].as_str().unwrap(),
                    i["tag"].as_str().unwrap()
                )
            })
            .collect();
        names.sort();
        names
    }

    fn inspect(&self, name: &str) -> Value {
        let out = ok(&self.run(&["inspect", name]), &format!("inspect {name}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect: {e}: {out}"))
    }

    /// The names of the directories in `layers/sha256/` (the `.lock` files beside them left out).
    fn layer_dirs(&self) -> BTreeSet<String> {
        let Ok(dir) = std::fs::read_dir(self.path().join("layers/sha256")) else {
            return BTreeSet::new();
        };
        dir.map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The unpacked tree of the layer with this diff_id.
    fn tree(&self, diff_id: &str) -> PathBuf {
        self.path()
            .join("layers/sha256")
            .join(build::hex(diff_id))
            .join("root")
    }

    /// What `tmp/` holds (nothing when no import runs).
    fn tmp(&self) -> Vec<PathBuf> {
        walk(&self.path().join("tmp"))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        for p in walk(self.path()) {
            if let Ok(m) = std::fs::symlink_metadata(&p)
                && m.is_dir()
                && m.uid() == me
            {
                let mode = m.permissions().mode() | 0o700;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
            }
        }
    }
}

/// Every path under `root`, symlinks not followed, sorted (`root` itself left out; nothing when it is missing).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
            found.push(e.path());
        }
    }
    found.sort();
    found
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The value of the extended attribute `name` of `path` (not following a symlink), if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and outlive the call; the buffer's length is the one passed.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(len).ok().map(|len| buf[..len].to_vec())
}

/// The demo image's two layer trees in `store` hold what its layers say. `owner`: the uid every file must
/// have (an unprivileged importer's), or None for a root importer, who keeps the tar headers' ids.
fn check_demo_trees(store: &Store, w: &Written, owner: Option<u32>) {
    let (base, top) = (store.tree(&w.diff_ids[0]), store.tree(&w.diff_ids[1]));
    let busybox = build::busybox();
    let bb = base.join("bin/busybox");
    assert!(std::fs::read(&bb).unwrap() == busybox, "{}", bb.display());
    assert_eq!(meta(&bb).mode() & 0o7777, 0o755);
    let out = Command::new(&bb).args(["echo", "busybox runs"]).output();
    assert_eq!(text(&out.unwrap().stdout), "busybox runs\n");
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(meta(&base.join("bin/ls")).len(), busybox.len() as u64);
    let passwd = std::fs::read_to_string(base.join("etc/passwd")).unwrap();
    assert!(passwd.contains("\napp:x:1000:1000:"), "{passwd}");
    let release = std::fs::read_to_string(base.join("etc/os-release")).unwrap();
    assert!(release.contains("ID=sandkasten-test\n"), "{release}");
    for tool in ["setuid-tool", "setgid-tool"] {
        let mode = meta(&base.join("usr/local/bin").join(tool)).mode() & 0o7777;
        assert_eq!(mode, 0o755, "{tool}: a set-id bit is kept ({mode:o})");
    }
    // The first layer is its own tree: what the second removes or hides is still there.
    for kept in ["etc/removed", "old/a", "opaque/hidden"] {
        assert!(meta(&base.join(kept)).is_file(), "{kept}");
    }

    for whiteout in ["etc/removed", "old"] {
        let m = meta(&top.join(whiteout));
        assert!(
            m.file_type().is_char_device() && m.rdev() == 0,
            "{whiteout}: not a 0:0 character device: {m:?}"
        );
    }
    let opaque = top.join("opaque");
    assert!(meta(&opaque).is_dir());
    assert_eq!(
        xattr(&opaque, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        std::fs::read_to_string(opaque.join("fresh")).unwrap(),
        "fresh in the second layer\n"
    );
    assert_eq!(meta(&top.join("app/hello.sh")).mode() & 0o7777, 0o755);
    let all: Vec<PathBuf> = walk(&base).into_iter().chain(walk(&top)).collect();
    for p in &all {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(
            !name.starts_with(".wh."),
            "a tar whiteout left as is: {p:?}"
        );
    }
    match owner {
        None => {
            for (p, id) in [("home/app", 1000), ("home/app/profile", 1000), ("bin", 0)] {
                let m = meta(&base.join(p));
                assert_eq!((m.uid(), m.gid()), (id, id), "{p}");
            }
        }
        Some(uid) => {
            for p in all.iter().chain([&base, &top]) {
                assert_eq!(meta(p).uid(), uid, "{p:?}");
            }
        }
    }
}

/// `ls --json` lists `name:tag` as the image `w` with two layers.
fn check_listed(store: &Store, name: &str, tag: &str, w: &Written) {
    let ls = store.ls();
    let image = ls
        .iter()
        .find(|i| i["name"] == name && i["tag"] == tag)
        .unwrap_or_else(|| panic!("{name}:{tag} not listed: {ls:?}"));
    assert_eq!(image["id"], json!(w.id), "{image}");
    if !w.manifest.is_empty() {
        assert_eq!(image["manifest"], json!(w.manifest), "{image}");
    }
    assert_eq!(image["layers"], json!(w.diff_ids.len()), "{image}");
    let size = image["size"].as_u64().unwrap_or_else(|| panic!("{image}"));
    let tars: u64 = w.tar_sizes.iter().sum();
    let busybox = build::busybox().len() as u64;
    assert!(
        (busybox..=2 * tars).contains(&size),
        "{image}: the tars hold {tars} bytes"
    );
}

/// `inspect name:tag` shows the image `w` with the demo config.
fn check_inspected(store: &Store, name: &str, tag: &str, w: &Written) {
    let r = store.inspect(&format!("{name}:{tag}"));
    assert_eq!((&r["name"], &r["tag"]), (&json!(name), &json!(tag)), "{r}");
    assert_eq!(r["id"], json!(w.id), "{r}");
    if !w.manifest.is_empty() {
        assert_eq!(r["manifest"], json!(w.manifest), "{r}");
    }
    assert_eq!(
        (&r["architecture"], &r["os"]),
        (&json!("amd64"), &json!("linux"))
    );
    let layers = r["layers"].as_array().unwrap_or_else(|| panic!("{r}"));
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["diff_id"]).collect();
    assert_eq!(json!(diff_ids), json!(w.diff_ids), "{r}");
    let base = layers[0]["size"].as_u64().unwrap_or(0);
    assert!(base >= build::busybox().len() as u64, "{r}");
    assert!(layers[1]["size"].as_u64().is_some_and(|s| s > 0), "{r}");
    assert_eq!(
        r["config"],
        json!({
            "env": ["PATH=/usr/local/bin:/bin", "GREETING=hello from the image"],
            "entrypoint": ["/bin/sh", "-c"],
            "cmd": ["echo $GREETING"],
            "working_dir": "/app",
            "user": "app",
        })
    );
}

/// The owner the layer trees must have when this user imports: None for root (the tar's ids are kept).
fn importer() -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    (!testkit::is_root()).then(|| unsafe { libc::geteuid() })
}

/// The two-layer demo image in each compression (and under docker's media types) imports into a store of
/// its own: the line printed, `ls --json`, `inspect` and the layer trees.
#[test]
fn each_compression_imports_with_its_config_and_layer_trees() {
    let work = TempDir::new("image-compressions");
    for c in Compression::ALL {
        let layout = work.join(c.tag());
        let w = build::demo(c).write_oci(&layout);
        let store = Store::new("image-store");
        let name = format!("demo:{}", c.tag());
        store.import_ok(&layout, &["--name", &name], &name, &w.id);
        assert_eq!(store.names(), [name]);
        check_listed(&store, "demo", c.tag(), &w);
        check_inspected(&store, "demo", c.tag(), &w);
        let want: BTreeSet<String> = w.diff_ids.iter().map(|d| build::hex(d).into()).collect();
        assert_eq!(store.layer_dirs(), want, "{c:?}");
        check_demo_trees(&store, &w, importer());
        assert_eq!(store.tmp(), Vec::<PathBuf>::new(), "{c:?}");
    }
}

/// Without `--name`: the index's ref.name annotation or the archive's RepoTags; `--name` without a tag is
/// `:latest`; of an index listing linux/arm64 before linux/amd64, amd64 is imported.
#[test]
fn the_name_comes_from_the_image_or_the_flag_and_amd64_is_chosen() {
    let work = TempDir::new("image-names");
    let store = Store::new("image-store");
    let mut image = build::demo(Compression::Gzip);
    image.ref_name = Some("annotated:1.0".into());
    image.architectures = vec!["arm64", "amd64"];
    let layout = work.join("layout");
    let w = image.write_oci(&layout);
    store.import_ok(&layout, &[], "annotated:1.0", &w.id);
    check_inspected(&store, "annotated", "1.0", &w);
    store.import_ok(&layout, &["--name", "flagged"], "flagged:latest", &w.id);
    assert_eq!(store.inspect("flagged")["tag"], "latest");

    let archive = work.join("docker.tar");
    let d = build::demo(Compression::Plain).write_docker(&archive, "docker-tagged:2");
    store.import_ok(&archive, &[], "docker-tagged:2", &d.id);
    assert_eq!(
        store.names(),
        ["annotated:1.0", "docker-tagged:2", "flagged:latest"]
    );
    assert_eq!(store.layer_dirs().len(), 2);
}

/// The `docker save` archive of the demo image imports as the same image (same id, same diff_ids) and adds
/// no layer directory to a store that has its OCI twin.
#[test]
fn a_docker_save_archive_shares_the_layers_of_the_oci_image() {
    let work = TempDir::new("image-docker");
    let store = Store::new("image-store");
    let layout = work.join("layout");
    let oci = build::demo(Compression::Gzip).write_oci(&layout);
    store.import_ok(&layout, &["--name", "oci:1"], "oci:1", &oci.id);
    let layers = store.layer_dirs();
    assert_eq!(layers.len(), 2);

    let archive = work.join("demo.tar");
    let docker = build::demo(Compression::Plain).write_docker(&archive, "docker:1");
    assert_eq!((&docker.id, &docker.diff_ids), (&oci.id, &oci.diff_ids));
    store.import_ok(&archive, &[], "docker:1", &docker.id);
    assert_eq!(store.layer_dirs(), layers, "the second import added layers");
    check_listed(&store, "docker", "1", &docker);
    check_inspected(&store, "docker", "1", &docker);
    check_listed(&store, "oci", "1", &oci);
    check_demo_trees(&store, &docker, importer());
    assert_eq!(store.tmp(), Vec::<PathBuf>::new());
}
