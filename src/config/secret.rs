//! Encrypted secrets in the configuration (DRM-8): `<Token Type="enc">` and
//! `<IV Type="enc">` hold `base64(nonce ‖ ciphertext ‖ tag)`, AES-256-GCM
//! under a key derived (HKDF-SHA256) from the first `<Https>` private key, or,
//! without one, from `secret.key` in the configuration directory, which
//! `cairn encrypt-password` makes on first use. Changing that key material
//! makes the old values fail to decrypt: a config error, never a wrong key.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// The generated key file, when no TLS key gives the material.
pub const KEY_FILE: &str = "secret.key";

/// Why a secret cannot be made or read: the operator's files are at fault
/// (retrying with the same files fails the same way).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no key material: no <Https><Key> and no {0} (run `cairn encrypt-password` to make one)"
    )]
    NoKey(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("not a value `cairn encrypt-password` made with this key material (bad base64, too short, or another key; STON's own encrypted values cannot be read: encrypt the plain value again)")]
    Undecryptable,
    #[error("{0}: not 32 bytes (a key file `cairn encrypt-password` made)")]
    BadKeyFile(PathBuf),
    #[error("the system random source failed")]
    Random,
}

/// The AES-256-GCM key, derived from `material` (the TLS key's PEM, or the
/// key file's bytes).
pub struct SecretKey(LessSafeKey);

impl SecretKey {
    pub fn from_material(material: &[u8]) -> SecretKey {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"cairn secrets v1");
        let prk = salt.extract(material);
        let okm = prk
            .expand(&[b"DRM-8"], &AES_256_GCM)
            .expect("32 bytes is within HKDF-SHA256's limit");
        SecretKey(LessSafeKey::new(UnboundKey::from(okm)))
    }

    pub fn encrypt(&self, plain: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| SecretError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn decrypt(&self, text: &str) -> Result<Vec<u8>, SecretError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::Undecryptable)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretError::Undecryptable);
        }
        let (n, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| SecretError::Undecryptable)?;
        let mut buf = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| SecretError::Undecryptable)?;
        Ok(plain.to_vec())
    }
}

/// The key for a configuration: from `dir/secret.key` when it exists, else
/// from `tls_key` (the first `<Https><Key>` file: its key's DER, so that
/// re-encoding the same key changes nothing), else a new `secret.key` when
/// `create` (0600, written whole before it appears).
pub fn key(dir: &Path, tls_key: Option<&Path>, create: bool) -> Result<SecretKey, SecretError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => return Ok(SecretKey::from_material(&b)),
        Ok(_) => return Err(SecretError::BadKeyFile(path)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(SecretError::Io(path, e)),
        Err(_) => {}
    }
    if let Some(k) = tls_key {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_file(k)
            .map_err(|e| SecretError::Io(k.to_path_buf(), std::io::Error::other(e.to_string())))?;
        return Ok(SecretKey::from_material(der.secret_der()));
    }
    if !create {
        return Err(SecretError::NoKey(path));
    }
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SecretError::Random)?;
    // Written to a private temporary, then linked into place (never
    // replacing one another process made meanwhile, which is then used).
    let tmp = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| SecretError::Io(tmp.clone(), e))?;
        f.write_all(&b)
            .and_then(|()| f.sync_all())
            .map_err(|e| SecretError::Io(tmp.clone(), e))?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(SecretKey::from_material(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => key(dir, None, false),
        Err(e) => Err(SecretError::Io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_decrypts_under_its_key_only() {
        let k = SecretKey::from_material(b"one key");
        let enc = k.encrypt(b"ABCDEFGH").unwrap();
        assert_ne!(
            enc,
            k.encrypt(b"ABCDEFGH").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(k.decrypt(&enc).unwrap(), b"ABCDEFGH");
        let other = SecretKey::from_material(b"another key");
        assert!(matches!(
            other.decrypt(&enc),
            Err(SecretError::Undecryptable)
        ));
        for bad in ["", "!!!", "AAAA", &enc[..enc.len() - 4]] {
            assert!(k.decrypt(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_file_is_made_once_and_then_read() {
        let dir = std::env::temp_dir().join(format!("cairn-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(key(&dir, None, false), Err(SecretError::NoKey(_))));
        let a = key(&dir, None, true).unwrap().encrypt(b"x").unwrap();
        assert_eq!(key(&dir, None, false).unwrap().decrypt(&a).unwrap(), b"x");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
