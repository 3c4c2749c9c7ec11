//! A client connection's life, in the phases of docs/architecture.md:
//! parse → vhost → request body → cache (hit | revalidate | fill) or pass-through
//! → response → next request. Pipelined requests already in the buffer are parsed
//! without another read.

pub mod cached;
pub mod heads;
mod pass;
mod relay;
pub mod respond;
pub mod rules;

use crate::http1::body::{BodyDecoder, BodyError, Decoded};
use crate::http1::keepalive::{self, Decision, RequestFacts};
use crate::http1::request::{self, Framing, Version};
use crate::http1::{Limits, RequestHead};
use crate::net::{Conn, IoError};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

/// How an exchange ended, as far as the client connection is concerned.
#[derive(Debug)]
pub enum Outcome {
    /// A complete response went out; `close`: its head said `Connection: Close`.
    Done { close: bool },
    /// The response was cut off (origin or client failure mid-body): the client
    /// connection must close without any further byte, so it can see the break.
    Abort,
    /// Nothing was sent yet; the client gets this status from us.
    Failed(u16),
}

/// A connection's read buffer between requests: enough for a typical request head.
const IDLE_BUFFER: usize = 2048;

/// Read buffers above this size are not kept across idle keep-alive periods.
const KEEP_BUFFER: usize = 64 * 1024;

enum Next {
    Head(RequestHead),
    /// The connection is finished (closed by the client, idle timeout, drain).
    Closed,
    /// The request cannot be read: answer with this status and close.
    Refuse(u16),
}

/// Serves one client connection; `session_id` is unique per shard (#SESSIONID).
pub async fn serve(shard: Rc<Shard>, conn: Conn, peer: SocketAddr, group: usize, session_id: u64) {
    let shared = shard.shared.clone();
    let start = shared.live.load_full();
    let config = &start.config;
    let limits = shared.limits;
    let request_timeout = config.server.request_timeout;
    let first_vhost = config.listeners[group].vhosts[0];
    let mut idle = Duration::from_secs(u64::from(
        config.vhosts[first_vhost].options.keep_alive.timeout_secs,
    ));
    let mut rbuf = BytesMut::with_capacity(IDLE_BUFFER);
    let mut nth: u32 = 0;
    let local_port = config.listeners[group].addr.port();
    // VIA-1 before a vhost is known: the listen group's first vhost decides.
    let group_via: &[u8] = if config.vhosts[first_vhost].options.via_header {
        heads::VIA
    } else {
        b""
    };
    loop {
        if rbuf.is_empty() && rbuf.capacity() > KEEP_BUFFER {
            rbuf = BytesMut::with_capacity(IDLE_BUFFER);
        }
        let head = match Box::pin(next_head(
            &shard,
            &conn,
            &mut rbuf,
            &limits,
            idle,
            request_timeout,
        ))
        .await
        {
            Next::Head(h) => h,
            Next::Closed => {
                conn.shutdown();
                return;
            }
            Next::Refuse(status) => {
                log::info!("{peer}: refused a request with {status}");
                answer(&conn, status, Decision::Close, false, group_via).await;
                return;
            }
        };
        nth = nth.saturating_add(1);
        shard.stats().requests.fetch_add(1, Relaxed);
        // Each request runs on the configuration in force when it arrived (reload).
        let live = shared.live.load_full();
        let config = &live.config;
        let router = &live.routers[group];
        let facts = RequestFacts {
            version: head.version,
            client_close: head.close,
            client_keep_alive: head.keep_alive,
        };
        let Some(vi) = router.lookup(head.host()) else {
            log::info!(
                "{peer}: no vhost for Host {:?} -> 404",
                String::from_utf8_lossy(head.host().unwrap_or(b""))
            );
            let policy = keepalive::Policy::default();
            // An unread body would be taken for the next request: close instead.
            let ka = keepalive::decide(
                &policy,
                facts,
                nth,
                shard.draining() || head.framing != Framing::None,
            );
            // Decision (spec §0): an empty body.
            if !answer(&conn, 404, ka, true, group_via).await {
                return;
            }
            continue;
        };
        let vhost = &config.vhosts[vi];
        let policy = &vhost.options.keep_alive;
        let via: &[u8] = if vhost.options.via_header {
            heads::VIA
        } else {
            b""
        };
        idle = Duration::from_secs(u64::from(policy.timeout_secs));
        let body =
            match Box::pin(read_body(&conn, &mut rbuf, &head, &limits, request_timeout)).await {
                Ok(b) => b,
                Err(Some(status)) => {
                    answer(&conn, status, Decision::Close, head.is_head(), via).await;
                    return;
                }
                Err(None) => {
                    conn.shutdown();
                    return;
                }
            };
        let ka = keepalive::decide(policy, facts, nth, shard.draining());
        if let Some(code) = vhost.options.redirect_https {
            // HTTPS-1: every plain-HTTP request is redirected.
            let host =
                String::from_utf8_lossy(head.host().unwrap_or(vhost.name.as_bytes())).into_owned();
            let mut extra = format!("Location: https://{host}").into_bytes();
            extra.extend_from_slice(head.path());
            extra.extend_from_slice(b"\r\n");
            extra.extend_from_slice(via);
            if !answer(&conn, code, ka, true, &extra).await {
                return;
            }
            continue;
        }
        // STON rule files, only when the vhost turned them on and has rules.
        let request_rules = vhost.request_rules_active();
        let rule_facts =
            (request_rules || vhost.response_rules_active()).then(|| rules::RuleFacts {
                vhost,
                req: &head,
                client_ip: peer.ip(),
                local_port,
                session_id,
                request_time_s: cached::now_ms() / 1000,
                geo: shared
                    .geo
                    .as_deref()
                    .map(|g| g as &dyn crate::policy::GeoLookup),
            });
        let req_headers = match (&rule_facts, request_rules) {
            (Some(f), true) => Some(rules::request_headers(f)),
            _ => None,
        };
        let response_rules = rule_facts
            .as_ref()
            .filter(|_| vhost.response_rules_active());
        let outcome = if cached::eligible(&head) {
            Box::pin(cached::serve(
                &shard,
                &shared.cache,
                &conn,
                vhost,
                &head,
                peer,
                ka,
                response_rules,
                req_headers.as_ref(),
            ))
            .await
        } else {
            if !matches!(head.method(), b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE") {
                // RFC 9111 §4.4: an unsafe method invalidates the stored response.
                shared.cache.remove(&cached::key(vhost, &head));
            }
            let x = heads::Extras {
                cache_status: vhost
                    .options
                    .cache_status_header
                    .then(|| crate::cache::CacheResult::ClientRefreshMiss.code()),
                result: crate::cache::CacheResult::ClientRefreshMiss.code(),
                rules: response_rules,
                ..heads::Extras::for_vhost(&vhost.options)
            };
            Box::pin(pass::forward(
                &shard,
                &conn,
                vhost,
                &head,
                body,
                peer,
                ka,
                &x,
                req_headers.as_ref(),
            ))
            .await
        };
        match outcome {
            Outcome::Done { close: false } => {}
            Outcome::Done { close: true } => {
                Box::pin(conn.close_gracefully()).await;
                return;
            }
            Outcome::Abort => {
                conn.shutdown();
                return;
            }
            Outcome::Failed(status) => {
                // Re-decided: a drain may have started while we waited for the origin.
                let ka = keepalive::decide(policy, facts, nth, shard.draining());
                if !answer(&conn, status, ka, head.is_head(), via).await {
                    return;
                }
            }
        }
    }
}

/// Sends a response cairn makes itself (errors, redirects). `false`: the
/// connection is over and has been closed.
async fn answer(conn: &Conn, status: u16, ka: Decision, no_body: bool, extra: &[u8]) -> bool {
    if respond::send_error(conn, status, ka, no_body, extra)
        .await
        .is_err()
        || ka.closes()
    {
        Box::pin(conn.close_gracefully()).await;
        return false;
    }
    true
}

/// Parses the next request head, reading as needed. An empty buffer waits with the
/// keep-alive idle timeout (KA-6) and gives up when the shard drains; once a head
/// has started, all of it must arrive within `request_timeout` (one deadline, not
/// per read, so a byte-at-a-time client cannot hold the connection), else 408.
async fn next_head(
    shard: &Shard,
    conn: &Conn,
    rbuf: &mut BytesMut,
    limits: &Limits,
    idle: Duration,
    request_timeout: Duration,
) -> Next {
    let mut deadline: Option<Instant> = None;
    loop {
        match request::parse(rbuf, limits) {
            Ok(Some(h)) => return Next::Head(h),
            Ok(None) => {}
            Err(e) => return Next::Refuse(e.status()),
        }
        let waiting_idle = rbuf.iter().all(|b| matches!(b, b'\r' | b'\n'));
        let r = if waiting_idle {
            if shard.draining() {
                return Next::Closed;
            }
            conn.read_or_stop(rbuf, idle, shard.drain_started()).await
        } else {
            let d = *deadline.get_or_insert_with(|| Instant::now() + request_timeout);
            conn.read(rbuf, d.saturating_duration_since(Instant::now()))
                .await
        };
        match r {
            Ok(0) => return Next::Closed,
            Ok(_) => {}
            Err(IoError::TimedOut) if !waiting_idle => return Next::Refuse(408),
            Err(_) => return Next::Closed,
        }
    }
}

/// Reads a request body in full (bodies are buffered up to `Limits::max_body`, as
/// nginx's proxy_request_buffering does, so the origin sees one Content-Length).
/// `Err(Some(status))`: refuse with that status; `Err(None)`: the client went away.
async fn read_body(
    conn: &Conn,
    rbuf: &mut BytesMut,
    head: &RequestHead,
    limits: &Limits,
    request_timeout: Duration,
) -> Result<Option<Bytes>, Option<u16>> {
    let mut decoder = match head.framing {
        Framing::None => return Ok(None),
        Framing::Length(n) => BodyDecoder::length(n),
        Framing::Chunked => BodyDecoder::chunked(limits.max_body),
    };
    // RFC 9110 §10.1.1: only HTTP/1.1 clients get an interim 100.
    if head.expect_continue && head.version == Version::Http11 && rbuf.is_empty() {
        conn.write_all(
            Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
            respond::SEND_TIMEOUT,
        )
        .await
        .map_err(|_| None)?;
    }
    // One deadline for the whole body, not per read.
    let deadline = Instant::now() + request_timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    if let Framing::Length(n) = head.framing {
        // Fast path: gather in the read buffer and split once, no copy.
        while (rbuf.len() as u64) < n {
            rbuf.reserve((n as usize - rbuf.len()).min(1 << 20));
            match conn.read(rbuf, left()).await {
                Ok(0) => return Err(None),
                Ok(_) => {}
                Err(IoError::TimedOut) => return Err(Some(408)),
                Err(_) => return Err(None),
            }
        }
        return Ok(Some(rbuf.split_to(n as usize).freeze()));
    }
    let mut body = BytesMut::new();
    loop {
        match decoder.decode(rbuf) {
            Ok(Decoded::Data(b)) => body.extend_from_slice(&b),
            Ok(Decoded::Done) => return Ok(Some(body.freeze())),
            Ok(Decoded::NeedMore) => match conn.read(rbuf, left()).await {
                Ok(0) => return Err(None),
                Ok(_) => {}
                Err(IoError::TimedOut) => return Err(Some(408)),
                Err(_) => return Err(None),
            },
            Err(BodyError::TooLarge) => return Err(Some(413)),
            Err(_) => return Err(Some(400)),
        }
    }
}
