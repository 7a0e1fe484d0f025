//! The trust check of a bind source's symlinks, made on the host before a source is opened (by the namespace
//! view and by the VM backend's shares).

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use super::PlanError;

/// Refuses a bind source whose resolution passes through a symlink owned by anyone but root or the caller:
/// a sandbox with a read-write bind can plant links (owned by its host uid) for a later run to follow with
/// the caller's credentials. (The VM backend's shares; the view uses [`check_links_with`].)
#[cfg(feature = "vm")]
pub(crate) fn check_links(src: &Path) -> Result<(), PlanError> {
    check_links_with(src, &mut BTreeSet::new()).map(drop)
}

/// A source whose resolution is its own path: absolute, no `..`, no symbolic link on the way (so its
/// canonical form is its components joined), and what it is.
pub(crate) struct Direct {
    /// The path, `.` components left out.
    pub(crate) path: PathBuf,
    /// Whether it is a directory.
    pub(crate) is_dir: bool,
}

/// The check of `check_links` with `dirs`, the directories (no symbolic links on the way) already looked at for the
/// same view: a view binds many sources below `/etc` and `/usr`, and each prefix is looked up once (in a VM
/// every lookup of a 9p share is a round trip to the host). Also says when the source is [`Direct`], which
/// spares the caller its canonicalisation.
pub(crate) fn check_links_with(
    src: &Path,
    dirs: &mut BTreeSet<PathBuf>,
) -> Result<Option<Direct>, PlanError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let mut todo: Vec<PathBuf> = vec![src.to_path_buf()];
    let mut hops = 0;
    // Whether the source resolves to itself: cleared by a link or a missing entry on the way.
    let mut direct = src.is_absolute() && !src.components().any(|c| c == Component::ParentDir);
    // Whether the source's last component is a directory, once it has been looked at.
    let mut last_is_dir = None;
    while let Some(path) = todo.pop() {
        let mut prefix = PathBuf::new();
        let n = path.components().count();
        for (i, comp) in path.components().enumerate() {
            prefix.push(comp);
            if dirs.contains(&prefix) {
                last_is_dir = (i + 1 == n).then_some(true);
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
                direct = false;
                break; // missing: canonicalize reports it
            };
            if meta.file_type().is_symlink() {
                direct = false;
                if meta.uid() != 0 && meta.uid() != me {
                    return Err(PlanError::UntrustedSymlink {
                        path: src.into(),
                        link: prefix,
                        owner: meta.uid(),
                    });
                }
                hops += 1;
                if hops > 40 {
                    break; // a loop: canonicalize reports it
                }
                if let Ok(target) = std::fs::read_link(&prefix) {
                    let rest: PathBuf = path
                        .components()
                        .skip(prefix.components().count())
                        .collect();
                    let base = prefix.parent().unwrap_or(Path::new("/")).join(target);
                    todo.push(base.join(rest));
                }
                break;
            }
            if meta.is_dir() {
                dirs.insert(prefix.clone());
            }
            last_is_dir = (i + 1 == n).then_some(meta.is_dir());
        }
    }
    Ok(match last_is_dir {
        Some(is_dir) if direct => Some(Direct {
            path: src.components().collect(),
            is_dir,
        }),
        _ => None,
    })
}
