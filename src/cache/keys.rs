//! The key index: every stored key in order, for purges by pattern (PRG-2). The
//! main index is keyed by a hash and cannot answer "every key under
//! `host/dir/`"; this one can, with a range scan.
//!
//! It is written when a record is published and when one leaves the index
//! (fills, reclaims, purges), never on a hit. Striped by key hash so fills on
//! different shards rarely meet on one lock. It may hold a key whose object is
//! gone (a race with a reclaim); a purge checks every key against the main
//! index, so a stale key costs memory until that purge removes it, never a
//! wrong answer.

use std::collections::BTreeSet;
use std::sync::Mutex;

const STRIPES: usize = 16;

type Stripe = Mutex<BTreeSet<Box<[u8]>>>;

pub struct KeyIndex {
    stripes: Box<[Stripe]>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            stripes: (0..STRIPES).map(|_| Mutex::new(BTreeSet::new())).collect(),
        }
    }
}

impl KeyIndex {
    fn stripe(&self, key_hash: u64) -> std::sync::MutexGuard<'_, BTreeSet<Box<[u8]>>> {
        // The low bits pick the main index's buckets; use high ones.
        self.stripes[(key_hash >> 58) as usize % STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, key_hash: u64, key: &[u8]) {
        let mut s = self.stripe(key_hash);
        if !s.contains(key) {
            s.insert(key.into());
        }
    }

    pub fn remove(&self, key_hash: u64, key: &[u8]) {
        self.stripe(key_hash).remove(key);
    }

    /// Calls `f` on every key starting with `prefix`, copied out in batches:
    /// no stripe is locked for longer than one batch takes to copy, and none
    /// while `f` runs, so fills go on during a purge of millions of keys.
    pub fn for_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8])) {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        const BATCH: usize = 1024;
        for stripe in self.stripes.iter() {
            let mut after: Option<Box<[u8]>> = None;
            loop {
                let batch: Vec<Box<[u8]>> = {
                    let s = stripe.lock().unwrap_or_else(|p| p.into_inner());
                    let from = match &after {
                        Some(k) => Excluded(&k[..]),
                        None => Included(prefix),
                    };
                    s.range::<[u8], _>((from, Unbounded))
                        .take_while(|k| k.starts_with(prefix))
                        .take(BATCH)
                        .cloned()
                        .collect()
                };
                for k in &batch {
                    f(k);
                }
                if batch.len() < BATCH {
                    break;
                }
                after = batch.into_iter().last();
            }
        }
    }

    /// Every key starting with `prefix` (tests and small sets).
    pub fn with_prefix(&self, prefix: &[u8]) -> Vec<Box<[u8]>> {
        let mut out = Vec::new();
        self.for_prefix(prefix, |k| out.push(k.into()));
        out
    }

    pub fn len(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::record::key_hash;

    #[test]
    fn prefix_scans_find_exactly_the_keys_under_the_prefix() {
        let k = KeyIndex::default();
        let keys: &[&[u8]] = &[
            b"a.com/dir/x",
            b"a.com/dir/y\0gzip",
            b"a.com/dir",
            b"a.com/dirt/z",
            b"b.com/dir/x",
            b"a.com/",
        ];
        for key in keys {
            k.insert(key_hash(key), key);
            k.insert(key_hash(key), key);
        }
        assert_eq!(k.len(), keys.len(), "inserting twice keeps one");
        let mut got = k.with_prefix(b"a.com/dir/");
        got.sort();
        assert_eq!(
            got,
            vec![
                Box::<[u8]>::from(&b"a.com/dir/x"[..]),
                Box::from(&b"a.com/dir/y\0gzip"[..])
            ]
        );
        assert_eq!(k.with_prefix(b"a.com/").len(), 5);
        assert_eq!(k.with_prefix(b"c.com/").len(), 0);
        k.remove(key_hash(b"a.com/dir/x"), b"a.com/dir/x");
        assert_eq!(k.with_prefix(b"a.com/dir/").len(), 1);
    }

    #[test]
    fn batches_resume_where_they_stopped() {
        let k = KeyIndex::default();
        for i in 0..5000 {
            let key = format!("h/p/{i}");
            k.insert(key_hash(key.as_bytes()), key.as_bytes());
        }
        k.insert(key_hash(b"h/q"), b"h/q");
        let mut seen = std::collections::HashSet::new();
        k.for_prefix(b"h/p/", |key| assert!(seen.insert(key.to_vec()), "twice"));
        assert_eq!(seen.len(), 5000);
    }
}
