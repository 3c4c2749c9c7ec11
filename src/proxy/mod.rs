//! A client connection's life, in the phases of docs/architecture.md:
//! parse → vhost → request body → origin exchange → response → next request.
//! Pipelined requests already in the buffer are parsed without another read.

mod forward;
pub mod heads;
pub mod respond;

use crate::http1::body::{BodyDecoder, BodyError, Decoded};
use crate::http1::keepalive::{self, Decision, RequestFacts};
use crate::http1::request::{self, Framing};
use crate::http1::{Limits, RequestHead};
use crate::net::{Conn, IoError};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use forward::Outcome;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Longest a client may take to send a started request head or body (then 408).
const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

enum Next {
    Head(RequestHead),
    /// The connection is finished (closed by the client, idle timeout, drain).
    Closed,
    /// The request cannot be read: answer with this status and close.
    Refuse(u16),
}

pub async fn serve(shard: Rc<Shard>, conn: Conn, peer: SocketAddr, group: usize) {
    let shared = shard.shared.clone();
    let config = &shared.config;
    let router = &shared.routers[group];
    let limits = shared.limits;
    let first_vhost = config.listeners[group].vhosts[0];
    let mut idle = Duration::from_secs(u64::from(
        config.vhosts[first_vhost].options.keep_alive.timeout_secs,
    ));
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut nth: u32 = 0;
    loop {
        let head = match next_head(&shard, &conn, &mut rbuf, &limits, idle).await {
            Next::Head(h) => h,
            Next::Closed => {
                conn.shutdown();
                return;
            }
            Next::Refuse(status) => {
                log::info!("{peer}: refused a request with {status}");
                let _ = respond::send_error(&conn, status, Decision::Close, false).await;
                conn.close_gracefully().await;
                return;
            }
        };
        nth = nth.saturating_add(1);
        shard.stats().requests.fetch_add(1, Relaxed);
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
            let ka = keepalive::decide(
                &policy,
                facts,
                nth,
                shard.draining() || head.framing != Framing::None,
            );
            // Decision (spec §0): an empty body.
            if respond::send_error(&conn, 404, ka, true).await.is_err() || ka.closes() {
                conn.close_gracefully().await;
                return;
            }
            continue;
        };
        let vhost = &config.vhosts[vi];
        let policy = &vhost.options.keep_alive;
        idle = Duration::from_secs(u64::from(policy.timeout_secs));
        let body = match read_body(&conn, &mut rbuf, &head, &limits).await {
            Ok(b) => b,
            Err(Some(status)) => {
                let _ = respond::send_error(&conn, status, Decision::Close, head.is_head()).await;
                conn.close_gracefully().await;
                return;
            }
            Err(None) => {
                conn.shutdown();
                return;
            }
        };
        let ka = keepalive::decide(policy, facts, nth, shard.draining());
        match forward::exchange(&shard, &conn, vhost, &head, body, peer, ka).await {
            Outcome::Done { close: false } => {}
            Outcome::Done { close: true } => {
                conn.close_gracefully().await;
                return;
            }
            Outcome::Abort => {
                conn.shutdown();
                return;
            }
            Outcome::Failed(status) => {
                if respond::send_error(&conn, status, ka, head.is_head())
                    .await
                    .is_err()
                    || ka.closes()
                {
                    conn.close_gracefully().await;
                    return;
                }
            }
        }
    }
}

/// Parses the next request head, reading as needed. An empty buffer waits with the
/// keep-alive idle timeout (KA-6) and gives up when the shard drains; a started head
/// must complete within `CLIENT_BODY_TIMEOUT` or gets 408.
async fn next_head(
    shard: &Shard,
    conn: &Conn,
    rbuf: &mut BytesMut,
    limits: &Limits,
    idle: Duration,
) -> Next {
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
            conn.read(rbuf, CLIENT_BODY_TIMEOUT).await
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
) -> Result<Option<Bytes>, Option<u16>> {
    let mut decoder = match head.framing {
        Framing::None => return Ok(None),
        Framing::Length(n) => BodyDecoder::length(n),
        Framing::Chunked => BodyDecoder::chunked(limits.max_body),
    };
    if head.expect_continue && rbuf.is_empty() {
        conn.write_all(
            Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
            respond::SEND_TIMEOUT,
        )
        .await
        .map_err(|_| None)?;
    }
    if let Framing::Length(n) = head.framing {
        // Fast path: gather in the read buffer and split once, no copy.
        while (rbuf.len() as u64) < n {
            rbuf.reserve((n as usize - rbuf.len()).min(1 << 20));
            match conn.read(rbuf, CLIENT_BODY_TIMEOUT).await {
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
            Ok(Decoded::NeedMore) => match conn.read(rbuf, CLIENT_BODY_TIMEOUT).await {
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
