//! Where a guest granted the network may connect: a list of [`NetRule`]s,
//! checked by wasmtime-wasi on every address a socket uses.
//!
//! A rule is an address or network with an optional port (`203.0.113.7`,
//! `10.1.0.0/16:5432`, `[2001:db8::/32]:443`), or `*` for anything. The
//! host's own and private ranges (loopback, link-local, RFC 1918, CGNAT,
//! ULA, multicast …) are reached only through a rule that lies inside
//! them: `0.0.0.0/0` reaches the internet, not `127.0.0.1`. Guests never
//! listen or bind to a port of their own; the implicit bind of an
//! outgoing connection (wildcard address, port 0) is allowed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use wasmtime_wasi::sockets::SocketAddrUse;

/// One address, network or `*` a guest may reach, with an optional port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NetRule {
    /// Any address, the host's own included (`sandmill exec` and
    /// `sandmill run`: one person's own machine).
    Any,
    /// Addresses in `net`, on `port` or any port.
    Net {
        /// The network.
        net: IpNet,
        /// The port, or every port.
        port: Option<u16>,
    },
}

/// Ranges a rule must lie inside to reach (see the module's comment).
const SPECIAL: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

fn special() -> impl Iterator<Item = IpNet> {
    SPECIAL.iter().map(|s| s.parse().expect("a valid network"))
}

/// The address as IPv4 when it is an IPv4-mapped IPv6 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl NetRule {
    /// Whether a guest may connect or send to `addr` under this rule.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        let NetRule::Net { net, port } = self else {
            return true;
        };
        let ip = canonical(addr.ip());
        if port.is_some_and(|p| p != addr.port()) || !net.contains(&ip) {
            return false;
        }
        // A special address only through a rule inside its range.
        let mut ranges = special();
        match ranges.find(|range| range.contains(&ip)) {
            Some(range) => range.contains(net),
            None => true,
        }
    }
}

/// Whether a socket may use `addr` for `usage` under `rules`.
pub fn permits(rules: &[NetRule], addr: SocketAddr, usage: SocketAddrUse) -> bool {
    if rules.contains(&NetRule::Any) {
        return true;
    }
    match usage {
        // The implicit bind before a connection or a send.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            addr.ip().is_unspecified() && addr.port() == 0
        }
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        // Connect, send, receive: the remote address.
        _ => rules.iter().any(|rule| rule.allows(addr)),
    }
}

/// A rule that is not `*`, an address or network with an optional port.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a network rule like 203.0.113.7, 10.0.0.0/8:5432, [2001:db8::/32]:443 or *")]
pub struct BadNetRule(String);

impl FromStr for NetRule {
    type Err = BadNetRule;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadNetRule(text.to_owned());
        if text == "*" {
            return Ok(NetRule::Any);
        }
        let (net, port) = if let Some(rest) = text.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (net, port)
        } else if text.matches(':').count() == 1 {
            let (net, port) = text.split_once(':').ok_or_else(bad)?;
            (net, Some(port))
        } else {
            (text, None)
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| bad()))
            .transpose()?;
        let net = match net.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => IpNet::from(net.parse::<IpAddr>().map_err(|_| bad())?),
        };
        Ok(NetRule::Net { net, port })
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetRule::Any => f.write_str("*"),
            NetRule::Net { net, port: None } => write!(f, "{net}"),
            NetRule::Net {
                net: net @ IpNet::V6(_),
                port: Some(port),
            } => write!(f, "[{net}]:{port}"),
            NetRule::Net {
                net,
                port: Some(port),
            } => write!(f, "{net}:{port}"),
        }
    }
}

impl TryFrom<String> for NetRule {
    type Error = BadNetRule;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<NetRule> for String {
    fn from(rule: NetRule) -> Self {
        rule.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(text: &str) -> NetRule {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print_back() {
        for text in [
            "*",
            "203.0.113.7/32",
            "10.0.0.0/8:5432",
            "[2001:db8::/32]:443",
            "2001:db8::/32",
        ] {
            assert_eq!(rule(text).to_string(), text);
        }
        assert_eq!(rule("203.0.113.7").to_string(), "203.0.113.7/32");
        assert_eq!(rule("10.1.2.3/8").to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "example.com",
            "1.2.3.4:http",
            "1.2.3.4:70000",
            "[::1",
            "[::1]x",
        ] {
            assert!(bad.parse::<NetRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_hosts_own_and_private_ranges_need_a_rule_inside_them() {
        let internet = [rule("0.0.0.0/0"), rule("::/0")];
        let connect = SocketAddrUse::TcpConnect;
        assert!(permits(&internet, addr("203.0.113.7:443"), connect));
        for private in [
            "127.0.0.1:80",
            "10.1.2.3:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[fe80::1]:80",
            "0.0.0.0:80",
        ] {
            assert!(!permits(&internet, addr(private), connect), "{private}");
        }
        let listed = [rule("127.0.0.1:8080")];
        assert!(permits(&listed, addr("127.0.0.1:8080"), connect));
        assert!(!permits(&listed, addr("127.0.0.1:8081"), connect));
        assert!(!permits(&listed, addr("203.0.113.7:8080"), connect));
        // No listening, no binding of a port, whatever the rules.
        assert!(permits(&listed, addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(!permits(
            &listed,
            addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(!permits(
            &listed,
            addr("127.0.0.1:8080"),
            SocketAddrUse::TcpListen
        ));
        assert!(permits(
            &[NetRule::Any],
            addr("127.0.0.1:1"),
            SocketAddrUse::TcpListen
        ));
        assert!(!permits(&[], addr("203.0.113.7:443"), connect));
    }
}
