//! Storability planning as a pure function: may an origin response be stored,
//! and if so with which head, validators and time facts. The generated ETag
//! (ETAG-1) is made here, once.

use crate::cache::freshness::{self, CacheControl, RequestFacts, ResponseFacts, Storable, Times};
use crate::cache::meta::{kept_headers, Meta};
use crate::config::{Options, TtlMode};
use crate::http1::ResponseHead;
use crate::policy::ttl;
use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn to_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a fill stores: the head facts and meta of the object.
#[derive(Debug, Clone)]
pub struct FillPlan {
    pub status: u16,
    pub headers: Bytes,
    pub etag: Vec<u8>,
    pub last_modified_s: u64,
    pub times: Times,
    pub length: Option<u64>,
    pub has_body: bool,
}

impl FillPlan {
    pub fn meta(&self) -> Meta<'_> {
        Meta {
            status: self.status,
            times: self.times,
            last_modified_s: self.last_modified_s,
            etag: &self.etag,
            head: &self.headers,
        }
    }

    /// Once an unknown length is known: an origin without an ETag gets a
    /// generated one, exactly as a known-length object would have.
    pub fn with_length(&self, size: u64) -> FillPlan {
        let mut p = self.clone();
        p.length = Some(size);
        if p.etag.is_empty() {
            add_generated_etag(&mut p, size);
        }
        p
    }
}

/// The facts a plan is made from.
pub struct PlanInput<'a> {
    pub reply: &'a ResponseHead,
    /// The body length when known up front.
    pub length: Option<u64>,
    pub has_body: bool,
    /// The body ends when the origin closes: a cut-short body cannot be told
    /// from a complete one, so it is never stored.
    pub until_close: bool,
    /// The client's `Cache-Control` and whether the response may be personal.
    pub request: RequestFacts,
    pub options: &'a Options,
    pub max_object: u64,
    pub request_time_ms: u64,
    pub response_time_ms: u64,
    /// The TTL of the first ttl.txt rule that matches (STON mode), if any.
    pub custom_ttl: Option<u64>,
}

pub fn response_facts(h: &ResponseHead) -> ResponseFacts {
    let named = |n: &'static str| {
        h.headers()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
            .map(|(_, v)| v)
    };
    // RFC 9213: the first targeted field with a valid, non-empty value
    // decides, and Cache-Control and Expires are then ignored. Cairn's own
    // field comes first, then the CDN's, then Surrogate-Control (its
    // `;target` items only when the target is cairn).
    let targeted = ["cairn-cache-control", "cdn-cache-control"]
        .iter()
        .find_map(|n| {
            let v: Vec<&[u8]> = named(n).collect();
            // A value without one directive (`,`, blanks) is no value.
            let some = v.iter().any(|l| {
                l.split(|&b| b == b',')
                    .any(|m| !crate::http1::headers::trim(m).is_empty())
            });
            some.then(|| CacheControl::parse(v.into_iter()))
        })
        .or_else(|| surrogate_control(named("surrogate-control")));
    ResponseFacts {
        status: h.status,
        cc: targeted.unwrap_or_else(|| CacheControl::parse(named("cache-control"))),
        pragma_no_cache: named("pragma")
            .any(|v| crate::http1::headers::connection_names(v, b"no-cache")),
        expires_s: h
            .header("expires")
            .filter(|_| targeted.is_none())
            .map(|v| crate::httpdate::parse(v).map(to_secs).unwrap_or(0)),
        date_s: h
            .header("date")
            .and_then(crate::httpdate::parse)
            .map(to_secs),
        last_modified_s: h
            .header("last-modified")
            .and_then(crate::httpdate::parse)
            .map(to_secs),
        has_set_cookie: named("set-cookie").next().is_some()
            || named("set-cookie2").next().is_some(),
    }
}

/// `Surrogate-Control` (Edge Architecture 1.0): its directives, less those
/// targeted (`max-age=60;other`) at another surrogate; `None` when nothing is left.
fn surrogate_control<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<CacheControl> {
    let mut kept = Vec::new();
    for v in values {
        for item in v.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let directive = crate::http1::headers::trim(parts.next().unwrap_or(b""));
            let ours = parts.all(|t| crate::http1::headers::trim(t).eq_ignore_ascii_case(b"cairn"));
            if !directive.is_empty() && ours {
                if !kept.is_empty() {
                    kept.extend_from_slice(b", ");
                }
                kept.extend_from_slice(directive);
            }
        }
    }
    (!kept.is_empty()).then(|| CacheControl::parse(std::iter::once(&kept[..])))
}

/// An Age value past it means "very old" (RFC 9111 §1.2.2's cap).
const AGE_INFINITY: u64 = 1 << 31;

/// The origin's `Age` (RFC 9111 §5.1): one line of digits. Anything else (a
/// second value or line, a sign, a fraction, a parameter, letters) is not a
/// valid age: the response counts as stale rather than fresh. §5.1 says a
/// cache SHOULD take a list's first member and ignore an invalid value; both
/// would turn `Age: 0, 7200` or `Age: -7200` into a fresh response, so cairn
/// deliberately fails closed (a revalidation) instead. Absent: 0.
pub fn age_of(h: &ResponseHead) -> u64 {
    let mut lines = h
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"age"))
        .map(|(_, v)| crate::http1::headers::trim(v));
    let Some(v) = lines.next() else {
        return 0;
    };
    if lines.next().is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return AGE_INFINITY;
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(AGE_INFINITY)
        .min(AGE_INFINITY)
}

/// `"<hex last-modified>-<hex size>"` (ETAG-1 Decision: STON's shape).
pub fn generated_etag(last_modified_s: u64, size: u64) -> Vec<u8> {
    format!("\"{last_modified_s:x}-{size:x}\"").into_bytes()
}

fn add_generated_etag(p: &mut FillPlan, size: u64) {
    // Stored with the object so it is stable across restarts; marked as ours so it
    // is never sent to the origin.
    let base = if p.last_modified_s != 0 {
        p.last_modified_s
    } else {
        p.times.response_time_ms / 1000
    };
    p.etag = generated_etag(base, size);
    let mut h = Vec::with_capacity(p.headers.len() + p.etag.len() + 8);
    h.extend_from_slice(&p.headers);
    h.extend_from_slice(b"ETag: ");
    h.extend_from_slice(&p.etag);
    h.extend_from_slice(b"\r\n");
    p.headers = Bytes::from(h);
    p.times.flags |= freshness::FLAG_GENERATED_ETAG;
}

/// The header lines of `headers` without those named in `drop` (any case).
fn without(headers: &[u8], drop: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 64);
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        if !drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Stored headers that say the object varies on Accept-Encoding (GZ-3): with
/// compression on, both variants carry it.
pub fn with_vary(headers: &Bytes) -> Bytes {
    let has = headers.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => return false,
        };
        name.eq_ignore_ascii_case(b"vary")
            && crate::http1::headers::tokens(value)
                .any(|t| t.eq_ignore_ascii_case(b"accept-encoding") || t == b"*")
    });
    if has {
        return headers.clone();
    }
    let mut out = without(headers, &[b"vary"]);
    out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
    Bytes::from(out)
}

/// The ETag of a gzip variant cairn made from an object whose ETag is `etag`:
/// another representation needs another tag (RFC 9110 §8.8.3), so `-gzip` goes
/// inside the quotes; and the tag is weak, as nginx makes it, since another
/// compression of the same object (a new level, an eviction and refill) may
/// give other bytes: `"v1"` and `W/"v1"` → `W/"v1-gzip"`. So If-Range never
/// matches it and a Range is never spliced from two compressions. `None` for a
/// value that is not a quoted entity tag.
pub fn gzip_etag(etag: &[u8]) -> Option<Vec<u8>> {
    let inner = etag.strip_prefix(b"W/").unwrap_or(etag);
    if inner.len() < 2 || inner[0] != b'"' || inner[inner.len() - 1] != b'"' {
        return None;
    }
    let mut out = b"W/".to_vec();
    out.extend_from_slice(&inner[..inner.len() - 1]);
    out.extend_from_slice(b"-gzip\"");
    Some(out)
}

/// The origin's tag behind a gzip variant's (`W/"v1-gzip"` → `W/"v1"`), for
/// revalidation: If-None-Match compares weakly, so the weak form matches the
/// origin's strong or weak tag.
pub fn origin_etag_of_gzip(etag: &[u8]) -> Option<Vec<u8>> {
    let inner = etag.strip_prefix(b"W/")?;
    let tag = inner.strip_suffix(b"-gzip\"")?;
    (tag.first() == Some(&b'"')).then(|| [&b"W/"[..], tag, b"\""].concat())
}

/// Fields that describe the identity bytes and would be false of a gzip
/// variant (its encoding, length, digests), and the Vary it is given anew.
const IDENTITY_FIELDS: [&[u8]; 8] = [
    b"etag",
    b"content-length",
    b"content-encoding",
    b"content-md5",
    b"content-digest",
    b"repr-digest",
    b"digest",
    b"vary",
];

/// Is `name` one of the fields a gzip variant cairn made keeps as its own
/// (never replaced by a 304's)?
pub fn gzip_variant_field(name: &[u8]) -> bool {
    IDENTITY_FIELDS.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// The plan of the gzip variant cairn stores for an identity response planned
/// as `p`, whose body compressed to `gz_len` bytes: `Content-Encoding: gzip`,
/// `Vary: Accept-Encoding`, its own length and a weak ETag derived from the
/// origin's (or generated from the compressed size without one).
pub fn gzip_variant(p: &FillPlan, gz_len: u64) -> FillPlan {
    let mut v = p.clone();
    let own = p.times.flags & freshness::FLAG_GENERATED_ETAG == 0;
    let mut headers = without(&p.headers, &IDENTITY_FIELDS);
    headers.extend_from_slice(b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n");
    v.headers = Bytes::from(headers);
    v.length = Some(gz_len);
    v.etag = Vec::new();
    v.times.flags &= !freshness::FLAG_GENERATED_ETAG;
    v.times.flags |= freshness::FLAG_COMPRESSED;
    match gzip_etag(&p.etag).filter(|_| own) {
        Some(tag) => {
            let mut h = v.headers.to_vec();
            h.extend_from_slice(b"ETag: ");
            h.extend_from_slice(&tag);
            h.extend_from_slice(b"\r\n");
            v.headers = Bytes::from(h);
            v.etag = tag;
        }
        None => add_generated_etag(&mut v, gz_len),
    }
    v
}

/// STON's TTL (TTL-1..3): the lifetime and flags, the deciding class kept in
/// the flags for the growth on each 304.
fn ston_lifetime(i: &PlanInput<'_>, facts: &ResponseFacts) -> Result<(u64, u16), &'static str> {
    let p = &i.options.ttl;
    if i.request.cc.no_store {
        return Err("the request said no-store");
    }
    let expires_in = facts
        .expires_s
        .map(|e| e.saturating_sub(facts.date_s.unwrap_or(i.response_time_ms / 1000)));
    let (secs, class, expired) = match ttl::decide(
        p,
        &ttl::TtlFacts {
            status: facts.status,
            cc: &facts.cc,
            expires_in,
            now_s: i.response_time_ms / 1000,
        },
        i.custom_ttl,
    ) {
        ttl::Decision::Store {
            secs,
            class,
            expired,
        } => (secs, class, expired),
        ttl::Decision::Pass(why) => return Err(why),
    };
    let mut lifetime_ms = secs.saturating_mul(1000);
    // TTL-3: counted from the request, the time the origin took is spent.
    if p.base_request {
        lifetime_ms =
            lifetime_ms.saturating_sub(i.response_time_ms.saturating_sub(i.request_time_ms));
    }
    let mut flags = (class as u16) << freshness::CLASS_SHIFT;
    if expired {
        flags |= freshness::FLAG_NO_CACHE;
    }
    Ok((lifetime_ms, flags))
}

/// Decides whether a response may be stored and, if so, what to store.
pub fn plan(i: &PlanInput<'_>) -> Result<FillPlan, &'static str> {
    let facts = response_facts(i.reply);
    let ston = i.options.ttl_mode == TtlMode::Ston;
    let (lifetime_ms, flags) = if ston {
        ston_lifetime(i, &facts)?
    } else {
        if facts.has_set_cookie {
            return Err("Set-Cookie");
        }
        match freshness::storable(&facts, &i.request, i.response_time_ms) {
            Storable::Yes { lifetime_ms, flags } => (lifetime_ms, flags),
            Storable::No(why) => return Err(why),
        }
    };
    // Vary (RFC 9111 §4.1) is the fill's to check: the key must hold the
    // selecting fields (fill::fill_from).
    if i.until_close {
        return Err("close-delimited body (completeness cannot be checked)");
    }
    if i.length.is_some_and(|n| n > i.max_object) {
        return Err("larger than MaxObjectSize");
    }
    let mut headers = kept_headers(i.reply, i.options.headers);
    if ston {
        // KEY-5: STON stores the object and never its cookies.
        headers = without(&headers, &[b"set-cookie", b"set-cookie2"]);
        // TTL-2: NoCache/NoStore `MaxAge` is what clients are told.
        let class =
            ttl::Class::from_bits((flags & freshness::CLASS_MASK) >> freshness::CLASS_SHIFT);
        if let Some(m) = i.options.ttl.client_max_age(class) {
            headers = without(&headers, &[b"cache-control"]);
            headers.extend_from_slice(format!("Cache-Control: max-age={m}\r\n").as_bytes());
        }
    }
    if facts.date_s.is_none() {
        crate::proxy::response::write_date_line(&mut headers);
    }
    let last_modified_s = i
        .reply
        .header("last-modified")
        .and_then(crate::httpdate::parse)
        .map(to_secs)
        .unwrap_or(0);
    let etag = i
        .reply
        .header("etag")
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let mut p = FillPlan {
        status: i.reply.status,
        headers: Bytes::from(headers),
        etag,
        last_modified_s,
        times: Times {
            request_time_ms: i.request_time_ms,
            response_time_ms: i.response_time_ms,
            date_s: facts.date_s.unwrap_or(0),
            age_s: age_of(i.reply),
            lifetime_ms,
            flags,
        },
        length: i.length,
        has_body: i.has_body,
    };
    if ston {
        // STON's TTL counts from when the response arrived (TTL-3), whatever
        // age the origin gave it (which Age still reports, AGE-1).
        p.times.lifetime_ms = p.times.lifetime_ms.saturating_add(p.times.initial_age_ms());
    }
    if let (true, Some(n)) = (p.etag.is_empty(), i.length) {
        add_generated_etag(&mut p, n);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::response;
    use bytes::BytesMut;

    const NOW: u64 = 1_700_000_000_000;

    fn head(raw: &str) -> ResponseHead {
        let raw = format!("{raw}\r\n");
        response::parse(&mut BytesMut::from(raw.as_bytes()), 65536)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn targeted_fields_need_a_directive_to_count() {
        // (targeted field line, the max-age that decides)
        let table = [
            ("CDN-Cache-Control: max-age=5", Some(5)),
            (
                "Cairn-Cache-Control: max-age=7\r\nCDN-Cache-Control: max-age=5",
                Some(7),
            ),
            // No directive: not a value, Cache-Control decides (RFC 9213 §2.1).
            ("CDN-Cache-Control: ,", Some(60)),
            ("CDN-Cache-Control:  , ,", Some(60)),
            (
                "Cairn-Cache-Control: ,\r\nCDN-Cache-Control: max-age=5",
                Some(5),
            ),
        ];
        for (field, want) in table {
            let h = head(&format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n{field}\r\nContent-Length: 0\r\n"
            ));
            assert_eq!(response_facts(&h).cc.max_age, want, "{field}");
        }
    }

    fn run(raw: &str, length: Option<u64>, req_cc: &str) -> Result<FillPlan, &'static str> {
        run_in(TtlMode::Rfc9111, raw, length, req_cc)
    }

    fn run_in(
        mode: TtlMode,
        raw: &str,
        length: Option<u64>,
        req_cc: &str,
    ) -> Result<FillPlan, &'static str> {
        let reply = head(raw);
        let o = Options {
            ttl_mode: mode,
            ..Options::default()
        };
        plan(&PlanInput {
            reply: &reply,
            length,
            has_body: true,
            until_close: false,
            request: RequestFacts {
                cc: CacheControl::parse(
                    (!req_cc.is_empty())
                        .then_some(req_cc.as_bytes())
                        .into_iter(),
                ),
                ..Default::default()
            },
            options: &o,
            max_object: 1000,
            request_time_ms: NOW - 5,
            response_time_ms: NOW,
            custom_ttl: None,
        })
    }

    #[test]
    fn a_gzip_variant_has_its_own_encoding_length_etag_and_vary() {
        let p = run(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: text/css\r\nContent-Length: 900\r\nETag: \"v1\"\r\nVary: accept-encoding\r\n",
            Some(900),
            "",
        )
        .unwrap();
        let v = gzip_variant(&p, 123);
        let h = String::from_utf8(v.headers.to_vec()).unwrap();
        assert!(h.contains("Content-Type: text/css\r\n"), "{h}");
        assert!(h.contains("Content-Encoding: gzip\r\n"), "{h}");
        assert_eq!(
            h.matches("Vary:").count() + h.matches("vary:").count(),
            1,
            "{h}"
        );
        assert!(
            h.contains("ETag: W/\"v1-gzip\"\r\n") && !h.contains("\"v1\"\r\n"),
            "{h}"
        );
        assert!(!h.to_ascii_lowercase().contains("content-length"), "{h}");
        assert_eq!((v.length, &v.etag[..]), (Some(123), &b"W/\"v1-gzip\""[..]));
        // Derived from the origin's: revalidated with it, so not "generated".
        assert_eq!(v.times.flags & freshness::FLAG_GENERATED_ETAG, 0);
        assert_ne!(v.times.flags & freshness::FLAG_COMPRESSED, 0);
        assert_eq!(
            origin_etag_of_gzip(&v.etag).as_deref(),
            Some(&b"W/\"v1\""[..])
        );
        // Without an origin ETag: one generated from the compressed size.
        let bare = run(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n",
            Some(900),
            "",
        )
        .unwrap();
        let g = gzip_variant(&bare, 123);
        assert!(
            g.etag.ends_with(b"-7b\""),
            "{:?}",
            String::from_utf8_lossy(&g.etag)
        );
        assert_eq!(
            String::from_utf8_lossy(&g.headers).matches("ETag").count(),
            1
        );
    }

    #[test]
    fn gzip_etags_and_vary_lines() {
        for (tag, want) in [
            (&b"\"a\""[..], Some(&b"W/\"a-gzip\""[..])),
            (b"W/\"a\"", Some(b"W/\"a-gzip\"")),
            (b"\"\"", Some(b"W/\"-gzip\"")),
            (b"a", None),
            (b"\"", None),
            (b"W/a", None),
        ] {
            assert_eq!(
                gzip_etag(tag).as_deref(),
                want,
                "{:?}",
                String::from_utf8_lossy(tag)
            );
        }
        let h = Bytes::from_static(b"Vary: Accept-Encoding\r\nX: 1\r\n");
        assert_eq!(with_vary(&h), h);
        let h = Bytes::from_static(b"X: 1\r\n");
        assert_eq!(&with_vary(&h)[..], b"X: 1\r\nVary: Accept-Encoding\r\n");
    }

    #[test]
    fn age_values_parse_as_rfc_9111_says() {
        // (Age lines, age in seconds)
        let table: &[(&[&str], u64)] = &[
            (&[], 0),
            (&["10"], 10),
            (&[" 7200 "], 7200),
            (&["99999999999999999999"], AGE_INFINITY),
            (&["abc"], AGE_INFINITY),
            (&["-10"], AGE_INFINITY),
            (&["10.5"], AGE_INFINITY),
            (&["10a"], AGE_INFINITY),
            (&["3600, 3600"], AGE_INFINITY),
            (&["0", "0"], AGE_INFINITY),
            (&["10;foo=1"], AGE_INFINITY),
            (&[""], AGE_INFINITY),
        ];
        for (lines, want) in table {
            let mut raw = String::from("HTTP/1.1 200 OK\r\n");
            for l in *lines {
                raw.push_str(&format!("Age: {l}\r\n"));
            }
            assert_eq!(age_of(&head(&raw)), *want, "{lines:?}");
        }
    }

    #[test]
    fn a_close_delimited_body_is_never_stored() {
        let reply = head("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n");
        let o = Options::default();
        let input = PlanInput {
            reply: &reply,
            length: None,
            has_body: true,
            until_close: true,
            request: RequestFacts::default(),
            options: &o,
            max_object: 1000,
            request_time_ms: NOW,
            response_time_ms: NOW,
            custom_ttl: None,
        };
        assert!(plan(&input).is_err());
    }

    #[test]
    fn storability_table() {
        // (response head, known length, client Cache-Control, stored?)
        let table = [
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n",
                Some(10),
                "",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n",
                Some(10),
                "",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: private\r\n",
                Some(10),
                "",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n",
                Some(10),
                "no-store",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nSet-Cookie: a=1\r\n",
                Some(10),
                "",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: Accept-Encoding\r\n",
                Some(10),
                "",
                true,
            ),
            // Vary is checked against the key by the fill, not here.
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: Accept-Encoding, Cookie\r\n",
                Some(10),
                "",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n",
                Some(1001),
                "",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n",
                None,
                "",
                true,
            ),
        ];
        for (raw, len, cc, want) in table {
            assert_eq!(run(raw, len, cc).is_ok(), want, "{raw:?} {len:?} {cc:?}");
        }
    }

    #[test]
    fn ston_mode_stores_what_its_ttl_policy_says_and_strips_cookies() {
        let ston = |raw: &str| run_in(TtlMode::Ston, raw, Some(10), "");
        // (head, lifetime in seconds, or not stored)
        let table = [
            ("HTTP/1.1 200 OK\r\n", Some(1800)),
            ("HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n", Some(5)),
            (
                "HTTP/1.1 200 OK\r\nCache-Control: private, max-age=99\r\n",
                Some(5),
            ),
            ("HTTP/1.1 200 OK\r\nCache-Control: max-age=99\r\n", Some(99)),
            ("HTTP/1.1 302 Found\r\n", Some(300)),
            ("HTTP/1.1 500 Oops\r\n", Some(30)),
            ("HTTP/1.1 206 Partial\r\n", None),
        ];
        for (raw, want) in table {
            let got = ston(raw).ok().map(|p| p.times.lifetime_ms / 1000);
            assert_eq!(got, want, "{raw:?}");
        }
        let p = ston(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie2: b=2\r\nContent-Type: text/x\r\n",
        )
        .unwrap();
        let h = String::from_utf8_lossy(&p.headers).to_ascii_lowercase();
        assert!(
            !h.contains("cookie") && h.contains("content-type: text/x"),
            "{h}"
        );
        // The class is kept for the growth on a 304.
        assert_eq!(
            (p.times.flags & freshness::CLASS_MASK) >> freshness::CLASS_SHIFT,
            ttl::Class::Res2xx as u16
        );
        assert!(run_in(TtlMode::Ston, "HTTP/1.1 200 OK\r\n", Some(10), "no-store").is_err());
    }

    #[test]
    fn the_generated_etag_is_made_once_and_the_same_for_known_and_late_lengths() {
        let lm = "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
        let raw = format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n{lm}");
        let known = run(&raw, Some(255), "").unwrap();
        assert_eq!(known.etag, b"\"2ebc98a1-ff\"");
        assert_ne!(known.times.flags & freshness::FLAG_GENERATED_ETAG, 0);
        let stored = String::from_utf8(known.headers.to_vec()).unwrap();
        assert_eq!(stored.matches("ETag: \"2ebc98a1-ff\"\r\n").count(), 1);
        let late = run(&raw, None, "").unwrap();
        assert!(late.etag.is_empty(), "no length yet: no ETag yet");
        let late = late.with_length(255);
        assert_eq!(
            (late.etag.clone(), late.headers.clone()),
            (known.etag, known.headers)
        );
        // The origin's own ETag is kept as it is and never replaced.
        let own = run(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: \"o\"\r\n",
            Some(3),
            "",
        )
        .unwrap();
        assert_eq!(own.etag, b"\"o\"");
        assert_eq!(own.times.flags & freshness::FLAG_GENERATED_ETAG, 0);
        assert_eq!(own.with_length(3).etag, b"\"o\"");
        // Without Last-Modified the response time stands in.
        let no_lm = run(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n",
            Some(1),
            "",
        )
        .unwrap();
        assert_eq!(no_lm.etag, generated_etag(NOW / 1000, 1));
        // A response without Date is stored with one.
        assert!(String::from_utf8_lossy(&no_lm.headers).contains("Date: "));
    }
}
