//! Origin response-head parsing and response-body framing (RFC 9112 §6.3).

use super::body::BodyDecoder;
use super::headers::{self, parse_content_length};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

const MAX_RESPONSE_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head from origin")]
    Malformed,
    #[error("response head from origin larger than the limit")]
    TooLarge,
    #[error("invalid Content-Length from origin")]
    BadLength,
    #[error("unsupported transfer-coding from origin")]
    BadTransferCoding,
    #[error("reading the response head failed: {0}")]
    Io(std::io::ErrorKind),
}

/// A parsed origin response head; owns its bytes, keeps ranges into them.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    raw: Bytes,
    reason: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub status: u16,
    pub http10: bool,
    /// Content-Length when the origin declared one (and did not also chunk).
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// The origin lets us reuse the connection after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The head's size as received, for memory bounds.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub fn reason(&self) -> &[u8] {
        &self.raw[self.reason.clone()]
    }
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
    /// Informational (1xx) heads precede the real response.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// How the body that follows is delimited, given the request method.
    pub fn body(&self, request_was_head: bool, max_chunked: u64) -> Option<BodyDecoder> {
        if request_was_head || self.is_informational() || self.status == 204 || self.status == 304 {
            return None;
        }
        if self.chunked {
            return Some(BodyDecoder::chunked(max_chunked));
        }
        match self.content_length {
            Some(n) => Some(BodyDecoder::length(n)),
            None => Some(BodyDecoder::UntilClose),
        }
    }
}

/// Parses a response head from the front of `buf`, splitting it off when complete.
pub fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<ResponseHead>, ResponseError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head {
                return Err(ResponseError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    if n > max_head {
        return Err(ResponseError::TooLarge);
    }
    let whole = &buf[..n];
    let range = |s: &[u8]| headers::span(whole, s);
    let status = resp.code.ok_or(ResponseError::Malformed)?;
    // Three digits is all httparse checks; a status outside 100-599 is not HTTP.
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed);
    }
    let http10 = resp.version == Some(0);
    let reason = range(resp.reason.unwrap_or("").as_bytes());
    let mut headers = Vec::with_capacity(resp.headers.len());
    let mut content_length = None;
    let mut chunked = false;
    let mut te = false;
    let mut te_codings = 0usize;
    let mut close = false;
    let mut ka = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_content_length(h.value).ok_or(ResponseError::BadLength)?;
            if content_length.is_some_and(|c| c != v) {
                return Err(ResponseError::BadLength);
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            te_codings += headers::tokens(h.value).count();
            chunked = headers::tokens(h.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= headers::connection_names(h.value, b"close");
            ka |= headers::connection_names(h.value, b"keep-alive");
        }
        headers.push((range(name), range(h.value)));
    }
    // Codings other than chunked (`gzip, chunked`, or `gzip` to close) would reach the
    // client mislabelled once we strip Transfer-Encoding: refuse them (502).
    if te && (!chunked || te_codings > 1) {
        return Err(ResponseError::BadTransferCoding);
    }
    let until_close_te = false;
    if te {
        // Transfer-Encoding overrides Content-Length; such a message is suspect: don't reuse.
        let had_length = content_length.take().is_some();
        close = close || until_close_te || had_length;
    }
    let keep_alive = !close && (!http10 || ka);
    let raw = buf.split_to(n).freeze();
    Ok(Some(ResponseHead {
        raw,
        reason,
        headers,
        status,
        http10,
        content_length,
        chunked,
        keep_alive: keep_alive && !until_close_te,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_without_a_reason_does_not_panic() {
        // (status line, parses?, reason)
        let table: [(&str, bool, &str); 5] = [
            ("HTTP/1.1 200\r\n", true, ""),
            ("HTTP/1.1 200 \r\n", true, ""),
            ("HTTP/1.1 204 No Content\r\n", true, "No Content"),
            ("HTTP/1.1 999 Nine\r\n", false, ""),
            ("HTTP/1.1 099 Low\r\n", false, ""),
        ];
        for (line, ok, reason) in table {
            let raw = format!("{line}Content-Length: 0\r\n\r\n");
            match parse(&mut BytesMut::from(raw.as_bytes()), 65536) {
                Ok(Some(h)) => {
                    assert!(ok, "{line:?} should be refused");
                    assert_eq!(h.reason(), reason.as_bytes(), "{line:?}");
                }
                other => assert!(!ok, "{line:?}: {other:?}"),
            }
        }
    }
    use crate::http1::body::Decoded;

    fn head(s: &[u8]) -> ResponseHead {
        parse(&mut BytesMut::from(s), 16384).unwrap().unwrap()
    }

    #[test]
    fn framing_table() {
        // (head, request was HEAD, expected decoder kind, keep-alive)
        let cases: &[(&[u8], bool, &str, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                "len5",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                "none",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                "chunked",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, "close", true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, "none", true),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                "none",
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                "len1",
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false,
                "len1",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false,
                "len1",
                false,
            ),
        ];
        for (input, was_head, kind, ka) in cases {
            let h = head(input);
            let got = match h.body(*was_head, 1 << 20) {
                None => "none".to_string(),
                Some(BodyDecoder::Length { remaining }) => format!("len{remaining}"),
                Some(BodyDecoder::Chunked(_)) => "chunked".into(),
                Some(BodyDecoder::UntilClose) => "close".into(),
            };
            assert_eq!(&got, kind, "{}", String::from_utf8_lossy(input));
            assert_eq!(h.keep_alive, *ka, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn errors() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ];
        for b in bad {
            assert!(
                parse(&mut BytesMut::from(*b), 16384).is_err(),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(20000));
        assert_eq!(
            parse(&mut BytesMut::from(big.as_bytes()), 16384).unwrap_err(),
            ResponseError::TooLarge
        );
    }

    #[test]
    fn body_follows_head() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..]);
        let h = parse(&mut buf, 16384).unwrap().unwrap();
        assert_eq!(h.reason(), b"OK");
        let mut d = h.body(false, 100).unwrap();
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"hi"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Done);
    }
}
