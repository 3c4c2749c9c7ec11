//! HTTP/1.x toward clients: the connection loop (parse, pipelining, bodies and
//! 100-continue, lingering close) and the HTTP/1 side of the seam: keep-alive
//! decisions (KA-1..7), framing (Content-Length, chunked, close-delimited for
//! 1.0), and rendering a structured head to bytes at the very last moment.

use crate::context::{Live, ShardCtx};
use crate::exchange::{
    BodyLen, ClientGone, ConnFacts, Downstream, ExchangeError, Head, Protocol, Request,
};
use crate::http1::body::{chunk_header, BodyDecoder, BodyError, Decoded, LAST_CHUNK};
use crate::http1::headers::{reason, write_decimal};
use crate::http1::keepalive::{self, Decision, RequestFacts};
use crate::http1::request::{self, Framing, Version};
use crate::http1::{Limits, RequestHead};
use crate::net::{Conn, IdleRead, IoError};
use crate::proxy::{self, Refused};
use crate::spool::{Budget, Charge, RequestBody, Spool, SpoolError, MEMORY_BODY};
use bytes::{Bytes, BytesMut};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest a client may take to accept response bytes before we give up on it
/// (per write that makes progress, like nginx's send_timeout).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection's read buffer between requests: a typical request head (curl's,
/// wrk's, an API client's) fits; a browser's larger one grows it once. Every
/// idle keep-alive connection holds one.
const IDLE_BUFFER: usize = 1024;
/// Read buffers above this size are not kept across idle keep-alive periods.
const KEEP_BUFFER: usize = 64 * 1024;
/// Pending pieces before a flush.
const MAX_PENDING: usize = 64;
/// A head buffer whose last head was larger is not kept.
const KEEP_HEAD: usize = 8 * 1024;
/// A write list longer than this (a streamed body's) is not kept between
/// requests.
const KEEP_PENDING: usize = 16;

/// How the response body is delimited toward the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body follows (204, 304, bodiless origin responses): an origin's
    /// Content-Length field passes through. (HEAD keeps the framing a GET would
    /// have and sends no body.)
    NoBody,
    Length(u64),
    /// Chunked toward an HTTP/1.1 client (origin was chunked or close-delimited).
    Chunked,
    /// HTTP/1.0 client and no known length: the body ends when we close.
    Close,
}

/// The framing for a body of `body` length toward a client of `version`.
pub fn framing_for(body: BodyLen, version: Version) -> ClientFraming {
    match body {
        BodyLen::Empty => ClientFraming::NoBody,
        BodyLen::Known(n) => ClientFraming::Length(n),
        BodyLen::Unknown if version == Version::Http10 => ClientFraming::Close,
        BodyLen::Unknown => ClientFraming::Chunked,
    }
}

/// The HTTP/1.1 bytes of a head: status line, fields, framing, connection
/// fields. Rendered into `buf`, the connection's own, and split off it: once
/// the previous head is written and dropped, `reserve` takes its room back,
/// so a keep-alive connection's heads cost no allocation each.
pub fn render_head(
    head: &Head<'_>,
    framing: ClientFraming,
    ka: Decision,
    buf: &mut BytesMut,
) -> Bytes {
    let (block, fields) = head.parts();
    let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    buf.clear();
    buf.reserve(block.len() + size + 160);
    let out = buf;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(head.status).as_slice());
    out.extend_from_slice(b" ");
    match head.reason {
        Some(r) => out.extend_from_slice(r),
        None => out.extend_from_slice(reason(head.status).as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // Lines cairn stored itself, well formed: copied whole.
    out.extend_from_slice(block);
    for (n, v) in fields {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::NoBody | ClientFraming::Close => {}
    }
    ka.write_headers(out);
    out.extend_from_slice(b"\r\n");
    let rendered = out.split().freeze();
    // A large head's room is not kept for the connection's life: the
    // allocation stays under about twice the largest head it kept.
    if rendered.len() > KEEP_HEAD {
        *out = BytesMut::new();
    }
    rendered
}

fn itoa3(status: u16) -> [u8; 3] {
    let s = status.clamp(100, 999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing sent yet.
    Fresh,
    Streaming,
    Done,
    Aborted,
}

/// What a connection keeps across its exchanges so that each does not
/// allocate its own: the head's bytes and the list of pieces to write.
#[derive(Default)]
pub struct Buffers {
    head: BytesMut,
    pending: Vec<Bytes>,
}

/// One exchange on an HTTP/1 connection.
pub struct H1Exchange<'c> {
    conn: &'c Conn,
    shard: &'c ShardCtx,
    version: Version,
    head_request: bool,
    facts: RequestFacts,
    nth: u32,
    /// Close after this response whatever the policy says (draining, a refusal).
    force_close: bool,
    ka: Decision,
    /// KA-6: the vhost's idle timeout for the wait that follows.
    idle: Option<Duration>,
    framing: ClientFraming,
    /// The connection's buffers, lent to each exchange in turn.
    bufs: Buffers,
    sent: u64,
    head_len: u64,
    /// Interim (1xx) heads queued before the final one: neither head nor body.
    interim_len: u64,
    state: State,
}

impl<'c> H1Exchange<'c> {
    fn new(
        conn: &'c Conn,
        shard: &'c ShardCtx,
        head: Option<&RequestHead>,
        nth: u32,
        force_close: bool,
        bufs: Buffers,
    ) -> H1Exchange<'c> {
        let facts = match head {
            Some(h) => RequestFacts {
                version: h.version,
                client_close: h.close,
                client_keep_alive: h.keep_alive,
            },
            None => RequestFacts {
                version: Version::Http11,
                client_close: true,
                client_keep_alive: false,
            },
        };
        H1Exchange {
            conn,
            shard,
            version: facts.version,
            head_request: head.is_some_and(RequestHead::is_head),
            facts,
            nth,
            force_close: force_close || head.is_none(),
            ka: Decision::Close,
            idle: None,
            framing: ClientFraming::NoBody,
            bufs,
            sent: 0,
            head_len: 0,
            interim_len: 0,
            state: State::Fresh,
        }
    }

    fn closes(&self) -> bool {
        self.ka.closes() || self.framing == ClientFraming::Close
    }
}

impl Downstream for H1Exchange<'_> {
    fn bind_vhost(&mut self, vhost: &crate::config::Vhost) {
        let policy = &vhost.options.keep_alive;
        self.ka = keepalive::decide(policy, self.facts, self.nth, self.force_close);
        self.idle = Some(Duration::from_secs(u64::from(policy.timeout_secs)));
    }

    async fn send_head(&mut self, head: &Head<'_>) -> Result<(), ClientGone> {
        if self.state != State::Fresh {
            return Err(ClientGone);
        }
        self.framing = framing_for(head.body, self.version);
        // Re-decided here: a drain may have started while we waited for the origin,
        // or a kTLS session neared its record limit.
        if self.framing == ClientFraming::Close
            || self.shard.draining()
            || self.conn.near_record_limit()
        {
            self.ka = Decision::Close;
        }
        let rendered = render_head(head, self.framing, self.ka, &mut self.bufs.head);
        self.head_len = rendered.len() as u64;
        self.bufs.pending.push(rendered);
        self.state = State::Streaming;
        Ok(())
    }

    /// HTTP/1.1 clients only (RFC 9110 §15.2: never to HTTP/1.0). Queued, not
    /// written: the caller flushes when it can afford to wait on this client.
    async fn send_interim(
        &mut self,
        status: u16,
        fields: &[(&[u8], &[u8])],
    ) -> Result<(), ClientGone> {
        if self.state != State::Fresh || self.version != Version::Http11 {
            return Ok(());
        }
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\n",
            crate::http1::headers::reason(status)
        )
        .into_bytes();
        for (n, v) in fields {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.interim_len += out.len() as u64;
        self.bufs.pending.push(Bytes::from(out));
        Ok(())
    }

    async fn send_body(&mut self, piece: Bytes) -> Result<(), ClientGone> {
        if self.state != State::Streaming {
            return Err(ClientGone);
        }
        if self.head_request || piece.is_empty() || self.framing == ClientFraming::NoBody {
            return Ok(());
        }
        if self.framing == ClientFraming::Chunked {
            self.bufs.pending.push(chunk_header(piece.len()));
            self.bufs.pending.push(piece);
            self.bufs.pending.push(Bytes::from_static(b"\r\n"));
        } else {
            self.bufs.pending.push(piece);
        }
        if self.bufs.pending.len() >= MAX_PENDING {
            self.flush().await?;
        }
        Ok(())
    }

    async fn send_file(&mut self, piece: crate::cache::FileBody) -> Result<(), ClientGone> {
        if self.state != State::Streaming {
            return Err(ClientGone);
        }
        if self.head_request || piece.is_empty() || self.framing == ClientFraming::NoBody {
            return Ok(());
        }
        if self.framing == ClientFraming::Chunked || !self.conn.can_send_file() {
            return self.send_body(piece.into_bytes()).await;
        }
        // The head (and anything queued) first: sendfile carries only the file.
        self.flush().await?;
        let (sent, r) = self
            .conn
            .send_file(piece.fd(), piece.offset(), piece.len(), SEND_TIMEOUT)
            .await;
        self.sent += sent as u64;
        self.shard
            .stats()
            .sendfile_bytes
            .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                log::debug!("client sendfile failed: {e}");
                self.state = State::Aborted;
                Err(ClientGone)
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ClientGone> {
        if self.state == State::Aborted {
            return Err(ClientGone);
        }
        if self.bufs.pending.is_empty() {
            return Ok(());
        }
        let bufs = std::mem::take(&mut self.bufs.pending);
        let n: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        match self.conn.writev_all_reusing(bufs, SEND_TIMEOUT).await {
            Ok(emptied) => {
                self.bufs.pending = emptied;
                self.sent += n;
                Ok(())
            }
            Err(e) => {
                if !matches!(e, IoError::Io(ref io) if io.kind() == std::io::ErrorKind::BrokenPipe)
                {
                    log::debug!("client write failed: {e}");
                }
                self.state = State::Aborted;
                Err(ClientGone)
            }
        }
    }

    async fn finish(&mut self) -> Result<(), ClientGone> {
        if self.state != State::Streaming {
            return Err(ClientGone);
        }
        if self.framing == ClientFraming::Chunked && !self.head_request {
            self.bufs.pending.push(Bytes::from_static(LAST_CHUNK));
        }
        self.flush().await?;
        self.state = State::Done;
        Ok(())
    }

    fn abort(&mut self) {
        self.bufs.pending.clear();
        self.state = State::Aborted;
        // At once, not when the loop sees the state: a write dropped mid-flight
        // (a send deadline) still owns its buffer, a lease on the cache, until
        // the kernel completes it, and the shutdown makes it complete.
        self.conn.shutdown();
    }

    fn head_sent(&self) -> bool {
        self.state != State::Fresh
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn body_bytes_sent(&self) -> u64 {
        self.sent
            .saturating_sub(self.head_len)
            .saturating_sub(self.interim_len)
    }
}

enum Next {
    Head(RequestHead),
    /// The HTTP/2 connection preface (h2c by prior knowledge).
    H2,
    /// The connection is finished (closed by the client, idle timeout, drain).
    Closed,
    /// The request cannot be read: answer and close.
    Refuse(ExchangeError),
    /// Quiet past [`PARK_AFTER`]: nothing of the connection is in flight.
    Park,
}

/// How long a keep-alive connection waits with a read posted (and its buffer
/// in the kernel's hands) before it is parked: a client that sends its next
/// request within this pays nothing, one that stays quiet longer pays a
/// cancel and a readiness watch once, and holds no buffer or task meanwhile.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// A plain HTTP/1 keep-alive connection between requests, with nothing in
/// flight and no buffer: what serving it again needs (the rest of what a
/// connection holds, its admission and session entry, goes with it in
/// `shard::keepalive`).
pub struct Idle {
    pub conn: Conn,
    pub wait: Waiting,
}

/// Where a quiet connection is in its keep-alive life.
pub struct Waiting {
    pub facts: ConnFacts,
    nth: u32,
    timeout: Duration,
    /// When its wait began (KA-6 counts from there, across the parking).
    since: Instant,
    parkable: bool,
}

impl Waiting {
    /// When the keep-alive timeout ends it.
    pub fn deadline(&self) -> Instant {
        self.since + self.timeout
    }

    /// Served from now on without parking (its socket could not be watched).
    pub fn unparkable(mut self) -> Waiting {
        self.parkable = false;
        self
    }
}

/// Where a connection's loop starts: its first request, or a parked wait.
struct Start {
    nth: u32,
    idle: Option<Duration>,
    since: Option<Instant>,
    parkable: bool,
}

/// Serves one client connection until it closes, or until it is quiet
/// between requests (where it is `parkable`): then it is returned to be
/// parked.
pub async fn serve(
    shard: Rc<ShardCtx>,
    conn: Conn,
    facts: ConnFacts,
    certs: Option<Arc<crate::config::tls::CertSet>>,
    parkable: bool,
) -> Option<Idle> {
    let parkable = parkable && facts.tls.is_none() && certs.is_none();
    let start = Start {
        nth: 0,
        idle: None,
        since: None,
        parkable,
    };
    run(shard, conn, facts, certs, start).await
}

/// An empty read buffer between requests: the room that taking heads off its
/// front used up is given back (in place when the last request no longer
/// holds the allocation), so the idle read never has to grow it to
/// READ_CHUNK; a large allocation goes. Checked after the `reserve`: before
/// it, `capacity` counts only the room after the last head split off, not
/// the allocation that `reserve` takes back.
fn between_requests(rbuf: &mut BytesMut) {
    rbuf.reserve(IDLE_BUFFER);
    if rbuf.capacity() > KEEP_BUFFER {
        *rbuf = BytesMut::with_capacity(IDLE_BUFFER);
    }
}

/// Serves a parked connection that became readable.
pub async fn resume(shard: Rc<ShardCtx>, conn: Conn, wait: Waiting) -> Option<Idle> {
    let start = Start {
        nth: wait.nth,
        idle: Some(wait.timeout),
        since: Some(wait.since),
        parkable: wait.parkable,
    };
    run(shard, conn, wait.facts, None, start).await
}

async fn run(
    shard: Rc<ShardCtx>,
    conn: Conn,
    facts: ConnFacts,
    certs: Option<Arc<crate::config::tls::CertSet>>,
    start: Start,
) -> Option<Idle> {
    let shared = shard.shared.clone();
    let limits = shared.limits;
    let mut idle = start.idle.unwrap_or_else(|| {
        let live = shared.live.load();
        let first_vhost = live.config.listeners[facts.group].vhosts[0];
        Duration::from_secs(u64::from(
            live.config.vhosts[first_vhost]
                .options
                .keep_alive
                .timeout_secs,
        ))
    });
    let mut resumed_since = start.since;
    let mut rbuf = BytesMut::with_capacity(IDLE_BUFFER);
    let mut bufs = Buffers::default();
    let mut nth: u32 = start.nth;
    loop {
        if rbuf.is_empty() {
            between_requests(&mut rbuf);
        }
        // Read per request: a reload reaches keep-alive connections too.
        let request_timeout = shared.live.load().config.server.request_timeout;
        // h2c by prior knowledge: only as the connection's first bytes.
        let h2c = nth == 0 && facts.tls.is_none() && shared.live.load().config.server.http2.enabled;
        let since = resumed_since.take().unwrap_or_else(Instant::now);
        // Not boxed (that was a box per request): the HTTP/1 future is then
        // 3.7 KiB instead of 1.35 + 1.2 boxed, which an unparked waiting
        // connection (TLS) pays; a quiet plain one gives the task up.
        let next = next_head(
            &shard,
            &conn,
            &mut rbuf,
            &limits,
            HeadWait {
                idle,
                request_timeout,
                h2c,
                first: nth == 0,
                since,
                park: start.parkable,
            },
        )
        .await;
        let received = std::time::Instant::now();
        let head = match next {
            Next::Head(h) => h,
            Next::H2 => {
                let rbuf = std::mem::take(&mut rbuf);
                Box::pin(crate::downstream::h2::serve(
                    shard, conn, facts, certs, rbuf,
                ))
                .await;
                return None;
            }
            Next::Closed => {
                // A TLS peer is told with close_notify (idle timeout, drain), so
                // it does not see a truncation.
                Box::pin(conn.close_idle()).await;
                return None;
            }
            Next::Park => {
                let wait = Waiting {
                    facts,
                    nth,
                    timeout: idle,
                    since,
                    parkable: true,
                };
                return Some(Idle { conn, wait });
            }
            Next::Refuse(e) => {
                let r = Refused {
                    conn: &facts,
                    head: None,
                    protocol: Protocol::Http11,
                    received,
                };
                let live = shard.shared.live.load_full();
                Box::pin(refuse_and_close(&shard, &live, &conn, &r, nth + 1, e)).await;
                return None;
            }
        };
        // h2c by Upgrade: plaintext only, with HTTP/2 on, for a request
        // without a body; it is then answered as stream 1.
        // Pipelined HTTP/1 bytes after it would be lost to the switch: then
        // no upgrade (only the start of the client's preface may follow).
        let preface = crate::downstream::h2::PREFACE;
        let only_preface = preface.starts_with(&rbuf[..rbuf.len().min(preface.len())]);
        if facts.tls.is_none()
            && only_preface
            && shard.shared.live.load().config.server.http2.enabled
        {
            if let Some(up) = crate::downstream::h2c::upgrade_frame(&head) {
                let rbuf = std::mem::take(&mut rbuf);
                Box::pin(upgrade_h2c(shard, conn, facts, certs, rbuf, up)).await;
                return None;
            }
        }
        nth = nth.saturating_add(1);
        shard.stats().requests.fetch_add(1, Relaxed);
        let protocol = match head.version {
            Version::Http10 => Protocol::Http10,
            Version::Http11 => Protocol::Http11,
        };
        let refused = |head| Refused {
            conn: &facts,
            head: Some(head),
            protocol,
            received,
        };
        // One configuration for the whole request: the body is read for what this
        // one says, and the request is served under it, even across a reload.
        let live = shard.shared.live.load_full();
        let has_body = !matches!(head.framing, Framing::None | Framing::Length(0));
        let body = if has_body {
            let using = proxy::body_use(&live, &facts, certs.as_deref(), &head);
            let unread = match using {
                proxy::BodyUse::Unrouted => Some(ExchangeError::UnknownVhost),
                proxy::BodyUse::Misdirected => Some(ExchangeError::Misdirected),
                proxy::BodyUse::Refused => Some(ExchangeError::MethodRefused),
                _ => None,
            };
            let read = match unread {
                // Refused before reading (or inviting, with 100 Continue) a body
                // nobody will take; closed, since it stays unread.
                Some(e) => Err(e),
                None => {
                    let reading = BodyRead {
                        conn: &conn,
                        head: &head,
                        limits: &limits,
                        timeout: live.config.server.request_timeout,
                        budget: &shard.shared.bodies,
                        keep: using == proxy::BodyUse::Forward,
                    };
                    Box::pin(reading.run(&mut rbuf)).await
                }
            };
            match read {
                Ok(b) => b,
                Err(e) => {
                    let r = refused(&head);
                    Box::pin(refuse_and_close(&shard, &live, &conn, &r, nth, e)).await;
                    return None;
                }
            }
        } else {
            None
        };
        // A body nobody takes is drained, not kept: its declared length was read.
        let body_in = match (&body, head.framing) {
            (Some(b), _) => b.len(),
            (None, Framing::Length(n)) => n,
            (None, _) => 0,
        };
        let req = Request {
            bytes_in: head.wire_len() + body_in,
            head,
            body: std::cell::RefCell::new(body),
            protocol,
            stream: None,
            conn: facts,
            received,
            certs: certs.clone(),
        };
        let lent = std::mem::take(&mut bufs);
        let mut ex = H1Exchange::new(&conn, &shard, Some(&req.head), nth, shard.draining(), lent);
        Box::pin(proxy::serve(&shard, &live, &req, &mut ex)).await;
        bufs = std::mem::take(&mut ex.bufs);
        bufs.pending.clear();
        // A streamed body's long list is not kept through the idle wait.
        if bufs.pending.capacity() > KEEP_PENDING {
            bufs.pending = Vec::new();
        }
        if let Some(t) = ex.idle {
            idle = t;
        }
        match ex.state {
            State::Done if !ex.closes() => {}
            State::Done => {
                // A client that sent `Connection: close` (RFC 9112 §9.6: it
                // sends no further request), or HTTP/1.0 without keep-alive;
                // its body was read before the response.
                let f = ex.facts;
                let client_done =
                    f.client_close || (f.version == Version::Http10 && !f.client_keep_alive);
                Box::pin(conn.close_gracefully(client_done)).await;
                return None;
            }
            State::Aborted | State::Streaming | State::Fresh => {
                conn.shutdown();
                return None;
            }
        }
    }
}

/// Sends the 101, reads the client's preface and first SETTINGS (bounded by
/// the request timeout and one frame's size), puts the `HTTP2-Settings` entries
/// in front of that frame's, splices the upgrading request in after it as
/// stream 1, and serves the connection as HTTP/2.
async fn upgrade_h2c(
    shard: Rc<ShardCtx>,
    conn: Conn,
    facts: ConnFacts,
    certs: Option<Arc<crate::config::tls::CertSet>>,
    mut rbuf: BytesMut,
    up: crate::downstream::h2c::Upgrade,
) {
    use crate::downstream::h2c;
    let timeout = shard.shared.live.load().config.server.request_timeout;
    let switching = Bytes::from_static(h2c::SWITCHING);
    if conn.write_all(switching, timeout).await.is_err() {
        conn.shutdown();
        return;
    }
    let preface = crate::downstream::h2::PREFACE;
    let deadline = Instant::now() + timeout;
    let settings_end = loop {
        let have = rbuf.len().min(preface.len());
        if rbuf[..have] != preface[..have] {
            log::debug!("{}: no HTTP/2 preface after the h2c 101", facts.peer);
            conn.shutdown();
            return;
        }
        if rbuf.len() >= preface.len() {
            match h2c::first_frame(&rbuf[preface.len()..]) {
                h2c::FirstFrame::Wrong => {
                    log::debug!("{}: no SETTINGS after the h2c preface", facts.peer);
                    conn.shutdown();
                    return;
                }
                h2c::FirstFrame::Settings(n) => break preface.len() + n,
                h2c::FirstFrame::Incomplete => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.read(&mut rbuf, left).await {
            Ok(0) | Err(_) => {
                conn.shutdown();
                return;
            }
            Ok(_) => {}
        }
    };
    let rest = rbuf.split_off(settings_end);
    let settings = up.merged_settings(&rbuf[preface.len()..]);
    rbuf.truncate(preface.len());
    rbuf.extend_from_slice(&settings);
    rbuf.extend_from_slice(&up.stream1);
    rbuf.extend_from_slice(&rest);
    Box::pin(crate::downstream::h2::serve(
        shard, conn, facts, certs, rbuf,
    ))
    .await;
}

/// Answers a request that cannot be served (refused head, unknown vhost with a
/// body, body error) with its log line, and ends the connection: at once for a
/// client that is gone, else with a lingering close.
async fn refuse_and_close(
    shard: &ShardCtx,
    live: &Live,
    conn: &Conn,
    r: &Refused<'_>,
    nth: u32,
    e: ExchangeError,
) {
    let gone = matches!(e, ExchangeError::ClientGone);
    let mut ex = H1Exchange::new(conn, shard, r.head, nth, true, Buffers::default());
    proxy::refuse(shard, live, r, &mut ex, e).await;
    if gone {
        conn.shutdown();
    } else {
        conn.close_gracefully(false).await;
    }
}

/// How long a drain waits for the first request of a connection accepted
/// before it began (a keep-alive connection that has served is closed at once).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How [`next_head`] waits: the keep-alive idle timeout, the head's deadline,
/// whether an h2c preface may come (first bytes only), and whether this is
/// the connection's first request.
struct HeadWait {
    idle: Duration,
    request_timeout: Duration,
    h2c: bool,
    first: bool,
    /// When the wait began: the idle timeout counts from here.
    since: Instant,
    /// May go quiet and be parked (plain, nothing buffered).
    park: bool,
}

/// Parses the next request head, reading as needed. An empty buffer waits with the
/// keep-alive idle timeout (KA-6) and gives up when the shard drains; once a head
/// has started, all of it must arrive within `request_timeout` (one deadline, not
/// per read, so a byte-at-a-time client cannot hold the connection), else 408.
async fn next_head(
    shard: &ShardCtx,
    conn: &Conn,
    rbuf: &mut BytesMut,
    limits: &Limits,
    wait: HeadWait,
) -> Next {
    let HeadWait {
        idle,
        request_timeout,
        h2c,
        first,
        since,
        park,
    } = wait;
    let mut deadline: Option<Instant> = None;
    // KA-6 counts from the start of the wait, not from each read: empty lines
    // trickling in do not extend it.
    let idle_deadline = since + idle;
    // Draining: the one read of a request already waiting.
    let mut drain_read = false;
    loop {
        let preface = crate::downstream::h2::PREFACE;
        let maybe_h2 =
            h2c && !rbuf.is_empty() && preface.starts_with(&rbuf[..rbuf.len().min(preface.len())]);
        if maybe_h2 && rbuf.len() >= preface.len() {
            return Next::H2;
        }
        match request::parse(rbuf, limits) {
            _ if maybe_h2 => {}
            Ok(Some(h)) => return Next::Head(h),
            Ok(None) => {}
            Err(e) => return Next::Refuse(e.into()),
        }
        let waiting_idle = rbuf.iter().all(|b| matches!(b, b'\r' | b'\n'));
        let r = if waiting_idle {
            let left = idle_deadline.saturating_duration_since(Instant::now());
            if first {
                // Accepted, its first request not read yet: the client has not
                // been idle, and closing now would fail a request it is sending.
                // A drain gives it FIRST_REQUEST_GRACE to arrive (then served
                // with Connection: close).
                let stop = async {
                    shard.drain_started().await;
                    tokio::time::sleep(FIRST_REQUEST_GRACE).await
                };
                conn.read_or_stop(rbuf, left, stop).await
            } else if shard.draining() {
                // A request already here (a parked connection woken by it,
                // or by the drain) is read and served, with Connection:
                // close; otherwise the connection closes now.
                if drain_read || !conn.has_bytes() {
                    return Next::Closed;
                }
                drain_read = true;
                let d = *deadline.get_or_insert_with(|| Instant::now() + request_timeout);
                conn.read(rbuf, d.saturating_duration_since(Instant::now()))
                    .await
            } else if park && rbuf.is_empty() {
                let stop = shard.drain_started();
                match conn.read_until_quiet(rbuf, left, stop, PARK_AFTER).await {
                    Ok(IdleRead::Quiet) => return Next::Park,
                    Ok(IdleRead::Bytes(n)) => Ok(n),
                    Err(e) => Err(e),
                }
            } else {
                conn.read_or_stop(rbuf, left, shard.drain_started()).await
            }
        } else {
            let d = *deadline.get_or_insert_with(|| Instant::now() + request_timeout);
            conn.read(rbuf, d.saturating_duration_since(Instant::now()))
                .await
        };
        match r {
            Ok(0) => return Next::Closed,
            Ok(_) => {}
            Err(IoError::TimedOut) if !waiting_idle => {
                return Next::Refuse(ExchangeError::ClientTimeout)
            }
            Err(_) => return Next::Closed,
        }
    }
}

/// Reading one request body: held for the origin (in memory up to
/// [`MEMORY_BODY`], spooled past it, within the process-wide budget, as nginx's
/// proxy_request_buffering does, so the origin sees one Content-Length), or
/// drained and dropped when the cache answers.
struct BodyRead<'a> {
    conn: &'a Conn,
    head: &'a RequestHead,
    limits: &'a Limits,
    timeout: Duration,
    budget: &'a Arc<Budget>,
    keep: bool,
}

/// Where the body's bytes go.
enum Sink {
    Drain,
    Memory(BytesMut, Charge),
    Spool(Spool),
}

impl Sink {
    /// Chosen before the body is invited: past the budget the client gets a 503
    /// without sending it.
    async fn choose(
        framing: Framing,
        keep: bool,
        budget: &Arc<Budget>,
    ) -> Result<Sink, ExchangeError> {
        if !keep {
            return Ok(Sink::Drain);
        }
        let known = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        // Checked, not reserved: bytes are charged as they arrive.
        let in_memory = known.unwrap_or(MEMORY_BODY);
        if in_memory <= MEMORY_BODY && budget.memory_has_room(in_memory) {
            let c = Charge::memory(budget, 0).ok_or(SpoolError::Budget)?;
            return Ok(Sink::Memory(BytesMut::new(), c));
        }
        if !budget.disk_has_room(known.unwrap_or(1)) {
            return Err(SpoolError::Budget.into());
        }
        let charge = Charge::disk(budget, 0).ok_or(SpoolError::Budget)?;
        Ok(Sink::Spool(Spool::create(charge).await?))
    }

    async fn put(&mut self, b: Bytes, budget: &Arc<Budget>) -> Result<(), ExchangeError> {
        match self {
            Sink::Drain => {}
            Sink::Memory(m, c) if (m.len() + b.len()) as u64 <= MEMORY_BODY => {
                c.grow_to((m.len() + b.len()) as u64)?;
                m.extend_from_slice(&b)
            }
            Sink::Memory(m, _) => {
                // Grown past the memory bound (chunked): move to a spool file.
                let held = m.len() as u64 + b.len() as u64;
                let charge = Charge::disk(budget, held).ok_or(SpoolError::Budget)?;
                let mut spool = Spool::create(charge).await?;
                spool.write(std::mem::take(m).freeze()).await?;
                spool.write(b).await?;
                *self = Sink::Spool(spool);
            }
            Sink::Spool(s) => s.write(b).await?,
        }
        Ok(())
    }

    /// Before a wait for the client: nothing gathered stays in memory meanwhile.
    async fn flush(&mut self) -> Result<(), ExchangeError> {
        if let Sink::Spool(s) = self {
            s.flush().await?;
        }
        Ok(())
    }

    async fn finish(self) -> Result<Option<Rc<RequestBody>>, ExchangeError> {
        Ok(match self {
            Sink::Drain => None,
            Sink::Memory(m, c) => Some(Rc::new(RequestBody::in_memory(m.freeze(), c))),
            Sink::Spool(s) => Some(Rc::new(s.finish().await?)),
        })
    }
}

impl BodyRead<'_> {
    async fn run(&self, rbuf: &mut BytesMut) -> Result<Option<Rc<RequestBody>>, ExchangeError> {
        let head = self.head;
        let mut decoder = match head.framing {
            Framing::None => return Ok(None),
            Framing::Length(n) => BodyDecoder::length(n),
            Framing::Chunked => BodyDecoder::chunked(self.limits.max_body),
        };
        let mut sink = Sink::choose(head.framing, self.keep, self.budget).await?;
        // RFC 9110 §10.1.1: only HTTP/1.1 clients get an interim 100.
        if head.expect_continue && head.version == Version::Http11 && rbuf.is_empty() {
            self.conn
                .write_all(
                    Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                    SEND_TIMEOUT,
                )
                .await
                .map_err(|_| ExchangeError::ClientGone)?;
        }
        // One deadline for the whole body, not per read.
        let deadline = Instant::now() + self.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let read_err = |e: IoError| match e {
            IoError::TimedOut => ExchangeError::ClientTimeout,
            _ => ExchangeError::ClientGone,
        };
        if let (Framing::Length(n), Sink::Memory(..)) = (head.framing, &sink) {
            // Small and in memory: gather in the read buffer and split once, no
            // copy; charged as it arrives.
            let Sink::Memory(_, charge) = &mut sink else {
                unreachable!("matched above")
            };
            while (rbuf.len() as u64) < n {
                charge.grow_to((rbuf.len() as u64).min(n))?;
                rbuf.reserve(n as usize - rbuf.len());
                match self.conn.read(rbuf, left()).await {
                    Ok(0) => return Err(ExchangeError::ClientGone),
                    Ok(_) => {}
                    Err(e) => return Err(read_err(e)),
                }
            }
            charge.grow_to(n)?;
            let Sink::Memory(_, charge) = sink else {
                unreachable!("matched above")
            };
            let body = rbuf.split_to(n as usize).freeze();
            return Ok(Some(Rc::new(RequestBody::in_memory(body, charge))));
        }
        loop {
            match decoder.decode(rbuf) {
                Ok(Decoded::Data(b)) => sink.put(b, self.budget).await?,
                Ok(Decoded::Done) => return sink.finish().await,
                Ok(Decoded::NeedMore) => {
                    sink.flush().await?;
                    match self.conn.read(rbuf, left()).await {
                        Ok(0) => return Err(ExchangeError::ClientGone),
                        Ok(_) => {}
                        Err(e) => return Err(read_err(e)),
                    }
                }
                Err(BodyError::TooLarge) => return Err(ExchangeError::RequestBodyTooLarge),
                Err(_) => return Err(ExchangeError::RequestBody("malformed chunked body")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn framing_table() {
        use ClientFraming::*;
        use Version::*;
        // (body, client version, framing)
        let table = [
            (BodyLen::Empty, Http11, NoBody),
            (BodyLen::Known(5), Http11, Length(5)),
            (BodyLen::Known(5), Http10, Length(5)),
            (BodyLen::Unknown, Http11, Chunked),
            (BodyLen::Unknown, Http10, Close),
        ];
        for (body, v, want) in table {
            assert_eq!(framing_for(body, v), want, "{body:?} {v:?}");
        }
    }

    #[test]
    fn a_large_read_buffer_is_not_kept_between_requests() {
        // A 200 KB head (a body, a large cookie) read, split off, served.
        let mut rbuf = BytesMut::with_capacity(200_000);
        rbuf.extend_from_slice(&[b'a'; 200_000]);
        drop(rbuf.split().freeze());
        between_requests(&mut rbuf);
        assert!(rbuf.capacity() <= KEEP_BUFFER, "{}", rbuf.capacity());
        // A small one keeps its allocation (no new one per request).
        let mut rbuf = BytesMut::with_capacity(IDLE_BUFFER);
        rbuf.extend_from_slice(&[b'a'; 300]);
        let start = rbuf.as_ptr() as usize;
        drop(rbuf.split().freeze());
        between_requests(&mut rbuf);
        assert_eq!(rbuf.as_ptr() as usize, start, "taken back in place");
        assert!(rbuf.capacity() >= IDLE_BUFFER);
    }

    #[test]
    fn a_connections_head_buffer_is_reused_and_never_overwrites_a_held_head() {
        let h = Head::new(200, BodyLen::Known(5));
        let want = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Close\r\n\r\n";
        let render =
            |buf: &mut BytesMut| render_head(&h, ClientFraming::Length(5), Decision::Close, buf);
        let mut buf = BytesMut::with_capacity(4096);
        let first = render(&mut buf);
        let start = first.as_ptr() as usize;
        // Held (a write in flight): the next lands in the free room after it.
        let second = render(&mut buf);
        assert_eq!(std::str::from_utf8(&first).unwrap(), want);
        assert_eq!(std::str::from_utf8(&second).unwrap(), want);
        assert_ne!(first.as_ptr(), second.as_ptr());
        drop((first, second));
        // Both written and dropped: the allocation is taken back.
        let third = render(&mut buf);
        let p = third.as_ptr() as usize;
        assert!(p >= start && p < start + 4096, "a new allocation");
        assert_eq!(std::str::from_utf8(&third).unwrap(), want);
        // A large head's room is let go.
        let mut big = Head::new(200, BodyLen::Known(5));
        big.push(b"X-Big", vec![b'a'; 2 * KEEP_HEAD]);
        let out = render_head(&big, ClientFraming::Length(5), Decision::Close, &mut buf);
        assert!(out.len() > 2 * KEEP_HEAD);
        assert_eq!(buf.capacity(), 0, "not kept");
    }

    #[test]
    fn heads_render_once_with_framing_and_connection_fields() {
        let mut h = Head::new(200, BodyLen::Unknown);
        h.reason = Some(b"Fine");
        h.push(b"ETag", &b"\"e\""[..]);
        h.fields_mut()
            .push((Cow::Borrowed(b"X-Cache"), Cow::Borrowed(b"TCP_MISS")));
        // One buffer for all three, as a connection's exchanges share one.
        let mut buf = BytesMut::new();
        let out = render_head(&h, ClientFraming::Chunked, Decision::Close, &mut buf);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 200 Fine\r\nETag: \"e\"\r\nX-Cache: TCP_MISS\r\nTransfer-Encoding: chunked\r\nConnection: Close\r\n\r\n"
        );
        let mut h = Head::new(304, BodyLen::Empty);
        h.push(b"Content-Length", &b"10"[..]);
        let ka = Decision::KeepAlive {
            timeout: Some(10),
            max: Some(3),
        };
        let first = out;
        let out = render_head(&h, framing_for(h.body, Version::Http11), ka, &mut buf);
        assert_eq!(
            std::str::from_utf8(&first).unwrap(),
            "HTTP/1.1 200 Fine\r\nETag: \"e\"\r\nX-Cache: TCP_MISS\r\nTransfer-Encoding: chunked\r\nConnection: Close\r\n\r\n",
            "a head held is not overwritten"
        );
        drop(first);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=10, max=3\r\n\r\n"
        );
        let out = render_head(
            &Head::new(404, BodyLen::Known(0)),
            ClientFraming::Length(0),
            Decision::Close,
            &mut buf,
        );
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .starts_with("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"));
    }
}
