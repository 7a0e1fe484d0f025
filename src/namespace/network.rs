//! The sandbox's network by mode ([`Network`]): what the mode writes into the sandbox's `/etc`, what the
//! verdict says about it, and for [`Network::User`] the helper that connects the sandbox's network namespace
//! to the host's network ([`pasta`], started and ended with the run through a keeper process, [`keeper`]).
//!
//! | mode | network namespace | `/etc/hosts`, `/etc/resolv.conf` |
//! |---|---|---|
//! | `none` | its own, loopback only | written: the sandbox's hostname on loopback; no name server |
//! | `host` | the host's | the host's |
//! | `user` | its own, loopback and `eth0` from pasta | written: the hostname on loopback; [`DNS_FORWARD`] |

mod keeper;
#[cfg(feature = "vm")]
pub(crate) mod passt;
pub(crate) mod pasta;

use std::net::Ipv4Addr;

use super::idmap::IdMaps;
use crate::outcome::{NetworkEnforced, SetupFailure};
use crate::policy::{Network, Policy};

/// The name server of the sandbox's `/etc/resolv.conf` with [`Network::User`]: pasta answers UDP port 53 at
/// this address by forwarding the query to the host's first name server (`--dns-forward`), and the answer
/// back. A link-local address that no real machine is expected to hold; the sandbox routes it to pasta like
/// every address that is not its own.
pub const DNS_FORWARD: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 53);

/// The `/etc` entries of the system view that the network mode writes instead of copying the host's:
/// `(name below /etc, contents)`. The host's files describe the host's network, which `none` and `user` do
/// not have: its name servers, and names that map the host's hostname rather than the sandbox's.
pub(crate) fn etc_files(policy: &Policy) -> Vec<(&'static str, Vec<u8>)> {
    let hosts = || {
        format!(
            "# Written by sandkasten for network = \"{}\".\n127.0.0.1\tlocalhost\n::1\tlocalhost \
             ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            policy.network.name(),
            policy.hostname
        )
        .into_bytes()
    };
    match policy.network {
        Network::Host => Vec::new(),
        Network::User => vec![
            ("hosts", hosts()),
            (
                "resolv.conf",
                format!(
                    "# Written by sandkasten for network = \"user\": pasta forwards queries sent here to the \
                     host's name server.\nnameserver {DNS_FORWARD}\n"
                )
                .into_bytes(),
            ),
        ],
        // `None` and any later mode without the host's network.
        _ => vec![
            ("hosts", hosts()),
            (
                "resolv.conf",
                b"# Written by sandkasten for network = \"none\": no name server, the sandbox has no network.\n"
                    .to_vec(),
            ),
        ],
    }
}

/// Connects the sandbox's network namespace as the mode asks, while the sandbox's first process (`pid`)
/// still waits for its release: with [`Network::User`] pasta is started and has configured the namespace
/// when this returns. The helper ends when the returned value is dropped.
pub(crate) fn connect(
    policy: &Policy,
    pid: libc::pid_t,
    maps: &IdMaps,
) -> Result<Option<pasta::Helper>, SetupFailure> {
    match policy.network {
        Network::User => pasta::start(policy, pid, maps).map(Some),
        _ => Ok(None),
    }
}

/// The verdict's account of the network: the mode, and with `user` the helper, the DNS forwarder and the
/// published ports.
pub(crate) fn enforced(policy: &Policy, helper: Option<&pasta::Helper>) -> NetworkEnforced {
    let mut n = NetworkEnforced {
        mode: policy.network.name().into(),
        ..NetworkEnforced::default()
    };
    if let Some(h) = helper {
        n.helper = Some(format!("pasta {}", h.program.display()));
        n.dns_forward = Some(DNS_FORWARD.to_string());
        n.published = policy.publish.clone();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_follow_the_mode() {
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        let user = etc_files(&Policy::default().network(Network::User).hostname("box"));
        let names: Vec<&str> = user.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["hosts", "resolv.conf"]);
        assert!(
            text(&user[0].1).contains("127.0.1.1\tbox\n"),
            "{}",
            text(&user[0].1)
        );
        assert!(text(&user[0].1).contains("127.0.0.1\tlocalhost\n"));
        assert!(text(&user[1].1).ends_with("\nnameserver 169.254.0.53\n"));
        let none = etc_files(&Policy::default());
        assert!(text(&none[0].1).contains("127.0.1.1\tsandbox\n"));
        assert!(!text(&none[1].1).contains("nameserver"));
        assert!(etc_files(&Policy::default().network(Network::Host)).is_empty());
        // Every file the mode writes is one the system view would otherwise copy from the host.
        for (name, _) in user.iter().chain(&none) {
            assert!(crate::policy::SYSTEM_ETC.contains(name), "{name}");
        }
    }

    #[test]
    fn the_verdict_names_the_mode() {
        let n = enforced(&Policy::default(), None);
        assert_eq!(n.mode, "none");
        assert_eq!(n.helper, None);
        assert!(n.published.is_empty());
        assert_eq!(
            enforced(&Policy::default().network(Network::Host), None).mode,
            "host"
        );
    }
}
