//! Request-head parsing with every limit of spec/connections.md.
//!
//! `parse` looks at the bytes buffered so far and either needs more, yields one
//! complete head (splitting it off the buffer without a copy), or names the 4xx/5xx
//! the client must get. Requests already buffered behind it stay in the buffer, which
//! is how pipelining works without another read.

use super::headers::{self, parse_content_length};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// Limits on what a client may send. Defaults follow nginx's
/// (`large_client_header_buffers 4 8k`, 100 headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line; beyond it: 414.
    pub max_request_line: usize,
    /// Largest head (request line + headers); beyond it: 431.
    pub max_head: usize,
    /// Most header fields; beyond it: 431.
    pub max_headers: usize,
    /// Largest request body; beyond it: 413.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_headers: 100,
            max_body: 16 * 1024 * 1024,
        }
    }
}

/// Empty lines accepted before a request line.
const MAX_EMPTY_LINES: usize = 2;

/// Hard ceiling on header count, whatever the configured limit (stack array size).
const MAX_HEADERS_CEILING: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Why a request head was refused; each maps to the status the client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("bad request: {0}")]
    BadSyntax(&'static str),
    #[error("request line longer than the limit")]
    UriTooLong,
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyHeaders,
    #[error("unsupported transfer-coding")]
    UnsupportedTransferCoding,
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("unsupported expectation")]
    ExpectationFailed,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::BadSyntax(_) => 400,
            RequestError::UriTooLong => 414,
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::UnsupportedTransferCoding => 501,
            RequestError::BodyTooLarge => 413,
            RequestError::ExpectationFailed => 417,
        }
    }
}

/// A parsed request head. It owns the head's bytes (split off the read buffer,
/// not copied) and keeps ranges into them, so parsing allocates only the range list.
#[derive(Debug, Clone)]
pub struct RequestHead {
    raw: Bytes,
    method: Range<usize>,
    /// Path and query (origin-form), also for absolute-form requests.
    path: Range<usize>,
    /// Authority from an absolute-form target, which overrides `Host`.
    authority: Option<Range<usize>>,
    host: Option<Range<usize>>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub version: Version,
    pub framing: Framing,
    /// The client sent `Connection: close`.
    pub close: bool,
    /// The client sent `Connection: keep-alive` (matters for HTTP/1.0).
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The head's size as received (HTTP/2: as rebuilt from its fields).
    pub fn wire_len(&self) -> u64 {
        self.raw.len() as u64
    }
    pub fn method(&self) -> &[u8] {
        &self.raw[self.method.clone()]
    }
    /// Path plus query, always starting with `/` (or `*` for `OPTIONS *`).
    pub fn path(&self) -> &[u8] {
        if self.path.is_empty() {
            return b"/"; // absolute-form `http://host` (RFC 9112 §3.2.2)
        }
        &self.raw[self.path.clone()]
    }
    /// The host the request is for: the absolute-form authority, else `Host`.
    pub fn host(&self) -> Option<&[u8]> {
        self.authority
            .as_ref()
            .or(self.host.as_ref())
            .map(|r| &self.raw[r.clone()])
    }
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }
    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE may be retried (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
    }
}

/// Parses one request head from the front of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(head))`: the head has been split off
/// `buf`; the body (if any) and later pipelined requests remain in it.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<RequestHead>, RequestError> {
    // RFC 9112 §2.2: empty lines before a request may be ignored; more than two
    // is not a client being lenient, it is a connection kept open with a drip.
    let lead = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    if memchr::memchr_iter(b'\n', &buf[..lead]).count() > MAX_EMPTY_LINES {
        return Err(RequestError::BadSyntax(
            "more than two empty lines before a request",
        ));
    }
    // Uninitialised slots: zeroing 256 headers (8 KiB) would cost more than the parse.
    let mut storage =
        [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_CEILING];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CEILING);
    // One more slot than allowed so that "exactly at the limit" parses and one over is detected.
    let slots = &mut storage[..(max_headers + 1).min(MAX_HEADERS_CEILING)];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(RequestError::BadSyntax("bad HTTP version")),
        Err(_) => return Err(RequestError::BadSyntax("malformed request head")),
    };
    let head_len = match status {
        httparse::Status::Partial => {
            check_partial(buf, limits)?;
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if request_line_len(buf) > limits.max_request_line {
        return Err(RequestError::UriTooLong);
    }
    if head_len > limits.max_head {
        return Err(RequestError::HeadTooLarge);
    }
    if req.headers.len() > max_headers {
        return Err(RequestError::TooManyHeaders);
    }
    let whole = &buf[..];
    let range = |s: &[u8]| headers::span(whole, s);
    let method = range(req.method.unwrap_or("").as_bytes());
    let target = req.path.unwrap_or("");
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(RequestError::BadSyntax("bad HTTP version")),
    };
    let (path, authority) = split_target(target.as_bytes(), &buf[method.clone()])?;
    let path = offset(range(target.as_bytes()).start, path);
    let authority = authority.map(|a| offset(range(target.as_bytes()).start, a));

    let mut headers = Vec::with_capacity(req.headers.len());
    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(RequestError::BadSyntax("more than one Host header"));
            }
            let v = headers::trim(value);
            if !valid_authority(v) {
                return Err(RequestError::BadSyntax("invalid Host header"));
            }
            host = Some(range(v));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)
                .ok_or(RequestError::BadSyntax("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(RequestError::BadSyntax(
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for t in headers::tokens(value) {
                if chunked {
                    // Anything after chunked means chunked is not final (RFC 9112 §6.3).
                    return Err(RequestError::BadSyntax(
                        "chunked is not the final transfer-coding",
                    ));
                }
                if t.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(RequestError::UnsupportedTransferCoding);
                }
            }
            saw_te = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= headers::connection_names(value, b"close");
            keep_alive |= headers::connection_names(value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            if headers::trim(value).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        }
        headers.push((range(name), range(value)));
    }
    if version == Version::Http11 && host.is_none() {
        return Err(RequestError::BadSyntax("HTTP/1.1 request without Host"));
    }
    let framing = match (saw_te, content_length) {
        (true, Some(_)) => {
            return Err(RequestError::BadSyntax(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) if version == Version::Http10 => {
            return Err(RequestError::BadSyntax(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (true, None) if !chunked => return Err(RequestError::UnsupportedTransferCoding),
        (true, None) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) if n > limits.max_body => return Err(RequestError::BodyTooLarge),
        (false, Some(n)) => Framing::Length(n),
    };
    let raw = buf.split_to(head_len).freeze();
    Ok(Some(RequestHead {
        raw,
        method,
        path,
        authority,
        host,
        headers,
        version,
        framing,
        close,
        keep_alive,
        expect_continue,
    }))
}

/// Decides between 414 and 431 for a head that is still incomplete.
/// Length of the request line, not counting the empty lines RFC 9112 §2.2 lets a
/// client send before it.
fn request_line_len(buf: &[u8]) -> usize {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
}

fn check_partial(full: &[u8], limits: &Limits) -> Result<(), RequestError> {
    let start = full
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(full.len());
    let buf = &full[start..];
    match buf.iter().position(|&b| b == b'\n') {
        None if buf.len() > limits.max_request_line => Err(RequestError::UriTooLong),
        Some(n) if n > limits.max_request_line => Err(RequestError::UriTooLong),
        // Leading empty lines count toward the head size: CRLF spam cannot grow the buffer.
        _ if full.len() > limits.max_head => Err(RequestError::HeadTooLarge),
        _ => Ok(()),
    }
}

fn offset(base: usize, r: Range<usize>) -> Range<usize> {
    base + r.start..base + r.end
}

/// Splits a request-target into (path range, authority range), both relative to `target`.
/// Accepts origin-form, absolute-form (`http://host/path`) and `*` for OPTIONS.
fn split_target(
    target: &[u8],
    method: &[u8],
) -> Result<(Range<usize>, Option<Range<usize>>), RequestError> {
    if target.first() == Some(&b'/') {
        return Ok((0..target.len(), None));
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok((0..1, None))
        } else {
            Err(RequestError::BadSyntax("'*' target outside OPTIONS"))
        };
    }
    let scheme_len = if starts_with_ci(target, b"http://") {
        7
    } else if starts_with_ci(target, b"https://") {
        8
    } else {
        return Err(RequestError::BadSyntax("invalid request target"));
    };
    let rest = &target[scheme_len..];
    let auth_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = scheme_len..scheme_len + auth_len;
    if auth_len == 0 || !valid_authority(&target[authority.clone()]) {
        return Err(RequestError::BadSyntax(
            "invalid authority in request target",
        ));
    }
    let path_start = scheme_len + auth_len;
    if path_start == target.len() || target[path_start] == b'?' {
        // `http://host` and `http://host?q` have no path: RFC 9112 §3.2.2 says the path is `/`,
        // but we cannot insert a byte without copying, so refuse the rare query-without-path form.
        if path_start == target.len() {
            return Ok((0..0, Some(authority)));
        }
        return Err(RequestError::BadSyntax("absolute-form target without path"));
    }
    Ok((path_start..target.len(), Some(authority)))
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Host or authority: reg-name/IPv4 or `[IPv6]`, optional `:port`. Rejects userinfo,
/// spaces, and anything that could smuggle a path.
fn valid_authority(a: &[u8]) -> bool {
    if a.is_empty() || a.len() > 255 {
        return a.is_empty(); // An empty Host is allowed by RFC 9110 §7.2 (and routes to Default).
    }
    a.iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(input: &[u8]) -> Result<Option<RequestHead>, RequestError> {
        let mut buf = BytesMut::from(input);
        parse(&mut buf, &Limits::default())
    }

    fn status(input: &[u8]) -> u16 {
        match p(input) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn statuses_table() {
        let big_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(20_000)
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let exactly: String = (0..99).map(|i| format!("X-{i}: v\r\n")).collect();
        let exactly = format!("GET / HTTP/1.1\r\nHost: a\r\n{exactly}\r\n");
        let cases: Vec<(&[u8], u16)> = vec![
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", 0),
            (b"GET / HTTP/1.1\r\n", 0),
            (b"", 0),
            (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            (b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            (b"\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"\r\n\r\n", 0),
            (b"\r\n\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\n\r\n", 200),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
            (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET\r\n\r\n", 400),
            (b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            (b"GET http://a.b/x HTTP/1.1\r\nHost: c\r\n\r\n", 200),
            (b"GET http:///x HTTP/1.1\r\nHost: c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
            (big_line.as_bytes(), 414),
            (format!("\r\n{big_line}").as_bytes().to_vec().leak(), 414),
            (&big_line.as_bytes()[..9000], 414),
            (big_head.as_bytes(), 431),
            (&big_head.as_bytes()[..17_000], 431),
            (many.as_bytes(), 431),
            (exactly.as_bytes(), 200),
            // CRLF spam is refused (since at most two empty lines may precede a
            // request, long before it could reach the head-size limit).
            ("\r\n".repeat(9000).leak().as_bytes(), 400),
        ];
        for (input, want) in cases {
            assert_eq!(
                status(input),
                want,
                "{:?}",
                String::from_utf8_lossy(&input[..input.len().min(80)])
            );
        }
    }

    #[test]
    fn fields_and_pipelining() {
        let mut buf = BytesMut::from(
            &b"GET /a?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nConnection: Keep-Alive, close\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c"[..],
        );
        let h = parse(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(h.method(), b"GET");
        assert_eq!(h.path(), b"/a?x=1");
        assert_eq!(h.host(), Some(&b"Example.com:8080"[..]));
        assert!(h.close && h.keep_alive);
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.framing, Framing::None);
        let h2 = parse(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(h2.path(), b"/b");
        assert_eq!(h2.version, Version::Http10);
        assert!(parse(&mut buf, &Limits::default()).unwrap().is_none());
        assert_eq!(&buf[..], b"GET /c");
    }

    #[test]
    fn absolute_form_overrides_host() {
        let mut buf =
            BytesMut::from(&b"GET HTTP://origin.test:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n"[..]);
        let h = parse(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(h.host(), Some(&b"origin.test:81"[..]));
        assert_eq!(h.path(), b"/p?q");
    }

    #[test]
    fn body_framing() {
        let mut buf =
            BytesMut::from(&b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"[..]);
        let h = parse(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(&buf[..], b"hello");
        assert!(h.is_idempotent());
    }

    /// Every prefix of a valid request is "need more", never an error or a panic.
    #[test]
    fn prefixes_are_incomplete() {
        let full = b"POST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nX-A: b\r\n\r\n";
        for n in 0..full.len() {
            assert!(matches!(p(&full[..n]), Ok(None)), "prefix {n}");
        }
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let mut v = Vec::with_capacity(len);
            let mut s = seed;
            for _ in 0..len {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Bias toward bytes that matter to HTTP framing.
                let alphabet = b"GET /HTP1.0\r\n:Hostcnlk-ud ,\t\x00\xff*";
                v.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            let _ = p(&v);
        }
    }
}
