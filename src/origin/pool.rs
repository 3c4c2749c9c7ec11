//! Per-shard keep-alive pool of origin connections, keyed by origin address
//! and, for TLS, by the name the certificate was verified for and the roots
//! that verified it.
//! Owned by one shard, so it needs no lock. Newest idle connection first (LIFO):
//! it is the least likely to have been closed by the origin.

use crate::net::Conn;
use ahash::AHashMap;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which pooled connections can serve a request: a TLS connection verified as
/// one name, under one set of roots, is not handed to another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub tls: Option<(ServerName<'static>, u64)>,
}

/// Most idle connections kept per origin address on one shard.
const MAX_IDLE_PER_ADDR: usize = 256;

#[derive(Default)]
pub struct Pool {
    idle: AHashMap<PoolKey, Vec<(Conn, Instant)>>,
    puts: u32,
}

/// Every this many returns, expired connections under every key are closed, so
/// keys no request uses any more (an address or CA a reload removed) do not
/// keep theirs.
const SWEEP_EVERY: u32 = 1024;

impl Pool {
    /// An idle connection for `key` not older than `reuse`, if any.
    pub fn take(&mut self, key: &PoolKey, reuse: Duration, now: Instant) -> Option<Conn> {
        let list = self.idle.get_mut(key)?;
        while let Some((c, since)) = list.pop() {
            if now.duration_since(since) < reuse && c.is_idle_and_open() {
                return Some(c);
            }
            c.shutdown();
        }
        None
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn put(&mut self, key: PoolKey, conn: Conn, reuse: Duration, now: Instant) {
        if reuse.is_zero() {
            conn.shutdown();
            return;
        }
        self.puts = self.puts.wrapping_add(1);
        if self.puts.is_multiple_of(SWEEP_EVERY) {
            self.sweep(reuse, now);
        }
        let list = self.idle.entry(key).or_default();
        // Drop expired ones while we are here: the pool has no timer of its own.
        list.retain(|(c, since)| {
            let keep = now.duration_since(*since) < reuse;
            if !keep {
                c.shutdown();
            }
            keep
        });
        if list.len() >= MAX_IDLE_PER_ADDR {
            let (old, _) = list.remove(0);
            old.shutdown();
        }
        list.push((conn, now));
    }

    /// Closes connections idle for `reuse` or longer, under every key.
    fn sweep(&mut self, reuse: Duration, now: Instant) {
        self.idle.retain(|_, list| {
            list.retain(|(c, since)| {
                let keep = now.duration_since(*since) < reuse;
                if !keep {
                    c.shutdown();
                }
                keep
            });
            !list.is_empty()
        });
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// Closes every idle connection (draining).
    pub fn clear(&mut self) {
        for (_, list) in self.idle.drain() {
            for (c, _) in list {
                c.shutdown();
            }
        }
    }
}
