//! Per-shard keep-alive pool of origin connections, keyed by origin address.
//! Owned by one shard, so it needs no lock. Newest idle connection first (LIFO):
//! it is the least likely to have been closed by the origin.

use crate::net::Conn;
use ahash::AHashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most idle connections kept per origin address on one shard.
const MAX_IDLE_PER_ADDR: usize = 256;

#[derive(Default)]
pub struct Pool {
    idle: AHashMap<SocketAddr, Vec<(Conn, Instant)>>,
}

impl Pool {
    /// An idle connection to `addr` not older than `reuse`, if any.
    pub fn take(&mut self, addr: SocketAddr, reuse: Duration, now: Instant) -> Option<Conn> {
        let list = self.idle.get_mut(&addr)?;
        while let Some((c, since)) = list.pop() {
            if now.duration_since(since) < reuse && c.is_idle_and_open() {
                return Some(c);
            }
            c.shutdown();
        }
        None
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn put(&mut self, addr: SocketAddr, conn: Conn, reuse: Duration, now: Instant) {
        if reuse.is_zero() {
            conn.shutdown();
            return;
        }
        let list = self.idle.entry(addr).or_default();
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
