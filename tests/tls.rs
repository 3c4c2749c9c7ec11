//! TLS end to end: `<Server><Https>` listeners on the real binary, certificates
//! made by the test (a CA and leaves, ECDSA and RSA), a rustls client, and raw
//! ClientHellos for what rustls clients cannot send.

mod support;

use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

type TlsClient = Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A test CA that signs leaves.
struct Pki {
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "cairn test CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&key).unwrap();
        Pki {
            ca,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A leaf for `names`, with a new ECDSA P-256 key or the given PEM key;
    /// written as `<tag>.crt` and `<tag>.key` in `dir`. Returns the leaf's DER.
    fn leaf(&self, dir: &Path, tag: &str, names: &[&str], key_pem: Option<&str>) -> Vec<u8> {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        p.use_authority_key_identifier_extension = true;
        let key = match key_pem {
            Some(pem) => rcgen::KeyPair::from_pem(pem).unwrap(),
            None => rcgen::KeyPair::generate().unwrap(),
        };
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{tag}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{tag}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.ca.der().clone()).unwrap();
        r
    }
}

fn https_block(tag: &str, attrs: &str) -> String {
    format!(
        r#"<Https Listen="127.0.0.1:0" {attrs}><Cert>{tag}.crt</Cert><Key>{tag}.key</Key></Https>"#
    )
}

/// A config with the usual plain vhost, plus these `<Https>` blocks (and SNI on
/// when `sni`).
fn tls_dir(origin: &Origin, blocks: &str, sni: bool, options: &str) -> PathBuf {
    let dir = config_dir(&origin.addr.to_string(), options, "");
    let sni = if sni { "<HttpsSNI>ON</HttpsSNI>" } else { "" };
    edit_server_xml(&dir, "<Cache>", &format!("<Cache>{sni}"));
    edit_server_xml(&dir, "</Server>", &format!("{blocks}</Server>"));
    dir
}

fn client_config(
    roots: rustls::RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    sni: bool,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.enable_sni = sni;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Connects and completes the handshake, verifying the server as `name`.
fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>, name: &str) -> TlsClient {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let conn =
        rustls::ClientConnection::new(config, ServerName::try_from(name.to_string()).unwrap())
            .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    Client::over(s)
}

fn peer_cert(c: &TlsClient) -> Vec<u8> {
    c.stream.conn.peer_certificates().unwrap()[0].to_vec()
}

fn get(c: &mut Client<impl Read + Write>, host: &str, path: &str) -> Response {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    c.response(false).expect("a response")
}

fn tls13() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13]
}

#[test]
fn https_serves_the_same_cached_bytes_as_plain_http_and_is_not_redirected() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let served = body.clone();
    let origin = Origin::start(move |_| ok(&served));
    let pki = Pki::new();
    let redirect = r#"<RedirectHttpToHttps ResCode="301">ON</RedirectHttpToHttps>"#;
    let dir = tls_dir(&origin, &https_block("site", ""), false, redirect);
    pki.leaf(&dir, "site", &["test.local"], None);
    let cairn = Cairn::start(dir, 1);
    assert_eq!(cairn.https.len(), 1, "{}", cairn.stderr());
    // HTTPS-1: plain HTTP is redirected, HTTPS is served.
    let plain = cairn.connect().get("/big");
    assert_eq!(plain.status, 301);
    assert_eq!(
        plain.header("location"),
        Some("https://test.local/big"),
        "{plain:?}"
    );
    let cfg = client_config(pki.roots(), &tls13(), true);
    let mut c = tls_connect(cairn.https[0], cfg.clone(), "test.local");
    let first = get(&mut c, "test.local", "/big");
    assert_eq!(first.status, 200);
    assert_eq!(first.body, body, "a miss over TLS");
    // Keep-alive on the same TLS connection: now a hit, the same bytes.
    let second = get(&mut c, "test.local", "/big");
    assert_eq!(second.body, body, "a hit over TLS");
    assert_eq!(origin.count(), 1, "the second came from the cache");
    // A TLS 1.2 client is served the same bytes.
    let cfg12 = client_config(pki.roots(), &[&rustls::version::TLS12], true);
    let mut c12 = tls_connect(cairn.https[0], cfg12, "test.local");
    assert_eq!(
        c12.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(get(&mut c12, "test.local", "/big").body, body);
}

#[test]
fn sni_picks_the_certificate_a_hello_without_sni_gets_the_first_and_another_host_gets_421() {
    let origin = Origin::start(|r| ok(format!("page {}", r.path).as_bytes()));
    let pki = Pki::new();
    let blocks = format!("{}{}", https_block("a", ""), https_block("b", ""));
    // Both blocks on one address: the second names the first's port once known,
    // so both use a fixed free port.
    let port = free_port();
    let blocks = blocks.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let dir = tls_dir(&origin, &blocks, true, "");
    let a = pki.leaf(&dir, "a", &["test.local"], None);
    let b = pki.leaf(&dir, "b", &["b.example", "*.b.example"], None);
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{0}</Address></Origin></Vhost><Vhost Name=\"b.example\"><Alias>www.b.example</Alias><Listen>127.0.0.1:0</Listen><Origin><Address>{0}</Address></Origin></Vhost><Default>test.local</Default></Vhosts>",
            origin.addr
        ),
    )
    .unwrap();
    let cairn = Cairn::start(dir, 1);
    assert_eq!(cairn.https, vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    let addr = cairn.https[0];
    let sni = client_config(pki.roots(), &tls13(), true);
    let mut cb = tls_connect(addr, sni.clone(), "www.b.example");
    assert_eq!(
        peer_cert(&cb),
        b,
        "SNI www.b.example: the wildcard certificate"
    );
    assert_eq!(get(&mut cb, "www.b.example", "/x").status, 200);
    // The same connection asked for the other site: 421, and nothing reached the origin.
    let before = origin.count();
    let r = get(&mut cb, "test.local", "/x");
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(origin.count(), before);
    // Hosts that the certificate covers but that route elsewhere (to <Default>,
    // site A): 421 as well.
    for host in ["[www.b.example]", "other.b.example", "www.b.example.:443"] {
        let r = get(&mut cb, host, "/x");
        let want = if host.ends_with(":443") { 200 } else { 421 };
        assert_eq!(r.status, want, "{host}: {r:?}");
    }
    // A body for the other site is refused before it is read or invited.
    cb.send(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n");
    let r = cb.response(false).expect("a refusal");
    assert_eq!(r.status, 421, "no 100 Continue first: {r:?}");
    assert_eq!(origin.count(), before, "nothing refused reached the origin");
    let ca = tls_connect(addr, sni, "test.local");
    assert_eq!(peer_cert(&ca), a);
    // No SNI at all: the first block's certificate.
    let none = tls_connect(
        addr,
        client_config(pki.roots(), &tls13(), false),
        "test.local",
    );
    assert_eq!(peer_cert(&none), a);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A ClientHello offering at most `version` (no supported_versions extension,
/// so TLS 1.3 is not offered), with TLS 1.0-era suites.
fn old_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
                  // ECDHE-RSA/ECDSA-AES128-GCM (which rustls has), then CBC suites.
    let suites: [u8; 8] = [0xc0, 0x2f, 0xc0, 0x2b, 0xc0, 0x13, 0x00, 0x2f];
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[1, 0]); // compression: null
                                     // signature_algorithms (ECDSA P-256, RSA-PSS, RSA PKCS#1 with SHA-256) and
                                     // supported_groups (x25519, P-256): what a real TLS 1.1 client sends, so the
                                     // version is what the server refuses.
    let ext: [u8; 22] = [
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, //
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17,
    ];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn clients_below_tls_1_2_are_refused_with_an_alert_and_counted() {
    let origin = Origin::start(|_| ok(b"x"));
    let pki = Pki::new();
    let dir = tls_dir(
        &origin,
        &https_block("site", r#"TLS1.1="ON" TLS1.0="ON" SSL3.0="ON""#),
        false,
        "",
    );
    pki.leaf(&dir, "site", &["test.local"], None);
    let cairn = Cairn::start(dir, 1);
    let warned = cairn.wait_log("TLS1.1=\"ON\"> refused");
    assert!(warned.contains("server.xml:"), "{warned}");
    for version in [[3, 2], [3, 1], [3, 0]] {
        let mut s = TcpStream::connect(cairn.https[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&old_client_hello(version)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        // An alert record (21), never a ServerHello (22); then the close.
        assert_eq!(got.first(), Some(&0x15), "{version:?}: {got:?}");
        assert_eq!(got.len(), 7, "one alert: {got:?}");
        assert_eq!(got[6], 70, "protocol_version alert: {got:?}");
    }
    // TLS 1.2 still works on the same listener.
    let mut c = tls_connect(
        cairn.https[0],
        client_config(pki.roots(), &[&rustls::version::TLS12], true),
        "test.local",
    );
    assert_eq!(get(&mut c, "test.local", "/").status, 200);
    drop(c);
    cairn.signal("USR1");
    let stats = cairn.wait_log("TLS handshakes");
    assert!(stats.contains("3 failed"), "{stats}");
}

#[test]
fn rsa_and_ecdsa_keys_and_a_ca_chain_are_served() {
    let origin = Origin::start(|_| ok(b"rsa"));
    let pki = Pki::new();
    let blocks =
        https_block("rsa", "").replace("</Key>", "</Key><CA>ca.pem</CA>") + &https_block("ec", "");
    let dir = tls_dir(&origin, &blocks, false, "");
    let rsa_pem = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rsa2048.key"),
    )
    .unwrap();
    pki.leaf(&dir, "rsa", &["test.local"], Some(&rsa_pem));
    pki.leaf(&dir, "ec", &["test.local"], None);
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    let cairn = Cairn::start(dir, 1);
    assert_eq!(cairn.https.len(), 2);
    let mut chains = Vec::new();
    for addr in &cairn.https {
        let mut c = tls_connect(
            *addr,
            client_config(pki.roots(), &tls13(), true),
            "test.local",
        );
        chains.push(c.stream.conn.peer_certificates().unwrap().len());
        assert_eq!(get(&mut c, "test.local", "/").text(), "rsa");
    }
    // The RSA block sends its CA after the leaf; the ECDSA one its leaf alone.
    chains.sort();
    assert_eq!(chains, vec![1, 2]);
}

#[test]
fn a_bad_certificate_on_reload_is_reported_and_the_old_one_stays() {
    let origin = Origin::start(|_| ok(b"x"));
    let pki = Pki::new();
    let dir = tls_dir(&origin, &https_block("site", ""), false, "");
    let first = pki.leaf(&dir, "site", &["test.local"], None);
    let cairn = Cairn::start(dir.clone(), 1);
    let cfg = client_config(pki.roots(), &tls13(), true);
    assert_eq!(
        peer_cert(&tls_connect(cairn.https[0], cfg.clone(), "test.local")),
        first
    );
    // A certificate file that is not PEM.
    std::fs::write(dir.join("site.crt"), b"garbage").unwrap();
    cairn.signal("HUP");
    let refused = cairn.wait_log("reload refused");
    assert!(
        refused.contains("site.crt") && refused.contains("server.xml:"),
        "{refused}"
    );
    assert_eq!(
        peer_cert(&tls_connect(cairn.https[0], cfg.clone(), "test.local")),
        first,
        "the running certificate stays"
    );
    // A key that is not the certificate's.
    let second = pki.leaf(&dir, "site", &["test.local"], None);
    let other = rcgen::KeyPair::generate().unwrap();
    let good_key = std::fs::read(dir.join("site.key")).unwrap();
    std::fs::write(dir.join("site.key"), other.serialize_pem()).unwrap();
    cairn.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cairn.stderr().contains("cannot sign for it") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cairn.stderr().contains("cannot sign for it"),
        "{}",
        cairn.stderr()
    );
    // Fixed: the new certificate is taken by new connections.
    std::fs::write(dir.join("site.key"), good_key).unwrap();
    cairn.signal("HUP");
    cairn.wait_log("configuration reloaded");
    assert_eq!(
        peer_cert(&tls_connect(cairn.https[0], cfg, "test.local")),
        second
    );
}

#[test]
fn a_handshake_that_does_not_finish_is_cut_off_at_its_deadline() {
    let origin = Origin::start(|_| ok(b"x"));
    let pki = Pki::new();
    let dir = tls_dir(&origin, &https_block("site", ""), false, "");
    add_cairn_settings(&dir, "<TlsHandshakeTimeoutSec>1</TlsHandshakeTimeoutSec>");
    pki.leaf(&dir, "site", &["test.local"], None);
    let cairn = Cairn::start(dir, 1);
    let started = Instant::now();
    // Half a ClientHello, then nothing.
    let hello = old_client_hello([3, 3]);
    let mut s = TcpStream::connect(cairn.https[0]).unwrap();
    s.write_all(&hello[..20]).unwrap();
    let mut c = Client::from_stream(s);
    assert!(
        c.is_closed(Duration::from_secs(5)),
        "closed at the deadline"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[test]
fn tls_requests_are_logged_with_their_version() {
    let origin = Origin::start(|_| ok(b"x"));
    let pki = Pki::new();
    let dir = tls_dir(&origin, &https_block("site", ""), false, "");
    edit_server_xml(
        &dir,
        "</VHostDefault>",
        r#"<Log Dir="logs"><Access Local="ON">ON</Access></Log></VHostDefault>"#,
    );
    pki.leaf(&dir, "site", &["test.local"], None);
    let cairn = Cairn::start(dir.clone(), 1);
    let mut c = tls_connect(
        cairn.https[0],
        client_config(pki.roots(), &tls13(), true),
        "test.local",
    );
    assert_eq!(get(&mut c, "test.local", "/logged").status, 200);
    let plain = cairn.connect().get("/plain");
    assert_eq!(plain.status, 200);
    let text = wait_logs(&dir.join("logs/test.local"), &["/logged", "/plain"]);
    let line = |p: &str| {
        text.lines()
            .find(|l| l.contains(p))
            .unwrap_or("")
            .to_string()
    };
    assert!(line("/logged").contains(" TLSv1.3 "), "{text}");
    assert!(!line("/plain").contains("TLSv"), "{text}");
}

#[test]
fn a_request_sent_in_the_same_flight_as_the_clients_finished_is_answered() {
    // TLS 1.3 clients (curl among them) send their first request right behind
    // their Finished, often in one segment: it must not be lost with the handshake.
    let origin = Origin::start(|_| ok(b"early"));
    let pki = Pki::new();
    let dir = tls_dir(&origin, &https_block("site", ""), false, "");
    pki.leaf(&dir, "site", &["test.local"], None);
    let cairn = Cairn::start(dir, 1);
    for close in [false, true] {
        let tcp = TcpStream::connect(cairn.https[0]).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut conn = rustls::ClientConnection::new(
            client_config(pki.roots(), &tls13(), true),
            ServerName::try_from("test.local").unwrap(),
        )
        .unwrap();
        // Written before the handshake: rustls sends it with the Finished.
        let connection = if close { "Connection: close\r\n" } else { "" };
        conn.writer()
            .write_all(
                format!("GET /e HTTP/1.1\r\nHost: test.local\r\n{connection}\r\n").as_bytes(),
            )
            .unwrap();
        let mut c = Client::over(rustls::StreamOwned::new(conn, tcp));
        let r = c.response(false).expect("an answer, not a wait");
        assert_eq!((r.status, r.text()), (200, "early".to_string()));
    }
}

/// A TLS origin's server configuration: a leaf for `names` from `pki`.
fn origin_tls_config(pki: &Pki, names: &[&str]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let dir = temp_dir("origin-pki");
    pki.leaf(&dir, "origin", names, None);
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("origin.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("origin.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

/// A vhost in front of `address` with `<Origin {attrs}>…<CA>ca.pem</CA>`, the
/// CA being `pki`'s.
fn https_origin_dir(address: &str, attrs: &str, pki: &Pki) -> PathBuf {
    let dir = config_dir("127.0.0.1:1", "", "");
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin {attrs}><Address>{address}</Address><CA>ca.pem</CA></Origin></Vhost></Vhosts>"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn an_https_origin_is_verified_sent_sni_and_its_pooled_connections_stay_tls() {
    let pki = Pki::new();
    let sni = Arc::new(std::sync::Mutex::new(Vec::new()));
    let origin = Origin::start_tls(origin_tls_config(&pki, &["test.local"]), sni.clone(), |r| {
        ok(format!("secure {}", r.path).as_bytes())
    });
    // Both forms: an https:// address, and Protocol="HTTPS" on a bare one.
    for (address, attrs) in [
        (format!("https://{}", origin.addr), ""),
        (origin.addr.to_string(), r#"Protocol="HTTPS""#),
    ] {
        let before = origin.connections.load(std::sync::atomic::Ordering::SeqCst);
        let cairn = Cairn::start(https_origin_dir(&address, attrs, &pki), 1);
        let mut c = cairn.connect();
        for path in ["/a", "/b", "/c"] {
            let r = c.get(path);
            assert_eq!(r.status, 200, "{address}: {r:?} {}", cairn.stderr());
            assert_eq!(r.text(), format!("secure {path}"));
        }
        let after = origin.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 1, "three misses, one pooled TLS connection");
        let host = format!("test.local:{}", origin.addr.port());
        assert_eq!(origin.last().header("host"), Some(host.as_str()));
        // The origin is reached by IP address; SNI and verification use the
        // Host name, as the certificate does.
        assert_eq!(
            sni.lock().unwrap().last().cloned().flatten().as_deref(),
            Some("test.local")
        );
    }
}

#[test]
fn an_origin_whose_certificate_is_untrusted_or_for_another_name_gets_no_request() {
    let pki = Pki::new();
    let sni = Arc::new(std::sync::Mutex::new(Vec::new()));
    let wrong_name = Origin::start_tls(
        origin_tls_config(&pki, &["other.example"]),
        sni.clone(),
        |_| ok(b"must not be asked"),
    );
    let stranger = Pki::new();
    let wrong_ca = Origin::start_tls(origin_tls_config(&stranger, &["test.local"]), sni, |_| {
        ok(b"must not be asked")
    });
    for (origin, why) in [
        (&wrong_name, "not valid for name"),
        (&wrong_ca, "invalid peer certificate"),
    ] {
        let dir = https_origin_dir(&format!("https://{}", origin.addr), "", &pki);
        let cairn = Cairn::start(dir, 1);
        let r = cairn.connect().get("/x");
        assert_eq!(r.status, 502, "{why}: {r:?}");
        assert_eq!(origin.count(), 0, "{why}: no request was sent");
        let log = cairn.wait_log("TLS:");
        assert!(log.contains(why), "{why}: {log}");
    }
}

#[test]
fn a_tls_origin_that_closes_without_close_notify_has_its_body_relayed_as_truncated() {
    let pki = Pki::new();
    let config = origin_tls_config(&pki, &["test.local"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).unwrap_or(0) == 0 {
                continue;
            }
            // A body delimited by the close, then the TCP connection ends with
            // no close_notify: a truncation for all cairn can tell.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart of a bo");
            let _ = s.flush();
            std::thread::sleep(Duration::from_millis(100));
            let _ = s.sock.shutdown(std::net::Shutdown::Both);
        }
    });
    let cairn = Cairn::start(https_origin_dir(&format!("https://{addr}"), "", &pki), 1);
    // Twice: the truncated body was not stored, so the second request goes to
    // the origin again.
    for round in 1..=2 {
        let mut tcp = TcpStream::connect(cairn.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(b"GET /t HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(got.contains("part of a bo"), "{got}");
        // Relayed chunked: a complete body would end with the last chunk.
        assert!(got.contains("Transfer-Encoding: chunked"), "{got}");
        assert!(!got.ends_with("0\r\n\r\n"), "relayed as complete: {got}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), round);
    }
    cairn.wait_log("close_notify");
}

/// Does this kernel have the `tls` ULP (kTLS)? The build machine does not.
fn kernel_has_tls_ulp() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
}

#[test]
fn without_the_kernels_tls_rustls_serves_and_ktls_off_or_on_is_checked() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let served = body.clone();
    let origin = Origin::start(move |_| ok(&served));
    let pki = Pki::new();
    // A value that is neither ON nor OFF is a config error naming the line.
    let bad = tls_dir(&origin, &https_block("site", r#"KTLS="maybe""#), false, "");
    pki.leaf(&bad, "site", &["test.local"], None);
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("server.xml:") && err.contains(r#"KTLS="maybe""#),
        "{err}"
    );
    for attrs in ["", r#"KTLS="OFF""#] {
        let dir = tls_dir(&origin, &https_block("site", attrs), false, "");
        pki.leaf(&dir, "site", &["test.local"], None);
        let cairn = Cairn::start(dir, 1);
        // The start log says which records are used.
        let said = match kernel_has_tls_ulp() {
            true => cairn.wait_log("the kernel has kTLS"),
            false => cairn.wait_log("no kernel TLS (tls ULP) here: rustls builds the records"),
        };
        assert!(!said.is_empty());
        for versions in [tls13(), vec![&rustls::version::TLS12]] {
            let mut c = tls_connect(
                cairn.https[0],
                client_config(pki.roots(), &versions, true),
                "test.local",
            );
            // A miss, then a hit from the mapping, on one connection.
            assert_eq!(get(&mut c, "test.local", "/k").body, body, "{attrs}");
            assert_eq!(get(&mut c, "test.local", "/k").body, body, "{attrs}");
        }
        cairn.signal("USR1");
        let stats = cairn.wait_log("handed to kTLS");
        // Sessions go to the kernel only where it has the ULP and KTLS is ON.
        let handed = kernel_has_tls_ulp() && attrs.is_empty();
        assert_eq!(
            stats.contains("(0 failed, 0 handed to kTLS)"),
            !handed,
            "{attrs}: {stats}"
        );
    }
}
