//! What a shard and everything above it share: the running configuration, the
//! counters, the drain signal, the cache, and one shard's own state
//! ([`ShardCtx`]: origin pools and balancers, the session table, its access-log
//! buffer). This module sits below `proxy/` and `shard/`: both use it, neither is
//! imported by it, so the request path no longer reaches back into the runtime.

use crate::accesslog::{LogQueues, ShardLog};
use crate::config::Config;
use crate::http1::Limits;
use crate::net::Conn;
use crate::origin::{OriginStats, Upstreams};
use crate::vhost::Router;
use ahash::AHashMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Counters one shard writes and anyone may read (summed when read). Each is
/// written by its own shard only, so relaxed atomics suffice and never contend.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Set by `/debug/panic` (fault-injection builds): the shard panics.
    #[cfg(feature = "fault-injection")]
    pub fault: std::sync::atomic::AtomicBool,
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub active: AtomicU64,
    /// Keep-alive connections parked between requests (`shard::keepalive`).
    pub parked: AtomicU64,
    pub restarts: AtomicU64,
    pub origin: Arc<OriginStats>,
    /// Access-log lines produced and lines dropped because the logger fell behind.
    pub log_lines: AtomicU64,
    pub log_dropped: AtomicU64,
    /// Connections closed at accept: past `MaxSockets` or the per-address cap.
    pub refused: AtomicU64,
    /// TLS handshakes completed, and those that failed (bad ClientHello, refused
    /// version, no common suite) or ran past their deadline.
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    /// Handshakes whose session went to the kernel's TLS (kTLS).
    pub tls_kernel: AtomicU64,
    /// HTTP/2 connections ended by a protocol error or a flood (Rapid Reset,
    /// CONTINUATION, too many errors): h2 sent GOAWAY.
    pub h2_goaways: AtomicU64,
    /// HTTP/2 streams reset as malformed (RFC 9113 §8.1.1), and streams the
    /// client reset while cairn was serving them.
    pub h2_stream_errors: AtomicU64,
    pub h2_client_resets: AtomicU64,
    /// Cache fills running on this shard, misses passed through because of
    /// `MaxFillsPerShard`, and fills given up when every client had left.
    pub fills_active: AtomicU64,
    pub fills_refused: AtomicU64,
    pub fills_abandoned: AtomicU64,
    /// Bytes held gathering unknown-length bodies (`FillMemoryPerShard`).
    pub fill_memory: AtomicU64,
    /// Reserved bytes given up by abandoned fills in the minute since
    /// `abandon_since_ms`, bounded so disconnects cannot churn the cache for free.
    pub abandon_since_ms: AtomicU64,
    pub abandoned_bytes: AtomicU64,
    /// Gzip variants this shard compressed (GZ-3), the identity and gzip bytes
    /// of those bodies, and the CPU time spent compressing them.
    pub gz_objects: AtomicU64,
    pub gz_bytes_in: AtomicU64,
    pub gz_bytes_out: AtomicU64,
    pub gz_nanos: AtomicU64,
    /// DRM responses (heads sent under `<url>/<Keyword>`), and those refused
    /// (a key out of range, a source over MaxSourceSize).
    pub drm_responses: AtomicU64,
    pub drm_refused: AtomicU64,
    /// Body bytes of hits sent with sendfile (no copy into the socket).
    pub sendfile_bytes: AtomicU64,
}

/// One vhost's counters on one shard (written by that shard only), on cache
/// lines of their own so shards never write to a line another shard writes.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct VhostCounters {
    /// By [`CacheResult::index`](crate::cache::CacheResult::index).
    pub results: [AtomicU64; crate::cache::CacheResult::ALL.len()],
    /// Responses by status class: 1xx..5xx, and anything else at 0.
    pub classes: [AtomicU64; 6],
    /// Bytes sent to clients, and those of them sent for hits.
    pub bytes_out: AtomicU64,
    pub hit_bytes_out: AtomicU64,
    /// Bytes received from clients (request heads and bodies).
    pub bytes_in: AtomicU64,
    /// Time taken, summed over requests, in microseconds.
    pub time_us: AtomicU64,
}

/// A vhost's counters, one slot per shard, summed when read. Kept by name
/// across reloads, so a counter never goes back.
#[derive(Debug)]
pub struct VhostStats {
    pub name: String,
    pub shards: Box<[VhostCounters]>,
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
    /// Each shard's bounded queue to the logger thread.
    pub log_queues: LogQueues,
    /// Open-connection caps, global and per client address.
    pub admission: Arc<crate::net::admission::Admission>,
    /// What request bodies held at once may use, in memory and on disk.
    pub bodies: Arc<crate::spool::Budget>,
    /// Every vhost's counters seen so far; a shard takes the lock only the
    /// first time it serves a vhost (it keeps its own map after that).
    pub vhost_stats: std::sync::Mutex<Vec<Arc<VhostStats>>>,
}

impl Shared {
    pub fn new(config: Arc<Config>, shards: usize, cache: Arc<crate::cache::Cache>) -> Shared {
        let drain_timeout = config.server.drain_timeout;
        let srv = &config.server;
        let admission = Arc::new(crate::net::admission::Admission::new(
            srv.max_sockets,
            srv.reopen_pct,
            srv.max_per_ip,
        ));
        let bodies = crate::spool::Budget::new(
            srv.body_memory,
            srv.body_disk,
            srv.spool_dir.clone().unwrap_or_else(std::env::temp_dir),
        );
        Shared {
            admission,
            bodies,
            live: arc_swap::ArcSwap::from_pointee(Live::new(config)),
            limits: Limits::default(),
            stats: (0..shards).map(|_| ShardStats::default()).collect(),
            drain: watch::channel(false).0,
            drain_timeout,
            ready: AtomicU64::new(0),
            cache,
            geo: None,
            log_queues: LogQueues::disconnected(shards),
            vhost_stats: Default::default(),
        }
    }

    /// The counters of vhost `name`, made on first use.
    pub fn vhost_stats_for(&self, name: &str) -> Arc<VhostStats> {
        let mut all = self.vhost_stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = all.iter().find(|v| v.name == name) {
            return v.clone();
        }
        let v = Arc::new(VhostStats {
            name: name.to_string(),
            shards: (0..self.stats.len())
                .map(|_| VhostCounters::default())
                .collect(),
        });
        all.push(v.clone());
        v
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
            || old.config.server.spool_dir != config.server.spool_dir
        {
            log::warn!("reload: the GeoIP database, the drain timeout and SpoolDir keep their running values until a restart");
        }
        let srv = &config.server;
        self.admission
            .configure(srv.max_sockets, srv.reopen_pct, srv.max_per_ip);
        self.bodies.configure(srv.body_memory, srv.body_disk);
        self.live.store(Arc::new(Live::new(config)));
        Ok(())
    }

    /// Swaps in `new`, made from `old` (re-resolved origins), only while
    /// `old` is still in force: a reload in between wins.
    pub fn replace_config(&self, old: &Arc<Config>, new: Config) -> bool {
        let cur = self.live.load_full();
        if !Arc::ptr_eq(&cur.config, old) {
            return false;
        }
        let prev = self
            .live
            .compare_and_swap(&cur, Arc::new(Live::new(Arc::new(new))));
        Arc::ptr_eq(&prev, &cur)
    }
}

/// A shard's own state, on its thread only (`Rc`, `Cell`, `RefCell`: no locks).
pub struct ShardCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub upstreams: Rc<Upstreams>,
    pub log: ShardLog,
    /// Live client connections, so a drain past its deadline can release them.
    pub sessions: RefCell<AHashMap<u64, Conn>>,
    pub next_session: Cell<u64>,
    /// This shard's handles on the vhost counters, by vhost name.
    vhosts: RefCell<AHashMap<String, Arc<VhostStats>>>,
    /// URLs answered `no-store` under NoStore `Bypass="ON"`, passed through
    /// until their mark ends.
    pub pass_marks: RefCell<crate::cache::passmark::PassMarks>,
}

impl ShardCtx {
    pub fn new(id: usize, shared: Arc<Shared>) -> ShardCtx {
        let upstreams = Rc::new(Upstreams::new(id, shared.stats[id].origin.clone()));
        let log = ShardLog::new(shared.log_queues.sender(id));
        ShardCtx {
            id,
            shared,
            upstreams,
            log,
            sessions: RefCell::new(AHashMap::default()),
            next_session: Cell::new(0),
            vhosts: RefCell::new(AHashMap::default()),
            pass_marks: RefCell::default(),
        }
    }
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }
    /// Runs `f` on this shard's counters for vhost `name`.
    pub fn vhost_counters(&self, name: &str, f: impl FnOnce(&VhostCounters)) {
        let mut m = self.vhosts.borrow_mut();
        if let Some(v) = m.get(name) {
            return f(&v.shards[self.id]);
        }
        let v = self.shared.vhost_stats_for(name);
        f(&v.shards[self.id]);
        m.insert(name.to_string(), v);
    }
    pub fn draining(&self) -> bool {
        *self.shared.drain.borrow()
    }
    /// Completes when draining starts.
    pub async fn drain_started(&self) {
        let mut rx = self.shared.drain.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
    /// Hands this shard's buffered log lines to the logger (counting what the full
    /// queue refused).
    pub fn flush_log(&self) {
        let s = self.stats();
        let dropped = self.log.flush();
        if dropped > 0 {
            s.log_dropped.fetch_add(dropped, Relaxed);
        }
    }
}

impl Drop for ShardCtx {
    /// A shard that stops (drain, or a panic unwinding its runtime) hands over the
    /// lines it still buffers.
    fn drop(&mut self) {
        self.flush_log();
    }
}
