//! The trust check of a bind source's symlinks, made on the host before a source is opened (by the namespace
//! view and by the VM backend's shares).

use std::path::{Path, PathBuf};

use super::PlanError;

/// Refuses a bind source whose resolution passes through a symlink owned by anyone but root or the caller:
/// a sandbox with a read-write bind can plant links (owned by its host uid) for a later run to follow with
/// the caller's credentials.
pub(crate) fn check_links(src: &Path) -> Result<(), PlanError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let mut todo: Vec<PathBuf> = vec![src.to_path_buf()];
    let mut hops = 0;
    while let Some(path) = todo.pop() {
        let mut prefix = PathBuf::new();
        for comp in path.components() {
            prefix.push(comp);
            let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
                break; // missing: canonicalize reports it
            };
            if meta.file_type().is_symlink() {
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
        }
    }
    Ok(())
}
