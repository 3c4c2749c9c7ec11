//! The cache: a log of records in mmapped segment files, an index readable by every
//! shard without a lock, coalesced fills, RFC 9111 freshness, and recovery at start.
//!
//! Hit path: [`Cache::lookup`] → index (lock-free) → lease on the segment → `Bytes`
//! over the mapping for the stored head and body. Miss path: [`Fills::begin`] →
//! origin → [`Writer`] (reserve, copy chunks in, commit header last, publish).

pub mod fill;
pub mod freshness;
pub mod index;
pub mod key;
pub mod keys;
pub mod meta;
pub mod passmark;
pub mod record;
pub mod segment;
pub mod store;

use bytes::Bytes;
use fill::Fills;
use freshness::Times;
use index::Entry;
pub use key::{CacheKey, Variant};
use meta::Meta;
use record::{Header, HEADER_LEN};
pub use segment::FileBody;
use segment::Lease;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
pub use store::{Recovery, StoreConfig, StoreError};
use store::{Region, Store};

/// STON's result codes (spec/ston-cache.md §6), for logs and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    ImsHit,
    RefreshHit,
    RefFailHit,
    Miss,
    RefMiss,
    /// Not a cacheable request (method, Authorization): straight to the origin.
    ClientRefreshMiss,
    /// A redirect cairn answers itself (HTTPS-1).
    Redirect,
    Error,
    /// Refused by an access rule (a PURGE from an address the manager does not
    /// trust).
    Denied,
    /// A stored error (4xx/5xx, a cached origin failure) served from cache.
    NegativeHit,
}

impl CacheResult {
    /// Every result, in [`index`](Self::index) order.
    pub const ALL: [CacheResult; 11] = [
        CacheResult::Hit,
        CacheResult::ImsHit,
        CacheResult::RefreshHit,
        CacheResult::RefFailHit,
        CacheResult::Miss,
        CacheResult::RefMiss,
        CacheResult::ClientRefreshMiss,
        CacheResult::Redirect,
        CacheResult::Error,
        CacheResult::Denied,
        CacheResult::NegativeHit,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// A hit of any kind, for hit ratios (spec §6).
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            CacheResult::Hit
                | CacheResult::ImsHit
                | CacheResult::RefreshHit
                | CacheResult::RefFailHit
                | CacheResult::Redirect
                | CacheResult::NegativeHit
        )
    }

    pub fn code(self) -> &'static str {
        match self {
            CacheResult::Hit => "TCP_HIT",
            CacheResult::ImsHit => "TCP_IMS_HIT",
            CacheResult::RefreshHit => "TCP_REFRESH_HIT",
            CacheResult::RefFailHit => "TCP_REF_FAIL_HIT",
            CacheResult::Miss => "TCP_MISS",
            CacheResult::RefMiss => "TCP_REF_MISS",
            CacheResult::ClientRefreshMiss => "TCP_CLIENT_REFRESH_MISS",
            CacheResult::Redirect => "TCP_REDIRECT_HIT",
            CacheResult::Error => "TCP_ERROR",
            CacheResult::Denied => "TCP_DENIED",
            CacheResult::NegativeHit => "TCP_NEGATIVE_HIT",
        }
    }
}

/// What a purge does to an object (PRG-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeOp {
    /// The next request fetches it again, unconditionally; if the origin fails
    /// then, this copy is served.
    Purge,
    /// Stale now: the next request revalidates (a 304 keeps the body).
    Expire,
    /// Fresh for this many seconds from now, then stale.
    ExpireAfter(u64),
    /// Gone for good.
    HardPurge,
}

enum Applied {
    Done(u64),
    Absent,
    /// A reclaim is moving or dropping the record.
    Moving,
}

/// Objects a purge touched and their body bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCount {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    pub store_skipped: AtomicU64,
}

pub struct Cache {
    store: Store,
    pub fills: Arc<Fills>,
    pub stats: CacheStats,
    /// Keys with a background revalidation running (TTL-8, RFC 5861): one at
    /// a time per key. Touched on stale hits only.
    refreshing: std::sync::Mutex<ahash::AHashSet<u64>>,
    /// The Vary index: base key hash → the selecting fields its responses
    /// name (RFC 9111 §4.1). Read per request only while it holds anything.
    vary: papaya::HashMap<u64, key::VaryNames, ahash::RandomState>,
    vary_len: AtomicU64,
}

/// The Vary index holds at most this many URLs beyond the object count (a
/// hostile origin varying every URL cannot grow it without bound).
const VARY_SLACK: usize = 65_536;

/// A cache hit: everything needed to answer, borrowed from the mapping.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Where the record was found: a 304 refreshes only this version.
    pub loc: (u32, u32, u64),
    pub status: u16,
    pub times: Times,
    pub last_modified_s: u64,
    pub etag: Bytes,
    /// Stored header lines (`Name: value\r\n`…).
    pub headers: Bytes,
    /// The body, pointing into the segment mapping.
    pub body: Bytes,
}

impl Cache {
    pub fn open(config: StoreConfig, shards: usize) -> Result<(Cache, Recovery), StoreError> {
        let (store, recovery) = Store::open(config, shards)?;
        Ok((
            {
                let c = Cache {
                    store,
                    fills: Arc::new(Fills::default()),
                    stats: CacheStats::default(),
                    refreshing: Default::default(),
                    vary: papaya::HashMap::builder()
                        .hasher(ahash::RandomState::new())
                        .build(),
                    vary_len: AtomicU64::new(0),
                };
                // Varied keys name their fields: the Vary index comes back with them.
                c.store.keys.for_prefix(b"", |k| {
                    if let Some((base, names)) = key::vary_of(k) {
                        c.set_vary(base, Some(names.into()));
                    }
                });
                c
            },
            recovery,
        ))
    }

    /// See [`Store::preflight`].
    pub fn preflight(config: &StoreConfig, shards: usize) -> Result<(), StoreError> {
        Store::preflight(config, shards)
    }

    /// Makes renewals of sent pages fail as on a full disk (`/debug/renew`).
    #[cfg(feature = "fault-injection")]
    pub fn fail_renewals(&self, on: bool) {
        self.store.fail_renewals.store(on, Relaxed);
    }

    /// `piece` (of a hit's body, from segment `seg`: [`Hit::loc`]) for
    /// sendfile, or handed back where it cannot go that way. Asked only for
    /// large pieces, so a hit costs nothing for it. A wrong `seg` cannot send
    /// other bytes: [`FileBody::new`] takes only a piece inside that
    /// segment's own mapping, and segments are never remapped while a piece
    /// (which holds a lease) points into them.
    pub fn file_body(&self, seg: u32, piece: Bytes) -> Result<FileBody, Bytes> {
        match self.store.segments.get(seg as usize) {
            Some(s) => FileBody::new(s, piece),
            None => Err(piece),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.store.config
    }

    pub fn store_stats(&self) -> &store::StoreStats {
        &self.store.stats
    }

    pub fn objects(&self) -> usize {
        self.store.index.len()
    }

    /// Looks `key` up. No lock, no copy: the returned `Bytes` lease the segment.
    pub fn lookup(&self, key: &[u8]) -> Option<Hit> {
        self.find(key, true)
    }

    /// [`lookup`](Self::lookup) for inspection (fileinfo): the object does not
    /// count as hit, so looking at it gives it no second chance.
    pub fn peek(&self, key: &[u8]) -> Option<Hit> {
        self.find(key, false)
    }

    fn find(&self, key: &[u8], mark_hit: bool) -> Option<Hit> {
        let h = record::key_hash(key);
        let guard = self.store.index.pin();
        let e = guard.get(&h)?;
        let seg = self.store.segments.get(e.seg as usize)?;
        // Past the header: a kill rewrites it (Store::kill_record) while the
        // object may still be read.
        let lease = Lease::acquire(
            seg,
            e.generation,
            e.off as usize + HEADER_LEN,
            (e.total_len as usize).checked_sub(HEADER_LEN)?,
        )?;
        let rec = lease.into_bytes();
        let key_end = e.key_len as usize;
        let meta_end = key_end + e.meta_len as usize;
        let body_end = meta_end + e.body_len as usize;
        if body_end > rec.len() || &rec[..key_end] != key {
            return None; // a hash collision: another key's record
        }
        let meta = Meta::decode(&rec[key_end..meta_end])?;
        let headers = match &e.head_override {
            Some(o) => o.clone(),
            None => rec.slice_ref(meta.head),
        };
        let etag = rec.slice_ref(meta.etag);
        if mark_hit && !e.hit.load(Relaxed) {
            e.hit.store(true, Relaxed);
        }
        Some(Hit {
            loc: (e.seg, e.generation, e.off),
            status: meta.status,
            times: e.times,
            last_modified_s: meta.last_modified_s,
            etag,
            headers,
            body: rec.slice(meta_end..body_end),
        })
    }

    /// After a 304 (RFC 9111 §4.3.4): new time facts and header lines for the stored
    /// object, if it is still the one `hit` came from.
    pub fn refresh(&self, key: &[u8], loc: (u32, u32, u64), times: Times, headers: Bytes) {
        let h = record::key_hash(key);
        let guard = self.store.index.pin();
        guard.compute(h, |cur| match cur {
            // A purge since the hit was read stands: a refresh from before it
            // must not make the object fresh again.
            Some((_, e))
                if (e.seg, e.generation, e.off) == loc
                    && (e.times.flags & !times.flags & freshness::FLAG_PURGED) == 0 =>
            {
                papaya::Operation::Insert(Entry {
                    times,
                    head_override: Some(headers.clone()),
                    hit: AtomicBool::new(e.hit.load(Relaxed)),
                    ..*e
                })
            }
            _ => papaya::Operation::Abort(()),
        });
    }

    /// [`remove`](Self::remove) if the object is still the one at `loc` (a
    /// newer one published meanwhile stays).
    pub fn remove_at(&self, key: &[u8], loc: (u32, u32, u64)) {
        let here = self
            .store
            .index
            .pin()
            .get(&record::key_hash(key))
            .is_some_and(|e| (e.seg, e.generation, e.off) == loc);
        if here {
            self.remove(key);
        }
    }

    /// Drops `key` from the index and kills its record on disk.
    pub fn remove(&self, key: &[u8]) {
        let _ = self.apply(key, PurgeOp::HardPurge, 0);
    }

    /// Drops every variant of `key`'s primary key (RFC 9111 §4.4 after an unsafe
    /// method), for good: their records die on disk too. Returns how many
    /// objects were removed.
    pub fn invalidate(&self, key: &CacheKey) -> usize {
        self.apply_all_variants(key.primary(), PurgeOp::HardPurge, 0)
            .count as usize
    }

    /// Applies `op` to every variant stored under `primary` (the coding
    /// variants, and every Vary variant of each).
    pub fn apply_all_variants(&self, primary: &[u8], op: PurgeOp, now_ms: u64) -> PurgeCount {
        let base = CacheKey::from_primary(primary);
        let mut n = PurgeCount::default();
        for v in Variant::ALL {
            if let Some(size) = self.apply(base.with_variant(v).stored(), op, now_ms) {
                n.count += 1;
                n.bytes += size;
            }
        }
        // The Vary variants; the coding variants are done above.
        for k in self.vary_variants(primary, usize::MAX) {
            if let Some(size) = self.apply(&k, op, now_ms) {
                n.count += 1;
                n.bytes += size;
            }
        }
        n
    }

    /// The stored keys of `primary`'s Vary variants (`primary\0…\0vary\0…`),
    /// at most `max` of them.
    pub fn vary_variants(&self, primary: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut prefix = primary.to_vec();
        prefix.push(0);
        let mut varied = Vec::new();
        self.store.keys.for_prefix(&prefix, |k| {
            if varied.len() < max
                && key::vary_of(k).is_some_and(|(base, _)| key::primary_of(base) == primary)
            {
                varied.push(k.to_vec());
            }
        });
        varied
    }

    /// Applies `op` to the object stored under `key`; its body size when there
    /// was one. Every kind kills the record on disk, so it holds across a
    /// restart (where a purged or expired object is then fetched anew: its
    /// in-memory copy for origin failures does not survive).
    pub fn apply(&self, key: &[u8], op: PurgeOp, now_ms: u64) -> Option<u64> {
        let h = record::key_hash(key);
        // A reclaim moving the record fails the lease: wait for it, look again.
        for _ in 0..3 {
            match self.apply_once(h, key, op, now_ms) {
                Applied::Done(size) => return Some(size),
                Applied::Absent => return None,
                Applied::Moving => self.store.wait_reclaim(),
            }
        }
        None
    }

    fn apply_once(&self, h: u64, key: &[u8], op: PurgeOp, now_ms: u64) -> Applied {
        let guard = self.store.index.pin();
        let Some(e) = guard.get(&h) else {
            return Applied::Absent;
        };
        let Some(seg) = self.store.segments.get(e.seg as usize) else {
            return Applied::Absent;
        };
        // Held to the end: no reclaim can move the record while it is changed.
        let Some(lease) = Lease::acquire(
            seg,
            e.generation,
            e.off as usize + HEADER_LEN,
            e.key_len as usize,
        ) else {
            return Applied::Moving;
        };
        // The hash is not the key: check the record's own.
        if lease.as_ref() != key {
            return Applied::Absent;
        }
        let loc = (e.seg, e.generation, e.off);
        let size = e.body_len;
        let was = Entry {
            hit: AtomicBool::new(false),
            head_override: None,
            ..*e
        };
        // The closure may run more than once: `done` is what the last run said.
        let mut done = false;
        guard.compute(h, |cur| match cur {
            Some((_, e)) if (e.seg, e.generation, e.off) == loc => {
                done = true;
                let mut times = e.times;
                match op {
                    PurgeOp::HardPurge => return papaya::Operation::Remove,
                    PurgeOp::Purge => {
                        times.lifetime_ms = 0;
                        times.flags |= freshness::FLAG_PURGED;
                    }
                    PurgeOp::Expire => times.lifetime_ms = 0,
                    PurgeOp::ExpireAfter(secs) => {
                        times.lifetime_ms = times
                            .current_age_ms(now_ms)
                            .saturating_add(secs.saturating_mul(1000))
                    }
                }
                papaya::Operation::Insert(Entry {
                    times,
                    head_override: e.head_override.clone(),
                    hit: AtomicBool::new(e.hit.load(Relaxed)),
                    ..*e
                })
            }
            _ => {
                done = false;
                papaya::Operation::Abort(())
            }
        });
        if !done {
            return Applied::Absent;
        }
        // Durable for a purge (refetched after a restart) and a hard purge;
        // an expiry lives in memory (after a restart the object has its stored
        // freshness again), so a hot, refreshed object is not lost to it.
        if matches!(op, PurgeOp::Purge | PurgeOp::HardPurge) {
            self.store.kill_leased(h, &was, &lease);
        }
        drop(lease);
        if op == PurgeOp::HardPurge {
            self.store.forget_key(h, key);
        }
        Applied::Done(size)
    }

    /// Applies `op` to every stored key under `prefix` whose primary part
    /// (without the variant) `matches`.
    pub fn apply_matching(
        &self,
        prefix: &[u8],
        matches: impl Fn(&[u8]) -> bool,
        op: PurgeOp,
        now_ms: u64,
    ) -> PurgeCount {
        let mut n = PurgeCount::default();
        self.store.keys.for_prefix(prefix, |key| {
            if !matches(key::primary_of(key)) {
                return;
            }
            match self.apply(key, op, now_ms) {
                Some(size) => {
                    n.count += 1;
                    n.bytes += size;
                }
                // Gone from the main index meanwhile: a stale key.
                None => self.store.forget_key(record::key_hash(key), key),
            }
        });
        n
    }

    /// The fields `base`'s responses vary on, when it is known to vary.
    pub fn vary_names(&self, base: &[u8]) -> Option<key::VaryNames> {
        if self.vary_len.load(Relaxed) == 0 {
            return None;
        }
        self.vary.pin().get(&record::key_hash(base)).cloned()
    }

    /// Records what `base` varies on (`None`: nothing). Full (more URLs than
    /// objects by [`VARY_SLACK`]), the index starts again empty: entries are
    /// never dropped one by one, and forgetting is safe (a URL whose fields are
    /// forgotten misses once and learns them again).
    pub fn set_vary(&self, base: &[u8], names: Option<key::VaryNames>) {
        let h = record::key_hash(base);
        let guard = self.vary.pin();
        match names {
            Some(n) => {
                if guard.len() >= self.objects() + VARY_SLACK && guard.get(&h).is_none() {
                    log::warn!(
                        "cache: the Vary index reached {} URLs; it starts again empty",
                        guard.len()
                    );
                    guard.clear();
                }
                guard.insert(h, n);
            }
            None => {
                guard.remove(&h);
            }
        }
        self.vary_len.store(guard.len() as u64, Relaxed);
    }

    /// Claims the background revalidation of `key`; `false` if one runs.
    pub fn begin_refresh(&self, key: &[u8]) -> bool {
        let mut r = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        r.insert(record::key_hash(key))
    }

    pub fn end_refresh(&self, key: &[u8]) {
        let mut r = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        r.remove(&record::key_hash(key));
    }

    /// Objects in the index and their body bytes (a walk of the index: for
    /// scrapes, not the request path).
    pub fn usage(&self) -> (u64, u64) {
        let guard = self.store.index.pin();
        guard
            .iter()
            .fold((0, 0), |(n, b), (_, e)| (n + 1, b + e.body_len))
    }

    /// Keys in the key index (objects, plus any stale keys not yet dropped).
    pub fn keys_indexed(&self) -> usize {
        self.store.keys.len()
    }

    /// Would [`writer`](Self::writer) find room now? (It may still not, if the
    /// space goes meanwhile.) Reserves nothing.
    pub fn can_store(&self, shard: usize, key: &[u8], meta: &Meta<'_>, body_len: u64) -> bool {
        body_len <= self.store.config.max_object
            && self.store.can_reserve(
                shard,
                record::total_len(key.len(), meta.encode().len(), body_len),
            )
    }

    /// Starts writing an object of `body_len` bytes on `shard`'s active segment.
    /// `None` when it cannot be stored (too large, or no space can be reclaimed now).
    pub fn writer(
        &self,
        shard: usize,
        key: &[u8],
        meta: &Meta<'_>,
        body_len: u64,
    ) -> Option<Writer<'_>> {
        if body_len > self.store.config.max_object {
            self.stats.store_skipped.fetch_add(1, Relaxed);
            return None;
        }
        let meta_bytes = meta.encode();
        let total = record::total_len(key.len(), meta_bytes.len(), body_len);
        let Some(region) = self.store.reserve(shard, total) else {
            self.stats.store_skipped.fetch_add(1, Relaxed);
            return None;
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let base = region.off as usize;
        // A dead placeholder header first: until commit, recovery and reclaim step over
        // the whole region and never read the body bytes as if they were records.
        region.seg.write_at(base, &dead_header(region.len).encode());
        region.seg.write_at(base + HEADER_LEN, key);
        region
            .seg
            .write_at(base + HEADER_LEN + key.len(), &meta_bytes);
        hasher.update(key);
        hasher.update(&meta_bytes);
        Some(Writer {
            cache: self,
            region,
            key_hash: record::key_hash(key),
            key: key.into(),
            key_len: key.len() as u32,
            meta_len: meta_bytes.len() as u32,
            body_len,
            written: 0,
            hasher,
            times: meta.times,
            committed: false,
        })
    }
}

/// Writes one record. The header goes in last (commit), so a crash mid-way leaves
/// a region recovery skips; dropping an uncommitted writer marks the region dead.
pub struct Writer<'c> {
    cache: &'c Cache,
    region: Region,
    key_hash: u64,
    key: Box<[u8]>,
    key_len: u32,
    meta_len: u32,
    body_len: u64,
    written: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    times: Times,
    committed: bool,
}

impl Writer<'_> {
    /// Where the body goes, for followers of the fill to read what is written.
    pub fn body_cursor(&self) -> fill::BodyCursor {
        let base =
            self.region.off as usize + HEADER_LEN + self.key_len as usize + self.meta_len as usize;
        fill::BodyCursor::new(self.region.seg.clone(), self.region.generation, base)
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends body bytes; `false` if they overflow the declared length (the
    /// origin sent more than it said): the writer is then useless.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.written + chunk.len() as u64 > self.body_len {
            return false;
        }
        let off = self.region.off as usize
            + HEADER_LEN
            + self.key_len as usize
            + self.meta_len as usize
            + self.written as usize;
        self.region.seg.write_at(off, chunk);
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        true
    }

    /// Writes the header and publishes the object. Fails (drops) if the body is short.
    pub fn commit(mut self) -> bool {
        if self.written != self.body_len {
            return false;
        }
        let seq = self.cache.store.next_seq();
        let h = Header {
            flags: 0,
            total_len: self.region.len,
            seq,
            key_hash: self.key_hash,
            key_len: self.key_len,
            meta_len: self.meta_len,
            body_len: self.body_len,
            checksum: self.hasher.digest(),
        };
        let seg = &self.region.seg;
        seg.write_at(self.region.off as usize, &h.encode());
        seg.raise_high_water(self.region.off + self.region.len);
        seg.flush_async(self.region.off as usize, self.region.len as usize);
        self.cache.store.publish(
            self.key_hash,
            &self.key,
            Entry {
                seg: seg.id,
                generation: self.region.generation,
                off: self.region.off,
                total_len: self.region.len,
                key_len: self.key_len,
                meta_len: self.meta_len,
                body_len: self.body_len,
                seq,
                times: self.times,
                head_override: None,
                hit: AtomicBool::new(false),
            },
        );
        self.cache.stats.stores.fetch_add(1, Relaxed);
        self.committed = true;
        true
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // The placeholder header is already there; raise the mark so recovery steps
        // over the region instead of stopping at it.
        self.region
            .seg
            .raise_high_water(self.region.off + self.region.len);
    }
}

fn dead_header(total_len: u64) -> Header {
    Header {
        flags: record::FLAG_DEAD,
        total_len,
        seq: 0,
        key_hash: 0,
        key_len: 0,
        meta_len: 0,
        body_len: 0,
        checksum: 0,
    }
}

#[cfg(test)]
mod tests;
