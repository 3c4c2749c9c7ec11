//! HTTP/2 toward clients, with the `h2` crate: the connection (h2 after ALPN
//! `h2`, or h2c by prior knowledge), its limits, and the HTTP/2 side of the seam.
//! Each stream becomes a [`Request`] and goes through the same request path as
//! HTTP/1 (hit, fill, pass-through unchanged).
//!
//! h2 needs `AsyncRead + AsyncWrite`; [`H2Io`] bridges to the ring with owned
//! buffers and keeps its in-flight read and write across polls (a poll adapter
//! that drops them never progresses: tokio-uring issue 318).

use crate::config::tls::CertSet;
use crate::context::{Live, ShardCtx};
use crate::exchange::{
    BodyLen, ClientGone, ConnFacts, Downstream, ExchangeError, Head, Protocol, Request,
};
use crate::http1::RequestHead;
use crate::net::{Conn, IoError};
use crate::proxy::{self, Refused};
use crate::spool::{Charge, RequestBody};
use bytes::{Bytes, BytesMut};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4): h2c by prior knowledge.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream may wait this long for the client to open its window.
const SEND_TIMEOUT: Duration = crate::downstream::http1::SEND_TIMEOUT;
/// Reads on an HTTP/2 connection wait as long as the connection lives: idleness
/// is judged by open streams, not by a quiet socket.
const READ_FOREVER: Duration = Duration::from_secs(24 * 3600);
/// Largest decoded header list a request may have (then 431).
const MAX_HEADER_LIST: u32 = 32 * 1024;

type ReadOp = Pin<Box<dyn Future<Output = (Result<usize, IoError>, BytesMut)>>>;
type WriteOp = Pin<Box<dyn Future<Output = Result<(), IoError>>>>;

fn io_err(e: IoError) -> io::Error {
    match e {
        IoError::Io(e) => e,
        IoError::TimedOut => io::ErrorKind::TimedOut.into(),
        IoError::Stopped => io::ErrorKind::ConnectionAborted.into(),
    }
}

/// `AsyncRead + AsyncWrite` over a [`Conn`] (plain or TLS) for h2. A write is
/// accepted into an owned buffer and completes behind the call (write-behind);
/// the next write, flush or shutdown waits for it first.
pub struct H2Io {
    conn: Conn,
    /// Bytes read and not yet handed to h2.
    rbuf: BytesMut,
    read: Option<ReadOp>,
    write: Option<WriteOp>,
}

impl H2Io {
    pub fn new(conn: Conn, already: BytesMut) -> H2Io {
        H2Io {
            conn,
            rbuf: already,
            read: None,
            write: None,
        }
    }

    fn poll_pending_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(w) = self.write.as_mut() {
            let r = std::task::ready!(w.as_mut().poll(cx));
            self.write = None;
            r.map_err(io_err)?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_write(&mut self, cx: &mut Context<'_>, data: Bytes) -> io::Result<()> {
        let conn = self.conn.clone();
        let mut op: WriteOp = Box::pin(async move { conn.write_all(data, SEND_TIMEOUT).await });
        match op.as_mut().poll(cx) {
            Poll::Ready(r) => r.map_err(io_err),
            Poll::Pending => {
                self.write = Some(op);
                Ok(())
            }
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.rbuf.is_empty() {
                let n = this.rbuf.len().min(out.remaining());
                out.put_slice(&this.rbuf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read.is_none() {
                let conn = this.conn.clone();
                let mut buf = std::mem::take(&mut this.rbuf);
                this.read = Some(Box::pin(async move {
                    let r = conn.read(&mut buf, READ_FOREVER).await;
                    (r, buf)
                }));
            }
            let op = this.read.as_mut().expect("set above");
            let (r, buf) = std::task::ready!(op.as_mut().poll(cx));
            this.read = None;
            this.rbuf = buf;
            match r {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending_write(cx))?;
        self.start_write(cx, Bytes::copy_from_slice(data))?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending_write(cx))?;
        // One owned buffer, one write: frames and DATA payloads together.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut all = BytesMut::with_capacity(total);
        for b in bufs {
            all.extend_from_slice(b);
        }
        self.start_write(cx, all.freeze())?;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pending_write(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pending_write(cx)
    }
}

/// Serves one HTTP/2 connection until it closes. `already` holds bytes read
/// before the switch (the preface of an h2c client).
pub async fn serve(
    shard: Rc<ShardCtx>,
    conn: Conn,
    facts: ConnFacts,
    certs: Option<Arc<CertSet>>,
    already: BytesMut,
) {
    let settings = shard.shared.live.load().config.server.http2.clone();
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_streams)
        .initial_window_size(settings.window)
        .initial_connection_window_size(settings.window.max(1 << 20))
        .max_send_buffer_size(settings.stream_mem as usize)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024));
    let handshake = builder.handshake::<_, Bytes>(H2Io::new(conn.clone(), already));
    let mut h2 = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log::debug!("{}: HTTP/2 handshake failed: {e}", facts.peer);
            conn.shutdown();
            return;
        }
        Err(_) => {
            conn.shutdown();
            return;
        }
    };
    let ctl = Rc::new(ConnCtl::new());
    let idle = Duration::from_secs(u64::from(settings.keepalive_secs.max(1)));
    let mut closing: Option<tokio::time::Instant> = None;
    let mut idle_goaway = false;
    // Streams refused for the handler bound or reset as malformed, and streams
    // the client reset while they were being served, per window: past the
    // budget it is a flood (Rapid Reset, CVE-2023-44487, is the second).
    let budget = 2 * settings.max_streams + 100;
    // (since, refused, client resets and malformed streams at `since`)
    let mut window = (tokio::time::Instant::now(), 0u32, 0u32, 0u32);
    loop {
        let deadline = match closing {
            Some(d) => d,
            None => ctl.quiet_since.get() + idle,
        };
        tokio::select! {
            next = h2.accept() => match next {
                Some(Ok((req, respond))) => {
                    // A kTLS session near its record limit: GOAWAY, in-flight
                    // streams finish (the drain's bound).
                    if closing.is_none() && conn.near_record_limit() {
                        h2.graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + shard.shared.drain_timeout);
                    }
                    let now = tokio::time::Instant::now();
                    if now.duration_since(window.0) >= RESET_WINDOW {
                        window = (now, 0, ctl.client_resets.get(), ctl.malformed.get());
                    }
                    let resets = ctl.client_resets.get() - window.2;
                    let refused = window.1 + (ctl.malformed.get() - window.3);
                    if refused > budget || resets > budget {
                        shard.stats().h2_goaways.fetch_add(1, Relaxed);
                        log::info!(
                            "{}: HTTP/2 flood ({refused} refused or malformed, {resets} reset while served in {}s): GOAWAY ENHANCE_YOUR_CALM",
                            facts.peer,
                            RESET_WINDOW.as_secs()
                        );
                        h2.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                        break;
                    }
                    // h2 bounds open streams; handlers of streams the client
                    // reset end when they notice, and are bounded too meanwhile.
                    if ctl.open.get() >= 2 * settings.max_streams as usize {
                        let mut respond = respond;
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        window.1 += 1;
                        continue;
                    }
                    shard.stats().requests.fetch_add(1, Relaxed);
                    ctl.open.set(ctl.open.get() + 1);
                    let (s, c, k) = (shard.clone(), certs.clone(), ctl.clone());
                    tokio_uring::spawn(async move {
                        Box::pin(stream(&s, facts, c, req, respond, &k)).await;
                        k.open.set(k.open.get() - 1);
                        if k.open.get() == 0 {
                            k.quiet_since.set(tokio::time::Instant::now());
                            k.done.notify_waiters();
                        }
                    });
                }
                Some(Err(e)) => {
                    // h2 found a protocol error or a flood and sent GOAWAY (not
                    // the client's own GOAWAY, nor a broken socket).
                    if e.is_library() {
                        shard.stats().h2_goaways.fetch_add(1, Relaxed);
                    }
                    log::debug!("{}: HTTP/2 connection error: {e}", facts.peer);
                    break;
                }
                None => break,
            },
            _ = shard.drain_started(), if closing.is_none() => {
                // GOAWAY: in-flight streams finish, new ones are refused.
                h2.graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + shard.shared.drain_timeout);
            }
            _ = tokio::time::sleep_until(deadline) => {
                if closing.is_some() {
                    if idle_goaway && (ctl.open.get() > 0 || h2.has_streams()) {
                        // A stream that raced the idle GOAWAY, or data h2 still
                        // holds for a slow reader, gets the drain bound once.
                        idle_goaway = false;
                        closing = Some(tokio::time::Instant::now() + shard.shared.drain_timeout);
                        continue;
                    }
                    h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                    break;
                }
                if ctl.open.get() == 0 {
                    // No handler for `idle`: GOAWAY, whatever streams the client
                    // keeps half open.
                    h2.graceful_shutdown();
                    idle_goaway = true;
                    // A client that never answers the shutdown PING is cut off.
                    closing = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                } else {
                    ctl.quiet_since.set(tokio::time::Instant::now());
                }
            }
        }
    }
    // Handlers cannot progress without the connection being polled: they are
    // told to stop, and the connection waits for them (its admission slot
    // bounds them too).
    ctl.closed.set(true);
    ctl.gone.notify_waiters();
    let handlers = async {
        while ctl.open.get() > 0 {
            let done = ctl.done.notified();
            if ctl.open.get() == 0 {
                break;
            }
            done.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), handlers).await;
    // Lets h2 write what it has queued (a GOAWAY) for a moment. Dropping it
    // then drops a bridge write still in flight, with the TLS writer it holds.
    let closed = std::future::poll_fn(|cx| h2.poll_closed(cx));
    let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
    drop(h2);
    Box::pin(conn.close_idle()).await;
}

/// Client resets are counted over this window.
const RESET_WINDOW: Duration = Duration::from_secs(10);

/// What a connection and its stream handlers share (one shard, one thread).
struct ConnCtl {
    /// Handlers running.
    open: Cell<usize>,
    /// When the last handler ended (or the connection began).
    quiet_since: Cell<tokio::time::Instant>,
    /// Streams the client reset while they were being served.
    client_resets: Cell<u32>,
    /// Streams cairn reset as malformed: a client may not draw resets
    /// without bound either.
    malformed: Cell<u32>,
    /// The connection loop ended: handlers stop.
    closed: Cell<bool>,
    gone: tokio::sync::Notify,
    /// The last handler ended.
    done: tokio::sync::Notify,
}

impl ConnCtl {
    fn new() -> ConnCtl {
        ConnCtl {
            open: Cell::new(0),
            quiet_since: Cell::new(tokio::time::Instant::now()),
            client_resets: Cell::new(0),
            malformed: Cell::new(0),
            closed: Cell::new(false),
            gone: tokio::sync::Notify::new(),
            done: tokio::sync::Notify::new(),
        }
    }

    async fn gone(&self) {
        let n = self.gone.notified();
        if self.closed.get() {
            return;
        }
        n.await
    }
}

/// The HTTP/1.1 head a stream's pseudo-headers and fields make, parsed by the
/// same parser and limits as HTTP/1 requests (so every check applies).
/// `Err`: malformed (RFC 9113 §8.1.1), answered with RST_STREAM(PROTOCOL_ERROR).
fn synthesize(
    parts: &http::request::Parts,
    body_len: Option<u64>,
) -> Result<BytesMut, &'static str> {
    let mut hosts = parts
        .headers
        .get_all(http::header::HOST)
        .iter()
        .map(|h| h.to_str().map_err(|_| "a Host that is not text"));
    let authority = match parts.uri.authority() {
        Some(a) => {
            let a = a.as_str();
            if a.contains('@') {
                return Err(":authority with userinfo");
            }
            // §8.3.1: a Host naming another entity makes the request malformed.
            for h in hosts {
                if !h?.eq_ignore_ascii_case(a) {
                    return Err("Host differs from :authority");
                }
            }
            a.to_owned()
        }
        None => {
            let h = hosts.next().ok_or("no :authority and no Host")??;
            if hosts.next().is_some() {
                return Err("more than one Host");
            }
            h.to_owned()
        }
    };
    let path = if parts.method == http::Method::CONNECT {
        // Authority-form, for the HTTP/1 path to answer as it answers CONNECT.
        authority.clone()
    } else {
        // HTTP/2 allows only origin-form (or `*` for OPTIONS), so an absolute
        // URI cannot route around :authority (http's PathAndQuery refuses one
        // too; this does not rest on it).
        let p = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .ok_or("no :path")?;
        let asterisk = p == "*" && parts.method == http::Method::OPTIONS;
        if !p.starts_with('/') && !asterisk {
            return Err(":path is not origin-form");
        }
        p.to_owned()
    };
    let mut raw = BytesMut::with_capacity(256);
    raw.extend_from_slice(parts.method.as_str().as_bytes());
    raw.extend_from_slice(b" ");
    raw.extend_from_slice(path.as_bytes());
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    raw.extend_from_slice(authority.as_bytes());
    raw.extend_from_slice(b"\r\n");
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        let v = value.as_bytes();
        if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err("CR, LF or NUL in a field value");
        }
        match name.as_str() {
            "host" | "content-length" | "transfer-encoding" | "connection" | "te" => continue,
            // RFC 9113 §8.2.3: crumbs are joined for HTTP/1.1.
            "cookie" => {
                cookies.push(v);
                continue;
            }
            _ => {}
        }
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v);
        raw.extend_from_slice(b"\r\n");
    }
    if !cookies.is_empty() {
        raw.extend_from_slice(b"Cookie: ");
        raw.extend_from_slice(&cookies.join(&b"; "[..]));
        raw.extend_from_slice(b"\r\n");
    }
    if let Some(n) = body_len {
        raw.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    Ok(raw)
}

/// Request bodies over HTTP/2 are held in memory (not spooled yet): at most
/// this much per stream, past it 413.
pub const MAX_H2_BODY: u64 = 1 << 20;

/// One stream, raced against the client resetting it and the connection
/// ending: a stream nobody waits for stops (an origin fetch for a reset stream
/// is not made), and resets while served are counted for the flood bound.
async fn stream(
    shard: &ShardCtx,
    facts: ConnFacts,
    certs: Option<Arc<CertSet>>,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    ctl: &ConnCtl,
) {
    let slot = Rc::new(std::cell::RefCell::new(Slot {
        respond,
        send: None,
        local_reset: false,
        client_reset: false,
    }));
    let work = serve_stream(shard, facts, certs, req, slot.clone(), ctl);
    let reset = std::future::poll_fn(|cx| {
        let mut sl = slot.borrow_mut();
        let sl = &mut *sl;
        if sl.local_reset {
            return Poll::Pending; // the work ends by itself
        }
        let r = match sl.send.as_mut() {
            Some(s) => s.poll_reset(cx),
            None => sl.respond.poll_reset(cx),
        };
        match r {
            Poll::Ready(Ok(_)) => Poll::Ready(()),
            // Not a reset (the connection failed): the work ends by itself.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    });
    let reset_seen = tokio::select! {
        biased;
        // The work may end because of the reset (a follower whose reset
        // leader failed the fill): still the client's reset, and counted.
        _ = work => {
            let mut sl = slot.borrow_mut();
            sl.client_reset || sl.peer_reset()
        }
        _ = reset => true,
        _ = ctl.gone() => false,
    };
    if reset_seen {
        ctl.client_resets.set(ctl.client_resets.get() + 1);
        shard.stats().h2_client_resets.fetch_add(1, Relaxed);
    }
}

/// Answers a stream cairn will not serve (its log line included).
async fn refuse(
    shard: &ShardCtx,
    live: &Live,
    facts: &ConnFacts,
    head: Option<&RequestHead>,
    received: std::time::Instant,
    ex: &mut H2Exchange,
    e: ExchangeError,
) {
    let r = Refused {
        conn: facts,
        head,
        protocol: Protocol::H2,
        received,
    };
    Box::pin(proxy::refuse(shard, live, &r, ex, e)).await;
}

/// Its head checked as HTTP/1's is (route, 421) before any body is read; the
/// body read whole (within the budget) or dropped; then served.
async fn serve_stream(
    shard: &ShardCtx,
    facts: ConnFacts,
    certs: Option<Arc<CertSet>>,
    req: http::Request<h2::RecvStream>,
    slot: Rc<std::cell::RefCell<Slot>>,
    ctl: &ConnCtl,
) {
    let received = std::time::Instant::now();
    let live = shard.shared.live.load_full();
    let limits = shard.shared.limits;
    let (parts, mut recv) = req.into_parts();
    let mut ex = H2Exchange::new(slot, parts.method == http::Method::HEAD);
    ex.early_hints = live.config.server.http2.early_hints;
    let has_body = !recv.is_end_stream();
    // The declared length (h2 holds DATA to it), for the first look at the head.
    let declared: Option<u64> = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let parse = |len: Option<u64>| -> Result<RequestHead, ExchangeError> {
        let mut raw = synthesize(&parts, len).map_err(ExchangeError::RequestBody)?;
        match crate::http1::request::parse(&mut raw, &limits) {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(ExchangeError::Internal(
                "an HTTP/2 head did not parse whole",
            )),
            Err(e) => Err(e.into()),
        }
    };
    if let Err(why) = synthesize(&parts, None) {
        log::debug!("{}: malformed HTTP/2 request: {why}", facts.peer);
        shard.stats().h2_stream_errors.fetch_add(1, Relaxed);
        ctl.malformed.set(ctl.malformed.get().saturating_add(1));
        ex.reset(h2::Reason::PROTOCOL_ERROR);
        return;
    }
    let first = parse(if has_body {
        Some(declared.unwrap_or(0))
    } else {
        None
    });
    let head = match first {
        Ok(h) => h,
        Err(e) => {
            refuse(shard, &live, &facts, None, received, &mut ex, e).await;
            return;
        }
    };
    let mut body = None;
    if has_body {
        let using = proxy::body_use(&live, &facts, certs.as_deref(), &head);
        let refusal = match using {
            proxy::BodyUse::Unrouted => Some(ExchangeError::UnknownVhost),
            proxy::BodyUse::Misdirected => Some(ExchangeError::Misdirected),
            proxy::BodyUse::Refused => Some(ExchangeError::MethodRefused),
            _ if declared.is_some_and(|n| n > MAX_H2_BODY.min(limits.max_body)) => {
                Some(ExchangeError::RequestBodyTooLarge)
            }
            _ => None,
        };
        if let Some(e) = refusal {
            refuse(shard, &live, &facts, Some(&head), received, &mut ex, e).await;
            return;
        }
        let keep = using == proxy::BodyUse::Forward;
        let timeout = live.config.server.request_timeout;
        let read = read_body(shard, &mut recv, keep, limits.max_body);
        let got = match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::ClientTimeout),
        };
        match got {
            Ok(Some((b, c))) => body = Some((b, c)),
            Ok(None) => {}
            Err(e) => {
                refuse(shard, &live, &facts, Some(&head), received, &mut ex, e).await;
                return;
            }
        }
    }
    // The head the origin sees declares the body it gets: the bytes read, or
    // none when the body was dropped (a cache answer needs none).
    let (head, body) = match body {
        Some((b, c)) => (
            parse(Some(b.len() as u64)),
            Some(Rc::new(RequestBody::in_memory(b, c))),
        ),
        None if has_body => (parse(None), None),
        None => (Ok(head), None),
    };
    let head = match head {
        Ok(h) => h,
        Err(_) => {
            let e = ExchangeError::Internal("an HTTP/2 head did not parse twice");
            refuse(shard, &live, &facts, None, received, &mut ex, e).await;
            return;
        }
    };
    let req = Request {
        bytes_in: head.wire_len() + body.as_ref().map_or(0, |b| b.len()),
        head,
        body: std::cell::RefCell::new(body),
        protocol: Protocol::H2,
        stream: Some(recv.stream_id().as_u32()),
        conn: facts,
        received,
        certs,
    };
    Box::pin(proxy::serve(shard, &live, &req, &mut ex)).await;
}

/// Reads a request body: kept (in memory, charged to the process-wide budget,
/// at most [`MAX_H2_BODY`]) or, when nobody will use it, dropped as it comes.
async fn read_body(
    shard: &ShardCtx,
    recv: &mut h2::RecvStream,
    keep: bool,
    max_body: u64,
) -> Result<Option<(Bytes, Charge)>, ExchangeError> {
    let cap = MAX_H2_BODY.min(max_body);
    // Charged as it arrives, before it is kept (as HTTP/1 bodies are): a
    // stream that declares a length, or opens a window, and sends nothing
    // holds none of the budget. What h2 buffers unread is bounded apart, by
    // the connection window.
    let mut charge = None;
    if keep {
        charge =
            Some(Charge::memory(&shard.shared.bodies, 0).ok_or(crate::spool::SpoolError::Budget)?);
    }
    let mut got = BytesMut::new();
    let mut seen = 0u64;
    while let Some(d) = recv.data().await {
        let d = d.map_err(|_| ExchangeError::ClientGone)?;
        seen += d.len() as u64;
        if seen > max_body || (keep && seen > cap) {
            return Err(ExchangeError::RequestBodyTooLarge);
        }
        if let Some(c) = charge.as_mut() {
            // Charged before the window reopens for the next DATA.
            c.grow_to(seen)?;
            got.extend_from_slice(&d);
        }
        let _ = recv.flow_control().release_capacity(d.len());
    }
    Ok(charge.map(|c| (got.freeze(), c)))
}

/// The `rel=preload` links (RFC 8288) among a response's `Link` values, as one
/// `Link` value for a 103 Early Hints (RFC 8297); `None` when there are none.
/// Elements are split at commas outside `<…>` and quoted strings.
pub(crate) fn preload_links<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        let (mut start, mut angle, mut quoted) = (0, false, false);
        for i in 0..=v.len() {
            let split = match v.get(i) {
                None => true,
                Some(b'<') if !quoted => {
                    angle = true;
                    false
                }
                Some(b'>') if !quoted => {
                    angle = false;
                    false
                }
                Some(b'"') if !angle => {
                    quoted = !quoted;
                    false
                }
                Some(b',') => !angle && !quoted,
                Some(_) => false,
            };
            if !split {
                continue;
            }
            let link = crate::http1::headers::trim(&v[start..i]);
            start = i + 1;
            if is_preload(link) {
                if !out.is_empty() {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(link);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `<uri>; …; rel="preload …"`: a `rel` parameter naming `preload`.
fn is_preload(link: &[u8]) -> bool {
    if !link.starts_with(b"<") {
        return false;
    }
    let Some(end) = link.iter().position(|&b| b == b'>') else {
        return false;
    };
    link[end + 1..].split(|&b| b == b';').any(|param| {
        let param = crate::http1::headers::trim(param);
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (name, value) = (crate::http1::headers::trim(&param[..eq]), &param[eq + 1..]);
        let value = crate::http1::headers::trim(value);
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        name.eq_ignore_ascii_case(b"rel")
            && value
                .split(|&b| b == b' ')
                .any(|t| t.eq_ignore_ascii_case(b"preload"))
    })
}

/// Fields HTTP/2 must not carry (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"te",
        b"content-length",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Streaming,
    Done,
    Aborted,
}

/// A stream's sending halves, shared by its exchange and the task that
/// watches for the client's reset (never borrowed across an await).
struct Slot {
    respond: h2::server::SendResponse<Bytes>,
    send: Option<h2::SendStream<Bytes>>,
    /// cairn reset the stream itself: h2 reports that reset too, and it is
    /// not the client's.
    local_reset: bool,
    /// The client had reset it when cairn gave up on it.
    client_reset: bool,
}

impl Slot {
    /// Whether the client has reset the stream, without waiting (and without
    /// leaving a waker behind that anything relies on).
    fn peer_reset(&mut self) -> bool {
        if self.local_reset {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let r = match self.send.as_mut() {
            Some(s) => s.poll_reset(&mut cx),
            None => self.respond.poll_reset(&mut cx),
        };
        matches!(r, Poll::Ready(Ok(_)))
    }
}

/// One stream's response side of the seam.
struct H2Exchange {
    slot: Rc<std::cell::RefCell<Slot>>,
    head_request: bool,
    /// `<Http2><EarlyHints>`: a 103 with the preload links before the head.
    early_hints: bool,
    state: State,
    sent: u64,
    head_len: u64,
}

impl H2Exchange {
    fn new(slot: Rc<std::cell::RefCell<Slot>>, head_request: bool) -> H2Exchange {
        H2Exchange {
            slot,
            head_request,
            early_hints: false,
            state: State::Fresh,
            sent: 0,
            head_len: 0,
        }
    }

    fn reset(&mut self, reason: h2::Reason) {
        let mut sl = self.slot.borrow_mut();
        if sl.peer_reset() {
            sl.client_reset = true;
        }
        sl.local_reset = true;
        match sl.send.as_mut() {
            Some(s) => s.send_reset(reason),
            None => sl.respond.send_reset(reason),
        }
        self.state = State::Aborted;
    }
}

impl Downstream for H2Exchange {
    fn bind_vhost(&mut self, _vhost: &crate::config::Vhost) {}

    async fn send_head(&mut self, head: &Head<'_>) -> Result<(), ClientGone> {
        if self.state != State::Fresh {
            return Err(ClientGone);
        }
        let mut b = http::Response::builder().status(head.status);
        let mut len = 0u64;
        let relay_length = self.head_request && head.body == BodyLen::Empty;
        for (n, v) in head.fields() {
            if connection_specific(n)
                && !(relay_length && n.eq_ignore_ascii_case(b"content-length"))
            {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(n),
                http::HeaderValue::from_bytes(v),
            ) else {
                continue;
            };
            len += (n.len() + v.len() + 4) as u64;
            b = b.header(name, value);
        }
        if let BodyLen::Known(n) = head.body {
            b = b.header(http::header::CONTENT_LENGTH, n);
        }
        let Ok(resp) = b.body(()) else {
            self.abort();
            return Err(ClientGone);
        };
        if self.early_hints && head.status >= 200 {
            let links = head
                .fields()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"link"))
                .map(|(_, v)| v);
            if let Some(links) = preload_links(links) {
                let hints = http::HeaderValue::from_bytes(&links).ok().and_then(|v| {
                    http::Response::builder()
                        .status(103)
                        .header(http::header::LINK, v)
                        .body(())
                        .ok()
                });
                if let Some(hints) = hints {
                    // A refusal here leaves the final response to fail or not.
                    let _ = self.slot.borrow_mut().respond.send_informational(hints);
                }
            }
        }
        let end =
            self.head_request || head.body == BodyLen::Empty || head.body == BodyLen::Known(0);
        let sent = self.slot.borrow_mut().respond.send_response(resp, end);
        match sent {
            Ok(s) => {
                self.slot.borrow_mut().send = Some(s);
                self.head_len = len;
                self.sent = len;
                self.state = if end { State::Done } else { State::Streaming };
                Ok(())
            }
            Err(_) => {
                self.state = State::Aborted;
                Err(ClientGone)
            }
        }
    }

    async fn send_body(&mut self, mut piece: Bytes) -> Result<(), ClientGone> {
        // Ended at the head (HEAD, an empty body): nothing more to send.
        if piece.is_empty() || self.state == State::Done {
            return match self.state {
                State::Aborted => Err(ClientGone),
                _ => Ok(()),
            };
        }
        if self.state != State::Streaming {
            return Err(ClientGone);
        }
        // Only what the client's window lets out is handed to h2, so a slow
        // reader costs at most the stream's send buffer (StreamMaxMemSize).
        while !piece.is_empty() {
            if let Some(s) = self.slot.borrow_mut().send.as_mut() {
                s.reserve_capacity(piece.len());
            }
            let cap = std::future::poll_fn(|cx| match self.slot.borrow_mut().send.as_mut() {
                Some(s) => s.poll_capacity(cx),
                None => Poll::Ready(None),
            });
            match tokio::time::timeout(SEND_TIMEOUT, cap).await {
                Ok(Some(Ok(n))) if n > 0 => {
                    // A copy: what h2 holds for a slow reader must not lease a
                    // cache segment past the hit's send bound.
                    let chunk = Bytes::copy_from_slice(&piece.split_to(n.min(piece.len())));
                    let k = chunk.len() as u64;
                    let mut sl = self.slot.borrow_mut();
                    let Some(s) = sl.send.as_mut() else {
                        return Err(ClientGone);
                    };
                    if s.send_data(chunk, false).is_err() {
                        drop(sl);
                        self.state = State::Aborted;
                        return Err(ClientGone);
                    }
                    self.sent += k;
                }
                // No capacity after all (reassigned): wait a turn, not spin.
                Ok(Some(Ok(_))) => tokio::task::yield_now().await,
                Ok(_) | Err(_) => {
                    self.abort();
                    return Err(ClientGone);
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientGone> {
        match self.state {
            State::Aborted => Err(ClientGone),
            _ => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), ClientGone> {
        match self.state {
            State::Done => Ok(()),
            State::Streaming => {
                let mut sl = self.slot.borrow_mut();
                let s = sl.send.as_mut().ok_or(ClientGone)?;
                s.send_data(Bytes::new(), true).map_err(|_| ClientGone)?;
                drop(sl);
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ClientGone),
        }
    }

    fn abort(&mut self) {
        self.reset(h2::Reason::INTERNAL_ERROR);
    }

    fn head_sent(&self) -> bool {
        self.state != State::Fresh
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn body_bytes_sent(&self) -> u64 {
        self.sent.saturating_sub(self.head_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_links_for_early_hints() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (
                &["</a.css>; rel=preload; as=style"],
                Some("</a.css>; rel=preload; as=style"),
            ),
            (
                &["</a.css>; rel=\"preload\"", "</n>; rel=next"],
                Some("</a.css>; rel=\"preload\""),
            ),
            (
                &["</a.css>; rel=preload, </n>; rel=next, </b.js>; rel=\"prefetch PRELOAD\""],
                Some("</a.css>; rel=preload, </b.js>; rel=\"prefetch PRELOAD\""),
            ),
            // Commas inside the URI or a quoted string do not split.
            (
                &["</a,b.css>; rel=preload; title=\"x, y\""],
                Some("</a,b.css>; rel=preload; title=\"x, y\""),
            ),
            (&["</n>; rel=next", "</p>; rel=preloaded"], None),
            (&["rel=preload"], None),
            (&["<unclosed; rel=preload"], None),
            (&[""], None),
        ];
        for (values, want) in cases {
            let got = preload_links(values.iter().map(|v| v.as_bytes()));
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{values:?}");
        }
    }

    #[test]
    fn a_stream_becomes_an_http1_head_the_same_parser_checks() {
        let req = http::Request::builder()
            .method("GET")
            .uri("https://www.example.com/a?b=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        let raw = synthesize(&parts, None).unwrap();
        assert_eq!(
            &raw[..],
            &b"GET /a?b=1 HTTP/1.1\r\nHost: www.example.com\r\naccept: */*\r\nCookie: a=1; b=2\r\n\r\n"[..]
        );
        let mut b = raw;
        let head = crate::http1::request::parse(&mut b, &Default::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.host(), Some(&b"www.example.com"[..]));
        // No authority and no Host: malformed.
        let (parts, _) = http::Request::builder()
            .uri("/x")
            .body(())
            .unwrap()
            .into_parts();
        assert!(synthesize(&parts, None).is_err());
        // A body's length is declared for the origin.
        let (parts, _) = http::Request::builder()
            .method("POST")
            .uri("http://h/p")
            .header("content-length", "99")
            .body(())
            .unwrap()
            .into_parts();
        let raw = synthesize(&parts, Some(3)).unwrap();
        assert!(raw.ends_with(b"Content-Length: 3\r\n\r\n"), "{raw:?}");
        assert!(!raw.windows(2).any(|w| w == b"99"));
    }

    #[test]
    fn malformed_requests_are_refused_before_any_http1_head_is_made() {
        // (method, uri, Host fields, malformed?)
        let cases: &[(&str, &str, &[&str], bool)] = &[
            ("GET", "https://a.example/x", &[], false),
            ("GET", "https://a.example/x", &["a.example"], false),
            ("GET", "https://a.example/x", &["A.EXAMPLE"], false),
            ("GET", "https://a.example/x", &["b.example"], true),
            (
                "GET",
                "https://a.example/x",
                &["a.example", "b.example"],
                true,
            ),
            ("GET", "https://u@a.example/x", &[], true),
            ("GET", "/x", &["a.example"], false),
            ("GET", "/x", &["a.example", "a.example"], true),
            ("GET", "/x", &[], true),
            ("OPTIONS", "*", &["a.example"], false),
            ("GET", "*", &["a.example"], true),
        ];
        for &(method, uri, hosts, bad) in cases {
            let mut b = http::Request::builder().method(method).uri(uri);
            for h in hosts {
                b = b.header("host", *h);
            }
            let (parts, _) = b.body(()).unwrap().into_parts();
            assert_eq!(
                synthesize(&parts, None).is_err(),
                bad,
                "{method} {uri} {hosts:?}"
            );
        }
        // (An absolute URI in :path never gets here: http's PathAndQuery
        // refuses a path without a leading `/`, and h2 resets the stream.)
    }
}
