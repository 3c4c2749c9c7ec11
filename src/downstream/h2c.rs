//! h2c by `Upgrade` (RFC 7540 §3.2; RFC 9113 dropped it, but curl and nghttp2
//! still send it): which HTTP/1.1 requests may switch, and the HTTP/2 bytes
//! that replay the upgrading request as stream 1. Sans-IO; the HTTP/1 loop
//! writes the 101 and hands the connection to `downstream::h2`.
//!
//! The `h2` crate has no way to adopt a stream, so the request is replayed as
//! a client HEADERS frame on stream 1 (END_STREAM: an upgrading request has no
//! body), spliced in right after the client's preface and first SETTINGS.
//! Its fields are HPACK literals "without indexing", which leave the decoder's
//! dynamic table as the client's encoder expects it (untouched). The
//! `HTTP2-Settings` values (RFC 7540 §3.2.1) are put in front of the entries of
//! the client's first SETTINGS frame: h2 applies them before stream 1, the
//! client's own entries override them, and the client gets the one ACK it
//! waits for (the 101 acknowledges the header's values).

use crate::http1::headers::{connection_names, tokens};
use crate::http1::request::{Framing, RequestHead, Version};

/// What the client is sent before the HTTP/2 server preface.
pub const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

/// Largest HEADERS frame payload the peer may send before SETTINGS say
/// otherwise (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;

/// Fields that describe the HTTP/1.1 hop or the upgrade itself, or that HTTP/2
/// carries as pseudo-headers: not replayed.
pub(crate) fn dropped(name: &[u8]) -> bool {
    [
        &b"host"[..],
        b"connection",
        b"upgrade",
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"content-length",
        b"expect",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// What the bytes after the client's preface hold so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstFrame {
    Incomplete,
    /// A whole SETTINGS frame of this length (header included).
    Settings(usize),
    /// Not a SETTINGS frame, which must come first (RFC 9113 §3.4).
    Wrong,
}

/// The client's first HTTP/2 frame, at the front of `after_preface`.
pub fn first_frame(after_preface: &[u8]) -> FirstFrame {
    let h = after_preface;
    if h.len() < 9 {
        return FirstFrame::Incomplete;
    }
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let ack = h[4] & 0x1 != 0;
    if h[3] != 4 || stream != 0 || ack || !len.is_multiple_of(6) || len > MAX_FRAME {
        return FirstFrame::Wrong;
    }
    if h.len() < 9 + len {
        return FirstFrame::Incomplete;
    }
    FirstFrame::Settings(9 + len)
}

/// The SETTINGS payload in one `HTTP2-Settings` value: base64url (token68),
/// padding optional, whole 6-byte entries, at most 64 of them.
fn decode_settings(v: &[u8]) -> Option<Vec<u8>> {
    let v = v
        .strip_suffix(b"==")
        .or_else(|| v.strip_suffix(b"="))
        .unwrap_or(v);
    if v.len() % 4 == 1 || v.len() > 4 * 6 * 64 / 3 + 3 {
        return None;
    }
    let digit = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    for chunk in v.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= digit(b)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    (out.len().is_multiple_of(6) && out.len() <= 6 * 64).then_some(out)
}

/// An upgrade's HTTP/2 side: the header's settings and the replayed request.
#[derive(Debug)]
pub struct Upgrade {
    /// The decoded `HTTP2-Settings` entries (a SETTINGS payload).
    pub settings: Vec<u8>,
    /// The HEADERS frame for stream 1.
    pub stream1: Vec<u8>,
}

impl Upgrade {
    /// The client's first SETTINGS frame (`client`, whole) with the header's
    /// entries in front; the client's alone if both would not fit one frame.
    pub fn merged_settings(&self, client: &[u8]) -> Vec<u8> {
        let payload = &client[9..];
        if self.settings.len() + payload.len() > MAX_FRAME {
            return client.to_vec();
        }
        let len = (self.settings.len() + payload.len()) as u32;
        let mut f = Vec::with_capacity(9 + len as usize);
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.extend_from_slice(&[4, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&self.settings);
        f.extend_from_slice(payload);
        f
    }
}

/// The HEADERS frame (stream 1, END_STREAM | END_HEADERS) that replays `head`,
/// when `head` asks to upgrade to h2c and may: HTTP/1.1, `Upgrade: h2c`,
/// `Connection` naming `Upgrade` and `HTTP2-Settings`, exactly one valid
/// `HTTP2-Settings`, no body and no `Expect`. `None` serves it as HTTP/1.1.
pub fn upgrade_frame(head: &RequestHead) -> Option<Upgrade> {
    if head.version != Version::Http11
        || !matches!(head.framing, Framing::None | Framing::Length(0))
        || head.expect_continue
        || head.method().eq_ignore_ascii_case(b"CONNECT")
    {
        return None;
    }
    let all = |name: &'static [u8]| {
        head.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    if !all(b"upgrade").any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"h2c"))) {
        return None;
    }
    let conn = |token: &[u8]| all(b"connection").any(|v| connection_names(v, token));
    if !conn(b"upgrade") || !conn(b"http2-settings") {
        return None;
    }
    let mut values = all(b"http2-settings");
    let settings = match (values.next(), values.next()) {
        (Some(v), None) => decode_settings(v)?,
        _ => return None,
    };
    let host = head.host()?;
    // What HTTP/1 accepts but h2 would refuse (an empty Host, `a]b`) is
    // answered over HTTP/1.1, not reset after the 101.
    let path_ok = head.path() == b"*" || http::uri::PathAndQuery::try_from(head.path()).is_ok();
    if http::uri::Authority::try_from(host).is_err() || !path_ok {
        return None;
    }
    let mut block = Vec::with_capacity(256);
    literal(&mut block, b":method", head.method());
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":authority", host);
    literal(&mut block, b":path", head.path());
    for (n, v) in head.headers() {
        if dropped(n) || conn(n) {
            continue;
        }
        let lower = n.to_ascii_lowercase();
        literal(&mut block, &lower, v);
    }
    if block.len() > MAX_FRAME {
        return None;
    }
    let mut frame = Vec::with_capacity(9 + block.len());
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    frame.extend_from_slice(&[1, 0x5, 0, 0, 0, 1]);
    frame.extend_from_slice(&block);
    Some(Upgrade {
        settings,
        stream1: frame,
    })
}

/// An HPACK "literal header field without indexing — new name" (RFC 7541
/// §6.2.2), no Huffman coding.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    integer(out, name.len());
    out.extend_from_slice(name);
    integer(out, value.len());
    out.extend_from_slice(value);
}

/// An HPACK integer with a 7-bit prefix and the H bit clear (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::request::{parse, Limits};
    use bytes::BytesMut;

    fn head(raw: &str) -> RequestHead {
        parse(&mut BytesMut::from(raw.as_bytes()), &Limits::default())
            .unwrap()
            .unwrap()
    }

    const UP: &str = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n";

    #[test]
    fn which_requests_upgrade() {
        let cases: &[(&str, bool)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n{UP}\r\n", true),
            ("HEAD /x?y HTTP/1.1\r\nHost: a\r\n{UP}\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{UP}\r\n", true),
            // A body never upgrades (the 101 would come before it is read).
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n{UP}\r\nhello", false),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{UP}\r\n", false),
            ("GET / HTTP/1.0\r\nHost: a\r\n{UP}\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n{UP}\r\n", false),
            // The Connection tokens, the Upgrade token and one valid HTTP2-Settings.
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABk\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket, h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\n{UP}HTTP2-Settings: AAMAAABk\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAAB\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA+AAABk\r\n\r\n", false),
            // Empty settings are valid (no entries).
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n", true),
            ("OPTIONS * HTTP/1.1\r\nHost: a\r\n{UP}\r\n", true),
            ("GET / HTTP/1.1\r\nHost: \r\n{UP}\r\n", false),
            ("GET http://a/p HTTP/1.1\r\nHost: a\r\n{UP}\r\n", true),
        ];
        for (raw, want) in cases {
            let raw = raw.replace("{UP}", UP);
            let parsed = parse(&mut BytesMut::from(raw.as_bytes()), &Limits::default());
            let Ok(Some(h)) = parsed else {
                panic!("{raw:?} does not parse: {parsed:?}");
            };
            assert_eq!(upgrade_frame(&h).is_some(), *want, "{raw:?}");
        }
    }

    #[test]
    fn the_replayed_frame_carries_the_request_less_its_hop_fields() {
        let h = head(
            "GET /p?q=1 HTTP/1.1\r\nHost: test.local:8080\r\nX-Secret: s\r\nConnection: Upgrade, HTTP2-Settings, X-Secret\r\nAccept: */*\r\nKeep-Alive: 5\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
        );
        let f = upgrade_frame(&h).unwrap().stream1;
        assert_eq!(&f[3..9], &[1, 0x5, 0, 0, 0, 1]);
        assert_eq!(
            f.len() - 9,
            u32::from_be_bytes([0, f[0], f[1], f[2]]) as usize
        );
        let mut fields = Vec::new();
        let mut b = &f[9..];
        while !b.is_empty() {
            assert_eq!(b[0], 0);
            let n = b[1] as usize;
            let name = String::from_utf8(b[2..2 + n].to_vec()).unwrap();
            let v = b[2 + n] as usize;
            let value = String::from_utf8(b[3 + n..3 + n + v].to_vec()).unwrap();
            fields.push((name, value));
            b = &b[3 + n + v..];
        }
        let want: Vec<(String, String)> = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "test.local:8080"),
            (":path", "/p?q=1"),
            ("accept", "*/*"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(fields, want);
    }

    #[test]
    fn http2_settings_values_decode_as_base64url() {
        // SETTINGS_MAX_CONCURRENT_STREAMS = 100, SETTINGS_INITIAL_WINDOW_SIZE = 10485760.
        let want = [0, 3, 0, 0, 0, 100, 0, 4, 0, 0xa0, 0, 0];
        assert_eq!(
            decode_settings(b"AAMAAABkAAQAoAAA").as_deref(),
            Some(&want[..])
        );
        assert_eq!(decode_settings(b"").as_deref(), Some(&[][..]));
        assert_eq!(decode_settings(b"AAMAAABk").as_deref(), Some(&want[..6]));
        for bad in [
            &b"AAMAAAB"[..],
            b"AA+AAABk",
            b"AAMAAABkA",
            b"AAMA",
            b"AA/AAABk",
        ] {
            assert_eq!(
                decode_settings(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let too_many = "AAMAAABk".repeat(65);
        assert_eq!(decode_settings(too_many.as_bytes()), None);
    }

    #[test]
    fn the_header_settings_go_in_front_of_the_clients_own() {
        let up = Upgrade {
            settings: vec![0, 1, 0, 0, 0, 0],
            stream1: Vec::new(),
        };
        let client = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let merged = up.merged_settings(&client);
        assert_eq!(
            merged,
            [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]
        );
        assert_eq!(first_frame(&merged), FirstFrame::Settings(21));
    }

    #[test]
    fn hpack_integers_past_the_prefix() {
        for (n, want) in [
            (10usize, vec![10u8]),
            (126, vec![126]),
            (127, vec![127, 0]),
            (1337, vec![127, 0xba, 0x09]),
        ] {
            let mut out = Vec::new();
            integer(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
    }

    #[test]
    fn the_first_frame_after_the_preface_must_be_settings() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        use FirstFrame::*;
        assert_eq!(first_frame(&settings[..5]), Incomplete);
        assert_eq!(first_frame(&settings[..12]), Incomplete);
        assert_eq!(first_frame(&settings), Settings(15));
        let mut ack = settings;
        ack[4] = 1;
        assert_eq!(first_frame(&ack), Wrong);
        let mut headers = settings;
        headers[3] = 1;
        assert_eq!(first_frame(&headers), Wrong);
        let odd = [0, 0, 5, 4, 0, 0, 0, 0, 0];
        assert_eq!(first_frame(&odd), Wrong);
        let huge = [0, 0x40, 0x02, 4, 0, 0, 0, 0, 0];
        assert_eq!(first_frame(&huge), Wrong, "past one frame's size");
    }
}
