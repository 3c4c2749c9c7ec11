//! Talking to origins: the per-shard connection pool, per-vhost balancing, and the
//! request exchange. Nothing here knows about shards or clients: the shard hands
//! its [`Upstreams`] in.

pub mod balance;
pub mod error;
pub mod exchange;
pub mod pool;
pub mod probe;

pub use balance::Balancers;
pub use error::OriginError;
pub use pool::{Pool, PoolKey};

use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Origin counters one shard writes and the main thread reads.
#[derive(Debug, Default)]
pub struct OriginStats {
    pub connects: AtomicU64,
    /// Requests sent on a pooled connection.
    pub reuses: AtomicU64,
    pub failures: AtomicU64,
    /// Body bytes read from origins (what follows the head in the first read
    /// included; the head itself not).
    pub bytes_in: AtomicU64,
}

/// One shard's side of every origin: pooled connections, balancing state, counters.
pub struct Upstreams {
    pub pool: RefCell<Pool>,
    pub balancers: Balancers,
    pub stats: Arc<OriginStats>,
}

impl Upstreams {
    /// `offset` spreads shards over the addresses (shard i starts at address i).
    pub fn new(offset: usize, stats: Arc<OriginStats>) -> Upstreams {
        Upstreams {
            pool: RefCell::new(Pool::default()),
            balancers: Balancers::new(offset),
            stats,
        }
    }
}
