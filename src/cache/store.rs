//! The segment store: reservation of record regions (each shard appends to its own
//! active segment), eviction (FIFO over sealed segments with an in-place second
//! chance for objects hit since they were written), and recovery (rebuilding the
//! index from the segment files at start).
//!
//! A segment whose bodies may have gone out with sendfile is never written in
//! place again: its reclaim copies what stays aside, renews the pages
//! ([`Segment::renew_pages`]) and writes the copy back.

use super::freshness::Times;
use super::index::{new_index, Entry, Index};
use super::keys::KeyIndex;
use super::meta::Meta;
use super::record::{Header, FLAG_DEAD, HEADER_LEN};
use super::segment::{renews_pages, Lease, Segment, SEGMENT_HEADER};
use papaya::Operation;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Directory for segment files; `None`: memory-only (anonymous segments).
    pub dir: Option<PathBuf>,
    pub quota: u64,
    pub segment_size: u64,
    pub max_object: u64,
}

impl StoreConfig {
    /// In memory, for when the directory fails where nothing else may (after
    /// an upgrade's handover): the quota capped at 256 MiB, or at the least
    /// `shards` need (a segment each and one to reclaim).
    pub fn memory_fallback(&self, shards: usize) -> StoreConfig {
        let least = (shards as u64 + 1).saturating_mul(self.segment_size);
        StoreConfig {
            dir: None,
            quota: self.quota.min((256 << 20).max(least)),
            ..self.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One segment file cannot be opened or sized (the disk's or the filesystem's
    /// fault; not retried): named, so the operator can remove it.
    #[error("cache segment {path}: {source} (remove the file, or fix the disk, and restart)")]
    Segment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache directory {0} is in use by another cairn process")]
    Locked(PathBuf),
    #[error("cache quota {quota} bytes holds {have} segments of {segment} bytes; {need} are needed ({shards} shards + 1)")]
    TooSmall {
        quota: u64,
        segment: u64,
        have: u64,
        need: u64,
        shards: usize,
    },
    #[error("{excluded} cache segment(s) are unreadable and excluded; {usable} remain, {need} are needed ({shards} shards + 1): check the disk, or remove the bad segment files")]
    Unreadable {
        excluded: u64,
        usable: u64,
        need: u64,
        shards: usize,
    },
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub objects: u64,
    pub bytes: u64,
    /// Records given up: a bad checksum, a torn write, a forged length.
    pub corrupt: u64,
    /// Whole segments left out because reading them failed (an I/O error).
    pub excluded: u64,
    pub segments_used: usize,
    pub millis: u128,
}

#[derive(Debug, Default)]
pub struct StoreStats {
    pub evictions: AtomicU64,
    pub second_chances: AtomicU64,
    pub dropped: AtomicU64,
    /// Renewals of sent pages that failed (a full disk): the segment waits.
    pub renew_failures: AtomicU64,
}

/// How a reclaim ended.
enum Reclaimed {
    /// Ready for writing at this position.
    At(u64),
    /// A reader leased it meanwhile: untouched; another may do.
    Leased,
    /// Its pages could not be renewed: emptied, out of use until a retry.
    Unrenewed,
}

struct Active {
    seg: u32,
    write: u64,
}

struct Allocator {
    free: VecDeque<u32>,
    /// Oldest first.
    sealed: VecDeque<u32>,
    active: Vec<Option<Active>>,
}

pub struct Store {
    pub segments: Vec<Arc<Segment>>,
    pub index: Index,
    /// Every indexed key in order, for purges by pattern.
    pub keys: KeyIndex,
    /// Serialises header rewrites of published records ([`Store::kill_record`]).
    kill: Mutex<()>,
    /// Taken on the miss path only (reserving a region), never on a hit.
    alloc: Mutex<Allocator>,
    seq: AtomicU64,
    pub config: StoreConfig,
    pub stats: StoreStats,
    _lock: Option<File>,
    /// Set by `/debug/renew?fail=1` (fault-injection builds): renewals fail
    /// as on a full disk.
    #[cfg(feature = "fault-injection")]
    pub fail_renewals: AtomicBool,
}

/// A reserved region of a segment, leased so it cannot be reclaimed while written.
pub struct Region {
    pub seg: Arc<Segment>,
    pub generation: u32,
    pub off: u64,
    pub len: u64,
    _lease: Lease,
}

impl Store {
    /// Segments this quota makes, if enough for `shards` (one open per shard,
    /// and one to reclaim into).
    fn segment_count(config: &StoreConfig, shards: usize) -> Result<u64, StoreError> {
        let count = config.quota / config.segment_size;
        let need = shards as u64 + 1;
        if count < need {
            return Err(StoreError::TooSmall {
                quota: config.quota,
                segment: config.segment_size,
                have: count,
                need,
                shards,
            });
        }
        Ok(count)
    }

    /// What [`Store::open`] would refuse, found without taking the directory
    /// (another process may hold it): the quota, the directory, and each
    /// segment file that is there, opened for writing. An upgrade runs it
    /// before it takes over from the process that holds the cache.
    pub fn preflight(config: &StoreConfig, shards: usize) -> Result<(), StoreError> {
        let count = Self::segment_count(config, shards)?;
        let Some(dir) = &config.dir else {
            return Ok(());
        };
        let io = |source| StoreError::Io {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))
            .map_err(io)?;
        for id in 0..count as u32 {
            let path = segment_path(dir, id);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Segment { path, source }),
            }
        }
        Ok(())
    }

    pub fn open(config: StoreConfig, shards: usize) -> Result<(Store, Recovery), StoreError> {
        let started = Instant::now();
        let count = Self::segment_count(&config, shards)?;
        let need = shards as u64 + 1;
        let len = config.segment_size as usize;
        let mut segments = Vec::with_capacity(count as usize);
        let mut usable = Vec::with_capacity(count as usize);
        let mut lock = None;
        match &config.dir {
            Some(dir) => {
                let io = |source| StoreError::Io {
                    dir: dir.clone(),
                    source,
                };
                std::fs::create_dir_all(dir).map_err(io)?;
                let f = File::create(dir.join("lock")).map_err(io)?;
                if f.try_lock().is_err() {
                    return Err(StoreError::Locked(dir.clone()));
                }
                lock = Some(f);
                // Files past the count (a cache made with smaller segments, or
                // more of them) would hold disk outside the quota: removed.
                let mut removed = 0;
                for e in std::fs::read_dir(dir).map_err(io)?.flatten() {
                    let name = e.file_name();
                    let id = name.to_str().and_then(|n| {
                        n.strip_prefix("seg-")?
                            .strip_suffix(".dat")?
                            .parse::<u64>()
                            .ok()
                    });
                    if id.is_some_and(|id| id >= count) && std::fs::remove_file(e.path()).is_ok() {
                        removed += 1;
                    }
                }
                if removed > 0 {
                    log::warn!(
                        "cache {}: {removed} segment files past the {count} this quota and segment size make were removed",
                        dir.display()
                    );
                }
                let sendable = match renews_pages(dir) {
                    Ok(()) if len.is_multiple_of(super::segment::SENDABLE_ALIGN) => true,
                    Ok(()) => {
                        log::warn!(
                            "cache {}: the segment size is not a multiple of 2 MiB; hits are sent by copy (no sendfile)",
                            dir.display()
                        );
                        false
                    }
                    Err(e) => {
                        log::warn!(
                            "cache {}: the filesystem cannot renew pages under sendfile ({e}); hits are sent by copy",
                            dir.display()
                        );
                        false
                    }
                };
                for id in 0..count as u32 {
                    let path = segment_path(dir, id);
                    let (seg, ok) = Segment::open_file(&path, id, len, sendable)
                        .map_err(|source| StoreError::Segment { path, source })?;
                    segments.push(Arc::new(seg));
                    usable.push(ok);
                }
            }
            None => {
                for id in 0..count as u32 {
                    let seg = Segment::anonymous(id, len).map_err(|source| StoreError::Io {
                        dir: PathBuf::from("<memory>"),
                        source,
                    })?;
                    segments.push(Arc::new(seg));
                    usable.push(false);
                }
            }
        }
        let index = new_index();
        let keys = KeyIndex::default();
        // Older records of a key found live (a cache written before records
        // were killed when replaced, or a crash between the two writes): they
        // die once every segment is read, so a purge of the newer one holds.
        let losers = Mutex::new(Vec::new());
        let max_seq = AtomicU64::new(0);
        let objects = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let corrupt = AtomicU64::new(0);
        // Per segment: its newest sequence number, and whether reading it failed.
        let mut last_seq = vec![(0u64, false); segments.len()];
        // Recovery reads every committed byte to verify checksums: spread it over threads.
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        std::thread::scope(|s| {
            let chunks: Vec<_> = last_seq
                .chunks_mut(segments.len().div_ceil(workers).max(1))
                .enumerate()
                .collect();
            let per = segments.len().div_ceil(workers).max(1);
            for (ci, chunk) in chunks {
                let (segments, usable, index) = (&segments, &usable, &index);
                let (keys, losers) = (&keys, &losers);
                let (max_seq, objects, bytes, corrupt) = (&max_seq, &objects, &bytes, &corrupt);
                s.spawn(move || {
                    for (j, slot) in chunk.iter_mut().enumerate() {
                        let i = ci * per + j;
                        if !usable[i] {
                            continue;
                        }
                        let r = scan(&segments[i], index, keys, losers);
                        if let Some(e) = &r.failed {
                            log::error!(
                                "cache segment {}: unreadable ({e}); excluded from the cache",
                                segments[i].id
                            );
                        }
                        *slot = (r.max_seq, r.failed.is_some());
                        max_seq.fetch_max(r.max_seq, Relaxed);
                        if r.failed.is_none() {
                            objects.fetch_add(r.objects, Relaxed);
                            bytes.fetch_add(r.bytes, Relaxed);
                            corrupt.fetch_add(r.corrupt, Relaxed);
                        }
                    }
                });
            }
        });
        let bad: Vec<u32> = (0..segments.len() as u32)
            .filter(|&i| last_seq[i as usize].1)
            .collect();
        if !bad.is_empty() {
            // Entries read before the failure are checksummed, but a segment with
            // a bad sector would fault later, in a hit or a write: drop it whole.
            index.pin().retain(|_, e| !bad.contains(&e.seg));
            let excluded = bad.len() as u64;
            if count - excluded < need {
                return Err(StoreError::Unreadable {
                    excluded,
                    usable: count - excluded,
                    need,
                    shards,
                });
            }
        }
        for (seg, off, h) in losers.into_inner().unwrap_or_else(|p| p.into_inner()) {
            if !bad.contains(&seg) {
                // No reader, no writer yet: recovery owns every segment.
                segments[seg as usize].write_at(off as usize, &dead_of(&h).encode());
            }
        }
        let mut free = VecDeque::new();
        let mut sealed: Vec<u32> = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            if bad.contains(&(i as u32)) {
                continue;
            }
            if seg.is_empty() {
                free.push_back(i as u32);
            } else {
                sealed.push(i as u32);
            }
        }
        sealed.sort_by_key(|&i| last_seq[i as usize].0);
        let recovery = Recovery {
            objects: objects.load(Relaxed),
            bytes: bytes.load(Relaxed),
            corrupt: corrupt.load(Relaxed),
            excluded: bad.len() as u64,
            segments_used: sealed.len(),
            millis: started.elapsed().as_millis(),
        };
        let store = Store {
            segments,
            index,
            keys,
            kill: Mutex::new(()),
            alloc: Mutex::new(Allocator {
                free,
                sealed: sealed.into(),
                active: (0..shards).map(|_| None).collect(),
            }),
            seq: AtomicU64::new(max_seq.load(Relaxed) + 1),
            config,
            stats: StoreStats::default(),
            _lock: lock,
            #[cfg(feature = "fault-injection")]
            fail_renewals: AtomicBool::new(false),
        };
        Ok((store, recovery))
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed)
    }

    /// Largest record a segment can hold.
    pub fn max_record(&self) -> u64 {
        self.config.segment_size - SEGMENT_HEADER as u64
    }

    /// Reserves `len` bytes in `shard`'s active segment, sealing it and taking a free
    /// or reclaimed segment when it is full. `None` when nothing can be reclaimed now
    /// (every sealed segment has in-flight readers): the object is served uncached.
    pub fn reserve(&self, shard: usize, len: u64) -> Option<Region> {
        if len > self.max_record() {
            return None;
        }
        let mut a = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let shard = shard % a.active.len();
        for _ in 0..=self.segments.len() + 1 {
            if let Some(act) = a.active[shard].as_mut() {
                let seg = &self.segments[act.seg as usize];
                if act.write + len <= seg.len() as u64 {
                    let off = act.write;
                    act.write += len;
                    let generation = seg.generation.load(SeqCst);
                    let lease = Lease::acquire(seg, generation, off as usize, len as usize)?;
                    return Some(Region {
                        seg: seg.clone(),
                        generation,
                        off,
                        len,
                        _lease: lease,
                    });
                }
            }
            if let Some(old) = a.active[shard].take() {
                a.sealed.push_back(old.seg);
            }
            let (seg, write) = self.take_segment(&mut a)?;
            a.active[shard] = Some(Active { seg, write });
        }
        None
    }

    /// [`Segment::renew_pages`], or its injected failure (a test build).
    fn renew(&self, seg: &Segment) -> std::io::Result<()> {
        #[cfg(feature = "fault-injection")]
        let r = if seg.needs_renewal() && self.fail_renewals.load(Relaxed) {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        } else {
            seg.renew_pages()
        };
        #[cfg(not(feature = "fault-injection"))]
        let r = seg.renew_pages();
        seg.report_renewal(&r);
        r
    }

    /// Could [`reserve`](Self::reserve) find `len` bytes for `shard` now?
    pub fn can_reserve(&self, shard: usize, len: u64) -> bool {
        if len > self.max_record() {
            return false;
        }
        let a = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let shard = shard % a.active.len();
        let fits = a.active[shard]
            .as_ref()
            .is_some_and(|act| act.write + len <= self.segments[act.seg as usize].len() as u64);
        fits || !a.free.is_empty()
            || a.sealed
                .iter()
                .any(|&id| self.segments[id as usize].leases() == 0)
    }

    fn take_segment(&self, a: &mut Allocator) -> Option<(u32, u64)> {
        if let Some(&id) = a.free.front() {
            let seg = &self.segments[id as usize];
            seg.generation.fetch_add(1, SeqCst);
            // Empty, but a crash in a reclaim may have left sent pages below
            // the mark (a previous process's, still queued after an upgrade).
            if self.renew(seg).is_err() {
                // It stays first, for a later try; this miss goes uncached
                // (a full disk: another segment would fail the same way).
                self.stats.renew_failures.fetch_add(1, Relaxed);
                return None;
            }
            a.free.pop_front();
            seg.set_high_water(SEGMENT_HEADER as u64);
            return Some((id, SEGMENT_HEADER as u64));
        }
        for pos in 0..a.sealed.len() {
            let id = a.sealed[pos];
            if self.segments[id as usize].leases() > 0 {
                continue;
            }
            match self.reclaim(id) {
                Reclaimed::At(write) => {
                    a.sealed.remove(pos);
                    self.stats.evictions.fetch_add(1, Relaxed);
                    return Some((id, write));
                }
                Reclaimed::Leased => {}
                Reclaimed::Unrenewed => {
                    // Kept where it is, retried first next time; nothing
                    // else is emptied for this miss.
                    self.stats.renew_failures.fetch_add(1, Relaxed);
                    return None;
                }
            }
        }
        None
    }

    /// Reclaims a sealed segment: objects hit since they were written are compacted to
    /// its front (their second chance), everything else leaves the index.
    fn reclaim(&self, id: u32) -> Reclaimed {
        let seg = &self.segments[id as usize];
        let old_gen = seg.generation.fetch_add(1, SeqCst);
        let new_gen = old_gen.wrapping_add(1);
        if seg.leases() > 0 {
            // A reader leased it before seeing the new generation. Nothing was touched
            // yet (and the allocator lock is held): put the generation back and try
            // another segment.
            seg.generation.store(old_gen, SeqCst);
            return Reclaimed::Leased;
        }
        let guard = self.index.pin();
        let hwm = seg.high_water();

        // Records that stay: moved in place, or (a segment bodies were sent
        // from, whose pages the kernel may still hold) copied aside to be
        // written back into renewed pages: at most half a segment, so a
        // client that hits everything cannot make a reclaim hold a whole one.
        let renew = seg.needs_renewal();
        let aside_cap = seg.len() / 2;
        // Until compaction is done, recovery must see nothing of this segment: a crash
        // mid-way would otherwise leave half-moved records below the mark. (A
        // renewal moves nothing in place, and rewrites the header itself:
        // no write before it, which a failed renewal would make a fault on
        // a hole.)
        if !renew {
            seg.set_high_water(SEGMENT_HEADER as u64);
        }
        let mut aside: Vec<u8> = Vec::new();
        let mut stays: Vec<(Header, Vec<u8>, u64, u64)> = Vec::new();
        let mut off = SEGMENT_HEADER as u64;
        let mut write = SEGMENT_HEADER as u64;
        while off + HEADER_LEN as u64 <= hwm {
            // Every region below the mark starts with a header we wrote (a placeholder
            // until commit), so an invalid one means corruption: stop, never search
            // inside bodies, which hold arbitrary origin bytes.
            let Some(h) = Header::decode(seg.bytes(off as usize, HEADER_LEN)) else {
                break;
            };
            let Some(end) = off.checked_add(h.total_len).filter(|&e| e <= hwm) else {
                break;
            };
            if h.is_dead() {
                // A killed record (purged, or replaced by a newer one) may still
                // hold the index's entry (a purged copy kept for origin failure):
                // it goes with its segment. Placeholders carry no key.
                let key_fits = (HEADER_LEN as u64)
                    .checked_add(u64::from(h.key_len))
                    .is_some_and(|n| n <= h.total_len);
                if h.key_len > 0 && h.key_hash != 0 && key_fits {
                    let key = seg
                        .bytes((off as usize) + HEADER_LEN, h.key_len as usize)
                        .to_vec();
                    self.drop_entry(id, off, &h, &key);
                }
            } else {
                let (src, dst) = (off, write);
                // Read before any move: only earlier bytes are written below `off`.
                let key = seg
                    .bytes((off as usize) + HEADER_LEN, h.key_len as usize)
                    .to_vec();
                let hit = matches!(guard.get(&h.key_hash),
                    Some(e) if e.seg == id && e.off == src && e.generation == old_gen && e.hit.load(Relaxed))
                    && (!renew || aside.len() + h.total_len as usize <= aside_cap);
                if hit {
                    // Move (or copy) first, publish after: no reader can reach
                    // `dst` (new generation) before its bytes are in place.
                    if renew {
                        aside.extend_from_slice(seg.bytes(src as usize, h.total_len as usize));
                    } else {
                        seg.move_within(src as usize, dst as usize, h.total_len as usize);
                        seg.set_high_water(write + h.total_len);
                    }
                    write += h.total_len;
                    stays.push((h, key, src, dst));
                } else {
                    // Unhit, or left over from an older generation: gone.
                    self.drop_entry(id, src, &h, &key);
                }
            }
            off = end;
        }
        if renew {
            if self.renew(seg).is_err() {
                // Out of use until a later reclaim renews it: nothing stays.
                for (h, key, src, _) in &stays {
                    self.drop_entry(id, *src, h, key);
                }
                return Reclaimed::Unrenewed;
            }
            seg.write_at(SEGMENT_HEADER, &aside);
        }
        for (h, key, src, dst) in stays {
            let mut kept = false;
            guard.compute(h.key_hash, |cur| match cur {
                Some((_, e)) if e.seg == id && e.off == src => {
                    if e.generation == old_gen {
                        kept = true;
                        Operation::Insert(Entry {
                            off: dst,
                            generation: new_gen,
                            hit: AtomicBool::new(false),
                            head_override: e.head_override.clone(),
                            ..*e
                        })
                    } else {
                        Operation::Remove
                    }
                }
                _ => Operation::Abort(()),
            });
            if kept {
                self.stats.second_chances.fetch_add(1, Relaxed);
            } else {
                // Moved, then found replaced or purged meanwhile: the copy
                // must not come back at recovery.
                seg.write_at(dst as usize, &dead_of(&h).encode());
                self.stats.dropped.fetch_add(1, Relaxed);
                self.forget_key(h.key_hash, &key);
            }
        }
        seg.set_high_water(write);
        Reclaimed::At(write)
    }

    /// A reclaim drops the record at `off` of segment `id`: its index entry,
    /// if still that record's, and its key.
    fn drop_entry(&self, id: u32, off: u64, h: &Header, key: &[u8]) {
        let mut gone = false;
        self.index.pin().compute(h.key_hash, |cur| match cur {
            Some((_, e)) if e.seg == id && e.off == off => {
                gone = true;
                Operation::Remove
            }
            _ => Operation::Abort(()),
        });
        if gone {
            self.stats.dropped.fetch_add(1, Relaxed);
            self.forget_key(h.key_hash, key);
        }
    }

    /// Publishes a committed record in the index (newest write wins). The
    /// record it replaces is marked dead on disk, so at most one live record of
    /// a key is ever on disk and killing it removes the key for good.
    pub fn publish(&self, key_hash: u64, key: &[u8], entry: Entry) {
        let guard = self.index.pin();
        if let Some(old) = guard.insert(key_hash, entry) {
            self.kill_record(key_hash, old);
        }
        self.keys.insert(key_hash, key);
    }

    /// Drops `key` from the key index once its object left the main index. A
    /// fill may have published it again meanwhile: then it goes back in.
    pub fn forget_key(&self, key_hash: u64, key: &[u8]) {
        self.keys.remove(key_hash, key);
        if self.index.pin().get(&key_hash).is_some() {
            self.keys.insert(key_hash, key);
        }
    }

    /// Marks `e`'s record dead on disk (its header rewritten with FLAG_DEAD, its
    /// lengths and key kept so a reclaim can still find the index entry):
    /// recovery skips it. `false` when its segment was reclaimed meanwhile (the
    /// reclaim dropped it, or moved it and found it replaced).
    pub fn kill_record(&self, key_hash: u64, e: &Entry) -> bool {
        let Some(seg) = self.segments.get(e.seg as usize) else {
            return false;
        };
        // The lease keeps a reclaim from moving or reusing the region meanwhile.
        if let Some(lease) = Lease::acquire(seg, e.generation, e.off as usize, HEADER_LEN) {
            self.kill_leased(key_hash, e, &lease);
            return true;
        }
        // A reclaim holds the generation bumped only inside the allocator
        // lock: under that lock none runs, so the generation read there is
        // final and the header can be written without a lease. One bounded
        // wait, and never a replaced record left live on disk (it would come
        // back at the next start after a later purge of its successor).
        let _no_reclaim = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        if seg.generation.load(SeqCst) != e.generation {
            return false; // reclaimed for good
        }
        self.write_dead(key_hash, e);
        true
    }

    /// [`kill_record`](Self::kill_record) under a lease the caller holds on
    /// `e`'s segment (its generation checked).
    pub fn kill_leased(&self, key_hash: u64, e: &Entry, _lease: &Lease) {
        self.write_dead(key_hash, e);
    }

    /// Rewrites `e`'s header as dead; the caller keeps reclaims off the
    /// region (a lease, or the allocator lock).
    fn write_dead(&self, key_hash: u64, e: &Entry) {
        let seg = &self.segments[e.seg as usize];
        let h = Header {
            flags: FLAG_DEAD,
            total_len: e.total_len,
            seq: e.seq,
            key_hash,
            key_len: e.key_len,
            meta_len: e.meta_len,
            body_len: e.body_len,
            checksum: 0,
        };
        // Readers never hold the header bytes (lookups lease past them), so the
        // only other writer of them is another kill: serialised here.
        let _one = self.kill.lock().unwrap_or_else(|p| p.into_inner());
        seg.write_at(e.off as usize, &h.encode());
        seg.flush_async(e.off as usize, HEADER_LEN);
    }

    /// Returns once no reclaim is running (reclaims hold the allocator lock).
    pub fn wait_reclaim(&self) {
        drop(self.alloc.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The dead form of a record's header (lengths and key kept).
fn dead_of(h: &Header) -> Header {
    Header {
        flags: h.flags | FLAG_DEAD,
        checksum: 0,
        ..*h
    }
}

pub(super) struct ScanResult {
    pub(super) objects: u64,
    pub(super) bytes: u64,
    pub(super) corrupt: u64,
    pub(super) max_seq: u64,
    /// The segment could not be read (a truncated file, a bad sector): it is
    /// excluded, with every entry it gave.
    pub(super) failed: Option<std::io::Error>,
}

/// Body bytes read and hashed per `pread` while verifying a record.
const SCAN_PIECE: usize = 1 << 20;
/// No real key and stored head come near this (the request line and the origin
/// head are bounded far below): more is a forged header, not a reason to allocate.
const MAX_KEY_META: usize = 1 << 20;

/// Rebuilds index entries from one segment, reading with `pread` (never through
/// the mapping, where a bad sector would be SIGBUS). An invalid header ends the
/// scan (the rest is given up: bodies hold arbitrary origin bytes that could
/// imitate a header); a record whose checksum fails is skipped.
pub(super) fn scan(
    seg: &Arc<Segment>,
    index: &Index,
    keys: &KeyIndex,
    losers: &Mutex<Vec<(u32, u64, Header)>>,
) -> ScanResult {
    let mut r = ScanResult {
        objects: 0,
        bytes: 0,
        corrupt: 0,
        max_seq: 0,
        failed: None,
    };
    let hwm = seg.high_water();
    let generation = seg.generation.load(SeqCst);
    let guard = index.pin();
    let mut off = SEGMENT_HEADER as u64;
    let mut head = [0u8; HEADER_LEN];
    let mut piece = Vec::new();
    while off + HEADER_LEN as u64 <= hwm {
        if let Err(e) = seg.read_at(off, &mut head) {
            r.failed = Some(e);
            break;
        }
        let h = match Header::decode(&head) {
            Some(h)
                if h.is_consistent() && off.checked_add(h.total_len).is_some_and(|e| e <= hwm) =>
            {
                h
            }
            _ => {
                r.corrupt += 1;
                break;
            }
        };
        let start = off;
        off += h.total_len;
        if h.is_dead() {
            continue;
        }
        // Key and meta in one read (bounded by the consistent lengths), then the
        // body in pieces, hashed as read.
        let key_meta = h.key_len as usize + h.meta_len as usize;
        if key_meta > MAX_KEY_META {
            r.corrupt += 1;
            break;
        }
        piece.resize(key_meta.max(SCAN_PIECE.min(h.body_len as usize)), 0);
        if let Err(e) = seg.read_at(start + HEADER_LEN as u64, &mut piece[..key_meta]) {
            r.failed = Some(e);
            break;
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&piece[..key_meta]);
        // Copied now: the body is read through the same buffer.
        let key: Box<[u8]> = piece[..h.key_len as usize].into();
        let Some(meta) = Meta::decode(&piece[h.key_len as usize..key_meta]) else {
            r.corrupt += 1;
            continue;
        };
        let times: Times = meta.times;
        let mut at = start + h.body_offset() as u64;
        let body_end = at + h.body_len;
        while at < body_end {
            let n = ((body_end - at) as usize).min(SCAN_PIECE);
            if let Err(e) = seg.read_at(at, &mut piece[..n]) {
                r.failed = Some(e);
                break;
            }
            hasher.update(&piece[..n]);
            at += n as u64;
        }
        if r.failed.is_some() {
            break;
        }
        if hasher.digest() != h.checksum {
            r.corrupt += 1;
            continue;
        }
        r.max_seq = r.max_seq.max(h.seq);
        keys.insert(h.key_hash, &key);
        r.objects += 1;
        r.bytes += h.body_len;
        // The closure may run more than once: `lost` is what the last run said.
        let mut lost = None;
        guard.compute(h.key_hash, |cur| match cur {
            Some((_, e)) if e.seq >= h.seq => {
                lost = Some((seg.id, start, h));
                Operation::Abort(())
            }
            other => {
                lost = other.map(|(_, e)| {
                    (
                        e.seg,
                        e.off,
                        Header {
                            flags: 0,
                            total_len: e.total_len,
                            seq: e.seq,
                            key_hash: h.key_hash,
                            key_len: e.key_len,
                            meta_len: e.meta_len,
                            body_len: e.body_len,
                            checksum: 0,
                        },
                    )
                });
                Operation::Insert(Entry {
                    seg: seg.id,
                    generation,
                    off: start,
                    total_len: h.total_len,
                    key_len: h.key_len,
                    meta_len: h.meta_len,
                    body_len: h.body_len,
                    seq: h.seq,
                    times,
                    head_override: None,
                    hit: AtomicBool::new(false),
                })
            }
        });
        if let Some(l) = lost {
            losers.lock().unwrap_or_else(|p| p.into_inner()).push(l);
        }
    }
    r
}

/// Segment `id`'s file in `dir`.
fn segment_path(dir: &std::path::Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:05}.dat"))
}
