//! Building the heads that cross the proxy, as pure functions: the request sent to
//! the origin and the response head sent to the client.

use crate::config::OriginAddr;
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
    for (name, value) in req.headers() {
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

/// The response head sent to the client.
pub fn client_response(
    resp: &ResponseHead,
    framing: ClientFraming,
    ka: Decision,
    cache_status: Option<&str>,
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
        if is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") && framing != ClientFraming::NoBody {
            continue;
        }
        if named_by_connection(conn_values(), name) {
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
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::NoBody | ClientFraming::Close => {}
    }
    if let Some(c) = cache_status {
        out.extend_from_slice(b"X-Cache: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    ka.write_headers(&mut out);
    out.extend_from_slice(b"\r\n");
    out
}

/// The head of a response built from stored (or filling) headers: hits, fills and
/// their followers all answer through this.
pub fn stored_response(
    status: u16,
    headers: &[u8],
    framing: ClientFraming,
    ka: Decision,
    cache_status: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 128);
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa_u16(status);
    out.append(&mut code);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(headers);
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::NoBody | ClientFraming::Close => {}
    }
    if let Some(c) = cache_status {
        out.extend_from_slice(b"X-Cache: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    ka.write_headers(&mut out);
    out.extend_from_slice(b"\r\n");
    out
}

fn itoa_u16(n: u16) -> Vec<u8> {
    n.to_string().into_bytes()
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
            Some("TCP_MISS"),
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
            None,
        ))
        .unwrap();
        assert!(
            out.contains("Content-Length: 10\r\n") && out.contains("\r\nDate: "),
            "{out}"
        );
    }
}
