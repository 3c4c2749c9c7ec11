//! TLS on the shard's own ring. rustls's buffered connection is itself sans-IO
//! (ciphertext in through `read_tls`, out through `write_tls`); this module only
//! moves those bytes with owned buffers over the same completion IO as a plain
//! [`Conn`](super::Conn), so a TLS connection never leaves the shard that
//! accepted it and no poll adapter is involved (tokio-uring issue 318).
//!
//! Costs, for the record: a plaintext byte is copied once into a record (and
//! encrypted there) and once out of rustls into the write buffer. kTLS (see
//! [`ktls_available`]) removes both; rustls's unbuffered API would remove one.

use bytes::{Buf, Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};

/// Plaintext rustls may hold encrypted and unsent per connection before a write
/// must wait for the socket: bounds what a slow reader costs.
pub const SEND_BUFFER: usize = 64 * 1024;

/// One connection's TLS state, shared by the clones of its [`Conn`](super::Conn).
/// Shards are single-threaded and no borrow is held across an await.
pub struct TlsSession {
    pub(super) conn: RefCell<rustls::Connection>,
    /// Ciphertext read from the socket that rustls has not taken yet.
    pub(super) inbuf: RefCell<BytesMut>,
    /// Held by whoever writes records to the socket, so two writes in flight
    /// never interleave them. The read side only tries it: when a write holds
    /// it, the records the read side queued go out with that write.
    pub(super) writer: tokio::sync::Mutex<()>,
    /// Bytes of the record rustls has been given part of that it has not been
    /// given yet. The handshake feeds rustls record by record, so that a
    /// hand-over to the kernel never leaves half a record inside rustls.
    rec_left: Cell<usize>,
}

/// What a finished handshake says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts {
    pub version: TlsVersion,
    /// ALPN chose `h2`.
    pub h2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// As the access log writes it (`sc-resinfo`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

pub(super) fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSession {
    pub(super) fn new(mut conn: rustls::Connection) -> TlsSession {
        conn.set_buffer_limit(Some(SEND_BUFFER));
        TlsSession {
            conn: RefCell::new(conn),
            inbuf: RefCell::new(BytesMut::new()),
            writer: tokio::sync::Mutex::new(()),
            rec_left: Cell::new(0),
        }
    }

    /// How much of `inb` may go to rustls now without crossing a record
    /// boundary: the rest of a record already begun, else one whole record
    /// (0 until it has all arrived; rustls could not use part of it anyway).
    fn feedable(&self, inb: &[u8]) -> usize {
        match self.rec_left.get() {
            // Not a TLS record header (plain HTTP on the TLS port, a length past
            // what TLS allows): rustls is given the header, to fail at once.
            0 if inb.len() >= 5 && !plausible_header(inb) => 5,
            0 => match record_len(inb) {
                Some(n) if n <= inb.len() => n,
                _ => 0,
            },
            left => left.min(inb.len()),
        }
    }

    /// Records that rustls took `n` of the bytes [`feedable`](Self::feedable) allowed.
    fn fed(&self, inb: &[u8], n: usize) {
        let left = match self.rec_left.get() {
            0 => record_len(inb).unwrap_or(0),
            left => left,
        };
        self.rec_left.set(left.saturating_sub(n));
    }

    /// Feeds buffered ciphertext to rustls and moves out what plaintext it has
    /// into `buf`: `Some(Ok(n))` with `n > 0` bytes, `Some(Ok(0))` after the
    /// peer's close_notify, `Some(Err)` for a TLS error (an alert is queued for
    /// the peer), `None` when more ciphertext is needed.
    pub(super) fn take_plaintext(&self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        let mut c = self.conn.borrow_mut();
        let mut inb = self.inbuf.borrow_mut();
        loop {
            let state = match c.process_new_packets() {
                Ok(s) => s,
                Err(e) => return Some(Err(tls_error(e))),
            };
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = buf.len();
                buf.resize(start + ready, 0);
                let n = match c.reader().read(&mut buf[start..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => {
                        buf.truncate(start);
                        return Some(Err(e));
                    }
                };
                buf.truncate(start + n);
                if n > 0 {
                    return Some(Ok(n));
                }
            }
            if state.peer_has_closed() {
                return Some(Ok(0));
            }
            if inb.is_empty() {
                return None;
            }
            match c.read_tls(&mut &inb[..]) {
                Ok(0) => return None,
                Ok(n) => inb.advance(n),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Handshake progress: feeds buffered ciphertext to rustls until the
    /// handshake is done or more is needed. Plaintext that came with the client's
    /// Finished (a request sent in the same flight) stays in rustls for the first
    /// read, and ciphertext past the handshake stays buffered.
    pub(super) fn advance_handshake(&self) -> io::Result<()> {
        let mut c = self.conn.borrow_mut();
        let mut inb = self.inbuf.borrow_mut();
        loop {
            c.process_new_packets().map_err(tls_error)?;
            if !c.is_handshaking() {
                return Ok(());
            }
            let n = self.feedable(&inb);
            if n == 0 {
                return Ok(());
            }
            match c.read_tls(&mut &inb[..n])? {
                0 => return Ok(()),
                n => {
                    self.fed(&inb, n);
                    inb.advance(n);
                }
            }
        }
    }

    /// Hands the session to the kernel, right after the handshake and before
    /// any plaintext was taken: complete records already read are decrypted
    /// here (their plaintext is returned, for the first reads), and the keys
    /// with the next sequence numbers come out. `Kept` when the state does not
    /// allow it (half a record read, records still to send, a cipher the kernel
    /// lacks or refused before): the caller keeps rustls.
    pub(super) fn into_kernel(self) -> Result<Handover, Refused> {
        use super::ktls::{crypto_info, Direction, Kind};
        let Some(facts) = self.facts() else {
            return Err(Refused::Kept(Box::new(self)));
        };
        {
            let mut c = self.conn.borrow_mut();
            let mut inb = self.inbuf.borrow_mut();
            let mut clean = true;
            loop {
                match c.process_new_packets() {
                    Ok(s) if !s.peer_has_closed() => {}
                    _ => {
                        clean = false;
                        break;
                    }
                }
                let n = self.feedable(&inb);
                if n == 0 {
                    break;
                }
                match c.read_tls(&mut &inb[..n]) {
                    Ok(m) if m > 0 => {
                        self.fed(&inb, m);
                        inb.advance(m);
                    }
                    _ => break,
                }
            }
            // Half a record in rustls or in our buffer, or records rustls still
            // has to send: the kernel would start at the wrong place.
            let kind = c
                .negotiated_cipher_suite()
                .and_then(|s| Kind::of(facts.version, s.suite()));
            match kind {
                Some(k)
                    if clean
                        && inb.is_empty()
                        && self.rec_left.get() == 0
                        && !c.wants_write()
                        && !k.refused_before() => {}
                _ => {
                    drop((c, inb));
                    return Err(Refused::Kept(Box::new(self)));
                }
            }
        }
        let server_name = self.server_name();
        let mut conn = self.conn.into_inner();
        // What the client sent with its Finished: rustls decrypted it under the
        // keys it is about to give away, so it is handed over as plaintext.
        let mut pending = BytesMut::new();
        let mut chunk = [0u8; 4096];
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Refused::Lost),
            }
        }
        // Extraction is enabled with kTLS and the checks above are its own
        // (handshake done, nothing left to send): an error here is a rustls
        // change, and the session's keys are gone either way.
        let Ok(secrets) = conn.dangerous_extract_secrets() else {
            return Err(Refused::Lost);
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        match (
            crypto_info(facts.version, Direction::Send, tx_seq, &tx),
            crypto_info(facts.version, Direction::Receive, rx_seq, &rx),
        ) {
            (Ok(send), Ok(receive)) => Ok(Handover {
                session: KernelSession {
                    limited: send.has_record_limit(),
                    facts,
                    server_name,
                    pending: RefCell::new(pending),
                    closed: Cell::new(false),
                    records: Cell::new(0),
                },
                send,
                receive,
            }),
            _ => Err(Refused::Lost),
        }
    }

    /// Moves queued records (handshake, data, alerts) out of rustls, up to about
    /// `max` bytes; empty when nothing is queued.
    pub(super) fn take_records(&self, max: usize) -> io::Result<Bytes> {
        let mut c = self.conn.borrow_mut();
        let mut out = Vec::new();
        while c.wants_write() && out.len() < max {
            c.write_tls(&mut out)?;
        }
        Ok(Bytes::from(out))
    }

    /// Encrypts as much of `plain` as the send buffer takes, the pieces
    /// together in records of up to 16 KiB (a head, chunk framing and small
    /// bodies share a record); 0 when the buffer is full.
    pub(super) fn encrypt(&self, plain: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.conn.borrow_mut().writer().write_vectored(plain)
    }

    pub(super) fn is_handshaking(&self) -> bool {
        self.conn.borrow().is_handshaking()
    }

    pub(super) fn is_client(&self) -> bool {
        matches!(&*self.conn.borrow(), rustls::Connection::Client(_))
    }

    pub(super) fn wants_write(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    pub(super) fn close_notify(&self) {
        self.conn.borrow_mut().send_close_notify();
    }

    /// Nothing read and not yet used: no buffered ciphertext, no plaintext.
    pub(super) fn holds_nothing(&self) -> bool {
        if !self.inbuf.borrow().is_empty() {
            return false;
        }
        let mut c = self.conn.borrow_mut();
        c.process_new_packets()
            .is_ok_and(|s| s.plaintext_bytes_to_read() == 0)
    }

    pub fn facts(&self) -> Option<TlsFacts> {
        let c = self.conn.borrow();
        let version = match c.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => TlsVersion::Tls13,
            rustls::ProtocolVersion::TLSv1_2 => TlsVersion::Tls12,
            _ => return None,
        };
        Some(TlsFacts {
            version,
            h2: c.alpn_protocol() == Some(b"h2"),
        })
    }

    /// The SNI name the client sent (server side).
    pub fn server_name(&self) -> Option<String> {
        match &*self.conn.borrow() {
            rustls::Connection::Server(s) => s.server_name().map(str::to_owned),
            rustls::Connection::Client(_) => None,
        }
    }
}

/// The length of the TLS record that `b` starts with, header included, once
/// its 5-byte header is there.
fn record_len(b: &[u8]) -> Option<usize> {
    (b.len() >= 5).then(|| 5 + usize::from(u16::from_be_bytes([b[3], b[4]])))
}

/// A content type TLS defines (20..=24) and a length it allows (2^14 plus
/// the expansion a record may have).
fn plausible_header(b: &[u8]) -> bool {
    (20..=24).contains(&b[0]) && b[1] == 3 && u16::from_be_bytes([b[3], b[4]]) < 16384 + 2048
}

/// Why a session stayed with rustls, or was lost in the hand-over.
pub(super) enum Refused {
    /// Not handed over: rustls goes on.
    Kept(Box<TlsSession>),
    /// The keys left rustls but the kernel cannot have them: close.
    Lost,
}

/// A session whose records the kernel builds: what is left of it in
/// userspace.
pub struct KernelSession {
    pub facts: TlsFacts,
    pub server_name: Option<String>,
    /// Plaintext rustls had decrypted before the hand-over; the first reads get it.
    pub pending: RefCell<BytesMut>,
    /// The peer's close_notify was read (or the record limit reached): every
    /// later read is the end of the stream, as with rustls.
    pub closed: Cell<bool>,
    /// Records sent, counted from above (see [`super::ktls::SOFT_RECORD_LIMIT`]).
    pub records: Cell<u64>,
    /// False for ChaCha20-Poly1305, which does not wear out at these counts.
    pub limited: bool,
}

/// What [`TlsSession::into_kernel`] gives: the session, and its keys for the
/// socket (wiped when dropped).
pub(super) struct Handover {
    pub session: KernelSession,
    pub send: Box<super::ktls::CryptoInfo>,
    pub receive: Box<super::ktls::CryptoInfo>,
}

/// Is the kernel's `tls` ULP there (kTLS)? Read once, at the first call.
pub fn ktls_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .is_ok_and(|s| ulp_listed(&s))
    })
}

/// `tcp_available_ulp` lists names separated by spaces.
fn ulp_listed(list: &str) -> bool {
    list.split_whitespace().any(|u| u == "tls")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_no_tls_record_fail_the_handshake_at_once() {
        let cert = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
        let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            // A handshake record that declares 64 KiB.
            &[22, 3, 1, 0xff, 0xff, 1, 2, 3][..],
        ] {
            let s = TlsSession::new(
                rustls::ServerConnection::new(cfg.clone().into())
                    .unwrap()
                    .into(),
            );
            s.inbuf.borrow_mut().extend_from_slice(junk);
            assert!(s.advance_handshake().is_err(), "{junk:?}");
        }
    }

    #[test]
    fn the_ulp_probe_reads_the_kernels_list() {
        for (list, has) in [
            ("mptcp\n", false),
            ("mptcp tls\n", true),
            ("tls", true),
            ("", false),
            ("tlsx espintcp", false),
        ] {
            assert_eq!(ulp_listed(list), has, "{list:?}");
        }
    }
}
