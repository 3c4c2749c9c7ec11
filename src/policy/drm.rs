//! On-the-fly DRM (spec §6, DRM-1..DRM-7), sans-IO: which URL is a DRM URL and
//! what its source is, the key material for a source, and the response ETag.
//! The cipher itself is `transform::rc4`.

/// What `<Key>` concatenates (DRM-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVar {
    /// `$Token`: the configured token.
    Token,
    /// `$url`: the source path, without host, keyword or query.
    Url,
    /// `$filename1`: the path's last segment (`iu.mp3`).
    Filename1,
    /// `$filename2`: that without its last extension (`iu`).
    Filename2,
}

/// `<Key Hash>` (DRM-5): the key is the string's bytes, or its raw digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    None,
    Md5,
    Sha1,
    Sha256,
}

impl Hash {
    pub fn parse(s: &str) -> Option<Hash> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Hash::None,
            "md5" => Hash::Md5,
            "sha-1" | "sha1" => Hash::Sha1,
            "sha-256" | "sha256" => Hash::Sha256,
            _ => return None,
        })
    }

    /// The digest length, or `None` for the string itself.
    pub fn digest_len(self) -> Option<usize> {
        match self {
            Hash::None => None,
            Hash::Md5 => Some(16),
            Hash::Sha1 => Some(20),
            Hash::Sha256 => Some(32),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        use md5::Digest;
        match self {
            Hash::None => data.to_vec(),
            Hash::Md5 => md5::Md5::digest(data).to_vec(),
            Hash::Sha1 => ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
                .as_ref()
                .to_vec(),
            Hash::Sha256 => ring::digest::digest(&ring::digest::SHA256, data)
                .as_ref()
                .to_vec(),
        }
    }
}

/// A vhost's `<Drm Status="Active">`. Its `Debug` leaves the secrets out.
#[derive(Clone, PartialEq, Eq)]
pub struct DrmSettings {
    /// `Keyword` (default `drm`): `<url>/<keyword>` is the DRM URL of `<url>`.
    pub keyword: String,
    /// `MaxSourceSize` in bytes (given in MB, default 500): larger sources get 500.
    pub max_source_bytes: u64,
    pub iv: Vec<u8>,
    pub token: Vec<u8>,
    pub key: Vec<KeyVar>,
    pub hash: Hash,
    /// `Type="enc"` values not yet decrypted (the config loader does it once
    /// the key material is known, then empties this).
    pub enc: Vec<EncSecret>,
}

impl std::fmt::Debug for DrmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrmSettings")
            .field("keyword", &self.keyword)
            .field("max_source_bytes", &self.max_source_bytes)
            .field("iv", &format_args!("<{} bytes>", self.iv.len()))
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("key", &self.key)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// An encrypted `<IV>` or `<Token>` (DRM-8), with its place for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncSecret {
    pub iv: bool,
    pub text: String,
    pub file: String,
    pub line: u32,
}

/// RC4 takes keys of 40 to 2048 bits (DRM-3).
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 5..=256;

/// Why a key cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the RC4 key (IV included) is {0} bytes; it must be 5 to 256 (DRM-3)")]
    Length(usize),
}

/// DRM-1: `/a/b.mp3/drm?x=1` with keyword `drm` → `/a/b.mp3?x=1`. `None`
/// when the path does not end with `/<keyword>` or nothing is left before it.
pub fn source_of(target: &[u8], keyword: &str) -> Option<Vec<u8>> {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, &b""[..]),
    };
    let stem = path.strip_suffix(keyword.as_bytes())?.strip_suffix(b"/")?;
    if stem.is_empty() || !stem.starts_with(b"/") {
        return None;
    }
    Some([stem, query].concat())
}

/// DRM-4..DRM-6: the RC4 key for the source at `source` (path, query allowed).
pub fn key_for(d: &DrmSettings, source: &[u8]) -> Result<Vec<u8>, KeyError> {
    let url = source.split(|&b| b == b'?').next().unwrap_or(source);
    let file1 = url.rsplit(|&b| b == b'/').next().unwrap_or(url);
    let file2 = match file1.iter().rposition(|&b| b == b'.') {
        Some(i) => &file1[..i],
        None => file1,
    };
    let mut material = Vec::new();
    for v in &d.key {
        material.extend_from_slice(match v {
            KeyVar::Token => &d.token[..],
            KeyVar::Url => url,
            KeyVar::Filename1 => file1,
            KeyVar::Filename2 => file2,
        });
    }
    let mut key = d.iv.clone();
    key.extend_from_slice(&d.hash.digest(&material));
    if !KEY_BYTES.contains(&key.len()) {
        return Err(KeyError::Length(key.len()));
    }
    Ok(key)
}

/// The key's length when it does not depend on the URL (a digest, or the
/// token alone): checked at load.
pub fn fixed_key_len(d: &DrmSettings) -> Option<usize> {
    match d.hash.digest_len() {
        Some(n) => Some(d.iv.len() + n),
        None if d.key.iter().all(|v| *v == KeyVar::Token) => {
            Some(d.iv.len() + d.token.len() * d.key.len())
        }
        None => None,
    }
}

/// Parses `<Key>`'s text: comma-separated variables (DRM-4).
pub fn parse_key(text: &str) -> Result<Vec<KeyVar>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let p = part.trim();
        out.push(match p.to_ascii_lowercase().as_str() {
            "$token" => KeyVar::Token,
            "$url" => KeyVar::Url,
            "$filename1" => KeyVar::Filename1,
            "$filename2" => KeyVar::Filename2,
            _ => {
                return Err(format!(
                    "'{p}': expected $Token, $url, $filename1 or $filename2"
                ))
            }
        });
    }
    Ok(out)
}

/// DRM-7: the source's ETag with `-drm` inside the quotes (`"a"` → `"a-drm"`,
/// `W/"a"` → `W/"a-drm"`); other values get the suffix at the end.
pub fn drm_etag(etag: &[u8]) -> Vec<u8> {
    match etag.strip_suffix(b"\"") {
        Some(head) if head.ends_with(b"\"") || head.contains(&b'"') => [head, b"-drm\""].concat(),
        _ => [etag, b"-drm"].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(key: &str, hash: Hash, iv: &[u8]) -> DrmSettings {
        DrmSettings {
            keyword: "drm".into(),
            max_source_bytes: 500 << 20,
            iv: iv.to_vec(),
            token: b"ABC".to_vec(),
            key: parse_key(key).unwrap(),
            hash,
            enc: Vec::new(),
        }
    }

    #[test]
    fn drm_urls_map_to_their_source_with_the_query_kept() {
        for (target, want) in [
            (&b"/music/iu.mp3/drm"[..], Some(&b"/music/iu.mp3"[..])),
            (b"/a.mp3/drm?x=1", Some(b"/a.mp3?x=1")),
            (b"/a.mp3/drmx", None),
            (b"/a.mp3drm", None),
            (b"/drm", None),
            (b"/a.mp3", None),
            (b"/a.mp3/drm/", None),
        ] {
            assert_eq!(
                source_of(target, "drm").as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(target)
            );
        }
        assert_eq!(source_of(b"/x/enc", "enc").as_deref(), Some(&b"/x"[..]));
    }

    #[test]
    fn key_material_is_the_spec_examples() {
        // DRM-4: URL /music/iu.mp3, token ABC.
        let k = key_for(&settings("$url,$Token", Hash::None, b""), b"/music/iu.mp3").unwrap();
        assert_eq!(k, b"/music/iu.mp3ABC");
        let k = key_for(
            &settings("$filename2,$Token,$url", Hash::None, b""),
            b"/music/iu.mp3?x=1",
        )
        .unwrap();
        assert_eq!(k, b"iuABC/music/iu.mp3");
        let k = key_for(&settings("$filename1", Hash::None, b"IV"), b"/music/iu.mp3").unwrap();
        assert_eq!(k, b"IViu.mp3", "DRM-6: the IV goes first");
        // Digests are raw bytes: MD5("ABC"), SHA-1("ABC"), SHA-256("ABC").
        let md5 = key_for(&settings("$Token", Hash::Md5, b""), b"/x").unwrap();
        assert_eq!(hex(&md5), "902fbdd2b1df0c4f70b4a5d23525e932");
        let sha1 = key_for(&settings("$Token", Hash::Sha1, b""), b"/x").unwrap();
        assert_eq!(hex(&sha1), "3c01bdbb26f358bab27f267924aa2c9a03fcfdb8");
        let sha256 = key_for(&settings("$Token", Hash::Sha256, b""), b"/x").unwrap();
        assert_eq!(
            hex(&sha256),
            "b5d4045c3f466fa91fe2cc6abe79232a1a57cdf104f7a26e716e0a1e2789df78"
        );
        // Too short: 3 bytes.
        assert_eq!(
            key_for(&settings("$Token", Hash::None, b""), b"/x"),
            Err(KeyError::Length(3))
        );
        assert_eq!(
            fixed_key_len(&settings("$Token", Hash::Sha1, b"1234")),
            Some(24)
        );
        assert_eq!(fixed_key_len(&settings("$url", Hash::None, b"")), None);
        assert!(parse_key("$url,$nope").is_err());
    }

    #[test]
    fn the_etag_gets_drm_inside_its_quotes() {
        assert_eq!(drm_etag(b"\"a\""), b"\"a-drm\"");
        assert_eq!(drm_etag(b"W/\"a\""), b"W/\"a-drm\"");
        assert_eq!(drm_etag(b"bare"), b"bare-drm");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
