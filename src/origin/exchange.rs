//! One request to an origin and its response, as a pull stream: [`send`] returns
//! the response head and an [`OriginReply`] whose [`OriginReply::next`] yields body
//! chunks as they arrive. The connection goes back to the shard's pool when the
//! body ended cleanly.

use super::error::TlsFailure;
use super::{OriginError, PoolKey, Upstreams};
use crate::config::{OriginAddr, Vhost};
use crate::health::{Event, Transition};
use crate::http1::{response, BodyDecoder, Decoded, ResponseHead};
use crate::net::{Conn, IoError};
use crate::spool::RequestBody;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Largest origin response head we accept.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Interim (1xx) responses skipped before the final one; more is not HTTP.
const MAX_INTERIM: usize = 16;
/// Interim heads kept for the client, in bytes; later ones are skipped, not
/// kept (hints are an optimisation, memory per exchange is not).
const MAX_INTERIM_BYTES: usize = 8 * 1024;
/// How much an origin read may bring at once.
const ORIGIN_READ: usize = 64 * 1024;
/// Bounds the chunked decoder's arithmetic only; nothing is buffered.
const MAX_CHUNKED: u64 = u64::MAX >> 1;

pub struct OriginRequest {
    pub head: Bytes,
    pub body: Option<Rc<RequestBody>>,
    /// Safe to retry on a fresh connection if the first attempt fails before any
    /// response byte (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request method was HEAD: the response has no body whatever it says.
    pub head_method: bool,
    /// `Private="ON"`: the client connection whose dedicated origin
    /// connection this uses.
    pub private: Option<u64>,
}

pub struct OriginReply {
    pub head: ResponseHead,
    /// Interim responses before it (102, 103, …; not 100, which is this hop's),
    /// for the client that asked (RFC 9110 §15.2); never stored.
    pub interim: Vec<ResponseHead>,
    conn: Option<Conn>,
    buf: BytesMut,
    decoder: Option<BodyDecoder>,
    upstreams: Rc<Upstreams>,
    pub addr: SocketAddr,
    key: PoolKey,
    reuse: Duration,
    receive: Duration,
    label: String,
    /// Counted in the address's in-flight requests while the body is read.
    in_flight: Option<crate::health::InFlight>,
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

    /// Does the body end only when the origin closes the connection?
    pub fn until_close(&self) -> bool {
        matches!(self.decoder, Some(BodyDecoder::UntilClose))
    }

    /// The next item from what is already buffered, without waiting: `None` when
    /// [`next`](Self::next) would have to read. A relay flushes what it holds
    /// before it waits, so a slow origin's bytes reach the client as they come.
    pub fn next_buffered(&mut self) -> Result<Option<Option<Bytes>>, OriginError> {
        let Some(dec) = self.decoder.as_mut() else {
            return Ok(Some(None));
        };
        match dec.decode(&mut self.buf) {
            Ok(Decoded::Data(b)) => Ok(Some(Some(b))),
            Ok(Decoded::Done) => {
                self.decoder = None;
                self.release();
                Ok(Some(None))
            }
            Ok(Decoded::NeedMore) => Ok(None),
            Err(e) => {
                log::warn!("{}: {e}; response aborted", self.label);
                self.close();
                Err(OriginError::BodyBroken(e.to_string()))
            }
        }
    }

    /// The next body chunk; `Ok(None)` at the clean end; `Err` when the origin
    /// broke off (already logged): the response must be aborted, not completed.
    pub async fn next(&mut self) -> Result<Option<Bytes>, OriginError> {
        loop {
            if let Some(item) = self.next_buffered()? {
                return Ok(item);
            }
            let Some(dec) = self.decoder.as_mut() else {
                return Ok(None);
            };
            let Some(conn) = self.conn.as_ref() else {
                return Err(OriginError::BodyBroken("connection already closed".into()));
            };
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
                    return Err(OriginError::BodyBroken("closed mid-body".into()));
                }
                Ok(n) => {
                    self.upstreams.stats.bytes_in.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    log::warn!(
                        "{}: reading the body failed: {e}; response aborted",
                        self.label
                    );
                    self.close();
                    return Err(OriginError::BodyBroken(e.to_string()));
                }
            }
        }
    }

    /// Pools the connection if the origin allows reuse and nothing trails the body.
    fn release(&mut self) {
        let Some(c) = self.conn.take() else { return };
        if self.head.keep_alive && self.buf.is_empty() {
            self.upstreams
                .pool
                .borrow_mut()
                .put(self.key.clone(), c, self.reuse, Instant::now());
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

/// Sends `req` to `origin` and reads the response head. On failure the reason is
/// logged and returned.
pub async fn send(
    up: &Rc<Upstreams>,
    vhost: &Vhost,
    origin: &OriginAddr,
    req: &OriginRequest,
) -> Result<OriginReply, OriginError> {
    let guard = origin.health.begin();
    let r = attempt(up, vhost, origin, req).await;
    let oo = &vhost.origin_options;
    let recorded = match &r {
        Ok(_) => origin
            .health
            .record(Event::Success, None, oo.exclusion, oo.recovery.count),
        // The shard stopping is not the origin's doing.
        Err(OriginError::Stopped) => None,
        Err(OriginError::Connect(e)) if e.kind() == std::io::ErrorKind::Interrupted => None,
        Err(e) => {
            up.stats.failures.fetch_add(1, Relaxed);
            origin
                .health
                .record(Event::Failure, Some(e), oo.exclusion, oo.recovery.count)
        }
    };
    if let (Some(t), Err(e)) = (recorded, &r) {
        log_transition(&vhost.name, origin, t, &e.to_string(), oo.exclusion);
    }
    r.map(|mut reply| {
        reply.in_flight = Some(guard);
        reply
    })
}

/// STON's origin log lines for the two transitions (LOG-2).
pub fn log_transition(vhost: &str, origin: &OriginAddr, t: Transition, why: &str, n: u32) {
    match t {
        Transition::Excluded => log::error!(
            "vhost {vhost}: origin {origin} excluded from service after {n} consecutive failures (last: {why})"
        ),
        Transition::Recovered => log::warn!(
            "vhost {vhost}: origin {origin} recovered back in service ({why})"
        ),
    }
}

async fn attempt(
    up: &Rc<Upstreams>,
    vhost: &Vhost,
    origin: &OriginAddr,
    req: &OriginRequest,
) -> Result<OriginReply, OriginError> {
    let oo = &vhost.origin_options;
    let label = format!("vhost {}: origin {}", vhost.name, origin.addr);
    let tls = match (&origin.tls_name, &vhost.origin_tls) {
        (None, _) => None,
        (Some(name), Some(t)) => Some((name, t)),
        // The loader sets origin_tls whenever an address is HTTPS.
        (Some(_), None) => {
            let e = OriginError::Tls(TlsFailure::NoClientConfig);
            log::error!("{label}: {e} -> 502");
            return Err(e);
        }
    };
    let key = PoolKey {
        addr: origin.addr,
        tls: tls.map(|(name, t)| (name.clone(), t.trust)),
        owner: req.private,
    };
    let mut retried = false;
    loop {
        // The retry always uses a fresh connection: a second pooled one may be stale too.
        let pooled = if retried {
            None
        } else {
            up.pool
                .borrow_mut()
                .take(&key, oo.reuse_timeout, Instant::now())
        };
        let reused = pooled.is_some();
        if reused {
            up.stats.reuses.fetch_add(1, Relaxed);
        }
        let conn = match pooled {
            Some(c) => c,
            None => match connect(origin.addr, tls, oo.connect_timeout).await {
                Ok(c) => {
                    up.stats.connects.fetch_add(1, Relaxed);
                    c
                }
                Err(Connect::Tls(e)) => {
                    log::warn!("{label}: {e} -> 502");
                    return Err(e);
                }
                Err(Connect::Io(e)) => match e {
                    IoError::TimedOut => {
                        let e = OriginError::ConnectTimeout(oo.connect_timeout.as_secs());
                        log::warn!("{label}: {e} -> {}", e.status());
                        return Err(e);
                    }
                    IoError::Io(e) => {
                        let e = OriginError::Connect(e);
                        log::warn!("{label}: {e} -> 502");
                        return Err(e);
                    }
                    IoError::Stopped => {
                        return Err(OriginError::Connect(std::io::ErrorKind::Interrupted.into()));
                    }
                },
            },
        };
        let may_retry = reused && !retried && req.idempotent;
        if let Err(e) = send_request(&conn, req, oo.receive_timeout).await {
            conn.shutdown();
            if may_retry {
                retried = true;
                continue;
            }
            let e = OriginError::Send(e.to_string());
            log::warn!("{label}: {e} -> 502");
            return Err(e);
        }
        match read_head(&conn, oo.receive_timeout).await {
            Ok((head, buf, interim)) => {
                up.stats.bytes_in.fetch_add(buf.len() as u64, Relaxed);
                let decoder = head.body(req.head_method, MAX_CHUNKED);
                let mut reply = OriginReply {
                    head,
                    interim,
                    conn: Some(conn),
                    buf,
                    decoder,
                    upstreams: up.clone(),
                    addr: origin.addr,
                    key: key.clone(),
                    reuse: oo.reuse_timeout,
                    receive: oo.receive_timeout,
                    label,
                    in_flight: None,
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
                let e = e.into_error(oo.receive_timeout.as_secs());
                log::warn!("{label}: {e} -> {}", e.status());
                return Err(e);
            }
        }
    }
}

enum Connect {
    Io(IoError),
    /// The TLS handshake failed (certificate, protocol): the origin's fault.
    Tls(OriginError),
}

/// A fresh connection, with a TLS handshake for an HTTPS origin; the connect
/// timeout covers both (as nginx's `proxy_connect_timeout` does).
async fn connect(
    addr: SocketAddr,
    tls: Option<(
        &rustls::pki_types::ServerName<'static>,
        &std::sync::Arc<crate::config::tls::OriginTls>,
    )>,
    timeout: Duration,
) -> Result<Conn, Connect> {
    let start = tokio::time::Instant::now();
    let conn = Conn::connect(addr, timeout).await.map_err(Connect::Io)?;
    let Some((name, t)) = tls else {
        return Ok(conn);
    };
    let left = timeout.saturating_sub(start.elapsed());
    match conn.connect_tls(t.client.clone(), name.clone(), left).await {
        Ok(c) => Ok(c),
        // Past the TCP connect, any failure but the deadline is the handshake's.
        Err(IoError::Io(e)) => Err(Connect::Tls(OriginError::Tls(TlsFailure::Handshake(e)))),
        Err(e) => Err(Connect::Io(e)),
    }
}

/// The head, then the body: one write when the body is in memory, pieces read
/// back from the spool file otherwise.
async fn send_request(conn: &Conn, req: &OriginRequest, timeout: Duration) -> Result<(), String> {
    let mut bufs = vec![req.head.clone()];
    let spooled = match req.body.as_deref() {
        Some(b) => match b.memory() {
            Some(m) => {
                bufs.push(m.clone());
                None
            }
            None => Some(b),
        },
        None => None,
    };
    conn.writev_all(bufs, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(body) = spooled {
        let mut at = 0;
        while at < body.len() {
            let piece = body
                .piece(at)
                .await
                .map_err(|e| format!("reading the spooled request body: {e}"))?;
            at += piece.len() as u64;
            conn.write_all(piece, timeout)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[derive(Debug)]
enum HeadError {
    /// Closed before any byte arrived (a stale pooled connection, typically).
    ClosedEarly,
    Closed,
    /// `received`: some bytes (a 1xx, part of the head) had come.
    TimedOut {
        received: bool,
    },
    /// The shard is stopping.
    Stopped,
    Io(std::io::Error),
    Bad(response::ResponseError),
}

impl HeadError {
    fn into_error(self, receive_secs: u64) -> OriginError {
        match self {
            HeadError::ClosedEarly => OriginError::ClosedBeforeHead,
            HeadError::Closed => OriginError::ClosedMidHead,
            HeadError::TimedOut { received: false } => OriginError::ResponseTimeout(receive_secs),
            HeadError::TimedOut { received: true } => OriginError::HeadTimeout(receive_secs),
            HeadError::Stopped => OriginError::Stopped,
            HeadError::Io(e) => OriginError::ResetBeforeHead(e.kind()),
            HeadError::Bad(e) => OriginError::BadHead(e),
        }
    }
}

/// Reads the final response head (skipping 1xx interim responses).
/// `timeout` bounds the whole wait for the final head, so interim responses
/// trickling in cannot hold the exchange open; at most `MAX_INTERIM` are skipped.
async fn read_head(
    conn: &Conn,
    timeout: Duration,
) -> Result<(ResponseHead, BytesMut, Vec<ResponseHead>), HeadError> {
    let mut buf = BytesMut::with_capacity(ORIGIN_READ);
    let mut received = false;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interim = Vec::new();
    let mut seen = 0usize;
    let mut kept = 0usize;
    loop {
        match response::parse(&mut buf, MAX_RESPONSE_HEAD) {
            Ok(Some(h)) if h.is_informational() => {
                seen += 1;
                if h.status == 101 || seen > MAX_INTERIM {
                    return Err(HeadError::Bad(response::ResponseError::Malformed));
                }
                if h.status != 100 && kept + h.raw_len() <= MAX_INTERIM_BYTES {
                    kept += h.raw_len();
                    interim.push(h);
                }
                continue;
            }
            Ok(Some(h)) => return Ok((h, buf, interim)),
            Ok(None) => {}
            Err(e) => return Err(HeadError::Bad(e)),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.read(&mut buf, left).await {
            Ok(0) if !received => return Err(HeadError::ClosedEarly),
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => received = true,
            Err(IoError::TimedOut) => return Err(HeadError::TimedOut { received }),
            Err(IoError::Io(e)) if !received => return Err(HeadError::Io(e)),
            Err(IoError::Io(e)) => {
                return Err(HeadError::Bad(response::ResponseError::Io(e.kind())))
            }
            Err(IoError::Stopped) => return Err(HeadError::Stopped),
        }
    }
}
