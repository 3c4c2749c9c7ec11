//! The request path, in the phases of docs/architecture.md: vhost → request
//! rules → cache key → (hit | revalidate | fill) or pass-through → transforms →
//! response header policy → response rules → send → log. It is written against
//! the [`Downstream`] seam, never a socket, so every protocol shares it.

pub mod cached;
mod log;
mod pass;
mod purge;
pub mod request;
pub mod response;
pub mod rules;
pub mod upstream;

use crate::cache::CacheResult;
use crate::config::tls::CertSet;
use crate::context::{Live, ShardCtx};
use crate::exchange::{BodyLen, ConnFacts, Downstream, ExchangeError, Head, Protocol, Request};
use crate::http1::RequestHead;
use crate::transform::SendTransform;
use request::{now_ms, RequestCtx, Sent};
use response::error_response;
use std::cell::{Cell, RefCell};
use std::time::Instant;

/// Serves one request through `down`, to the end: a complete response, an
/// error response, or an abort; then its log line. `live` is the configuration
/// the downstream read the request under (see [`body_use`]): a reload between
/// reading the body and serving must not change what the body was read for.
pub async fn serve<D: Downstream>(shard: &ShardCtx, live: &Live, req: &Request, down: &mut D) {
    serve_with(shard, live, req, down, None).await
}

/// [`serve`] with a send-side transform chosen by the caller.
pub async fn serve_with<D: Downstream>(
    shard: &ShardCtx,
    live: &Live,
    req: &Request,
    down: &mut D,
    transform: Option<&dyn SendTransform>,
) {
    let config = &live.config;
    let routed = live.routers[req.conn.group].lookup(req.head.host());
    let refusal = match routed {
        None => {
            ::log::info!(
                "{}: no vhost for Host {:?} -> 404",
                req.conn.peer,
                String::from_utf8_lossy(req.head.host().unwrap_or(b""))
            );
            Some(ExchangeError::UnknownVhost)
        }
        Some(_) if misdirected(live, &req.conn, req.certs.as_deref(), &req.head) => {
            Some(ExchangeError::Misdirected)
        }
        Some(_) => None,
    };
    let (Some(vi), None) = (routed, refusal.as_ref()) else {
        let facts = Refused {
            conn: &req.conn,
            head: Some(&req.head),
            protocol: req.protocol,
            received: req.received,
        };
        let e = refusal.unwrap_or(ExchangeError::UnknownVhost);
        Box::pin(refuse(shard, live, &facts, down, e)).await;
        return;
    };
    let vhost = &config.vhosts[vi];
    down.bind_vhost(vhost);
    let now = now_ms();
    // DRM-1: `<url>/<Keyword>` is `<url>` (fetched and cached as usual)
    // encrypted on the way out; a key out of range is a 500.
    let drm_source = vhost.options.drm.as_deref().and_then(|d| {
        crate::policy::drm::source_of(req.head.path(), &d.keyword).map(|src| (d, src))
    });
    let (drm_head, drm_cipher, drm_error) = match &drm_source {
        Some((d, src)) => match crate::policy::drm::key_for(d, src) {
            Ok(key) => match drm_source_head(&req.head, src, &shard.shared.limits) {
                Some(h) => (Some(h), Some(crate::transform::rc4::Rc4::new(&key)), None),
                None => (
                    None,
                    None,
                    Some(ExchangeError::Internal(
                        "DRM: the source request is malformed",
                    )),
                ),
            },
            Err(e) => {
                ::log::warn!("vhost {}: DRM: {e}", vhost.name);
                shard
                    .stats()
                    .drm_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    None,
                    None,
                    Some(ExchangeError::Internal("DRM key out of range")),
                )
            }
        },
        None => (None, None, None),
    };
    let head = drm_head.as_ref().unwrap_or(&req.head);
    let transform = match &drm_cipher {
        Some(c) => Some(c as &dyn SendTransform),
        None => transform,
    };
    let rules =
        (vhost.request_rules_active() || vhost.response_rules_active()).then(|| rules::RuleFacts {
            vhost,
            // A DRM request's rules see its source: they shape the source's
            // fill, which every client of the source shares.
            req: head,
            client_ip: req.conn.peer.ip(),
            local_port: req.conn.local.port(),
            session_id: req.conn.session_id,
            https: req.conn.tls.is_some(),
            request_time_s: now / 1000,
            geo: shard
                .shared
                .geo
                .as_deref()
                .map(|g| g as &dyn crate::policy::GeoLookup),
        });
    let req_headers = match &rules {
        Some(f) if vhost.request_rules_active() => Some(rules::request_headers(f)),
        _ => None,
    };
    let cx = RequestCtx {
        shard,
        vhost,
        server: &config.server,
        req,
        head,
        // A DRM response is the identity source encrypted: never a gzip
        // variant, whose encoded bytes the client could not decode after RC4.
        key: RefCell::new(match drm_source {
            Some(_) => crate::cache::CacheKey::new(
                &vhost.name,
                &cached::key_url(&vhost.options, &vhost.query_rules, head.path()),
                crate::cache::Variant::Identity,
            ),
            None => cached::key_for(&shard.shared.cache, vhost, head, req_headers.as_ref()),
        }),
        now_ms: now,
        rules,
        req_headers,
        transform,
        drm: drm_source.as_ref().map(|(d, _)| *d),
        result: Cell::new(CacheResult::Miss),
        origin: Cell::new(None),
        bypass: Cell::new(false),
        sent: Cell::new(Sent::default()),
        error: RefCell::new(None),
    };
    let r = if let Some(e) = drm_error {
        Err(e)
    } else if let Some(code) = vhost
        .options
        .redirect_https
        .filter(|_| req.conn.tls.is_none())
    {
        Box::pin(redirect_https(&cx, down, code)).await
    } else if let Some(op) = purge::op_of(&config.server, head.method()) {
        Box::pin(purge::by_method(&cx, down, op)).await
    } else {
        match way(vhost, head, req.conn.peer.ip()) {
            Way::Cache => cached::serve(&cx, down).await,
            Way::Pass => Box::pin(pass::forward(&cx, down, CacheResult::ClientRefreshMiss)).await,
            Way::Refuse => Err(ExchangeError::MethodRefused),
        }
    };
    if let Err(e) = r {
        Box::pin(fail(&cx, down, e)).await;
    }
    log::write(
        shard,
        &log::Exchanged {
            vhost: Some(vhost),
            conn: &req.conn,
            head: Some(&req.head),
            protocol: req.protocol,
            stream: req.stream,
            received: req.received,
            now_ms: now,
            sent: cx.sent.get(),
            bytes_sent: down.bytes_sent(),
            body_bytes: down.body_bytes_sent(),
            bytes_in: req.bytes_in,
            result: cx.result.get(),
            bypass: cx.bypass.get(),
        },
    );
}

/// A DRM request's source request: the source's target, and the client's
/// fields less those about the encrypted representation: `Accept-Encoding`
/// (the source is served as identity), and in `If-None-Match` / `If-Range`
/// only tags of the DRM response (`"x-drm"`), which name the source's `"x"`.
fn drm_source_head(
    head: &crate::http1::RequestHead,
    source: &[u8],
    limits: &crate::http1::request::Limits,
) -> Option<crate::http1::RequestHead> {
    let mut raw = Vec::with_capacity(256);
    raw.extend_from_slice(head.method());
    raw.push(b' ');
    raw.extend_from_slice(source);
    raw.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = head.host() {
        raw.extend_from_slice(b"Host: ");
        raw.extend_from_slice(h);
        raw.extend_from_slice(b"\r\n");
    }
    for (n, v) in head.headers() {
        let value: Vec<u8> =
            if n.eq_ignore_ascii_case(b"host") || n.eq_ignore_ascii_case(b"accept-encoding") {
                continue;
            } else if n.eq_ignore_ascii_case(b"if-none-match") {
                let tags: Vec<Vec<u8>> = crate::http1::headers::list_items(v)
                    .filter_map(|t| t.strip_suffix(b"-drm\"").map(|s| [s, b"\""].concat()))
                    .collect();
                if tags.is_empty() {
                    continue;
                }
                tags.join(&b", "[..])
            } else if n.eq_ignore_ascii_case(b"if-range") && v.ends_with(b"\"") {
                match v.strip_suffix(b"-drm\"") {
                    Some(s) => [s, b"\""].concat(),
                    // A tag of another representation: never this one.
                    None => b"\"-\"".to_vec(),
                }
            } else {
                v.to_vec()
            };
        raw.extend_from_slice(n);
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(&value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let mut buf = bytes::BytesMut::from(&raw[..]);
    let mut parsed = crate::http1::request::parse(&mut buf, limits).ok()??;
    // The client's version and connection facts stay the client's.
    parsed.version = head.version;
    parsed.close = head.close;
    parsed.keep_alive = head.keep_alive;
    Some(parsed)
}

/// On an address whose certificates SNI chooses, a request must be for a site
/// the connection's certificate covers (RFC 9110 §15.5.20), else 421, so that
/// one site's connection cannot reach another vhost. Judged on the vhost the
/// request is routed to: the Host the certificate covers must name it (not fall
/// through to `<Default>`), or the certificate must cover the vhost's own name.
fn misdirected(live: &Live, conn: &ConnFacts, certs: Option<&CertSet>, head: &RequestHead) -> bool {
    let (Some(tls), Some(certs)) = (conn.tls, certs) else {
        return false;
    };
    if !certs.chooses_by_sni() {
        return false;
    }
    let router = &live.routers[conn.group];
    let Some(vi) = router.lookup(head.host()) else {
        return false; // 404 for an unknown vhost, as on any connection
    };
    let host = head.host().map(host_name).unwrap_or_default();
    let host_covered = std::str::from_utf8(host).is_ok_and(|h| certs.covers(tls.cert, h));
    if host_covered && router.lookup_named(head.host()) == Some(vi) {
        return false;
    }
    let vhost = &live.config.vhosts[vi];
    !certs.covers(tls.cert, &vhost.name)
}

/// `host[:port]` or `[v6]:port` less the port and brackets.
fn host_name(h: &[u8]) -> &[u8] {
    if let Some(rest) = h.strip_prefix(b"[") {
        return rest.split(|&b| b == b']').next().unwrap_or(rest);
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

/// HTTPS-1: every plain-HTTP request is redirected.
async fn redirect_https<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    code: u16,
) -> Result<(), ExchangeError> {
    let host = cx.head.host().unwrap_or(cx.vhost.name.as_bytes());
    let mut location = b"https://".to_vec();
    location.extend_from_slice(host);
    // The client's own target (a DRM URL keeps its keyword).
    location.extend_from_slice(cx.req.head.path());
    let mut head = Head::new(code, BodyLen::Known(0));
    head.push(b"Location", location);
    cx.result.set(CacheResult::Redirect);
    send_own(cx, down, head, bytes::Bytes::new()).await
}

/// Ends a failed exchange: an error response if nothing was sent yet, else an
/// abort so the client sees the break.
async fn fail<D: Downstream>(cx: &RequestCtx<'_>, down: &mut D, e: ExchangeError) {
    ::log::debug!(
        "{} {} {}: {e} ({:?} fault)",
        cx.req.conn.peer,
        cx.vhost.name,
        String::from_utf8_lossy(cx.head.path()),
        e.fault()
    );
    cx.result.set(e.result());
    if down.head_sent() || matches!(e, ExchangeError::ClientGone | ExchangeError::ClientTooSlow) {
        down.abort();
    } else {
        let (head, body) = error_response(e.status(), true);
        if send_own(cx, down, head, body).await.is_err() {
            down.abort();
        }
    }
    cx.fail(e);
}

/// Sends a response cairn makes itself, with VIA-1 and Date only (no rules).
async fn send_own<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut head: Head<'_>,
    body: bytes::Bytes,
) -> Result<(), ExchangeError> {
    if !head.has(b"date") {
        head.push(b"Date", response::date_value().to_vec());
    }
    if cx.vhost.options.via_header {
        head.push(b"Via", response::VIA.as_bytes());
    }
    cx.sent.set(Sent {
        status: head.status,
        content_length: head.content_length(),
        gzip: false,
    });
    let gone = |_| ExchangeError::ClientGone;
    down.send_head(&head).await.map_err(gone)?;
    if !body.is_empty() {
        down.send_body(body).await.map_err(gone)?;
    }
    down.finish().await.map_err(gone)
}

/// What the request path will do with a request's body, so the downstream can
/// decide before reading (or inviting) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// No vhost takes the request: refuse it unread.
    Unrouted,
    /// For a site the connection's certificate does not cover: 421, unread.
    Misdirected,
    /// A method the vhost refuses (`<Bypass…Request>OFF`): 501, unread.
    Refused,
    /// The cache (or a redirect) answers: the body is read and dropped, never held.
    Drain,
    /// Forwarded to the origin: held in memory or spooled.
    Forward,
}

/// Where a request goes (ORG-6): through the cache, to the origin as it is,
/// or refused (`<BypassPostRequest>OFF`, `<BypassPutRequest>OFF`: 501).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Cache,
    Pass,
    Refuse,
}

/// Pure: the method, the vhost's `<Bypass…Request>` and `bypass.txt`.
pub fn way(vhost: &crate::config::Vhost, head: &RequestHead, client_ip: std::net::IpAddr) -> Way {
    let o = &vhost.options;
    match head.method() {
        b"POST" if !o.bypass_post.on => Way::Refuse,
        b"PUT" if !o.bypass_put.on => Way::Refuse,
        _ if cached::eligible(head) => {
            let rule = if vhost.bypass_rules.is_empty() {
                None
            } else {
                rules::with_request_ctx(head, client_ip, |ctx| {
                    crate::policy::bypass::decide(&vhost.bypass_rules, ctx)
                })
            };
            if rule.unwrap_or(o.bypass_get.on) {
                Way::Pass
            } else {
                Way::Cache
            }
        }
        _ => Way::Pass,
    }
}

pub fn body_use(
    live: &Live,
    conn: &ConnFacts,
    certs: Option<&CertSet>,
    head: &RequestHead,
) -> BodyUse {
    let Some(vi) = live.routers[conn.group].lookup(head.host()) else {
        return BodyUse::Unrouted;
    };
    if misdirected(live, conn, certs, head) {
        return BodyUse::Misdirected;
    }
    let vhost = &live.config.vhosts[vi];
    let redirected = vhost.options.redirect_https.is_some() && conn.tls.is_none();
    if !redirected && way(vhost, head, conn.peer.ip()) == Way::Refuse {
        BodyUse::Refused
    } else if redirected || cached::eligible(head) {
        BodyUse::Drain
    } else {
        BodyUse::Forward
    }
}

/// What is known of a request refused before the request path could run.
pub struct Refused<'a> {
    pub conn: &'a ConnFacts,
    /// The head, when it could be parsed.
    pub head: Option<&'a RequestHead>,
    pub protocol: Protocol,
    pub received: Instant,
}

/// Answers a request the downstream (or routing) refused, through the same
/// seam and with its log line. The log and VIA-1 follow the vhost the Host names,
/// else the listen group's first vhost.
pub async fn refuse<D: Downstream>(
    shard: &ShardCtx,
    live: &Live,
    r: &Refused<'_>,
    down: &mut D,
    e: ExchangeError,
) {
    let config = &live.config;
    let routed = r
        .head
        .and_then(|h| live.routers[r.conn.group].lookup(h.host()));
    let vi = routed.unwrap_or(config.listeners[r.conn.group].vhosts[0]);
    let vhost = &config.vhosts[vi];
    down.bind_vhost(vhost);
    let status = e.status();
    ::log::info!("{}: refused a request with {status}: {e}", r.conn.peer);
    // Decision (spec §0): the 404 for an unknown vhost has an empty body.
    let with_body = !matches!(e, ExchangeError::UnknownVhost);
    let (mut head, body) = error_response(status, with_body);
    if vhost.options.via_header {
        head.push(b"Via", response::VIA.as_bytes());
    }
    let sent = Sent {
        status,
        content_length: head.content_length(),
        gzip: false,
    };
    // A client that went away gets nothing; its line says status 0, as STON's does.
    let gone = matches!(e, ExchangeError::ClientGone);
    let sent = if gone { Sent::default() } else { sent };
    let ok = !gone
        && down.send_head(&head).await.is_ok()
        && (body.is_empty() || down.send_body(body).await.is_ok())
        && down.finish().await.is_ok();
    if !ok {
        down.abort();
    }
    log::write(
        shard,
        &log::Exchanged {
            vhost: Some(vhost),
            conn: r.conn,
            head: r.head,
            protocol: r.protocol,
            stream: None,
            received: r.received,
            // The request's clock reading, as for every other line.
            now_ms: now_ms().saturating_sub(r.received.elapsed().as_millis() as u64),
            sent,
            bytes_sent: down.bytes_sent(),
            body_bytes: down.body_bytes_sent(),
            bytes_in: r.head.map_or(0, |h| h.wire_len()),
            result: e.result(),
            bypass: false,
        },
    );
}

#[cfg(test)]
mod tests;
