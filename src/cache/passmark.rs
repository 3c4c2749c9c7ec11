//! STON's NoStore `Bypass="ON"` (TTL-2): a URL whose response said `no-store`
//! goes straight to the origin for the NoStore TTL, without a coalesced fill
//! (whose followers would each wait for the leader's head only to fetch for
//! themselves). One list per shard, so no lock. Bounded in entries and, since
//! a mark holds a 128-bit hash of the key and not the key, in bytes; a full
//! list only means the next such request misses as usual.

use ahash::AHashMap;

/// Most URLs one shard keeps marked (about 100 KiB).
pub const MAX_MARKS: usize = 4096;

#[derive(Debug, Default)]
pub struct PassMarks {
    until: AHashMap<u128, u64>,
    /// No mark ends before this: a sweep of a full list is only worth it then.
    earliest_ms: u64,
}

fn id(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

impl PassMarks {
    /// Marks `key` until `until_ms`. At the cap, expired marks are dropped
    /// first (once one can have expired); if none is, the mark is not kept.
    pub fn mark(&mut self, key: &[u8], until_ms: u64, now_ms: u64) {
        let k = id(key);
        if let Some(u) = self.until.get_mut(&k) {
            *u = until_ms;
            return;
        }
        if self.until.len() >= MAX_MARKS {
            if now_ms < self.earliest_ms {
                return;
            }
            self.until.retain(|_, u| *u > now_ms);
            self.earliest_ms = self.until.values().copied().min().unwrap_or(0);
            if self.until.len() >= MAX_MARKS {
                return;
            }
        }
        if self.until.is_empty() || until_ms < self.earliest_ms {
            self.earliest_ms = until_ms;
        }
        self.until.insert(k, until_ms);
    }

    /// Is `key` marked at `now_ms`? An expired mark is forgotten.
    pub fn active(&mut self, key: &[u8], now_ms: u64) -> bool {
        if self.until.is_empty() {
            return false;
        }
        let k = id(key);
        match self.until.get(&k) {
            Some(&u) if u > now_ms => true,
            Some(_) => {
                self.until.remove(&k);
                false
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_expire_and_the_list_is_bounded() {
        let mut m = PassMarks::default();
        m.mark(b"a", 1000, 0);
        assert!(m.active(b"a", 999));
        assert!(!m.active(b"a", 1000), "expired at its time");
        assert!(m.is_empty(), "an expired mark is forgotten on lookup");
        assert!(!m.active(b"b", 0));
        // Renewing a mark moves its end.
        m.mark(b"a", 10, 0);
        m.mark(b"a", 20, 0);
        assert!(m.active(b"a", 15));
        assert!(!m.active(b"a", 25));
        // Full of live marks: a new one is not kept, nothing else is lost.
        for i in 0..MAX_MARKS {
            m.mark(format!("k{i}").as_bytes(), 100 + i as u64, 0);
        }
        m.mark(b"new", 100, 0);
        assert_eq!(m.len(), MAX_MARKS);
        assert!(!m.active(b"new", 1));
        assert!(m.active(b"k0", 1));
        // Once some have expired, room is made (the live ones stay).
        m.mark(b"new", 300, 150);
        assert!(m.active(b"new", 160));
        // k0..=k50 (ending at 100..=150) went; k70 stays.
        assert_eq!(m.len(), MAX_MARKS - 51 + 1);
        assert!(m.active(b"k70", 160));
        assert!(!m.active(b"k10", 160));
    }
}
