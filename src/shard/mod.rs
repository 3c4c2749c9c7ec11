//! The thread-per-core runtime: one shard per core, each an OS thread pinned with
//! `core_affinity`, running its own tokio-uring runtime (its own io_uring ring),
//! with its own `SO_REUSEPORT` listeners, session table, origin pool and counters.
//! A connection lives and dies on the shard that accepted it; nothing on that path
//! takes a lock.

pub mod keepalive;
pub mod signals;
pub mod supervisor;

pub use crate::context::{Live, ShardCtx, ShardStats, Shared};
use crate::exchange::ConnFacts;
use crate::net::admission::{Refusal, Ticket};
use crate::net::Conn;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// A failing accept (EMFILE) waits this long, doubling up to the maximum.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-failure warning per shard per interval.
const ACCEPT_REPORT: Duration = Duration::from_secs(10);

/// How often a shard hands its buffered access-log lines to the logger.
const LOG_FLUSH: Duration = Duration::from_millis(100);

/// Registers a live connection; unregisters when dropped.
pub struct SessionGuard {
    shard: Rc<ShardCtx>,
    id: u64,
    _ticket: Ticket,
    /// In the session table (not while parked: the keep-alive table then
    /// holds the socket, and closes it on a drain).
    listed: bool,
}

impl SessionGuard {
    fn new(shard: Rc<ShardCtx>, conn: Conn, ticket: Ticket) -> SessionGuard {
        let id = shard.next_session.get();
        shard.next_session.set(id + 1);
        shard.sessions.borrow_mut().insert(id, conn);
        shard.stats().active.fetch_add(1, Relaxed);
        SessionGuard {
            shard,
            id,
            _ticket: ticket,
            listed: true,
        }
    }

    /// Off the session table, still counted open and admitted.
    fn unlist(&mut self) {
        if std::mem::take(&mut self.listed) {
            self.shard.sessions.borrow_mut().remove(&self.id);
        }
    }

    /// Back on the table with its new handle.
    fn relist(&mut self, conn: Conn) {
        self.shard.sessions.borrow_mut().insert(self.id, conn);
        self.listed = true;
    }

    /// Unique across shards: the shard in the top bits.
    fn session_id(&self) -> u64 {
        ((self.shard.id as u64) << 48) | self.id
    }

    /// The end of a connection: its session entry and admission ticket go,
    /// and so do its private origin connections (Private="ON").
    fn end(self) {
        let (shard, session_id) = (self.shard.clone(), self.session_id());
        drop(self);
        shard.upstreams.pool.borrow_mut().drop_owner(session_id);
    }
}

/// A warning said at most once per interval, with a count of the ones held back.
pub(crate) struct Throttled {
    last: Option<tokio::time::Instant>,
    held: u64,
}

impl Throttled {
    const fn new() -> Throttled {
        Throttled {
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last one)` when it is time to say it again.
    fn due(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_REPORT)
        {
            self.last = Some(now);
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.unlist();
        self.shard.stats().active.fetch_sub(1, Relaxed);
    }
}

/// Submission queue entries per shard ring.
const RING_ENTRIES: u32 = 1024;

/// Whether `shards` rings can be made here at once (io_uring allowed, within
/// the memory limits). An upgrade checks before it takes over, when a shard
/// that cannot start would leave nothing serving. (Stricter than needed
/// where the old process's rings count against the same limit.)
pub fn probe_rings(shards: usize) -> std::io::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            (0..shards)
                .map(|_| new_ring())
                .collect::<std::io::Result<Vec<_>>>()
                .map(drop)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("making a ring panicked")))
    })
}

/// A shard's runtime and ring. One thread submits to it (`SINGLE_ISSUER`:
/// tokio-uring's driver is `!Send`, and a restarted shard gets a new ring),
/// and completions wait for that thread's next entry into the kernel instead
/// of interrupting it (`COOP_TASKRUN`: the shard sleeps in `epoll_wait`,
/// which the kernel still wakes for task work). Kernels that refuse a flag
/// (`EINVAL`: `SINGLE_ISSUER` before 6.0, `COOP_TASKRUN` before 5.19) get
/// the ones they take. Not `DEFER_TASKRUN` or `TASKRUN_FLAG`: tokio-uring
/// never enters the kernel to reap (`GETEVENTS`), so deferred work would
/// never run.
fn new_ring() -> std::io::Result<tokio_uring::Runtime> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let mut last = None;
    for step in 0..3 {
        let mut tuned = tokio_uring::uring_builder();
        let flags = match step {
            0 => {
                tuned.setup_coop_taskrun().setup_single_issuer();
                "COOP_TASKRUN and SINGLE_ISSUER"
            }
            1 => {
                tuned.setup_coop_taskrun();
                "COOP_TASKRUN"
            }
            _ => "no setup flags",
        };
        let mut b = tokio_uring::builder();
        b.entries(RING_ENTRIES).uring_builder(&tuned);
        match tokio_uring::Runtime::new(&b) {
            Ok(rt) => {
                SAID.call_once(|| log::info!("shard rings: io_uring with {flags}"));
                return Ok(rt);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::Unsupported)))
}

/// Starts shard `id` on the current thread and runs it until the drain completes.
/// `listeners[g]` is this shard's listener for listen group `g`.
pub fn run(id: usize, shared: Arc<Shared>, listeners: Vec<TcpListener>) {
    let rt = new_ring().unwrap_or_else(|e| panic!("shard {id}: no io_uring ring: {e}"));
    rt.block_on(async move {
        let shard = Rc::new(ShardCtx::new(id, shared.clone()));
        let _ends = EndOnPanic(shard.clone());
        let parked = match keepalive::KeepAlive::new(shard.clone()) {
            Ok(k) => Some(Rc::new(k)),
            Err(e) => {
                log::error!("shard {id}: no epoll instance for idle connections ({e}): they are not parked, and keep their buffers");
                None
            }
        };
        let mut parker = parked.clone().map(|k| tokio_uring::spawn(k.run()));
        for (group, l) in listeners.into_iter().enumerate() {
            let local = l.local_addr().ok();
            let l = match crate::net::listen::watch(l) {
                Ok(l) => l,
                // A shard that cannot listen must not pass for one that serves.
                Err(e) => panic!("shard {id}: cannot watch its listening socket: {e}"),
            };
            tokio_uring::spawn(accept_loop(shard.clone(), parked.clone(), l, group, local));
        }
        let flusher = shard.clone();
        tokio_uring::spawn(async move {
            loop {
                tokio::time::sleep(LOG_FLUSH).await;
                flusher.flush_log();
            }
        });
        shared.ready.fetch_add(1, Relaxed);
        let parker_ended = tokio::select! {
            _ = shard.drain_started() => None,
            r = async {
                match &mut parker {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => Some(r),
            _ = injected_fault(&shared, id) => {
                panic!("injected fault: shard {id} was told to panic (a fault-injection build)")
            }
        };
        if let Some(r) = parker_ended {
            // The table's task ends by itself when the drain starts (it may
            // be seen first); ended otherwise, parked connections would
            // wait for nobody: the shard restarts.
            if !shard.draining() {
                panic!("shard {id}: the keep-alive table's task ended: {r:?}");
            }
            if let (Err(e), Some(k)) = (r, &parked) {
                log::error!("shard {id}: the keep-alive table's task failed ({e}); closing what it held");
                k.close_all();
            }
            parker = None;
        }
        let deadline = tokio::time::Instant::now() + shared.drain_timeout;
        // Parked connections: closed, or handed to tasks (on the session
        // table) where a request was waiting.
        if let (Some(p), Some(k)) = (parker, &parked) {
            if let Ok(Err(e)) = tokio::time::timeout_at(deadline, p).await {
                log::error!("shard {id}: the keep-alive table's task failed in the drain ({e}); closing what it held");
                k.close_all();
            }
        }
        // Idle keep-alive sessions notice the drain themselves and close; busy ones
        // finish their response (with Connection: Close) first.
        while !shard.sessions.borrow().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = shard.sessions.borrow().len();
        if left > 0 {
            log::warn!(
                "shard {id}: drain deadline passed with {left} connections open; closing them"
            );
            for c in shard.sessions.borrow().values() {
                c.shutdown();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shard.upstreams.pool.borrow_mut().clear();
        shard.flush_log();
    });
}

/// When a shard dies, its clients see their connections end at once: each
/// session's socket is shut down (a FIN, or a reset for unread bytes) as the
/// shard's future is dropped in the unwind, before the ring's teardown closes
/// the sockets in its own time. (Parked connections are not sessions: their
/// fds close as the keep-alive table is dropped with the runtime.)
struct EndOnPanic(Rc<ShardCtx>);

impl Drop for EndOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Not `borrow()`: a panic while the table was borrowed must not
        // become a second panic (an abort) here.
        if let Ok(sessions) = self.0.sessions.try_borrow() {
            for c in sessions.values() {
                c.shutdown();
            }
        }
    }
}

/// Returns when `/debug/panic` asks this shard to die (fault-injection builds
/// only; never otherwise). Polled, so the hook costs nothing on any request.
async fn injected_fault(shared: &Shared, id: usize) {
    #[cfg(feature = "fault-injection")]
    loop {
        if shared.stats[id].fault.swap(false, Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = (shared, id);
        std::future::pending::<()>().await
    }
}

/// One connection from a listening socket, on readiness: `accept4` runs only
/// when this future is polled and the socket is readable, so dropping the
/// future (a drain, a shard's panic) never leaves a connection accepted for
/// nobody. (A ring's accept would: once the kernel completes it, the new fd
/// belongs to the process whether or not the ring is ever polled again, and a
/// dying or draining ring drops it unclosed; the client hangs.) The accepted
/// socket is blocking, as io_uring's own accept gives it.
async fn accept_one(
    listener: &tokio::io::unix::AsyncFd<TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| l.get_ref().accept()) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn accept_loop(
    shard: Rc<ShardCtx>,
    parked: Option<Rc<keepalive::KeepAlive>>,
    listener: tokio::io::unix::AsyncFd<TcpListener>,
    group: usize,
    bound: Option<SocketAddr>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures = Throttled::new();
    // One throttle per cap, so each is reported.
    let mut refusals = [Throttled::new(), Throttled::new()];
    loop {
        let accepted = tokio::select! {
            r = accept_one(&listener) => r,
            _ = shard.drain_started() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let ticket = match shard.shared.admission.admit(peer.ip()) {
                    Ok(t) => t,
                    Err(why) => {
                        // Closed at once, unread: cheaper than any answer.
                        drop(stream);
                        shard.stats().refused.fetch_add(1, Relaxed);
                        let (cap, slot) = match why {
                            Refusal::Global => ("MaxSockets", 0),
                            Refusal::PerAddress => ("MaxConnectionsPerIp", 1),
                        };
                        if let Some(held) = refusals[slot].due() {
                            log::warn!(
                                "shard {}: connection from {} closed: {cap} reached ({held} more since the last report)",
                                shard.id,
                                peer.ip()
                            );
                        }
                        continue;
                    }
                };
                let conn = Conn::accepted(tokio_uring::net::TcpStream::from_std(stream));
                shard.stats().connections.fetch_add(1, Relaxed);
                let guard = SessionGuard::new(shard.clone(), conn.clone(), ticket);
                let s = shard.clone();
                // Unique across shards: the shard in the top bits.
                let session_id = guard.session_id();
                // The connection's futures stay small (the task's own 0.3 KiB,
                // HTTP/1's 3.7 KiB with its wait for a head inline): the
                // rare and the large phases (serving a request, TLS reads,
                // HTTP/2) are boxed, so spawning copies little; a quiet plain
                // connection gives its task up (`keepalive`).
                // A wildcard listener does not say which address the client reached.
                let local = match bound {
                    Some(a) if !a.ip().is_unspecified() => a,
                    _ => conn.local_addr().unwrap_or_else(|_| {
                        bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
                    }),
                };
                let facts = ConnFacts {
                    peer,
                    local,
                    group,
                    session_id,
                    tls: None,
                };
                let parked = parked.clone();
                tokio_uring::spawn(async move {
                    let Some((conn, facts, certs)) = Box::pin(handshake(&s, conn, facts)).await
                    else {
                        return guard.end();
                    };
                    if facts.tls.is_some_and(|t| t.h2) {
                        // Boxed: an HTTP/2 connection's future is twice an
                        // HTTP/1 one's, which every connection would carry.
                        let none = bytes::BytesMut::new();
                        Box::pin(crate::downstream::h2::serve(
                            s.clone(),
                            conn,
                            facts,
                            certs,
                            none,
                        ))
                        .await;
                    } else {
                        // Boxed too: this task's own future then holds only
                        // what it captured, not a copy of the largest phase.
                        use crate::downstream::http1;
                        let parkable = parked.is_some();
                        let serve = http1::serve(s.clone(), conn, facts, certs, parkable);
                        let mut quiet = Box::pin(serve).await;
                        while let Some(idle) = quiet {
                            // Quiet between requests: this task ends, and the
                            // connection waits in the shard's table.
                            if let Some(k) = &parked {
                                return k.park(idle, guard);
                            }
                            let (conn, wait) = (idle.conn, idle.wait.unparkable());
                            quiet = Box::pin(http1::resume(s.clone(), conn, wait)).await;
                        }
                    }
                    guard.end();
                });
            }
            Err(e) => {
                if shard.draining() {
                    return;
                }
                // The connection went away before it was taken (accept(2):
                // these are to be retried at once).
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR)
                ) {
                    continue;
                }
                // EMFILE/ENFILE and friends: back off instead of spinning, and say
                // so once per interval, not once per failed accept.
                if let Some(held) = failures.due() {
                    log::warn!(
                        "shard {}: accept failed: {e} ({held} more since the last report); backing off up to {}ms",
                        shard.id,
                        ACCEPT_BACKOFF_MAX.as_millis()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// The certificates a TLS connection's handshake chose among.
type Certs = Option<Arc<crate::config::tls::CertSet>>;

/// On a TLS address, the handshake (within `TlsHandshakeTimeoutSec`) with the
/// certificates in force now; a plain address passes through.
async fn handshake(
    shard: &ShardCtx,
    conn: Conn,
    mut facts: ConnFacts,
) -> Option<(Conn, ConnFacts, Certs)> {
    let (server, certs, timeout) = {
        let live = shard.shared.live.load();
        match live.config.listeners[facts.group].tls.as_ref() {
            None => return Some((conn, facts, None)),
            Some(t) => (
                t.server.clone(),
                t.certs.clone(),
                live.config.server.handshake_timeout,
            ),
        }
    };
    match conn.accept_tls(server, timeout).await {
        Ok(tls) => {
            shard.stats().tls_handshakes.fetch_add(1, Relaxed);
            if tls.is_kernel_tls() {
                shard.stats().tls_kernel.fetch_add(1, Relaxed);
            }
            // rustls negotiates only the versions it was given (1.2, 1.3).
            let (version, h2) = tls
                .tls_facts()
                .map_or((crate::net::tls::TlsVersion::Tls12, false), |f| {
                    (f.version, f.h2)
                });
            let cert = certs.pick(tls.tls_server_name().as_deref());
            facts.tls = Some(crate::exchange::TlsInfo { version, cert, h2 });
            Some((tls, facts, Some(certs)))
        }
        Err(e) => {
            shard.stats().tls_failures.fetch_add(1, Relaxed);
            log::debug!("{}: TLS handshake failed: {e}", facts.peer);
            conn.shutdown();
            None
        }
    }
}

/// Which core each shard is pinned to: shard i on the i-th online core, wrapping
/// around when there are more shards than cores.
pub fn cores_for(shards: usize) -> Vec<Option<core_affinity::CoreId>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    (0..shards)
        .map(|i| (!cores.is_empty()).then(|| cores[i % cores.len()]))
        .collect()
}

/// The number of shards when `--shards` is not given: one per online core.
pub fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Spawns the shard threads. `listeners[g][i]` is shard i's socket for group g; the
/// caller keeps the originals open for the process's life (restarts use clones, so a
/// restarted shard rejoins the same `SO_REUSEPORT` group).
pub fn spawn_all(
    shared: Arc<Shared>,
    listeners: &[Vec<TcpListener>],
    shards: usize,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let cores = cores_for(shards);
    let mut handles = Vec::with_capacity(shards);
    for (id, core) in cores.into_iter().enumerate() {
        let mine: Vec<TcpListener> = listeners
            .iter()
            .map(|g| g[id].try_clone())
            .collect::<Result<_, _>>()?;
        let shared = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        log::warn!("shard {id}: could not pin to core {}", core.id);
                    }
                }
                let label = format!("shard {id}");
                supervisor::supervise(&label, &shared.clone().stats[id].restarts, || {
                    let clones = mine
                        .iter()
                        .map(|l| l.try_clone().expect("dup listener fd"))
                        .collect();
                    run(id, shared.clone(), clones);
                });
            })?;
        handles.push(h);
    }
    Ok(handles)
}

/// Waits until every shard's ring is up (first start only), or `timeout` passes.
pub fn wait_ready(shared: &Shared, shards: usize, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while (shared.ready.load(Relaxed) as usize) < shards {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Listen addresses as `http://` URLs, for the startup banner.
/// One per listener, `https://` ones first (`tls[i]`: group i is TLS).
pub fn urls(addrs: &[SocketAddr], tls: &[bool]) -> Vec<String> {
    let scheme = |t: bool| if t { "https" } else { "http" };
    let mut out: Vec<(bool, String)> = addrs
        .iter()
        .zip(tls)
        .map(|(a, &t)| (t, format!("{}://{a}/", scheme(t))))
        .collect();
    out.sort_by_key(|(t, _)| !t);
    out.into_iter().map(|(_, u)| u).collect()
}
