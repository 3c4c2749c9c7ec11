//! The condition language shared by the rule files (spec §0, MOD-6, EXP-3).
//!
//! A condition is one or more terms joined by ` & ` (all must hold). A term is
//! `$KIND[...]`, or `!KIND[...]` for its negation, or a bare URL pattern:
//!
//! | term                      | holds when                                                   |
//! |---------------------------|--------------------------------------------------------------|
//! | `$IP[1.2.3.4]`, `$IP[::1]`| the client (TCP peer, MOD-8) is that address                 |
//! | `$IP[192.168.2.1-255]`    | last-octet range (also `a.b.c.d-e.f.g.h`, and IPv6 `x-y`)   |
//! | `$IP[10.0.0.0/8]`         | CIDR, v4 or v6                                               |
//! | `$IP[10.0.0.0/255.0.0.0]` | netmask                                                      |
//! | `$IP[KR]`, `$IP[KOR]`, `$IP[AP]` | GeoIP country (alpha-2/alpha-3) or continent code     |
//! | `$HEADER[k: v]`           | a request header `k` has a value matching `v` (`*`, any case)|
//! | `$HEADER[k]`, `$HEADER[k:]` | header present / present and empty                         |
//! | `$URL[p]` or `p`          | path plus query matches `p` (case-sensitive)                 |
//! | `$METHOD[GET]`            | the method is GET (`GET|HEAD` lists are accepted too)        |
//! | `$MIME[image/*]`          | the response Content-Type, without parameters, matches       |
//!
//! Evaluation reads borrowed facts from [`MatchCtx`] and allocates nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::pattern::{Case, Pattern};
use super::rulefile::{and_terms, bracket_open, matching_close, snippet, Unclosed};

/// Why a condition did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CondError {
    #[error("empty condition")]
    Empty,
    #[error("empty term in a ' & ' condition")]
    EmptyTerm,
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("unknown condition {0:?} (expected $IP, $HEADER, $URL, $METHOD or $MIME)")]
    UnknownKind(String),
    #[error("text after the closing ']' in {0:?}")]
    TrailingText(String),
    #[error("{0:?} is not an IP address, range, CIDR, netmask or GeoIP code")]
    BadIp(String),
    #[error("bad IP range {0:?} (low must not exceed high, same address family)")]
    BadRange(String),
    #[error("bad prefix length or netmask in {0:?}")]
    BadMask(String),
    #[error("bad header name {0:?}")]
    BadHeaderName(String),
    #[error("empty pattern in {0}")]
    EmptyPattern(&'static str),
    #[error("bad method list {0:?}")]
    BadMethod(String),
    #[error("{0:?}: '!' negates a condition such as !URL[...]")]
    NegatedBare(String),
}

/// Country facts for one address, borrowed from a GeoIP database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoInfo<'a> {
    /// ISO 3166-1 alpha-2, e.g. `KR`.
    pub country2: &'a str,
    /// ISO 3166-1 alpha-3, e.g. `KOR`; empty when the database has none.
    pub country3: &'a str,
    /// Continent code, e.g. `AS` (or legacy `AP`).
    pub continent: &'a str,
}

/// A GeoIP database (MaxMind `.mmdb` in the runtime; a table in tests).
pub trait GeoLookup {
    fn country(&self, ip: IpAddr) -> Option<GeoInfo<'_>>;
}

/// Read access to the request headers, whatever their storage.
pub trait HeaderLookup {
    /// True if some value of header `name` (ASCII case-insensitive) satisfies
    /// `pred`; stops at the first that does.
    fn any_value(&self, name: &[u8], pred: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> HeaderLookup for Vec<(K, V)> {
    fn any_value(&self, name: &[u8], pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.as_slice().any_value(name, pred)
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> HeaderLookup for &[(K, V)] {
    fn any_value(&self, name: &[u8], pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.iter()
            .any(|(n, v)| n.as_ref().eq_ignore_ascii_case(name) && pred(v.as_ref()))
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>, const N: usize> HeaderLookup for [(K, V); N] {
    fn any_value(&self, name: &[u8], pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.as_slice().any_value(name, pred)
    }
}

/// Adapts anything that can iterate its headers again and again, e.g.
/// `HeaderIter(|| request_head.headers())`.
pub struct HeaderIter<F>(pub F);

impl<F, I, K, V> HeaderLookup for HeaderIter<F>
where
    F: Fn() -> I,
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    fn any_value(&self, name: &[u8], pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        (self.0)()
            .into_iter()
            .any(|(n, v)| n.as_ref().eq_ignore_ascii_case(name) && pred(v.as_ref()))
    }
}

/// A request without headers.
pub struct NoHeaders;

impl HeaderLookup for NoHeaders {
    fn any_value(&self, _: &[u8], _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        false
    }
}

/// What a condition is evaluated against. Everything is borrowed.
#[derive(Clone, Copy)]
pub struct MatchCtx<'a> {
    /// The TCP peer (MOD-8: not X-Forwarded-For). IPv4-mapped IPv6 addresses
    /// are treated as the IPv4 address.
    pub client_ip: IpAddr,
    pub method: &'a [u8],
    /// Path plus query, as the request sent it.
    pub url: &'a [u8],
    /// The client's request headers (also for response rules: `$HEADER` always
    /// looks at the request).
    pub headers: &'a dyn HeaderLookup,
    /// The response `Content-Type` value, parameters allowed (stripped here).
    pub mime: Option<&'a [u8]>,
    pub geo: Option<&'a dyn GeoLookup>,
}

/// An `$IP[...]` operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpCond {
    Addr(IpAddr),
    /// Inclusive, both ends of the same family.
    Range {
        lo: IpAddr,
        hi: IpAddr,
    },
    /// `addr` is already masked.
    Net {
        addr: IpAddr,
        mask: IpAddr,
    },
    /// Country (alpha-2 or alpha-3) or continent code, uppercase.
    Geo(Box<str>),
}

/// The test of a `$HEADER[...]` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    /// `$HEADER[key]`
    Present,
    /// `$HEADER[key:]`
    Empty,
    /// `$HEADER[key: value]`, case-insensitive, `*` allowed.
    Value(Pattern),
}

/// One condition kind with its operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Ip(IpCond),
    Header {
        name: Box<str>,
        test: HeaderTest,
    },
    Url(Pattern),
    /// Uppercase method names; the request's must equal one of them.
    Method(Box<[Box<str>]>),
    Mime(Pattern),
}

/// A condition term, possibly negated (`!KIND[...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub negated: bool,
    pub cond: Cond,
}

/// Terms joined by ` & `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    terms: Box<[Term]>,
}

impl Condition {
    /// Parses a condition field.
    pub fn parse(s: &str) -> Result<Condition, CondError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CondError::Empty);
        }
        let terms = and_terms(s)?
            .into_iter()
            .map(parse_term)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Condition {
            terms: terms.into_boxed_slice(),
        })
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// True when some term needs a GeoIP database (the loader warns without one).
    pub fn uses_geo(&self) -> bool {
        self.terms
            .iter()
            .any(|t| matches!(t.cond, Cond::Ip(IpCond::Geo(_))))
    }

    /// Whether every term holds. A GeoIP term whose country is unknown (no
    /// database, or no record for the address) holds neither way: `$IP[KR]` and
    /// `!IP[KR]` are both false, so a missing database never widens a rule.
    pub fn matches(&self, ctx: &MatchCtx<'_>) -> bool {
        self.terms.iter().all(|t| match t.cond.eval(ctx) {
            Some(v) => v != t.negated,
            None => false,
        })
    }
}

impl Cond {
    /// `None` when the answer is unknown (GeoIP without a country).
    fn eval(&self, ctx: &MatchCtx<'_>) -> Option<bool> {
        Some(match self {
            Cond::Ip(ip) => return ip.eval(ctx),
            Cond::Header { name, test } => {
                let name = name.as_bytes();
                match test {
                    HeaderTest::Present => ctx.headers.any_value(name, &mut |_| true),
                    HeaderTest::Empty => ctx.headers.any_value(name, &mut |v| trim(v).is_empty()),
                    HeaderTest::Value(p) => {
                        ctx.headers.any_value(name, &mut |v| p.matches(trim(v)))
                    }
                }
            }
            Cond::Url(p) => p.matches(ctx.url),
            Cond::Method(list) => list.iter().any(|m| m.as_bytes() == ctx.method),
            Cond::Mime(p) => ctx.mime.is_some_and(|m| p.matches(mime_essence(m))),
        })
    }
}

impl IpCond {
    fn eval(&self, ctx: &MatchCtx<'_>) -> Option<bool> {
        let client = ctx.client_ip.to_canonical();
        Some(match self {
            IpCond::Addr(a) => *a == client,
            IpCond::Range { lo, hi } => match (bits(*lo), bits(client), bits(*hi)) {
                ((f1, l), (f2, c), (_, h)) if f1 == f2 => l <= c && c <= h,
                _ => false,
            },
            IpCond::Net { addr, mask } => match (bits(*addr), bits(client), bits(*mask)) {
                ((f1, a), (f2, c), (_, m)) if f1 == f2 => c & m == a,
                _ => false,
            },
            IpCond::Geo(code) => {
                let info = ctx.geo?.country(client)?;
                // STON's legacy `AP` (Asia/Pacific) covers GeoIP2's AS and OC.
                let ap = code.eq_ignore_ascii_case("AP") && matches!(info.continent, "AS" | "OC");
                ap || [info.country2, info.country3, info.continent]
                    .iter()
                    .any(|c| !c.is_empty() && c.eq_ignore_ascii_case(code))
            }
        })
    }

    /// Parses the inside of `$IP[...]`.
    pub fn parse(s: &str) -> Result<IpCond, CondError> {
        let s = s.trim();
        let bad = || CondError::BadIp(snippet(s));
        if let Some((a, m)) = s.split_once('/') {
            let addr = parse_ip(a).ok_or_else(bad)?;
            let (v4, _) = bits(addr);
            let width = if v4 { 32 } else { 128 };
            let m = m.trim();
            let mask_bits = if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) {
                let n: u32 = m.parse().map_err(|_| CondError::BadMask(snippet(s)))?;
                if n > width {
                    return Err(CondError::BadMask(snippet(s)));
                }
                if n == 0 {
                    0
                } else {
                    (u128::MAX << (128 - n)) >> (128 - width)
                }
            } else {
                let mask = parse_ip(m).ok_or_else(|| CondError::BadMask(snippet(s)))?;
                let (mv4, mb) = bits(mask);
                if mv4 != v4 {
                    return Err(CondError::BadMask(snippet(s)));
                }
                mb
            };
            let net = bits(addr).1 & mask_bits;
            return Ok(IpCond::Net {
                addr: from_bits(v4, net),
                mask: from_bits(v4, mask_bits),
            });
        }
        if let Some((a, b)) = s.split_once('-') {
            let lo = parse_ip(a).ok_or_else(bad)?;
            let b = b.trim();
            let hi = match lo {
                // `192.168.2.1-255`: the last octet's upper bound.
                IpAddr::V4(l) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
                    let last: u8 = b.parse().map_err(|_| CondError::BadRange(snippet(s)))?;
                    let o = l.octets();
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], last))
                }
                _ => parse_ip(b).ok_or_else(|| CondError::BadRange(snippet(s)))?,
            };
            let ((f1, l), (f2, h)) = (bits(lo), bits(hi));
            if f1 != f2 || l > h {
                return Err(CondError::BadRange(snippet(s)));
            }
            return Ok(IpCond::Range { lo, hi });
        }
        if let Some(ip) = parse_ip(s) {
            return Ok(IpCond::Addr(ip));
        }
        if (2..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Ok(IpCond::Geo(s.to_ascii_uppercase().into()));
        }
        Err(bad())
    }
}

/// An address, optionally in `[...]`; IPv4-mapped IPv6 becomes IPv4.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// (is IPv4, address bits).
fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (true, u128::from(u32::from(a))),
        IpAddr::V6(a) => (false, u128::from(a)),
    }
}

fn from_bits(v4: bool, b: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(b as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// `text/html; charset=utf-8` -> `text/html`.
pub(crate) fn mime_essence(v: &[u8]) -> &[u8] {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    trim(&v[..end])
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 9110 token characters (header names, methods).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn parse_term(t: &str) -> Result<Term, CondError> {
    if t.is_empty() {
        return Err(CondError::EmptyTerm);
    }
    let b = t.as_bytes();
    let Some(open) = bracket_open(b, 0) else {
        return match b[0] {
            b'!' => Err(CondError::NegatedBare(snippet(t))),
            b'$' => Err(CondError::UnknownKind(snippet(t))),
            _ => Ok(Term {
                negated: false,
                cond: Cond::Url(Pattern::new(t, Case::Sensitive)),
            }),
        };
    };
    let close = matching_close(b, open).ok_or(Unclosed)?;
    if close != b.len() - 1 {
        return Err(CondError::TrailingText(snippet(t)));
    }
    let negated = b[0] == b'!';
    let kind = &t[1..open];
    let inner = t[open + 1..close].trim();
    let cond = if kind.eq_ignore_ascii_case("IP") {
        Cond::Ip(IpCond::parse(inner)?)
    } else if kind.eq_ignore_ascii_case("HEADER") {
        let (name, value) = match inner.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (inner, None),
        };
        if !is_token(name) {
            return Err(CondError::BadHeaderName(snippet(name)));
        }
        let test = match value {
            None => HeaderTest::Present,
            Some("") => HeaderTest::Empty,
            Some(v) => HeaderTest::Value(Pattern::new(v, Case::Insensitive)),
        };
        Cond::Header {
            name: name.into(),
            test,
        }
    } else if kind.eq_ignore_ascii_case("URL") {
        if inner.is_empty() {
            return Err(CondError::EmptyPattern("$URL[...]"));
        }
        Cond::Url(Pattern::new(inner, Case::Sensitive))
    } else if kind.eq_ignore_ascii_case("METHOD") {
        let list = inner
            .split('|')
            .map(|m| {
                let m = m.trim();
                is_token(m)
                    .then(|| Box::<str>::from(m.to_ascii_uppercase()))
                    .ok_or_else(|| CondError::BadMethod(snippet(inner)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Cond::Method(list.into_boxed_slice())
    } else if kind.eq_ignore_ascii_case("MIME") {
        if inner.is_empty() {
            return Err(CondError::EmptyPattern("$MIME[...]"));
        }
        Cond::Mime(Pattern::new(inner, Case::Insensitive))
    } else {
        return Err(CondError::UnknownKind(snippet(kind)));
    };
    Ok(Term { negated, cond })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GeoIP table for tests: 1.0.0.0/8 is KR (Asia), 2.0.0.0/8 is FR (Europe).
    pub(crate) struct TestGeo;

    impl GeoLookup for TestGeo {
        fn country(&self, ip: IpAddr) -> Option<GeoInfo<'_>> {
            match ip {
                IpAddr::V4(a) if a.octets()[0] == 1 => Some(GeoInfo {
                    country2: "KR",
                    country3: "KOR",
                    continent: "AP",
                }),
                IpAddr::V4(a) if a.octets()[0] == 2 => Some(GeoInfo {
                    country2: "FR",
                    country3: "",
                    continent: "EU",
                }),
                _ => None,
            }
        }
    }

    pub(crate) struct Req<'a> {
        pub ip: &'a str,
        pub method: &'a str,
        pub url: &'a str,
        pub headers: Vec<(&'a str, &'a str)>,
        pub mime: Option<&'a str>,
    }

    impl<'a> Req<'a> {
        pub fn new(ip: &'a str, url: &'a str) -> Self {
            Req {
                ip,
                method: "GET",
                url,
                headers: Vec::new(),
                mime: None,
            }
        }
        pub fn ctx<'s>(&'s self, geo: Option<&'s dyn GeoLookup>) -> MatchCtx<'s> {
            MatchCtx {
                client_ip: self.ip.parse().unwrap(),
                method: self.method.as_bytes(),
                url: self.url.as_bytes(),
                headers: &self.headers,
                mime: self.mime.map(str::as_bytes),
                geo,
            }
        }
    }

    fn eval(cond: &str, req: &Req<'_>) -> bool {
        Condition::parse(cond)
            .unwrap_or_else(|e| panic!("{cond}: {e}"))
            .matches(&req.ctx(Some(&TestGeo)))
    }

    /// MOD-6: the `$IP` forms, with the seed-002 examples.
    #[test]
    fn ip_forms() {
        let cases: &[(&str, &str, bool)] = &[
            ("$IP[192.168.1.1]", "192.168.1.1", true),
            ("$IP[192.168.1.1]", "192.168.1.2", false),
            ("$IP[192.168.1.1]", "::ffff:192.168.1.1", true), // mapped client
            ("$IP[::ffff:192.168.1.1]", "192.168.1.1", true), // mapped rule
            ("$IP[192.168.2.1-255]", "192.168.2.1", true),
            ("$IP[192.168.2.1-255]", "192.168.2.255", true),
            ("$IP[192.168.2.1-255]", "192.168.2.0", false),
            ("$IP[192.168.2.1-255]", "192.168.3.1", false),
            ("$IP[192.168.2.10-20]", "192.168.2.15", true),
            ("$IP[192.168.2.10-20]", "192.168.2.21", false),
            ("$IP[10.0.0.0-10.0.1.255]", "10.0.1.7", true),
            ("$IP[10.0.0.0-10.0.1.255]", "10.0.2.0", false),
            ("$IP[192.168.3.0/24]", "192.168.3.77", true),
            ("$IP[192.168.3.0/24]", "192.168.4.1", false),
            ("$IP[192.168.3.9/24]", "192.168.3.1", true), // host bits ignored
            ("$IP[0.0.0.0/0]", "8.8.8.8", true),
            ("$IP[0.0.0.0/0]", "::1", false), // family must agree
            ("$IP[8.8.8.8/32]", "8.8.8.8", true),
            ("$IP[192.168.4.0/255.255.255.0]", "192.168.4.200", true),
            ("$IP[192.168.4.0/255.255.255.0]", "192.168.5.1", false),
            ("$IP[::1]", "::1", true),
            ("$IP[[::1]]", "::1", true),
            ("$IP[2001:db8::/32]", "2001:db8:1::5", true),
            ("$IP[2001:db8::/32]", "2001:db9::5", false),
            ("$IP[2001:db8::/ffff:ffff::]", "2001:db8::5", true),
            ("$IP[2001:db8::1-2001:db8::ff]", "2001:db8::80", true),
            ("$IP[2001:db8::/32]", "1.2.3.4", false),
            // GeoIP: alpha-2, alpha-3, continent, case-insensitive.
            ("$IP[KR]", "1.2.3.4", true),
            ("$IP[kor]", "1.2.3.4", true),
            ("$IP[AP]", "1.2.3.4", true),
            ("$IP[AP]", "2.2.3.4", false),
            ("$IP[FR]", "2.2.3.4", true),
            ("$IP[EU]", "2.2.3.4", true),
            ("$IP[KR]", "3.3.3.3", false),
            // Negation.
            ("!IP[192.168.1.1]", "192.168.1.1", false),
            ("!IP[192.168.1.1]", "10.0.0.1", true),
            ("!IP[KR]", "2.2.3.4", true),
            ("!IP[KR]", "1.2.3.4", false),
            ("!IP[KR]", "3.3.3.3", false), // unknown country: neither way
        ];
        for (c, ip, want) in cases {
            assert_eq!(eval(c, &Req::new(ip, "/")), *want, "{c} for {ip}");
        }
    }

    /// Without a GeoIP lookup, a Geo term never holds (negated or not).
    #[test]
    fn geo_without_lookup_never_matches() {
        let req = Req::new("1.2.3.4", "/");
        for c in ["$IP[KR]", "!IP[KR]", "$IP[AP]"] {
            let cond = Condition::parse(c).unwrap();
            assert!(cond.uses_geo());
            assert!(!cond.matches(&req.ctx(None)), "{c}");
        }
        assert!(!Condition::parse("$IP[1.2.3.4]").unwrap().uses_geo());
    }

    /// MOD-6: `$HEADER`, `$URL`, `$METHOD`; EXP-3: `$MIME`; §0: `&` and `!`.
    #[test]
    fn kinds_and_combinations() {
        let mut req = Req::new("10.1.1.1", "/source/a.zip?v=2");
        req.headers = vec![
            (
                "User-Agent",
                "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1) IE6",
            ),
            ("Via", "1.1 proxy"),
            ("X-Empty", "  "),
            ("Accept", "text/html"),
            ("Accept", "image/webp"),
        ];
        req.method = "POST";
        req.mime = Some("Image/GIF; charset=binary");
        let cases: &[(&str, bool)] = &[
            ("$HEADER[user-agent: *IE6*]", true),
            ("$HEADER[USER-AGENT : *ie6*]", true),
            ("$HEADER[user-agent: *Chrome*]", false),
            ("$HEADER[via]", true),
            ("$HEADER[x-missing]", false),
            ("$HEADER[x-empty:]", true),
            ("$HEADER[via:]", false),
            ("$HEADER[x-missing:]", false),
            ("$HEADER[accept: image/webp]", true), // any of several lines
            ("$HEADER[accept: text/*]", true),
            ("$HEADER[via: 1.1 PROXY]", true),
            ("$URL[/source/*.zip*]", true),
            ("$URL[/source/*.zip]", false), // the query is part of the URL
            ("/source/*", true),
            ("/SOURCE/*", false),
            ("$url[/source/*]", true), // kind names are case-insensitive
            ("$METHOD[POST]", true),
            ("$METHOD[post]", true),
            ("$METHOD[GET]", false),
            ("$METHOD[GET|POST]", true),
            ("$METHOD[GET | HEAD]", false),
            ("$MIME[image/gif]", true),
            ("$MIME[image/*]", true),
            ("$MIME[text/*]", false),
            ("$IP[10.1.1.0/24] & $METHOD[POST]", true),
            ("$IP[10.1.1.0/24] & $METHOD[GET]", false),
            ("$IP[10.1.1.0/24] & !METHOD[GET] & /source/*", true),
            ("!HEADER[via]", false),
            ("!HEADER[x-missing]", true),
            ("!URL[/source/*]", false),
            ("!MIME[text/*]", true),
        ];
        for (c, want) in cases {
            assert_eq!(eval(c, &req), *want, "{c}");
        }
        // No Content-Type known: $MIME never holds.
        req.mime = None;
        assert!(!eval("$MIME[*]", &req));
    }

    #[test]
    fn header_iter_adapter() {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"Via".to_vec(), b"x".to_vec())];
        let h = HeaderIter(|| raw.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        assert!(h.any_value(b"via", &mut |v| v == b"x"));
        assert!(!NoHeaders.any_value(b"via", &mut |_| true));
        let arr = [("A", "1")];
        assert!(arr.any_value(b"a", &mut |v| v == b"1"));
    }

    #[test]
    fn parse_errors() {
        type Check = fn(&CondError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, CondError::Empty)),
            ("$IP[1.2.3.4] & ", |e| matches!(e, CondError::EmptyTerm)),
            ("$IP[1.2.3.4", |e| matches!(e, CondError::Unclosed(_))),
            ("$IP[1.2.3.4]x", |e| matches!(e, CondError::TrailingText(_))),
            ("$FOO[x]", |e| matches!(e, CondError::UnknownKind(_))),
            ("$REQ.[x]", |e| matches!(e, CondError::UnknownKind(_))),
            ("$IP", |e| matches!(e, CondError::UnknownKind(_))),
            ("!/a", |e| matches!(e, CondError::NegatedBare(_))),
            ("$IP[]", |e| matches!(e, CondError::BadIp(_))),
            ("$IP[300.1.1.1]", |e| matches!(e, CondError::BadIp(_))),
            ("$IP[KORE]", |e| matches!(e, CondError::BadIp(_))),
            ("$IP[K]", |e| matches!(e, CondError::BadIp(_))),
            ("$IP[한국]", |e| matches!(e, CondError::BadIp(_))),
            ("$IP[1.2.3.4/33]", |e| matches!(e, CondError::BadMask(_))),
            ("$IP[1.2.3.4/99999999999999999999]", |e| {
                matches!(e, CondError::BadMask(_))
            }),
            ("$IP[1.2.3.4/ffff::]", |e| {
                matches!(e, CondError::BadMask(_))
            }),
            ("$IP[1.2.3.4/]", |e| matches!(e, CondError::BadMask(_))),
            ("$IP[::1/129]", |e| matches!(e, CondError::BadMask(_))),
            ("$IP[1.2.3.4-256]", |e| matches!(e, CondError::BadRange(_))),
            ("$IP[1.2.3.40-20]", |e| matches!(e, CondError::BadRange(_))),
            ("$IP[1.2.3.4-::1]", |e| matches!(e, CondError::BadRange(_))),
            ("$IP[1.2.3.4-]", |e| matches!(e, CondError::BadRange(_))),
            ("$IP[::1-2]", |e| matches!(e, CondError::BadRange(_))),
            ("$HEADER[]", |e| matches!(e, CondError::BadHeaderName(_))),
            ("$HEADER[: x]", |e| matches!(e, CondError::BadHeaderName(_))),
            ("$HEADER[bad name: x]", |e| {
                matches!(e, CondError::BadHeaderName(_))
            }),
            ("$URL[]", |e| matches!(e, CondError::EmptyPattern(_))),
            ("$MIME[ ]", |e| matches!(e, CondError::EmptyPattern(_))),
            ("$METHOD[]", |e| matches!(e, CondError::BadMethod(_))),
            ("$METHOD[GET|]", |e| matches!(e, CondError::BadMethod(_))),
            ("$METHOD[G E T]", |e| matches!(e, CondError::BadMethod(_))),
        ];
        for (c, ok) in cases {
            let e = Condition::parse(c).expect_err(c);
            assert!(ok(&e), "{c:?} gave {e:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> = "$![]IPHEADERURLMETHODMIME:/.-*&| 0123456789abcdef,한é\u{0}"
            .chars()
            .collect();
        let geo = TestGeo;
        let mut req = Req::new("::ffff:1.2.3.4", "/a/b.jpg?x=1&y");
        req.headers = vec![("a", ""), ("Via", "x")];
        req.mime = Some("text/html;");
        let mut garbage = crate::fuzz::Garbage::new(0x2545_f491_4f6c_dd1d);
        for _ in 0..30_000 {
            let s = garbage.string(&alphabet, 48);
            if let Ok(c) = Condition::parse(&s) {
                let _ = c.matches(&req.ctx(Some(&geo)));
                let _ = c.matches(&req.ctx(None));
            }
        }
    }
}
