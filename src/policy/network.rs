//! The network a sandbox sees: [`Network`], and the ports a user-mode network publishes ([`Publish`]).

use serde::{Deserialize, Serialize};

use super::PolicyError;

/// The network the sandbox sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Network {
    /// A network namespace of its own with only loopback, up.
    #[default]
    None,
    /// The host's network (no network namespace).
    Host,
    /// A network namespace of its own, with loopback up and one interface connected to the host's network
    /// through `pasta` (Debian package `passt`), a user-mode TCP/IP stack running as an unprivileged process
    /// of the host: outbound TCP and UDP, and DNS through a forwarder address in the sandbox's
    /// `/etc/resolv.conf`. The host's loopback services and its abstract unix sockets stay out of reach; the
    /// ports of [`Policy::publish`](super::Policy::publish) are bound on the host. On the namespace backend,
    /// and in a VM of its own on either engine, a run or a session (passt feeds the guest's virtio-net
    /// device); see SECURITY.md.
    User,
}

impl Network {
    /// The mode's name, as written in a policy file: `none`, `host` or `user`.
    pub fn name(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
            Network::User => "user",
        }
    }
}

/// The transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port of the sandbox published on the host, like docker's `-p HOSTPORT:PORT`: connections to
/// `host_port` on any address of the host (TCP), or datagrams to it (UDP), reach `port` inside the sandbox.
/// Only with [`Network::User`].
///
/// In a policy file: `[[publish]]` with `host_port`, `port` and `protocol` (`"tcp"`, the default, or `"udp"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Publish {
    /// The port bound on the host.
    pub host_port: u16,
    /// The port inside the sandbox.
    pub port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl Publish {
    /// Host port `host_port` to the sandbox's TCP port `port`.
    pub fn tcp(host_port: u16, port: u16) -> Publish {
        Publish {
            host_port,
            port,
            protocol: Protocol::Tcp,
        }
    }

    /// Host port `host_port` to the sandbox's UDP port `port`.
    pub fn udp(host_port: u16, port: u16) -> Publish {
        Publish {
            host_port,
            port,
            protocol: Protocol::Udp,
        }
    }
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.protocol)
    }
}

/// `HOSTPORT:PORT[/tcp|/udp]`, docker's `-p` form without an address.
impl std::str::FromStr for Publish {
    type Err = PolicyError;

    fn from_str(spec: &str) -> Result<Publish, PolicyError> {
        let bad = |why| PolicyError::BadPublish {
            spec: spec.into(),
            why,
        };
        let (ports, protocol) = match spec.split_once('/') {
            None => (spec, Protocol::Tcp),
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad("the protocol after `/` must be tcp or udp")),
        };
        let (host, inside) = ports
            .split_once(':')
            .ok_or_else(|| bad("give both ports, the host's first"))?;
        let port = |text: &str| {
            text.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("a port is not a number from 1 to 65535"))
        };
        Ok(Publish {
            host_port: port(host)?,
            port: port(inside)?,
            protocol,
        })
    }
}
