//! The response head as the request path builds it: status, fields and body
//! length, with no protocol's bytes in it. Header policy and rules edit it; the
//! downstream renders it (HTTP/1 status line and lines, or an HTTP/2 HEADERS
//! frame) only when it is sent.
//!
//! Fields stored with a cached object arrive as the block of `Name: value\r\n`
//! lines cairn wrote itself. They stay that block (`stored`) until something
//! needs them one by one (a removal, the rules): a hit without rules then renders
//! them with one copy, and nothing parses them.

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
    /// Well-formed `Name: value\r\n` lines, before `fields` (see the module doc).
    stored: &'a [u8],
    fields: HeaderList<'a>,
    pub body: BodyLen,
}

/// The lines of a stored block as (name, value).
fn lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        Some((
            &line[..colon],
            crate::http1::headers::trim(&line[colon + 1..]),
        ))
    })
}

/// The first line of a stored block that is the field `name` (without its `\n`).
fn find_line<'b>(block: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    let n = name.len();
    let mut start = 0;
    while start < block.len() {
        let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i);
        let line = &block[start..end];
        if line.len() > n && line[n] == b':' && line[..n].eq_ignore_ascii_case(name) {
            return Some(line);
        }
        start = end + 1;
    }
    None
}

impl<'a> Head<'a> {
    pub fn new(status: u16, body: BodyLen) -> Head<'a> {
        Head {
            status,
            reason: None,
            stored: b"",
            fields: Vec::new(),
            body,
        }
    }

    /// A head from stored field lines (`Name: value\r\n`…, as the cache keeps them),
    /// borrowing them: nothing is copied or parsed until it has to be.
    pub fn from_lines(status: u16, block: &'a [u8], body: BodyLen) -> Head<'a> {
        // Renderers copy the block whole: it must be whole lines.
        debug_assert!(block.is_empty() || block.ends_with(b"\r\n"));
        Head {
            stored: block,
            ..Head::new(status, body)
        }
    }

    /// Every field, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        lines(self.stored).chain(self.fields.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// The stored block still unparsed, and the fields after it (for renderers
    /// that can copy the block whole).
    pub fn parts(&self) -> (&[u8], &HeaderList<'a>) {
        (self.stored, &self.fields)
    }

    /// The fields as one editable list (parsing the stored block if needed).
    pub fn fields_mut(&mut self) -> &mut HeaderList<'a> {
        if !self.stored.is_empty() {
            let mut list: HeaderList<'a> = lines(self.stored)
                .map(|(n, v)| (Cow::Borrowed(n), Cow::Borrowed(v)))
                .collect();
            list.append(&mut self.fields);
            self.fields = list;
            self.stored = b"";
        }
        &mut self.fields
    }

    pub fn push(&mut self, name: &'a [u8], value: impl Into<Cow<'a, [u8]>>) {
        self.fields.push((Cow::Borrowed(name), value.into()));
    }

    /// The first field of that name (case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        // The stored block is searched without splitting every line into parts:
        // this runs on every hit (is there a Date?).
        let in_block = find_line(self.stored, name).map(|line| {
            let v = &line[name.len() + 1..];
            crate::http1::headers::trim(v.strip_suffix(b"\r").unwrap_or(v))
        });
        in_block.or_else(|| {
            self.fields
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(name))
                .map(|(_, v)| &v[..])
        })
    }

    pub fn has(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Removes every field of that name.
    pub fn remove(&mut self, name: &[u8]) {
        if find_line(self.stored, name).is_some() {
            self.fields_mut();
        }
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
    fn stored_lines_stay_a_block_until_edited() {
        let block = b"Content-Type: text/plain\r\nETag:  \"x\" \r\nbroken line\r\nX-Empty:\r\n";
        let mut h = Head::from_lines(200, block, BodyLen::Known(5));
        h.push(b"Via", &b"cairn"[..]);
        let names: Vec<&[u8]> = h.fields().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Content-Type"[..], b"ETag", b"X-Empty", b"Via"]);
        assert_eq!(h.get(b"etag"), Some(&b"\"x\""[..]));
        assert_eq!(h.get(b"x-empty"), Some(&b""[..]));
        assert_eq!(
            h.get(b"content"),
            None,
            "a prefix of a name is not the name"
        );
        assert_eq!(h.get(b"content-type-x"), None);
        assert_eq!(h.parts().0, block, "not parsed yet");
        // Removing something the block does not hold leaves the block alone.
        h.remove(b"server");
        assert_eq!(h.parts().0, block);
        h.remove(b"ETAG");
        assert!(h.parts().0.is_empty());
        let names: Vec<&[u8]> = h.fields().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Content-Type"[..], b"X-Empty", b"Via"]);
        assert!(h
            .fields_mut()
            .iter()
            .take(2)
            .all(|(n, v)| matches!((n, v), (Cow::Borrowed(_), Cow::Borrowed(_)))));
        assert_eq!(h.content_length(), Some(5));
        let mut e = Head::new(304, BodyLen::Empty);
        e.push(b"Content-Length", &b"10"[..]);
        assert_eq!(e.content_length(), Some(10));
        e.remove(b"CONTENT-LENGTH");
        assert_eq!(e.content_length(), None);
    }
}
