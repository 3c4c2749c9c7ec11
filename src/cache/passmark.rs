//! STON's NoStore `Bypass="ON"` (TTL-2): a URL whose response said `no-store`
//! goes straight to the origin for the NoStore TTL, without a lookup or a
//! coalesced fill (whose followers would each wait for the leader's head only
//! to fetch for themselves). One list per shard, so no lock; bounded, and
//! a full list only means the next such request misses as usual.

use ahash::AHashMap;

/// Most URLs one shard keeps marked.
pub const MAX_MARKS: usize = 4096;

#[derive(Debug, Default)]
pub struct PassMarks {
    until: AHashMap<Box<[u8]>, u64>,
}

impl PassMarks {
    /// Marks `key` until `until_ms`. At the cap, expired marks are dropped
    /// first; if none is, the mark is not kept.
    pub fn mark(&mut self, key: &[u8], until_ms: u64, now_ms: u64) {
        if let Some(u) = self.until.get_mut(key) {
            *u = until_ms;
            return;
        }
        if self.until.len() >= MAX_MARKS {
            self.until.retain(|_, u| *u > now_ms);
            if self.until.len() >= MAX_MARKS {
                return;
            }
        }
        self.until.insert(key.into(), until_ms);
    }

    /// Is `key` marked at `now_ms`? An expired mark is forgotten.
    pub fn active(&mut self, key: &[u8], now_ms: u64) -> bool {
        if self.until.is_empty() {
            return false;
        }
        match self.until.get(key) {
            Some(&u) if u > now_ms => true,
            Some(_) => {
                self.until.remove(key);
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
            m.mark(format!("k{i}").as_bytes(), 100, 0);
        }
        m.mark(b"new", 100, 0);
        assert_eq!(m.len(), MAX_MARKS);
        assert!(!m.active(b"new", 1));
        assert!(m.active(b"k0", 1));
        // Once they have expired, room is made.
        m.mark(b"new", 300, 200);
        assert_eq!(m.len(), 1);
        assert!(m.active(b"new", 250));
    }
}
