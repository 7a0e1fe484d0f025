//! # sandbox-runtime
//!
//! An OCI runtime-spec front end for [`sandkasten`]: a bundle's `config.json` translated into a sandbox
//! [`Policy`](sandkasten::Policy) and the process to run, refusing clearly what the sandbox cannot honour and
//! reporting what it honours differently.
//!
//! ```no_run
//! let bundle = sandbox_runtime::spec::load("/srv/bundles/web".as_ref())?;
//! let run = bundle.translate()?;
//! for note in &run.notes {
//!     eprintln!("note: {note}");
//! }
//! println!("{} as uid {}", run.process.args[0], run.process.uid);
//! # Ok::<(), sandbox_runtime::spec::SpecError>(())
//! ```
//!
//! - [`spec`]: reading a bundle ([`spec::load`]) and the translation ([`spec::translate`]).
//! - [`features`]: the runtime-spec `features.json` document, derived from the translation's own tables.
//! - [`state`]: the runc-compatible state document (`runc state`).
#![warn(missing_docs)]

pub mod container;
pub mod features;
pub mod log;
pub mod spec;
pub mod state;

pub use spec::{Bundle, SpecError, Translated, load, translate};
