//! One exchange, whatever the protocol: the request's facts ([`Request`]), the
//! structured response head ([`Head`]), the client side as a seam
//! ([`Downstream`]), and why an exchange failed ([`ExchangeError`]). HTTP/1.x
//! (`downstream::http1`) and HTTP/2 (`downstream::h2`) implement the seam.

pub mod error;
pub mod head;

pub use error::{ExchangeError, Fault};
pub use head::{BodyLen, Head};

use crate::http1::RequestHead;
use bytes::Bytes;
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http11,
    H2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::H2 => "HTTP/2.0",
        }
    }
}

/// What the connection says about every request on it.
#[derive(Debug, Clone, Copy)]
pub struct ConnFacts {
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Which listen group accepted the connection (its vhosts are the candidates).
    pub group: usize,
    /// Unique per process (#SESSIONID, `session-id`).
    pub session_id: u64,
    pub tls: Option<TlsInfo>,
}

/// A TLS connection's facts, fixed at its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: crate::net::tls::TlsVersion,
    /// Which of the connection's certificates (`Request::certs`) the handshake
    /// chose (SNI), for 421.
    pub cert: usize,
    /// ALPN chose h2.
    pub h2: bool,
}

/// One request as the request path sees it. `head` holds method, target,
/// authority and fields; HTTP/2 builds the same from its pseudo-headers.
#[derive(Debug)]
pub struct Request {
    pub head: RequestHead,
    /// The body, read in full by the downstream before the exchange starts (in
    /// memory or spooled), or drained and dropped where the cache answers. Taken
    /// by the origin request, so its budget charge and spool file end when the
    /// origin has it, not when a slow client has the response.
    pub body: std::cell::RefCell<Option<std::rc::Rc<crate::spool::RequestBody>>>,
    pub protocol: Protocol,
    /// The HTTP/2 stream it came on (httpd's `H2_STREAM_ID`), for the log.
    pub stream: Option<u32>,
    pub conn: ConnFacts,
    /// Bytes the client sent for this request: head and body (STAT-1).
    pub bytes_in: u64,
    /// When the request's head was complete, for `time-taken`.
    pub received: std::time::Instant,
    /// The certificates the connection's handshake chose among (`conn.tls.cert`
    /// indexes them): the connection's own, whatever a reload has put in force
    /// since.
    pub certs: Option<std::sync::Arc<crate::config::tls::CertSet>>,
}

/// Why a send failed: the client is gone (or too slow); the exchange cannot
/// reach it any more. Fills go on for other clients regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client went away")]
pub struct ClientGone;

/// The client side of one exchange. The request path calls, in order:
/// [`bind_vhost`](Downstream::bind_vhost) once the vhost is known,
/// [`send_head`](Downstream::send_head), any number of
/// [`send_body`](Downstream::send_body) (with [`flush`](Downstream::flush) when
/// it is about to wait), then [`finish`](Downstream::finish) or
/// [`abort`](Downstream::abort). The protocol owns framing, connection
/// management and rendering; shards are single-threaded, so no future is `Send`.
#[allow(async_fn_in_trait)]
pub trait Downstream {
    /// The vhost that serves this request: its keep-alive policy (HTTP/1) applies.
    fn bind_vhost(&mut self, vhost: &crate::config::Vhost);
    /// Sends (or queues) the head. Body pieces queued right after it go out in
    /// the same vectored write.
    async fn send_head(&mut self, head: &Head<'_>) -> Result<(), ClientGone>;
    /// Queues an interim (1xx) response ahead of the final one, where the
    /// protocol carries it (by default it is dropped). It goes out with the
    /// next [`flush`](Downstream::flush) or the head's write: a caller that
    /// shares the origin's answer (a fill) must not wait on this client.
    async fn send_interim(
        &mut self,
        _status: u16,
        _fields: &[(&[u8], &[u8])],
    ) -> Result<(), ClientGone> {
        Ok(())
    }
    /// Queues a piece of body; may write when enough is queued.
    async fn send_body(&mut self, piece: Bytes) -> Result<(), ClientGone>;
    /// A piece of body in a cache segment file: a connection that can send it
    /// with sendfile does (the kernel takes the pages, no copy); by default
    /// it is [`send_body`](Downstream::send_body).
    async fn send_file(&mut self, piece: crate::cache::FileBody) -> Result<(), ClientGone> {
        self.send_body(piece.into_bytes()).await
    }
    /// Writes what is queued (before the caller waits for more).
    async fn flush(&mut self) -> Result<(), ClientGone>;
    /// Ends the response cleanly.
    async fn finish(&mut self) -> Result<(), ClientGone>;
    /// Cuts the response off so the client sees a break, not a complete response.
    fn abort(&mut self);
    fn head_sent(&self) -> bool;
    /// Bytes written to the client so far (head, framing and body).
    fn bytes_sent(&self) -> u64;
    /// Of those, the bytes that were not the head.
    fn body_bytes_sent(&self) -> u64;
}
