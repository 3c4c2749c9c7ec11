//! `<Origin><Address>host[:port][/path]</Address>` (ORG-1), over HTTP or, with
//! `<Origin Protocol="HTTPS">` or an `https://` address, over TLS.

use rustls_pki_types::ServerName;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct OriginAddr {
    pub addr: SocketAddr,
    /// The `Host` header sent to this origin (STON's table: the vhost name for an
    /// IP address, the domain for a domain address; `:port` when not 80).
    pub host_header: String,
    /// Prepended to every request path (`/path` part of the address), without a trailing `/`.
    pub path_prefix: String,
    /// As written in the configuration.
    pub text: String,
    /// Over TLS: the name sent as SNI and required in the origin's certificate
    /// (the `Host` header's name, so an origin by IP address is verified as the
    /// vhost it serves).
    pub tls_name: Option<ServerName<'static>>,
    /// Exclusion state and counters, shared by every shard (ORG-3).
    pub health: std::sync::Arc<crate::health::AddrHealth>,
    /// `Route="tomcat1"`: the cookie-route suffix that picks this address.
    pub route: Option<Box<str>>,
    /// Stable across restarts and shards: the rendezvous-hash identity.
    pub id: u64,
    /// The host name, for an address given by name (re-resolved while running).
    pub domain: Option<Box<str>>,
}

/// `<Cairn><Resolver MaxTtlSec>`: the DNS servers domain origins are asked
/// (none: the system's resolver, `getaddrinfo`), and the longest a resolution
/// is kept before the name is asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    pub servers: Vec<SocketAddr>,
    pub max_ttl: std::time::Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            servers: Vec::new(),
            max_ttl: std::time::Duration::from_secs(60),
        }
    }
}

impl Resolver {
    /// `host`'s addresses and how long they may be kept. Blocking.
    pub fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, std::time::Duration), String> {
        // Fuzz builds (`--cfg fuzzing`) must not send a DNS query per input.
        if cfg!(fuzzing) && !host.eq_ignore_ascii_case("localhost") {
            return Err(format!("{host} is not resolved in fuzzing builds"));
        }
        let system = self.servers.is_empty() || host.eq_ignore_ascii_case("localhost");
        let (addrs, ttl): (Vec<SocketAddr>, _) = if system {
            let addrs = (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect();
            (addrs, self.max_ttl)
        } else {
            let (ips, ttl) =
                crate::dns::resolve(&self.servers, host, std::time::Duration::from_secs(3))
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?;
            let ttl = std::time::Duration::from_secs(u64::from(ttl.max(1)));
            (
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                ttl.min(self.max_ttl),
            )
        };
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(format!("{host} has no address"));
        }
        Ok((out, ttl))
    }
}

/// FNV-1a: fixed, unlike a seeded hasher, so Hash mode sends a URL to the
/// same address in every process.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `<Origin Protocol>`: how addresses without a scheme are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OriginProtocol {
    #[default]
    Http,
    Https,
}

impl fmt::Display for OriginAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.contains(&self.addr.to_string()) {
            write!(f, "{}", self.text)
        } else {
            write!(f, "{} ({})", self.text, self.addr)
        }
    }
}

impl OriginAddr {
    /// This address as another IP its name now resolves to: the same Host,
    /// path and TLS name; the health of that IP (kept if it had one).
    pub fn at(&self, vhost_name: &str, addr: SocketAddr) -> OriginAddr {
        OriginAddr {
            addr,
            health: crate::health::shared(vhost_name, &self.text, addr),
            id: stable_hash(&[self.text.as_bytes(), addr.to_string().as_bytes()]),
            ..self.clone()
        }
    }

    /// Parses and resolves an address; the first resolved IP only.
    pub fn parse(
        text: &str,
        vhost_name: &str,
        protocol: OriginProtocol,
    ) -> Result<OriginAddr, String> {
        let mut all = Self::parse_all(text, vhost_name, protocol, &Resolver::default())?;
        Ok(all.swap_remove(0))
    }

    /// Parses and resolves an address: one per resolved IP (a domain with
    /// two A records is two addresses, balanced and excluded apart), never
    /// none. Resolution happens at load, on the main thread.
    pub fn parse_all(
        text: &str,
        vhost_name: &str,
        protocol: OriginProtocol,
        resolver: &Resolver,
    ) -> Result<Vec<OriginAddr>, String> {
        let t = text.trim();
        let scheme = |p: &str| {
            t.get(..p.len())
                .filter(|s| s.eq_ignore_ascii_case(p))
                .map(|_| &t[p.len()..])
        };
        let (t, https) = match (scheme("https://"), scheme("http://")) {
            (Some(rest), _) => (rest, true),
            // Plaintext where the vhost asks for TLS is refused, not quietly taken.
            (_, Some(_)) if protocol == OriginProtocol::Https => {
                return Err(format!(
                    "origin address '{text}' is http:// under <Origin Protocol=\"HTTPS\">"
                ))
            }
            (_, Some(rest)) => (rest, false),
            _ => (t, protocol == OriginProtocol::Https),
        };
        let default_port = if https { 443 } else { 80 };
        let (hostport, path) = match t.find('/') {
            Some(i) => (&t[..i], t[i..].trim_end_matches('/')),
            None => (t, ""),
        };
        if hostport.is_empty() {
            return Err(format!("origin address '{text}' has no host"));
        }
        let (host, port) = split_host_port(hostport, default_port)
            .ok_or_else(|| format!("origin address '{text}': bad port"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(format!("origin address '{text}': bad host"));
        }
        let ip: Option<IpAddr> = host.parse().ok();
        let addrs: Vec<SocketAddr> = match ip {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => {
                resolver
                    .lookup(host, port)
                    .map_err(|e| format!("origin address '{text}': {e}"))?
                    .0
            }
        };
        let base = if ip.is_some() { vhost_name } else { host };
        let host_header = if port == default_port {
            base.to_string()
        } else {
            format!("{base}:{port}")
        };
        let tls_name = match https {
            false => None,
            true => Some(ServerName::try_from(base.to_string()).map_err(|_| {
                format!("origin address '{text}': '{base}' cannot be a TLS server name")
            })?),
        };
        let text = text.trim();
        Ok(addrs
            .into_iter()
            .map(|addr| OriginAddr {
                addr,
                host_header: host_header.clone(),
                path_prefix: path.to_string(),
                text: text.to_string(),
                tls_name: tls_name.clone(),
                health: crate::health::shared(vhost_name, text, addr),
                route: None,
                id: stable_hash(&[text.as_bytes(), addr.to_string().as_bytes()]),
                domain: ip.is_none().then(|| host.into()),
            })
            .collect())
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, bare v6.
fn split_host_port(s: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) => Some((host, p.parse().ok()?)),
            None if after.is_empty() => Some((host, default_port)),
            None => None,
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s, default_port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok().filter(|&p: &u16| p != 0)?)),
        None => Some((s, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        type Want = Result<(&'static str, &'static str, &'static str), ()>;
        let cases: &[(&str, Want)] = &[
            ("10.0.0.1", Ok(("10.0.0.1:80", "www.test", ""))),
            ("10.0.0.1:8080", Ok(("10.0.0.1:8080", "www.test:8080", ""))),
            (
                "10.0.0.1:8080/base/",
                Ok(("10.0.0.1:8080", "www.test:8080", "/base")),
            ),
            (
                "http://127.0.0.1:81/x",
                Ok(("127.0.0.1:81", "www.test:81", "/x")),
            ),
            ("[::1]:8080", Ok(("[::1]:8080", "www.test:8080", ""))),
            ("::1", Ok(("[::1]:80", "www.test", ""))),
            ("localhost:9000", Ok(("", "localhost:9000", ""))),
            ("10.0.0.1:0", Err(())),
            ("10.0.0.1:99999", Err(())),
            ("10.0.0.1:x", Err(())),
            ("", Err(())),
            ("/path", Err(())),
            ("user@host", Err(())),
        ];
        for (text, want) in cases {
            let got = OriginAddr::parse(text, "www.test", OriginProtocol::Http);
            match (got, want) {
                (Ok(o), Ok((addr, host, path))) => {
                    if !addr.is_empty() {
                        assert_eq!(o.addr.to_string(), *addr, "{text}");
                    }
                    assert_eq!(o.host_header, *host, "{text}");
                    assert_eq!(o.path_prefix, *path, "{text}");
                }
                (Err(_), Err(())) => {}
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn tls_forms() {
        use OriginProtocol::*;
        // (address, <Origin Protocol>, socket address, Host, SNI name or none)
        let cases: &[(&str, OriginProtocol, &str, &str, Option<&str>)] = &[
            (
                "https://10.0.0.1",
                Http,
                "10.0.0.1:443",
                "www.test",
                Some("www.test"),
            ),
            (
                "HTTPS://10.0.0.1:8443/b",
                Http,
                "10.0.0.1:8443",
                "www.test:8443",
                Some("www.test"),
            ),
            (
                "10.0.0.1",
                Https,
                "10.0.0.1:443",
                "www.test",
                Some("www.test"),
            ),
            (
                "10.0.0.1:80",
                Https,
                "10.0.0.1:80",
                "www.test:80",
                Some("www.test"),
            ),
            ("http://10.0.0.1", Http, "10.0.0.1:80", "www.test", None),
            (
                "https://localhost:9443",
                Http,
                "",
                "localhost:9443",
                Some("localhost"),
            ),
            ("[::1]", Https, "[::1]:443", "www.test", Some("www.test")),
        ];
        let refused = OriginAddr::parse("http://10.0.0.1", "www.test", Https).unwrap_err();
        assert!(refused.contains("http:// under"), "{refused}");
        for &(text, proto, addr, host, sni) in cases {
            let o = OriginAddr::parse(text, "www.test", proto).unwrap();
            if !addr.is_empty() {
                assert_eq!(o.addr.to_string(), addr, "{text}");
            }
            assert_eq!(o.host_header, host, "{text}");
            let name = o.tls_name.as_ref().map(|n| n.to_str().into_owned());
            assert_eq!(name.as_deref(), sni, "{text}");
        }
    }
}
