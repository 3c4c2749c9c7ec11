//! The cache's phases of a request: lookup → (hit | revalidate | coalesced fill),
//! answered with the stored headers. Pure decisions live in `cache::freshness` and
//! `cache::meta`; this module moves bytes between them, the origin and the client.

use super::heads::{self, client_framing, ClientFraming, Extras, OriginOpts};
use super::relay::ClientWriter;
use super::rules::RuleFacts;
use super::{pass, respond, Outcome};
use crate::cache::fill::{Fill, FillEnd, FillHead, Leader, Role};
use crate::cache::freshness::{self, CacheControl, ResponseFacts, Storable, Times};
use crate::cache::meta::{kept_headers, Meta};
use crate::cache::{Cache, CacheResult, Hit};
use crate::config::{FreshnessCheck, Options, Vhost};
use crate::http1::keepalive::Decision;
use crate::http1::range::{self, RangeReply};
use crate::http1::{request::Version, RequestHead, ResponseHead};
use crate::net::Conn;
use crate::origin::exchange::{self, OriginReply, OriginRequest};
use crate::policy::HeaderList;
use crate::shard::Shard;
use bytes::Bytes;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// May this request be answered from (and fill) the cache? GET and HEAD without
/// `Authorization` (RFC 9111 §3.5).
pub fn eligible(req: &RequestHead) -> bool {
    matches!(req.method(), b"GET" | b"HEAD") && req.header("authorization").is_none()
}

/// The cache key: vhost name and path with query. HEAD shares GET's key.
/// With `<AcceptEncoding>ON` (KEY-1) a gzip-capable client and an identity-only
/// client use different objects (the key gets a `\0gzip` suffix).
pub fn key(vhost: &Vhost, req: &RequestHead) -> Vec<u8> {
    let mut k = Vec::with_capacity(vhost.name.len() + req.path().len() + 5);
    k.extend_from_slice(vhost.name.as_bytes());
    k.extend_from_slice(req.path());
    if wants_gzip(vhost, req) {
        k.extend_from_slice(b"\0gzip");
    }
    k
}

/// KEY-1: does this request belong to the gzip variant?
fn wants_gzip(vhost: &Vhost, req: &RequestHead) -> bool {
    vhost.options.accept_encoding && req.header("accept-encoding").is_some_and(accepts_gzip)
}

/// `gzip` (or `x-gzip`, or `*`) listed with a non-zero q-value.
pub fn accepts_gzip(v: &[u8]) -> bool {
    crate::http1::headers::tokens(v).any(|t| {
        let mut parts = t.split(|&b| b == b';');
        let coding = crate::http1::headers::trim(parts.next().unwrap_or(b""));
        let named = [b"gzip".as_slice(), b"x-gzip", b"*"]
            .iter()
            .any(|c| c.eq_ignore_ascii_case(coding));
        let q_zero = parts.any(|p| {
            let p = crate::http1::headers::trim(p);
            p.len() >= 2
                && p[..2].eq_ignore_ascii_case(b"q=")
                && p[2..].iter().all(|&b| b == b'0' || b == b'.')
        });
        named && !q_zero
    })
}

struct Ctx<'a> {
    shard: &'a Rc<Shard>,
    cache: &'a Cache,
    client: &'a Conn,
    vhost: &'a Vhost,
    req: &'a RequestHead,
    peer: SocketAddr,
    key: Vec<u8>,
    rules: Option<&'a RuleFacts<'a>>,
    req_headers: Option<&'a HeaderList<'a>>,
}

impl<'a> Ctx<'a> {
    fn status_header(&self, r: CacheResult) -> Option<&'static str> {
        self.vhost.options.cache_status_header.then(|| r.code())
    }
    fn extras(&self, r: CacheResult) -> Extras<'a> {
        Extras {
            cache_status: self.status_header(r),
            result: r.code(),
            rules: self.rules,
            ..Extras::for_vhost(&self.vhost.options)
        }
    }
    /// The head of a response from stored (or filling) headers, and the writer that
    /// streams its body: framing for this client, keep-alive re-decided for a drain.
    fn start_response(
        &self,
        status: u16,
        headers: &[u8],
        has_body: bool,
        length: Option<u64>,
        ka: Decision,
        result: CacheResult,
    ) -> (ClientWriter<'a>, ClientFraming, Decision) {
        let http10 = self.req.version == Version::Http10;
        let framing = client_framing(has_body && status != 204, length, http10);
        let ka = if framing == ClientFraming::Close || self.shard.draining() {
            Decision::Close
        } else {
            ka
        };
        let head = heads::stored_response(
            status,
            headers,
            framing,
            ka,
            &self.extras(result),
            None,
            b"",
        );
        self.log(status, result);
        (
            ClientWriter::new(self.client, head, framing, self.req.is_head()),
            framing,
            ka,
        )
    }

    fn log(&self, status: u16, r: CacheResult) {
        log::debug!(
            "{} {} {} {} -> {status} {}",
            self.peer,
            self.vhost.name,
            String::from_utf8_lossy(self.req.method()),
            String::from_utf8_lossy(self.req.path()),
            r.code()
        );
    }
}

#[allow(clippy::too_many_arguments)] // the request's phases, passed as they are
pub async fn serve(
    shard: &Rc<Shard>,
    cache: &Cache,
    client: &Conn,
    vhost: &Vhost,
    req: &RequestHead,
    peer: SocketAddr,
    ka: Decision,
    rules: Option<&RuleFacts<'_>>,
    req_headers: Option<&HeaderList<'_>>,
) -> Outcome {
    let cx = Ctx {
        shard,
        cache,
        client,
        vhost,
        req,
        peer,
        key: key(vhost, req),
        rules,
        req_headers,
    };
    let now = now_ms();
    if let Some(hit) = cache.lookup(&cx.key) {
        if hit.times.is_fresh(now) {
            cache.stats.hits.fetch_add(1, Relaxed);
            return send_hit(&cx, &hit, ka, CacheResult::Hit).await;
        }
        if !hit.etag.is_empty() || hit.last_modified_s != 0 {
            return revalidate(&cx, hit, ka).await;
        }
        // Stale without validators: fetch it again (and release the old lease first).
        drop(hit);
        return miss(&cx, ka, CacheResult::RefMiss).await;
    }
    cache.stats.misses.fetch_add(1, Relaxed);
    miss(&cx, ka, CacheResult::Miss).await
}

/// Does the client's conditional match the stored object? CF-1 picks which
/// validators count, LM-1 how If-Modified-Since compares.
fn not_modified(req: &RequestHead, hit: &Hit, o: &Options) -> bool {
    if !(200..300).contains(&hit.status) {
        return false; // conditionals apply to successful representations only
    }
    let etag_ok = o.freshness_check != FreshnessCheck::LastModified;
    let lm_ok = o.freshness_check != FreshnessCheck::ETag;
    let etag_match = || {
        let inm = req.header("if-none-match")?;
        let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
        let ours = strip(&hit.etag);
        Some(
            !hit.etag.is_empty()
                && crate::http1::headers::tokens(inm).any(|t| t == b"*" || strip(t) == ours),
        )
    };
    let lm_match = || {
        let ims = crate::httpdate::parse(req.header("if-modified-since")?).map(to_secs)?;
        Some(
            hit.last_modified_s != 0
                && if o.lm_or_later {
                    ims >= hit.last_modified_s
                } else {
                    ims == hit.last_modified_s
                },
        )
    };
    match o.freshness_check {
        // BOTH: either validator matching is enough (STON's reading of CF-1).
        FreshnessCheck::Both => etag_match() == Some(true) || lm_match() == Some(true),
        _ => (etag_ok && etag_match() == Some(true)) || (lm_ok && lm_match() == Some(true)),
    }
}

/// IR-1: with `<IfRange>ON`, a Range applies only if If-Range names this object
/// (its strong ETag, or its exact Last-Modified date); OFF ignores If-Range.
fn if_range_allows(req: &RequestHead, hit: &Hit, o: &Options) -> bool {
    let Some(ir) = req.header("if-range") else {
        return true;
    };
    if !o.if_range {
        return true;
    }
    let ir = crate::http1::headers::trim(ir);
    if ir.first() == Some(&b'"') {
        return !hit.etag.is_empty() && ir == &hit.etag[..];
    }
    crate::httpdate::parse(ir)
        .map(to_secs)
        .is_some_and(|t| hit.last_modified_s != 0 && t == hit.last_modified_s)
}

/// Answers from a stored object: one vectored write of the head and the body (or
/// ranges of it) that points into the segment mapping.
async fn send_hit(cx: &Ctx<'_>, hit: &Hit, ka: Decision, result: CacheResult) -> Outcome {
    let o = &cx.vhost.options;
    let ka = if cx.shard.draining() {
        Decision::Close
    } else {
        ka
    };
    let mut x = cx.extras(result);
    let now = now_ms();
    x.ttl_left = Some(hit.times.ttl_left_s(now));
    if o.age_header {
        x.age = Some(hit.times.current_age_ms(now) / 1000);
    }
    let not_mod = not_modified(cx.req, hit, o);
    if not_mod {
        x.cache_status = cx.status_header(CacheResult::ImsHit);
    }
    let len = hit.body.len() as u64;
    // Every answer below is a head from the stored headers, then maybe body pieces.
    let head = |status: u16, framing: ClientFraming, replace: Option<&[u8]>, extra: &[u8]| {
        Bytes::from(heads::stored_response(
            status,
            &hit.headers,
            framing,
            ka,
            &x,
            replace,
            extra,
        ))
    };
    let mut bufs = Vec::with_capacity(4);
    let head_only = cx.req.is_head();
    let status;
    if not_mod {
        status = 304;
        bufs.push(head(304, ClientFraming::NoBody, None, b""));
    } else {
        let ranges = if hit.status == 200 && if_range_allows(cx.req, hit, o) {
            range::evaluate(cx.req.header("range"), len)
        } else {
            RangeReply::Full
        };
        match ranges {
            RangeReply::Full => {
                status = hit.status;
                // RFC 9110 §8.6: no Content-Length on a 204.
                let framing = if status == 204 {
                    ClientFraming::NoBody
                } else {
                    ClientFraming::Length(len)
                };
                bufs.push(head(status, framing, None, b""));
                if !head_only {
                    bufs.push(hit.body.clone());
                }
            }
            RangeReply::Unsatisfiable => {
                status = 416;
                let cr = format!("Content-Range: bytes */{len}\r\n");
                bufs.push(head(416, ClientFraming::Length(0), None, cr.as_bytes()));
            }
            RangeReply::Partial(rs) if rs.len() == 1 => {
                status = 206;
                let r = &rs[0];
                let cr = format!("Content-Range: bytes {}-{}/{len}\r\n", r.start, r.end - 1);
                let framing = ClientFraming::Length(r.end - r.start);
                bufs.push(head(206, framing, None, cr.as_bytes()));
                if !head_only {
                    bufs.push(hit.body.slice(r.start as usize..r.end as usize));
                }
            }
            RangeReply::Partial(rs) => {
                status = 206;
                let (parts, total, ctype) = multipart(&hit.headers, &hit.body, &rs);
                let framing = ClientFraming::Length(total);
                bufs.push(head(206, framing, Some(b"content-type"), ctype.as_bytes()));
                if !head_only {
                    bufs.extend(parts);
                }
            }
        }
    }
    cx.log(status, result);
    match cx.client.writev_all(bufs, respond::SEND_TIMEOUT).await {
        Ok(()) => Outcome::Done { close: ka.closes() },
        Err(_) => Outcome::Abort,
    }
}

/// A multipart/byteranges body (RFC 9110 §14.6): part heads are small new buffers,
/// part bodies are slices of the stored body (no copy). Returns the pieces, the
/// total length and the Content-Type line.
fn multipart(
    headers: &[u8],
    body: &Bytes,
    ranges: &[std::ops::Range<u64>],
) -> (Vec<Bytes>, u64, String) {
    const BOUNDARY: &str = "cairn-7d3f9a1c5e2b";
    let ctype = headers.split(|&b| b == b'\n').find_map(|l| {
        let (n, v) = l.split_at(l.iter().position(|&b| b == b':')?);
        n.eq_ignore_ascii_case(b"content-type")
            .then(|| String::from_utf8_lossy(&v[1..]).trim().to_string())
    });
    let len = body.len();
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut total = 0u64;
    for r in ranges {
        let mut h = format!("\r\n--{BOUNDARY}\r\n");
        if let Some(ct) = &ctype {
            h.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        h.push_str(&format!(
            "Content-Range: bytes {}-{}/{len}\r\n\r\n",
            r.start,
            r.end - 1
        ));
        total += h.len() as u64 + (r.end - r.start);
        parts.push(Bytes::from(h));
        parts.push(body.slice(r.start as usize..r.end as usize));
    }
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    total += tail.len() as u64;
    parts.push(Bytes::from(tail));
    (
        parts,
        total,
        format!("Content-Type: multipart/byteranges; boundary={BOUNDARY}\r\n"),
    )
}

async fn send_origin(cx: &Ctx<'_>, extra: &[u8]) -> Result<OriginReply, u16> {
    let origin = exchange::pick(cx.shard, cx.vhost);
    // The variant decides the encoding asked for: gzip or nothing (identity).
    let mut ask = Vec::with_capacity(extra.len() + 24);
    if wants_gzip(cx.vhost, cx.req) {
        ask.extend_from_slice(b"Accept-Encoding: gzip\r\n");
    }
    ask.extend_from_slice(extra);
    let opts = OriginOpts {
        method: Some(b"GET"),
        for_cache: true,
        extra: &ask,
        headers: cx.req_headers,
    };
    let head = heads::origin_request(cx.req, origin, cx.peer.ip(), None, &opts);
    let oreq = OriginRequest {
        head: Bytes::from(head),
        body: None,
        idempotent: true,
        head_method: false,
    };
    exchange::send(cx.shard, cx.vhost, origin, &oreq).await
}

/// Stale with validators: ask the origin whether it changed.
async fn revalidate(cx: &Ctx<'_>, hit: Hit, ka: Decision) -> Outcome {
    let mut extra = Vec::new();
    // A generated ETag means nothing to the origin: ask with the date only.
    if !hit.etag.is_empty() && hit.times.flags & freshness::FLAG_GENERATED_ETAG == 0 {
        extra.extend_from_slice(b"If-None-Match: ");
        extra.extend_from_slice(&hit.etag);
        extra.extend_from_slice(b"\r\n");
    }
    if hit.last_modified_s != 0 {
        extra.extend_from_slice(b"If-Modified-Since: ");
        let lm = UNIX_EPOCH + std::time::Duration::from_secs(hit.last_modified_s);
        extra.extend_from_slice(crate::httpdate::format(lm).as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    let request_time = now_ms();
    match send_origin(cx, &extra).await {
        Ok(reply) if reply.head.status == 304 => {
            let response_time = now_ms();
            let (times, headers) = refreshed(cx, &hit, &reply.head, request_time, response_time);
            cx.cache.refresh(&cx.key, hit.loc, times, headers.clone());
            let fresh = Hit {
                times,
                headers,
                ..hit
            };
            send_hit(cx, &fresh, ka, CacheResult::RefreshHit).await
        }
        Ok(reply) => {
            drop(hit);
            fill_from(cx, reply, None, ka, CacheResult::RefMiss, request_time).await
        }
        Err(status) if hit.times.may_serve_stale() => {
            log::info!(
                "vhost {}: serving stale {} after origin failure ({status})",
                cx.vhost.name,
                String::from_utf8_lossy(cx.req.path())
            );
            send_hit(cx, &hit, ka, CacheResult::RefFailHit).await
        }
        Err(status) => Outcome::Failed(status),
    }
}

/// RFC 9111 §4.3.4: the 304's headers replace the stored ones of the same name, and
/// the time facts restart from the 304.
fn refreshed(
    cx: &Ctx<'_>,
    hit: &Hit,
    r304: &ResponseHead,
    request_time: u64,
    response_time: u64,
) -> (Times, Bytes) {
    let policy = cx.vhost.options.headers;
    let new_lines = kept_headers(r304, policy);
    let mut merged = Vec::with_capacity(hit.headers.len() + new_lines.len());
    let replaced = |name: &[u8]| {
        r304.headers()
            .any(|(n, _)| n.eq_ignore_ascii_case(name) && policy.keeps(n))
    };
    for line in hit.headers.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        if !replaced(name) {
            merged.extend_from_slice(line);
        }
    }
    merged.extend_from_slice(&new_lines);
    let facts = response_facts(r304);
    let lifetime_ms = match freshness::storable(
        &ResponseFacts {
            status: hit.status,
            ..facts
        },
        &CacheControl::default(),
        false,
        &cx.vhost.options.ttl,
        response_time,
    ) {
        Storable::Yes { lifetime_ms, .. } if has_explicit_freshness(&facts) => lifetime_ms,
        _ => hit.times.lifetime_ms,
    };
    let times = Times {
        request_time_ms: request_time,
        response_time_ms: response_time,
        date_s: facts.date_s.unwrap_or(response_time / 1000),
        age_s: age_of(r304),
        lifetime_ms,
        // A 304 may tighten the rules (no-cache, must-revalidate); it cannot loosen them.
        flags: hit.times.flags | revalidation_flags(&facts.cc, facts.pragma_no_cache),
    };
    (times, Bytes::from(merged))
}

fn revalidation_flags(cc: &CacheControl, pragma_no_cache: bool) -> u16 {
    let mut f = 0;
    if cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() {
        f |= freshness::FLAG_MUST_REVALIDATE;
    }
    if cc.no_cache || (pragma_no_cache && *cc == CacheControl::default()) {
        f |= freshness::FLAG_NO_CACHE;
    }
    f
}

fn has_explicit_freshness(f: &ResponseFacts) -> bool {
    f.cc.max_age.is_some() || f.cc.s_maxage.is_some() || f.expires_s.is_some()
}

fn to_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn response_facts(h: &ResponseHead) -> ResponseFacts {
    let named = |n: &'static str| {
        h.headers()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
            .map(|(_, v)| v)
    };
    ResponseFacts {
        status: h.status,
        cc: CacheControl::parse(named("cache-control")),
        pragma_no_cache: named("pragma")
            .any(|v| crate::http1::headers::connection_names(v, b"no-cache")),
        expires_s: h
            .header("expires")
            .map(|v| crate::httpdate::parse(v).map(to_secs).unwrap_or(0)),
        date_s: h
            .header("date")
            .and_then(crate::httpdate::parse)
            .map(to_secs),
        has_set_cookie: named("set-cookie").next().is_some()
            || named("set-cookie2").next().is_some(),
    }
}

fn age_of(h: &ResponseHead) -> u64 {
    h.header("age")
        .and_then(crate::http1::headers::parse_content_length)
        .unwrap_or(0)
}

/// A miss: join a fill in progress for this key, or lead one.
async fn miss(cx: &Ctx<'_>, ka: Decision, result: CacheResult) -> Outcome {
    match cx.cache.fills.begin(&cx.key) {
        Role::Leader(leader) => {
            let request_time = now_ms();
            match send_origin(cx, b"").await {
                Ok(reply) => fill_from(cx, reply, Some(leader), ka, result, request_time).await,
                Err(status) => Outcome::Failed(status), // dropping the leader fails the fill
            }
        }
        Role::Follower(fill) => follow(cx, fill, ka, CacheResult::Miss).await,
    }
}

/// What a fill stores: the head facts and meta of the object.
struct FillPlan {
    status: u16,
    headers: Bytes,
    etag: Vec<u8>,
    last_modified_s: u64,
    times: Times,
    length: Option<u64>,
    has_body: bool,
}

impl FillPlan {
    fn meta(&self) -> Meta<'_> {
        Meta {
            status: self.status,
            times: self.times,
            last_modified_s: self.last_modified_s,
            etag: &self.etag,
            head: &self.headers,
        }
    }
}

/// Decides whether `reply` may be stored and, if so, what to store.
fn plan(cx: &Ctx<'_>, reply: &OriginReply, request_time: u64) -> Result<FillPlan, &'static str> {
    let response_time = now_ms();
    let facts = response_facts(&reply.head);
    let req_cc = CacheControl::parse(
        cx.req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
            .map(|(_, v)| v),
    );
    if facts.has_set_cookie {
        return Err("Set-Cookie");
    }
    let (lifetime_ms, mut flags) =
        match freshness::storable(&facts, &req_cc, false, &cx.vhost.options.ttl, response_time) {
            Storable::Yes { lifetime_ms, flags } => (lifetime_ms, flags),
            Storable::No(why) => return Err(why),
        };
    // Variants cairn keys on: Accept-Encoding only (KEY-1). Any other Vary would
    // need a variant per request header value: not stored.
    let vary_other = reply
        .head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
        .any(|(_, v)| {
            crate::http1::headers::tokens(v).any(|t| !t.eq_ignore_ascii_case(b"accept-encoding"))
        });
    if vary_other {
        return Err("Vary on a header other than Accept-Encoding");
    }
    let length = reply.length();
    if length.is_some_and(|n| n > cx.cache.config().max_object) {
        return Err("larger than MaxObjectSize");
    }
    let mut headers = kept_headers(&reply.head, cx.vhost.options.headers);
    if facts.date_s.is_none() {
        respond::write_date(&mut headers);
    }
    let last_modified_s = reply
        .head
        .header("last-modified")
        .and_then(crate::httpdate::parse)
        .map(to_secs)
        .unwrap_or(0);
    let mut etag = reply
        .head
        .header("etag")
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    if etag.is_empty() {
        if let Some(n) = length {
            // ETAG-1 Decision: a strong ETag from the object's identity (STON's shape),
            // stored with it so it is stable across restarts; marked as ours so it is
            // never sent to the origin.
            etag = generated_etag(
                if last_modified_s != 0 {
                    last_modified_s
                } else {
                    response_time / 1000
                },
                n,
            );
            headers.extend_from_slice(b"ETag: ");
            headers.extend_from_slice(&etag);
            headers.extend_from_slice(b"\r\n");
            flags |= freshness::FLAG_GENERATED_ETAG;
        }
    }
    let times = Times {
        request_time_ms: request_time,
        response_time_ms: response_time,
        date_s: facts.date_s.unwrap_or(response_time / 1000),
        age_s: age_of(&reply.head),
        lifetime_ms,
        flags,
    };
    Ok(FillPlan {
        status: reply.head.status,
        headers: Bytes::from(headers),
        etag,
        last_modified_s,
        times,
        length,
        has_body: reply.has_body(),
    })
}

/// Answers from an origin response while storing it (when it may be stored) and,
/// as the leader, sharing it with followers.
async fn fill_from(
    cx: &Ctx<'_>,
    reply: OriginReply,
    leader: Option<Leader>,
    ka: Decision,
    result: CacheResult,
    request_time: u64,
) -> Outcome {
    let plan = match plan(cx, &reply, request_time) {
        Ok(p) => p,
        Err(why) => {
            log::debug!(
                "{} {}: not stored: {why}",
                cx.vhost.name,
                String::from_utf8_lossy(cx.req.path())
            );
            if let Some(l) = leader {
                l.finish(FillEnd::Pass); // followers fetch for themselves
            }
            cx.log(reply.head.status, CacheResult::Miss);
            return pass::relay(
                cx.shard,
                cx.client,
                cx.req,
                reply,
                ka,
                &cx.extras(result),
                cx.req.is_head(),
            )
            .await;
        }
    };
    match leader {
        // Known length: the origin read, the store and the sharing run in a task of
        // their own, so no client (this one included) can slow the fill for the
        // others; this request follows it like any other. Memory per fill is bounded
        // by MaxObjectSize.
        Some(l) if plan.length.is_some() => {
            l.set_head(FillHead {
                status: plan.status,
                headers: plan.headers.clone(),
                length: plan.length,
                has_body: plan.has_body,
                times: plan.times,
            });
            let fill = l.fill();
            let shared = cx.shard.shared.clone();
            let (shard_id, key) = (cx.shard.id, cx.key.clone());
            tokio_uring::spawn(async move {
                let mut reply = reply;
                let ok = pump(
                    &shared.cache,
                    shard_id,
                    &key,
                    &mut reply,
                    &plan,
                    Some(&l),
                    None,
                )
                .await;
                l.finish(if ok {
                    FillEnd::Complete
                } else {
                    FillEnd::Failed
                });
            });
            follow(cx, fill, ka, result).await
        }
        other => {
            // Unknown length (chunked): not shared, so no fill can grow without bound;
            // stored at the end if it fits.
            if let Some(l) = other {
                l.finish(FillEnd::Pass);
            }
            let (mut w, framing, ka) = cx.start_response(
                plan.status,
                &plan.headers,
                plan.has_body,
                plan.length,
                ka,
                result,
            );
            let mut reply = reply;
            if !pump(
                cx.cache,
                cx.shard.id,
                &cx.key,
                &mut reply,
                &plan,
                None,
                Some(&mut w),
            )
            .await
            {
                w.flush().await;
                return Outcome::Abort;
            }
            if !w.finish().await {
                return Outcome::Abort;
            }
            Outcome::Done {
                close: ka.closes() || framing == ClientFraming::Close,
            }
        }
    }
}

/// Moves the body from the origin into the segment, the leader's followers and/or a
/// client. `true` when the body ended cleanly (and was committed if it could be).
async fn pump(
    cache: &Cache,
    shard_id: usize,
    key: &[u8],
    reply: &mut OriginReply,
    plan: &FillPlan,
    leader: Option<&Leader>,
    mut client: Option<&mut ClientWriter<'_>>,
) -> bool {
    let max = cache.config().max_object;
    let meta = plan.meta();
    let mut writer = plan
        .length
        .and_then(|n| cache.writer(shard_id, key, &meta, n));
    // Unknown length: gather up to MaxObjectSize, store at the end.
    let mut gathered: Option<(Vec<Bytes>, u64)> = plan.length.is_none().then(|| (Vec::new(), 0));
    loop {
        match reply.next().await {
            Ok(Some(b)) => {
                if let Some(wr) = writer.as_mut() {
                    if !wr.push(&b) {
                        writer = None;
                    }
                }
                if let Some((parts, size)) = gathered.as_mut() {
                    *size += b.len() as u64;
                    if *size > max {
                        gathered = None;
                    } else {
                        parts.push(b.clone());
                    }
                }
                if let Some(l) = leader {
                    l.push(b.clone());
                }
                if let Some(w) = client.as_deref_mut() {
                    w.chunk(b).await;
                    // Without followers there is nobody else to finish the fill for.
                    if w.is_gone() && leader.is_none() && gathered.is_none() && writer.is_none() {
                        return false;
                    }
                }
            }
            Ok(None) => break,
            Err(()) => return false, // writer drops: region stays dead
        }
    }
    if let Some(wr) = writer {
        wr.commit();
    } else if let Some((parts, size)) = gathered {
        // Now the size is known: an origin without an ETag gets a generated one.
        let (etag, headers, mut times) = (plan.etag.clone(), plan.headers.to_vec(), plan.times);
        let (etag, headers) = if etag.is_empty() {
            let e = generated_etag(
                if plan.last_modified_s != 0 {
                    plan.last_modified_s
                } else {
                    times.response_time_ms / 1000
                },
                size,
            );
            let mut h = headers;
            h.extend_from_slice(b"ETag: ");
            h.extend_from_slice(&e);
            h.extend_from_slice(b"\r\n");
            times.flags |= freshness::FLAG_GENERATED_ETAG;
            (e, h)
        } else {
            (etag, headers)
        };
        let meta = Meta {
            etag: &etag,
            head: &headers,
            times,
            ..meta
        };
        if let Some(mut wr) = cache.writer(shard_id, key, &meta, size) {
            if parts.iter().all(|p| wr.push(p)) {
                wr.commit();
            }
        }
    }
    true
}

/// `"<hex last-modified>-<hex size>"` (ETAG-1 Decision).
fn generated_etag(last_modified_s: u64, size: u64) -> Vec<u8> {
    format!("\"{last_modified_s:x}-{size:x}\"").into_bytes()
}

/// Follows another request's fill: same head, same chunks, as they arrive.
async fn follow(
    cx: &Ctx<'_>,
    fill: std::sync::Arc<Fill>,
    ka: Decision,
    result: CacheResult,
) -> Outcome {
    let wait = cx.vhost.origin_options.connect_timeout + cx.vhost.origin_options.receive_timeout;
    let mut seen = 0usize;
    let mut writer: Option<ClientWriter<'_>> = None;
    let mut ka = ka;
    loop {
        let p = match tokio::time::timeout(wait, fill.next(seen, writer.is_some())).await {
            Ok(p) => p,
            Err(_) => {
                return match writer {
                    None => Outcome::Failed(504),
                    Some(_) => Outcome::Abort,
                }
            }
        };
        if writer.is_none() {
            if p.end == Some(FillEnd::Pass) {
                // Not shareable: fetch for ourselves, uncached.
                return pass::forward(
                    cx.shard,
                    cx.client,
                    cx.vhost,
                    cx.req,
                    None,
                    cx.peer,
                    ka,
                    &cx.extras(CacheResult::Miss),
                    cx.req_headers,
                )
                .await;
            }
            let Some(h) = &p.head else {
                if p.end == Some(FillEnd::Failed) {
                    return Outcome::Failed(502);
                }
                continue;
            };
            let (w, _, decided) =
                cx.start_response(h.status, &h.headers, h.has_body, h.length, ka, result);
            ka = decided;
            writer = Some(w);
        }
        let w = writer.as_mut().expect("head written above");
        seen += p.chunks.len();
        for c in p.chunks {
            w.chunk(c).await;
        }
        if w.is_gone() {
            return Outcome::Abort;
        }
        match p.end {
            Some(FillEnd::Complete) => {
                let w = writer.take().expect("present");
                return if w.finish().await {
                    Outcome::Done { close: ka.closes() }
                } else {
                    Outcome::Abort
                };
            }
            Some(_) => {
                w.flush().await;
                return Outcome::Abort;
            }
            None => w.flush().await,
        }
    }
}
