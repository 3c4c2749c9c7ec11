//! The key hand-over, checked without a kernel that has kTLS: a real rustls
//! handshake in memory, then records made and opened the way the kernel makes
//! and opens them (linux net/tls/tls_sw.c), from nothing but the crypto info
//! bytes cairn would give `setsockopt`. The rustls peer must accept what the
//! "kernel" sends and the "kernel" must read what the peer sends.

use super::*;
use crate::net::tls::{Refused, TlsSession};
use ring::aead;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CipherSuite, ClientConnection, Connection, ServerConnection, SupportedCipherSuite};
use std::io::{Read, Write};
use std::sync::Arc;

#[test]
fn the_tls12_gcm_send_nonce_never_meets_one_rustls_used() {
    for base in [
        0u64,
        1,
        7,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 1,
        0x0123_4567_89ab_cdef,
    ] {
        for seq in [1u64, 2, 3, 4, 5, 16, 17, 1000] {
            let used: Vec<u64> = (0..seq).map(|s| base ^ s).collect();
            let start = tls12_gcm_send_nonce(base, seq);
            for k in 0..4096u64 {
                let n = start.wrapping_add(k);
                assert!(
                    !used.contains(&n),
                    "base {base:#x} seq {seq}: record {k} reuses {n:#x}"
                );
            }
        }
        assert_eq!(
            tls12_gcm_send_nonce(base, 0),
            base,
            "nothing sent: nothing to avoid"
        );
    }
    // Past 2^63 records rustls sent, the block is everything: the kernel starts at 0
    // after the wrap, which is no worse than rustls itself at that count.
    assert_eq!(tls12_gcm_send_nonce(5, u64::MAX), 0);
}

#[test]
fn control_records_are_read_for_what_they_are() {
    for (t, body, want) in [
        (21u8, &[1u8, 0][..], Control::CloseNotify),
        (21, &[2, 0], Control::CloseNotify),
        (21, &[2, 40], Control::Alert(2, 40)),
        (21, &[1, 90], Control::UserCanceled),
        (21, &[1], Control::Other(21)),
        (22, &[24, 0, 0, 1, 0], Control::Handshake),
        (20, &[1], Control::Other(20)),
    ] {
        assert_eq!(control(t, body), want, "type {t} body {body:?}");
    }
}

#[test]
fn the_byte_layout_is_the_kernels_struct_layout() {
    use std::mem::{offset_of, size_of};
    // (struct size, iv, key, salt, rec_seq offsets) from libc's linux/tls.h
    // bindings, against where `crypto_info` puts each field.
    macro_rules! layout {
        ($t:ty) => {
            (
                size_of::<$t>(),
                offset_of!($t, iv),
                offset_of!($t, key),
                offset_of!($t, salt),
                offset_of!($t, rec_seq),
            )
        };
    }
    let key = rustls::crypto::cipher::AeadKey::from([7u8; 32]);
    let iv = rustls::crypto::cipher::Iv::new([1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9]);
    for (secrets, want) in [
        (
            ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            layout!(libc::tls12_crypto_info_aes_gcm_256),
        ),
        (
            ConnectionTrafficSecrets::Chacha20Poly1305 {
                key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
                iv: rustls::crypto::cipher::Iv::new([1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9]),
            },
            layout!(libc::tls12_crypto_info_chacha20_poly1305),
        ),
    ] {
        let info = crypto_info(TlsVersion::Tls13, Direction::Send, 0x0102, &secrets).unwrap();
        let b = info.as_bytes();
        let (size, iv_at, key_at, salt_at, seq_at) = want;
        assert_eq!(b.len(), size);
        assert_eq!(&b[key_at..key_at + 32], &[7u8; 32]);
        if salt_at == seq_at {
            // ChaCha20: no salt, the whole 12-byte nonce base is the iv.
            assert_eq!(&b[iv_at..iv_at + 12], &[1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9]);
        } else {
            // AES-GCM: salt = the first 4 bytes, iv = the other 8.
            assert_eq!(&b[salt_at..salt_at + 4], &[1, 2, 3, 4]);
            assert_eq!(&b[iv_at..iv_at + 8], &[9; 8]);
        }
        assert_eq!(&b[seq_at..seq_at + 8], &0x0102u64.to_be_bytes());
        assert_eq!(
            u16::from_ne_bytes([b[0], b[1]]),
            libc::TLS_1_3_VERSION,
            "host order"
        );
    }
    assert_eq!(size_of::<libc::tls12_crypto_info_aes_gcm_128>(), 40);
    assert_eq!(offset_of!(libc::tls12_crypto_info_aes_gcm_128, salt), 28);
    assert_eq!(offset_of!(libc::tls12_crypto_info_aes_gcm_128, rec_seq), 32);
}

#[test]
fn records_are_counted_from_above() {
    use bytes::Bytes;
    for (sizes, want) in [
        (&[][..], 1u64),
        (&[1][..], 2),
        (&[16384][..], 2),
        (&[16385][..], 3),
        (&[100, 16384, 100][..], 3),
    ] {
        let bufs: Vec<Bytes> = sizes.iter().map(|&n| Bytes::from(vec![0u8; n])).collect();
        assert_eq!(records_for(&bufs), want, "{sizes:?}");
    }
}

// ---- a kernel's record layer, from the crypto info alone ----

struct Parsed {
    version: u16,
    cipher: u16,
    iv: Vec<u8>,
    key: Vec<u8>,
    salt: Vec<u8>,
    seq: u64,
}

fn parse(b: &[u8]) -> Parsed {
    let version = u16::from_ne_bytes([b[0], b[1]]);
    let cipher = u16::from_ne_bytes([b[2], b[3]]);
    let (iv, key, salt) = match cipher {
        51 => (8, 16, 4),
        52 => (8, 32, 4),
        54 => (12, 32, 0),
        c => panic!("cipher {c}"),
    };
    // sizeof(struct tls12_crypto_info_aes_gcm_128) is 40, the others 56.
    assert_eq!(b.len(), 4 + iv + key + salt + 8);
    let mut at = 4;
    let mut take = |n: usize| {
        at += n;
        b[at - n..at].to_vec()
    };
    let iv = take(iv);
    let key = take(key);
    let salt = take(salt);
    let seq = u64::from_be_bytes(take(8).try_into().unwrap());
    Parsed {
        version,
        cipher,
        iv,
        key,
        salt,
        seq,
    }
}

impl Parsed {
    fn key(&self) -> aead::LessSafeKey {
        let alg = match self.cipher {
            51 => &aead::AES_128_GCM,
            52 => &aead::AES_256_GCM,
            _ => &aead::CHACHA20_POLY1305,
        };
        aead::LessSafeKey::new(aead::UnboundKey::new(alg, &self.key).unwrap())
    }

    /// TLS 1.3 and ChaCha20: (salt ‖ iv) XOR the record's sequence number.
    fn xor_nonce(&self, seq: u64) -> aead::Nonce {
        let mut n: Vec<u8> = [&self.salt[..], &self.iv[..]].concat();
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        aead::Nonce::try_assume_unique_for_key(&n).unwrap()
    }

    fn tls12_aad(seq: u64, len: usize) -> aead::Aad<[u8; 13]> {
        let mut a = [0u8; 13];
        a[..8].copy_from_slice(&seq.to_be_bytes());
        a[8..11].copy_from_slice(&[23, 3, 3]);
        a[11..].copy_from_slice(&(len as u16).to_be_bytes());
        aead::Aad::from(a)
    }

    /// The kernel's `k`-th record sent: tls_push_record and tls_do_encryption.
    fn seal(&self, k: u64, data: &[u8]) -> Vec<u8> {
        let seq = self.seq + k;
        let key = self.key();
        let header = |len: usize| {
            let l = (len as u16).to_be_bytes();
            vec![23u8, 3, 3, l[0], l[1]]
        };
        if self.version == 0x0304 {
            let mut inner = [data, &[23]].concat();
            let hdr = header(inner.len() + 16);
            let aad = aead::Aad::from(hdr.clone());
            key.seal_in_place_append_tag(self.xor_nonce(seq), aad, &mut inner)
                .unwrap();
            [hdr, inner].concat()
        } else if self.cipher == 54 {
            let mut body = data.to_vec();
            key.seal_in_place_append_tag(
                self.xor_nonce(seq),
                Self::tls12_aad(seq, data.len()),
                &mut body,
            )
            .unwrap();
            [header(body.len()), body].concat()
        } else {
            // TLS 1.2 AES-GCM: the explicit nonce is the iv, advanced by one a record.
            let explicit = u64::from_be_bytes(self.iv[..].try_into().unwrap())
                .wrapping_add(k)
                .to_be_bytes();
            let nonce = [&self.salt[..], &explicit[..]].concat();
            let mut body = data.to_vec();
            key.seal_in_place_append_tag(
                aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Self::tls12_aad(seq, data.len()),
                &mut body,
            )
            .unwrap();
            [header(8 + body.len()), explicit.to_vec(), body].concat()
        }
    }

    /// The kernel's `k`-th record received (one record in `rec`).
    fn open(&self, k: u64, rec: &[u8]) -> Vec<u8> {
        let seq = self.seq + k;
        let key = self.key();
        let len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
        assert_eq!(rec.len(), 5 + len, "one whole record");
        if self.version == 0x0304 {
            let mut body = rec[5..].to_vec();
            let aad = aead::Aad::from(rec[..5].to_vec());
            let inner = key
                .open_in_place(self.xor_nonce(seq), aad, &mut body)
                .expect("the kernel's receive key opens the peer's record")
                .to_vec();
            let end = inner.iter().rposition(|&b| b != 0).unwrap();
            assert_eq!(inner[end], 23, "application data");
            inner[..end].to_vec()
        } else if self.cipher == 54 {
            let mut body = rec[5..].to_vec();
            key.open_in_place(
                self.xor_nonce(seq),
                Self::tls12_aad(seq, len - 16),
                &mut body,
            )
            .expect("the kernel's receive key opens the peer's record")
            .to_vec()
        } else {
            let nonce = [&self.salt[..], &rec[5..13]].concat();
            let mut body = rec[13..].to_vec();
            key.open_in_place(
                aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Self::tls12_aad(seq, len - 8 - 16),
                &mut body,
            )
            .expect("the kernel's receive key opens the peer's record")
            .to_vec()
        }
    }
}

// ---- a handshake in memory ----

struct Pair {
    client: ClientConnection,
    server: TlsSession,
    /// Encrypted records the server sent during the handshake (after its
    /// ChangeCipherSpec under TLS 1.2): the nonces the kernel must not reuse.
    server_encrypted: Vec<Vec<u8>>,
}

fn suite(s: CipherSuite) -> SupportedCipherSuite {
    *rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .find(|c| c.suite() == s)
        .unwrap()
}

fn records(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let n = 5 + u16::from_be_bytes([b[3], b[4]]) as usize;
        out.push(b[..n].to_vec());
        b = &b[n..];
    }
    assert!(b.is_empty(), "whole records");
    out
}

fn write_all_tls(c: &mut impl FnMut(&mut Vec<u8>) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    while c(&mut out) {}
    out
}

/// Client and server through the handshake. `early` is written by the client
/// before the handshake ends, so TLS 1.3 sends it with the client's Finished.
fn handshake(s: CipherSuite, early: &[u8]) -> Pair {
    let cert = rcgen::generate_simple_self_signed(vec!["test.local".to_string()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite(s)],
        ..rustls::crypto::ring::default_provider()
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match suite(s) {
        SupportedCipherSuite::Tls12(_) => &[&rustls::version::TLS12],
        SupportedCipherSuite::Tls13(_) => &[&rustls::version::TLS13],
    };
    let mut sc = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    sc.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client =
        ClientConnection::new(Arc::new(cc), ServerName::try_from("test.local").unwrap()).unwrap();
    let server = TlsSession::new(Connection::from(
        ServerConnection::new(Arc::new(sc)).unwrap(),
    ));
    client.writer().write_all(early).unwrap();
    let mut server_encrypted = Vec::new();
    let mut after_ccs = false;
    for _ in 0..10 {
        let c2s = write_all_tls(&mut |o| client.wants_write() && client.write_tls(o).unwrap() > 0);
        server.inbuf.borrow_mut().extend_from_slice(&c2s);
        server.advance_handshake().unwrap();
        let s2c = server.take_records(1 << 20).unwrap();
        for r in records(&s2c) {
            if r[0] == 20 {
                after_ccs = true;
            } else if after_ccs || r[0] == 23 {
                server_encrypted.push(r);
            }
        }
        client.read_tls(&mut &s2c[..]).unwrap();
        client.process_new_packets().unwrap();
        // Under TLS 1.2 the client's queued request goes out after this: it
        // is the kernel's to receive.
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());
    Pair {
        client,
        server,
        server_encrypted,
    }
}

const SUITES: [CipherSuite; 6] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn client_reads(client: &mut ClientConnection, rec: &[u8]) -> Vec<u8> {
    let mut rest = rec;
    while !rest.is_empty() {
        let n = client.read_tls(&mut rest).unwrap();
        assert!(n > 0);
        client
            .process_new_packets()
            .expect("the client accepts the kernel's record");
    }
    let mut got = vec![0u8; 1 << 16];
    let n = client.reader().read(&mut got).unwrap();
    got.truncate(n);
    got
}

#[test]
fn keys_handed_to_the_kernel_carry_the_session_on_both_ways() {
    for s in SUITES {
        let early = b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n";
        let mut p = handshake(s, early);
        let tls13 = matches!(suite(s), SupportedCipherSuite::Tls13(_));
        let h = match p.server.into_kernel() {
            Ok(h) => h,
            Err(_) => panic!("{s:?}: refused"),
        };
        // TLS 1.3 sends the request with the client's Finished: rustls has it
        // decrypted, and hands it over as plaintext.
        let pending = h.session.pending.borrow().to_vec();
        if tls13 {
            assert_eq!(pending, early, "{s:?}");
        } else {
            assert!(pending.is_empty(), "{s:?}");
        }
        let send = parse(h.send.as_bytes());
        let receive = parse(h.receive.as_bytes());
        assert_eq!(send.version, if tls13 { 0x0304 } else { 0x0303 });
        // The kernel's records, in order, are what the client reads.
        for (k, body) in [&b"HTTP/1.1 200 OK\r\n"[..], b"second record", &[7u8; 16384]]
            .iter()
            .enumerate()
        {
            let rec = send.seal(k as u64, body);
            assert_eq!(client_reads(&mut p.client, &rec), *body, "{s:?} record {k}");
        }
        // And the client's records (the TLS 1.2 request included) open with the
        // receive key, from the sequence number handed over.
        let mut k = 0u64;
        let mut sent: Vec<&[u8]> = vec![b"ping", b"second"];
        if !tls13 {
            sent.insert(0, early);
        }
        if !tls13 {
            // The early request was queued before the handshake: rustls sent it
            // after the server's Finished; it is the first record the kernel gets.
            let c2s = write_all_tls(&mut |o| {
                p.client.wants_write() && p.client.write_tls(o).unwrap() > 0
            });
            for r in records(&c2s) {
                assert_eq!(receive.open(k, &r), sent[k as usize], "{s:?} rx {k}");
                k += 1;
            }
            assert_eq!(k, 1, "{s:?}");
        }
        for body in &sent[k as usize..] {
            p.client.writer().write_all(body).unwrap();
            let c2s = write_all_tls(&mut |o| {
                p.client.wants_write() && p.client.write_tls(o).unwrap() > 0
            });
            let recs = records(&c2s);
            assert_eq!(recs.len(), 1);
            assert_eq!(receive.open(k, &recs[0]), *body, "{s:?} rx {k}");
            k += 1;
        }
        // TLS 1.2 AES-GCM: no nonce the kernel will send was used by rustls.
        if !tls13 && send.cipher != 54 {
            assert!(
                !p.server_encrypted.is_empty(),
                "the server's Finished was seen"
            );
            let first = u64::from_be_bytes(send.iv[..].try_into().unwrap());
            for r in &p.server_encrypted {
                let used = u64::from_be_bytes(r[5..13].try_into().unwrap());
                for k in 0..1024 {
                    assert_ne!(
                        first.wrapping_add(k),
                        used,
                        "{s:?}: nonce reuse at record {k}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_first_request_of_several_reads_is_decrypted_before_the_hand_over() {
    // 12 KiB with the Finished: the handshake stops at the Finished, and
    // rustls takes the data record 4 KiB at a time inside the hand-over.
    let early = vec![b'x'; 12 * 1024];
    let mut p = handshake(CipherSuite::TLS13_AES_128_GCM_SHA256, &early);
    let h = match p.server.into_kernel() {
        Ok(h) => h,
        Err(_) => panic!("refused"),
    };
    assert_eq!(&h.session.pending.borrow()[..], &early[..]);
    let send = parse(h.send.as_bytes());
    assert_eq!(client_reads(&mut p.client, &send.seal(0, b"ok")), b"ok");
}

#[test]
fn more_than_rustls_holds_with_the_finished_keeps_the_session_with_rustls() {
    // Past rustls's 16 KiB of received plaintext, the rest cannot be decrypted
    // before the hand-over: the session stays with rustls, whole.
    let early: Vec<u8> = (0..40 * 1024).map(|i| i as u8).collect();
    let p = handshake(CipherSuite::TLS13_AES_128_GCM_SHA256, &early);
    let server = match p.server.into_kernel() {
        Err(Refused::Kept(t)) => t,
        _ => panic!("not kept"),
    };
    let mut got = bytes::BytesMut::new();
    while let Some(Ok(n)) = server.take_plaintext(&mut got) {
        if n == 0 {
            break;
        }
    }
    assert_eq!(&got[..], &early[..]);
}

#[test]
fn half_a_record_keeps_the_session_with_rustls() {
    let mut p = handshake(CipherSuite::TLS13_AES_128_GCM_SHA256, b"");
    p.client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let c2s = write_all_tls(&mut |o| p.client.wants_write() && p.client.write_tls(o).unwrap() > 0);
    let (a, b) = c2s.split_at(c2s.len() / 2);
    p.server.inbuf.borrow_mut().extend_from_slice(a);
    let server = match p.server.into_kernel() {
        Err(Refused::Kept(t)) => t,
        Err(Refused::Lost) => panic!("lost"),
        Ok(_) => panic!("handed over with half a record outstanding"),
    };
    // rustls goes on: the rest of the record arrives and reads as it should.
    server.inbuf.borrow_mut().extend_from_slice(b);
    let mut got = bytes::BytesMut::new();
    loop {
        match server.take_plaintext(&mut got) {
            Some(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    assert_eq!(&got[..], b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn records_still_to_send_keep_the_session_with_rustls() {
    let p = handshake(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256, b"");
    // rustls has something queued (the answer to nothing yet: a close_notify).
    p.server.close_notify();
    assert!(matches!(p.server.into_kernel(), Err(Refused::Kept(_))));
}
