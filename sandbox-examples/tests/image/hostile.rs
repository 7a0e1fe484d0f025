//! Hostile images: each is refused with exit 125 and a message naming the blob (and the bad entry, where
//! there is one), and leaves no layer in the store, nothing in its tmp/, and nothing outside it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use testkit::{TempDir, text};

use super::build::{self, Compression, Damage, Entry, Flaw, Image, Layer, Written};
use super::{Store, walk};

/// What is wrong with the image's second layer (its first is a valid one of its own).
#[derive(Clone, Copy, Debug)]
enum Case {
    WrongDigest,
    SizeTooLarge,
    SizeTooSmall,
    WrongDiffId,
    TruncatedGzip,
    CorruptZstd,
    DotDotEntry,
    AbsoluteEntry,
    WriteThroughSymlink,
    WriteThroughRelativeSymlink,
    HardLinkDotDot,
    HardLinkAbsolute,
    HardLinkNotInLayer,
    CharDevice,
    BlockDevice,
    DuplicateFile,
    WhiteoutOfRootDot,
    WhiteoutOfRootEmpty,
    UnknownMediaType,
    Arm64Only,
    TooBig,
}

impl Case {
    const ALL: [Case; 21] = [
        Case::WrongDigest,
        Case::SizeTooLarge,
        Case::SizeTooSmall,
        Case::WrongDiffId,
        Case::TruncatedGzip,
        Case::CorruptZstd,
        Case::DotDotEntry,
        Case::AbsoluteEntry,
        Case::WriteThroughSymlink,
        Case::WriteThroughRelativeSymlink,
        Case::HardLinkDotDot,
        Case::HardLinkAbsolute,
        Case::HardLinkNotInLayer,
        Case::CharDevice,
        Case::BlockDevice,
        Case::DuplicateFile,
        Case::WhiteoutOfRootDot,
        Case::WhiteoutOfRootEmpty,
        Case::UnknownMediaType,
        Case::Arm64Only,
        Case::TooBig,
    ];

    /// The bad entries, and the path of the one the message must name. `outside` is the canary directory
    /// (absolute) that escapes aim at.
    fn entries(self, outside: &Path) -> (Vec<Entry>, Option<String>) {
        let abs = outside.to_str().unwrap();
        let rel = abs.trim_start_matches('/');
        let up = |n: usize| "../".repeat(n);
        let one = |e: Entry| {
            let path = e.path.clone();
            (vec![e], Some(path))
        };
        match self {
            Case::DotDotEntry => one(Entry::file(&format!("{}{rel}/escaped-dotdot", up(24)), "x")),
            Case::AbsoluteEntry => one(Entry::file(&format!("{abs}/escaped-absolute"), "x")),
            Case::WriteThroughSymlink => (
                vec![
                    Entry::symlink("link", &format!("{abs}/linked")),
                    Entry::file("link/file", "x"),
                ],
                Some("link/file".into()),
            ),
            Case::WriteThroughRelativeSymlink => {
                let target = up(24);
                let through = format!("up/{rel}/linked/relative");
                (
                    vec![
                        Entry::symlink("up", target.trim_end_matches('/')),
                        Entry::file(&through, "x"),
                    ],
                    Some(through),
                )
            }
            Case::HardLinkDotDot => one(Entry::hard_link(
                "etc/hl-dotdot",
                &format!("{}{rel}/secret", up(12)),
            )),
            Case::HardLinkAbsolute => one(Entry::hard_link(
                "etc/hl-absolute",
                &format!("{abs}/secret"),
            )),
            Case::HardLinkNotInLayer => {
                one(Entry::hard_link("etc/hl-missing", "etc/not-in-this-layer"))
            }
            Case::CharDevice => one(Entry::char_device("etc/evil-char", 1, 3)),
            Case::BlockDevice => one(Entry::block_device("etc/evil-block", 8, 0)),
            Case::DuplicateFile => (
                vec![Entry::file("etc/dup", "one"), Entry::file("etc/dup", "two")],
                Some("etc/dup".into()),
            ),
            Case::WhiteoutOfRootDot => one(Entry::file(".wh..", "")),
            Case::WhiteoutOfRootEmpty => one(Entry::file(".wh.", "")),
            Case::TooBig => (vec![Entry::file("big", vec![0u8; 4 << 20])], None),
            // Text that compresses to some kilobytes, so that the damage falls inside the stream.
            Case::TruncatedGzip | Case::CorruptZstd => (vec![Entry::file("noise", noise())], None),
            _ => (Vec::new(), None),
        }
    }

    fn image(self, outside: &Path) -> (Image, Option<String>) {
        let first = Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("etc"),
                Entry::file(&format!("etc/case-{self:?}"), "a valid first layer\n"),
            ],
        );
        let (bad, entry) = self.entries(outside);
        let mut entries = vec![
            Entry::dir("etc"),
            Entry::file("etc/before", "written before the bad entry\n"),
        ];
        entries.extend(bad);
        entries.push(Entry::file("etc/after", "after the bad entry\n"));
        let mut second = Layer::new(Compression::Gzip, entries);
        match self {
            Case::CorruptZstd => {
                (second.compression, second.damage) = (Compression::Zstd, Damage::Corrupt)
            }
            Case::TruncatedGzip => second.damage = Damage::Truncate,
            Case::UnknownMediaType => {
                second.media_type = Some("application/vnd.example.layer.v1.tar+lz4".into())
            }
            _ => {}
        }
        let mut image = Image::new(vec![first, second]);
        match self {
            Case::WrongDigest => image.flaw = Flaw::WrongDigest(1),
            Case::SizeTooLarge => image.flaw = Flaw::SizeOff(1, 1),
            Case::SizeTooSmall => image.flaw = Flaw::SizeOff(1, -1),
            Case::WrongDiffId => image.flaw = Flaw::WrongDiffId(1),
            Case::Arm64Only => image.architectures = vec!["arm64"],
            _ => {}
        }
        (image, entry)
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Case::TooBig => &["--max-layer-size", "1M"],
            _ => &[],
        }
    }

    /// The message names one of these.
    fn blobs(self, w: &Written) -> Vec<String> {
        match self {
            Case::WrongDiffId => vec![
                w.layers[1].clone(),
                w.diff_ids[1].clone(),
                build::wrong_diff_id(),
            ],
            Case::Arm64Only => vec![w.manifest.clone(), "linux/amd64".into()],
            _ => vec![w.layers[1].clone()],
        }
    }
}

/// 64 KiB of lines that differ (a linear congruential sequence).
fn noise() -> Vec<u8> {
    let mut x = 12345u32;
    let mut out = String::new();
    while out.len() < 64 << 10 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        out.push_str(&format!("{x:08x} {}\n", x % 977));
    }
    out.into_bytes()
}

/// Everything under `dir`: path, mode, link count, and the bytes of files and symlink targets.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, Vec<u8>)> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            (p, m.mode(), m.nlink(), bytes)
        })
        .collect()
}

/// What is wrong with how the store handled `case` (nothing: an empty list).
fn judge(case: Case, store: &Store, work: &Path) -> Vec<String> {
    let outside = work.join("outside");
    std::fs::create_dir_all(outside.join("linked")).unwrap();
    std::fs::write(outside.join("secret"), "canary\n").unwrap();
    let canary = snapshot(&outside);
    let (image, entry) = case.image(&outside);
    let layout = work.join("layout");
    let w = image.write_oci(&layout);
    let before = store.layer_dirs();
    let mut args = vec!["--name", "hostile:1"];
    args.extend_from_slice(case.args());
    let out = store.import(&layout, &args);
    let err = text(&out.stderr);
    let mut wrong = Vec::new();
    if out.status.code() != Some(125) {
        wrong.push(format!("exit code {:?}, not 125", out.status.code()));
    }
    if !out.stdout.is_empty() {
        wrong.push(format!("stdout {:?}", text(&out.stdout)));
    }
    if !err.starts_with("sandbox: ") || err.contains("panicked") {
        wrong.push("stderr does not start with `sandbox: `, or panics".into());
    }
    let blobs = case.blobs(&w);
    if !blobs.iter().any(|b| err.contains(b.as_str())) {
        wrong.push(format!("the message names none of {blobs:?}"));
    }
    if let Some(entry) = entry
        && !err.contains(&entry)
    {
        wrong.push(format!("the message does not name the entry {entry:?}"));
    }
    for added in store.layer_dirs().difference(&before) {
        let which = match w.diff_ids.iter().position(|d| build::hex(d) == added) {
            Some(0) => "its valid first layer",
            Some(_) => "its bad layer",
            None => "a layer not of this image",
        };
        wrong.push(format!("layers/sha256/{added} left: {which}"));
    }
    let tmp = store.tmp();
    if !tmp.is_empty() {
        wrong.push(format!("tmp/ holds {tmp:?}"));
    }
    let names = store.names();
    if names != ["good:1"] {
        wrong.push(format!("images listed: {names:?}"));
    }
    if snapshot(&outside) != canary {
        wrong.push(format!(
            "written outside the store: {:?}",
            snapshot(&outside)
        ));
    }
    if !wrong.is_empty() {
        wrong.push(format!("stderr: {err:?}"));
    }
    wrong
}

/// Every hostile variant is refused cleanly by a store that already holds a good image (whose layers stay).
/// All cases run; the failure lists each one that was mishandled and how.
#[test]
fn hostile_images_are_refused_and_leave_nothing_behind() {
    let work = TempDir::new("image-hostile");
    let store = Store::new("image-store");
    let good = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::dir("etc"), Entry::file("etc/good", "good\n")],
    )]);
    let w = good.write_oci(&work.join("good"));
    store.import_ok(&work.join("good"), &["--name", "good:1"], "good:1", &w.id);
    let kept = store.layer_dirs();

    let mut failures = Vec::new();
    for (i, case) in Case::ALL.into_iter().enumerate() {
        // A short directory name: a hard link's target (ustar linkname) holds 100 bytes.
        let dir = work.join(i.to_string());
        let wrong = judge(case, &store, &dir);
        if !wrong.is_empty() {
            failures.push(format!("{case:?}:\n    {}", wrong.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile images mishandled:\n{}",
        failures.len(),
        Case::ALL.len(),
        failures.join("\n")
    );
    assert_eq!(store.layer_dirs(), kept);
    let tree = store.tree(&w.diff_ids[0]);
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/good")).unwrap(),
        "good\n"
    );
}

/// The hostile images' own scaffolding is valid: the same two layers without the bad entries import.
#[test]
fn the_hostile_images_are_valid_without_their_flaw() {
    let work = TempDir::new("image-hostile-control");
    let store = Store::new("image-store");
    let image = Image::new(vec![
        Layer::new(
            Compression::Gzip,
            vec![Entry::dir("etc"), Entry::file("etc/x", "x\n")],
        ),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("etc"),
                Entry::file("etc/before", "before\n"),
                Entry::file("noise", noise()),
                Entry::file("big", vec![0u8; 4 << 20]),
                Entry::hard_link("etc/hl-in-layer", "etc/before"),
                Entry::symlink("link", "/etc/passwd"),
                Entry::file("etc/after", "after\n"),
            ],
        ),
    ]);
    let w = image.write_oci(&work.join("layout"));
    let args = ["--name", "control:1", "--max-layer-size", "8M"];
    store.import_ok(&work.join("layout"), &args, "control:1", &w.id);
}
