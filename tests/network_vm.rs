//! User-mode networking (`Network::User`) on the VM backend (the QEMU engine; our own VMM with
//! `SANDBOX_TEST_BUILTIN=1`): the guest's virtio-net device leads to passt on the host, and the sandbox in the guest sees what a namespace sandbox sees with pasta
//! (tests/network.rs): the same addresses, `eth0`, the DNS forwarder, published ports, and no way to the
//! host's loopback. Proven against servers in a network namespace each test makes for itself
//! (`network/netns.rs`): no packet leaves the machine. Without root: SKIPPED, as there.
#![cfg(feature = "vm")]

mod common;
/// The test's namespace and servers, shared with tests/network.rs.
mod network {
    pub(crate) mod netns;
    pub(crate) mod servers;
}
use network::netns::{GATEWAY, HOST, INSIDE, ROLE, SERVER, inside};
use network::servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sandkasten::{Backend, Network, Outcome, Policy, Publish, Sandbox, Status, Stdio, VmEngine};
use testkit::text;

/// A cold QEMU-engine VM running a python3 script.
fn python(script: &str, policy: Policy) -> Sandbox {
    let mut s = Sandbox::new("/usr/bin/python3");
    s.args(["-c", script])
        .backend(Backend::Vm)
        .vm_engine(VmEngine::Qemu)
        .policy(policy.timeout(Duration::from_secs(60)));
    s
}

fn user() -> Policy {
    Policy::default().network(Network::User)
}

fn ok(o: &Outcome) -> String {
    assert_eq!(
        o.status,
        Status::Exited(0),
        "stdout: {}\nstderr: {}\nvm: {:?}",
        text(&o.stdout),
        text(&o.stderr),
        o.vm
    );
    text(&o.stdout)
}

/// Whether a verdict's network names passt as the helper (the VM's stack, filled in on the host).
fn names_passt(n: &sandkasten::outcome::NetworkEnforced) -> bool {
    n.helper
        .as_deref()
        .is_some_and(|h| h.starts_with("passt /"))
}

/// A session's command that prints what the test network's greeter (port 7000) says.
fn greeting(s: &sandkasten::Session) -> Outcome {
    s.command("/usr/bin/python3")
        .args([
            "-c",
            &format!(
                "import socket\n\
                 print(socket.create_connection(('{SERVER}', 7000), timeout=10).recv(100).decode(), end='')"
            ),
        ])
        .output()
        .unwrap()
}

/// The live passt processes among this process's descendants, by their command name (`passt`, or
/// `passt.avx2`, which Debian's passt executes where the CPU has AVX2). Not by the command line: passt
/// clears it once it runs.
fn passts() -> Vec<u32> {
    common::descendants()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("passt"))
                && std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
                })
        })
        .collect()
}

/// One VM: outbound TCP to a server of the network, DNS through the forwarder, the host's address on
/// `eth0`; the test namespace's loopback services (by 127.0.0.1, the gateway's address or the host's own)
/// and its abstract unix sockets out of reach; the verdict names passt; passt gone with the run.
#[test]
fn a_vm_reaches_the_network_through_passt_and_not_the_hosts_loopback() {
    if !inside("a_vm_reaches_the_network_through_passt_and_not_the_hosts_loopback") {
        return;
    }
    let accepted = servers::greeter((SERVER, 7000).into(), "greetings from the test's network\n");
    let leak = servers::greeter(
        (Ipv4Addr::LOCALHOST, 7001).into(),
        "LEAK: the host's loopback\n",
    );
    let queries = servers::dns_server();
    let name = format!("sandkasten-net-vm-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    unix.set_nonblocking(true).unwrap();
    let o = python(
        &format!(
            "import socket\n\
             s = socket.create_connection(('{SERVER}', 7000), timeout=10)\n\
             print(s.recv(100).decode(), end='')\n\
             print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n\
             print(socket.gethostbyname('example.test'))\n\
             print([l for l in open('/etc/resolv.conf').read().splitlines() if l.startswith('nameserver')])\n\
             for host in ['127.0.0.1', '{GATEWAY}', '{HOST}']:\n\
             \x20   try:\n\
             \x20       c = socket.create_connection((host, 7001), timeout=3)\n\
             \x20       print('tcp', host, 'REACHED', c.recv(100))\n\
             \x20   except OSError as e:\n\
             \x20       print('tcp', host, 'failed')\n\
             a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
             try:\n\
             \x20   a.connect('\\0{name}')\n\
             \x20   print('abstract REACHED')\n\
             except OSError as e:\n\
             \x20   print('abstract failed')\n"
        ),
        user(),
    )
    .output()
    .unwrap();
    let out = ok(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("greetings from the test's network"));
    assert_eq!(lines.next(), Some("['eth0', 'lo']"), "{out}");
    assert_eq!(lines.next(), Some("192.0.2.77"), "{out}");
    assert_eq!(lines.next(), Some("['nameserver 169.254.0.53']"), "{out}");
    assert!(!out.contains("REACHED"), "{out}");
    let tcp_failed = out
        .lines()
        .filter(|l| l.starts_with("tcp ") && l.ends_with(" failed"))
        .count();
    assert_eq!(tcp_failed, 3, "{out}");
    assert!(out.contains("abstract failed"), "{out}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(queries.load(Ordering::SeqCst) >= 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(leak.load(Ordering::SeqCst), 0, "{out}");
    assert!(unix.accept().is_err(), "the abstract socket was reached");
    let n = &o.enforced.network;
    assert_eq!(n.mode, "user");
    assert!(names_passt(n), "{n:?}");
    assert_eq!(n.dns_forward.as_deref(), Some("169.254.0.53"));
    assert_eq!(o.vm.as_ref().map(|v| v.engine.as_str()), Some("qemu"));
    assert_eq!(passts(), Vec::<u32>::new(), "passt ended with the run");
}

/// A published port: the test connects from the host's loopback to a server in the guest; the port is
/// released with the run.
#[test]
fn a_published_port_reaches_a_server_in_the_vm() {
    if !inside("a_published_port_reaches_a_server_in_the_vm") {
        return;
    }
    let script = "import socket\n\
                  t = socket.socket(); t.bind(('0.0.0.0', 8080)); t.listen()\n\
                  print('listening', flush=True)\n\
                  c, a = t.accept(); c.sendall(b'inside got ' + c.recv(100)); c.close()\n";
    let mut child = python(script, user().publish(Publish::tcp(18080, 8080)))
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "listening\n");
    // While the run lasts: one passt, never root.
    let passt = passts();
    assert_eq!(passt.len(), 1, "{passt:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", passt[0])).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
    let mut c = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, 18080).into(),
        Duration::from_secs(10),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "inside got hello");
    let o = child.wait().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{}", text(&o.stderr));
    assert_eq!(o.enforced.network.published, [Publish::tcp(18080, 8080)]);
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, 18080)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(passts(), Vec::<u32>::new(), "passt ended with the run");
}

/// Our own VMM (the builtin engine): its virtio-net device leads to the same passt. Two runs on a fresh
/// snapshot cache: the first boots the guest (with its network device) and saves it, the second is restored
/// from that snapshot and its device is connected to a new passt. Both reach the test's network server and
/// its DNS, and not the loopback. Minutes under software KVM: run with `SANDBOX_TEST_BUILTIN=1` (as
/// scripts/test.sh does), where it fails, never skips.
#[test]
fn our_own_vmm_gives_a_vm_user_networking_booted_and_restored() {
    if std::env::var_os("SANDBOX_TEST_BUILTIN").is_none() {
        eprintln!("builtin engine: set SANDBOX_TEST_BUILTIN=1 to run (needs /dev/kvm)");
        return;
    }
    if !inside("our_own_vmm_gives_a_vm_user_networking_booted_and_restored") {
        return;
    }
    let accepted = servers::greeter((SERVER, 7000).into(), "greetings from the test's network\n");
    let leak = servers::greeter(
        (Ipv4Addr::LOCALHOST, 7001).into(),
        "LEAK: the host's loopback\n",
    );
    let queries = servers::dns_server();
    let cache = testkit::TempDir::new("sandbox-test-net-builtin-snapshots");
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{SERVER}', 7000), timeout=20)\n\
         print(s.recv(100).decode(), end='')\n\
         print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n\
         print(socket.gethostbyname('example.test'))\n\
         try:\n\
         \x20   socket.create_connection(('127.0.0.1', 7001), timeout=3)\n\
         \x20   print('loopback REACHED')\n\
         except OSError:\n\
         \x20   print('loopback failed')\n"
    );
    for (round, restored) in [(1u32, false), (2, true)] {
        let mut s = python(&script, user().timeout(Duration::from_secs(600)));
        s.vm_engine(VmEngine::Builtin)
            .vm_snapshots(sandkasten::SnapshotCache::Dir(cache.path().to_path_buf()));
        let started = std::time::Instant::now();
        let o = s.output().unwrap();
        eprintln!(
            "round {round} (restored: {restored}): {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let out = ok(&o);
        assert_eq!(
            out, "greetings from the test's network\n['eth0', 'lo']\n192.0.2.77\nloopback failed\n",
            "round {round}"
        );
        let vm = o.vm.as_ref().unwrap();
        assert_eq!(vm.engine, "builtin");
        assert_eq!(vm.restored, restored, "round {round}: {vm:?}");
        assert!(names_passt(&o.enforced.network), "{:?}", o.enforced.network);
        assert_eq!(accepted.load(Ordering::SeqCst), round);
        assert_eq!(passts(), Vec::<u32>::new(), "passt ended with the run");
    }
    assert!(queries.load(Ordering::SeqCst) >= 2);
    assert_eq!(leak.load(Ordering::SeqCst), 0);
}

/// An unprivileged caller (uid 65534 through setpriv, running a copy of this test binary with the guest
/// kernel and agent staged where it can read them) gets the same: passt then runs as that user.
#[test]
fn an_unprivileged_callers_vm_gets_user_networking() {
    let test = "an_unprivileged_callers_vm_gets_user_networking";
    if std::env::var(ROLE).as_deref() == Ok("client") {
        let o = python(
            &format!(
                "import socket\n\
                 print(socket.create_connection(('{SERVER}', 7000), timeout=10).recv(100).decode(), end='')"
            ),
            user(),
        )
        .output()
        .unwrap();
        assert_eq!(ok(&o), "hello, unprivileged VM\n");
        assert_eq!(o.enforced.network.mode, "user");
        return;
    }
    if !inside(test) {
        return;
    }
    let accepted = servers::greeter((SERVER, 7000).into(), "hello, unprivileged VM\n");
    let stage = testkit::TempDir::with_mode("net-vm-unpriv", 0o755);
    let exe = stage.join("network-vm-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let mut env = Vec::new();
    for (var, name) in [
        ("SANDBOX_KERNEL", "vmlinux"),
        ("SANDBOX_AGENT", "sandbox-init"),
    ] {
        let from =
            std::env::var_os(var).unwrap_or_else(|| panic!("{var} (scripts/test.sh sets it)"));
        std::fs::copy(&from, stage.join(name)).unwrap();
        std::fs::set_permissions(
            stage.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        env.push((var, stage.join(name)));
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "client")
        .env_remove(INSIDE)
        .envs(env)
        .current_dir("/tmp")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "as uid 65534 ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A session in a VM of its own (QEMU engine) gets user-mode networking too: its commands reach the
/// network, the session's verdict names passt, and passt ends with the session.
#[test]
fn a_vm_sessions_commands_reach_the_network() {
    if !inside("a_vm_sessions_commands_reach_the_network") {
        return;
    }
    let accepted = servers::greeter((SERVER, 7000).into(), "hello, session\n");
    let s = sandkasten::Session::start_vm(user(), VmEngine::Qemu).unwrap();
    assert!(
        names_passt(&s.enforced().network),
        "{:?}",
        s.enforced().network
    );
    for _ in 0..2 {
        assert_eq!(ok(&greeting(&s)), "hello, session\n");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(passts().len(), 1);
    s.stop(Duration::from_secs(2)).unwrap();
    assert_eq!(passts(), Vec::<u32>::new(), "passt ended with the session");
}

/// A pool made with user networking (QEMU engine): every VM gets a passt of its own when it boots. Two runs
/// on the same warm VM reach the network (the guest configures `eth0` once), a run with `network = "none"`
/// on it sees only its loopback, a pooled session reaches the network too; publishing is refused (a warm
/// VM's passt predates its runs), and so is `user` on a pool without it, both with the way out. Every
/// passt ends with the pool.
#[test]
fn a_pool_with_user_networking_gives_its_runs_and_sessions_the_network() {
    if !inside("a_pool_with_user_networking_gives_its_runs_and_sessions_the_network") {
        return;
    }
    use sandkasten::{PoolOptions, VmPool};
    let accepted = servers::greeter((SERVER, 7000).into(), "hello, pool\n");
    let connect = format!(
        "import socket\n\
         print(socket.create_connection(('{SERVER}', 7000), timeout=10).recv(100).decode(), end='')\n\
         print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))"
    );
    let pool = VmPool::new(PoolOptions {
        engine: VmEngine::Qemu,
        max_idle: 1,
        max_vms: 1,
        user_network: true,
        ..Default::default()
    })
    .unwrap();
    let run = |policy: Policy| {
        let mut s = python(&connect, policy);
        s.vm_pool(&pool);
        s.output().unwrap()
    };
    for round in 1..=2u32 {
        let o = run(user());
        assert_eq!(ok(&o), "hello, pool\n['eth0', 'lo']\n", "round {round}");
        assert_eq!(o.vm.as_ref().map(|v| v.warm), Some(round == 2));
        assert!(names_passt(&o.enforced.network), "{:?}", o.enforced.network);
        assert_eq!(accepted.load(Ordering::SeqCst), round);
    }
    assert_eq!(passts().len(), 1, "one passt for the pool's one VM");
    let lo_only = python(
        "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))",
        Policy::default(),
    )
    .vm_pool(&pool)
    .output()
    .unwrap();
    assert_eq!(ok(&lo_only), "['lo']\n");
    assert_eq!(lo_only.enforced.network.helper, None);
    let published = run(user().publish(Publish::tcp(18081, 8080)));
    let Status::SetupFailed(f) = &published.status else {
        panic!("{published:?}")
    };
    assert!(f.message.contains("need a VM of its own"), "{}", f.message);

    let s = sandkasten::Session::start_pooled(user(), &pool).unwrap();
    let o = s
        .command("/usr/bin/python3")
        .args(["-c", &connect])
        .output()
        .unwrap();
    assert_eq!(ok(&o), "hello, pool\n['eth0', 'lo']\n");
    assert!(s.enforced().network.helper.is_some(), "{:?}", s.enforced());
    s.stop(Duration::from_secs(2)).unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    drop(pool);
    assert_eq!(
        passts(),
        Vec::<u32>::new(),
        "every passt ended with the pool"
    );

    let plain = VmPool::new(PoolOptions {
        engine: VmEngine::Qemu,
        ..Default::default()
    })
    .unwrap();
    let o = Sandbox::new("/bin/true")
        .vm_pool(&plain)
        .policy(user())
        .output()
        .unwrap();
    let Status::SetupFailed(f) = &o.status else {
        panic!("{o:?}")
    };
    assert!(
        f.message.contains("PoolOptions::user_network"),
        "{}",
        f.message
    );
}

/// A detached VM session (its keeper process holds the VM and passt): an attached client's commands reach
/// the network, and passt ends when the session is stopped.
#[test]
fn a_detached_vm_sessions_commands_reach_the_network() {
    if !inside("a_detached_vm_sessions_commands_reach_the_network") {
        return;
    }
    use sandkasten::{Detach, Session};
    let accepted = servers::greeter((SERVER, 7000).into(), "hello, detached\n");
    let dir = testkit::TempDir::new("net-vm-detached");
    let d = Session::create(
        user(),
        Detach::new(dir.path().join("ctl.sock"), dir.path().join("status")).vm(VmEngine::Qemu),
    )
    .unwrap();
    let keeper = d.pid as i32;
    // Kills and reaps the keeper (and with it the VM and passt) if an assertion fails first.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: signals and reaps this test's own child; no memory is passed.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
    let reap = Reap(keeper);
    let s = Session::attach(&d).unwrap();
    assert_eq!(ok(&greeting(&s)), "hello, detached\n");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let passt = passts();
    assert_eq!(passt.len(), 1, "{passt:?}");
    s.stop(Duration::from_secs(2)).unwrap();
    let mut status = 0;
    // SAFETY: waits for this test's own child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(keeper, &mut status, 0) }, keeper);
    std::mem::forget(reap);
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !std::path::Path::new(&format!("/proc/{}", passt[0])).exists()
    });
    assert!(gone, "passt {} outlived the detached session", passt[0]);
}
