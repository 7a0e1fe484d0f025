//! User-mode networking (`Network::User`: pasta) on the namespace backend, proven against servers in a
//! network namespace each test makes for itself (`network/netns.rs`): no packet leaves the machine.
//!
//! Without root no such namespace can be made: the tests say SKIPPED. The unprivileged caller is covered from
//! the root pass through `setpriv` ([`unprivileged_caller_gets_user_networking`]).

mod common;
/// The test's namespace and servers, `network/*.rs` (a test's crate root looks for its modules beside it, so
/// the inline `network` gives them the directory).
mod network {
    pub(crate) mod netns;
    pub(crate) mod servers;
}
use network::netns::{GATEWAY, HOST, INSIDE, ROLE, SERVER, inside};
use network::servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio as ProcessStdio};
use std::time::{Duration, Instant};

use sandkasten::{Backend, Network, Outcome, Policy, Publish, Sandbox, Status, Stdio};
use testkit::{TempDir, text};

/// A sandbox on the namespace backend running a python3 script, with user-mode networking.
fn python(script: &str, policy: Policy) -> Sandbox {
    let mut s = Sandbox::new("/usr/bin/python3");
    s.args(["-c", script])
        .backend(Backend::Namespace)
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
        "stdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// The pasta processes among this process's descendants (pasta's command line starts with its name and
/// `--foreground`, see namespace/network/pasta.rs).
fn pastas() -> Vec<u32> {
    common::descendants()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"pasta\0--foreground\0"))
        })
        .collect()
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// (a) The sandbox reaches a server of the network through pasta, and the verdict says how.
#[test]
fn outbound_tcp_reaches_a_server_of_the_network() {
    if !inside("outbound_tcp_reaches_a_server_of_the_network") {
        return;
    }
    let accepted = servers::greeter((SERVER, 7000).into(), "greetings from the test's network\n");
    let o = python(
        &format!(
            "import socket\n\
             s = socket.create_connection(('{SERVER}', 7000), timeout=10)\n\
             print(s.recv(100).decode(), end='')\n\
             print(open('/proc/net/dev').read().count(':'))"
        ),
        user(),
    )
    .output()
    .unwrap();
    let out = ok(&o);
    assert_eq!(out, "greetings from the test's network\n2\n", "lo and eth0");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    let n = &o.enforced.network;
    assert_eq!(n.mode, "user");
    assert!(
        n.helper
            .as_deref()
            .is_some_and(|h| h.starts_with("pasta /")),
        "{n:?}"
    );
    assert_eq!(n.dns_forward.as_deref(), Some("169.254.0.53"));
    assert!(o.enforced.namespaces.iter().any(|s| s == "net"));
    // The same program with the default network reaches nothing (no route; landlock's TCP rules too).
    let o = python(
        &format!("import socket\nsocket.create_connection(('{SERVER}', 7000), timeout=3)"),
        Policy::default(),
    )
    .output()
    .unwrap();
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(o.enforced.network.mode, "none");
}

/// (b) The test namespace's loopback services (by 127.0.0.1 inside, or through the gateway's address, which
/// pasta would map to the host's loopback by default) and its abstract unix sockets stay out of reach, for
/// TCP and UDP; the connections fail inside and nothing arrives outside.
#[test]
fn host_loopback_and_abstract_sockets_stay_out_of_reach() {
    if !inside("host_loopback_and_abstract_sockets_stay_out_of_reach") {
        return;
    }
    let tcp = servers::greeter(
        (Ipv4Addr::LOCALHOST, 7001).into(),
        "LEAK: the host's loopback\n",
    );
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 7002)).unwrap();
    udp.set_nonblocking(true).unwrap();
    let name = format!("sandkasten-net-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let unix = UnixListener::bind_addr(&addr).unwrap();
    unix.set_nonblocking(true).unwrap();
    let o = python(
        &format!(
            "import socket\n\
             for host in ['127.0.0.1', '{GATEWAY}', '{HOST}']:\n\
             \x20   try:\n\
             \x20       s = socket.create_connection((host, 7001), timeout=3)\n\
             \x20       print('tcp', host, 'REACHED', s.recv(100))\n\
             \x20   except OSError as e:\n\
             \x20       print('tcp', host, 'failed', e)\n\
             \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20   try:\n\
             \x20       u.sendto(b'LEAK', (host, 7002))\n\
             \x20   except OSError as e:\n\
             \x20       print('udp', host, 'failed', e)\n\
             a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
             try:\n\
             \x20   a.connect('\\0{name}')\n\
             \x20   print('abstract REACHED')\n\
             except OSError as e:\n\
             \x20   print('abstract failed', e)\n"
        ),
        user(),
    )
    .output()
    .unwrap();
    let out = ok(&o);
    assert!(!out.contains("REACHED"), "{out}");
    let tcp_failed = out
        .lines()
        .filter(|l| l.starts_with("tcp ") && l.contains(" failed "))
        .count();
    assert_eq!(tcp_failed, 3, "{out}");
    assert!(out.contains("abstract failed"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tcp.load(std::sync::atomic::Ordering::SeqCst), 0, "{out}");
    let mut buf = [0u8; 16];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram arrived: {out}"
    );
    assert!(
        unix.accept().is_err(),
        "the abstract socket was reached: {out}"
    );
}

/// (c) Published ports: the test connects from the host's side to servers inside the sandbox, TCP and UDP;
/// the ports are bound only while the run lasts.
#[test]
fn published_ports_reach_servers_inside() {
    if !inside("published_ports_reach_servers_inside") {
        return;
    }
    let script = "import socket\n\
                  t = socket.socket(); t.bind(('0.0.0.0', 8080)); t.listen()\n\
                  u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 5353))\n\
                  print('listening', flush=True)\n\
                  for i in range(2):\n\
                  \x20   c, a = t.accept(); c.sendall(b'inside got ' + c.recv(100)); c.close()\n\
                  d, a = u.recvfrom(100); u.sendto(b'inside echoes ' + d, a)\n";
    let mut child = python(
        script,
        user()
            .publish(Publish::tcp(18080, 8080))
            .publish(Publish::udp(5353, 5353)),
    )
    .stdout(Stdio::Piped)
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "listening\n");
    // From the host's loopback (pasta splices these), and from another address of the host (through the
    // sandbox's interface). The client speaks first: with Debian 12's pasta (2023-03) a connection on the
    // second path completes its handshake only once the client sends.
    for from_to in [(Ipv4Addr::LOCALHOST, 18080), (SERVER, 18080)] {
        let mut c = TcpStream::connect_timeout(&from_to.into(), Duration::from_secs(10)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "inside got hello", "{from_to:?}");
    }
    // UDP from the host's loopback, to the same port number inside (with Debian 12's pasta a different
    // number inside loses the answer).
    let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    u.send_to(b"ping", (Ipv4Addr::LOCALHOST, 5353)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = u.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"inside echoes ping");
    let o = child.wait().unwrap();
    assert_eq!(o.status, Status::Exited(0), "{}", text(&o.stderr));
    assert_eq!(
        o.enforced.network.published,
        [Publish::tcp(18080, 8080), Publish::udp(5353, 5353)]
    );
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, 18080)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the port is released with the run"
    );
}

/// (d) The sandbox's resolv.conf names pasta's forwarder, whose queries reach the host's name server (a
/// tiny one of the test's namespace); the hosts file maps the sandbox's hostname.
#[test]
fn dns_goes_through_pastas_forwarder() {
    if !inside("dns_goes_through_pastas_forwarder") {
        return;
    }
    let queries = servers::dns_server();
    let o = python(
        "import socket\n\
         print([l for l in open('/etc/resolv.conf').read().splitlines() if l.startswith('nameserver')])\n\
         print(socket.gethostbyname('example.test'))\n\
         print(socket.gethostname(), socket.gethostbyname(socket.gethostname()))",
        user().hostname("netbox"),
    )
    .output()
    .unwrap();
    assert_eq!(
        ok(&o),
        "['nameserver 169.254.0.53']\n192.0.2.77\nnetbox 127.0.1.1\n"
    );
    assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// (e) An unprivileged caller (uid 65534 through setpriv, running a copy of this test binary) gets the
/// same: pasta then runs as that user.
#[test]
fn unprivileged_caller_gets_user_networking() {
    let test = "unprivileged_caller_gets_user_networking";
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
        assert_eq!(ok(&o), "hello, unprivileged sandbox\n");
        assert_eq!(o.enforced.host_uid, 65534);
        assert_eq!(o.enforced.network.mode, "user");
        return;
    }
    if !inside(test) {
        return;
    }
    let accepted = servers::greeter((SERVER, 7000).into(), "hello, unprivileged sandbox\n");
    let stage = TempDir::with_mode("net-unpriv", 0o755);
    let exe = stage.join("network-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "client")
        .env_remove(INSIDE)
        .current_dir("/")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "as uid 65534 ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// (f) pasta is there while the run lasts and gone when it ends; and when the caller is SIGKILLed, pasta
/// goes too.
#[test]
fn pasta_ends_with_the_run_and_with_a_killed_caller() {
    let test = "pasta_ends_with_the_run_and_with_a_killed_caller";
    if std::env::var(ROLE).as_deref() == Ok("victim") {
        let mut child = python("import time\ntime.sleep(120)", user())
            .spawn()
            .unwrap();
        let pasta = pastas();
        println!("pasta {pasta:?} init {}", child.id());
        std::io::stdout().flush().unwrap();
        let _ = child.wait();
        return;
    }
    if !inside(test) {
        return;
    }
    // While the run lasts: one pasta, an unprivileged process (the sandbox's host uid, never root), confined
    // by itself (seccomp, no new privileges, only two capabilities left).
    let mut child = python(
        "import sys\nprint('ready', flush=True)\nsys.stdin.read()",
        user(),
    )
    .stdin(Stdio::Piped)
    .stdout(Stdio::Piped)
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let running = pastas();
    assert_eq!(running.len(), 1, "{running:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", running[0])).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    // The sandbox user's host id: a root caller's block of the reserved range (or 65534 with one id).
    let uid: u32 = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    assert!(uid == 65534 || uid >= 100_000, "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    let caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    assert_eq!(
        caps & !((1 << 10) | (1 << 21)),
        0,
        "only NET_BIND_SERVICE and SYS_ADMIN (in the sandbox's user namespace): {status}"
    );
    drop(child.stdin.take());
    assert_eq!(child.wait().unwrap().status, Status::Exited(0));
    assert!(!alive(running[0]), "pasta outlived the run");
    common::assert_no_descendants();

    // The caller SIGKILLed: nothing of it may stay. Orphans come back to this process, which reaps them.
    // SAFETY: prctl with integer arguments.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(subreaper, 0);
    let mut victim = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "victim")
        .env_remove(INSIDE)
        .stdout(ProcessStdio::piped())
        .spawn()
        .unwrap();
    // libtest may have begun the line with the test's name.
    let mut said = String::new();
    for line in BufReader::new(victim.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find("pasta [") {
            said = line[at..].to_string();
            break;
        }
    }
    let pasta: Vec<u32> = said
        .split(['[', ']'])
        .nth(1)
        .unwrap_or_default()
        .split(", ")
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pasta.len(), 1, "the victim's pasta: {said:?}");
    assert!(alive(pasta[0]));
    victim.kill().unwrap();
    victim.wait().unwrap();
    let start = Instant::now();
    loop {
        // SAFETY: waitpid with a null status pointer only reaps.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        if !alive(pasta[0]) && common::descendants().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "left behind by a SIGKILLed caller: pasta alive {}, descendants {:?}",
            alive(pasta[0]),
            common::descendants()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (g) The sandboxed program cannot find, signal or trace pasta: pasta runs outside the sandbox's pid
/// namespace, and is not dumpable.
#[test]
fn the_sandbox_cannot_see_signal_or_trace_pasta() {
    if !inside("the_sandbox_cannot_see_signal_or_trace_pasta") {
        return;
    }
    let script = "import ctypes, os, signal, sys\n\
                  comms = [open('/proc/%s/comm' % p).read().strip() for p in os.listdir('/proc') if p.isdigit()]\n\
                  print('comms', sorted(comms), flush=True)\n\
                  pid = int(sys.stdin.readline())\n\
                  print('visible', os.path.exists('/proc/%d' % pid))\n\
                  try:\n\
                  \x20   os.kill(pid, signal.SIGKILL); print('kill SUCCEEDED')\n\
                  except OSError as e:\n\
                  \x20   print('kill', e.errno)\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  print('ptrace', libc.ptrace(16, pid, 0, 0))\n\
                  print('pidfd_open', libc.syscall(434, pid, 0))\n\
                  print('done', flush=True)\n\
                  sys.stdin.read()\n";
    let mut child = python(script, user())
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("comms ") && !line.contains("pasta") && !line.contains("passt"),
        "{line}"
    );
    let pasta = pastas();
    assert_eq!(pasta.len(), 1);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", pasta[0]).unwrap();
    let mut report = String::new();
    while !report.contains("done\n") {
        if out.read_line(&mut report).unwrap() == 0 {
            break;
        }
    }
    assert_eq!(
        report,
        format!(
            "visible False\nkill {}\nptrace -1\npidfd_open -1\ndone\n",
            libc::ESRCH
        )
    );
    assert!(alive(pasta[0]), "pasta survived the attempts");
    drop(stdin);
    assert_eq!(child.wait().unwrap().status, Status::Exited(0));
}

/// Landlock's TCP rules with user-mode networking: off by default (outbound connections are the mode's
/// point); asked for (`restrict_tcp`), a published port is one the program may bind, and no other.
#[test]
fn landlock_tcp_rules_follow_the_published_ports() {
    if !inside("landlock_tcp_rules_follow_the_published_ports") {
        return;
    }
    let script = "import socket\n\
                  for port in [8080, 8081]:\n\
                  \x20   try:\n\
                  \x20       socket.socket().bind(('0.0.0.0', port)); print(port, 'bound')\n\
                  \x20   except OSError as e:\n\
                  \x20       print(port, 'refused', e.errno)\n";
    let o = python(script, user()).output().unwrap();
    assert_eq!(ok(&o), "8080 bound\n8081 bound\n");
    assert!(
        o.enforced
            .landlock
            .as_ref()
            .is_some_and(|l| l.net.is_none()),
        "no TCP rules by default: {:?}",
        o.enforced.landlock
    );
    let mut policy = user().publish(Publish::tcp(18080, 8080));
    policy.landlock.restrict_tcp = Some(true);
    let o = python(script, policy).output().unwrap();
    assert_eq!(
        ok(&o),
        format!("8080 bound\n8081 refused {}\n", libc::EACCES)
    );
    let net = o.enforced.landlock.unwrap().net.unwrap();
    assert_eq!(net.tcp_bind, [8080]);
}
