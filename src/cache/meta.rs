//! The metadata stored with an object: status, time facts, validators and the
//! response header lines kept by policy (ORIG-1). Pure encode/decode.

use super::freshness::Times;
use crate::http1::headers::{connection_names, is_hop_by_hop};
use crate::http1::ResponseHead;

const VERSION: u8 = 1;

/// Headers kept with `<OriginalHeader>OFF</OriginalHeader>` (spec ORIG-1).
const STANDARD: [&str; 20] = [
    "accept-ranges",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expires",
    "last-modified",
    "link",
    "location",
    "pragma",
    "retry-after",
    "server",
    "vary",
    "www-authenticate",
];
/// Added by `<OriginalHeader Standard="ON">`.
const STANDARD_EXTRA: [&str; 5] = [
    "content-md5",
    "proxy-authenticate",
    "te",
    "trailer",
    "warning",
];

/// Which origin headers are stored and sent (ORIG-1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderPolicy {
    /// `<OriginalHeader>ON`: keep every header but cookies.
    pub original: bool,
    /// `Standard="ON"`: widen the standard list.
    pub standard_extra: bool,
}

impl HeaderPolicy {
    pub fn keeps(&self, name: &[u8]) -> bool {
        let eq = |n: &&str| n.as_bytes().eq_ignore_ascii_case(name);
        // Never stored in any mode (ORIG-1, KEY-5); framing and Age are recomputed.
        if [
            b"set-cookie".as_slice(),
            b"set-cookie2",
            b"cookie",
            b"content-length",
            b"age",
        ]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
            || is_hop_by_hop(name)
        {
            return false;
        }
        self.original
            || STANDARD.iter().any(eq)
            || (self.standard_extra && STANDARD_EXTRA.iter().any(eq))
    }
}

/// The header lines (`Name: value\r\n`…) of `resp` that the policy keeps.
pub fn kept_headers(resp: &ResponseHead, policy: HeaderPolicy) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Fields the origin's `Connection` names describe its hop only (RFC 9110
    // §7.6.1): never stored, so never served.
    let connection: Vec<&[u8]> = resp
        .headers()
        .filter(|(c, _)| c.eq_ignore_ascii_case(b"connection"))
        .map(|(_, v)| v)
        .collect();
    let listed = |n: &[u8]| connection.iter().any(|v| connection_names(v, n));
    for (n, v) in resp.headers() {
        if policy.keeps(n) && !listed(n) {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Decoded metadata; `etag` and `head` borrow from the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta<'a> {
    pub status: u16,
    pub times: Times,
    pub last_modified_s: u64,
    pub etag: &'a [u8],
    pub head: &'a [u8],
}

impl Meta<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.etag.len() + self.head.len());
        b.push(VERSION);
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&self.times.flags.to_le_bytes());
        for v in [
            self.times.request_time_ms,
            self.times.response_time_ms,
            self.times.date_s,
            self.times.age_s,
            self.times.lifetime_ms,
            self.last_modified_s,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let etag = &self.etag[..self.etag.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(etag.len() as u16).to_le_bytes());
        b.extend_from_slice(etag);
        b.extend_from_slice(&(self.head.len() as u32).to_le_bytes());
        b.extend_from_slice(self.head);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Meta<'_>> {
        let mut r = Reader { b, at: 0 };
        if r.bytes(1)?[0] != VERSION {
            return None;
        }
        let status = u16::from_le_bytes(r.bytes(2)?.try_into().ok()?);
        let flags = u16::from_le_bytes(r.bytes(2)?.try_into().ok()?);
        let mut v = [0u64; 6];
        for x in &mut v {
            *x = u64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
        }
        let elen = u16::from_le_bytes(r.bytes(2)?.try_into().ok()?) as usize;
        let etag = r.bytes(elen)?;
        let hlen = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?) as usize;
        let head = r.bytes(hlen)?;
        Some(Meta {
            status,
            times: Times {
                request_time_ms: v[0],
                response_time_ms: v[1],
                date_s: v[2],
                age_s: v[3],
                lifetime_ms: v[4],
                flags,
            },
            last_modified_s: v[5],
            etag,
            head,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn meta_round_trip_and_truncation() {
        let m = Meta {
            status: 200,
            times: Times {
                request_time_ms: 1,
                response_time_ms: 2,
                date_s: 3,
                age_s: 4,
                lifetime_ms: 5,
                flags: 6,
            },
            last_modified_s: 7,
            etag: b"\"abc\"",
            head: b"Content-Type: text/plain\r\n",
        };
        let enc = m.encode();
        assert_eq!(Meta::decode(&enc), Some(m));
        for n in 0..enc.len() {
            assert_eq!(Meta::decode(&enc[..n]), None, "truncated at {n}");
        }
    }

    #[test]
    fn orig_1_policy() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nX-Custom: 1\r\nSet-Cookie: s=1\r\nConnection: close\r\nAge: 5\r\nETag: \"e\"\r\nContent-Length: 3\r\nWarning: 110\r\n\r\n";
        let resp = crate::http1::response::parse(&mut BytesMut::from(&raw[..]), 4096)
            .unwrap()
            .unwrap();
        let off = String::from_utf8(kept_headers(&resp, HeaderPolicy::default())).unwrap();
        assert_eq!(off, "Content-Type: a\r\nETag: \"e\"\r\n");
        let extra = String::from_utf8(kept_headers(
            &resp,
            HeaderPolicy {
                original: false,
                standard_extra: true,
            },
        ))
        .unwrap();
        assert_eq!(extra, "Content-Type: a\r\nETag: \"e\"\r\nWarning: 110\r\n");
        let on = String::from_utf8(kept_headers(
            &resp,
            HeaderPolicy {
                original: true,
                standard_extra: false,
            },
        ))
        .unwrap();
        assert_eq!(
            on,
            "Content-Type: a\r\nX-Custom: 1\r\nETag: \"e\"\r\nWarning: 110\r\n"
        );
    }

    #[test]
    fn fields_the_origins_connection_names_are_not_stored() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nconnection: ETag\r\nETag: \"e\"\r\nX-Kept: 2\r\n\r\n";
        let resp = crate::http1::response::parse(&mut BytesMut::from(&raw[..]), 4096)
            .unwrap()
            .unwrap();
        let on = HeaderPolicy {
            original: true,
            standard_extra: false,
        };
        assert_eq!(
            String::from_utf8(kept_headers(&resp, on)).unwrap(),
            "X-Kept: 2\r\n"
        );
    }
}
