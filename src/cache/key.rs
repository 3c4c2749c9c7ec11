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

/// What separates a varied key's Vary part: `<key>\0vary\0<names>\0<sig>`.
const VARY_MARK: &[u8] = b"\0vary\0";

/// The selecting fields of a response (RFC 9111 §4.1) other than
/// Accept-Encoding (the gzip variant covers it), lower case, sorted, once each.
pub type VaryNames = std::sync::Arc<[Box<[u8]>]>;
type Names = Vec<Box<[u8]>>;

/// The signature of a request's values for `names`: lines combined, list
/// items trimmed (RFC 9111 §4.1's normalisation); an absent field differs
/// from an empty one.
pub fn vary_signature<'a>(
    names: &[Box<[u8]>],
    headers: impl Fn() -> Box<dyn Iterator<Item = (&'a [u8], &'a [u8])> + 'a>,
) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for n in names {
        h.update(n);
        h.update(b"\0");
        let mut present = false;
        for (k, v) in headers() {
            if !k.eq_ignore_ascii_case(n) {
                continue;
            }
            for item in v.split(|&b| b == b',') {
                let item = crate::http1::headers::trim(item);
                if present {
                    h.update(b",");
                }
                present = true;
                h.update(item);
            }
            // An empty line is still a line.
            present = true;
        }
        h.update(if present { b"\x01" } else { b"\x02" });
    }
    h.digest()
}

/// The base key and the names of a varied stored key.
pub fn vary_of(stored: &[u8]) -> Option<(&[u8], Names)> {
    let at = memchr::memmem::find(stored, VARY_MARK)?;
    let rest = &stored[at + VARY_MARK.len()..];
    let end = memchr::memchr(0, rest)?;
    let names = rest[..end]
        .split(|&b| b == b',')
        .filter(|n| !n.is_empty())
        .map(Box::from)
        .collect();
    Some((&stored[..at], names))
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

    /// The identity key of a primary key already built (`vhost` + path).
    pub fn from_primary(primary: &[u8]) -> CacheKey {
        CacheKey {
            stored: primary.to_vec(),
            primary_len: primary.len(),
            variant: Variant::Identity,
        }
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

    /// This key for the variant selected by `names` with signature `sig`.
    pub fn varied(&self, names: &[Box<[u8]>], sig: u64) -> CacheKey {
        let mut stored = self.stored.clone();
        stored.extend_from_slice(VARY_MARK);
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                stored.push(b',');
            }
            stored.extend_from_slice(n);
        }
        stored.push(0);
        stored.extend_from_slice(format!("{sig:016x}").as_bytes());
        CacheKey {
            stored,
            primary_len: self.primary_len,
            variant: self.variant,
        }
    }

    /// This key without its Vary part.
    pub fn unvaried(&self) -> CacheKey {
        CacheKey {
            stored: self.base().to_vec(),
            primary_len: self.primary_len,
            variant: self.variant,
        }
    }

    /// The key without its Vary part (the base the Vary index is keyed by).
    pub fn base(&self) -> &[u8] {
        match memchr::memmem::find(&self.stored, VARY_MARK) {
            Some(i) => &self.stored[..i],
            None => &self.stored,
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

    #[test]
    fn varied_keys_carry_their_names_and_normalise_values() {
        let names: Vec<Box<[u8]>> = vec![b"accept-language".as_slice().into()];
        let sig = |lines: &[(&'static [u8], &'static [u8])]| {
            let lines = lines.to_vec();
            vary_signature(&names, move || Box::new(lines.clone().into_iter()))
        };
        let en = sig(&[(b"Accept-Language", b"en")]);
        assert_eq!(en, sig(&[(b"accept-language", b" en ")]));
        assert_eq!(
            sig(&[(b"Accept-Language", b"en, fr")]),
            sig(&[(b"Accept-Language", b"en"), (b"Accept-Language", b"fr")]),
            "combined lines"
        );
        assert_ne!(en, sig(&[(b"Accept-Language", b"fr")]));
        assert_ne!(
            sig(&[]),
            sig(&[(b"Accept-Language", b"")]),
            "absent is not empty"
        );
        let k = CacheKey::new("h", b"/x", Variant::Gzip).varied(&names, en);
        assert_eq!(primary_of(k.stored()), b"h/x");
        assert_eq!(k.base(), b"h/x\0gzip");
        let (base, got) = vary_of(k.stored()).unwrap();
        assert_eq!((base, got), (&b"h/x\0gzip"[..], names.clone()));
        assert!(vary_of(b"h/x\0gzip").is_none());
    }
}
