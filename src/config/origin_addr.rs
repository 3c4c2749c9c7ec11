//! `<Origin><Address>host[:port][/path]</Address>` (ORG-1).

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAddr {
    pub addr: SocketAddr,
    /// The `Host` header sent to this origin (STON's table: the vhost name for an
    /// IP address, the domain for a domain address; `:port` when not 80).
    pub host_header: String,
    /// Prepended to every request path (`/path` part of the address), without a trailing `/`.
    pub path_prefix: String,
    /// As written in the configuration.
    pub text: String,
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
    /// Parses and resolves an address. Resolution happens once, at load, on the main thread.
    pub fn parse(text: &str, vhost_name: &str) -> Result<OriginAddr, String> {
        let t = text.trim();
        let t = t.strip_prefix("http://").unwrap_or(t);
        if t.starts_with("https://") {
            return Err(format!(
                "origin address '{text}': https origins are not supported yet"
            ));
        }
        let (hostport, path) = match t.find('/') {
            Some(i) => (&t[..i], t[i..].trim_end_matches('/')),
            None => (t, ""),
        };
        if hostport.is_empty() {
            return Err(format!("origin address '{text}' has no host"));
        }
        let (host, port) = split_host_port(hostport)
            .ok_or_else(|| format!("origin address '{text}': bad port"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(format!("origin address '{text}': bad host"));
        }
        let ip: Option<IpAddr> = host.parse().ok();
        let addr = match ip {
            Some(ip) => SocketAddr::new(ip, port),
            // Fuzz builds (`--cfg fuzzing`) must not send a DNS query per input.
            None if cfg!(fuzzing) && !host.eq_ignore_ascii_case("localhost") => {
                return Err(format!(
                    "origin address '{text}': {host} is not resolved in fuzzing builds"
                ));
            }
            None => (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("origin address '{text}': cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("origin address '{text}': {host} has no address"))?,
        };
        let base = if ip.is_some() { vhost_name } else { host };
        let host_header = if port == 80 {
            base.to_string()
        } else {
            format!("{base}:{port}")
        };
        Ok(OriginAddr {
            addr,
            host_header,
            path_prefix: path.to_string(),
            text: text.trim().to_string(),
        })
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, bare v6.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) => Some((host, p.parse().ok()?)),
            None if after.is_empty() => Some((host, 80)),
            None => None,
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s, 80));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok().filter(|&p: &u16| p != 0)?)),
        None => Some((s, 80)),
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
            ("https://a", Err(())),
            ("user@host", Err(())),
        ];
        for (text, want) in cases {
            let got = OriginAddr::parse(text, "www.test");
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
}
