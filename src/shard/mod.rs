//! The thread-per-core runtime: one shard per core, each an OS thread pinned with
//! `core_affinity`, running its own tokio-uring runtime (its own io_uring ring),
//! with its own `SO_REUSEPORT` listeners, session table, origin pool and counters.
//! A connection lives and dies on the shard that accepted it; nothing on that path
//! takes a lock.

pub mod signals;
pub mod supervisor;

use crate::config::Config;
use crate::http1::Limits;
use crate::net::Conn;
use crate::origin::Pool;
use crate::vhost::Router;
use ahash::AHashMap;
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Counters one shard writes and anyone may read (summed when read). Each is
/// written by its own shard only, so relaxed atomics suffice and never contend.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub active: AtomicU64,
    pub restarts: AtomicU64,
    pub origin_connects: AtomicU64,
}

/// The configuration in force and what is derived from it. Swapped whole on
/// reload; a request uses the one it started with.
pub struct Live {
    pub config: Arc<Config>,
    /// One router per listen group, in `config.listeners` order.
    pub routers: Vec<Router>,
}

impl Live {
    pub fn new(config: Arc<Config>) -> Live {
        let routers = config
            .listeners
            .iter()
            .map(|g| Router::new(&config, &g.vhosts))
            .collect();
        Live { config, routers }
    }
}

/// What every shard shares (plus its own stats slot).
pub struct Shared {
    /// The running configuration; `load()` is a lock-free read.
    pub live: arc_swap::ArcSwap<Live>,
    pub limits: Limits,
    pub stats: Vec<ShardStats>,
    /// Flips to `true` when the process starts draining.
    pub drain: watch::Sender<bool>,
    /// How long in-flight responses may take to finish when draining.
    pub drain_timeout: Duration,
    /// Shards whose ring and listeners are up; the banner waits for all of them.
    pub ready: AtomicU64,
    pub cache: Arc<crate::cache::Cache>,
    pub geo: Option<Arc<crate::geoip::GeoDb>>,
}

impl Shared {
    pub fn new(config: Arc<Config>, shards: usize, cache: Arc<crate::cache::Cache>) -> Shared {
        let drain_timeout = config.server.drain_timeout;
        Shared {
            live: arc_swap::ArcSwap::from_pointee(Live::new(config)),
            limits: Limits::default(),
            stats: (0..shards).map(|_| ShardStats::default()).collect(),
            drain: watch::channel(false).0,
            drain_timeout,
            ready: AtomicU64::new(0),
            cache,
            geo: None,
        }
    }

    /// Replaces the running configuration. Listen addresses and the cache cannot
    /// change without a restart (their sockets and files are open): such a config
    /// is refused whole, and the running one stays in force.
    pub fn reload(&self, config: Arc<Config>) -> Result<(), String> {
        let old = self.live.load();
        let addrs = |c: &Config| c.listeners.iter().map(|g| g.addr).collect::<Vec<_>>();
        if addrs(&old.config) != addrs(&config) {
            return Err("listen addresses changed; restart cairn to apply them".into());
        }
        if old.config.cache != config.cache {
            return Err("cache storage settings changed; restart cairn to apply them".into());
        }
        if old.config.server.geoip != config.server.geoip
            || old.config.server.drain_timeout != config.server.drain_timeout
        {
            log::warn!("reload: the GeoIP database and the drain timeout keep their running values until a restart");
        }
        self.live.store(Arc::new(Live::new(config)));
        Ok(())
    }
}

/// A shard's own state, on its thread only (`Rc`, `Cell`, `RefCell`: no locks).
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: RefCell<Pool>,
    /// Round-robin position over a vhost's origin addresses.
    pub rr: Cell<usize>,
    /// Live client connections, so a drain past its deadline can release them.
    sessions: RefCell<AHashMap<u64, Conn>>,
    next_session: Cell<u64>,
}

impl Shard {
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }
    pub fn draining(&self) -> bool {
        *self.shared.drain.borrow()
    }
    /// Completes when draining starts.
    pub async fn drain_started(&self) {
        let mut rx = self.shared.drain.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Registers a live connection; unregisters when dropped.
pub struct SessionGuard {
    shard: Rc<Shard>,
    id: u64,
}

impl SessionGuard {
    fn new(shard: Rc<Shard>, conn: Conn) -> SessionGuard {
        let id = shard.next_session.get();
        shard.next_session.set(id + 1);
        shard.sessions.borrow_mut().insert(id, conn);
        shard.stats().active.fetch_add(1, Relaxed);
        SessionGuard { shard, id }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shard.sessions.borrow_mut().remove(&self.id);
        self.shard.stats().active.fetch_sub(1, Relaxed);
    }
}

/// Starts shard `id` on the current thread and runs it until the drain completes.
/// `listeners[g]` is this shard's listener for listen group `g`.
pub fn run(id: usize, shared: Arc<Shared>, listeners: Vec<TcpListener>) {
    tokio_uring::builder().entries(1024).start(async move {
        let shard = Rc::new(Shard {
            id,
            shared: shared.clone(),
            pool: RefCell::new(Pool::default()),
            rr: Cell::new(id),
            sessions: RefCell::new(AHashMap::default()),
            next_session: Cell::new(0),
        });
        for (group, l) in listeners.into_iter().enumerate() {
            let l = tokio_uring::net::TcpListener::from_std(l);
            tokio_uring::spawn(accept_loop(shard.clone(), l, group));
        }
        shared.ready.fetch_add(1, Relaxed);
        shard.drain_started().await;
        let deadline = tokio::time::Instant::now() + shared.drain_timeout;
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
        shard.pool.borrow_mut().clear();
    });
}

async fn accept_loop(shard: Rc<Shard>, listener: tokio_uring::net::TcpListener, group: usize) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shard.drain_started() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = match Conn::from_uring(stream) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("shard {}: accepted socket unusable: {e}", shard.id);
                        continue;
                    }
                };
                shard.stats().connections.fetch_add(1, Relaxed);
                let guard = SessionGuard::new(shard.clone(), conn.clone());
                let s = shard.clone();
                // Unique across shards: the shard in the top bits.
                let session_id = ((shard.id as u64) << 48) | guard.id;
                // The connection's future stays small (about 1 KiB): the rare and the
                // large phases inside `serve` are boxed, so 10k idle keep-alive
                // connections cost little memory and spawning copies little.
                tokio_uring::spawn(async move {
                    let _guard = guard;
                    crate::proxy::serve(s, conn, peer, group, session_id).await;
                });
            }
            Err(e) => {
                if shard.draining() {
                    return;
                }
                // EMFILE/ENFILE and friends: back off instead of spinning.
                log::warn!("shard {}: accept failed: {e}", shard.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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
pub fn urls(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(|a| format!("http://{a}/")).collect()
}
