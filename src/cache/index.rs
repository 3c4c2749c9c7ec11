//! The index: stable key hash → where the record lives and its time facts.
//!
//! A `papaya::HashMap`: readers on every shard look up without taking a lock
//! (epoch-based reclamation), writers (fills, revalidations, eviction) swap whole
//! entries atomically. See docs/architecture.md for why this over per-shard
//! ownership by key hash.

use super::freshness::Times;
use bytes::Bytes;
use std::sync::atomic::AtomicBool;

#[derive(Debug)]
pub struct Entry {
    pub seg: u32,
    pub generation: u32,
    /// Record offset in the segment and its parts' lengths.
    pub off: u64,
    pub total_len: u64,
    pub key_len: u32,
    pub meta_len: u32,
    pub body_len: u64,
    /// Write order; the newest record of a key wins on recovery.
    pub seq: u64,
    /// Time facts; a 304 revalidation replaces the entry with refreshed ones.
    pub times: Times,
    /// Header lines refreshed by a 304 (RFC 9111 §4.3.4), replacing the stored ones.
    pub head_override: Option<Bytes>,
    /// Hit since written: the object gets a second chance when its segment is reclaimed.
    pub hit: AtomicBool,
}

impl Entry {
    pub fn location_eq(&self, other: &Entry) -> bool {
        self.seg == other.seg && self.generation == other.generation && self.off == other.off
    }
}

pub type Index = papaya::HashMap<u64, Entry, ahash::RandomState>;

pub fn new_index() -> Index {
    papaya::HashMap::builder()
        .hasher(ahash::RandomState::new())
        .build()
}
