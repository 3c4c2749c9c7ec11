//! kTLS: after rustls's handshake, the session keys go to the kernel's `tls`
//! ULP, so records are built and taken apart in the kernel and a TLS hit is
//! written from the cache mapping like a plaintext one.
//!
//! The key hand-over ([`crypto_info`]) is sans-IO: the kernel's
//! `struct tls12_crypto_info_*` (linux/tls.h) built byte by byte, because that
//! layout is the ABI. The socket calls are at the bottom of the file.
//!
//! What the kernel does not do for us: a TLS 1.3 KeyUpdate from the client, or
//! any other post-handshake message, arrives as a control record that the read
//! reports as `EIO`; cairn then ends the connection (rustls's `KernelConnection`,
//! which could answer it, exists only for its unbuffered API). A close_notify
//! is read as the end of the stream.

use super::tls::TlsVersion;
use rustls::ConnectionTrafficSecrets;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

// linux/tcp.h, linux/tls.h.
use libc::{
    SOL_TLS, TCP_ULP, TLS_1_2_VERSION, TLS_1_3_VERSION,
    TLS_CIPHER_AES_GCM_128 as CIPHER_AES_GCM_128, TLS_CIPHER_AES_GCM_256 as CIPHER_AES_GCM_256,
    TLS_CIPHER_CHACHA20_POLY1305 as CIPHER_CHACHA20_POLY1305, TLS_GET_RECORD_TYPE, TLS_RX,
    TLS_SET_RECORD_TYPE, TLS_TX,
};

/// Records a kernel session may send before cairn winds it down: the kernel
/// neither rekeys nor counts, and rustls's kernel API leaves AES-GCM's
/// confidentiality limit (about 2^24.5 records) to the caller. Counted from
/// above (one record per write plus one per 16 KiB). Past the soft limit a
/// response closes the connection (HTTP/1) or GOAWAY is sent (h2); at the
/// hard one reads end. ChaCha20-Poly1305 has no such limit at these counts.
pub const SOFT_RECORD_LIMIT: u64 = 1 << 22;
pub const HARD_RECORD_LIMIT: u64 = 1 << 24;

const RECORD_ALERT: u8 = 21;
const RECORD_HANDSHAKE: u8 = 22;

/// An upper bound on the records one `writev` of `bufs` makes: the kernel
/// closes a record at 16 KiB and at the end of each call (each retry of a
/// short write is counted as its own call).
pub fn records_for(bufs: &[bytes::Bytes]) -> u64 {
    let n: usize = bufs.iter().map(|b| b.len()).sum();
    1 + (n as u64).div_ceil(16384)
}

impl CryptoInfo {
    /// Does the cipher wear out at record counts a connection can reach?
    pub fn has_record_limit(&self) -> bool {
        self.kind.cipher != CIPHER_CHACHA20_POLY1305
    }
}

/// Which way a key goes: the kernel builds TLS 1.2 AES-GCM nonces for sending
/// differently from rustls (see [`tls12_gcm_send_nonce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Receive,
}

/// A cipher the kernel cannot take, or a suite rustls added after this was
/// written: the connection keeps rustls records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the kernel's TLS takes AES-GCM and ChaCha20-Poly1305 only")]
pub struct Unsupported;

/// One direction's `struct tls12_crypto_info_*`, as `setsockopt(SOL_TLS)`
/// reads it. Holds key material: zeroed on drop.
pub struct CryptoInfo {
    bytes: [u8; 56],
    len: usize,
    kind: Kind,
}

impl CryptoInfo {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        for b in self.bytes.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into our own
            // array; the volatile write only keeps the compiler from eliding
            // the wipe of a value about to be dropped.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write_volatile(b, 0)
            };
        }
    }
}

impl std::fmt::Debug for CryptoInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CryptoInfo {{ {:?} }}", self.kind)
    }
}

/// The kernel's crypto info for one direction of a session, from what rustls
/// extracted: `seq` is the next record's sequence number in that direction.
pub fn crypto_info(
    version: TlsVersion,
    direction: Direction,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Result<Box<CryptoInfo>, Unsupported> {
    let v = match version {
        TlsVersion::Tls12 => TLS_1_2_VERSION,
        TlsVersion::Tls13 => TLS_1_3_VERSION,
    };
    let (cipher, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            (CIPHER_AES_GCM_128, key.as_ref(), iv.as_ref())
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            (CIPHER_AES_GCM_256, key.as_ref(), iv.as_ref())
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (CIPHER_CHACHA20_POLY1305, key.as_ref(), iv.as_ref())
        }
        _ => return Err(Unsupported),
    };
    let want_key = if cipher == CIPHER_AES_GCM_128 { 16 } else { 32 };
    if key.len() != want_key || iv.len() != 12 {
        return Err(Unsupported);
    }
    // Built where it stays (boxed): no copy of the key is left behind by a move.
    let mut out = Box::new(CryptoInfo {
        bytes: [0; 56],
        len: 0,
        kind: Kind { version: v, cipher },
    });
    let mut put = |b: &[u8]| {
        out.bytes[out.len..out.len + b.len()].copy_from_slice(b);
        out.len += b.len();
    };
    // struct tls_crypto_info { __u16 version; __u16 cipher_type; }, host order.
    put(&v.to_ne_bytes());
    put(&cipher.to_ne_bytes());
    if cipher == CIPHER_CHACHA20_POLY1305 {
        // iv[12], key[32], salt[0], rec_seq[8]: nonce = iv ^ seq, as rustls.
        put(iv);
        put(key);
    } else {
        // iv[8], key[], salt[4], rec_seq[8]. rustls's 12-byte iv is salt ‖ iv.
        let (salt, rest) = iv.split_at(4);
        let mut iv8: [u8; 8] = rest.try_into().expect("12 - 4");
        if version == TlsVersion::Tls12 && direction == Direction::Send {
            iv8 = tls12_gcm_send_nonce(u64::from_be_bytes(iv8), seq).to_be_bytes();
        }
        put(&iv8);
        put(key);
        put(salt);
    }
    put(&seq.to_be_bytes());
    Ok(out)
}

/// The first explicit nonce the kernel sends under TLS 1.2 AES-GCM.
///
/// rustls makes record `s`'s explicit nonce `base ^ s`; the kernel starts at
/// the value it is given and adds one per record. Handed `base`, the kernel's
/// first record would reuse the nonce of rustls's first (the Finished): with
/// GCM, that gives the key stream away. The `seq` records rustls sent used
/// nonces inside the aligned block of `seq.next_power_of_two()` values around
/// `base`, so the kernel starts just past that block, and would come back to
/// it only after 2⁶⁴ minus that many records.
pub fn tls12_gcm_send_nonce(base: u64, seq: u64) -> u64 {
    if seq == 0 {
        return base;
    }
    let mask = seq.checked_next_power_of_two().map_or(u64::MAX, |p| p - 1);
    (base | mask).wrapping_add(1)
}

/// A kind of session as the kernel sees it: protocol version and cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    version: u16,
    cipher: u16,
}

/// Kinds a kernel refused: later connections of that kind keep rustls
/// records instead of losing their session the same way.
static REFUSED: [AtomicBool; 6] = [const { AtomicBool::new(false) }; 6];
/// Install failures in a row, per kind.
static FAILURES: [std::sync::atomic::AtomicU32; 6] =
    [const { std::sync::atomic::AtomicU32::new(0) }; 6];

impl Kind {
    /// The kind of a negotiated suite, if the kernel has its cipher.
    pub fn of(version: TlsVersion, suite: rustls::CipherSuite) -> Option<Kind> {
        use rustls::CipherSuite as S;
        let cipher = match suite {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => CIPHER_AES_GCM_128,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => CIPHER_AES_GCM_256,
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => CIPHER_CHACHA20_POLY1305,
            _ => return None,
        };
        let version = match version {
            TlsVersion::Tls12 => TLS_1_2_VERSION,
            TlsVersion::Tls13 => TLS_1_3_VERSION,
        };
        Some(Kind { version, cipher })
    }

    fn index(self) -> usize {
        let v = usize::from(self.version == TLS_1_3_VERSION);
        let c = match self.cipher {
            CIPHER_AES_GCM_128 => 0,
            CIPHER_AES_GCM_256 => 1,
            _ => 2,
        };
        v * 3 + c
    }

    fn slot(self) -> &'static AtomicBool {
        &REFUSED[self.index()]
    }

    fn failures(self) -> &'static std::sync::atomic::AtomicU32 {
        &FAILURES[self.index()]
    }

    /// Has the kernel refused this kind of session before?
    pub fn refused_before(self) -> bool {
        self.slot().load(Relaxed)
    }

    fn refuse(self) {
        self.slot().store(true, Relaxed);
    }
}

/// What a control record read after `EIO` was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The peer's close_notify: the end of the stream.
    CloseNotify,
    /// A warning that a close_notify follows: read on.
    UserCanceled,
    /// Any other alert (level, description): the peer ended the session.
    Alert(u8, u8),
    /// A post-handshake message (a KeyUpdate); cairn ends the connection.
    Handshake,
    Other(u8),
}

/// Reads a control record's type and first bytes into what it means.
pub fn control(record_type: u8, body: &[u8]) -> Control {
    match (record_type, body) {
        (RECORD_ALERT, [_, 0, ..]) => Control::CloseNotify,
        // user_canceled is a warning that precedes a close_notify (RFC 8446
        // §6.1): not an abort.
        (RECORD_ALERT, [1, 90, ..]) => Control::UserCanceled,
        (RECORD_ALERT, [level, desc, ..]) => Control::Alert(*level, *desc),
        (RECORD_HANDSHAKE, _) => Control::Handshake,
        (t, _) => Control::Other(t),
    }
}

// ---- the socket calls ----

fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a live slice for the whole call and its length is the
    // one passed; setsockopt copies it and keeps no pointer. A bad fd is an
    // error return, not undefined behaviour.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Set when the kernel said it has no `tls` ULP after all (module gone,
/// sockets of this kind not supported): no more attempts.
static NO_ULP: AtomicBool = AtomicBool::new(false);

/// Attaches the `tls` ULP. Until keys are installed the socket still carries
/// plain TCP, so a failure after this leaves rustls usable.
pub(super) fn attach(fd: RawFd) -> io::Result<()> {
    if NO_ULP.load(Relaxed) {
        return Err(io::ErrorKind::Unsupported.into());
    }
    setsockopt(fd, libc::IPPROTO_TCP, TCP_ULP, b"tls")
}

/// After [`attach`] failed: a kernel that lacks the ULP is told once and not
/// asked again; a failure of one socket (the peer already gone) is its own.
pub(super) fn attach_failed(e: &io::Error) {
    if lacks_support(e) && !NO_ULP.swap(true, Relaxed) {
        log::warn!("kTLS: the kernel lists the tls ULP but will not attach it ({e}); rustls builds the records from now on");
    }
}

/// Installs both directions' keys. An error here leaves the session unusable
/// (rustls gave its keys away); an error that says the kernel lacks this kind
/// of session marks the kind refused for later ones (a transient one does not).
pub(super) fn install(fd: RawFd, send: &CryptoInfo, receive: &CryptoInfo) -> io::Result<()> {
    let r = setsockopt(fd, SOL_TLS, TLS_TX, send.as_bytes())
        .and_then(|()| setsockopt(fd, SOL_TLS, TLS_RX, receive.as_bytes()));
    match &r {
        Ok(()) => send.kind.failures().store(0, Relaxed),
        Err(e) => {
            // A kernel that says it cannot, or one that fails three sessions
            // of a kind in a row: that kind keeps rustls from then on.
            let n = send.kind.failures().fetch_add(1, Relaxed) + 1;
            if lacks_support(e) || n >= 3 {
                send.kind.refuse();
            }
        }
    }
    r
}

/// Errors by which a kernel says it cannot do this at all.
fn lacks_support(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOENT | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Sends a close_notify alert as its own record (without blocking the shard).
pub(super) fn send_close_notify(fd: RawFd) -> io::Result<()> {
    let mut alert = [1u8, 0]; // warning, close_notify
    let mut cmsg_buf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: alert.as_mut_ptr().cast(),
        iov_len: alert.len(),
    };
    // SAFETY: every pointer in `msg` points into locals that outlive the call
    // (`iov`, `alert`, `cmsg_buf`, 8-aligned and large enough for one cmsg of one
    // byte: CMSG_SPACE(1) is 24 on 64-bit Linux); CMSG_FIRSTHDR on a msghdr with
    // that control buffer returns a pointer into it.
    #[allow(unsafe_code)]
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = SOL_TLS;
        (*c).cmsg_type = TLS_SET_RECORD_TYPE;
        (*c).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(c) = RECORD_ALERT;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// After a read failed with `EIO`: takes the control record waiting at the
/// head of the socket and says what it was.
pub(super) fn read_control(fd: RawFd) -> io::Result<Control> {
    let mut body = [0u8; 64];
    let mut cmsg_buf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    };
    // SAFETY: as in `send_close_notify`: all pointers are to locals that outlive
    // the call, the control buffer is aligned and sized for one 1-byte cmsg, and
    // the cmsg walk stays within `msg_controllen` as the kernel set it.
    #[allow(unsafe_code)]
    let (n, record_type) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut t = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_TLS && (*c).cmsg_type == TLS_GET_RECORD_TYPE {
                t = Some(*libc::CMSG_DATA(c));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        (n as usize, t)
    };
    Ok(match record_type {
        Some(t) => control(t, &body[..n]),
        // Application data after all (the EIO was something else): not ours to
        // interpret; the caller ends the connection.
        None => Control::Other(23),
    })
}

#[cfg(test)]
mod tests;
