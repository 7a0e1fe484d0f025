//! A bundle's `config.json` (OCI runtime-spec) read ([`load`]) and translated ([`translate`]) into a sandkasten
//! [`Policy`] plus the process to run.
//!
//! The translation refuses what the sandbox cannot honour with an error naming the field of `config.json`,
//! and reports in [`Translated::notes`] what it honours differently (one short sentence each). What the
//! policy cannot carry but a runtime can still do around the sandbox (hooks, joining a
//! network namespace) is kept in [`Translated`] for the caller.
//!
//! One file per part of the document: `process` (the process, its user, rlimits and capabilities), `mounts`,
//! `linux` (namespaces, id mappings, resources and the rest of `linux`), `seccomp`; `locate` names the field
//! of a JSON type error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{self as oci, Spec};
use sandkasten::{Policy, PolicyError, Rootfs};

mod linux;
mod locate;
mod mounts;
mod process;
mod seccomp;

pub(crate) use linux::namespace_name;
pub use linux::{LinuxError, NAMESPACES, NamespaceUse};
pub use mounts::{MOUNT_OPTIONS, MountError, OptionUse};
pub use process::{Process, ProcessError};
pub(crate) use seccomp::json_name;
pub use seccomp::{ACTIONS, ActionUse, NATIVE_ARCH, OPERATORS, SeccompError};

/// The annotations that choose the backend: `vm` or `namespace` (the default).
pub const BACKEND_ANNOTATIONS: [&str; 2] = ["run.oci.sandbox.backend", "io.sandbox.backend"];

/// The oldest runtime-spec version read.
pub const OCI_VERSION_MIN: &str = "1.0.0";

/// The newest runtime-spec version whose fields are read (those of the `oci-spec` crate 0.10); a newer 1.x
/// config is read too, its unknown fields ignored (as the spec asks), and a note says so.
pub const OCI_VERSION_MAX: &str = "1.3.0";

/// The hook lists of `config.json`, in the order of the runtime-spec's lifecycle.
pub const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Errors in a bundle: each names the file or field of `config.json` and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The bundle directory cannot be opened.
    #[error(
        "bundle directory {path:?} cannot be opened: {source}; give the directory that holds config.json"
    )]
    Bundle {
        /// The bundle as given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bundle has no `config.json`.
    #[error(
        "{path:?} does not exist: a bundle holds its configuration in config.json; create one (e.g. with \
         `runc spec`) or give the right bundle directory"
    )]
    NoConfig {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `config.json` cannot be read.
    #[error("cannot read {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `config.json` is not JSON, or a top-level field has the wrong type.
    #[error(
        "{path:?} is not a valid runtime-spec config at line {line}, column {column}: {message}"
    )]
    Json {
        /// The file.
        path: PathBuf,
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based).
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A field of `config.json` has the wrong type or an unknown value.
    #[error("config.json field {field} is invalid: {message}; fix or remove it")]
    Field {
        /// The field, e.g. `linux.seccomp.syscalls[3]`.
        field: String,
        /// What the parser said.
        message: String,
    },
    /// `ociVersion` is missing or of another major version.
    #[error(
        "config.json's ociVersion {0:?} is not supported: this runtime reads runtime-spec 1.x configs \
         (1.0.0 to 1.3.0 fully); write the version the config follows, e.g. \"1.0.2\""
    )]
    Version(String),
    /// `root` is missing.
    #[error(
        "config.json has no root: give root.path, the directory of the container's root filesystem \
         (relative to the bundle)"
    )]
    NoRoot,
    /// `root.path` is not a directory.
    #[error(
        "root.path {path:?} is not a directory: {source}; unpack the root filesystem there or fix root.path"
    )]
    Root {
        /// The root directory, resolved against the bundle.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A backend annotation has an unknown value, or the two disagree.
    #[error("annotation {key}={value:?} does not choose a backend: use \"vm\" or \"namespace\"")]
    Backend {
        /// The annotation.
        key: String,
        /// Its value.
        value: String,
    },
    /// A hook is unusable.
    #[error("{field}: {problem}")]
    Hook {
        /// The hook, e.g. `hooks.poststop[0]`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// What a field translates to is refused by the policy's own validation.
    #[error("config.json field {field} cannot be used: {source}")]
    Invalid {
        /// The field.
        field: String,
        /// What the policy's validation said.
        source: PolicyError,
    },
    /// A mount cannot be honoured.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The process cannot be run as described.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A part of `linux` cannot be honoured.
    #[error(transparent)]
    Linux(#[from] LinuxError),
    /// `linux.seccomp` cannot be honoured.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// A bundle read by [`load`]: its directory and its `config.json`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub spec: Spec,
}

impl Bundle {
    /// The bundle translated (see [`translate`]).
    pub fn translate(&self) -> Result<Translated, SpecError> {
        translate(&self.spec, &self.dir)
    }
}

/// What a `config.json` becomes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Translated {
    /// The sandbox's policy.
    pub policy: Policy,
    /// The process to run in it.
    pub process: Process,
    /// What is honoured differently from what `config.json` asks, one short sentence each.
    pub notes: Vec<String>,
    /// Run on the VM backend (annotation `run.oci.sandbox.backend=vm`, or `io.sandbox.backend=vm`).
    pub vm: bool,
    /// `process.terminal`: the process wants a pseudo-terminal as its stdio (the caller provides it).
    pub terminal: bool,
    /// The hooks, for the caller to run (the policy knows nothing of them).
    pub hooks: Hooks,
    /// `linux.namespaces` network with a `path`: the network namespace to join instead of a new one (the
    /// caller joins it; `policy.network` is then [`Network::None`](sandkasten::Network::None), a namespace
    /// that is not the host's).
    pub netns_path: Option<PathBuf>,
}

/// The hooks of `config.json` (`hooks`), by lifecycle point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hooks {
    /// `prestart` (deprecated by the spec; runs with `createRuntime`).
    pub prestart: Vec<Hook>,
    /// `createRuntime`: in the runtime's namespace, after the container's namespaces exist.
    pub create_runtime: Vec<Hook>,
    /// `createContainer`: in the container's namespaces, before `pivot_root`.
    pub create_container: Vec<Hook>,
    /// `startContainer`: in the container, before the process starts.
    pub start_container: Vec<Hook>,
    /// `poststart`: after the process started.
    pub poststart: Vec<Hook>,
    /// `poststop`: after the container is deleted.
    pub poststop: Vec<Hook>,
}

/// One hook: a host program run with the container's state on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hook {
    /// The program, an absolute host path.
    pub path: PathBuf,
    /// Its arguments, `argv[0]` included (empty: the path alone).
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<(OsString, OsString)>,
    /// How long it may run.
    pub timeout: Option<Duration>,
}

/// Reads `bundle/config.json`; checks that `ociVersion` is 1.x and that `root.path` is a directory.
pub fn load(bundle: &Path) -> Result<Bundle, SpecError> {
    let dir = bundle.canonicalize().map_err(|source| SpecError::Bundle {
        path: bundle.into(),
        source,
    })?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => SpecError::NoConfig { path: path.clone() },
        _ => SpecError::Read {
            path: path.clone(),
            source,
        },
    })?;
    let spec = parse(&path, &text)?;
    root_dir(&spec, &dir)?;
    Ok(Bundle { dir, spec })
}

/// Parses `config.json` text, naming the field of a type error where it can.
fn parse(path: &Path, text: &str) -> Result<Spec, SpecError> {
    let json = |e: serde_json::Error| SpecError::Json {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    };
    let doc: serde_json::Value = serde_json::from_str(text).map_err(json)?;
    let spec: Spec = serde_json::from_str(text).map_err(|e| match locate::locate(&doc) {
        Some((field, message)) => SpecError::Field { field, message },
        None => json(e),
    })?;
    let major = spec.version().split('.').next().unwrap_or_default();
    if major != "1" {
        return Err(SpecError::Version(spec.version().clone()));
    }
    Ok(spec)
}

/// `root.path` resolved against the bundle; it must be a directory.
fn root_dir(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let root = spec.root().as_ref().ok_or(SpecError::NoRoot)?;
    if root.path().as_os_str().is_empty() {
        return Err(SpecError::NoRoot);
    }
    let path = bundle.join(root.path());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(SpecError::Root {
            path,
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        }),
        Err(source) => Err(SpecError::Root { path, source }),
    }
}

/// Translates a config into a policy, the process and the rest (see [`Translated`]). `bundle` is the bundle
/// directory: `root.path` and relative bind sources are resolved against it.
pub fn translate(spec: &Spec, bundle: &Path) -> Result<Translated, SpecError> {
    let bundle = std::path::absolute(bundle).map_err(|source| SpecError::Bundle {
        path: bundle.into(),
        source,
    })?;
    let mut notes = Vec::new();
    let mut policy = Policy::default();
    version_note(spec.version(), &mut notes);

    let root = root_dir(spec, &bundle)?;
    let mut rootfs = Rootfs::dir(root);
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        rootfs = rootfs.read_only();
    } else {
        notes.push(
            "root.readonly is false: writes go to a layer discarded after the run, not into root.path \
             itself."
                .into(),
        );
    }
    policy.rootfs = Some(rootfs);

    if let Some(name) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        check("hostname", &Policy::default().hostname(name))?;
        policy.hostname = name.into();
    }
    if spec.domainname().as_deref().is_some_and(|d| !d.is_empty()) {
        notes.push("domainname is not applied: the sandbox sets only the hostname.".into());
    }

    let (process, terminal) = process::translate(spec.process().as_ref(), &mut policy, &mut notes)?;
    mounts::translate(
        spec.mounts().as_deref().unwrap_or_default(),
        &bundle,
        &mut policy,
        &mut notes,
    )?;
    // No `linux`: nothing listed (oci-spec's `Linux::default()` lists namespaces and masked paths).
    let linux = match spec.linux() {
        Some(linux) => linux.clone(),
        None => serde_json::from_str("{}").expect("an empty `linux` reads"),
    };
    let outside = linux::translate(&linux, &mut policy, &mut notes)?;
    process::groups(&process.additional_gids, &mut policy, &mut notes);
    seccomp::translate(linux.seccomp().as_ref(), &mut policy, &mut notes)?;
    let vm = backend(spec)?;
    let hooks = hooks(spec.hooks().as_ref())?;

    check("config.json", &policy)?;
    Ok(Translated {
        policy,
        process,
        notes,
        vm,
        terminal,
        hooks,
        netns_path: outside.netns_path,
    })
}

/// Runs the policy's own validation on what `field` translated to.
pub(crate) fn check(field: &str, policy: &Policy) -> Result<(), SpecError> {
    policy.validate().map_err(|source| SpecError::Invalid {
        field: field.into(),
        source,
    })
}

/// A note when the config is newer than the fields read.
fn version_note(version: &str, notes: &mut Vec<String>) {
    let numbers = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(3)
            .map_while(|n| n.parse().ok())
            .collect()
    };
    if numbers(version) > numbers(OCI_VERSION_MAX) {
        notes.push(format!(
            "ociVersion {version} is newer than {OCI_VERSION_MAX}: fields this runtime does not know are \
             ignored."
        ));
    }
}

/// The backend the annotations choose: `true` for the VM.
fn backend(spec: &Spec) -> Result<bool, SpecError> {
    let mut vm = None;
    for key in BACKEND_ANNOTATIONS {
        let Some(value) = spec.annotations().as_ref().and_then(|a| a.get(key)) else {
            continue;
        };
        let this = match value.as_str() {
            "vm" => true,
            "namespace" => false,
            _ => {
                return Err(SpecError::Backend {
                    key: key.into(),
                    value: value.clone(),
                });
            }
        };
        if vm.is_some_and(|v| v != this) {
            return Err(SpecError::Backend {
                key: key.into(),
                value: format!("{value} (while {} says otherwise)", BACKEND_ANNOTATIONS[0]),
            });
        }
        vm = Some(this);
    }
    Ok(vm.unwrap_or(false))
}

/// The hooks, checked: absolute paths, `KEY=VALUE` environments, positive timeouts.
fn hooks(hooks: Option<&oci::Hooks>) -> Result<Hooks, SpecError> {
    let Some(h) = hooks else {
        return Ok(Hooks::default());
    };
    #[allow(deprecated)] // prestart: deprecated by the spec, still written by some tools
    let lists = [
        h.prestart(),
        h.create_runtime(),
        h.create_container(),
        h.start_container(),
        h.poststart(),
        h.poststop(),
    ];
    let mut out: [Vec<Hook>; 6] = Default::default();
    for ((name, list), out) in HOOK_NAMES.iter().zip(lists).zip(&mut out) {
        for (i, hook) in list.iter().flatten().enumerate() {
            let field = format!("hooks.{name}[{i}]");
            let bad = |problem: String| SpecError::Hook {
                field: field.clone(),
                problem,
            };
            if !hook.path().is_absolute() {
                return Err(bad(format!(
                    "path {:?} is not absolute: give the hook program's absolute path on the host",
                    hook.path()
                )));
            }
            let timeout = match hook.timeout() {
                None => None,
                Some(t @ 1..) => Some(Duration::from_secs(t as u64)),
                Some(t) => {
                    return Err(bad(format!(
                        "timeout {t} is not a positive number of seconds: give one, or none for no limit"
                    )));
                }
            };
            let env = hook.env().as_deref().unwrap_or_default();
            out.push(Hook {
                path: hook.path().clone(),
                args: hook.args().clone().unwrap_or_default(),
                env: process::parse_env(&format!("{field}.env"), env)?,
                timeout,
            });
        }
    }
    let [
        prestart,
        create_runtime,
        create_container,
        start_container,
        poststart,
        poststop,
    ] = out;
    Ok(Hooks {
        prestart,
        create_runtime,
        create_container,
        start_container,
        poststart,
        poststop,
    })
}
