//! Where the VM backend finds its guest: the kernel, the static agent, and the initramfs packed from it.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The guest kernel and agent: `$SANDBOX_KERNEL` and `$SANDBOX_AGENT`, else the kernel build cache
/// (`kernel-config/build.sh`) and `sandbox-init` next to the running program.
pub fn assets() -> Result<(PathBuf, PathBuf), String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("sandbox/kernel/current/vmlinux"));
    let kernel = std::env::var_os("SANDBOX_KERNEL")
        .map(PathBuf::from)
        .or(cache)
        .filter(|p| p.is_file())
        .ok_or("no guest kernel: build it with kernel-config/build.sh, or set SANDBOX_KERNEL")?;
    let agent = std::env::var_os("SANDBOX_AGENT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|e| e.with_file_name("sandbox-init"))
        })
        .filter(|p| p.is_file())
        .ok_or("no guest agent: build it with scripts/build-guest.sh, or set SANDBOX_AGENT")?;
    if !is_static_elf(&agent) {
        return Err(format!(
            "the guest agent {} is not a static executable (the guest has no libraries): build it with \
             scripts/build-guest.sh and set SANDBOX_AGENT to the path it prints",
            agent.display()
        ));
    }
    Ok((kernel, agent))
}

/// Whether `path` is a 64-bit ELF executable without a program interpreter (`PT_INTERP`).
fn is_static_elf(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 64];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" || head[4] != 2 {
        return false;
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56));
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    use std::io::Seek;
    if phentsize < 4
        || f.seek(std::io::SeekFrom::Start(phoff)).is_err()
        || f.read_exact(&mut table).is_err()
    {
        return false;
    }
    const PT_INTERP: u32 = 3;
    !table
        .chunks_exact(usize::from(phentsize))
        .any(|ph| u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == PT_INTERP)
}

/// The initramfs holding `agent`, written once per agent into a per-user cache directory.
pub(crate) fn initramfs(agent: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(agent).map_err(|e| format!("{}: {e}", agent.display()))?;
    let stamp = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("sandbox-vm-{}", nix::unistd::geteuid()));
    let file = dir.join(format!("initramfs-{:x}-{stamp:x}.cpio", meta.len()));
    if file.is_file() {
        return Ok(file);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bytes = super::initramfs::pack_agent(agent, None, &[]).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".initramfs-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_executables_are_told_apart() {
        assert!(
            !is_static_elf(Path::new("/bin/sh")),
            "/bin/sh has an interpreter"
        );
        assert!(!is_static_elf(Path::new("/etc/passwd")));
        if let Some(agent) = std::env::var_os("SANDBOX_AGENT") {
            assert!(is_static_elf(Path::new(&agent)));
        }
    }
}
