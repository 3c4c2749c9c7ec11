//! Listening sockets: one per shard per address, grouped with `SO_REUSEPORT` so the
//! kernel spreads new connections across shards.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: the address is already in use by another process")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// Binds `n` listeners on `addr` in one `SO_REUSEPORT` group, in shard order.
///
/// Before that, a probe socket *without* `SO_REUSEPORT` tries the address: if anything
/// else holds it (even another `SO_REUSEPORT` group, which would otherwise silently
/// share our port), the probe fails and so do we, with a clear error.
pub fn bind_group(addr: SocketAddr, n: usize) -> Result<Vec<TcpListener>, ListenError> {
    let io_err = |source| ListenError::Io { addr, source };
    if addr.port() != 0 {
        let probe = socket_for(addr).map_err(io_err)?;
        match probe.bind(&addr.into()) {
            Ok(()) => drop(probe),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(ListenError::InUse { addr })
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let s = socket_for(bound).map_err(io_err)?;
        s.set_reuse_port(true).map_err(io_err)?;
        s.set_nodelay(true).map_err(io_err)?; // inherited by accepted sockets
        s.bind(&bound.into()).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => ListenError::InUse { addr },
            _ => io_err(e),
        })?;
        s.listen(BACKLOG).map_err(io_err)?;
        if bound.port() == 0 {
            // Port 0: the first bind picks the port; the rest of the group joins it.
            bound = s.local_addr().map_err(io_err)?.as_socket().unwrap_or(bound);
        }
        out.push(TcpListener::from(s));
    }
    Ok(out)
}

/// Whether a connection waits on the (blocking) listener `l`, within `wait`:
/// a thread that must notice a flag between accepts polls first.
#[allow(unsafe_code)]
pub fn wait_readable(l: &TcpListener, wait: std::time::Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the call, on a descriptor `l` keeps open.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

/// A listening socket watched for readiness by the shard's reactor, so a
/// shard accepts with `accept4` only when it is ready to serve what it gets
/// (see `shard::accept_one`). Must run inside the shard's runtime.
#[allow(unsafe_code)]
pub fn watch(l: TcpListener) -> io::Result<tokio::io::unix::AsyncFd<TcpListener>> {
    l.set_nonblocking(true)?;
    // SAFETY: the AsyncFd takes `l` by value and owns it until it is dropped
    // or unwrapped, so the fd `l.as_raw_fd()` gives is open, is `l`'s own and
    // stays the same for the AsyncFd's whole life (a std TcpListener never
    // replaces its fd).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `shard::accept_loop` relies on it: accepted sockets are not set again.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_group() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let client = std::net::TcpStream::connect(group[0].local_addr().unwrap()).unwrap();
        let (accepted, _) = group[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        drop(client);
    }

    #[test]
    fn group_shares_port_and_refuses_foreign_holder() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|l| l.local_addr().unwrap().port() == port));
        // A second group on the same port is refused even though we set SO_REUSEPORT.
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(matches!(
            bind_group(addr, 2),
            Err(ListenError::InUse { .. })
        ));
        // Also a plain listener from elsewhere.
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_group(other.local_addr().unwrap(), 1).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
