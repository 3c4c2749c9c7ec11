//! One request to an origin and its response, as a pull stream: [`send`] returns
//! the response head and an [`OriginReply`] whose [`OriginReply::next`] yields body
//! chunks as they arrive. The connection goes back to the shard's pool when the
//! body ended cleanly.

use crate::config::{OriginAddr, Vhost};
use crate::http1::{response, BodyDecoder, Decoded, ResponseHead};
use crate::net::{Conn, IoError};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Largest origin response head we accept.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How much an origin read may bring at once.
const ORIGIN_READ: usize = 64 * 1024;
/// Bounds the chunked decoder's arithmetic only; nothing is buffered.
const MAX_CHUNKED: u64 = u64::MAX >> 1;

/// Round-robin over the vhost's origin addresses (per shard).
pub fn pick<'v>(shard: &Shard, vhost: &'v Vhost) -> &'v OriginAddr {
    let i = shard.rr.get();
    shard.rr.set(i.wrapping_add(1));
    &vhost.origins[i % vhost.origins.len()]
}

pub struct OriginRequest {
    pub head: Bytes,
    pub body: Option<Bytes>,
    /// Safe to retry on a fresh connection if the first attempt fails before any
    /// response byte (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request method was HEAD: the response has no body whatever it says.
    pub head_method: bool,
}

pub struct OriginReply {
    pub head: ResponseHead,
    conn: Option<Conn>,
    buf: BytesMut,
    decoder: Option<BodyDecoder>,
    shard: Rc<Shard>,
    addr: SocketAddr,
    reuse: Duration,
    receive: Duration,
    label: String,
}

impl OriginReply {
    /// The body length when known up front (0 for responses without a body).
    pub fn length(&self) -> Option<u64> {
        match &self.decoder {
            None => Some(0),
            Some(BodyDecoder::Length { remaining }) => Some(*remaining),
            Some(_) => None,
        }
    }

    pub fn has_body(&self) -> bool {
        self.decoder.is_some()
    }

    /// The next body chunk; `Ok(None)` at the clean end; `Err(())` when the origin
    /// broke off (already logged): the response must be aborted, not completed.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ()> {
        loop {
            let Some(dec) = self.decoder.as_mut() else {
                return Ok(None);
            };
            match dec.decode(&mut self.buf) {
                Ok(Decoded::Data(b)) => return Ok(Some(b)),
                Ok(Decoded::Done) => {
                    self.decoder = None;
                    self.release();
                    return Ok(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    log::warn!("{}: {e}; response aborted", self.label);
                    self.close();
                    return Err(());
                }
            }
            let conn = self.conn.as_ref().ok_or(())?;
            self.buf.reserve(ORIGIN_READ);
            match conn.read(&mut self.buf, self.receive).await {
                Ok(0) => {
                    if dec.finish_on_eof().is_ok() {
                        self.decoder = None;
                        self.close();
                        return Ok(None);
                    }
                    log::warn!(
                        "{}: closed the connection mid-body; response aborted",
                        self.label
                    );
                    self.close();
                    return Err(());
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!(
                        "{}: reading the body failed: {e}; response aborted",
                        self.label
                    );
                    self.close();
                    return Err(());
                }
            }
        }
    }

    /// Pools the connection if the origin allows reuse and nothing trails the body.
    fn release(&mut self) {
        let Some(c) = self.conn.take() else { return };
        if self.head.keep_alive && self.buf.is_empty() {
            self.shard
                .pool
                .borrow_mut()
                .put(self.addr, c, self.reuse, Instant::now());
        } else {
            c.shutdown();
        }
    }

    fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.shutdown();
        }
    }
}

impl Drop for OriginReply {
    fn drop(&mut self) {
        // Unread body: the connection is out of step and cannot be reused.
        self.close();
    }
}

/// Sends `req` to `origin` and reads the response head. On failure the client's
/// status (502 or 504) is returned, the reason already logged.
pub async fn send(
    shard: &Rc<Shard>,
    vhost: &Vhost,
    origin: &OriginAddr,
    req: &OriginRequest,
) -> Result<OriginReply, u16> {
    let oo = &vhost.origin_options;
    let label = format!("vhost {}: origin {}", vhost.name, origin.addr);
    let mut retried = false;
    loop {
        // The retry always uses a fresh connection: a second pooled one may be stale too.
        let pooled = if retried {
            None
        } else {
            shard
                .pool
                .borrow_mut()
                .take(origin.addr, oo.reuse_timeout, Instant::now())
        };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => match Conn::connect(origin.addr, oo.connect_timeout).await {
                Ok(c) => {
                    shard.stats().origin_connects.fetch_add(1, Relaxed);
                    c
                }
                Err(IoError::TimedOut) => {
                    log::warn!(
                        "{label}: connect timed out after {}s -> 504",
                        oo.connect_timeout.as_secs()
                    );
                    return Err(504);
                }
                Err(e) => {
                    log::warn!("{label}: connect failed: {e} -> 502");
                    return Err(502);
                }
            },
        };
        let may_retry = reused && !retried && req.idempotent;
        let mut bufs = vec![req.head.clone()];
        bufs.extend(req.body.clone());
        if let Err(e) = conn.writev_all(bufs, oo.receive_timeout).await {
            conn.shutdown();
            if may_retry {
                retried = true;
                continue;
            }
            log::warn!("{label}: sending the request failed: {e} -> 502");
            return Err(502);
        }
        match read_head(&conn, oo.receive_timeout).await {
            Ok((head, buf)) => {
                let decoder = head.body(req.head_method, MAX_CHUNKED);
                let mut reply = OriginReply {
                    head,
                    conn: Some(conn),
                    buf,
                    decoder,
                    shard: shard.clone(),
                    addr: origin.addr,
                    reuse: oo.reuse_timeout,
                    receive: oo.receive_timeout,
                    label,
                };
                if reply.decoder.is_none() {
                    reply.release();
                }
                return Ok(reply);
            }
            Err(HeadError::ClosedEarly | HeadError::Io(_)) if may_retry => {
                conn.shutdown();
                retried = true;
            }
            Err(e) => {
                conn.shutdown();
                let status = e.status();
                log::warn!(
                    "{label}: {} -> {status}",
                    e.describe(oo.receive_timeout.as_secs())
                );
                return Err(status);
            }
        }
    }
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
async fn read_head(conn: &Conn, timeout: Duration) -> Result<(ResponseHead, BytesMut), HeadError> {
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
        match conn.read(&mut buf, timeout).await {
            Ok(0) if !received => return Err(HeadError::ClosedEarly),
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => received = true,
            Err(IoError::TimedOut) => return Err(HeadError::TimedOut),
            Err(IoError::Io(e)) if !received => return Err(HeadError::Io(e)),
            Err(IoError::Io(e)) => {
                return Err(HeadError::Bad(response::ResponseError::Io(e.kind())))
            }
            Err(IoError::Stopped) => return Err(HeadError::Closed),
        }
    }
}
