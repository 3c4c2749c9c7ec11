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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    primary: Vec<u8>,
    pub variant: Variant,
}

impl CacheKey {
    /// `vhost` + `path` (path and query as requested).
    pub fn new(vhost: &str, path: &[u8], variant: Variant) -> CacheKey {
        let mut primary = Vec::with_capacity(vhost.len() + path.len() + 5);
        primary.extend_from_slice(vhost.as_bytes());
        primary.extend_from_slice(path);
        CacheKey { primary, variant }
    }

    pub fn primary(&self) -> &[u8] {
        &self.primary
    }

    /// The same primary key in another variant.
    pub fn with_variant(&self, variant: Variant) -> CacheKey {
        CacheKey {
            primary: self.primary.clone(),
            variant,
        }
    }

    /// The bytes records and the index are keyed by.
    pub fn stored(&self) -> Vec<u8> {
        let s = self.variant.suffix();
        let mut k = Vec::with_capacity(self.primary.len() + s.len());
        k.extend_from_slice(&self.primary);
        k.extend_from_slice(s);
        k
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
            .map(|&v| id.with_variant(v).stored())
            .collect();
        assert!(all.contains(&id.stored()) && all.contains(&gz.stored()));
    }
}
