//! The response head as the request path builds it: status, fields and body
//! length, with no protocol's bytes in it. Header policy and rules edit it; the
//! downstream renders it (HTTP/1 status line and lines, later an HTTP/2 HEADERS
//! frame) only when it is sent.

use crate::policy::HeaderList;
use std::borrow::Cow;

/// How long the body that follows is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// No body follows (204, 304, and responses without one). A `Content-Length`
    /// field, if any, is the origin's and passes through as it is.
    Empty,
    Known(u64),
    /// Streams until the source ends (chunked for HTTP/1.1, close for HTTP/1.0).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Head<'a> {
    pub status: u16,
    /// The origin's reason phrase, when relayed (HTTP/1 only; otherwise the standard one).
    pub reason: Option<&'a [u8]>,
    pub fields: HeaderList<'a>,
    pub body: BodyLen,
}

impl<'a> Head<'a> {
    pub fn new(status: u16, body: BodyLen) -> Head<'a> {
        Head {
            status,
            reason: None,
            fields: Vec::with_capacity(16),
            body,
        }
    }

    /// A head from stored field lines (`Name: value\r\n`…, as the cache keeps them),
    /// borrowing them: no value is copied.
    pub fn from_lines(status: u16, lines: &'a [u8], body: BodyLen) -> Head<'a> {
        let mut h = Head::new(status, body);
        for line in lines.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            h.fields.push((
                Cow::Borrowed(&line[..colon]),
                Cow::Borrowed(crate::http1::headers::trim(&line[colon + 1..])),
            ));
        }
        h
    }

    pub fn push(&mut self, name: &'a [u8], value: impl Into<Cow<'a, [u8]>>) {
        self.fields.push((Cow::Borrowed(name), value.into()));
    }

    /// The first field of that name (case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }

    pub fn has(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Removes every field of that name.
    pub fn remove(&mut self, name: &[u8]) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The body length a client will be told (`Content-Length`), if any.
    pub fn content_length(&self) -> Option<u64> {
        match self.body {
            BodyLen::Known(n) => Some(n),
            BodyLen::Unknown => None,
            BodyLen::Empty => self
                .get(b"content-length")
                .and_then(crate::http1::headers::parse_content_length),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lines_become_borrowed_fields() {
        let lines = b"Content-Type: text/plain\r\nETag:  \"x\" \r\nbroken line\r\nX-Empty:\r\n";
        let h = Head::from_lines(200, lines, BodyLen::Known(5));
        let names: Vec<&[u8]> = h.fields.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"Content-Type"[..], b"ETag", b"X-Empty"]);
        assert_eq!(h.get(b"etag"), Some(&b"\"x\""[..]));
        assert_eq!(h.get(b"x-empty"), Some(&b""[..]));
        assert!(matches!(h.fields[0].1, Cow::Borrowed(_)));
        assert_eq!(h.content_length(), Some(5));
        let mut e = Head::new(304, BodyLen::Empty);
        e.push(b"Content-Length", &b"10"[..]);
        assert_eq!(e.content_length(), Some(10));
        e.remove(b"CONTENT-LENGTH");
        assert_eq!(e.content_length(), None);
    }
}
