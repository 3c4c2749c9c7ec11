//! The cache's phases of a request: lookup → (hit | revalidate | coalesced fill),
//! answered with the stored headers. Pure decisions live in `cache::freshness` and
//! `cache::meta`; this module moves bytes between them, the origin and the client.

use super::heads::{self, client_framing, ClientFraming, OriginOpts};
use super::relay::ClientWriter;
use super::{pass, respond, Outcome};
use crate::cache::fill::{Fill, FillEnd, FillHead, Leader, Role};
use crate::cache::freshness::{self, CacheControl, ResponseFacts, Storable, Times};
use crate::cache::meta::{kept_headers, Meta};
use crate::cache::{Cache, CacheResult, Hit};
use crate::config::Vhost;
use crate::http1::keepalive::Decision;
use crate::http1::{request::Version, RequestHead, ResponseHead};
use crate::net::Conn;
use crate::origin::exchange::{self, OriginReply, OriginRequest};
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
pub fn key(vhost: &Vhost, req: &RequestHead) -> Vec<u8> {
    let mut k = Vec::with_capacity(vhost.name.len() + req.path().len());
    k.extend_from_slice(vhost.name.as_bytes());
    k.extend_from_slice(req.path());
    k
}

struct Ctx<'a> {
    shard: &'a Rc<Shard>,
    cache: &'a Cache,
    client: &'a Conn,
    vhost: &'a Vhost,
    req: &'a RequestHead,
    peer: SocketAddr,
    key: Vec<u8>,
}

impl Ctx<'_> {
    fn status_header(&self, r: CacheResult) -> Option<&'static str> {
        self.vhost.options.cache_status_header.then(|| r.code())
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

pub async fn serve(
    shard: &Rc<Shard>,
    cache: &Cache,
    client: &Conn,
    vhost: &Vhost,
    req: &RequestHead,
    peer: SocketAddr,
    ka: Decision,
) -> Outcome {
    let cx = Ctx {
        shard,
        cache,
        client,
        vhost,
        req,
        peer,
        key: key(vhost, req),
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
        // Stale without validators: fetch it again.
        return miss(&cx, ka, CacheResult::RefMiss).await;
    }
    cache.stats.misses.fetch_add(1, Relaxed);
    miss(&cx, ka, CacheResult::Miss).await
}

/// Does the client's conditional match the stored object (CF-1 BOTH, LM-1 exact)?
fn not_modified(req: &RequestHead, hit: &Hit) -> bool {
    if let Some(inm) = req.header("if-none-match") {
        let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
        let ours = strip(&hit.etag);
        return !hit.etag.is_empty()
            && crate::http1::headers::tokens(inm).any(|t| t == b"*" || strip(t) == ours);
    }
    if let Some(ims) = req.header("if-modified-since") {
        return hit.last_modified_s != 0
            && crate::httpdate::parse(ims)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                == Some(hit.last_modified_s);
    }
    false
}

/// Answers from a stored object: one vectored write of the head and the body that
/// points into the segment mapping.
async fn send_hit(cx: &Ctx<'_>, hit: &Hit, ka: Decision, result: CacheResult) -> Outcome {
    let ka = if cx.shard.draining() {
        Decision::Close
    } else {
        ka
    };
    let (status, result, framing) = if not_modified(cx.req, hit) {
        (304, CacheResult::ImsHit, ClientFraming::NoBody)
    } else {
        (
            hit.status,
            result,
            ClientFraming::Length(hit.body.len() as u64),
        )
    };
    let head = heads::stored_response(status, &hit.headers, framing, ka, cx.status_header(result));
    let mut bufs = vec![Bytes::from(head)];
    if status != 304 && !cx.req.is_head() {
        bufs.push(hit.body.clone());
    }
    cx.log(status, result);
    match cx.client.writev_all(bufs, respond::SEND_TIMEOUT).await {
        Ok(()) => Outcome::Done { close: ka.closes() },
        Err(_) => Outcome::Abort,
    }
}

async fn send_origin(cx: &Ctx<'_>, extra: &[u8]) -> Result<OriginReply, u16> {
    let origin = exchange::pick(cx.shard, cx.vhost);
    let opts = OriginOpts {
        method: Some(b"GET"),
        for_cache: true,
        extra,
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
    if !hit.etag.is_empty() {
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
            cx.cache.refresh(&cx.key, times, headers.clone());
            let fresh = Hit {
                times,
                headers,
                ..hit
            };
            send_hit(cx, &fresh, ka, CacheResult::RefreshHit).await
        }
        Ok(reply) => fill_from(cx, reply, None, ka, CacheResult::RefMiss, request_time).await,
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
        flags: hit.times.flags,
    };
    (times, Bytes::from(merged))
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
        Role::Follower(fill) => follow(cx, fill, ka).await,
    }
}

/// Streams an origin response to the client while storing it (when it may be stored)
/// and sharing it with followers.
async fn fill_from(
    cx: &Ctx<'_>,
    mut reply: OriginReply,
    leader: Option<Leader>,
    ka: Decision,
    result: CacheResult,
    request_time: u64,
) -> Outcome {
    let response_time = now_ms();
    let facts = response_facts(&reply.head);
    let req_cc = CacheControl::parse(
        cx.req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
            .map(|(_, v)| v),
    );
    let decision = if facts.has_set_cookie {
        Storable::No("Set-Cookie")
    } else {
        freshness::storable(&facts, &req_cc, false, &cx.vhost.options.ttl, response_time)
    };
    let max = cx.cache.config().max_object;
    let (lifetime_ms, flags) = match decision {
        Storable::Yes { lifetime_ms, flags } if reply.length().is_none_or(|n| n <= max) => {
            (lifetime_ms, flags)
        }
        other => {
            if let Storable::No(why) = other {
                log::debug!(
                    "{} {}: not stored: {why}",
                    cx.vhost.name,
                    String::from_utf8_lossy(cx.req.path())
                );
            }
            if let Some(l) = leader {
                l.finish(FillEnd::Pass);
            }
            cx.log(reply.head.status, CacheResult::Miss);
            return pass::relay(
                cx.shard,
                cx.client,
                cx.req,
                reply,
                ka,
                cx.status_header(result),
            )
            .await;
        }
    };
    let times = Times {
        request_time_ms: request_time,
        response_time_ms: response_time,
        date_s: facts.date_s.unwrap_or(response_time / 1000),
        age_s: age_of(&reply.head),
        lifetime_ms,
        flags,
    };
    let mut headers = kept_headers(&reply.head, cx.vhost.options.headers);
    if facts.date_s.is_none() {
        respond::write_date(&mut headers);
    }
    let headers = Bytes::from(headers);
    let length = reply.length();
    let etag = reply
        .head
        .header("etag")
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let last_modified_s = reply
        .head
        .header("last-modified")
        .and_then(crate::httpdate::parse)
        .map(to_secs)
        .unwrap_or(0);
    let status = reply.head.status;
    if let Some(l) = &leader {
        l.set_head(FillHead {
            status,
            headers: headers.clone(),
            length,
            times,
        });
    }
    let meta = Meta {
        status,
        times,
        last_modified_s,
        etag: &etag,
        head: &headers,
    };
    let mut writer = length.and_then(|n| cx.cache.writer(cx.shard.id, &cx.key, &meta, n));
    // Unknown length (chunked origin): gather up to max_object, store at the end.
    let mut gathered: Option<(Vec<Bytes>, u64)> = length.is_none().then(|| (Vec::new(), 0));

    let framing = client_framing(
        reply.has_body() && length != Some(0),
        length,
        cx.req.version == Version::Http10,
    );
    let framing = if reply.has_body() {
        framing
    } else {
        ClientFraming::Length(0)
    };
    let ka = if framing == ClientFraming::Close || cx.shard.draining() {
        Decision::Close
    } else {
        ka
    };
    let head = heads::stored_response(status, &headers, framing, ka, cx.status_header(result));
    let mut w = ClientWriter::new(cx.client, head, framing, cx.req.is_head());
    cx.log(status, result);
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
                if let Some(l) = &leader {
                    l.push(b.clone());
                }
                // The fill goes on when the client leaves: followers and the cache want it.
                w.chunk(b).await;
                if w.is_gone() && leader.is_none() {
                    return Outcome::Abort;
                }
            }
            Ok(None) => break,
            Err(()) => {
                w.flush().await;
                return Outcome::Abort; // leader and writer drop: fill failed, region dead
            }
        }
    }
    if let Some(wr) = writer {
        wr.commit();
    } else if let Some((parts, size)) = gathered {
        if let Some(mut wr) = cx.cache.writer(cx.shard.id, &cx.key, &meta, size) {
            if parts.iter().all(|p| wr.push(p)) {
                wr.commit();
            }
        }
    }
    if let Some(l) = leader {
        l.finish(FillEnd::Complete);
    }
    if !w.finish().await {
        return Outcome::Abort;
    }
    if framing == ClientFraming::Close {
        return Outcome::Done { close: true };
    }
    Outcome::Done { close: ka.closes() }
}

/// Follows another request's fill: same head, same chunks, as they arrive.
async fn follow(cx: &Ctx<'_>, fill: std::sync::Arc<Fill>, ka: Decision) -> Outcome {
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
                    cx.status_header(CacheResult::Miss),
                )
                .await;
            }
            let Some(h) = &p.head else {
                if p.end == Some(FillEnd::Failed) {
                    return Outcome::Failed(502);
                }
                continue;
            };
            let framing = client_framing(
                h.length != Some(0),
                h.length,
                cx.req.version == Version::Http10,
            );
            ka = if framing == ClientFraming::Close || cx.shard.draining() {
                Decision::Close
            } else {
                ka
            };
            let head = heads::stored_response(
                h.status,
                &h.headers,
                framing,
                ka,
                cx.status_header(CacheResult::Miss),
            );
            cx.log(h.status, CacheResult::Miss);
            writer = Some(ClientWriter::new(
                cx.client,
                head,
                framing,
                cx.req.is_head(),
            ));
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
