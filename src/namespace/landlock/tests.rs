//! Tests of the landlock module, enforced for real: landlock_restrict_self restricts only the calling
//! thread, so each test restricts a spawned thread and the test thread stays free to set things up.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::*;
use testkit::TempDir;

/// A fresh directory (mode 0755) under the temp dir, removed on drop.
fn dir(tag: &str) -> TempDir {
    TempDir::with_mode(&format!("landlock-{tag}"), 0o755)
}

fn no_new_privs() {
    // SAFETY: prctl with integer arguments; no_new_privs is per thread.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(ret, 0);
}

/// Runs `f` on a thread restricted by `prepare(binds, net)` plus the child-side rules `extra` adds.
fn restricted<T: Send + 'static>(
    binds: Vec<(PathBuf, bool)>,
    net: NetRules,
    extra: impl FnOnce(&Prepared) + Send + 'static,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let worker = std::thread::spawn(move || {
        let p = prepare(&binds, &net, 1).expect("prepare");
        extra(&p);
        no_new_privs();
        restrict_self(p.ruleset_fd.as_raw_fd()).expect("landlock_restrict_self");
        f()
    });
    worker.join().expect("the restricted thread finished")
}

/// The errno of an I/O result (0 for success).
fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.map_or_else(|e| e.raw_os_error().unwrap_or(-1), |_| 0)
}

fn open_write(p: &Path) -> i32 {
    errno_of(OpenOptions::new().write(true).open(p))
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn writes_outside_the_allowed_paths_are_refused() {
    let allowed = dir("allowed");
    let outside = dir("outside");
    let victim = outside.path().join("victim");
    fs::write(&victim, "x").unwrap();
    assert_eq!(
        open_write(&victim),
        0,
        "the filesystem itself allows the write"
    );
    let (a, v) = (allowed.path().to_path_buf(), victim.clone());
    let got = restricted(
        vec![(a.clone(), true)],
        NetRules::default(),
        |_| {},
        move || {
            let read = errno_of(fs::read(&v));
            let create = errno_of(fs::write(v.with_file_name("new"), "y"));
            (
                open_write(&v),
                read,
                create,
                errno_of(fs::write(a.join("ok"), "y")),
            )
        },
    );
    assert_eq!(got, (libc::EACCES, libc::EACCES, libc::EACCES, 0));
    assert_eq!(fs::read(&victim).unwrap(), b"x");
}

#[test]
fn read_only_binds_refuse_writes() {
    let ro = dir("ro");
    let file = ro.path().join("file");
    fs::write(&file, "data").unwrap();
    fs::create_dir(ro.path().join("sub")).unwrap();
    let single = dir("ro-file");
    let lone = single.path().join("lone");
    fs::write(&lone, "lone").unwrap();
    let (dir, f, l) = (ro.path().to_path_buf(), file.clone(), lone.clone());
    let binds = vec![(dir.clone(), false), (lone.clone(), false)];
    let got = restricted(
        binds,
        NetRules::default(),
        |_| {},
        move || {
            [
                errno_of(fs::read(&f)),
                errno_of(fs::read_dir(&dir)),
                errno_of(fs::read(&l)),
                open_write(&f),
                open_write(&l),
                errno_of(fs::write(dir.join("new"), "x")),
                errno_of(fs::remove_file(&f)),
                errno_of(fs::create_dir(dir.join("d"))),
                errno_of(fs::remove_dir(dir.join("sub"))),
                errno_of(std::os::unix::fs::symlink("file", dir.join("link"))),
            ]
        },
    );
    let e = libc::EACCES;
    assert_eq!(got, [0, 0, 0, e, e, e, e, e, e, e]);
    assert_eq!(fs::read(&file).unwrap(), b"data");
}

#[test]
fn read_write_binds_accept_writes() {
    let rw = dir("rw");
    let single = dir("rw-file");
    let lone = single.path().join("lone");
    fs::write(&lone, "old").unwrap();
    let (dir, l) = (rw.path().to_path_buf(), lone.clone());
    let got = restricted(
        vec![(dir.clone(), true), (l.clone(), true)],
        NetRules::default(),
        |_| {},
        move || {
            let new = dir.join("new");
            [
                errno_of(fs::write(&new, "0123456789")),
                errno_of(OpenOptions::new().write(true).truncate(true).open(&new)),
                errno_of(fs::create_dir(dir.join("d"))),
                errno_of(fs::rename(&new, dir.join("d/moved"))), // refer: across directories
                errno_of(std::os::unix::fs::symlink("d", dir.join("link"))),
                errno_of(fs::remove_file(dir.join("d/moved"))),
                errno_of(fs::remove_dir(dir.join("d"))),
                errno_of(fs::write(&l, "new")), // a single-file bind, with the file rights only
            ]
        },
    );
    assert_eq!(got, [0; 8]);
    assert_eq!(fs::read(&lone).unwrap(), b"new");
}

#[test]
fn child_side_rules_cover_paths_only_the_sandbox_has() {
    let tmp = dir("tmpfs");
    let file = dir("file");
    let lone = file.path().join("lone");
    fs::write(&lone, "x").unwrap();
    let (t, l) = (cstring(tmp.path()), cstring(&lone));
    let missing = cstring(&tmp.path().join("missing"));
    let (dir, l2) = (tmp.path().to_path_buf(), lone.clone());
    let got = restricted(
        vec![],
        NetRules::default(),
        move |p| {
            let fd = p.ruleset_fd.as_raw_fd();
            add_path_rule(fd, &t, p.write_access).expect("rule on a directory");
            add_path_rule(fd, &l, p.write_access).expect("directory rights are dropped on a file");
            add_path_rule(fd, &t, 0).expect("no rights: nothing to add");
            assert_eq!(
                add_path_rule(fd, &missing, p.read_access),
                Err(libc::ENOENT)
            );
            assert_eq!(add_path_rule(-1, &t, p.read_access), Err(libc::EBADF));
        },
        move || {
            [
                errno_of(fs::write(dir.join("f"), "y")),
                open_write(&l2),
                errno_of(fs::read_dir("/")),
            ]
        },
    );
    assert_eq!(got, [0, 0, libc::EACCES]);
}

#[test]
fn report_names_what_is_enforced() {
    let have = abi().expect("landlock is available on this host");
    let p = prepare(&[], &NetRules::default(), 1).unwrap();
    let e = &p.enforced;
    assert_eq!(e.landlock_abi, have.min(10));
    for right in [
        "execute",
        "write_file",
        "read_file",
        "read_dir",
        "make_reg",
        "remove_dir",
    ] {
        assert!(
            e.landlock_fs_rights.iter().any(|r| r == right),
            "{right} in {e:?}"
        );
    }
    let at = |abi: u32, right: &str| have < abi || e.landlock_fs_rights.iter().any(|r| r == right);
    assert!(
        at(2, "refer") && at(3, "truncate") && at(5, "ioctl_dev"),
        "{e:?}"
    );
    assert_eq!(e.net, None);
    assert_eq!(e.scopes.len(), if have >= 6 { 2 } else { 0 });
    assert_eq!(p.write_access & p.read_access, p.read_access);
    assert_eq!(p.read_access & !p.write_access, 0);
    let json = serde_json::to_value(e).unwrap();
    assert_eq!(json["landlock_abi"], have.min(10));
    let net = NetRules {
        tcp_bind: vec![8080],
        tcp_connect: vec![443],
        handle: true,
    };
    if have >= 4 {
        let e = prepare(&[], &net, 1).unwrap().enforced;
        assert_eq!(e.net.unwrap().tcp_connect, [443]);
    } else {
        let err = prepare(&[], &net, 1).unwrap_err().to_string();
        assert!(
            err.contains("TCP port rules needs landlock ABI 4 (Linux 6.7"),
            "{err}"
        );
    }
    let err = prepare(&[], &NetRules::default(), 99)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ABI 99") && err.contains(&format!("provides ABI {have}")),
        "{err}"
    );
    let err = prepare(&[("/nonexistent/x".into(), false)], &NetRules::default(), 1).unwrap_err();
    assert!(err.to_string().contains("\"/nonexistent/x\""), "{err}");
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_ports_outside_the_policy_are_refused() {
    let have = abi().unwrap();
    if have < 4 {
        eprintln!(
            "SKIPPED tcp_ports_outside_the_policy_are_refused: landlock ABI {have} < 4 (Linux 6.7)"
        );
        return;
    }
    let allowed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (ok_to, not_to) = (allowed.local_addr().unwrap(), other.local_addr().unwrap());
    assert!(
        TcpStream::connect(not_to).is_ok(),
        "unrestricted, the connect works"
    );
    let (bind_ok, bind_no) = (free_port(), free_port());
    let net = NetRules {
        tcp_bind: vec![bind_ok],
        tcp_connect: vec![ok_to.port()],
        handle: true,
    };
    let got = restricted(
        vec![],
        net,
        |_| {},
        move || {
            let at = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            [
                errno_of(TcpListener::bind(at(bind_ok))),
                errno_of(TcpListener::bind(at(bind_no))),
                errno_of(TcpStream::connect(ok_to)),
                errno_of(TcpStream::connect(not_to)),
            ]
        },
    );
    assert_eq!(got, [0, libc::EACCES, 0, libc::EACCES]);
}

#[test]
fn abstract_sockets_and_signals_are_scoped() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
    let have = abi().unwrap();
    if have < 6 {
        eprintln!(
            "SKIPPED abstract_sockets_and_signals_are_scoped: landlock ABI {have} < 6 (Linux 6.12)"
        );
        return;
    }
    let name = format!("sandbox-landlock-test-{}", std::process::id());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = UnixListener::bind_addr(&addr).unwrap();
    assert!(
        UnixStream::connect_addr(&addr).is_ok(),
        "unrestricted, the connect works"
    );
    let mut outsider = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = outsider.id() as libc::pid_t;
    // SAFETY: signal 0 only checks that the signal could be sent.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0);
    let got = restricted(
        vec![],
        NetRules::default(),
        |_| {},
        move || {
            let connect = UnixStream::connect_addr(&addr).map_err(|e| e.kind());
            // SAFETY: as above.
            let kill = unsafe { libc::kill(pid, 0) };
            (connect.err(), kill, errno())
        },
    );
    outsider.kill().unwrap();
    outsider.wait().unwrap();
    assert_eq!(got, (Some(ErrorKind::PermissionDenied), -1, libc::EPERM));
}
