//! The host's side of a running namespace sandbox after `spawn`: collect the ended init and turn its report,
//! the cgroup's figures and `rusage` into the verdict.

use std::time::Duration;

use std::os::fd::{AsFd, BorrowedFd};

use super::child::msg;
use super::{Started, read_message, seccomp};
use crate::backend::Run;
use crate::error::Error;
use crate::outcome::{BackendKind, Denial, Outcome, Status, TimeLimit, Usage};

impl Started {
    /// Reaps the init (which must have ended or be about to) and makes the verdict. `host_timeout`: the host
    /// killed the sandbox because it overran its wall-clock limit.
    pub(crate) fn finish(mut self, wall: Duration, host_timeout: bool) -> std::io::Result<Outcome> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid storage for the kernel to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are writable; `pid` is our own unreaped child (its pidfd is held).
        if unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) } < 0 {
            return Err(std::io::Error::last_os_error());
        }

        // The init's last words: denied system calls, then how the program ended.
        let mut denied = Vec::new();
        let mut last = None;
        let mut buf = [0u8; msg::LEN];
        while read_message(&mut self.report, &mut buf).is_ok() {
            match msg::decode(&buf) {
                [msg::DENIED, nr, count, _] => denied.push(Denial {
                    syscall: seccomp::syscall_name(nr as i32)
                        .map_or_else(|| format!("#{nr}"), String::from),
                    count,
                }),
                words => {
                    last = Some(words);
                    break;
                }
            }
        }

        let stats = self
            .cgroup
            .as_ref()
            .map(|cg| cg.stats())
            .unwrap_or_default();
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        let cpu_user = stats.cpu_user.unwrap_or(tv(ru.ru_utime));
        let cpu_sys = stats.cpu_sys.unwrap_or(tv(ru.ru_stime));
        let killed_by = |sig| match last {
            Some([msg::EXITED, raw, ..]) => {
                libc::WIFSIGNALED(raw as i32) && libc::WTERMSIG(raw as i32) == sig
            }
            _ => false,
        };
        let over_cpu = self.cpu_time.is_some_and(|limit| {
            killed_by(libc::SIGXCPU) || (killed_by(libc::SIGKILL) && cpu_user + cpu_sys >= limit)
        });
        let status = match last {
            _ if over_cpu => Status::TimedOut(TimeLimit::Cpu),
            Some([msg::TIMED_OUT, ..]) => Status::TimedOut(TimeLimit::Wall),
            _ if stats.oom_kills > 0 && (killed_by(libc::SIGKILL) || last.is_none()) => {
                Status::OomKilled
            }
            Some([msg::EXITED, raw, ..]) => Status::from_wait(raw as i32),
            _ if host_timeout => Status::TimedOut(TimeLimit::Wall),
            _ => Status::Signaled(libc::SIGKILL),
        };
        let (peak, source) = match stats.peak_memory {
            Some(p) => (Some(p), "cgroup"),
            None => (Some(ru.ru_maxrss as u64 * 1024), "rusage"),
        };
        Ok(Outcome {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
            usage: Usage {
                wall,
                cpu_user,
                cpu_sys,
                peak_memory_bytes: peak,
                source: source.into(),
            },
            backend: BackendKind::Namespace,
            fallback_reason: None,
            enforced: std::mem::take(&mut self.enforced),
            denied_syscalls: denied,
            vm: None,
            capture: Default::default(),
        })
        // Dropping `self` removes the run's cgroup, now empty.
    }

    /// Kills the whole sandbox and reaps its init.
    pub(crate) fn abort(self) {
        let _ = super::sys::pidfd_signal(&self.pidfd, libc::SIGKILL);
        let _ = super::sys::wait_pid(self.pid);
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").field("pid", &self.pid).finish()
    }
}

impl Run for Started {
    fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn finish(self: Box<Self>, wall: Duration, host_timeout: bool) -> Result<Outcome, Error> {
        Started::finish(*self, wall, host_timeout).map_err(|source| Error::Io {
            what: "wait4 on the sandbox's init",
            source,
        })
    }

    fn abort(self: Box<Self>) {
        Started::abort(*self)
    }
}
