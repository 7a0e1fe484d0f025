//! The test's own network namespace for the user-mode networking tests (tests/network.rs on the namespace
//! backend, tests/network_vm.rs on the QEMU engine): each test re-executes its test binary, filtered to
//! itself, in new network and mount namespaces (`unshare --net --mount`, which needs root). There the
//! namespace gets a veth pair whose end `sbx0` carries [`HOST`] (pasta and passt copy it, as they would a
//! host's address) and [`SERVER`] (where the test's servers listen: "a machine of the network"), a default
//! route through [`GATEWAY`] (no one answers there), a private `/dev/net/tun` of mode 0666 as Debian's udev
//! makes it, and an `/etc/resolv.conf` naming [`SERVER`], which pasta and passt read. Within that namespace
//! the "host" of the stack is the test's namespace, whose loopback and abstract unix sockets must stay out of
//! the sandbox's reach.

use std::net::Ipv4Addr;
use std::process::Command;

use testkit::text;

/// The address of the test namespace that pasta copies into the sandbox (the "host's" address).
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The test's servers: another address of the test namespace, outside the sandbox.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The default gateway of the test namespace: nothing answers there.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// Which test the re-executed binary runs inside its namespace.
pub const INSIDE: &str = "SANDKASTEN_NET_TEST";
/// What a further re-execution of the test binary does in the same namespace (`client`, `victim`).
pub const ROLE: &str = "SANDKASTEN_NET_TEST_ROLE";

/// Whether to run the test's body here: inside the test's own namespace (set up first), yes; outside, this
/// runs the test again inside one and asserts that it passed there, or says SKIPPED without root.
pub fn inside(test: &str) -> bool {
    if std::env::var(INSIDE).as_deref() == Ok(test) {
        set_up_namespace();
        return true;
    }
    if !testkit::is_root() {
        eprintln!(
            "SKIPPED {test}: making the test's network namespace (veth pair, tun node) needs root; the \
             unprivileged caller is tested from the root pass through setpriv"
        );
        return false;
    }
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, test)
        .env_remove(ROLE)
        .current_dir("/")
        .output()
        .expect("unshare runs");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} failed inside its network namespace ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}

/// Runs a command of the namespace's set-up; it must succeed.
fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The test's network namespace (see the file's docs). Only in this process's private namespaces.
fn set_up_namespace() {
    run(&["ip", "link", "set", "lo", "up"]);
    run(&[
        "ip", "link", "add", "sbx0", "type", "veth", "peer", "name", "sbx1",
    ]);
    run(&["ip", "link", "set", "sbx1", "up"]);
    for addr in [HOST, SERVER] {
        run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "sbx0"]);
    }
    run(&["ip", "link", "set", "sbx0", "up"]);
    run(&["ip", "route", "add", "default", "via", &GATEWAY.to_string()]);
    // A tmpfs over /dev/net, in this mount namespace only: a tun node every user may open, and the
    // resolv.conf pasta reads.
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "tmpfs",
        "/dev/net",
    ]);
    run(&["mknod", "-m", "0666", "/dev/net/tun", "c", "10", "200"]);
    std::fs::write("/dev/net/resolv.conf", format!("nameserver {SERVER}\n")).unwrap();
    run(&[
        "mount",
        "--bind",
        "/dev/net/resolv.conf",
        "/etc/resolv.conf",
    ]);
}
