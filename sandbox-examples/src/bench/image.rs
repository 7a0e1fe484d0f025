//! The `image` section of `sandbox-bench`: importing a multi-layer image into our store against `umoci
//! unpack` and a plain `tar -x` of the same layers, and the disk use of images that share layers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn du_bytes(path: &Path) -> u64 {
    Command::new("du")
        .args(["-sb"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Builds an OCI layout at `layout` with umoci: tag `base` of three layers (busybox, /usr/share/perl,
/// /usr/lib/python3/dist-packages), and tags `v1`..`vN` that add one small layer each on top of it.
fn build(layout: &Path, work: &Path, variants: usize) -> bool {
    let bundle = work.join("bundle");
    let l = layout.to_string_lossy().into_owned();
    if !sh(Command::new("umoci").args(["init", "--layout", &l]))
        || !sh(Command::new("umoci").args(["new", "--image", &format!("{l}:base")]))
        || !sh(Command::new("umoci")
            .args(["unpack", "--image", &format!("{l}:base")])
            .arg(&bundle))
    {
        return false;
    }
    let rootfs = bundle.join("rootfs");
    let steps: [(&str, &str); 3] = [
        ("/bin/busybox", "bin"),
        ("/usr/share/perl", "usr/share"),
        ("/usr/lib/python3/dist-packages", "usr/lib/python3"),
    ];
    for (src, dst) in steps {
        let dir = rootfs.join(dst);
        if std::fs::create_dir_all(&dir).is_err()
            || !sh(Command::new("cp").arg("-a").arg(src).arg(&dir))
            || !sh(Command::new("umoci")
                .args(["repack", "--image", &format!("{l}:base")])
                .arg(&bundle))
        {
            return false;
        }
    }
    for i in 1..=variants {
        let vb = work.join(format!("bundle{i}"));
        if !sh(Command::new("umoci")
            .args(["unpack", "--image", &format!("{l}:base")])
            .arg(&vb))
        {
            return false;
        }
        let _ = std::fs::write(vb.join("rootfs/variant"), format!("{i}\n"));
        if !sh(Command::new("umoci")
            .args(["repack", "--image", &format!("{l}:v{i}")])
            .arg(&vb))
        {
            return false;
        }
    }
    true
}

/// Import time (median of `runs`, each into a fresh store) against `umoci unpack` and `tar -x` of the same
/// layers into one directory; then the store's disk use with N images that share their base layers.
pub fn import(cli: &Path, runs: usize) {
    println!(
        "\nimage import: a 3-layer gzip OCI image (busybox, /usr/share/perl, /usr/lib/python3/dist-packages)"
    );
    if !sh(Command::new("umoci").arg("--version")) {
        println!("umoci is missing (apt-get install umoci): section skipped");
        return;
    }
    let work = std::env::temp_dir().join(format!("sandbox-bench-image.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let layout = work.join("layout");
    let variants = 5;
    if std::fs::create_dir_all(&work).is_err() || !build(&layout, &work, variants) {
        println!("building the image with umoci failed: section skipped");
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    let blobs: Vec<PathBuf> = std::fs::read_dir(layout.join("blobs/sha256"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    let layer_blobs: Vec<&PathBuf> = blobs
        .iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(&[0x1f, 0x8b])))
        .collect();
    let l = layout.to_string_lossy().into_owned();
    let mut ours = Vec::new();
    let mut umoci = Vec::new();
    let mut tar = Vec::new();
    for i in 0..runs {
        let store = work.join(format!("store{i}"));
        let t = Instant::now();
        let ok = sh(Command::new(cli)
            .args(["image", "--store"])
            .arg(&store)
            .args(["import", "--name", "bench:base"])
            .arg(&layout));
        ours.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&store);
        let bundle = work.join(format!("unpacked{i}"));
        let t = Instant::now();
        let ok2 = sh(Command::new("umoci")
            .args(["unpack", "--image", &format!("{l}:base")])
            .arg(&bundle));
        umoci.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&bundle);
        let dir = work.join(format!("tar{i}"));
        let _ = std::fs::create_dir_all(&dir);
        let t = Instant::now();
        // Only the base's three layers (the variants' small top layers are gzip blobs too: skip them by
        // extracting every layer; their cost is a few KiB).
        let ok3 = layer_blobs
            .iter()
            .all(|b| sh(Command::new("tar").arg("-xzf").arg(b).arg("-C").arg(&dir)));
        tar.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
        if !(ok && ok2 && ok3) {
            println!("a run failed (ours {ok}, umoci {ok2}, tar {ok3}): section skipped");
            let _ = std::fs::remove_dir_all(&work);
            return;
        }
    }
    let (o, u, t) = (median(ours), median(umoci), median(tar));
    println!("{:<28} {:>10}", "case", "median ms");
    println!(
        "{:<28} {:>10.1}",
        "sandbox image import",
        o.as_secs_f64() * 1e3
    );
    println!(
        "{:<28} {:>10.1}   ours/umoci {:.2}x",
        "umoci unpack",
        u.as_secs_f64() * 1e3,
        o.as_secs_f64() / u.as_secs_f64()
    );
    println!(
        "{:<28} {:>10.1}   ours/tar {:.2}x",
        "tar -xzf of every layer",
        t.as_secs_f64() * 1e3,
        o.as_secs_f64() / t.as_secs_f64()
    );

    // Disk use: the base and N variants (one small layer each on the shared three).
    let store = work.join("store-shared");
    let mut ok = true;
    for i in 1..=variants {
        ok &= sh(Command::new(cli)
            .args(["image", "--store"])
            .arg(&store)
            .args(["import", "--name", &format!("bench:v{i}")])
            .arg(&layout));
    }
    let one = work.join("store-one");
    ok &= sh(Command::new(cli)
        .args(["image", "--store"])
        .arg(&one)
        .args(["import", "--name", "bench:v1"])
        .arg(&layout));
    if ok {
        let (all, single) = (du_bytes(&store), du_bytes(&one));
        println!(
            "disk: {variants} images sharing 3 base layers take {:.1} MiB in the store; one alone {:.1} MiB ({:.2}x for {variants}x the images)",
            all as f64 / 1048576.0,
            single as f64 / 1048576.0,
            all as f64 / single.max(1) as f64
        );
        run_on_image(&store, &work.join("bundle/rootfs"), 300);
    } else {
        println!("disk: importing the variants failed");
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// A run with the image `bench:v1` of `store` as the root (four layers) against a run with the host view,
/// and against a directory as the root (`dir`, the unpacked base): `/bin/busybox true` or `/bin/true`
/// through the library, in-process, the cases interleaved, `runs` each.
fn run_on_image(store: &Path, dir: &Path, runs: usize) {
    use sandkasten::{Policy, Rootfs, Sandbox, Status};
    let image = Policy::default().rootfs(Rootfs::image("bench:v1").store(store));
    let on_dir = Policy::default().rootfs(Rootfs::dir(dir));
    let cases: [(&str, &str, &[&str], Policy); 3] = [
        (
            "host view (default policy)",
            "/bin/true",
            &[],
            Policy::default(),
        ),
        ("image root (4 layers)", "/bin/busybox", &["true"], image),
        ("directory root", "/bin/busybox", &["true"], on_dir),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..runs {
        for (i, (_, program, args, policy)) in cases.iter().enumerate() {
            let t = Instant::now();
            let out = Sandbox::new(program)
                .args(*args)
                .policy(policy.clone())
                .output();
            times[i].push(t.elapsed());
            match out {
                Ok(o) if o.status == Status::Exited(0) => {}
                other => {
                    println!("run on an image: {} failed: {other:?}", cases[i].0);
                    return;
                }
            }
        }
    }
    println!("\nrun with a root of its own ({runs} runs each, interleaved, library in-process)");
    println!("{:<28} {:>10}", "case", "median ms");
    let base = median(times[0].clone());
    for (i, (name, ..)) in cases.iter().enumerate() {
        let m = median(times[i].clone());
        println!(
            "{:<28} {:>10.2}   {:+.2} ms vs the host view",
            name,
            m.as_secs_f64() * 1e3,
            (m.as_secs_f64() - base.as_secs_f64()) * 1e3
        );
    }
}
