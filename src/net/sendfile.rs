//! sendfile on a socket that the ring otherwise owns. The socket is
//! non-blocking only for these calls: io_uring's read and write ops on an
//! `O_NONBLOCK` file fail with `EAGAIN` instead of waiting, so the flag must
//! not outlive them (no other op is in flight while a response is written).
//! A full socket is waited on through the runtime's readiness (epoll).
#![allow(unsafe_code)]

use super::IoError;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// `O_NONBLOCK` on a socket while this lives; its flags as they were after.
struct NonBlocking {
    fd: RawFd,
    flags: libc::c_int,
}

impl NonBlocking {
    /// # Safety
    /// `fd` stays open while the guard lives.
    unsafe fn set(fd: RawFd) -> io::Result<NonBlocking> {
        // SAFETY: fcntl on a descriptor open per the contract; no memory.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking { fd, flags })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // SAFETY: open for the guard's life (the contract of `set`).
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}

/// Sends `len` bytes of `file` from `offset` on `sock`; each wait for room is
/// bounded by `timeout` (then `TimedOut`: the caller shuts the socket down).
/// Returns the bytes sent, also on error.
pub(super) async fn send(
    sock: &impl AsRawFd,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    timeout: Duration,
) -> (usize, Result<(), IoError>) {
    let sock = sock.as_raw_fd();
    // SAFETY: `sock` is borrowed for this future's life, and the guard is
    // dropped in it.
    let nonblocking = match unsafe { NonBlocking::set(sock) } {
        Ok(g) => g,
        Err(e) => return (0, Err(e.into())),
    };
    let mut sent = 0usize;
    let mut ready: Option<AsyncFd<RawFd>> = None;
    let r = loop {
        if sent == len {
            break Ok(());
        }
        let Ok(mut off) = libc::off_t::try_from(offset + sent as u64) else {
            break Err(io::Error::from(io::ErrorKind::InvalidInput).into());
        };
        // SAFETY: the socket is open (borrowed) and the file borrowed for
        // the call; `off` is a live local that the call updates.
        let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut off, len - sent) };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        if n == 0 {
            // The file ended early (never for a leased region).
            break Err(io::Error::from(io::ErrorKind::WriteZero).into());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {}
            _ => break Err(e.into()),
        }
        let fd = match &ready {
            Some(fd) => fd,
            // SAFETY: registration only watches the number: the socket is
            // open until this future ends (borrowed), and `ready` is dropped
            // (deregistered) before it ends.
            None => match unsafe {
                AsyncFd::register_with_interest(sock, tokio::io::Interest::WRITABLE)
            } {
                Ok(fd) => ready.insert(fd),
                Err(e) => break Err(e.into_parts().1.into()),
            },
        };
        match tokio::time::timeout(timeout, fd.writable()).await {
            Ok(Ok(mut guard)) => guard.clear_ready(),
            Ok(Err(e)) => break Err(e.into()),
            Err(_) => break Err(IoError::TimedOut),
        }
    };
    // Off epoll, then blocking again, before the ring sees the socket.
    drop(ready);
    drop(nonblocking);
    (sent, r)
}
