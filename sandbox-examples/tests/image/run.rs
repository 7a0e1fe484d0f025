//! `sandbox run --image` and `--rootfs` on the namespace backend: the image's files (whiteouts and opaque
//! directories applied by overlayfs), its user, working directory, environment and command; the writable
//! layer (discarded, or kept with `--rootfs-upper`); a directory as the root; the image's layers held while a
//! run uses them; and what a root must never give the program (set-ID bits, device nodes, the host's files).
//! Each case runs as the user running the tests, and, when that is root, again as uid 65534 with a store of
//! its own (the unprivileged path: no id-mapped mounts, the caller's own files).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use testkit::{TempDir, text};

use super::build::{self, Compression, Entry, Image, Layer, Written};
use super::{Store, bin, ok};

/// Who runs the CLI: this user, or uid 65534 through setpriv with a staged copy of the binary.
struct Caller {
    nobody: bool,
    /// The staged binary (for uid 65534) and the directory that holds it.
    stage: Option<(TempDir, PathBuf)>,
}

impl Caller {
    fn me() -> Caller {
        Caller {
            nobody: false,
            stage: None,
        }
    }

    /// uid 65534, when the tests run as root (else `None`: the suite's unprivileged pass is this user).
    fn nobody() -> Option<Caller> {
        if !testkit::is_root() {
            return None;
        }
        let stage = TempDir::with_mode("image-run-stage", 0o755);
        let staged = stage.join("sandbox");
        std::fs::copy(bin(), &staged).unwrap();
        Some(Caller {
            nobody: true,
            stage: Some((stage, staged)),
        })
    }

    /// The CLI, run from `/` (which every user may enter).
    fn command(&self) -> Command {
        let mut c = match &self.stage {
            Some((_, staged)) if self.nobody => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(staged);
                c
            }
            _ => Command::new(bin()),
        };
        c.current_dir("/");
        c
    }

    /// A store this caller owns, with `image` imported as `name`.
    fn store_with(&self, image: &Path, name: &str, id: &str) -> Store {
        let store = Store::new("image-run-store");
        if self.nobody {
            std::os::unix::fs::chown(store.path(), Some(65534), Some(65534)).unwrap();
        }
        let out = self
            .command()
            .arg("image")
            .arg("--store")
            .arg(store.path())
            .arg("import")
            .arg(image)
            .args(["--name", name])
            .output()
            .unwrap();
        assert_eq!(ok(&out, "import"), format!("{name} {id}\n"));
        store
    }

    /// `sandbox run --backend namespace --store STORE ARGS` (another backend when ARGS name one), with the
    /// verdict written to `report`.
    fn run(&self, store: &Store, report: &Path, args: &[&str]) -> Output {
        let mut c = self.command();
        c.arg("run");
        if !args.contains(&"--backend") {
            c.args(["--backend", "namespace"]);
        }
        if args.contains(&"--image") {
            c.arg("--store").arg(store.path());
        }
        c.arg("--report")
            .arg(report)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn who(&self) -> &'static str {
        if self.nobody {
            "uid 65534"
        } else {
            "this user"
        }
    }
}

/// A directory uid 65534 may write into (for the verdicts).
fn scratch(tag: &str) -> TempDir {
    TempDir::new(tag)
}

/// A directory root at `root` with these directories and an executable `/bin/busybox`.
fn busybox_root(root: &Path, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("bin/busybox"), build::busybox()).unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The demo image: `sandbox run --image demo:1 -- 'SCRIPT'` (its Entrypoint is `/bin/sh -c`) shows the
/// image's files, user, working directory and environment; without arguments, its Cmd runs.
fn the_demo_image_runs_as_its_config_says(caller: &Caller) {
    let work = scratch("image-run-demo");
    let w = build::demo(Compression::Gzip).write_oci(&work.join("layout"));
    let store = caller.store_with(&work.join("layout"), "demo:1", &w.id);
    let verdict = work.join("verdict.json");
    let who = caller.who();

    let script = "busybox cat /etc/os-release; busybox id; pwd; busybox env | busybox sort; \
                  for p in /etc/removed /old /opaque/hidden /opaque/fresh /app/hello.sh; do \
                  [ -e $p ] && echo present $p || echo absent $p; done; \
                  busybox stat -c '%a %n' /usr/local/bin/setuid-tool /usr/local/bin/setgid-tool; \
                  echo scratch > /home/app/note && busybox cat /home/app/note";
    let out = caller.run(&store, &verdict, &["--image", "demo:1", "--", script]);
    let stdout = ok(&out, &format!("{who}: run --image demo:1"));
    for want in [
        "ID=sandkasten-test\n",
        "uid=1000(app) gid=1000(app)",
        "\n/app\n",
        "GREETING=hello from the image\n",
        "PATH=/usr/local/bin:/bin\n",
        "absent /etc/removed\n",
        "absent /old\n",
        "absent /opaque/hidden\n",
        "present /opaque/fresh\n",
        "present /app/hello.sh\n",
        "755 /usr/local/bin/setuid-tool\n",
        "755 /usr/local/bin/setgid-tool\n",
        "scratch\n",
    ] {
        assert!(
            stdout.contains(want),
            "{who}: {want:?} missing in:\n{stdout}"
        );
    }
    let r = report(&verdict);
    let root = &r["enforced"]["rootfs"];
    assert_eq!(root["source"], "image demo:1", "{who}: {r}");
    assert_eq!(root["image_id"], w.id.as_str(), "{who}: {r}");
    assert_eq!(root["image_digest"], w.manifest.as_str(), "{who}: {r}");
    assert_eq!(root["user"], "app (1000:1000)", "{who}: {r}");
    assert_eq!(
        root["idmapped"],
        !caller.nobody && testkit::is_root(),
        "{who}: {r}"
    );
    assert_eq!(
        root["writable"], "overlay on a tmpfs (discarded)",
        "{who}: {r}"
    );

    // The image's Cmd, as the image's user.
    let out = caller.run(&store, &verdict, &["--image", "demo:1"]);
    assert_eq!(ok(&out, "the image's Cmd"), "hello from the image\n");

    // Root inside (names resolved in the image): writes land in the discarded layer, never in the store.
    let passwd = store.tree(&w.diff_ids[0]).join("etc/passwd");
    let before = std::fs::read(&passwd).unwrap();
    let out = caller.run(
        &store,
        &verdict,
        &[
            "--image",
            "demo:1",
            "--user",
            "root",
            "--",
            "echo intruder:x:0:0::/:/bin/sh >> /etc/passwd && busybox rm /bin/ls && busybox id -u && \
             busybox tail -n 1 /etc/passwd && [ ! -e /bin/ls ] && echo removed",
        ],
    );
    assert_eq!(
        ok(&out, "writes as root inside"),
        "0\nintruder:x:0:0::/:/bin/sh\nremoved\n"
    );
    assert_eq!(
        std::fs::read(&passwd).unwrap(),
        before,
        "{who}: a layer changed"
    );
    let out = caller.run(
        &store,
        &verdict,
        &[
            "--image",
            "demo:1",
            "--",
            "busybox tail -n 1 /etc/passwd; [ -e /bin/ls ] && echo back",
        ],
    );
    assert_eq!(
        ok(&out, "the next run"),
        "app:x:1000:1000:app:/home/app:/bin/sh\nback\n"
    );
}

#[test]
fn the_demo_image_runs_with_its_files_user_directory_and_environment() {
    the_demo_image_runs_as_its_config_says(&Caller::me());
}

#[test]
fn the_demo_image_runs_for_an_unprivileged_caller() {
    match Caller::nobody() {
        Some(c) => the_demo_image_runs_as_its_config_says(&c),
        None => eprintln!("not root: the test above is the unprivileged case"),
    }
}

/// `--rootfs-upper DIR` keeps the writable layer: a second run sees the first one's files; the store's
/// layers never change.
#[test]
fn a_kept_writable_layer_carries_files_to_the_next_run() {
    let caller = Caller::me();
    let work = scratch("image-run-upper");
    let w = build::demo(Compression::Zstd).write_oci(&work.join("layout"));
    let store = caller.store_with(&work.join("layout"), "demo:1", &w.id);
    let upper = work.join("upper");
    let verdict = work.join("verdict.json");
    let up = upper.to_str().unwrap();
    let first = caller.run(
        &store,
        &verdict,
        &[
            "--image",
            "demo:1",
            "--user",
            "0",
            "--rootfs-upper",
            up,
            "--",
            "echo kept > /etc/note; busybox rm /etc/os-release",
        ],
    );
    ok(&first, "the first run");
    assert_eq!(
        report(&verdict)["enforced"]["rootfs"]["writable"],
        format!("overlay on {up} (kept)")
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("upper/etc/note")).unwrap(),
        "kept\n"
    );
    let second = caller.run(
        &store,
        &verdict,
        &[
            "--image",
            "demo:1",
            "--rootfs-upper",
            up,
            "--",
            "busybox cat /etc/note; [ -e /etc/os-release ] || echo gone",
        ],
    );
    assert_eq!(ok(&second, "the second run"), "kept\ngone\n");
    let base = store.tree(&w.diff_ids[0]);
    assert!(base.join("etc/os-release").is_file());
    assert!(!base.join("etc/note").exists());
}

/// A host directory as the root: read-only underneath (the directory never changes), set-ID bits without
/// effect, device nodes unusable, the sandbox's own /proc and /dev, no /sys of the host.
#[test]
fn a_directory_root_is_read_only_underneath_and_gives_no_privilege() {
    let caller = Caller::me();
    let work = scratch("image-run-dir");
    let root = work.join("root");
    busybox_root(&root, &["bin", "etc", "proc", "sys", "dev", "tmp"]);
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/marker"), "the directory's own\n").unwrap();
    // A set-user-ID root copy of busybox and a device node, as a hostile root directory would hold them
    // (root only: an unprivileged user can make neither).
    let privileged = testkit::is_root();
    if privileged {
        std::fs::copy(root.join("bin/busybox"), root.join("bin/id")).unwrap();
        std::fs::set_permissions(root.join("bin/id"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        let path = std::ffi::CString::new(root.join("dev-mem").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; mknod takes no other memory.
        let made =
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 1)) };
        assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    }
    let store = Store::new("image-run-unused");
    let verdict = work.join("verdict.json");
    let script = "busybox cat /etc/marker; busybox id -u; [ -u /bin/id ] && /bin/id -u; \
                  [ -e /dev-mem ] && { busybox head -c 1 /dev-mem >/dev/null 2>&1 && echo READ-MEM || echo no-mem; }; \
                  busybox ls /sys | busybox wc -l";
    let out = caller.run(
        &store,
        &verdict,
        &[
            "--rootfs",
            root.to_str().unwrap(),
            "--user",
            "user",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    let stdout = ok(&out, "run --rootfs");
    let mut want = String::from("the directory's own\n1000\n");
    if privileged {
        want.push_str("1000\nno-mem\n");
    }
    want.push_str("0\n");
    assert_eq!(stdout, want, "stderr: {}", text(&out.stderr));
    // As root inside the write succeeds, in the writable layer only.
    let out = caller.run(
        &store,
        &verdict,
        &[
            "--rootfs",
            root.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "echo changed > /etc/marker && busybox cat /etc/marker; \
             busybox head -c 1 /proc/kcore >/dev/null 2>&1 && echo KCORE || echo no-kcore; \
             echo sandbox > /proc/sys/kernel/domainname 2>/dev/null && echo SYSCTL || echo no-sysctl; \
             echo h > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ || echo no-sysrq",
        ],
    );
    // The sandbox's own /proc, with the kernel's sensitive files masked and /proc/sys read-only, as with
    // the system view (each write above is harmless should it succeed: our own UTS namespace's domain name,
    // sysrq's help text).
    assert_eq!(
        ok(&out, "root inside"),
        "changed\nno-kcore\nno-sysctl\nno-sysrq\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/marker")).unwrap(),
        "the directory's own\n"
    );
    let r = report(&verdict);
    let real = std::fs::canonicalize(&root).unwrap();
    assert_eq!(
        r["enforced"]["rootfs"]["source"],
        format!("dir {}", real.display())
    );
}

/// A hostile image: its /etc/passwd is a symlink out of the image (resolved inside the image, never to the
/// host's, on either backend), names that are not there, an image that is not in the store.
#[test]
fn bad_roots_and_users_are_refused_with_their_reason() {
    let caller = Caller::me();
    let work = scratch("image-run-bad");
    let mut image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("bin"),
            Entry::file("bin/busybox", build::busybox()).mode(0o755),
            Entry::dir("etc"),
            Entry::symlink("etc/passwd", "../../../../../../../../etc/passwd"),
        ],
    )]);
    // A user of the host's /etc/passwd (Debian's `_apt`), not of the image's.
    image.config = serde_json::json!({"User": "_apt", "Cmd": ["/bin/busybox", "true"]});
    let w = image.write_oci(&work.join("layout"));
    let store = caller.store_with(&work.join("layout"), "hostile:1", &w.id);
    let verdict = work.join("verdict.json");
    let cases: [(&[&str], &str); 5] = [
        (&["--image", "hostile:1"], "user \"_apt\": "),
        (
            &["--image", "hostile:1", "--user", "root"],
            "user \"root\": ",
        ),
        (
            &["--image", "missing:1"],
            "no image \"missing:1\" in the store",
        ),
        (
            &["--image", "hostile:1", "--user", "0:wheel"],
            "no group \"wheel\"",
        ),
        (
            &[
                "--image",
                "hostile:1",
                "--backend",
                "vm",
                "--",
                "/bin/busybox",
                "true",
            ],
            // Resolved on the host before any VM starts, in the image's files too.
            "user \"_apt\": ",
        ),
    ];
    for (args, want) in cases {
        let out = caller.run(&store, &verdict, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {want:?} not in {err}");
    }
    // A uid needs no passwd entry.
    let out = caller.run(
        &store,
        &verdict,
        &[
            "--image",
            "hostile:1",
            "--user",
            "4242",
            "--",
            "/bin/busybox",
            "id",
            "-u",
        ],
    );
    assert_eq!(ok(&out, "a bare uid"), "4242\n");
}

/// `prune` keeps the layers of an image a run holds, even after `rm`; once the run ended, they go.
#[test]
fn a_running_image_keeps_its_layers_through_rm_and_prune() {
    let caller = Caller::me();
    let work = scratch("image-run-prune");
    let w = build::demo(Compression::Plain).write_oci(&work.join("layout"));
    let store = caller.store_with(&work.join("layout"), "held:1", &w.id);
    let fifo = work.join("go");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo takes no other memory.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let mut run = caller
        .command()
        .args(["run", "--backend", "namespace", "--store"])
        .arg(store.path())
        .args(["--image", "held:1", "--bind"])
        .arg(format!("{}:/go", fifo.display()))
        .args([
            "--",
            "echo started; busybox cat /go; busybox cat /etc/os-release",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the program runs (its first line), then remove the image and prune.
    let mut stdout = run.stdout.take().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    ok(&store.run(&["rm", "held:1"]), "rm");
    let pruned = ok(&store.run(&["prune"]), "prune while running");
    assert!(pruned.starts_with("removed 0 layers"), "{pruned}");
    std::fs::write(&fifo, "go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(run.wait().unwrap().success());
    assert!(rest.contains("ID=sandkasten-test"), "{rest}");
    let pruned = ok(&store.run(&["prune"]), "prune after the run");
    assert!(pruned.starts_with("removed 2 layers"), "{pruned}");
    let _: &Written = &w;
}

/// `--read-only`: no writable layer; the root's entries read-only, empty tmpfs at /tmp, /run and /var/tmp;
/// said in the verdict. A two-layer image cannot be shown so (it needs overlayfs): refused with the reason.
#[test]
fn a_read_only_root_has_only_its_tmpfs_writable() {
    let caller = Caller::me();
    let work = scratch("image-run-ro");
    let root = work.join("root");
    busybox_root(&root, &["bin", "etc", "var/tmp"]);
    std::os::unix::fs::symlink("bin", root.join("sbin")).unwrap();
    std::fs::write(root.join("etc/marker"), "kept\n").unwrap();
    let store = Store::new("image-run-unused");
    let verdict = work.join("verdict.json");
    let script = "echo x > /etc/marker 2>/dev/null && echo WROTE-ETC; busybox mkdir /new 2>/dev/null && echo MADE-DIR; \
                  for d in /tmp /run /var/tmp; do echo ok > $d/f && busybox cat $d/f; done; \
                  /sbin/busybox cat /etc/marker";
    let out = caller.run(
        &store,
        &verdict,
        &[
            "--rootfs",
            root.to_str().unwrap(),
            "--read-only",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(ok(&out, "run --read-only"), "ok\nok\nok\nkept\n");
    assert_eq!(
        report(&verdict)["enforced"]["rootfs"]["writable"],
        "read-only, with tmpfs at /tmp, /run, /var/tmp"
    );
    assert!(!root.join("var/tmp/f").exists());

    let w = build::demo(Compression::Gzip).write_oci(&work.join("layout"));
    let store = caller.store_with(&work.join("layout"), "demo:1", &w.id);
    let out = caller.run(&store, &verdict, &["--image", "demo:1", "--read-only"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("needs a directory or a one-layer image, and this image has 2 layers"),
        "{err}"
    );
}

/// The VM backend (QEMU; the guest kernel and agent of `SANDBOX_KERNEL`, `SANDBOX_AGENT`): the image's layers
/// are read-only shares of the VMM, stacked by the agent's sandbox with overlayfs; the same files, whiteouts,
/// user, directory, environment and command as on the namespace backend. A kept writable layer is refused
/// with its reason.
#[test]
fn the_demo_image_runs_in_a_vm_of_its_own() {
    let caller = Caller::me();
    let work = scratch("image-run-vm");
    let w = build::demo(Compression::Gzip).write_oci(&work.join("layout"));
    let store = caller.store_with(&work.join("layout"), "demo:1", &w.id);
    let verdict = work.join("verdict.json");
    let vm = [
        "--backend",
        "vm",
        "--vm-engine",
        "qemu",
        "--image",
        "demo:1",
    ];
    let script = "busybox cat /etc/os-release; busybox id; pwd; busybox env | busybox sort; \
                  for p in /etc/removed /old /opaque/hidden /opaque/fresh; do \
                  [ -e $p ] && echo present $p || echo absent $p; done";
    let out = caller.run(&store, &verdict, &[&vm[..], &["--", script]].concat());
    let stdout = ok(&out, "run --image demo:1 in a VM");
    for want in [
        "ID=sandkasten-test\n",
        "uid=1000(app) gid=1000(app)",
        "\n/app\n",
        "GREETING=hello from the image\n",
        "absent /etc/removed\n",
        "absent /old\n",
        "absent /opaque/hidden\n",
        "present /opaque/fresh\n",
    ] {
        assert!(stdout.contains(want), "{want:?} missing in:\n{stdout}");
    }
    let r = report(&verdict);
    assert_eq!(r["backend"], "vm", "{r}");
    let root = &r["enforced"]["rootfs"];
    assert_eq!(root["source"], "image demo:1", "{r}");
    assert_eq!(root["image_id"], w.id.as_str(), "{r}");
    assert_eq!(root["user"], "app (1000:1000)", "{r}");
    assert_eq!(root["writable"], "overlay on a tmpfs (discarded)", "{r}");

    // Root inside writes into the guest's writable layer; the store's layer is unchanged.
    let passwd = store.tree(&w.diff_ids[0]).join("etc/passwd");
    let before = std::fs::read(&passwd).unwrap();
    let out = caller.run(
        &store,
        &verdict,
        &[
            &vm[..],
            &[
                "--user",
                "root",
                "--",
                "echo x:x:0:0::/:/bin/sh >> /etc/passwd && busybox tail -n 1 /etc/passwd; \
                 busybox rm -r /home/app && busybox mkdir /home/app && echo remade $(busybox ls -A /home/app)",
            ],
        ]
        .concat(),
    );
    // A directory made again over a removed lower one is empty (opaque in the guest's writable layer).
    assert_eq!(
        ok(&out, "root inside the VM"),
        "x:x:0:0::/:/bin/sh\nremade\n"
    );
    assert_eq!(std::fs::read(&passwd).unwrap(), before);
    let out = caller.run(&store, &verdict, &vm);
    assert_eq!(
        ok(&out, "the image's Cmd in a VM"),
        "hello from the image\n"
    );

    let upper = work.join("upper");
    let out = caller.run(
        &store,
        &verdict,
        &[&vm[..], &["--rootfs-upper", upper.to_str().unwrap()]].concat(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("not available on the VM backend"), "{err}");
    assert!(!upper.exists(), "the refused run made {upper:?}");
}
