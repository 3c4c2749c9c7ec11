//! One exchange with an origin: pick an address, get a pooled or new connection,
//! send the request, stream the response back to the client.

use super::heads::{self, ClientFraming};
use super::respond::SEND_TIMEOUT;
use crate::config::{OriginAddr, Vhost};
use crate::http1::body::{chunk_header, LAST_CHUNK};
use crate::http1::keepalive::Decision;
use crate::http1::{request::Version, response, Decoded, RequestHead};
use crate::net::{Conn, IoError};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Largest origin response head we accept.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How much an origin read may bring at once.
const ORIGIN_READ: usize = 64 * 1024;
/// Pending body pieces before we flush them to the client.
const MAX_PENDING: usize = 64;
/// Largest chunked response we relay (chunked responses are not buffered, this only
/// bounds the decoder's arithmetic).
const MAX_CHUNKED: u64 = u64::MAX >> 1;

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

fn pick<'v>(shard: &Shard, vhost: &'v Vhost) -> &'v OriginAddr {
    let i = shard.rr.get();
    shard.rr.set(i.wrapping_add(1));
    &vhost.origins[i % vhost.origins.len()]
}

pub async fn exchange(
    shard: &Rc<Shard>,
    client: &Conn,
    vhost: &Vhost,
    req: &RequestHead,
    body: Option<Bytes>,
    peer: SocketAddr,
    ka: Decision,
) -> Outcome {
    let oo = &vhost.origin_options;
    let origin = pick(shard, vhost);
    let head = Bytes::from(heads::origin_request(
        req,
        origin,
        peer.ip(),
        body.as_ref().map(|b| b.len() as u64),
    ));
    let mut retried = false;
    let (oconn, resp, mut obuf) = loop {
        let pooled = shard
            .pool
            .borrow_mut()
            .take(origin.addr, oo.reuse_timeout, Instant::now());
        let reused = pooled.is_some();
        let oconn = match pooled {
            Some(c) => c,
            None => match Conn::connect(origin.addr, oo.connect_timeout).await {
                Ok(c) => {
                    shard.stats().origin_connects.fetch_add(1, Relaxed);
                    c
                }
                Err(IoError::TimedOut) => {
                    log::warn!(
                        "vhost {}: origin {}: connect timed out after {}s -> 504",
                        vhost.name,
                        origin.addr,
                        oo.connect_timeout.as_secs()
                    );
                    return Outcome::Failed(504);
                }
                Err(e) => {
                    log::warn!(
                        "vhost {}: origin {}: connect failed: {e} -> 502",
                        vhost.name,
                        origin.addr
                    );
                    return Outcome::Failed(502);
                }
            },
        };
        // A pooled connection the origin already closed fails before any response
        // byte: retry once on a fresh one, for idempotent requests only.
        let may_retry = reused && !retried && req.is_idempotent();
        let mut bufs = vec![head.clone()];
        bufs.extend(body.clone());
        if let Err(e) = oconn.writev_all(bufs, oo.receive_timeout).await {
            oconn.shutdown();
            if may_retry {
                retried = true;
                continue;
            }
            log::warn!(
                "vhost {}: origin {}: sending the request failed: {e} -> 502",
                vhost.name,
                origin.addr
            );
            return Outcome::Failed(502);
        }
        match read_response_head(&oconn, oo.receive_timeout).await {
            Ok((resp, buf)) => break (oconn, resp, buf),
            Err(HeadError::ClosedEarly) if may_retry => {
                oconn.shutdown();
                retried = true;
                continue;
            }
            Err(e) => {
                oconn.shutdown();
                let status = e.status();
                log::warn!(
                    "vhost {}: origin {}: {} -> {status}",
                    vhost.name,
                    origin.addr,
                    e.describe(oo.receive_timeout.as_secs())
                );
                return Outcome::Failed(status);
            }
        }
    };

    let decoder = resp.body(req.is_head(), MAX_CHUNKED);
    let http10_client = req.version == Version::Http10;
    let framing = match (&decoder, resp.content_length) {
        (None, _) => ClientFraming::NoBody,
        (Some(crate::http1::BodyDecoder::Length { remaining }), _) => {
            ClientFraming::Length(*remaining)
        }
        (Some(_), _) if http10_client => ClientFraming::Close,
        (Some(_), _) => ClientFraming::Chunked,
    };
    // A drain that started while we waited for the origin closes this connection too.
    let ka = if framing == ClientFraming::Close || shard.draining() {
        Decision::Close
    } else {
        ka
    };
    let mut pending: Vec<Bytes> = vec![Bytes::from(heads::client_response(&resp, framing, ka))];
    let chunked_out = framing == ClientFraming::Chunked;
    let mut origin_clean = resp.keep_alive;
    if let Some(mut dec) = decoder {
        loop {
            match dec.decode(&mut obuf) {
                Ok(Decoded::Data(b)) => {
                    if chunked_out {
                        pending.push(chunk_header(b.len()));
                        pending.push(b);
                        pending.push(Bytes::from_static(b"\r\n"));
                    } else {
                        pending.push(b);
                    }
                    if pending.len() >= MAX_PENDING && flush(client, &mut pending).await.is_err() {
                        oconn.shutdown();
                        return Outcome::Abort;
                    }
                }
                Ok(Decoded::Done) => break,
                Ok(Decoded::NeedMore) => {
                    if flush(client, &mut pending).await.is_err() {
                        oconn.shutdown();
                        return Outcome::Abort;
                    }
                    obuf.reserve(ORIGIN_READ);
                    match oconn.read(&mut obuf, oo.receive_timeout).await {
                        Ok(0) => {
                            if dec.finish_on_eof().is_ok() {
                                origin_clean = false;
                                break;
                            }
                            log::warn!(
                                "vhost {}: origin {}: closed the connection mid-body; client response aborted",
                                vhost.name,
                                origin.addr
                            );
                            return Outcome::Abort;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            log::warn!(
                                "vhost {}: origin {}: reading the body failed: {e}; client response aborted",
                                vhost.name,
                                origin.addr
                            );
                            return Outcome::Abort;
                        }
                    }
                }
                Err(e) => {
                    log::warn!(
                        "vhost {}: origin {}: {e}; client response aborted",
                        vhost.name,
                        origin.addr
                    );
                    oconn.shutdown();
                    return Outcome::Abort;
                }
            }
        }
    }
    if chunked_out {
        pending.push(Bytes::from_static(LAST_CHUNK));
    }
    // Bytes after the response mean the origin is out of step: never reuse that.
    if origin_clean && obuf.is_empty() {
        shard
            .pool
            .borrow_mut()
            .put(origin.addr, oconn, oo.reuse_timeout, Instant::now());
    } else {
        oconn.shutdown();
    }
    if flush(client, &mut pending).await.is_err() {
        return Outcome::Abort;
    }
    if framing == ClientFraming::Close {
        return Outcome::Abort; // close-delimited: closing *is* the end of the body
    }
    Outcome::Done { close: ka.closes() }
}

async fn flush(client: &Conn, pending: &mut Vec<Bytes>) -> Result<(), IoError> {
    if pending.is_empty() {
        return Ok(());
    }
    client
        .writev_all(std::mem::take(pending), SEND_TIMEOUT)
        .await
}

#[derive(Debug)]
enum HeadError {
    /// Closed before any byte arrived (a stale pooled connection, typically).
    ClosedEarly,
    Closed,
    TimedOut,
    Io(std::io::Error),
    Bad(response::ResponseError),
}

impl HeadError {
    fn status(&self) -> u16 {
        match self {
            HeadError::TimedOut => 504,
            _ => 502,
        }
    }
    fn describe(&self, receive_secs: u64) -> String {
        match self {
            HeadError::ClosedEarly | HeadError::Closed => {
                "closed the connection before a complete response head".into()
            }
            HeadError::TimedOut => format!("no response within ReceiveTimeout ({receive_secs}s)"),
            HeadError::Io(e) => format!("reading the response failed: {e}"),
            HeadError::Bad(e) => e.to_string(),
        }
    }
}

/// Reads the final response head (skipping 1xx interim responses).
async fn read_response_head(
    oconn: &Conn,
    timeout: std::time::Duration,
) -> Result<(crate::http1::ResponseHead, BytesMut), HeadError> {
    let mut buf = BytesMut::with_capacity(ORIGIN_READ);
    let mut received = false;
    loop {
        match response::parse(&mut buf, MAX_RESPONSE_HEAD) {
            Ok(Some(h)) if h.is_informational() => {
                if h.status == 101 {
                    return Err(HeadError::Bad(response::ResponseError::Malformed));
                }
                continue;
            }
            Ok(Some(h)) => return Ok((h, buf)),
            Ok(None) => {}
            Err(e) => return Err(HeadError::Bad(e)),
        }
        match oconn.read(&mut buf, timeout).await {
            Ok(0) if !received => return Err(HeadError::ClosedEarly),
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => received = true,
            Err(IoError::TimedOut) => return Err(HeadError::TimedOut),
            Err(IoError::Io(e)) => return Err(HeadError::Io(e)),
            Err(IoError::Stopped) => return Err(HeadError::Closed),
        }
    }
}
