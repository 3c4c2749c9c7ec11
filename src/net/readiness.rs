//! A readiness set: one epoll instance per shard, for sockets that have no
//! operation in flight and should cost nothing until their peer sends
//! (parked keep-alive connections). The set's own fd is watched through the
//! runtime's reactor, so one task waits for all of them.
//!
//! Registrations are one-shot (`EPOLLONESHOT`): an event disarms its socket,
//! and the owner removes it before the socket is used or closed, so an event
//! never names a socket that has been reused.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

/// Events taken per wake; the rest wait for the next one.
const BATCH: usize = 256;

pub struct ReadySet {
    epoll: AsyncFd<OwnedFd>,
}

impl ReadySet {
    #[allow(unsafe_code)]
    pub fn new() -> io::Result<ReadySet> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
        // new fd that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created above and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns `owned` until it is dropped, so its fd is
        // open, its own and unchanged for the AsyncFd's whole life.
        let epoll =
            unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(ReadySet { epoll })
    }

    /// Watches `fd` for bytes, end of stream or an error; `token` comes back
    /// from [`ready`](Self::ready). Fails with `ENOSPC` past the user's
    /// `max_user_watches`.
    #[allow(unsafe_code)]
    pub fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both fds are open (the caller owns `fd` until it calls
        // `unwatch`), and `ev` is a valid event the kernel only reads.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd`; to be called before `fd` is used or closed.
    #[allow(unsafe_code)]
    pub fn unwatch(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `watch`; a DEL only reads the fds. Its failure (not
        // watched) leaves nothing to undo.
        let _ =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Waits until at least one watched socket is ready, then appends the
    /// tokens of the ready ones (at most a batch) to `out`.
    #[allow(unsafe_code)]
    pub async fn ready(&self, out: &mut Vec<u64>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            let mut guard = self.epoll.readable().await?;
            let r = guard.try_io(|e| {
                // SAFETY: `events` is a valid, writable array of BATCH events;
                // a zero timeout never blocks the shard.
                let n = unsafe {
                    libc::epoll_wait(e.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0)
                };
                match n {
                    n if n < 0 => Err(io::Error::last_os_error()),
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n as usize),
                }
            });
            match r {
                Ok(Ok(n)) => {
                    out.extend(events[..n].iter().map(|e| e.u64));
                    return Ok(());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
