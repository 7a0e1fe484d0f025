//! Fresh randomness for a guest restored from a snapshot: the kernel's random generator state is part of
//! the saved RAM, so every guest restored from one snapshot would draw the same numbers (keys, ASLR offsets,
//! hash seeds) unless it is reseeded. The host sends random bytes with its ping
//! ([`PING_LINE`](super::PING_LINE) `<hex>`); the agent mixes them into the kernel's pool, credited, and has
//! the generator reseed from it at once.

use std::os::fd::AsRawFd;

use crate::protocol::MAX_SEED;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`, a `struct rand_pool_info` and its bytes.
const RNDADDENTROPY: u64 = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`, reseed the generator from the pool now.
const RNDRESEEDCRNG: u64 = 0x5207;
/// `struct rand_pool_info` with room for [`MAX_SEED`] bytes.
#[repr(C)]
struct PoolInfo {
    entropy_count: i32,
    buf_size: i32,
    buf: [u8; MAX_SEED],
}

/// Mixes `seed` into the kernel's random pool (credited as entropy) and reseeds the generator from it.
pub(crate) fn reseed(seed: &[u8]) -> std::io::Result<()> {
    let n = seed.len().min(MAX_SEED);
    let mut info = PoolInfo {
        entropy_count: (n * 8) as i32,
        buf_size: n as i32,
        buf: [0; MAX_SEED],
    };
    info.buf[..n].copy_from_slice(&seed[..n]);
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header and `buf_size` bytes after it, all inside `info`,
    // which outlives the call; the descriptor is open.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            RNDADDENTROPY as _,
            &info as *const PoolInfo,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument; the descriptor is open.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr; _IOC_WRITE = 1.
        assert_eq!(
            RNDADDENTROPY,
            (1 << 30) | (8 << 16) | (u64::from(b'R') << 8) | 3
        );
        assert_eq!(RNDRESEEDCRNG, (u64::from(b'R') << 8) | 7);
    }
}
