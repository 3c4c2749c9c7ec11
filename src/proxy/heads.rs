//! Building the heads that cross the proxy, as pure functions: the request sent to
//! the origin and the response head sent to the client.

use crate::cache::meta::HeaderPolicy;
use crate::config::{Options, OriginAddr};
use crate::http1::headers::{connection_names, is_hop_by_hop, reason};
use crate::http1::keepalive::Decision;
use crate::http1::{RequestHead, ResponseHead};
use std::net::IpAddr;

/// How the response body is delimited toward the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body follows (HEAD, 204, 304): the origin's Content-Length, if any, passes through.
    NoBody,
    Length(u64),
    /// Chunked toward an HTTP/1.1 client (origin was chunked or close-delimited).
    Chunked,
    /// HTTP/1.0 client and no known length: the body ends when we close.
    Close,
}

/// True if `name` appears among the tokens of any of the `Connection` values.
fn named_by_connection<'a>(mut conn_values: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> bool {
    conn_values.any(|v| connection_names(v, name))
}

/// How a request is rewritten for the origin beyond the hop-by-hop rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct OriginOpts<'a> {
    /// Send this method instead of the client's (a HEAD miss is filled with GET).
    pub method: Option<&'a [u8]>,
    /// A cache fill: drop the client's conditionals and Range, we need the whole object.
    pub for_cache: bool,
    /// Extra header lines (`Name: value\r\n`), e.g. our own conditionals.
    pub extra: &'a [u8],
    /// The request headers after MOD-1 rules, replacing the client's.
    pub headers: Option<&'a crate::policy::HeaderList<'a>>,
}

/// Request headers a cache fill must not forward (the fill wants a full 200).
fn is_client_conditional(name: &[u8]) -> bool {
    [
        b"if-none-match".as_slice(),
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        // The fill asks for the cache variant's encoding itself (KEY-1).
        b"accept-encoding",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

/// The request head sent to the origin.
pub fn origin_request(
    req: &RequestHead,
    origin: &OriginAddr,
    client_ip: IpAddr,
    body_len: Option<u64>,
    opts: &OriginOpts,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(opts.method.unwrap_or(req.method()));
    out.push(b' ');
    let path = req.path();
    if path != b"*" {
        out.extend_from_slice(origin.path_prefix.as_bytes());
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(origin.host_header.as_bytes());
    out.extend_from_slice(b"\r\n");
    let conn_values = || {
        req.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .map(|(_, v)| v)
    };
    let mut xff: Option<&[u8]> = None;
    // MOD-1: request rules may have rewritten the client's headers.
    let rewritten = opts
        .headers
        .map(|l| l.iter().map(|(n, v)| (&n[..], &v[..])));
    let original = opts.headers.is_none().then(|| req.headers());
    for (name, value) in rewritten
        .into_iter()
        .flatten()
        .chain(original.into_iter().flatten())
    {
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"expect")
        {
            continue;
        }
        if opts.for_cache && is_client_conditional(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = Some(value);
            continue;
        }
        if named_by_connection(conn_values(), name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = xff.filter(|v| !v.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(opts.extra);
    match body_len {
        Some(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        None if matches!(req.method(), b"POST" | b"PUT" | b"PATCH") => {
            out.extend_from_slice(b"Content-Length: 0\r\n")
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The STON response-header rules (spec §2) for one response, decided per vhost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// VIA-1: add `Via: cairn/<version>`.
    pub via: bool,
    /// ETAG-1 OFF: drop `ETag`.
    pub drop_etag: bool,
    /// SRV-1 OFF: drop `Server`.
    pub drop_server: bool,
    /// AGE-1: the `Age` of a response served from cache, in seconds.
    pub age: Option<u64>,
    /// `X-Cache` value (`<CacheStatusHeader>`).
    pub cache_status: Option<&'a str>,
    /// ORIG-1 for pass-through responses: which origin headers are forwarded.
    pub policy: HeaderPolicy,
    /// The STON result code, for `#CACHEHIT` in header rules.
    pub result: &'a str,
    /// Expires and header rules to run on the finished head (`None`: none in force).
    pub rules: Option<&'a super::rules::RuleFacts<'a>>,
    /// The object's remaining TTL (`#TTL_LEFT`), for responses from cache.
    pub ttl_left: Option<u64>,
}

impl Extras<'_> {
    pub fn for_vhost(o: &Options) -> Extras<'static> {
        Extras {
            via: o.via_header,
            drop_etag: !o.etag_header,
            drop_server: !o.server_header,
            age: None,
            cache_status: None,
            policy: o.headers,
            result: "",
            rules: None,
            ttl_left: None,
        }
    }

    /// Runs the rule pass on a finished head, if rules are in force.
    fn finish(&self, out: Vec<u8>) -> Vec<u8> {
        match self.rules {
            Some(f) => super::rules::finalize(out, f, self.result, self.ttl_left),
            None => out,
        }
    }

    fn drops(&self, name: &[u8]) -> bool {
        (self.drop_etag && name.eq_ignore_ascii_case(b"etag"))
            || (self.drop_server && name.eq_ignore_ascii_case(b"server"))
    }

    fn write_tail(&self, out: &mut Vec<u8>) {
        if let Some(age) = self.age {
            out.extend_from_slice(b"Age: ");
            out.extend_from_slice(age.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.via {
            out.extend_from_slice(VIA);
        }
        if let Some(c) = self.cache_status {
            out.extend_from_slice(b"X-Cache: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `Via: cairn/<version>` (VIA-1; STON writes `STON/<version>`).
pub const VIA: &[u8] = concat!("Via: cairn/", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes();

fn write_framing(out: &mut Vec<u8>, framing: ClientFraming) {
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::NoBody | ClientFraming::Close => {}
    }
}

/// The response head sent to the client for a pass-through response: the origin's
/// headers less hop-by-hop ones, filtered by ORIG-1 (Set-Cookie always passes:
/// ORIG-1 keeps cookies out of the cache, not away from the client).
pub fn client_response(
    resp: &ResponseHead,
    framing: ClientFraming,
    ka: Decision,
    x: &Extras,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} ", resp.status).as_bytes());
    let r = resp.reason();
    if !r.is_empty()
        && r.iter()
            .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        out.extend_from_slice(r);
    } else {
        out.extend_from_slice(reason(resp.status).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let conn_values = || {
        resp.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .map(|(_, v)| v)
    };
    let mut has_date = false;
    for (name, value) in resp.headers() {
        let cookie =
            name.eq_ignore_ascii_case(b"set-cookie") || name.eq_ignore_ascii_case(b"set-cookie2");
        let framing_header = name.eq_ignore_ascii_case(b"content-length");
        if is_hop_by_hop(name)
            || x.drops(name)
            || (framing_header && framing != ClientFraming::NoBody)
        {
            continue;
        }
        if !(cookie || framing_header || x.policy.keeps(name))
            || named_by_connection(conn_values(), name)
        {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        // RFC 9110 §6.6.1: a recipient with a clock adds Date when forwarding without one.
        super::respond::write_date(&mut out);
    }
    write_framing(&mut out, framing);
    x.write_tail(&mut out);
    ka.write_headers(&mut out);
    out.extend_from_slice(b"\r\n");
    x.finish(out)
}

/// The head of a response built from stored (or filling) header lines: hits, fills
/// and their followers all answer through this. `replace` names a stored header to
/// leave out because `extra` carries its replacement (Content-Type of a multipart
/// 206); `extra` holds additional lines (Content-Range).
pub fn stored_response(
    status: u16,
    headers: &[u8],
    framing: ClientFraming,
    ka: Decision,
    x: &Extras,
    replace: Option<&[u8]>,
    extra: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + extra.len() + 160);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if x.drop_etag || x.drop_server || replace.is_some() {
        for line in headers.split_inclusive(|&b| b == b'\n') {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            if !x.drops(name) && !replace.is_some_and(|r| r.eq_ignore_ascii_case(name)) {
                out.extend_from_slice(line);
            }
        }
    } else {
        out.extend_from_slice(headers);
    }
    out.extend_from_slice(extra);
    write_framing(&mut out, framing);
    x.write_tail(&mut out);
    ka.write_headers(&mut out);
    out.extend_from_slice(b"\r\n");
    x.finish(out)
}

/// How to frame a body toward the client: its length when known, else chunked for
/// HTTP/1.1 and close-delimited for HTTP/1.0.
pub fn client_framing(has_body: bool, length: Option<u64>, http10_client: bool) -> ClientFraming {
    match (has_body, length) {
        (false, _) => ClientFraming::NoBody,
        (true, Some(n)) => ClientFraming::Length(n),
        (true, None) if http10_client => ClientFraming::Close,
        (true, None) => ClientFraming::Chunked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{request, response};
    use bytes::BytesMut;

    fn req(s: &str) -> RequestHead {
        request::parse(&mut BytesMut::from(s.as_bytes()), &Default::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn origin_request_rewrites_hop_by_hop() {
        let o = OriginAddr::parse("10.0.0.1:8080/base", "www.test").unwrap();
        let r = req("POST /p?q=1 HTTP/1.1\r\nHost: www.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: */*\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
        let out = String::from_utf8(origin_request(
            &r,
            &o,
            "10.9.9.9".parse().unwrap(),
            Some(3),
            &OriginOpts::default(),
        ))
        .unwrap();
        assert_eq!(
            out,
            "POST /base/p?q=1 HTTP/1.1\r\nHost: www.test:8080\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1, 10.9.9.9\r\nContent-Length: 3\r\n\r\n"
        );
        let g = req("GET / HTTP/1.0\r\n\r\n");
        let out = String::from_utf8(origin_request(
            &g,
            &o,
            "::1".parse().unwrap(),
            None,
            &OriginOpts::default(),
        ))
        .unwrap();
        assert_eq!(
            out,
            "GET /base/ HTTP/1.1\r\nHost: www.test:8080\r\nX-Forwarded-For: ::1\r\n\r\n"
        );
    }

    #[test]
    fn client_response_framing() {
        let raw = "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 5\r\nConnection: X-Hop\r\nX-Hop: a\r\nETag: \"e\"\r\nTransfer-Encoding: chunked\r\n\r\n";
        let resp = response::parse(&mut BytesMut::from(raw.as_bytes()), 16384)
            .unwrap()
            .unwrap();
        let out = String::from_utf8(client_response(
            &resp,
            ClientFraming::Chunked,
            Decision::Close,
            &Extras {
                cache_status: Some("TCP_MISS"),
                policy: HeaderPolicy {
                    original: true,
                    standard_extra: false,
                },
                ..Default::default()
            },
        ))
        .unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"e\"\r\nTransfer-Encoding: chunked\r\nX-Cache: TCP_MISS\r\nConnection: Close\r\n\r\n"
        );
        let raw = "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        let resp = response::parse(&mut BytesMut::from(raw.as_bytes()), 16384)
            .unwrap()
            .unwrap();
        let out = String::from_utf8(client_response(
            &resp,
            ClientFraming::NoBody,
            Decision::Close,
            &Extras::default(),
        ))
        .unwrap();
        assert!(
            out.contains("Content-Length: 10\r\n") && out.contains("\r\nDate: "),
            "{out}"
        );
    }
}
