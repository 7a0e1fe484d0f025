//! Container images built by the tests: layers given as tar entries (hostile ones too: names and link targets
//! are written raw into the ustar header, where the `tar` crate's own setters refuse `..` and absolute paths),
//! compressed, and written as an OCI image layout or as a `docker save` archive. Flaws can be put in on
//! purpose: a damaged compressed stream ([`Damage`]), a descriptor or config that lies ([`Flaw`]), an unknown
//! media type, an index without linux/amd64.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Modification time of every entry: the same image gives the same digests in every test.
const MTIME: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    HardLink(String),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
}

/// One tar entry of a layer.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn dir(path: &str) -> Entry {
        Entry::new(path, Kind::Dir, 0o755)
    }

    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, Kind::File(data.into()), 0o644)
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, Kind::Symlink(target.to_string()), 0o777)
    }

    pub fn hard_link(path: &str, target: &str) -> Entry {
        Entry::new(path, Kind::HardLink(target.to_string()), 0o644)
    }

    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, Kind::CharDevice(major, minor), 0o666)
    }

    pub fn block_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, Kind::BlockDevice(major, minor), 0o660)
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The ustar header, with the name and link target copied byte for byte.
    fn header(&self) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let (kind, size) = match &self.kind {
            Kind::Dir => (tar::EntryType::Directory, 0),
            Kind::File(data) => (tar::EntryType::Regular, data.len() as u64),
            Kind::Symlink(_) => (tar::EntryType::Symlink, 0),
            Kind::HardLink(_) => (tar::EntryType::Link, 0),
            Kind::CharDevice(..) => (tar::EntryType::Char, 0),
            Kind::BlockDevice(..) => (tar::EntryType::Block, 0),
        };
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(self.mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(MTIME);
        if let Kind::CharDevice(major, minor) | Kind::BlockDevice(major, minor) = self.kind {
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
        }
        let ustar = h.as_ustar_mut().unwrap();
        let name = match self.kind {
            Kind::Dir => format!("{}/", self.path.trim_end_matches('/')),
            _ => self.path.clone(),
        };
        // Longer names go in two parts, split at a slash: prefix (155 bytes) and name (100).
        let (prefix, name) = if name.len() <= 100 {
            ("", name.as_str())
        } else {
            let cut = (0..name.len())
                .rev()
                .find(|&i| name.as_bytes()[i] == b'/' && i <= 155 && name.len() - i - 1 <= 100)
                .unwrap_or_else(|| panic!("no ustar split for {name:?}"));
            (&name[..cut], &name[cut + 1..])
        };
        ustar.name[..name.len()].copy_from_slice(name.as_bytes());
        ustar.prefix[..prefix.len()].copy_from_slice(prefix.as_bytes());
        if let Kind::Symlink(target) | Kind::HardLink(target) = &self.kind {
            assert!(
                target.len() <= 100,
                "link target too long for ustar: {target}"
            );
            ustar.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        h.set_cksum();
        h
    }
}

/// A layer's tar archive.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let data: &[u8] = match &e.kind {
            Kind::File(data) => data,
            _ => &[],
        };
        b.append(&e.header(), data).unwrap();
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
    /// Gzip under docker's media types (manifest, config and layer).
    DockerGzip,
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::Plain,
        Compression::Gzip,
        Compression::Zstd,
        Compression::DockerGzip,
    ];

    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Plain => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::DockerGzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }

    /// A name usable as an image tag.
    pub fn tag(self) -> &'static str {
        match self {
            Compression::Plain => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::DockerGzip => "docker-gzip",
        }
    }

    fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::Plain => data.to_vec(),
            Compression::Gzip | Compression::DockerGzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => {
                let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
                e.include_checksum(true).unwrap();
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        }
    }
}

/// Damage done to a layer's compressed bytes before they are digested (so the digest and size agree with
/// the blob, and only decompression finds it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Damage {
    None,
    /// The second half cut off.
    Truncate,
    /// Bytes in the middle inverted.
    Corrupt,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
    /// Replaces the compression's media type in the manifest.
    pub media_type: Option<String>,
    pub damage: Damage,
}

impl Layer {
    pub fn new(compression: Compression, entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            compression,
            media_type: None,
            damage: Damage::None,
        }
    }

    /// The layer blob: the tar, compressed, damaged.
    fn blob(&self, tar: &[u8]) -> Vec<u8> {
        let mut blob = self.compression.compress(tar);
        let len = blob.len();
        match self.damage {
            Damage::None => {}
            Damage::Truncate => blob.truncate(len / 2),
            Damage::Corrupt => blob[len / 2..len / 2 + 16]
                .iter_mut()
                .for_each(|b| *b = !*b),
        }
        blob
    }
}

/// A lie in the image's metadata, told about one layer (by index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Flaw {
    None,
    /// The blob file's content differs from its name (one byte changed, same size).
    WrongDigest(usize),
    /// The manifest's descriptor gives the layer's size plus this many bytes.
    SizeOff(usize, i64),
    /// The config's rootfs.diff_ids gives [`wrong_diff_id`] for this layer.
    WrongDiffId(usize),
}

/// The diff_id that [`Flaw::WrongDiffId`] claims.
pub fn wrong_diff_id() -> String {
    digest(b"not the digest of this layer")
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The hex part of a `sha256:` digest.
pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

pub struct Image {
    pub layers: Vec<Layer>,
    /// The config's `config` object (Env, Entrypoint, Cmd, WorkingDir, User).
    pub config: Value,
    /// The index's `org.opencontainers.image.ref.name` annotation, on each manifest it lists.
    pub ref_name: Option<String>,
    /// One manifest per architecture (all linux), listed in the index in this order.
    pub architectures: Vec<&'static str>,
    pub flaw: Flaw,
}

/// What an image written out is known by.
#[derive(Clone, Debug)]
pub struct Written {
    /// The image id: the digest of the linux/amd64 config (of the first manifest when there is none).
    pub id: String,
    /// The digest of that manifest.
    pub manifest: String,
    /// The layer blobs' digests.
    pub layers: Vec<String>,
    /// The digests of the layers' tars (the true ones, whatever the config claims).
    pub diff_ids: Vec<String>,
    /// The lengths of the layers' tars.
    pub tar_sizes: Vec<u64>,
}

impl Image {
    pub fn new(layers: Vec<Layer>) -> Image {
        Image {
            layers,
            config: demo_config(),
            ref_name: None,
            architectures: vec!["amd64"],
            flaw: Flaw::None,
        }
    }

    fn docker_types(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.compression == Compression::DockerGzip)
    }

    fn config_blob(&self, architecture: &str, diff_ids: &[String]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": architecture,
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": diff_ids.iter().map(|_| json!({"created_by": "sandkasten image tests"})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// Writes the image as an OCI image layout in `dir` (created).
    pub fn write_oci(&self, dir: &Path) -> Written {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let d = digest(data);
            std::fs::write(blobs.join(hex(&d)), data).unwrap();
            d
        };
        let tars: Vec<Vec<u8>> = self.layers.iter().map(|l| tar(&l.entries)).collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| digest(t)).collect();
        let mut claimed = diff_ids.clone();
        let mut layers = Vec::new();
        let mut descriptors = Vec::new();
        for (i, (layer, tar)) in self.layers.iter().zip(&tars).enumerate() {
            let mut blob = layer.blob(tar);
            let d = digest(&blob);
            let mut size = blob.len() as i64;
            match self.flaw {
                Flaw::WrongDigest(n) if n == i => {
                    let middle = blob.len() / 2;
                    blob[middle] ^= 1;
                }
                Flaw::SizeOff(n, off) if n == i => size += off,
                Flaw::WrongDiffId(n) if n == i => claimed[i] = wrong_diff_id(),
                _ => {}
            }
            std::fs::write(blobs.join(hex(&d)), &blob).unwrap();
            let media_type = layer.media_type.as_deref();
            descriptors.push(json!({
                "mediaType": media_type.unwrap_or(layer.compression.media_type()),
                "digest": d,
                "size": size,
            }));
            layers.push(d);
        }
        let (manifest_type, config_type) = if self.docker_types() {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        let mut chosen = None;
        let mut listed = Vec::new();
        for &arch in &self.architectures {
            let config = self.config_blob(arch, &claimed);
            let id = put(&config);
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {"mediaType": config_type, "digest": id, "size": config.len()},
                "layers": descriptors,
            }))
            .unwrap();
            let manifest_digest = put(&manifest);
            let mut entry = json!({
                "mediaType": manifest_type,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            });
            if arch == "arm64" {
                entry["platform"]["variant"] = json!("v8");
            }
            if let Some(name) = &self.ref_name {
                entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
            }
            listed.push(entry);
            if chosen.is_none() || arch == "amd64" {
                chosen = Some((id, manifest_digest));
            }
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": listed,
        });
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let (id, manifest) = chosen.expect("an image has at least one architecture");
        Written {
            id,
            manifest,
            layers,
            diff_ids,
            tar_sizes: tars.iter().map(|t| t.len() as u64).collect(),
        }
    }

    /// Writes the image as a `docker save` archive at `file`, tagged `repo_tag`: `manifest.json`, the config
    /// as `<hex>.json`, each layer uncompressed as `<hex of its diff_id>/layer.tar`. `manifest` in the
    /// answer is empty: such an archive has no manifest blob.
    pub fn write_docker(&self, file: &Path, repo_tag: &str) -> Written {
        let tars: Vec<Vec<u8>> = self.layers.iter().map(|l| tar(&l.entries)).collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| digest(t)).collect();
        let config = self.config_blob("amd64", &diff_ids);
        let id = digest(&config);
        let names: Vec<String> = diff_ids
            .iter()
            .map(|d| format!("{}/layer.tar", hex(d)))
            .collect();
        let manifest = json!([{
            "Config": format!("{}.json", hex(&id)),
            "RepoTags": [repo_tag],
            "Layers": names,
        }]);
        let mut archive = vec![Entry::file(&format!("{}.json", hex(&id)), config)];
        for (name, tar) in names.iter().zip(&tars) {
            // As docker writes them: the layer's directory, then its tar.
            archive.push(Entry::dir(name.trim_end_matches("/layer.tar")));
            archive.push(Entry::file(name, tar.clone()));
        }
        archive.push(Entry::file("manifest.json", manifest.to_string()));
        std::fs::write(file, tar(&archive)).unwrap();
        Written {
            id,
            manifest: String::new(),
            layers: diff_ids.clone(),
            diff_ids,
            tar_sizes: tars.iter().map(|t| t.len() as u64).collect(),
        }
    }
}

/// The demo image's runtime config.
pub fn demo_config() -> Value {
    json!({
        "Env": ["PATH=/usr/local/bin:/bin", "GREETING=hello from the image"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo $GREETING"],
        "WorkingDir": "/app",
        "User": "app",
    })
}

/// The host's static busybox (Debian busybox-static, installed when missing and this user is root).
pub fn busybox() -> Vec<u8> {
    static BUSYBOX: OnceLock<Vec<u8>> = OnceLock::new();
    BUSYBOX
        .get_or_init(|| {
            assert!(
                crate::installed("/bin/busybox", "busybox-static"),
                "/bin/busybox is missing: install the Debian package busybox-static (scripts/test.sh does)"
            );
            std::fs::read("/bin/busybox").unwrap()
        })
        .clone()
}

/// The demo image's first layer: busybox and the files its second layer removes, replaces or hides.
pub fn base_layer() -> Vec<Entry> {
    vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", busybox()).mode(0o755),
        Entry::symlink("bin/sh", "busybox"),
        Entry::hard_link("bin/ls", "bin/busybox"),
        Entry::dir("etc"),
        Entry::file(
            "etc/os-release",
            "NAME=\"Sandkasten test\"\nID=sandkasten-test\nVERSION_ID=1\n",
        ),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        ),
        Entry::file("etc/group", "root:x:0:\napp:x:1000:\n"),
        Entry::file("etc/removed", "whited out by the second layer\n"),
        Entry::dir("home"),
        Entry::dir("home/app").owner(1000, 1000),
        Entry::file("home/app/profile", "export EDITOR=vi\n").owner(1000, 1000),
        Entry::dir("old"),
        Entry::file("old/a", "a\n"),
        Entry::dir("opaque"),
        Entry::file("opaque/hidden", "hidden by the opaque second layer\n"),
        Entry::dir("usr"),
        Entry::dir("usr/local"),
        Entry::dir("usr/local/bin"),
        Entry::file("usr/local/bin/setuid-tool", "#!/bin/sh\nid\n").mode(0o4755),
        Entry::file("usr/local/bin/setgid-tool", "#!/bin/sh\nid\n").mode(0o2755),
    ]
}

/// The demo image's second layer: a file and a directory whited out, an opaque directory, a new file.
pub fn top_layer() -> Vec<Entry> {
    vec![
        Entry::dir("etc"),
        Entry::file("etc/.wh.removed", ""),
        Entry::file(".wh.old", ""),
        Entry::dir("opaque"),
        Entry::file("opaque/.wh..wh..opq", ""),
        Entry::file("opaque/fresh", "fresh in the second layer\n"),
        Entry::dir("app"),
        Entry::file("app/hello.sh", "#!/bin/sh\necho hello\n").mode(0o755),
    ]
}

/// The demo image: [`base_layer`] and [`top_layer`], both in `compression`.
pub fn demo(compression: Compression) -> Image {
    Image::new(vec![
        Layer::new(compression, base_layer()),
        Layer::new(compression, top_layer()),
    ])
}
