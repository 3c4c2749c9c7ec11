//! A minimal DNS stub client for origin names (ORG-1): A and AAAA queries over
//! UDP to the `<Cairn><Resolver>` servers, with the answers' TTLs, so a domain
//! origin is re-resolved when its records say (capped), like nginx's
//! `resolver … valid=`. Without a configured resolver cairn uses the system's
//! (`getaddrinfo`), which reports no TTL.
//!
//! The message code is pure and bounded: it reads only inside the datagram,
//! follows at most [`MAX_POINTERS`] compression pointers per name, and keeps
//! at most [`MAX_ADDRS`] addresses. A leaf module: it imports nothing of ours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Addresses kept from one answer; more are ignored.
pub const MAX_ADDRS: usize = 32;
/// Compression pointers followed in one name before it is refused.
const MAX_POINTERS: usize = 16;
/// The largest datagram read (EDNS is not asked for: 512 is the classic limit,
/// but servers may send more over UDP on loopback).
const MAX_DATAGRAM: usize = 4096;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The server's fault: a malformed or mismatched answer.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The name does not exist (NXDOMAIN) or has no address.
    #[error("no address for the name")]
    NoAddress,
    /// The server refused or failed (SERVFAIL, REFUSED, …): a retry may work.
    #[error("the server answered with rcode {0}")]
    Rcode(u8),
    #[error("the name is not a valid DNS name")]
    BadName,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("socket: {0}")]
    Io(String),
}

/// A query for `name`'s `qtype` records with this `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::BadName);
    }
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // RD
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(DnsError::BadName);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1]); // IN
    Ok(out)
}

/// The addresses of the answer to query `id` and the smallest TTL among
/// them (seconds). CNAME chains in the answer are followed implicitly: every
/// A/AAAA record of the answer section is the name's (a stub trusts its
/// recursive server, as getaddrinfo does).
pub fn parse_answer(msg: &[u8], id: u16) -> Result<(Vec<IpAddr>, u32), DnsError> {
    let u16_at = |i: usize| -> Result<u16, DnsError> {
        msg.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(DnsError::Malformed("truncated"))
    };
    if u16_at(0)? != id {
        return Err(DnsError::Malformed("another query's id"));
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    // Truncated (TC): a partial set must not replace a whole one.
    if flags & 0x0200 != 0 {
        return Err(DnsError::Malformed("truncated (TC)"));
    }
    match (flags & 0x000f) as u8 {
        0 => {}
        3 => return Err(DnsError::NoAddress),
        r => return Err(DnsError::Rcode(r)),
    }
    let qd = u16_at(4)?;
    let an = u16_at(6)?;
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..an {
        at = skip_name(msg, at)?;
        let rtype = u16_at(at)?;
        let class = u16_at(at + 2)?;
        let rttl = msg
            .get(at + 4..at + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DnsError::Malformed("truncated"))?;
        let len = usize::from(u16_at(at + 8)?);
        let data = msg
            .get(at + 10..at + 10 + len)
            .ok_or(DnsError::Malformed("record past the end"))?;
        at += 10 + len;
        let ip = match (rtype, class, len) {
            (TYPE_A, 1, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (TYPE_AAAA, 1, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            (TYPE_A | TYPE_AAAA, 1, _) => return Err(DnsError::Malformed("address length")),
            _ => continue,
        };
        // A record's TTL is a 31-bit value (RFC 2181 §8); more counts as 0.
        let rttl = if rttl > i32::MAX as u32 { 0 } else { rttl };
        ttl = ttl.min(rttl);
        if addrs.len() < MAX_ADDRS && !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        return Err(DnsError::NoAddress);
    }
    Ok((addrs, ttl))
}

/// Where the name at `at` ends (the offset after it, or after its pointer).
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *msg
            .get(at)
            .ok_or(DnsError::Malformed("name past the end"))?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(end.unwrap_or(at + 1)),
            0x00 => at += 1 + usize::from(len),
            0xc0 => {
                let lo = *msg
                    .get(at + 1)
                    .ok_or(DnsError::Malformed("name past the end"))?;
                end.get_or_insert(at + 2);
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(DnsError::Malformed("a compression loop"));
                }
                at = (usize::from(len & 0x3f) << 8) | usize::from(lo);
            }
            _ => return Err(DnsError::Malformed("a reserved label type")),
        }
    }
}

/// Resolves `name` (A, then AAAA) through `servers`, each tried in turn
/// within `timeout` for the whole. Blocking: for a helper thread or the load.
pub fn resolve(
    servers: &[SocketAddr],
    name: &str,
    timeout: Duration,
) -> Result<(Vec<IpAddr>, u32), DnsError> {
    let deadline = Instant::now() + timeout;
    let mut last = DnsError::Timeout;
    for server in servers {
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        let mut failed = None;
        for qtype in [TYPE_A, TYPE_AAAA] {
            // Each server and query its own share of what is left, so a
            // silent first server does not use up the second's time.
            let share = deadline.saturating_duration_since(Instant::now()) / 2;
            match exchange(*server, name, qtype, Instant::now() + share) {
                Ok((a, t)) => {
                    for ip in a {
                        if !addrs.contains(&ip) {
                            addrs.push(ip);
                        }
                    }
                    ttl = ttl.min(t);
                }
                Err(DnsError::NoAddress) => {}
                Err(e) => failed = Some(e),
            }
        }
        // One family answered and the other failed: not the whole set, so
        // not an answer (a dual-stack name must not lose half on one loss).
        if let Some(e) = failed {
            last = e;
            continue;
        }
        if !addrs.is_empty() {
            addrs.truncate(MAX_ADDRS);
            return Ok((addrs, ttl));
        }
        // The name has no address: another server will not say otherwise.
        return Err(DnsError::NoAddress);
    }
    Err(last)
}

fn exchange(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    deadline: Instant,
) -> Result<(Vec<IpAddr>, u32), DnsError> {
    let io = |e: std::io::Error| DnsError::Io(e.to_string());
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("a literal address")
    } else {
        "[::]:0".parse().expect("a literal address")
    };
    let sock = UdpSocket::bind(bind).map_err(io)?;
    sock.connect(server).map_err(io)?;
    // The id need not be secret against an off-path attacker on loopback or
    // a trusted resolver's network; it must only tell answers apart.
    let id = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u16
    };
    let q = query(id, name, qtype)?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Sent twice at most: UDP may lose the query or the answer.
    let start = Instant::now();
    let half = deadline.saturating_duration_since(start) / 2;
    for resend_at in [start + half, deadline] {
        sock.send(&q).map_err(io)?;
        while let Some(left) = resend_at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left)).map_err(io)?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(io(e)),
            };
            let msg = &buf[..n];
            // Ours: our id and our question echoed (RFC 5452 §9.1).
            let echoed = msg.len() >= q.len() && msg[12..q.len()].eq_ignore_ascii_case(&q[12..]);
            match parse_answer(msg, id) {
                Err(DnsError::Malformed("another query's id")) => continue,
                _ if !echoed => continue,
                r => return r,
            }
        }
    }
    Err(DnsError::Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` with these A records and TTL, names compressed.
    fn answer(q: &[u8], ips: &[[u8; 4]], ttl: u32) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
        for ip in ips {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&[0, 4]);
            m.extend_from_slice(ip);
        }
        m
    }

    #[test]
    fn queries_and_answers() {
        let q = query(0x1234, "origin.test.", TYPE_A).unwrap();
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..25], b"\x06origin\x04test\x00");
        let a = answer(&q, &[[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 1]], 30);
        let (ips, ttl) = parse_answer(&a, 0x1234).unwrap();
        assert_eq!(
            ips,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "127.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(ttl, 30);
        // Another id, not a response, NXDOMAIN, SERVFAIL, nothing.
        assert_eq!(
            parse_answer(&a, 1),
            Err(DnsError::Malformed("another query's id"))
        );
        assert_eq!(
            parse_answer(&q, 0x1234),
            Err(DnsError::Malformed("not a response"))
        );
        let mut nx = a.clone();
        nx[3] = 0x83;
        assert_eq!(parse_answer(&nx, 0x1234), Err(DnsError::NoAddress));
        nx[3] = 0x82;
        assert_eq!(parse_answer(&nx, 0x1234), Err(DnsError::Rcode(2)));
        assert_eq!(
            parse_answer(&answer(&q, &[], 5), 0x1234),
            Err(DnsError::NoAddress)
        );
        for bad in [
            "",
            "a..b",
            "a b",
            &"x".repeat(64),
            &format!("{}.x", "y.".repeat(130)),
        ] {
            assert_eq!(query(1, bad, TYPE_A), Err(DnsError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn hostile_answers_are_refused_not_followed() {
        let q = query(7, "a.test", TYPE_A).unwrap();
        let good = answer(&q, &[[10, 0, 0, 1]], 60);
        // Every truncation: an error, never a panic.
        for n in 0..good.len() {
            assert!(parse_answer(&good[..n], 7).is_err(), "{n}");
        }
        // A pointer to itself.
        let mut looped = good.clone();
        let at = q.len();
        looped[at] = 0xc0;
        looped[at + 1] = at as u8;
        assert_eq!(
            parse_answer(&looped, 7),
            Err(DnsError::Malformed("a compression loop"))
        );
        // An A record of 5 bytes.
        let mut long = good.clone();
        let len_at = good.len() - 6;
        long[len_at + 1] = 5;
        long.push(0);
        assert!(parse_answer(&long, 7).is_err());
        // A TTL past 2^31 counts as 0.
        let big = answer(&q, &[[10, 0, 0, 1]], u32::MAX);
        assert_eq!(parse_answer(&big, 7).unwrap().1, 0);
    }
}
