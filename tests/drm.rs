//! DRM end to end (spec §6, DRM-1..DRM-7): the real binary, a real origin, and
//! every response decrypted here by an independent RC4 and key derivation
//! (Python's hashlib and a few lines of RC4), and by `cairn drm-decrypt`.

mod support;

use std::process::Command;
use support::*;

const PY_RC4: &str = r#"
import hashlib, sys
key_spec, hash_name, token, iv, url, src, dst, offset = sys.argv[1:9]
path = url.split('?')[0]
f1 = path.rsplit('/', 1)[-1]
f2 = f1.rsplit('.', 1)[0] if '.' in f1 else f1
parts = {'$token': token, '$url': path, '$filename1': f1, '$filename2': f2}
material = ''.join(parts[p.strip().lower()] for p in key_spec.split(',')).encode()
h = hash_name.lower()
if h != 'none':
    material = hashlib.new({'md5': 'md5', 'sha-1': 'sha1', 'sha-256': 'sha256'}[h], material).digest()
key = iv.encode() + material
S = list(range(256)); j = 0
for i in range(256):
    j = (j + S[i] + key[i % len(key)]) % 256; S[i], S[j] = S[j], S[i]
data = bytearray(open(src, 'rb').read())
i = j = 0
for k in range(int(offset) + len(data)):
    i = (i + 1) % 256; j = (j + S[i]) % 256; S[i], S[j] = S[j], S[i]
    if k >= int(offset):
        data[k - int(offset)] ^= S[(S[i] + S[j]) % 256]
open(dst, 'wb').write(data)
"#;

fn source(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn origin() -> Origin {
    Origin::start(|r| {
        let n = match r.path.split('?').next().unwrap() {
            "/music/iu.mp3" | "/a.mp3" => 100_000,
            "/big.mp3" => 2 * 1024 * 1024 + 10,
            "/music/iu.mp3/drm" => 7,
            _ => {
                return Reply::Bytes(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                )
            }
        };
        let body = source(n);
        let mut v = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nCache-Control: max-age=3600\r\nETag: \"s1\"\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(&body);
        Reply::Bytes(v)
    })
}

fn drm_dir(
    origin: &Origin,
    status: &str,
    iv: &str,
    key: &str,
    hash: &str,
    extra: &str,
) -> std::path::PathBuf {
    config_dir(
        &origin.addr.to_string(),
        &format!(
            r#"<Drm Status="{status}" Keyword="drm" {extra}><Algorithm>RC4</Algorithm><IV>{iv}</IV><Token>ABCDEFGH</Token><Key Hash="{hash}">{key}</Key></Drm>"#
        ),
        "",
    )
}

/// The independent decryption of `enc`, which starts `offset` bytes into the stream.
fn py_decrypt(key: &str, hash: &str, iv: &str, url: &str, enc: &[u8], offset: u64) -> Vec<u8> {
    let dir = temp_dir("drm-py");
    let (src, dst) = (dir.join("enc"), dir.join("dec"));
    std::fs::write(&src, enc).unwrap();
    let out = Command::new("python3")
        .args(["-c", PY_RC4, key, hash, "ABCDEFGH", iv, url])
        .arg(&src)
        .arg(&dst)
        .arg(offset.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dst).unwrap()
}

fn get(c: &mut Client, path: &str, extra: &str) -> Response {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
    c.response(false).expect("a response")
}

#[test]
fn every_key_and_hash_decrypts_to_the_source_with_and_without_an_iv() {
    let origin = origin();
    let want = source(100_000);
    for key in [
        "$Token",
        "$url,$Token",
        "$filename2,$Token,$url",
        "$filename1",
    ] {
        for hash in ["none", "MD5", "SHA-1", "SHA-256"] {
            for iv in ["", "IVIV"] {
                let dir = drm_dir(&origin, "Active", iv, key, hash, "");
                let cairn = Cairn::start(dir.clone(), 1);
                let mut c = cairn.connect();
                let r = get(&mut c, "/music/iu.mp3/drm", "");
                let what = format!("key {key}, hash {hash}, iv {iv:?}");
                assert_eq!(r.status, 200, "{what}");
                assert_eq!(r.body.len(), want.len(), "{what}: RC4 keeps the length");
                assert!(r.body != want, "{what}: encrypted");
                assert_eq!(r.header("etag"), Some("\"s1-drm\""), "{what}");
                let dec = py_decrypt(key, hash, iv, "/music/iu.mp3", &r.body, 0);
                assert!(dec == want, "{what}: the independent RC4 decrypts it");
                // And cairn drm-decrypt, with the same configuration.
                let enc = temp_dir("drm-cli").join("enc");
                std::fs::write(&enc, &r.body).unwrap();
                let out = Command::new(BIN)
                    .args(["drm-decrypt", "--config"])
                    .arg(&dir)
                    .args([
                        "--vhost",
                        "test.local",
                        "--url",
                        "/music/iu.mp3/drm",
                        "--in",
                    ])
                    .arg(&enc)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.stdout == want, "{what}: cairn drm-decrypt");
            }
        }
    }
}

#[test]
fn ranges_queries_oversize_sources_and_drm_off() {
    let origin = origin();
    let dir = drm_dir(
        &origin,
        "Active",
        "",
        "$url,$Token",
        "SHA-256",
        r#"MaxSourceSize="1""#,
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    // A Range decrypts at its offset (ranges are served from stored objects:
    // the first request fills).
    assert_eq!(get(&mut c, "/music/iu.mp3/drm", "").status, 200);
    let part = get(&mut c, "/music/iu.mp3/drm", "Range: bytes=1000-1999\r\n");
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.body.len(), 1000);
    let dec = py_decrypt(
        "$url,$Token",
        "SHA-256",
        "",
        "/music/iu.mp3",
        &part.body,
        1000,
    );
    assert!(dec == source(100_000)[1000..2000], "bytes 1000-1999");
    // The query stays on the source URL, and the source is cached as itself.
    let q = get(&mut c, "/a.mp3/drm?x=1", "");
    assert_eq!(q.status, 200);
    assert_eq!(origin.last().path, "/a.mp3?x=1");
    let dec = py_decrypt("$url,$Token", "SHA-256", "", "/a.mp3", &q.body, 0);
    assert!(dec == source(100_000));
    // A gzip client gets the same: DRM encrypts the identity source.
    let gz = get(&mut c, "/a.mp3/drm?x=1", "Accept-Encoding: gzip\r\n");
    assert_eq!(gz.header("content-encoding"), None);
    assert!(gz.body == q.body);
    let plain = get(&mut c, "/a.mp3?x=1", "");
    assert!(plain.body == source(100_000), "the source, unencrypted");
    // A source over MaxSourceSize (1 MB) gets 500.
    let big = get(&mut c, "/big.mp3/drm", "");
    assert_eq!(big.status, 500);
    cairn.signal("USR1");
    let stats = cairn.wait_log("DRM responses");
    assert!(stats.contains("(1 refused)"), "{stats}");
    // With DRM inactive, /music/iu.mp3/drm is an ordinary URL.
    let origin2 = self::origin();
    let off = drm_dir(&origin2, "Inactive", "", "$Token", "none", "");
    let cairn2 = Cairn::start(off, 1);
    let mut c2 = cairn2.connect();
    let r = get(&mut c2, "/music/iu.mp3/drm", "");
    assert_eq!(r.body, source(7));
    assert_eq!(origin2.last().path, "/music/iu.mp3/drm");
}

#[test]
fn bad_drm_settings_are_config_errors_with_file_and_line() {
    let origin = origin();
    for (xml, needle) in [
        (
            r#"<Drm Status="Active"><Algorithm>AES</Algorithm></Drm>"#,
            "only RC4",
        ),
        (
            r#"<Drm Status="Active"><Token>AB</Token><Key>$Token</Key></Drm>"#,
            "5 to 256",
        ),
        (
            r#"<Drm Status="Active"><Token>ABCDEF</Token><Key Hash="CRC32">$Token</Key></Drm>"#,
            "SHA-256",
        ),
        (
            r#"<Drm Status="Active"><Token>ABCDEF</Token><Key>$Token,$host</Key></Drm>"#,
            "$filename2",
        ),
        (
            // No key material yet (no <Https>, no secret.key).
            r#"<Drm Status="Active"><Token Type="enc">xyz</Token></Drm>"#,
            "no key material",
        ),
        (r#"<Drm Status="Maybe"/>"#, "Active or Inactive"),
    ] {
        let dir = config_dir(&origin.addr.to_string(), xml, "");
        let out = check(&dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{xml}: {err}");
        assert!(
            err.contains("server.xml:") && err.contains(needle),
            "{xml}: {err}"
        );
    }
}

#[test]
fn an_encrypted_token_gives_the_same_keystream_as_the_plain_one() {
    let origin = origin();
    // The plain token's response.
    let plain_dir = drm_dir(&origin, "Active", "", "$url,$Token", "MD5", "");
    let plain = {
        let cairn = Cairn::start(plain_dir, 1);
        let mut c = cairn.connect();
        get(&mut c, "/music/iu.mp3/drm", "").body
    };
    // The same token, encrypted with `cairn encrypt-password` for this directory.
    let dir = drm_dir(&origin, "Active", "", "$url,$Token", "MD5", "");
    let out = Command::new(BIN)
        .args(["encrypt-password", "--config"])
        .arg(&dir)
        .arg("ABCDEFGH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enc = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!enc.contains("ABCDEFGH"));
    let key_file = std::fs::read(dir.join("secret.key")).expect("key material made on first use");
    edit_server_xml(
        &dir,
        "<Token>ABCDEFGH</Token>",
        &format!(r#"<Token Type="enc">{enc}</Token>"#),
    );
    {
        let cairn = Cairn::start(dir.clone(), 1);
        let mut c = cairn.connect();
        let r = get(&mut c, "/music/iu.mp3/drm", "");
        assert!(r.body == plain, "the decrypted token makes the same key");
    }
    // A value that does not decrypt is an error with its file and line.
    let bad = drm_dir(&origin, "Active", "", "$Token", "none", "");
    std::fs::write(bad.join("secret.key"), key_file).unwrap();
    edit_server_xml(
        &bad,
        "<Token>ABCDEFGH</Token>",
        &format!(r#"<Token Type="enc">{}x</Token>"#, &enc[..enc.len() - 2]),
    );
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("server.xml:1") && err.contains("encrypt-password"),
        "{err}"
    );
}

#[test]
fn conditionals_multi_ranges_heads_and_an_inactive_template() {
    let origin = origin();
    let dir = drm_dir(&origin, "Active", "", "$url,$Token", "SHA-1", "");
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let whole = get(&mut c, "/music/iu.mp3/drm", "");
    assert_eq!(whole.status, 200);
    // The DRM response's own tag validates it; the source's does not.
    let own = get(&mut c, "/music/iu.mp3/drm", "If-None-Match: \"s1-drm\"\r\n");
    assert_eq!(own.status, 304, "{:?}", own.headers);
    let source_tag = get(&mut c, "/music/iu.mp3/drm", "If-None-Match: \"s1\"\r\n");
    assert_eq!(source_tag.status, 200);
    // Several ranges get the whole 200 (RC4 cannot seek back cheaply).
    let multi = get(&mut c, "/music/iu.mp3/drm", "Range: bytes=900-999,0-9\r\n");
    assert_eq!(multi.status, 200);
    assert!(multi.body == whole.body);
    // A HEAD: the headers, no body.
    c.send(b"HEAD /music/iu.mp3/drm HTTP/1.1\r\nHost: test.local\r\n\r\n");
    let head = c.response(true).expect("a response");
    assert_eq!(head.header("etag"), Some("\"s1-drm\""));
    assert!(head.body.is_empty());
    // STON's template, inactive and with an empty token, loads.
    let template = config_dir(
        &origin.addr.to_string(),
        r#"<Drm Status="Inactive" Keyword="drm" MaxSourceSize="500"><Algorithm>RC4</Algorithm><IV></IV><Token></Token><Key Hash="none">$Token</Key></Drm>"#,
        "",
    );
    let out = check(&template);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
