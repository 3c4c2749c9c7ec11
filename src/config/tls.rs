//! `<Server><Https>`: TLS listeners and their certificates. Loading reads the PEM
//! files (a bad one is a config error with its file and reason, so a reload keeps
//! the running certificates), maps STON's protocol switches and OpenSSL cipher
//! strings onto what rustls can honour, and builds one rustls `ServerConfig` per
//! TLS address.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SupportedCipherSuite;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// One `<Https>` block: a certificate for one or more listening addresses.
#[derive(Debug, Clone)]
pub struct HttpsBlock {
    pub addrs: Vec<SocketAddr>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub key: Arc<CertifiedKey>,
    pub tls12: bool,
    pub tls13: bool,
    /// TLS 1.2 suites from `CipherSuite`; `None`: rustls's defaults.
    pub suites: Option<Vec<SupportedCipherSuite>>,
    /// `KTLS="ON"` (the default): sessions go to the kernel's TLS where it has it.
    pub ktls: bool,
    /// Where the block is, for messages (`server.xml:12`).
    pub place: String,
}

/// Equal when the files and settings are: a certificate renewed in place
/// compares equal (what matters to a reload is that it loads).
impl PartialEq for HttpsBlock {
    fn eq(&self, o: &Self) -> bool {
        let names = |s: &Option<Vec<SupportedCipherSuite>>| {
            s.as_ref()
                .map(|v| v.iter().map(|c| c.suite()).collect::<Vec<_>>())
        };
        self.addrs == o.addrs
            && self.cert_file == o.cert_file
            && self.key_file == o.key_file
            && self.ca_file == o.ca_file
            && self.tls12 == o.tls12
            && self.tls13 == o.tls13
            && self.ktls == o.ktls
            && names(&self.suites) == names(&o.suites)
    }
}

impl Eq for HttpsBlock {}

/// The TLS side of one listening address.
#[derive(Debug, Clone)]
pub struct TlsGroup {
    /// Indexes into `ServerSettings::https`, in file order: the first is the
    /// certificate for a ClientHello without SNI (or with a name none covers).
    pub blocks: Vec<usize>,
    /// Several certificates chosen by SNI (`<HttpsSNI>ON`).
    pub sni: bool,
    pub server: Arc<rustls::ServerConfig>,
    /// The certificates, in `blocks` order, with their end-entity DER for name checks.
    pub certs: Arc<CertSet>,
}

/// Why a certificate or key cannot be used: the operator's files are at fault,
/// and a retry with the same files fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{}: {reason}", cert.display())]
    Pair { cert: PathBuf, reason: String },
}

fn file_err(path: &std::path::Path, reason: impl ToString) -> TlsFileError {
    TlsFileError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a chain (the certificate file, then the `<CA>` file) and an unencrypted
/// PEM key, and checks that the key is the certificate's.
pub fn load_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: Option<&std::path::Path>,
) -> Result<Arc<CertifiedKey>, TlsFileError> {
    let read_chain = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
        let pem = std::fs::read(p).map_err(|e| file_err(p, e))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(p, format!("not a PEM certificate file: {e}")))?;
        if chain.is_empty() {
            return Err(file_err(p, "no CERTIFICATE block in the file"));
        }
        Ok(chain)
    };
    let mut chain = read_chain(cert)?;
    if let Some(ca) = ca {
        chain.extend(read_chain(ca)?);
    }
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| file_err(cert, format!("the first certificate cannot be parsed: {e}")))?;
    let pem = std::fs::read(key).map_err(|e| file_err(key, e))?;
    if pem.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED") {
        return Err(file_err(
            key,
            "the key is encrypted; cairn needs an unencrypted PEM key (as STON does)",
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_err(key, format!("no usable PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, der, &provider).map_err(|e| TlsFileError::Pair {
        cert: cert.to_path_buf(),
        reason: format!("the key in {} cannot sign for it: {e}", key.display()),
    })?;
    Ok(Arc::new(ck))
}

/// What a `CipherSuite` string (OpenSSL syntax) leaves: the TLS 1.2 suites rustls
/// has, in the string's order, and a warning for each part it cannot honour.
/// TLS 1.3 suites are not set by OpenSSL cipher strings and stay rustls's.
pub fn map_ciphers(spec: &str) -> (Vec<SupportedCipherSuite>, Vec<String>) {
    use rustls::crypto::ring::cipher_suite as cs;
    let table: [(&str, SupportedCipherSuite); 6] = [
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    let mut suites = Vec::new();
    let mut warnings = Vec::new();
    for part in spec
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if let Some((_, s)) = table.iter().find(|(n, _)| n.eq_ignore_ascii_case(part)) {
            if !suites.contains(s) {
                suites.push(*s);
            }
        } else if part.starts_with(['!', '-', '+', '@'])
            || !part.contains('-') && !part.contains('_')
        {
            // `HIGH`, `!aNULL`, `@STRENGTH`, `kEECDH`: sets, not suites.
            warnings.push(format!(
                "'{part}': OpenSSL cipher keywords and modifiers are not applied; only named suites are"
            ));
        } else if part.to_ascii_uppercase().starts_with("TLS_") {
            warnings.push(format!(
                "'{part}': TLS 1.3 suites are not chosen by CipherSuite; rustls offers all three"
            ));
        } else {
            warnings.push(format!(
                "'{part}': not offered (rustls implements only ECDHE suites with AEAD ciphers)"
            ));
        }
    }
    (suites, warnings)
}

/// The rustls configuration of one TLS address: TLS 1.2 and 1.3 only, the first
/// block's protocols and suites, certificates chosen by [`CertSet`].
pub fn server_config(
    first: &HttpsBlock,
    certs: Arc<CertSet>,
    h2: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let base = rustls::crypto::ring::default_provider();
    let tls13 = base
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)) && first.tls13);
    // TLS 1.2: the CipherSuite string's order (the server's order is preferred).
    let tls12: Vec<SupportedCipherSuite> = match &first.suites {
        Some(list) => list.clone(),
        None => base
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .collect(),
    };
    let suites = tls13
        .chain(tls12.into_iter().filter(|_| first.tls12))
        .collect();
    let provider = CryptoProvider {
        cipher_suites: suites,
        ..base
    };
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if first.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if first.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    // h2 first when HTTP/2 is on: ALPN then picks it for clients that offer it.
    cfg.alpn_protocols = match h2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    // The server's suite order (CipherSuite's), as OpenSSL's
    // SSL_OP_CIPHER_SERVER_PREFERENCE that STON operators expect.
    cfg.ignore_client_order = true;
    // Stateless resumption tickets, with one key set for the process: resumption
    // needs no shared session cache and survives a reload.
    cfg.ticketer = ticketer()?;
    // Only where the keys can go somewhere: the kernel's TLS (net::ktls).
    cfg.enable_secret_extraction = first.ktls && crate::net::tls::ktls_available();
    Ok(Arc::new(cfg))
}

/// TLS to one vhost's origins: whom they are trusted to be.
#[derive(Debug)]
pub struct OriginTls {
    pub client: Arc<rustls::ClientConfig>,
    /// Identifies the roots: a pooled origin connection is only handed to a
    /// vhost that trusts the same ones (the PEM's bytes, or the system's).
    pub trust: u64,
    /// `<Origin><CA>`; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// The client configuration for HTTPS origins: TLS 1.2 and 1.3, ALPN
/// `http/1.1`, certificates verified against `ca` alone when given (like
/// nginx's `proxy_ssl_trusted_certificate`), else against the system's roots.
pub fn origin_tls(ca: Option<&std::path::Path>) -> Result<OriginTls, TlsFileError> {
    use std::hash::{Hash, Hasher};
    let mut roots = rustls::RootCertStore::empty();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match ca {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| file_err(p, e))?;
            pem.hash(&mut h);
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| file_err(p, format!("not a PEM certificate file: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| file_err(p, format!("a certificate cannot be a root: {e}")))?;
            }
            if roots.is_empty() {
                return Err(file_err(p, "no CERTIFICATE block in the file"));
            }
        }
        // Fuzzing builds do not read the system's store once per input.
        None if cfg!(fuzzing) => "system".hash(&mut h),
        None => {
            "system".hash(&mut h);
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or("none found".to_string(), |e| e.to_string());
                return Err(TlsFileError::File {
                    path: PathBuf::from("(system certificate store)"),
                    reason: format!("no usable root certificate ({why}); set <Origin><CA>"),
                });
            }
        }
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| file_err(ca.unwrap_or("(origin TLS)".as_ref()), e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(OriginTls {
        client: Arc::new(client),
        trust: h.finish(),
        ca_file: ca.map(std::path::Path::to_path_buf),
    })
}

/// One ticket encrypter for the process (it rotates its own keys).
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    static TICKETER: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> =
        std::sync::OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new()?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

/// The certificates on one address and how a ClientHello picks one.
#[derive(Debug)]
pub struct CertSet {
    keys: Vec<Arc<CertifiedKey>>,
    sni: bool,
}

impl CertSet {
    pub fn new(keys: Vec<Arc<CertifiedKey>>, sni: bool) -> CertSet {
        CertSet { keys, sni }
    }

    /// Which certificate serves `sni`: with SNI on, the first whose certificate
    /// covers the name; else (no name, no match, SNI off) the first.
    pub fn pick(&self, sni: Option<&str>) -> usize {
        if !self.sni {
            return 0;
        }
        sni.and_then(|name| (0..self.keys.len()).find(|&i| self.covers(i, name)))
            .unwrap_or(0)
    }

    /// Does certificate `i` cover host `name` (its SAN names, wildcards included)?
    pub fn covers(&self, i: usize, name: &str) -> bool {
        let Ok(server) = ServerName::try_from(name) else {
            return false;
        };
        let Some(der) = self.keys.get(i).and_then(|k| k.cert.first()) else {
            return false;
        };
        webpki::EndEntityCert::try_from(der)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(&server).is_ok())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Several certificates, chosen by SNI: requests are then held to theirs (421).
    pub fn chooses_by_sni(&self) -> bool {
        self.sni && self.keys.len() > 1
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl ResolvesServerCert for CertSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.pick(hello.server_name())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_strings_keep_what_rustls_has_and_say_what_they_drop() {
        use rustls::crypto::ring::cipher_suite as cs;
        let table: &[(&str, &[SupportedCipherSuite], usize)] = &[
            (
                "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
                &[
                    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                ],
                0,
            ),
            // Modifiers, keywords and suites rustls does not have: warned about.
            (
                "HIGH:!aNULL:!MD5:AES128-SHA:ECDHE-RSA-CHACHA20-POLY1305",
                &[cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256],
                4,
            ),
            ("TLS_AES_128_GCM_SHA256", &[], 1),
            ("", &[], 0),
            (
                "ecdhe-rsa-aes256-gcm-sha384, ECDHE-RSA-AES256-GCM-SHA384",
                &[cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384],
                0,
            ),
        ];
        for (spec, want, warned) in table {
            let (got, w) = map_ciphers(spec);
            assert_eq!(&got[..], *want, "{spec}");
            assert_eq!(w.len(), *warned, "{spec}: {w:?}");
        }
    }
}
