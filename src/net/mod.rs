//! The IO edge. Everything that touches io_uring (through tokio-uring) lives in this
//! module, so the runtime could be swapped without touching protocol code.
//!
//! Buffers are owned (`BytesMut` in, `Bytes` out) because completion IO needs the
//! kernel to own them while an operation is in flight. A cached body handed to
//! [`Conn::writev_all`] as `Bytes` goes to the kernel as an iovec: no userspace copy.
//!
//! tokio-uring cannot cancel an in-flight operation: a dropped read keeps its buffer
//! and the fd until the kernel completes it. So every timeout here shuts the socket
//! down, which completes the operation at once and releases both. The one
//! withdrawal that keeps the connection (an idle read going quiet) is our own
//! cancel by fd ([`Conn::read_until_quiet`]).

pub mod admission;
pub mod ktls;
pub mod listen;
pub mod readiness;
mod sendfile;
pub mod tls;

use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// How much free space a read asks the kernel to fill.
const READ_CHUNK: usize = 16 * 1024;
/// Below this much free space, a read first grows the buffer by `READ_CHUNK`.
const MIN_SPARE: usize = 512;
/// Bound on writing the records a TLS read produced (a key update's answer).
const READ_SIDE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("timed out")]
    TimedOut,
    #[error("stopped")]
    Stopped,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Marks `n` written bytes off the front of `bufs`: whole pieces are counted
/// (returned), a partly written one is re-sliced (no copy).
fn consume(bufs: &mut [Bytes], mut n: usize) -> usize {
    let mut whole = 0;
    while n > 0 {
        let b = &mut bufs[whole];
        if n >= b.len() {
            n -= b.len();
            whole += 1;
        } else {
            b.advance(n);
            n = 0;
        }
    }
    whole
}

/// What an idle wait for a client's next bytes ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleRead {
    /// Bytes read (`0`: end of stream).
    Bytes(usize),
    /// Nothing arrived; the read was withdrawn and nothing is in flight.
    Quiet,
}

/// Withdrawing an in-flight ring operation: `IORING_OP_ASYNC_CANCEL` with
/// `IORING_ASYNC_CANCEL_FD` (Linux 5.19), which tokio-uring does not offer.
/// Cancel by fd needs no handle to the operation (tokio-uring keeps its
/// `user_data` private); the caller makes sure the socket's only operation is
/// the one to withdraw.
mod withdraw {
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    /// Cleared, for the whole process, by the first kernel that refuses it.
    pub static SUPPORTED: AtomicBool = AtomicBool::new(true);

    struct Outcome;

    impl tokio_uring::OneshotOutputTransform for Outcome {
        type Output = io::Result<u32>;
        type StoredData = ();
        fn transform_oneshot_output(self, _: (), cqe: io_uring::cqueue::Entry) -> io::Result<u32> {
            match cqe.result() {
                r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                r => Ok(r as u32),
            }
        }
    }

    /// Cancels every operation on `fd`. True when the kernel took the cancel
    /// (the operations then complete, cancelled or done); false where it
    /// refused: never tried again after `EINVAL` (no cancel by fd), and this
    /// once after anything else.
    pub async fn by_fd(fd: RawFd) -> bool {
        use io_uring::types::{CancelBuilder, Fd};
        let sqe = io_uring::opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all()).build();
        let r = match crate::fault::on(crate::fault::Switch::NoCancel) {
            true => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            false => {
                tokio_uring::UnsubmittedOneshot::new((), Outcome, sqe)
                    .submit()
                    .await
            }
        };
        match r {
            // With CANCEL_ALL the kernel answers the number cancelled (0:
            // the operation completed first); an error is a refusal (EINVAL
            // before Linux 5.19).
            Ok(_) => true,
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                log::debug!("io_uring: an idle read's cancel failed ({e}); it waits unparked");
                false
            }
            Err(e) => {
                if SUPPORTED.swap(false, Relaxed) {
                    log::warn!("io_uring: this kernel cannot cancel by fd ({e}); idle keep-alive connections keep their read buffers (Linux 5.19 or later parks them)");
                }
                false
            }
        }
    }
}

/// What a peek at a socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    /// Nothing to read; open.
    Nothing,
    /// End of stream: the peer's FIN, or our own `shutdown(Read)` (a timed
    /// out read), with nothing before it.
    Closed,
    /// Bytes to read (TLS: buffered records or plaintext).
    Data,
    /// The connection failed (reset, timed out): nothing left to protect.
    Failed,
}

/// One TCP connection on this shard's ring. Cloning shares the socket, so a read and
/// a write can be in flight together (every tokio-uring method takes `&self`).
/// With TLS, the same methods carry plaintext: records are made and taken apart
/// by the connection's [`TlsSession`](tls::TlsSession), and the socket IO is the
/// same ring IO.
#[derive(Clone)]
pub struct Conn {
    inner: Rc<tokio_uring::net::TcpStream>,
    tls: Option<Rc<tls::TlsSession>>,
    /// A TLS session whose records the kernel makes (kTLS): the socket then
    /// carries plaintext for us, and `tls` is `None`.
    kernel: Option<Rc<tls::KernelSession>>,
}

impl Conn {
    pub fn from_uring(stream: tokio_uring::net::TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        Ok(Conn::accepted(stream))
    }

    /// A connection accepted from one of our listeners: it inherited
    /// `TCP_NODELAY` from the listening socket (`listen::bind_group`), so no
    /// syscall is spent setting it again on every new connection.
    pub fn accepted(stream: tokio_uring::net::TcpStream) -> Conn {
        Conn {
            inner: Rc::new(stream),
            tls: None,
            kernel: None,
        }
    }

    /// The server side of a TLS handshake on this (plain) connection, within
    /// `timeout`; the returned `Conn` speaks plaintext over TLS. With `kernel`
    /// (the config allows secret extraction) and a kernel that has kTLS, the
    /// session then goes to the kernel where its state and cipher allow.
    pub async fn accept_tls(
        &self,
        config: std::sync::Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<Conn, IoError> {
        let kernel = config.enable_secret_extraction && tls::ktls_available();
        let server = rustls::ServerConnection::new(config).map_err(tls::tls_error)?;
        let conn = self.handshake(server.into(), timeout).await?;
        match kernel {
            true => conn.into_kernel(),
            false => Ok(conn),
        }
    }

    /// kTLS hand-over (see [`ktls`]): the `tls` ULP is attached first, so
    /// that any refusal before the keys leave rustls keeps a working session.
    fn into_kernel(self) -> Result<Conn, IoError> {
        use std::os::fd::AsRawFd;
        let Some(t) = self.tls.clone() else {
            return Ok(self);
        };
        let inner = self.inner.clone();
        drop(self);
        let t = match Rc::try_unwrap(t) {
            Ok(t) => t,
            Err(t) => {
                return Ok(Conn {
                    inner,
                    tls: Some(t),
                    kernel: None,
                })
            }
        };
        let keep = |t: tls::TlsSession| Conn {
            inner: inner.clone(),
            tls: Some(Rc::new(t)),
            kernel: None,
        };
        let fd = inner.as_raw_fd();
        if let Err(e) = ktls::attach(fd) {
            ktls::attach_failed(&e);
            return Ok(keep(t));
        }
        match t.into_kernel() {
            Err(tls::Refused::Kept(t)) => Ok(keep(*t)),
            Err(tls::Refused::Lost) => {
                let _ = inner.shutdown(Shutdown::Both);
                Err(IoError::Io(io::Error::other(
                    "TLS session lost in the kTLS hand-over",
                )))
            }
            Ok(h) => match ktls::install(fd, &h.send, &h.receive) {
                Ok(()) => Ok(Conn {
                    inner: inner.clone(),
                    tls: None,
                    kernel: Some(Rc::new(h.session)),
                }),
                Err(e) => {
                    log::warn!("kTLS: the kernel refused {:?} session keys ({e}); this connection is closed (a kind refused as unsupported, or three times in a row, keeps rustls records from then on)", h.send);
                    let _ = inner.shutdown(Shutdown::Both);
                    Err(IoError::Io(e))
                }
            },
        }
    }

    /// Is the kernel making this connection's TLS records?
    pub fn is_kernel_tls(&self) -> bool {
        self.kernel.is_some()
    }

    /// A kTLS session past its soft record limit: the protocol layer should
    /// end the connection after what is in flight (see [`ktls::SOFT_RECORD_LIMIT`]).
    pub fn near_record_limit(&self) -> bool {
        self.kernel
            .as_ref()
            .is_some_and(|k| k.limited && k.records.get() >= ktls::SOFT_RECORD_LIMIT)
    }

    /// The client side (an origin over TLS): `name` is sent as SNI and is the
    /// name the origin's certificate must carry.
    pub async fn connect_tls(
        &self,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
        timeout: Duration,
    ) -> Result<Conn, IoError> {
        let client = rustls::ClientConnection::new(config, name).map_err(tls::tls_error)?;
        self.handshake(client.into(), timeout).await
    }

    async fn handshake(
        &self,
        session: rustls::Connection,
        timeout: Duration,
    ) -> Result<Conn, IoError> {
        let conn = Conn {
            inner: self.inner.clone(),
            tls: Some(Rc::new(tls::TlsSession::new(session))),
            kernel: None,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Not shared with any other task until it is returned: its records need
        // no writer lock here.
        let t = conn.tls.as_ref().expect("set above");
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = t.advance_handshake() {
                // The alert rustls queued tells the peer why (protocol version,
                // unknown CA, …).
                let _ = conn.flush_records(left.min(Duration::from_secs(1))).await;
                self.shutdown();
                return Err(IoError::Io(e));
            }
            if t.wants_write() {
                conn.flush_records(left).await?;
            }
            if !t.is_handshaking() {
                return Ok(conn);
            }
            if left.is_zero() {
                self.shutdown();
                return Err(IoError::TimedOut);
            }
            let mut inb = std::mem::take(&mut *t.inbuf.borrow_mut());
            let r = self
                .raw_read_or_stop(&mut inb, left, std::future::pending())
                .await;
            *t.inbuf.borrow_mut() = inb;
            match r {
                Ok(0) => return Err(IoError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends an idle connection at once; a TLS peer first gets close_notify (a
    /// short try), so it sees an orderly close rather than a truncation.
    pub async fn close_idle(&self) {
        self.kernel_close_notify();
        if let Some(t) = &self.tls {
            // A write stalled on a peer that does not read holds the writer:
            // then no close_notify, just the close.
            if let Ok(_writer) =
                tokio::time::timeout(Duration::from_millis(200), t.writer.lock()).await
            {
                t.close_notify();
                let _ = self.flush_records(Duration::from_millis(200)).await;
            }
        }
        self.shutdown();
    }

    /// A kTLS session's close_notify: its own alert record, never blocking.
    fn kernel_close_notify(&self) {
        use std::os::fd::AsRawFd;
        if self.kernel.is_some() {
            let _ = ktls::send_close_notify(self.inner.as_raw_fd());
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some() || self.kernel.is_some()
    }

    /// What the TLS handshake settled, for a TLS connection.
    pub fn tls_facts(&self) -> Option<tls::TlsFacts> {
        match &self.kernel {
            Some(k) => Some(k.facts),
            None => self.tls.as_ref().and_then(|t| t.facts()),
        }
    }

    /// The SNI name a TLS client sent.
    pub fn tls_server_name(&self) -> Option<String> {
        match &self.kernel {
            Some(k) => k.server_name.clone(),
            None => self.tls.as_ref().and_then(|t| t.server_name()),
        }
    }

    /// Writes the records rustls has queued; the caller holds the session's writer.
    async fn flush_records(&self, timeout: Duration) -> Result<(), IoError> {
        let Some(t) = &self.tls else { return Ok(()) };
        loop {
            let out = t.take_records(4 * tls::SEND_BUFFER)?;
            if out.is_empty() {
                return Ok(());
            }
            self.raw_writev_all(vec![out], timeout).await?;
        }
    }

    /// Connects with a deadline. The connect itself runs on tokio's epoll reactor so
    /// that a timed-out attempt closes its socket at once (an io_uring connect could not
    /// be cancelled and would hold its fd for the kernel's SYN retry time); the
    /// connected socket then moves to the ring.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, IoError> {
        let s = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => return Err(IoError::TimedOut),
            Ok(r) => r?,
        };
        let std = s.into_std()?;
        std.set_nonblocking(false)?;
        Conn::from_uring(tokio_uring::net::TcpStream::from_std(std)).map_err(IoError::Io)
    }

    /// Reads whatever arrives into the spare capacity of `buf`; `Ok(0)` is end of stream.
    pub async fn read(&self, buf: &mut BytesMut, timeout: Duration) -> Result<usize, IoError> {
        self.read_or_stop(buf, timeout, std::future::pending())
            .await
    }

    /// Like [`read`](Self::read), but gives up with `Stopped` when `stop` completes first
    /// (used to release idle keep-alive connections when draining).
    pub async fn read_or_stop(
        &self,
        buf: &mut BytesMut,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<usize, IoError> {
        // The TLS reads are boxed: their futures (records to flush, control
        // records to take) are large, and an idle plain connection holds
        // this future for as long as it waits.
        match (&self.tls, &self.kernel) {
            (Some(t), _) => Box::pin(self.tls_read_or_stop(t, buf, timeout, stop)).await,
            (None, Some(k)) => Box::pin(self.kernel_read_or_stop(k, buf, timeout, stop)).await,
            (None, None) => self.raw_read_or_stop(buf, timeout, stop).await,
        }
    }

    /// A kTLS read: what rustls decrypted before the hand-over first, then the
    /// socket. A control record fails the read with `EIO`; it is taken off the
    /// socket here, and a close_notify is the end of the stream.
    async fn kernel_read_or_stop(
        &self,
        k: &tls::KernelSession,
        buf: &mut BytesMut,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<usize, IoError> {
        use std::os::fd::AsRawFd;
        if k.closed.get() {
            return Ok(0);
        }
        {
            let mut pending = k.pending.borrow_mut();
            if !pending.is_empty() {
                let n = pending.len();
                buf.extend_from_slice(&pending.split());
                return Ok(n);
            }
        }
        // At the cipher's confidentiality limit, which the kernel does not
        // watch (past the soft limit the protocol layers already close), the
        // connection ends as if the client had closed it.
        if k.limited && k.records.get() >= ktls::HARD_RECORD_LIMIT {
            k.closed.set(true);
            return Ok(0);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stop = std::pin::pin!(stop);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.raw_read_or_stop(buf, left, stop.as_mut()).await {
                Err(IoError::Io(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    match ktls::read_control(self.inner.as_raw_fd())? {
                        ktls::Control::CloseNotify => {
                            k.closed.set(true);
                            return Ok(0);
                        }
                        ktls::Control::UserCanceled => continue,
                        other => {
                            return Err(IoError::Io(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!(
                                "kTLS: a {other:?} record, which cairn does not answer under kTLS"
                            ),
                            )))
                        }
                    }
                }
                r => return r,
            }
        }
    }

    async fn tls_read_or_stop(
        &self,
        t: &tls::TlsSession,
        buf: &mut BytesMut,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<usize, IoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stop = std::pin::pin!(stop);
        loop {
            match t.take_plaintext(buf) {
                Some(Ok(n)) => return Ok(n),
                Some(Err(e)) => {
                    if let Ok(_writer) = t.writer.try_lock() {
                        let _ = self.flush_records(Duration::from_secs(1)).await;
                    }
                    self.shutdown();
                    return Err(IoError::Io(e));
                }
                None => {}
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Records the read side produced (a TLS 1.3 key update's answer):
            // written here unless a write is under way, which takes them along.
            if t.wants_write() {
                if let Ok(_writer) = t.writer.try_lock() {
                    // The read's own timeout may be an idle one of hours; a
                    // peer that sends but never reads gets a write's bound.
                    self.flush_records(left.min(READ_SIDE_WRITE_TIMEOUT))
                        .await?;
                }
            }
            let mut inb = std::mem::take(&mut *t.inbuf.borrow_mut());
            let r = self.raw_read_or_stop(&mut inb, left, stop.as_mut()).await;
            *t.inbuf.borrow_mut() = inb;
            match r? {
                // An origin's end of stream without close_notify may be a
                // truncation (RFC 8446 §6.1): a body that ends at close must
                // not be taken as complete. Clients often close without it.
                0 if t.is_client() => {
                    return Err(IoError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed without TLS close_notify",
                    )))
                }
                0 => return Ok(0),
                _ => continue,
            }
        }
    }

    async fn raw_read_or_stop(
        &self,
        buf: &mut BytesMut,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<usize, IoError> {
        use tokio_uring::buf::BoundedBuf;
        // Grow only when nearly full: an idle keep-alive connection keeps its small
        // buffer in the kernel's hands, so 10k idle clients cost 10k small buffers.
        if buf.capacity() - buf.len() < MIN_SPARE {
            buf.reserve(READ_CHUNK);
        }
        let owned = std::mem::take(buf);
        let start = owned.len();
        let op = self.inner.read(owned.slice(start..));
        tokio::select! {
            (res, slice) = op => {
                *buf = slice.into_inner();
                Ok(res?)
            }
            // Shutting down the read side completes the in-flight read (and frees its
            // buffer and fd) while leaving the write side usable for a 408.
            _ = tokio::time::sleep(timeout) => {
                let _ = self.inner.shutdown(Shutdown::Read);
                Err(IoError::TimedOut)
            }
            _ = stop => {
                let _ = self.inner.shutdown(Shutdown::Read);
                Err(IoError::Stopped)
            }
        }
    }

    /// Like [`read_or_stop`](Self::read_or_stop), for a connection waiting
    /// between requests with an empty `buf`: when nothing has arrived within
    /// `quiet`, the read is withdrawn (cancelled in the ring, which hands the
    /// buffer back) and the wait ends `Quiet`, with nothing of this socket
    /// in flight, so the connection can be parked (see `shard::keepalive`).
    /// TLS connections never go quiet: their reads carry session state.
    pub async fn read_until_quiet(
        &self,
        buf: &mut BytesMut,
        timeout: Duration,
        stop: impl Future<Output = ()>,
        quiet: Duration,
    ) -> Result<IdleRead, IoError> {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::Relaxed;
        use tokio_uring::buf::BoundedBuf;
        if self.tls.is_some() || self.kernel.is_some() || !withdraw::SUPPORTED.load(Relaxed) {
            return self
                .read_or_stop(buf, timeout, stop)
                .await
                .map(IdleRead::Bytes);
        }
        if buf.capacity() - buf.len() < MIN_SPARE {
            buf.reserve(READ_CHUNK);
        }
        let owned = std::mem::take(buf);
        let start = owned.len();
        let mut op = std::pin::pin!(self.inner.read(owned.slice(start..)));
        let mut stop = std::pin::pin!(stop);
        // One timer: first to the end of the quiet period, then (the read
        // withdrawn, or not withdrawable) to the idle deadline.
        let now = tokio::time::Instant::now();
        let expire_at = now + timeout;
        let sleep = tokio::time::sleep_until((now + quiet).min(expire_at));
        let mut sleep = std::pin::pin!(sleep);
        let mut withdrawn = false;
        loop {
            tokio::select! {
                (res, slice) = &mut op => {
                    *buf = slice.into_inner();
                    return match res {
                        Err(e) if withdrawn && matches!(e.raw_os_error(), Some(libc::ECANCELED | libc::EINTR)) => {
                            Ok(IdleRead::Quiet)
                        }
                        r => Ok(IdleRead::Bytes(r?)),
                    };
                }
                _ = &mut sleep => {
                    if tokio::time::Instant::now() >= expire_at {
                        let _ = self.inner.shutdown(Shutdown::Read);
                        return Err(IoError::TimedOut);
                    }
                    // The read then completes: cancelled, or with bytes that
                    // beat the cancel (a kernel without cancel-by-fd: it
                    // waits on as a plain read, and no read goes quiet again).
                    withdrawn = withdraw::by_fd(self.inner.as_raw_fd()).await;
                    sleep.as_mut().reset(expire_at);
                }
                _ = &mut stop => {
                    let _ = self.inner.shutdown(Shutdown::Read);
                    return Err(IoError::Stopped);
                }
            }
        }
    }

    /// Whether [`send_file`](Self::send_file) can carry this connection's
    /// bytes: a plain socket (TLS records are made here or, under kTLS,
    /// counted here).
    pub fn can_send_file(&self) -> bool {
        self.tls.is_none() && self.kernel.is_none()
    }

    /// Sends `len` bytes of `file` from `offset` with sendfile: the kernel
    /// queues references to the file's pages, not copies (the caller keeps
    /// them unchanged, see `cache::segment`). The socket is non-blocking only
    /// for these calls: io_uring's ops on it would fail with `EAGAIN` instead
    /// of waiting if it stayed so (no other op is in flight during a
    /// response's write). A full socket is waited on through the runtime's
    /// readiness (epoll), each wait bounded by `timeout`, which then shuts
    /// the socket down. Returns the bytes sent, also on error.
    pub async fn send_file(
        &self,
        file: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        len: usize,
        timeout: Duration,
    ) -> (usize, Result<(), IoError>) {
        let (sent, r) = sendfile::send(&*self.inner, file, offset, len, timeout).await;
        if matches!(r, Err(IoError::TimedOut)) {
            self.shutdown();
        }
        (sent, r)
    }

    /// Writes all of `bufs` (head and body pieces) as vectored writes, re-slicing after
    /// short writes. No byte of any buffer is copied.
    pub async fn writev_all(&self, bufs: Vec<Bytes>, timeout: Duration) -> Result<(), IoError> {
        self.writev_all_reusing(bufs, timeout).await.map(drop)
    }

    /// [`writev_all`](Self::writev_all), handing the list back emptied, so
    /// that a connection's next response reuses its allocation.
    pub async fn writev_all_reusing(
        &self,
        mut bufs: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, IoError> {
        match &self.tls {
            None => self.raw_writev_all(bufs, timeout).await,
            Some(t) => {
                let _writer = t.writer.lock().await;
                self.tls_writev_all(t, &mut bufs, timeout).await?;
                bufs.clear();
                Ok(bufs)
            }
        }
    }

    /// Encrypts the pieces into records, writing whenever the send buffer fills,
    /// so a response costs at most [`tls::SEND_BUFFER`] of records in memory.
    async fn tls_writev_all(
        &self,
        t: &tls::TlsSession,
        bufs: &mut Vec<Bytes>,
        timeout: Duration,
    ) -> Result<(), IoError> {
        bufs.retain(|b| !b.is_empty());
        let mut first = 0;
        while first < bufs.len() {
            let n = {
                let slices: Vec<io::IoSlice<'_>> = bufs[first..]
                    .iter()
                    .take(64)
                    .map(|b| io::IoSlice::new(b))
                    .collect();
                t.encrypt(&slices)?
            };
            if n == 0 {
                if !t.wants_write() {
                    // Nothing to send and nothing taken: closed for writing.
                    return Err(IoError::Io(io::ErrorKind::WriteZero.into()));
                }
                self.flush_records(timeout).await?;
                continue;
            }
            first += consume(&mut bufs[first..], n);
        }
        self.flush_records(timeout).await
    }

    async fn raw_writev_all(
        &self,
        mut bufs: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, IoError> {
        bufs.retain(|b| !b.is_empty());
        while !bufs.is_empty() {
            // IOV_MAX is 1024; stay well under it.
            let rest = if bufs.len() > 512 {
                bufs.split_off(512)
            } else {
                Vec::new()
            };
            if let Some(k) = &self.kernel {
                k.records.set(k.records.get() + ktls::records_for(&bufs));
            }
            // The timeout is per write that makes progress (like nginx's send_timeout),
            // so a large body to a slow but live peer is not cut off.
            let (res, mut sent) = match tokio::time::timeout(timeout, self.inner.writev(bufs)).await
            {
                Ok(r) => r,
                Err(_) => {
                    self.shutdown();
                    return Err(IoError::TimedOut);
                }
            };
            let n = res?;
            if n == 0 {
                return Err(IoError::Io(io::Error::from(io::ErrorKind::WriteZero)));
            }
            let first = consume(&mut sent, n);
            sent.drain(..first);
            sent.extend(rest);
            bufs = sent;
        }
        Ok(bufs)
    }

    pub async fn write_all(&self, buf: Bytes, timeout: Duration) -> Result<(), IoError> {
        self.writev_all(vec![buf], timeout).await
    }

    /// The socket alone, for a plain connection with nothing in flight, so
    /// that a parked connection holds no allocation of the runtime's (they
    /// would pin the pages its busy phases used). The fd is duplicated, as
    /// tokio-uring gives none up, so this must be the socket's last handle
    /// (checked) with no operation in flight (the caller's word: a read
    /// that ended `Quiet`).
    pub fn park(self) -> Result<ParkedSocket, (Conn, io::Error)> {
        if self.tls.is_some() || self.kernel.is_some() {
            return Err((self, io::Error::other("a TLS connection is not parked")));
        }
        if Rc::strong_count(&self.inner) != 1 {
            return Err((self, io::Error::other("the socket has another handle")));
        }
        match self.fd().try_clone_to_owned() {
            Ok(fd) => Ok(ParkedSocket(fd)),
            Err(e) => Err((self, e)),
        }
    }

    #[allow(unsafe_code)]
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd belongs to `self.inner`, which outlives the borrow
        // (tied to `&self`) and closes it only when dropped.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.inner.as_raw_fd()) }
    }

    /// True if the client's bytes wait to be read (not only its end of stream).
    pub fn has_bytes(&self) -> bool {
        self.peek() == Peek::Data
    }

    /// True if the socket is idle and usable: nothing to read, not closed by the
    /// peer. A pooled origin connection that fails this would hand the next request
    /// a stale close or stray bytes, so the pool drops it instead.
    pub fn is_idle_and_open(&self) -> bool {
        self.peek() == Peek::Nothing
    }

    /// What waits to be read, without reading it (one `recv` with `MSG_PEEK`).
    fn peek(&self) -> Peek {
        if self.tls.as_ref().is_some_and(|t| !t.holds_nothing())
            || self
                .kernel
                .as_ref()
                .is_some_and(|k| !k.pending.borrow().is_empty())
        {
            return Peek::Data;
        }
        peek_fd(self.fd())
    }

    /// The local address of the connection (which address the client reached).
    #[allow(unsafe_code)]
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the fd belongs to `self.inner`, which is alive for the whole of this
        // borrow; getsockname neither closes nor takes ownership of it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.inner.as_raw_fd()) };
        socket2::SockRef::from(&fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
    }

    /// Shuts both directions down; completes any in-flight operation on this socket.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown(Shutdown::Both);
    }

    /// Lingering close (RFC 9112 §9.6): stop sending, drain what the client still sends
    /// for a short while so that its pipelined bytes do not turn into a reset that
    /// destroys the response in flight, then close. `client_done`: the client
    /// said it sends nothing more (`Connection: close`, or HTTP/1.0 without
    /// keep-alive) and its body was read.
    pub async fn close_gracefully(&self, client_done: bool) {
        self.kernel_close_notify();
        if let Some(t) = &self.tls {
            if let Ok(_writer) = tokio::time::timeout(Duration::from_secs(1), t.writer.lock()).await
            {
                t.close_notify();
                let _ = self.flush_records(Duration::from_secs(1)).await;
            }
        }
        // A plain close, which the last handle's drop makes at the end of the
        // connection's task (its FIN; no shutdown calls, no read), where no
        // reset can destroy the response: the client has closed already or
        // failed, or it said it sends nothing more and nothing of its is
        // unread (the common `Connection: close` case). Where the server
        // decides to close (keep-alive limits, a drain, a refusal), bytes the
        // peek cannot see yet may be on their way: linger and drain. A kTLS
        // socket's peek cannot tell: it says nothing while half a record is
        // queued, and closing on that would reset the connection. So it
        // lingers (until the client's end of stream, at most as below). No
        // operation is in flight here (the connection's loop is sequential),
        // so nothing needs a shutdown to complete.
        if self.kernel.is_none() {
            match self.peek() {
                Peek::Closed | Peek::Failed => return,
                Peek::Nothing if client_done => return,
                Peek::Nothing | Peek::Data => {}
            }
        }
        let _ = self.inner.shutdown(Shutdown::Write);
        let mut scratch = BytesMut::with_capacity(READ_CHUNK);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut drained = 0usize;
        while drained < 256 * 1024 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            scratch.clear();
            match self.read(&mut scratch, left).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        self.shutdown();
    }
}

/// What waits to be read on a socket, without reading it.
#[allow(unsafe_code)]
fn peek_fd(fd: std::os::fd::BorrowedFd<'_>) -> Peek {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv on an open fd (borrowed for the call) into a valid 1-byte
    // buffer; MSG_PEEK leaves the data in place and MSG_DONTWAIT never
    // blocks the shard.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peek::Closed,
        n if n > 0 => Peek::Data,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Peek::Nothing,
        // The socket's pending error, which the peek itself clears.
        _ => Peek::Failed,
    }
}

/// A parked connection's socket (see [`Conn::park`]): nothing in flight,
/// owned here alone.
pub struct ParkedSocket(std::os::fd::OwnedFd);

impl ParkedSocket {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// The peer sent bytes (not only its end of stream or a failure).
    pub fn has_data(&self) -> bool {
        use std::os::fd::AsFd;
        peek_fd(self.0.as_fd()) == Peek::Data
    }

    /// Back on the ring, to be served.
    pub fn resume(self) -> Conn {
        let std = std::net::TcpStream::from(self.0);
        Conn::accepted(tokio_uring::net::TcpStream::from_std(std))
    }

    /// Closes it as an idle connection is closed: a FIN now (also for other
    /// handles, should any be left), then the fd.
    pub fn close(self) {
        let _ = socket2::SockRef::from(&self.0).shutdown(Shutdown::Both);
    }
}
