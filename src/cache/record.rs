//! The on-disk record: a checksummed header, the key, the stored metadata and the
//! body, appended to a segment. Pure encode/decode; the segment owns the bytes.
//!
//! ```text
//! 0  magic u32 "CRN1"     4  flags u32 (DEAD: skip me)
//! 8  total_len u64        16 seq u64 (newest wins on recovery)
//! 24 key_hash u64         32 key_len u32   36 meta_len u32
//! 40 body_len u64         48 checksum u64 (xxh3 of key, meta, body)
//! 56 header_check u64 (xxh3 of bytes 0..56)
//! ```
//! All integers little-endian. Records start on 8-byte boundaries. The header is
//! written last, so a record torn by a crash has no valid header or a bad checksum.

use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: u32 = u32::from_le_bytes(*b"CRN1");
pub const HEADER_LEN: usize = 64;
pub const ALIGN: u64 = 8;
/// Flag: the record is dead: an abandoned fill's region (only its length is
/// meaningful), or a published record killed by a purge or a newer version
/// (its lengths and key hash kept for the reclaim).
pub const FLAG_DEAD: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub total_len: u64,
    pub seq: u64,
    pub key_hash: u64,
    pub key_len: u32,
    pub meta_len: u32,
    pub body_len: u64,
    pub checksum: u64,
}

/// Record length for these parts, padded to the alignment.
/// Saturates instead of wrapping: a forged `body_len` must not add up to a small
/// length that passes for a real one.
pub fn total_len(key_len: usize, meta_len: usize, body_len: u64) -> u64 {
    let raw = (HEADER_LEN as u64 + key_len as u64 + meta_len as u64).saturating_add(body_len);
    raw.div_ceil(ALIGN).saturating_mul(ALIGN)
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.total_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.key_hash.to_le_bytes());
        b[32..36].copy_from_slice(&self.key_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.meta_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.body_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.checksum.to_le_bytes());
        let check = xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// Decodes a header; `None` unless the magic and the header check match and the
    /// lengths are consistent.
    pub fn decode(b: &[u8]) -> Option<Header> {
        let b = b.get(..HEADER_LEN)?;
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if u32_at(0) != MAGIC || u64_at(56) != xxh3_64(&b[..56]) {
            return None;
        }
        let h = Header {
            flags: u32_at(4),
            total_len: u64_at(8),
            seq: u64_at(16),
            key_hash: u64_at(24),
            key_len: u32_at(32),
            meta_len: u32_at(36),
            body_len: u64_at(40),
            checksum: u64_at(48),
        };
        let need = total_len(h.key_len as usize, h.meta_len as usize, h.body_len);
        if h.flags & FLAG_DEAD == 0 && h.total_len != need {
            return None;
        }
        if h.total_len < HEADER_LEN as u64 || !h.total_len.is_multiple_of(ALIGN) {
            return None;
        }
        Some(h)
    }

    pub fn is_dead(&self) -> bool {
        self.flags & FLAG_DEAD != 0
    }
    pub fn key_range(&self) -> std::ops::Range<usize> {
        HEADER_LEN..HEADER_LEN + self.key_len as usize
    }
    pub fn meta_range(&self) -> std::ops::Range<usize> {
        let s = HEADER_LEN + self.key_len as usize;
        s..s + self.meta_len as usize
    }
    pub fn body_offset(&self) -> usize {
        HEADER_LEN + self.key_len as usize + self.meta_len as usize
    }

    /// Do the lengths fit together (checked)? A header with a valid checksum but
    /// lengths past its own region (a forged or buggy record) must be corruption
    /// to recovery, not a slice out of bounds or a zero-length step.
    pub fn is_consistent(&self) -> bool {
        let parts = (HEADER_LEN as u64)
            .checked_add(u64::from(self.key_len))
            .and_then(|n| n.checked_add(u64::from(self.meta_len)))
            .and_then(|n| n.checked_add(self.body_len));
        self.total_len >= HEADER_LEN as u64
            && self.total_len.is_multiple_of(ALIGN)
            && (self.is_dead() || parts.is_some_and(|n| n <= self.total_len))
    }
}

/// Checksum over a record's key, meta and body (the bytes after the header).
pub fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
    }
    h.digest()
}

/// The stable (cross-process) hash of a cache key. ahash is seeded per process and
/// must never reach the disk.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            flags: 0,
            total_len: total_len(5, 10, 100),
            seq: 7,
            key_hash: key_hash(b"a/key"),
            key_len: 5,
            meta_len: 10,
            body_len: 100,
            checksum: 42,
        }
    }

    #[test]
    fn inconsistent_lengths_are_caught() {
        assert!(sample().is_consistent());
        // (change, consistent?)
        type Case = (fn(&mut Header), bool);
        let table: [Case; 6] = [
            // A body_len for which the unchecked sum wraps to 64, a length that
            // would pass for the region's own.
            (
                |h| {
                    h.total_len = HEADER_LEN as u64;
                    h.body_len = u64::MAX - 14;
                },
                false,
            ),
            (|h| h.total_len = 0, false),
            (|h| h.total_len = 8, false),
            (|h| h.body_len = u64::MAX, false),
            (|h| h.meta_len = u32::MAX, false),
            (|h| h.total_len += 1, false),
        ];
        for (change, want) in table {
            let mut h = sample();
            change(&mut h);
            // A valid checksum does not make it usable (decode may refuse it already).
            let usable = Header::decode(&h.encode()).is_some_and(|d| d.is_consistent());
            assert_eq!(usable, want, "{h:?}");
        }
    }

    #[test]
    fn round_trip_and_every_single_byte_corruption_is_caught() {
        let h = sample();
        let enc = h.encode();
        assert_eq!(Header::decode(&enc), Some(h));
        for i in 0..HEADER_LEN {
            let mut bad = enc;
            bad[i] ^= 0x40;
            assert_eq!(Header::decode(&bad), None, "flip at byte {i}");
        }
        assert_eq!(Header::decode(&enc[..63]), None);
        assert_eq!(Header::decode(&[0u8; 64]), None);
    }

    #[test]
    fn lengths_are_aligned() {
        assert_eq!(total_len(0, 0, 0), 64);
        assert_eq!(total_len(1, 0, 0), 72);
        assert_eq!(total_len(3, 2, 3), 72);
        assert_eq!(sample().body_offset(), 79);
    }

    #[test]
    fn key_hash_is_stable() {
        // Persisted on disk: this value must never change between builds.
        assert_eq!(
            key_hash(b"www.example.com/index.html"),
            xxh3_64(b"www.example.com/index.html")
        );
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
    }
}
