//! Fuzz entry points: one function per target, each feeding arbitrary bytes to a
//! real parser. None of them may panic on any input; the `assert!`s below are
//! invariants of the parsers' results, so a failed one is a bug found.
//!
//! The binaries in `fuzz/` call these; the corpora live in `fuzz/corpus/<target>/`
//! and a smoke test at the bottom replays every corpus file on `cargo test`.
//! See `fuzz/README.md`.

use crate::cache::freshness::CacheControl;
use crate::cache::meta::Meta;
use crate::cache::record::{self, Header, HEADER_LEN};
use crate::http1::body::{BodyDecoder, ChunkedDecoder, Decoded};
use crate::http1::range::{self, RangeReply};
use crate::http1::request::{self, Framing, Limits};
use crate::http1::response;
use crate::policy::cond::{GeoInfo, GeoLookup, HeaderLookup, MatchCtx};
use crate::policy::modify::{HeaderList, NoVars, Phase};
use crate::policy::{self, Condition};
use bytes::BytesMut;
use std::borrow::Cow;
use std::net::IpAddr;

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The names of all targets, as in `fuzz/corpus/<name>/` and `fuzz/src/bin/<name>.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_request", http1_request),
    ("http1_response", http1_response),
    ("http1_chunked", http1_chunked),
    ("range", range),
    ("cache_control", cache_control),
    ("expires_txt", expires_txt),
    ("compression_txt", compression_txt),
    ("drm", drm),
    ("headers_txt", headers_txt),
    ("condition", condition),
    ("rulefile", rulefile),
    ("timespec", timespec),
    ("config", config),
    ("record", record),
    ("h2c", h2c),
    ("ttl_txt", ttl_txt),
    ("manage", manage),
    ("origin_head", origin_head),
    ("querystring_txt", querystring_txt),
    ("bypass_txt", bypass_txt),
    ("dns_answer", dns_answer),
];

/// Upper bound on loop iterations per input (pipelined requests, body steps).
const MAX_STEPS: usize = 10_000;

/// Drains a body decoder over `buf`; returns the payload length seen.
fn drain(dec: &mut BodyDecoder, buf: &mut BytesMut) -> u64 {
    let mut n = 0u64;
    for _ in 0..MAX_STEPS {
        match dec.decode(buf) {
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty(), "a Data step carries payload");
                n += d.len() as u64;
            }
            Ok(Decoded::Done) => {
                assert!(dec.is_done() || matches!(dec, BodyDecoder::Length { .. }));
                break;
            }
            Ok(Decoded::NeedMore) | Err(_) => break,
        }
    }
    let _ = dec.finish_on_eof();
    n
}

/// The HTTP/1 request-head parser, with pipelining: parse a head, consume its
/// body by its framing, parse the next one from what is left.
pub fn http1_request(data: &[u8]) {
    let limits = Limits::default();
    let mut buf = BytesMut::from(data);
    for _ in 0..MAX_STEPS {
        let before = buf.len();
        let head = match request::parse(&mut buf, &limits) {
            Ok(Some(h)) => h,
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete head consumes nothing");
                break;
            }
            Err(e) => {
                let _ = e.status();
                break;
            }
        };
        assert!(
            buf.len() < before,
            "a complete head is split off the buffer"
        );
        assert!(!head.method().is_empty());
        let path = head.path();
        assert!(
            path.first() == Some(&b'/') || path == b"*",
            "path {path:?} is origin-form or '*'"
        );
        if let Some(host) = head.host() {
            assert!(host.len() <= 255);
            assert!(!host.iter().any(|b| matches!(b, b'/' | b'@' | b' ' | b'?')));
        }
        let n = head.headers().count();
        assert!(n <= limits.max_headers);
        for (name, _) in head.headers() {
            assert!(!name.is_empty());
        }
        let _ = (head.header("host"), head.is_head(), head.is_idempotent());
        let mut dec = match head.framing {
            Framing::None => continue,
            Framing::Length(n) => {
                assert!(n > 0 && n <= limits.max_body);
                BodyDecoder::length(n)
            }
            Framing::Chunked => BodyDecoder::chunked(limits.max_body),
        };
        let _ = drain(&mut dec, &mut buf);
        if !dec.is_done() {
            break;
        }
    }
}

/// The origin response-head parser, then the body framing it chose, over 1xx
/// heads and consecutive responses.
pub fn http1_response(data: &[u8]) {
    const MAX_HEAD: usize = 64 * 1024;
    let mut buf = BytesMut::from(data);
    for _ in 0..MAX_STEPS {
        let head = match response::parse(&mut buf, MAX_HEAD) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => break,
        };
        assert!((100..=599).contains(&head.status));
        if head.chunked {
            assert_eq!(head.content_length, None, "Transfer-Encoding wins");
        }
        let _ = head.reason();
        for (name, _) in head.headers() {
            assert!(!name.is_empty());
        }
        let _ = head.header("content-type");
        let Some(mut dec) = head.body(false, 1 << 20) else {
            continue;
        };
        if matches!(dec, BodyDecoder::UntilClose) {
            let _ = drain(&mut dec, &mut buf);
            break;
        }
        let _ = drain(&mut dec, &mut buf);
        if !dec.is_done() {
            break;
        }
    }
}

/// What decoding a whole chunked body gave: the payload, how it ended, what is left.
#[derive(Debug, PartialEq, Eq)]
struct ChunkedRun {
    payload: Vec<u8>,
    /// `Some(true)`: done; `Some(false)`: needs more; `None`: refused.
    end: Option<bool>,
    rest: Vec<u8>,
}

/// Feeds `data` to a chunked decoder `step` bytes at a time (all at once for 0).
fn chunked_run(data: &[u8], step: usize, max_total: u64) -> ChunkedRun {
    let mut dec = ChunkedDecoder::new(max_total);
    let mut buf = BytesMut::new();
    let mut payload = Vec::new();
    let mut fed = 0;
    let step = if step == 0 { data.len().max(1) } else { step };
    loop {
        let take = step.min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + take]);
        fed += take;
        let end = loop {
            match dec.decode(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty(), "a Data step carries payload");
                    payload.extend_from_slice(&d);
                }
                Ok(Decoded::Done) => break Some(true),
                Ok(Decoded::NeedMore) => break Some(false),
                Err(_) => break None,
            }
        };
        if end != Some(false) || fed == data.len() {
            let mut rest = buf.to_vec();
            rest.extend_from_slice(&data[fed..]);
            assert!(payload.len() as u64 <= max_total);
            return ChunkedRun { payload, end, rest };
        }
    }
}

/// The chunked decoder: the outcome must not depend on how the bytes arrive.
pub fn http1_chunked(data: &[u8]) {
    let data = &data[..data.len().min(64 * 1024)];
    let max_total = 1 << 16;
    let whole = chunked_run(data, 0, max_total);
    for step in [1, 7] {
        let split = chunked_run(data, step, max_total);
        if whole.end.is_none() {
            // Refused either way; the reason may differ (e.g. a long line).
            assert_eq!(split.end, None, "step {step}: refused only when whole");
            assert!(
                whole.payload.starts_with(&split.payload)
                    || split.payload.starts_with(&whole.payload)
            );
        } else {
            assert_eq!(split, whole, "step {step}: same result as all at once");
        }
    }
}

/// Reads a decimal object length and a newline off the front of `data`, if there.
fn split_len(data: &[u8], default: u64) -> (u64, &[u8]) {
    if let Some(nl) = data.iter().position(|&b| b == b'\n') {
        if let Some(n) = std::str::from_utf8(&data[..nl])
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return (n, &data[nl + 1..]);
        }
    }
    (default, data)
}

/// `Range` against an object length. Input: optional `<length>\n`, then the value.
pub fn range(data: &[u8]) {
    let (len, header) = split_len(data, 10_000);
    match range::evaluate(Some(header), len) {
        RangeReply::Full | RangeReply::Unsatisfiable => {}
        RangeReply::Partial(ranges) => {
            assert!(!ranges.is_empty() && ranges.len() <= 32);
            for r in &ranges {
                assert!(r.start < r.end && r.end <= len, "{r:?} within 0..{len}");
            }
            let mut sorted = ranges.clone();
            sorted.sort_by_key(|r| r.start);
            for w in sorted.windows(2) {
                assert!(
                    w[0].end <= w[1].start,
                    "coalesced ranges overlap: {ranges:?}"
                );
            }
        }
    }
}

/// `Cache-Control` values, one per line, through every parser of them.
pub fn cache_control(data: &[u8]) {
    let values = || data.split(|&b| b == b'\n');
    let cc = CacheControl::parse(values());
    for v in [cc.max_age, cc.s_maxage].into_iter().flatten() {
        assert!(v <= 1 << 31);
    }
    for v in values() {
        let _ = policy::expires::cache_control_max_age(v);
        let out = policy::expires::with_max_age(Some(v), 42);
        assert_eq!(
            policy::expires::cache_control_max_age(&out),
            Some(42),
            "with_max_age({:?}) = {:?}",
            String::from_utf8_lossy(v),
            String::from_utf8_lossy(&out)
        );
    }
}

/// A geo table for the condition matchers.
struct FuzzGeo;

impl GeoLookup for FuzzGeo {
    fn country(&self, ip: IpAddr) -> Option<GeoInfo<'_>> {
        match ip {
            IpAddr::V4(v4) if v4.octets()[0] < 128 => Some(GeoInfo {
                country2: "KR",
                country3: "KOR",
                continent: "AS",
            }),
            _ => None,
        }
    }
}

/// Runs `f` with a few request contexts derived from `url`.
fn with_ctxs(url: &[u8], mut f: impl FnMut(&MatchCtx<'_>)) {
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b"Host", b"example.com"),
        (b"User-Agent", b"Mozilla/5.0 (X11; Linux)"),
        (b"Accept-Encoding", b"gzip, br"),
        (b"Cookie", b""),
        (b"X-Fuzz", url),
    ];
    let geo = FuzzGeo;
    for (ip, method) in [
        ("10.1.2.3", &b"GET"[..]),
        ("192.168.0.1", b"POST"),
        ("2001:db8::1", b"HEAD"),
        ("::ffff:1.2.3.4", b"GET"),
    ] {
        let ctx = MatchCtx {
            client_ip: ip.parse().expect("a literal address"),
            method,
            url,
            headers: &headers as &dyn HeaderLookup,
            mime: Some(b"text/html; charset=utf-8"),
            geo: Some(&geo),
        };
        f(&ctx);
    }
}

/// `svc/<vhost>/expires.txt`, then the rules it gave, decided against some requests.
/// compression.txt, then what it decides for a few URLs and for the input
/// itself; and the input's lines as Accept-Encoding values, which must mean
/// the same as one line with them joined by commas.
pub fn compression_txt(data: &[u8]) {
    use policy::compression::{decide, parse, Compress};
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = parse(&text) {
        for r in &p.rules {
            assert!(r.line >= 1);
            if let Compress::Gzip(Some(l)) = r.action {
                assert!((1..=9).contains(&l), "level {l}");
            }
        }
        for url in [&b"/a.css"[..], b"/x/y.js?v=1", b"/", data] {
            let got = decide(&p.rules, url);
            // First match wins: nothing before the deciding rule matches.
            let first = p
                .rules
                .iter()
                .position(|r| r.url.matches(policy::compression::subject(&r.url, url)));
            assert_eq!(got, first.map_or(Compress::No, |i| p.rules[i].action));
        }
    }
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let one = lines.join(&b", "[..]);
    assert_eq!(
        crate::proxy::cached::accepts_gzip(lines.iter().copied()),
        crate::proxy::cached::accepts_gzip(std::iter::once(&one[..]))
    );
}

/// DRM routing and keys on a request target: the first line is the target,
/// the second the `<Key>` text; the source must be a prefix-free rewrite
/// (`<source path>/<keyword><query>` is the target again), a key is 5..=256
/// bytes, and the RC4 keystream at any offset agrees with the whole.
pub fn drm(data: &[u8]) {
    use policy::drm::{key_for, parse_key, source_of, DrmSettings, Hash};
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let target = lines.next().unwrap_or(b"");
    let key_text = String::from_utf8_lossy(lines.next().unwrap_or(b"$url"));
    let rest = lines.next().unwrap_or(b"");
    if let Some(src) = source_of(target, "drm") {
        let (path, query) = match src.iter().position(|&b| b == b'?') {
            Some(i) => (&src[..i], &src[i..]),
            None => (&src[..], &b""[..]),
        };
        assert_eq!([path, b"/drm", query].concat(), target);
        let Ok(key) = parse_key(&key_text) else {
            return;
        };
        for hash in [Hash::None, Hash::Md5, Hash::Sha1, Hash::Sha256] {
            let d = DrmSettings {
                keyword: "drm".into(),
                max_source_bytes: 1 << 20,
                iv: rest.iter().take(8).copied().collect(),
                token: b"token".to_vec(),
                key: key.clone(),
                hash,
                enc: Vec::new(),
            };
            if let Ok(k) = key_for(&d, &src) {
                assert!((5..=256).contains(&k.len()));
                let rc4 = crate::transform::rc4::Rc4::new(&k);
                let mut whole = rest.to_vec();
                rc4.apply_at(0, &mut whole);
                let cut = rest.len() / 2;
                let mut tail = rest[cut..].to_vec();
                crate::transform::rc4::Rc4::new(&k).apply_at(cut as u64, &mut tail);
                assert_eq!(tail, whole[cut..]);
            }
        }
    }
    let tag = policy::drm::drm_etag(target);
    assert!(tag.len() == target.len() + 4);
}

pub fn expires_txt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(parsed) = policy::expires::parse(&text) else {
        return;
    };
    let facts = policy::expires::ExpiresFacts {
        now: 1_700_000_000,
        request_time: 1_699_999_999,
        last_modified: Some(1_600_000_000),
        origin_max_age: Some(60),
        ttl_left: Some(30),
    };
    with_ctxs(b"/img/a.jpg?x=1", |ctx| {
        for base in [
            policy::expires::Base::Access,
            policy::expires::Base::Modification,
        ] {
            if let Some(o) = policy::expires::decide(&parsed.rules, base, ctx, &facts) {
                let _ = o.expires_header();
            }
        }
    });
}

/// `svc/<vhost>/headers.txt`, then the rules it gave, applied to a header list.
pub fn headers_txt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(parsed) = policy::modify::parse(&text) else {
        return;
    };
    with_ctxs(b"/a/b.html", |ctx| {
        for phase in [
            Phase::Request,
            Phase::Response { status: 200 },
            Phase::Response { status: 404 },
        ] {
            let mut headers: HeaderList<'_> = vec![
                (
                    Cow::Borrowed(&b"Host"[..]),
                    Cow::Borrowed(&b"example.com"[..]),
                ),
                (
                    Cow::Borrowed(b"Cache-Control"),
                    Cow::Borrowed(b"max-age=60"),
                ),
                (Cow::Borrowed(b"X-Dup"), Cow::Borrowed(b"1")),
                (Cow::Borrowed(b"x-dup"), Cow::Borrowed(b"2")),
            ];
            for first_only in [false, true] {
                let n = policy::modify::apply(
                    &parsed.rules,
                    first_only,
                    phase,
                    ctx,
                    &NoVars,
                    &mut headers,
                );
                assert!(n <= parsed.rules.len());
                assert!(!first_only || n <= 1);
            }
        }
    });
}

/// A condition field (`$IP[...] & !$URL[...]`): first line the condition, the
/// rest the URL it is matched against.
pub fn condition(data: &[u8]) {
    let (cond, url) = match data.iter().position(|&b| b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &b"/index.html"[..]),
    };
    let cond = String::from_utf8_lossy(cond);
    if let Ok(ip) = policy::cond::IpCond::parse(&cond) {
        let _ = ip;
    }
    let _ = policy::modify::StatusCond::parse(&cond);
    let _ = policy::modify::Template::parse(&cond);
    let Ok(c) = Condition::parse(&cond) else {
        return;
    };
    let _ = (c.terms().len(), c.uses_geo());
    with_ctxs(url, |ctx| {
        let _ = c.matches(ctx);
    });
    for case in [policy::Case::Sensitive, policy::Case::Insensitive] {
        let p = policy::Pattern::new(&cond, case);
        let _ = (p.matches(url), p.matches_all());
    }
}

/// The line and field splitter shared by all `.txt` rule files.
pub fn rulefile(data: &[u8]) {
    use policy::rulefile::{and_terms, bracket_open, fields, lines, matching_close, snippet};
    let text = String::from_utf8_lossy(data);
    let mut last = 0;
    for line in lines(&text) {
        assert!(line.no > last, "line numbers increase");
        last = line.no;
        let t = line.text;
        assert!(!t.is_empty() && !t.starts_with('#') && t.trim() == t);
        let _ = snippet(t);
        if let Ok(f) = fields(t) {
            assert!(!f.is_empty());
            assert!(f.iter().all(|x| x.trim() == *x));
            for field in f {
                if let Ok(terms) = and_terms(field) {
                    assert!(!terms.is_empty());
                }
            }
        }
        let b = t.as_bytes();
        for i in 0..b.len() {
            if let Some(open) = bracket_open(b, i) {
                assert!(open > i && b[open] == b'[');
                if let Some(close) = matching_close(b, open) {
                    assert!(close > open && b[close] == b']');
                }
            }
        }
    }
}

/// STON time values (`1 hour 30 min`, `90`).
pub fn timespec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let _ = policy::parse_seconds(line);
    }
}

/// The `server.xml` and `vhosts.xml` loader. Input: the two texts separated by
/// a NUL byte (vhosts.xml is empty when there is none).
pub fn config(data: &[u8]) {
    let (server, vhosts) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let server = String::from_utf8_lossy(server);
    let vhosts = String::from_utf8_lossy(vhosts);
    if let Ok(loaded) = crate::config::load_str(&server, &vhosts) {
        let c = &loaded.config;
        if let Some(d) = c.default_vhost {
            assert!(d < c.vhosts.len(), "default vhost index in range");
        }
        let _ = c.describe();
        let _ = c.listen_addrs();
    }
}

/// The segment record decoder, as recovery runs it over a segment: header, then
/// the key, metadata and body it claims, then the next record.
pub fn record(data: &[u8]) {
    scan(data);
    // The header check is a hash the fuzzer cannot forge: also scan a copy whose
    // first header has its magic and check fixed up, to reach the length logic.
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        fixed[0..4].copy_from_slice(&record::MAGIC.to_le_bytes());
        let check = xxhash_rust::xxh3::xxh3_64(&fixed[..56]);
        fixed[56..64].copy_from_slice(&check.to_le_bytes());
        scan(&fixed);
    }
}

fn scan(seg: &[u8]) {
    let hwm = seg.len() as u64;
    let mut off = 0u64;
    while off + HEADER_LEN as u64 <= hwm {
        let at = off as usize;
        let Some(h) = Header::decode(&seg[at..]) else {
            return;
        };
        assert_eq!(&h.encode()[..], &seg[at..at + HEADER_LEN], "decode∘encode");
        if !h.is_dead() {
            assert!(
                h.is_consistent(),
                "a live decoded header is consistent: {h:?}"
            );
        }
        if !h.is_consistent() || off.checked_add(h.total_len).is_none_or(|e| e > hwm) {
            return;
        }
        let rec = &seg[at..at + h.total_len as usize];
        off += h.total_len;
        if h.is_dead() {
            continue;
        }
        let body_end = h.body_offset() + h.body_len as usize;
        assert!(body_end <= rec.len(), "parts lie within the record");
        let _ = &rec[h.key_range()];
        if record::checksum(&[&rec[HEADER_LEN..body_end]]) != h.checksum {
            // Recovery counts it corrupt; decode the metadata anyway.
        }
        if let Some(m) = Meta::decode(&rec[h.meta_range()]) {
            let _ = (m.status, m.times.is_fresh(0), m.etag.len(), m.head.len());
        }
    }
}

/// What `h2c::upgrade_frame` writes, read back: HPACK literals without
/// indexing, new name, no Huffman (RFC 7541 §6.2.2, §5.1). Panics on anything
/// else, which would be a bug in the writer.
fn hpack_literals(mut b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn int(b: &mut &[u8]) -> usize {
        assert_eq!(b[0] & 0x80, 0, "no Huffman coding");
        let first = usize::from(b[0] & 0x7f);
        *b = &b[1..];
        if first < 127 {
            return first;
        }
        let (mut n, mut shift) = (127usize, 0);
        loop {
            let c = b[0];
            *b = &b[1..];
            n += usize::from(c & 0x7f) << shift;
            shift += 7;
            if c & 0x80 == 0 {
                return n;
            }
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        assert_eq!(b[0], 0, "a literal without indexing, new name");
        b = &b[1..];
        let n = int(&mut b);
        let name = b[..n].to_vec();
        b = &b[n..];
        let v = int(&mut b);
        out.push((name, b[..v].to_vec()));
        b = &b[v..];
    }
    out
}

/// base64url without padding (RFC 4648 §5), by bit accumulation: a second
/// decoder to check `h2c`'s against.
fn base64url(v: &[u8]) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let v = v.strip_suffix(b"=").unwrap_or(v);
    let v = v.strip_suffix(b"=").unwrap_or(v);
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for &c in v {
        let d = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | d;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// h2c by Upgrade and the HTTP/2 bits parsed from the network beside it: an
/// HTTP/1 head (which may ask to upgrade), then, after a blank line, bytes taken
/// as the client's first frame and as `Link` values (one per line).
pub fn h2c(data: &[u8]) {
    use crate::downstream::h2c::{first_frame, upgrade_frame, FirstFrame};
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 4);
    let (head, rest) = data.split_at(split);
    if let Ok(Some(h)) = request::parse(&mut BytesMut::from(head), &Limits::default()) {
        if let Some(up) = upgrade_frame(&h) {
            let f = &up.stream1;
            assert_eq!(
                f.len() - 9,
                u32::from_be_bytes([0, f[0], f[1], f[2]]) as usize
            );
            assert!(f.len() - 9 <= 16_384, "one frame");
            assert_eq!(
                &f[3..9],
                &[1, 0x5, 0, 0, 0, 1],
                "HEADERS, END_STREAM|END_HEADERS, stream 1"
            );
            // The replayed request, read back by an independent decoder, is the
            // HTTP/1 request: its pseudo-headers, then its other fields in order,
            // lower-cased, less the connection-specific ones.
            let fields = hpack_literals(&f[9..]);
            let host = h.host().expect("upgraded with a Host");
            let pseudo: [(&[u8], &[u8]); 4] = [
                (b":method", h.method()),
                (b":scheme", b"http"),
                (b":authority", host),
                (b":path", h.path()),
            ];
            for (i, (n, v)) in pseudo.iter().enumerate() {
                assert_eq!((&fields[i].0[..], &fields[i].1[..]), (*n, *v));
            }
            // The rest is exactly the request's other fields, in order,
            // lower-cased, less those h2 forbids or that describe HTTP/1's hop
            // (and any the Connection header names).
            let named = |n: &[u8]| {
                h.headers()
                    .filter(|(c, _)| c.eq_ignore_ascii_case(b"connection"))
                    .any(|(_, v)| crate::http1::headers::connection_names(v, n))
            };
            let want: Vec<(Vec<u8>, Vec<u8>)> = h
                .headers()
                .filter(|(n, _)| !crate::downstream::h2c::dropped(n) && !named(n))
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
                .collect();
            assert_eq!(&fields[4..], &want[..], "the replayed fields");
            // And the settings are the header's, by a second base64url decoder.
            let value = h
                .headers()
                .find(|(n, _)| n.eq_ignore_ascii_case(b"http2-settings"))
                .map(|(_, v)| v)
                .expect("upgraded with HTTP2-Settings");
            assert_eq!(Some(&up.settings[..]), base64url(value).as_deref());
            assert!(up.settings.len() % 6 == 0);
            if let FirstFrame::Settings(n) = first_frame(rest) {
                let merged = up.merged_settings(&rest[..n]);
                assert!(
                    matches!(first_frame(&merged), FirstFrame::Settings(m) if m == merged.len())
                );
            }
        }
    }
    if let FirstFrame::Settings(n) = first_frame(rest) {
        assert!(n >= 9 && n <= rest.len());
    }
    let links = crate::downstream::h2::preload_links(rest.split(|&b| b == b'\n'));
    if let Some(l) = links {
        assert!(!l.is_empty());
    }
}

/// ttl.txt, then what its rules decide at a few clock times; the STON
/// priority over the input's first line as Cache-Control.
pub fn ttl_txt(data: &[u8]) {
    use policy::ttl::{self, ClassTtl, TtlFacts, TtlPolicy};
    let text = String::from_utf8_lossy(data);
    let headers = policy::NoHeaders;
    if let Ok(p) = ttl::parse(&text) {
        for r in &p.rules {
            assert!(r.line >= 1);
            for now in [0u64, 1_700_000_000, 1_700_086_399, u64::MAX / 4] {
                let t = r.ttl_at(now);
                assert!(t <= r.ttl, "a clock time only shortens");
                if let Some((m, h)) = r.clock {
                    if let Some(at) = ttl::next_clock(now, m, h) {
                        assert!(at > now && at - now <= 2 * 86_400 + 60);
                    }
                }
            }
        }
        for url in [&b"/a.html"[..], b"/", data] {
            let ctx = MatchCtx {
                client_ip: "127.0.0.1".parse().expect("a literal address"),
                method: b"GET",
                url,
                headers: &headers,
                mime: None,
                geo: None,
            };
            for status in [200, 304, 404, 503] {
                let got = ttl::custom_ttl(&p.rules, &ctx, status, 1_700_000_000);
                let first = p.rules.iter().find(|r| r.matches(&ctx, status));
                assert_eq!(got, first.map(|r| r.ttl_at(1_700_000_000)));
            }
        }
    }
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let cc = CacheControl::parse(std::iter::once(line));
    let p = TtlPolicy::default();
    for status in [100u16, 200, 206, 301, 304, 404, 599, 600] {
        let d = ttl::decide(
            &p,
            &TtlFacts {
                status,
                cc: &cc,
                expires_in: Some(60),
                now_s: 0,
            },
            Some(7),
        );
        if let ttl::Decision::Store { secs, .. } = d {
            assert!((200..600).contains(&status) && status != 206 && status != 304);
            assert!(secs <= 1 << 31 || secs == p.res[0].secs);
        }
    }
    let c = ClassTtl {
        secs: u64::from(data.first().copied().unwrap_or(0)),
        ratio: u32::from(data.get(1).copied().unwrap_or(0)) * 40,
        max: u64::from(data.get(2).copied().unwrap_or(0)),
    };
    let now = u64::from_le_bytes(
        data.get(3..11)
            .map_or([0; 8], |b| b.try_into().unwrap_or([0; 8])),
    );
    let grown = c.grown_ms(now);
    assert!(grown >= now.min(c.max.saturating_mul(1000)) || grown == now);
}

/// What reaches the manager: purge targets, query parameters, access-list
/// entries.
pub fn manage(data: &[u8]) {
    use crate::config::manager::{Allow, Role};
    use crate::manage::target;
    let text = String::from_utf8_lossy(data);
    if let Ok(ts) = target::parse(&text) {
        assert!(ts.len() <= target::MAX_TARGETS);
        for t in &ts {
            assert!(t.path.starts_with('/'), "{t:?}");
            assert!(!t.host.is_empty());
            assert!(t.path.starts_with(t.literal_prefix()));
        }
    }
    for name in ["url", "sec", ""] {
        if let Some(v) = target::raw_param(&text, name) {
            assert!(text.contains(v));
        }
        let _ = target::query_param(&text, name);
    }
    let _ = target::percent_decode(&text);
    for line in text.lines() {
        if let Ok(a) = Allow::parse(line, Role::User) {
            // A single address is inside its own entry.
            if let Ok(ip) = line.trim().parse::<IpAddr>() {
                assert!(a.contains(ip));
            }
        }
    }
}

/// An origin's response head, read as the cache reads it: its freshness
/// facts (targeted fields included), its Age, and stored keys built from it.
pub fn origin_head(data: &[u8]) {
    use crate::cache::key::{self, CacheKey, Variant};
    let mut buf = BytesMut::from(data);
    if let Ok(Some(h)) = response::parse(&mut buf, 64 << 10) {
        let f = crate::proxy::cached::plan_facts(&h);
        assert!(f.cc.max_age.is_none_or(|a| a <= 1 << 31));
        let age = crate::proxy::cached::plan_age(&h);
        assert!(age <= 1 << 31);
    }
    let names: Vec<Box<[u8]>> = data
        .split(|&b| b == b',')
        .take(8)
        .map(|n| n.to_ascii_lowercase().into_boxed_slice())
        .collect();
    let lines: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|&b| b == b':')?;
            Some((&l[..i], &l[i + 1..]))
        })
        .collect();
    let sig = key::vary_signature(&names, || Box::new(lines.iter().copied()));
    let k = CacheKey::new("h", data, Variant::Gzip).varied(&names, sig);
    // A varied key always gives its base back.
    if !data.contains(&0) {
        let (base, _) = key::vary_of(k.stored()).expect("a varied key");
        assert_eq!(base, k.base());
    }
    let _ = key::vary_of(data);
    let _ = key::primary_of(data);
}

/// `querystring.txt` and the key URL it gives: the key's query holds only
/// parameters the request had, a `+` list only the listed names, and the key
/// URL is a fixed point (a fill sends the origin the key's URL, which must key
/// to itself).
pub fn querystring_txt(data: &[u8]) {
    use crate::policy::pattern::Case;
    use crate::policy::querystring::{self, QueryAction};
    let text = String::from_utf8_lossy(data);
    let (rules_text, url) = text.split_once("\n\n").unwrap_or((&text, "/a?x=1&y=2"));
    for (case, sensitive) in [(Case::Sensitive, true), (Case::Insensitive, false)] {
        let Ok(p) = querystring::parse(rules_text, case) else {
            continue;
        };
        for apply in [true, false] {
            let o = crate::config::Options {
                case_sensitive: sensitive,
                apply_query: apply,
                ..Default::default()
            };
            for target in [url.as_bytes(), b"/a.png?w=1&utm=2", data] {
                let k = crate::proxy::cached::key_url(&o, &p.rules, target);
                let again = crate::proxy::cached::key_url(&o, &p.rules, &k);
                assert_eq!(k, again, "the key URL keys to itself");
                let lowered = target.to_ascii_lowercase();
                let t: &[u8] = if sensitive { target } else { &lowered };
                let (path, query) = match memchr::memchr(b'?', t) {
                    Some(i) => (&t[..i], &t[i + 1..]),
                    None => (t, &b""[..]),
                };
                assert!(k.starts_with(path), "the path is kept");
                let kq = k.get(path.len() + 1..).unwrap_or_default();
                let params: Vec<&[u8]> = query.split(|&b| b == b'&').collect();
                for kp in kq.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                    assert!(params.contains(&kp), "a parameter the request had");
                }
                let rule = p.rules.iter().find(|r| r.url.matches(path));
                if let Some(QueryAction::Keep(names)) = rule.map(|r| &r.action) {
                    for kp in kq.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                        let n = kp.split(|&b| b == b'=').next().unwrap_or_default();
                        assert!(names.iter().any(|x| &x[..] == n), "a listed name");
                    }
                }
            }
        }
    }
}

/// `bypass.txt`: the verdict is the first matching line's, and every line
/// is numbered.
pub fn bypass_txt(data: &[u8]) {
    use crate::policy::bypass;
    let text = String::from_utf8_lossy(data);
    let Ok(p) = bypass::parse(&text) else {
        return;
    };
    let headers = policy::NoHeaders;
    for url in [&b"/a.html"[..], b"/", data] {
        let ctx = MatchCtx {
            client_ip: "10.1.2.3".parse().expect("a literal address"),
            method: b"GET",
            url,
            headers: &headers,
            mime: None,
            geo: None,
        };
        let got = bypass::decide(&p.rules, &ctx);
        let first = p.rules.iter().find(|r| r.cond.matches(&ctx));
        assert_eq!(got, first.map(|r| r.bypass));
        assert!(p.rules.iter().all(|r| r.line >= 1));
    }
}

/// A DNS answer from the network: bounded results, never a panic; and a
/// query for any name either refused or well formed.
pub fn dns_answer(data: &[u8]) {
    let id = data
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if let Ok((addrs, ttl)) = crate::dns::parse_answer(data, id) {
        assert!(!addrs.is_empty() && addrs.len() <= crate::dns::MAX_ADDRS);
        assert!(ttl <= i32::MAX as u32);
    }
    let name = String::from_utf8_lossy(data);
    if let Ok(q) = crate::dns::query(id, &name, crate::dns::TYPE_A) {
        assert!(q.len() <= 12 + 255 + 4);
        assert_eq!(
            crate::dns::parse_answer(&q, id).err(),
            Some(crate::dns::DnsError::Malformed("not a response"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::TARGETS;
    use std::path::Path;

    /// Every corpus file of every target through its entry point.
    #[test]
    fn corpora_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()));
            let mut n = 0;
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if !path.is_file() {
                    continue;
                }
                let data = std::fs::read(&path).expect("a corpus file");
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(run.is_ok(), "{name}: {} panicked", path.display());
                n += 1;
            }
            assert!(n > 0, "corpus {} is empty", dir.display());
        }
    }

    /// Found by the `record` target: a stored `date_s` past `u64::MAX / 1000`
    /// overflowed `date_s * 1000` in `Times::current_age_ms` (a panic with
    /// overflow checks, a wrapped age without).
    #[test]
    fn huge_stored_date_does_not_overflow() {
        let t = crate::cache::freshness::Times {
            date_s: u64::MAX,
            response_time_ms: 5,
            ..Default::default()
        };
        assert_eq!(t.current_age_ms(10), 10);
        assert!(!t.is_fresh(10));
    }

    /// Found by the `cache_control` target: `with_max_age` appended `, max-age=N`
    /// after a value that ends inside an unclosed quoted string, so the new
    /// max-age was part of that string to every quote-aware parser. The
    /// unclosed directive is now dropped.
    #[test]
    fn with_max_age_after_an_unclosed_quote() {
        use crate::policy::expires::{cache_control_max_age, with_max_age};
        let out = with_max_age(Some(b"public, no-cache=\"x"), 42);
        assert_eq!(out, b"public, max-age=42");
        assert_eq!(cache_control_max_age(&out), Some(42));
        let out = with_max_age(Some(b"private, x=\"a\\\"b, max-age=1"), 7);
        assert_eq!(cache_control_max_age(&out), Some(7));
    }

    /// Empty and tiny inputs, for every target.
    #[test]
    fn trivial_inputs() {
        for (_, target) in TARGETS {
            for data in [&b""[..], b"\0", b"\n", b"\r\n\r\n", &[0xff; 70]] {
                target(data);
            }
        }
    }
}
