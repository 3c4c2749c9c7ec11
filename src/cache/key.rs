//! The cache key: a primary part (vhost, path and query) and a variant part (the
//! content coding today; more dimensions later). Invalidation and purge work on
//! the primary part and remove every variant of it.

/// A stored variant of one primary key (KEY-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    Identity,
    Gzip,
}

impl Variant {
    /// Every variant a primary key may have, for invalidation.
    pub const ALL: [Variant; 2] = [Variant::Identity, Variant::Gzip];

    /// The suffix the variant adds to the stored key (the on-disk record format:
    /// identity objects are stored under the primary key alone).
    fn suffix(self) -> &'static [u8] {
        match self {
            Variant::Identity => b"",
            Variant::Gzip => b"\0gzip",
        }
    }
}

/// The primary part of a stored key (its variant suffix cut off).
pub fn primary_of(stored: &[u8]) -> &[u8] {
    match memchr::memchr(0, stored) {
        Some(i) => &stored[..i],
        None => stored,
    }
}

/// Built once per request, in its stored form (one allocation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The primary part followed by the variant's suffix.
    stored: Vec<u8>,
    primary_len: usize,
    pub variant: Variant,
}

impl CacheKey {
    /// `vhost` + `path` (path and query as requested).
    pub fn new(vhost: &str, path: &[u8], variant: Variant) -> CacheKey {
        let suffix = variant.suffix();
        let mut stored = Vec::with_capacity(vhost.len() + path.len() + suffix.len());
        stored.extend_from_slice(vhost.as_bytes());
        stored.extend_from_slice(path);
        let primary_len = stored.len();
        stored.extend_from_slice(suffix);
        CacheKey {
            stored,
            primary_len,
            variant,
        }
    }

    pub fn primary(&self) -> &[u8] {
        &self.stored[..self.primary_len]
    }

    /// The same primary key in another variant.
    pub fn with_variant(&self, variant: Variant) -> CacheKey {
        let mut stored = self.primary().to_vec();
        stored.extend_from_slice(variant.suffix());
        CacheKey {
            stored,
            primary_len: self.primary_len,
            variant,
        }
    }

    /// The bytes records and the index are keyed by.
    pub fn stored(&self) -> &[u8] {
        &self.stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_keep_the_record_format_and_differ_by_variant() {
        let id = CacheKey::new("www.a", b"/x?q=1", Variant::Identity);
        let gz = id.with_variant(Variant::Gzip);
        assert_eq!(id.stored(), b"www.a/x?q=1");
        assert_eq!(gz.stored(), b"www.a/x?q=1\0gzip");
        assert_eq!(id.primary(), gz.primary());
        assert_ne!(id, gz);
        let all: Vec<Vec<u8>> = Variant::ALL
            .iter()
            .map(|&v| id.with_variant(v).stored().to_vec())
            .collect();
        assert!(all.contains(&id.stored().to_vec()) && all.contains(&gz.stored().to_vec()));
        assert_eq!(gz.with_variant(Variant::Identity), id);
    }
}
