//! More conformance properties (see `tests/conformance.rs`, whose `conformance!` runs each on every backend):
//! the id range, capabilities kept, supplementary groups, masked and read-only paths, the pollable end of a run, bounded output, a
//! late reader.

use std::time::Duration;

use sandkasten::{Outcome, Policy, SandboxChild, Stage, Status};

use super::{B, Cmd, out, sh};

/// The policy's supplementary groups are the program's (and a session command's, a fork of its init); where
/// the caller has one id only (setgroups denied), the run fails at set-up and says why.
pub(super) fn supplementary_groups(b: B) {
    let policy = Policy::default().user(1000, 1000).groups([5, 100, 4242]);
    let o = Cmd::new("/bin/sh")
        .args(["-c", "id -G; grep ^Groups: /proc/self/status"])
        .on(b)
        .policy(policy)
        .output();
    let one_id = !testkit::is_root() && matches!(b, B::Namespace | B::Session);
    match o {
        Ok(o) if o.status == Status::Exited(0) => {
            let text = out(&o);
            assert_eq!(text.lines().next(), Some("1000 5 100 4242"), "{o:?}");
            assert!(text.contains("Groups:\t5 100 4242"), "{o:?}");
        }
        Ok(Outcome {
            status: Status::SetupFailed(f),
            ..
        }) if one_id => {
            assert_eq!(f.stage, Stage::Credentials, "{f:?}");
            assert!(f.message.contains("more than one id"), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    // None by default: the caller's own groups never come in.
    let o = sh(b, "grep ^Groups: /proc/self/status", Policy::default());
    assert_eq!(out(&o).trim_end(), "Groups:", "{o:?}");
}

/// OCI's maskedPaths and readonlyPaths: a masked file reads empty, a masked directory lists nothing, a
/// missing path is skipped; a read-only path refuses writes while its neighbours take them.
pub(super) fn masked_and_read_only_paths(b: B) {
    let o = sh(
        b,
        "wc -c < /etc/passwd; ls -A /usr/share/doc | wc -l; touch /usr/share/doc/x 2>&1; \
         touch /tmp/x 2>&1; touch /dev/shm/x && echo shm-ok",
        Policy::default()
            .mask("/etc/passwd")
            .mask("/usr/share/doc")
            .mask("/no/such/path")
            .read_only_path("/tmp"),
    );
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let text = out(&o);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines[..2], ["0", "0"], "{text}");
    let refused =
        text.matches("Read-only file system").count() + text.matches("Permission denied").count();
    assert_eq!(refused, 2, "{text}");
    assert_eq!(lines.last(), Some(&"shm-ok"), "{text}");
    // Without them, the same files are there (the property is the policy's, not the system view's).
    let o = sh(
        b,
        "wc -c < /etc/passwd; touch /tmp/x && echo tmp-ok",
        Policy::default(),
    );
    let text = out(&o);
    assert!(
        text.lines().next().is_some_and(|n| n.trim() != "0"),
        "{text}"
    );
    assert!(text.contains("tmp-ok"), "{text}");
}

/// `AsFd` on the child: a descriptor an event loop polls for the end of the run. It becomes readable by the
/// end (a readiness without the end is taken by `try_wait`, so it does not spin), and stays readable once
/// the verdict is in.
pub(super) fn pollable_end(b: B) {
    use std::os::fd::{AsFd, AsRawFd};
    let mut child = Cmd::new("/bin/sh")
        .args(["-c", "sleep 0.3; exit 4"])
        .on(b)
        .spawn()
        .unwrap();
    let readable = |child: &SandboxChild, ms: i32| {
        let mut pfd = [libc::pollfd {
            fd: child.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(pfd.as_mut_ptr(), 1, ms) == 1 }
    };
    let start = std::time::Instant::now();
    let mut wakeups = 0;
    let outcome = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no end after {wakeups} wakeups"
        );
        if !readable(&child, 120_000) {
            continue;
        }
        wakeups += 1;
        if let Some(o) = child.try_wait().unwrap() {
            break o;
        }
    };
    assert_eq!(outcome.status, Status::Exited(4), "{outcome:?}");
    assert!(wakeups < 50, "{wakeups} wakeups for one run: it spins");
    assert!(readable(&child, 0), "not readable once ended");
    assert_eq!(child.try_wait().unwrap().unwrap().status, Status::Exited(4));
}

/// `output()` keeps at most each stream's limit and says so; a limit that kills stops a program that writes
/// without end, and the verdict says why.
pub(super) fn bounded_output(b: B) {
    use sandkasten::OutputLimit;
    // 300,000 bytes of stdout, 5 of stderr: stdout cut at 1,000, stderr whole.
    let o = Cmd::new("/bin/sh")
        .args(["-c", "head -c 300000 /dev/zero; printf 12345 >&2"])
        .on(b)
        .output_limits(OutputLimit::truncate(1000), OutputLimit::truncate(1000))
        .output()
        .unwrap();
    assert_eq!(o.status, Status::Exited(0), "{:?}", o.capture);
    assert_eq!((o.stdout.len(), o.stderr.as_slice()), (1000, &b"12345"[..]));
    let c = &o.capture;
    assert_eq!((c.stdout_bytes, c.stderr_bytes), (300_000, 5), "{c:?}");
    assert!(
        c.stdout_truncated && !c.stderr_truncated && !c.killed_for_output,
        "{c:?}"
    );
    // Without end: killed once it writes past 64 KiB (`cat` writes big blocks: a shell loop of `echo` writes
    // too slowly under software KVM to get there before the timeout).
    let o = Cmd::new("/bin/cat")
        .args(["/dev/zero"])
        .on(b)
        .policy(Policy::default().timeout(Duration::from_secs(60)))
        .output_limits(OutputLimit::kill_after(64 << 10), OutputLimit::default())
        .output()
        .unwrap();
    assert!(o.capture.killed_for_output, "{:?}", o.capture);
    assert!(o.capture.stdout_truncated);
    assert_eq!(o.stdout.len(), 64 << 10);
    assert!(
        !matches!(o.status, Status::Exited(0) | Status::TimedOut(_)),
        "{:?}",
        o.status
    );
}

/// The user namespace maps 65536 ids (root callers, and always inside the VM), and the verdict's maps are
/// the ones the kernel shows; where the caller cannot have them, one id and a `not_enforced` entry.
pub(super) fn id_range(b: B) {
    let o = sh(
        b,
        "cat /proc/self/uid_map; echo -; cat /proc/self/gid_map; id -u; id -g",
        Policy::default().user(1000, 1000),
    );
    let text = out(&o);
    let (uids, rest) = text.split_once("-\n").expect("two maps");
    let lines = |t: &str| {
        t.lines()
            .take_while(|l| l.split_whitespace().count() == 3)
            .map(|l| {
                l.split_whitespace()
                    .map(|x| x.parse::<u32>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let as_vec = |m: &[sandkasten::outcome::IdExtent]| {
        m.iter()
            .map(|e| vec![e.inside, e.outside, e.count])
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(uids), as_vec(&o.enforced.uid_map), "{o:?}");
    assert_eq!(lines(rest), as_vec(&o.enforced.gid_map), "{o:?}");
    assert!(rest.ends_with("1000\n1000\n"), "runs as 1000:1000: {rest}");
    let total: u32 = o.enforced.uid_map.iter().map(|e| e.count).sum();
    if testkit::is_root() || !matches!(b, B::Namespace | B::Session) {
        assert_eq!(total, 65536, "{o:?}");
        assert!(o.enforced.uid_map.iter().all(|e| e.outside > 0));
    } else if total == 1 {
        assert!(
            o.enforced
                .not_enforced
                .iter()
                .any(|r| r.contains("uid/gid range")),
            "one id, said: {o:?}"
        );
    }
}

/// Capabilities a policy keeps work for uid 0 inside, within the range (chown, setgroups, setuid), and go
/// away with a switch to another uid; without them, none. Where the caller has one id only, setgroups is
/// refused by the kernel and chown to an unmapped id fails, which the property allows.
pub(super) fn capabilities_kept(b: B) {
    let script = "import os\n\
        eff = lambda: open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n\
        print(eff())\n\
        open('/tmp/f', 'w').close()\n\
        def try_(f, *a):\n    try:\n        f(*a); return 'ok'\n    except OSError as e:\n        return str(e.errno)\n\
        print(try_(os.chown, '/tmp/f', 5, 6), try_(os.setgroups, [1, 2]))\n\
        os.setgid(7); os.setuid(1000)\n\
        print(os.getuid(), os.getgid(), eff())\n";
    let run = |p: Policy| {
        Cmd::new("/usr/bin/python3")
            .args(["-c", script])
            .policy(p)
            .on(b)
            .output()
            .unwrap()
    };
    let o = run(Policy::default());
    assert!(out(&o).starts_with("0000000000000000\n"), "{o:?}");
    assert!(o.enforced.capabilities_dropped && o.enforced.capabilities.is_empty());
    let mut p = Policy::default();
    p.capabilities = sandkasten::Capability::ALL.to_vec();
    let o = run(p);
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"00000000000404fb"), "{o:?}");
    let range = o.enforced.uid_map.iter().map(|e| e.count).sum::<u32>() == 65536;
    if range {
        assert_eq!(lines.get(1), Some(&"ok ok"), "{o:?}");
        assert_eq!(lines.get(2), Some(&"1000 7 0000000000000000"), "{o:?}");
    }
    assert!(!o.enforced.capabilities_dropped);
    assert_eq!(o.enforced.capabilities.len(), 9, "{o:?}");
}

/// One failure path: a run whose sandbox cannot be set up is not an `Err` of `spawn`, on any backend (on a
/// VM the guest finds most of them after the host's spawn returned); the child has ended (or ends), its
/// streams are at EOF, and the verdict says why.
pub(super) fn setup_failure_in_the_verdict(b: B) {
    use std::io::Read;
    let mut running = Cmd::new("no-such-program")
        .on(b)
        .stdout(sandkasten::Stdio::Piped)
        .spawn()
        .expect("a setup failure is a verdict, not an error of spawn");
    let mut text = String::new();
    let mut stdout = running.child.stdout.take().expect("piped");
    stdout.read_to_string(&mut text).unwrap();
    assert_eq!(text, "");
    let o = running.child.wait().unwrap();
    assert!(
        matches!(&o.status, Status::SetupFailed(f) if f.stage == Stage::Exec),
        "{o:?}"
    );
    let o = Cmd::new("/bin/true")
        .on(b)
        .current_dir("/no/such/dir")
        .spawn()
        .expect("a setup failure is a verdict, not an error of spawn")
        .child
        .wait()
        .unwrap();
    assert!(
        matches!(&o.status, Status::SetupFailed(f) if f.stage == Stage::Cwd),
        "{o:?}"
    );
}

/// `arg0`: the program is found by its own name and sees another `argv[0]` (a multi-call binary picks its
/// applet by it).
pub(super) fn arg0_is_the_programs_own(b: B) {
    let o = Cmd::new("/bin/sh")
        .on(b)
        .arg0("renamed-shell")
        .args(["-c", "tr '\\0' ' ' < /proc/$$/cmdline"])
        .output()
        .unwrap();
    assert_eq!(
        out(&o),
        "renamed-shell -c tr '\\0' ' ' < /proc/$$/cmdline ",
        "{o:?}"
    );
    let o = Cmd::new("/bin/busybox")
        .on(b)
        .arg0("echo")
        .args(["from", "an", "applet"])
        .output()
        .unwrap();
    assert_eq!(out(&o), "from an applet\n", "{o:?}");
}

/// A program's output reaches a piped reader as it is written, not at the run's end: the program writes a
/// line and then waits for input that the test sends only after it read that line (a caller waiting for a
/// server's "listening" line depends on it; the VM's stdout relay once delivered spliced data only at the
/// end, which here would leave both sides waiting: the test gives up after a minute and kills the run).
pub(super) fn output_streams(b: B) {
    use std::io::{BufRead, Write};
    let mut child = Cmd::new("/bin/sh")
        // Two writes a moment apart (the lost wake-up hit data spliced after the first).
        .args([
            "-c",
            "echo first; sleep 1; echo second; read x; echo third $x",
        ])
        .on(b)
        .stdin(sandkasten::Stdio::Piped)
        .stdout(sandkasten::Stdio::Piped)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = lines.read_line(&mut line);
        let _ = lines.read_line(&mut line);
        let _ = tx.send((line, lines));
    });
    let Ok((line, mut lines)) = rx.recv_timeout(Duration::from_secs(60)) else {
        child.kill().unwrap();
        let _ = child.wait();
        panic!("the first lines did not arrive while the program waited for input");
    };
    assert_eq!(line, "first\nsecond\n");
    input.write_all(b"go\n").unwrap();
    drop(input);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert_eq!(rest, "third go\n");
    assert_eq!(child.wait().unwrap().status, Status::Exited(0));
}

/// Output written in many small writes (busybox `seq`, through stdio) reaches the caller whole and in order
/// on both streams (in a VM, each write is one buffer of a virtio-serial port).
pub(super) fn many_small_writes(b: B) {
    let o = sh(b, "seq 1 30000; seq 1 20000 >&2", Policy::default());
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    let numbers = |n: u32| (1..=n).map(|i| format!("{i}\n")).collect::<String>();
    let stdout = out(&o);
    assert!(
        stdout == numbers(30000),
        "stdout whole and in order ({} bytes)",
        stdout.len()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr) == numbers(20000),
        "stderr whole and in order ({} bytes)",
        o.stderr.len()
    );
}

/// A caller that reads stdout only once the program ended gets every byte. In a QEMU VM the program's writes
/// complete when the guest queued them, and its last megabytes wait there until the host takes them: the VM
/// must not end before (the run's end mark). On a host the program waits on the full pipe instead, so there
/// the output is read at once; our VMM takes less from a port it cannot pass on, so there the program may
/// wait too, and the reader starts after 10 s at the latest.
pub(super) fn late_reader(b: B) {
    use std::io::Read;
    const SIZE: usize = 2_000_000;
    let dir = testkit::TempDir::new("conf-late");
    let mut child = Cmd::new("/bin/sh")
        .args([
            "-c",
            &format!("head -c {SIZE} /dev/zero; printf tail; echo > /data/written"),
        ])
        .on(b)
        .policy(
            Policy::default()
                .bind(dir.path(), "/data")
                .timeout(Duration::from_secs(300)),
        )
        .stdout(sandkasten::Stdio::Piped)
        .spawn()
        .unwrap();
    if !matches!(b, B::Namespace | B::Session) {
        let written = dir.path().join("written");
        let start = std::time::Instant::now();
        while !written.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if written.exists() {
            // Its shell ends a moment later, and with it the run but for the output still in the guest.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let mut stdout = Vec::new();
    let mut from = child.stdout.take().unwrap();
    from.read_to_end(&mut stdout).unwrap();
    let o = child.wait().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    assert_eq!(stdout.len(), SIZE + 4, "every byte arrives");
    assert!(
        stdout[..SIZE].iter().all(|&c| c == 0) && stdout.ends_with(b"tail"),
        "in order and unchanged"
    );
}
