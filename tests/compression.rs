//! Gzip variants (spec §5, GZ-1..GZ-5) end to end: the real binary, a real
//! origin that sends identity bodies, and responses decompressed here by an
//! independent decoder (flate2's miniz_oxide, not libdeflate).

mod support;

use std::io::Read;
use support::*;

fn css(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b".a{color:#123456;margin:0 auto}\n.b{padding:1px}\n"[i % 47])
        .collect()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a valid gzip member");
    out
}

/// The origin: identity bodies, except `/pre.css`, which it encodes itself.
fn origin() -> Origin {
    Origin::start(|r| {
        let (body, extra): (Vec<u8>, &str) = match r.path.split('?').next().unwrap() {
            "/style.css" => (css(32 * 1024), "ETag: \"css1\"\r\n"),
            "/small.css" => (css(1024), ""),
            "/big.css" => (css(3 * 1024 * 1024), ""),
            "/pre.css" => {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(&css(8192)).unwrap();
                (e.finish().unwrap(), "Content-Encoding: gzip\r\n")
            }
            "/logo.png" => (vec![7u8; 20_000], ""),
            "/nope.css" | "/l9.css" | "/nt.css" | "/head.css" => (css(32 * 1024), ""),
            "/slow.css" => {
                std::thread::sleep(std::time::Duration::from_millis(400));
                (css(32 * 1024), "")
            }
            "/b-min.css" => (css(2048), ""),
            "/b-max.css" => (css(2048 * 1024), ""),
            "/b-over.css" => (css(2048 * 1024 + 1), ""),
            "/reval.css" => {
                // ETag only (no Last-Modified), stale after a second: a
                // revalidation must ask with the origin's own tag.
                if header_in(&r.headers, "if-none-match") == Some("W/\"r1\"") {
                    return Reply::Bytes(
                        b"HTTP/1.1 304 Not Modified\r\nETag: \"r1\"\r\nCache-Control: max-age=1\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    );
                }
                let body = css(32 * 1024);
                let mut v = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nCache-Control: max-age=1\r\nETag: \"r1\"\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                v.extend_from_slice(&body);
                return Reply::Bytes(v);
            }
            _ => {
                return Reply::Bytes(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                )
            }
        };
        // GZ-4: for a URL it compresses, cairn asks for the identity form.
        assert!(
            !r.path.ends_with(".css")
                || r.path == "/nope.css"
                || header_in(&r.headers, "accept-encoding").is_none(),
            "the origin was asked with {:?}",
            r.headers
        );
        let cc = if r.path == "/nt.css" {
            "max-age=3600, no-transform"
        } else {
            "max-age=3600"
        };
        let mut v = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nCache-Control: {cc}\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(&body);
        Reply::Bytes(v)
    })
}

fn gzip_dir(origin: &Origin) -> std::path::PathBuf {
    gzip_dir_at(origin, 6)
}

/// `<Compression Level=level>`, and compression.txt: `/nope.css` never,
/// `/l9.css` at level 9, other `.css` at the element's level.
fn gzip_dir_at(origin: &Origin, level: u8) -> std::path::PathBuf {
    let dir = config_dir(
        &origin.addr.to_string(),
        &format!(
            r#"<Compression Method="gzip" Level="{level}" SourceSize="2-2048">ON</Compression>"#
        ),
        "",
    );
    let svc = dir.join("svc").join("test.local");
    std::fs::create_dir_all(&svc).unwrap();
    std::fs::write(
        svc.join("compression.txt"),
        "# what cairn compresses\n/nope.css, no\n/l9.css, gzip, 9\n*.css   // the element's level\n",
    )
    .unwrap();
    dir
}

fn get(c: &mut Client, path: &str, extra: &str) -> Response {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
    c.response(false).expect("a response")
}

/// The per-shard gzip counters, from the SIGUSR1 statistics: (made, bytes in).
fn made(cairn: &Cairn, seen: usize) -> (u64, u64) {
    cairn.signal("USR1");
    // Each SIGUSR1 writes one such line per shard; wait for this one's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = cairn.stderr();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("gzip variants made"))
            .collect();
        if lines.len() > seen {
            let l = lines[seen];
            let n = |after: &str| -> u64 {
                let n = l.split(after).next().unwrap().rsplit(' ').next().unwrap();
                n.trim_start_matches('(').parse().unwrap()
            };
            return (n(" gzip variants made"), n(" bytes in"));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no statistics line: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_css_is_compressed_once_and_every_gzip_client_gets_the_same_bytes() {
    let origin = origin();
    let cairn = Cairn::start(gzip_dir(&origin), 1);
    let mut c = cairn.connect();
    let first = get(
        &mut c,
        "/style.css",
        "Accept-Encoding: gzip, deflate, br\r\n",
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-encoding"), Some("gzip"), "{first:?}");
    assert_eq!(first.header("vary"), Some("Accept-Encoding"));
    // Its own tag, weak: another compression may give other bytes.
    assert_eq!(first.header("etag"), Some("W/\"css1-gzip\""));
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    assert!(
        first.body.len() < 32 * 1024 / 4,
        "{} bytes",
        first.body.len()
    );
    assert_eq!(gunzip(&first.body), css(32 * 1024));
    assert_eq!(made(&cairn, 0), (1, 32 * 1024));
    // 1000 more gzip requests: hits of the same bytes, no compression work.
    for i in 0..1000 {
        let r = get(&mut c, "/style.css", "Accept-Encoding: gzip\r\n");
        assert_eq!(r.body, first.body, "request {i}");
    }
    assert_eq!(made(&cairn, 1), (1, 32 * 1024), "compressed once");
    // An identity client gets the origin's bytes, with Vary and the origin's ETag.
    let plain = get(&mut c, "/style.css", "");
    assert_eq!(plain.body, css(32 * 1024));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_eq!(plain.header("etag"), Some("\"css1\""));
    // gzip;q=0 is identity, even with * beside it.
    let refused = get(&mut c, "/style.css", "Accept-Encoding: gzip;q=0, *\r\n");
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(refused.body, css(32 * 1024));
    // One origin request per variant.
    assert_eq!(origin.count(), 2);
    // A conditional request with the variant's ETag is a 304.
    let cond = get(
        &mut c,
        "/style.css",
        "Accept-Encoding: gzip\r\nIf-None-Match: W/\"css1-gzip\"\r\n",
    );
    assert_eq!(cond.status, 304, "{cond:?}");
    // The identity tag does not validate the gzip variant.
    let other = get(
        &mut c,
        "/style.css",
        "Accept-Encoding: gzip\r\nIf-None-Match: \"css1\"\r\n",
    );
    assert_eq!(other.status, 200, "{other:?}");
}

#[test]
fn boundaries_small_files_encoded_origins_refusals_and_ranges() {
    let origin = origin();
    let cairn = Cairn::start(gzip_dir(&origin), 1);
    let mut c = cairn.connect();
    let gz = "Accept-Encoding: gzip\r\n";
    // Under SourceSize's 2 KiB: not compressed (but it varies).
    let small = get(&mut c, "/small.css", gz);
    assert_eq!(small.header("content-encoding"), None);
    assert_eq!(small.body, css(1024));
    assert_eq!(small.header("vary"), Some("Accept-Encoding"));
    // Over its 2048 KiB: not compressed either.
    let big = get(&mut c, "/big.css", gz);
    assert_eq!(big.header("content-encoding"), None);
    assert_eq!(big.body.len(), 3 * 1024 * 1024);
    // The origin's own gzip passes through unchanged.
    let pre = get(&mut c, "/pre.css", gz);
    assert_eq!(pre.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&pre.body), css(8192));
    // A URL compression.txt does not name is not compressed.
    let png = get(&mut c, "/logo.png", gz);
    assert_eq!(png.header("content-encoding"), None);
    assert_eq!(png.body, vec![7u8; 20_000]);
    assert_eq!(made(&cairn, 0).0, 0, "nothing was compressed");
    // A Range on the gzip variant is a range of the compressed bytes.
    let whole = get(&mut c, "/style.css", gz);
    assert_eq!(whole.header("content-encoding"), Some("gzip"));
    let part = get(
        &mut c,
        "/style.css",
        "Accept-Encoding: gzip\r\nRange: bytes=10-99\r\n",
    );
    assert_eq!(part.status, 206, "{part:?}");
    assert_eq!(part.body, whole.body[10..100]);
    assert_eq!(part.header("content-encoding"), Some("gzip"));
    // HEAD gets the variant's headers.
    c.send(b"HEAD /style.css HTTP/1.1\r\nHost: test.local\r\nAccept-Encoding: gzip\r\n\r\n");
    let head = c.response(true).expect("a response");
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert_eq!(
        head.header("content-length"),
        Some(whole.body.len().to_string().as_str())
    );
}

#[test]
fn the_gzip_variant_survives_a_restart() {
    let origin = origin();
    let dir = gzip_dir(&origin);
    let keep = temp_dir("gz-keep");
    let _ = std::fs::remove_dir(&keep);
    let first = {
        let mut cairn = Cairn::start(dir.clone(), 1);
        let mut c = cairn.connect();
        let b = get(&mut c, "/style.css", "Accept-Encoding: gzip\r\n").body;
        drop(c);
        cairn.signal("TERM");
        cairn.wait_exit(std::time::Duration::from_secs(10));
        // Keep the directory: Cairn's Drop would remove it.
        std::fs::rename(&dir, &keep).unwrap();
        b
    };
    std::fs::rename(&keep, &dir).unwrap();
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let again = get(&mut c, "/style.css", "Accept-Encoding: gzip\r\n");
    assert_eq!(again.header("content-encoding"), Some("gzip"));
    assert_eq!(again.body, first, "the stored variant, byte for byte");
    assert_eq!(origin.count(), 1, "served from the recovered cache");
    assert_eq!(made(&cairn, 0).0, 0, "not compressed again");
}

#[test]
fn bad_compression_settings_are_config_errors_with_file_and_line() {
    let origin = origin();
    for (element, needle) in [
        (r#"<Compression Method="br">ON</Compression>"#, "only gzip"),
        (r#"<Compression Level="12">ON</Compression>"#, "1 to 9"),
        (
            r#"<Compression SourceSize="9-2">ON</Compression>"#,
            "MIN <= MAX",
        ),
        (r#"<Compression>MAYBE</Compression>"#, "ON or OFF"),
    ] {
        let dir = config_dir(&origin.addr.to_string(), element, "");
        let out = check(&dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{element}: {err}");
        assert!(
            err.contains("server.xml:") && err.contains(needle),
            "{element}: {err}"
        );
    }
    let dir = gzip_dir(&origin);
    std::fs::write(
        dir.join("svc/test.local/compression.txt"),
        "*.css\n*.js, gzip, 10\n",
    )
    .unwrap();
    let out = check(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("compression.txt") && err.contains(":2"),
        "{err}"
    );
}

#[test]
fn levels_bounds_no_lines_no_transform_and_head_misses() {
    let origin = origin();
    let cairn = Cairn::start(gzip_dir_at(&origin, 1), 1);
    let mut c = cairn.connect();
    let gz = "Accept-Encoding: gzip\r\n";
    // The element's level 1 and a line's level 9: libdeflate marks them in the
    // gzip header's XFL byte (4: fastest, 2: best).
    let fast = get(&mut c, "/style.css", gz);
    let best = get(&mut c, "/l9.css", gz);
    assert_eq!((fast.body[8], best.body[8]), (4, 2), "XFL");
    assert_eq!(gunzip(&best.body), css(32 * 1024));
    // A `no` line.
    let no = get(&mut c, "/nope.css", gz);
    assert_eq!(no.header("content-encoding"), None);
    assert!(no.body == css(32 * 1024), "{} bytes", no.body.len());
    // SourceSize is inclusive, in KiB: 2 KiB and 2048 KiB are compressed,
    // one byte more is not.
    for (path, n, compressed) in [
        ("/b-min.css", 2048, true),
        ("/b-max.css", 2048 * 1024, true),
        ("/b-over.css", 2048 * 1024 + 1, false),
    ] {
        let r = get(&mut c, path, gz);
        let body = if compressed {
            assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
            gunzip(&r.body)
        } else {
            assert_eq!(r.header("content-encoding"), None, "{path}");
            r.body.clone()
        };
        assert!(body == css(n), "{path}: {} bytes", body.len());
    }
    // Cache-Control: no-transform forbids it (RFC 9110 §7.7).
    let nt = get(&mut c, "/nt.css", gz);
    assert_eq!(nt.header("content-encoding"), None);
    assert!(nt.body == css(32 * 1024), "{} bytes", nt.body.len());
    // A HEAD miss fills the gzip variant; the GET after it is that object.
    c.send(b"HEAD /head.css HTTP/1.1\r\nHost: test.local\r\nAccept-Encoding: gzip\r\n\r\n");
    let head = c.response(true).expect("a response");
    assert_eq!(head.header("content-encoding"), Some("gzip"), "{head:?}");
    let after = get(&mut c, "/head.css", gz);
    assert_eq!(
        head.header("content-length"),
        Some(after.body.len().to_string().as_str())
    );
    assert_eq!(gunzip(&after.body), css(32 * 1024));
}

#[test]
fn a_stale_gzip_variant_is_revalidated_with_the_origins_etag() {
    let origin = origin();
    let cairn = Cairn::start(gzip_dir(&origin), 1);
    let mut c = cairn.connect();
    let gz = "Accept-Encoding: gzip\r\n";
    let first = get(&mut c, "/reval.css", gz);
    assert_eq!(first.header("etag"), Some("W/\"r1-gzip\""));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // Stale: cairn asks with If-None-Match W/"r1" (the origin's tag behind its
    // own); the origin's 304 refreshes the variant, which is not recompressed
    // and keeps its own encoding fields.
    let again = get(&mut c, "/reval.css", gz);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("etag"), Some("W/\"r1-gzip\""));
    assert_eq!(again.header("content-encoding"), Some("gzip"));
    assert_eq!(origin.count(), 2);
    assert_eq!(
        header_in(&origin.last().headers, "if-none-match"),
        Some("W/\"r1\""),
        "revalidated with the origin's tag"
    );
    assert_eq!(made(&cairn, 0).0, 1, "compressed once");
}

#[test]
fn the_leader_hanging_up_does_not_fail_the_followers() {
    let origin = origin();
    let cairn = Cairn::start(gzip_dir(&origin), 1);
    let req = b"GET /slow.css HTTP/1.1\r\nHost: test.local\r\nAccept-Encoding: gzip\r\n\r\n";
    // The leader asks, then leaves while the origin is still answering.
    {
        let mut leader = cairn.connect();
        leader.send(req);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let followers: Vec<_> = (0..4)
        .map(|_| {
            let addr = cairn.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(req);
                c.response(false).expect("a response")
            })
        })
        .collect();
    for f in followers {
        let r = f.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert!(gunzip(&r.body) == css(32 * 1024));
    }
    assert_eq!(origin.count(), 1, "one fill, finished without its leader");
    assert_eq!(made(&cairn, 0).0, 1);
}
