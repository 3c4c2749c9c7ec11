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
    /// `Private="ON"` (ORG-6): the client connection (session id) this
    /// origin connection is dedicated to; no other request takes it.
    pub owner: Option<u64>,
}

/// Most idle connections kept per origin address on one shard.
const MAX_IDLE_PER_ADDR: usize = 256;
/// Most idle private connections on one shard, all owners together: each
/// owner has its own key, so the per-address bound alone would not hold.
const MAX_PRIVATE_IDLE: usize = 1024;

#[derive(Default)]
pub struct Pool {
    idle: AHashMap<PoolKey, Vec<(Conn, Instant)>>,
    puts: u32,
    /// Idle connections under keys with an owner.
    private_idle: usize,
    /// The keys each owner has idle connections under.
    owners: AHashMap<u64, Vec<PoolKey>>,
}

/// Every this many returns, expired connections under every key are closed, so
/// keys no request uses any more (an address or CA a reload removed) do not
/// keep theirs.
const SWEEP_EVERY: u32 = 1024;

impl Pool {
    /// An idle connection for `key` not older than `reuse`, if any.
    pub fn take(&mut self, key: &PoolKey, reuse: Duration, now: Instant) -> Option<Conn> {
        let list = self.idle.get_mut(key)?;
        let mut found = None;
        let mut taken = 0;
        while let Some((c, since)) = list.pop() {
            taken += 1;
            if now.duration_since(since) < reuse && c.is_idle_and_open() {
                found = Some(c);
                break;
            }
            c.shutdown();
        }
        if let Some(owner) = key.owner {
            self.private_idle = self.private_idle.saturating_sub(taken);
            if list.is_empty() {
                self.idle.remove(key);
                self.forget_owned(owner, key);
            }
        }
        found
    }

    fn forget_owned(&mut self, owner: u64, key: &PoolKey) {
        if let Some(keys) = self.owners.get_mut(&owner) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.owners.remove(&owner);
            }
        }
    }

    /// Closes `owner`'s private connections: its client connection ended.
    /// Nothing to do (one map probe) unless Private="ON" is in use.
    pub fn drop_owner(&mut self, owner: u64) {
        if self.owners.is_empty() {
            return;
        }
        let Some(keys) = self.owners.remove(&owner) else {
            return;
        };
        for k in keys {
            if let Some(list) = self.idle.remove(&k) {
                self.private_idle = self.private_idle.saturating_sub(list.len());
                for (c, _) in list {
                    c.shutdown();
                }
            }
        }
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
        if let Some(owner) = key.owner {
            let replaces = self.idle.contains_key(&key);
            if !replaces && self.private_idle >= MAX_PRIVATE_IDLE {
                conn.shutdown();
                return;
            }
            // One idle connection per owner and address: it is dedicated.
            if let Some(old) = self.idle.remove(&key) {
                self.private_idle = self.private_idle.saturating_sub(old.len());
                for (c, _) in old {
                    c.shutdown();
                }
            }
            self.private_idle += 1;
            let keys = self.owners.entry(owner).or_default();
            if !keys.contains(&key) {
                keys.push(key.clone());
            }
            self.idle.insert(key, vec![(conn, now)]);
            return;
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
        let mut private = 0;
        self.idle.retain(|k, list| {
            list.retain(|(c, since)| {
                let keep = now.duration_since(*since) < reuse;
                if !keep {
                    c.shutdown();
                }
                keep
            });
            if k.owner.is_some() {
                private += list.len();
            }
            !list.is_empty()
        });
        self.private_idle = private;
        let idle = &self.idle;
        self.owners.retain(|_, keys| {
            keys.retain(|k| idle.contains_key(k));
            !keys.is_empty()
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
        self.private_idle = 0;
        self.owners.clear();
    }
}
