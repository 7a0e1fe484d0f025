//! The servers of the user-mode networking tests' namespaces: a TCP greeter and a tiny DNS server.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::netns::SERVER;

/// A TCP server of the test namespace: every connection gets `greeting`; the count of connections it
/// accepted.
pub fn greeter(addr: SocketAddr, greeting: &'static str) -> Arc<AtomicU32> {
    let listener = TcpListener::bind(addr).unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = c.write_all(greeting.as_bytes());
        }
    });
    count
}

/// A DNS server of the test namespace (on [`SERVER`], named by its resolv.conf): `example.test` is
/// 192.0.2.77; every other question gets an empty answer. The count of queries.
pub fn dns_server() -> Arc<AtomicU32> {
    let sock = UdpSocket::bind((SERVER, 53)).unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut q = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut q) {
            seen.fetch_add(1, Ordering::SeqCst);
            if let Some(answer) = dns_answer(&q[..n]) {
                let _ = sock.send_to(&answer, from);
            }
        }
    });
    count
}

/// The answer to one DNS query (see [`dns_server`]).
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    // The question's name: labels up to a zero byte, then type and class.
    let mut end = 12;
    let mut name = Vec::new();
    while *q.get(end)? != 0 {
        let len = q[end] as usize;
        name.push(String::from_utf8_lossy(q.get(end + 1..end + 1 + len)?).to_lowercase());
        end += 1 + len;
    }
    let question = q.get(12..end + 5)?;
    let qtype = u16::from_be_bytes([q[end + 1], q[end + 2]]);
    let known = name.join(".") == "example.test" && qtype == 1;
    let mut r = Vec::new();
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(known), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if known {
        // The name by a pointer to the question's, type A, class IN, TTL 60, four bytes of address.
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 77]);
    }
    Some(r)
}
