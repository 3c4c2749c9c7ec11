//! End-to-end cache behaviour against the real binary and a test-owned origin.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use support::*;

const STATUS: &str = "<CacheStatusHeader>ON</CacheStatusHeader>";
/// RFC 9111 semantics (STON's policy caches no-store and must-revalidate responses).
const RFC: &str = "<TTL Mode=\"rfc9111\"/>";

fn body_of(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect()
}

fn object(body: &[u8], extra: &str) -> Reply {
    let mut v = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    Reply::Bytes(v)
}

/// Reads one response whose body must equal `want`, comparing as it streams (no
/// per-response allocation of the body); returns the X-Cache value.
fn get_expect(c: &mut TcpStream, path: &str, want: &[u8], scratch: &mut [u8]) -> String {
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "connection closed in head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(len, want.len());
    let mut at = 0;
    while at < len {
        let n = c.read(&mut scratch[..(len - at).min(1 << 20)]).unwrap();
        assert!(n > 0, "body cut short at {at}");
        assert!(scratch[..n] == want[at..at + n], "body differs at {at}");
        at += n;
    }
    head.lines()
        .find_map(|l| l.strip_prefix("X-Cache: "))
        .unwrap_or("-")
        .to_string()
}

fn big_cache_dir(origin: &str) -> std::path::PathBuf {
    let dir = temp_dir("bigcache");
    std::fs::write(
        dir.join("server.xml"),
        format!(
            r#"<Server><Cache><Storage SegmentSize="64MB" Quota="256MB"><Disk>cache</Disk></Storage></Cache><VHostDefault><Options>{STATUS}</Options></VHostDefault></Server>"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!("<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{origin}</Address></Origin></Vhost><Default>test.local</Default></Vhosts>"),
    )
    .unwrap();
    dir
}

#[test]
fn a_thousand_gets_make_one_origin_request_for_1k_1m_and_50m_objects() {
    let sizes = [("/1k", 1024usize), ("/1m", 1 << 20), ("/50m", 50 << 20)];
    let bodies: Vec<Arc<Vec<u8>>> = sizes
        .iter()
        .enumerate()
        .map(|(i, (_, s))| Arc::new(body_of(*s, i as u8 + 1)))
        .collect();
    let served = bodies.clone();
    let origin = Origin::start(move |r| match r.path.as_str() {
        "/1k" => object(&served[0], ""),
        "/1m" => object(&served[1], ""),
        "/50m" => object(&served[2], ""),
        _ => ok(b"?"),
    });
    let cairn = Cairn::start(big_cache_dir(&origin.addr.to_string()), 2);
    let mut scratch = vec![0u8; 1 << 20];
    for (i, (path, _)) in sizes.iter().enumerate() {
        let before = origin.count();
        let mut c = TcpStream::connect(cairn.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(
            get_expect(&mut c, path, &bodies[i], &mut scratch),
            "TCP_MISS"
        );
        for n in 2..=1000 {
            let x = get_expect(&mut c, path, &bodies[i], &mut scratch);
            assert_eq!(x, "TCP_HIT", "{path} request {n}");
        }
        assert_eq!(
            origin.count() - before,
            1,
            "{path}: exactly one origin request"
        );
    }
}

#[test]
fn a_hundred_concurrent_misses_make_one_origin_request() {
    let body = Arc::new(body_of(300_000, 7));
    let served = body.clone();
    // A slow origin, so the hundred requests pile up behind the first.
    let origin = Origin::start(move |_| {
        let Reply::Bytes(b) = object(&served, "Cache-Control: max-age=600\r\n") else {
            unreachable!()
        };
        Reply::After(Duration::from_millis(400), b)
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), STATUS, ""), 2);
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (b, want, addr) = (barrier.clone(), body.clone(), cairn.addr);
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut scratch = vec![0u8; 1 << 20];
                b.wait();
                get_expect(&mut c, "/hot", &want, &mut scratch)
            })
        })
        .collect();
    let results: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.len(), 100);
    assert_eq!(origin.count(), 1, "coalesced into one origin request");
    assert!(
        results.iter().all(|r| r == "TCP_MISS" || r == "TCP_HIT"),
        "{results:?}"
    );
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    v.sort();
    v
}

#[test]
fn cache_survives_kill_9_and_a_corrupt_record_is_only_a_miss() {
    let bodies: Vec<Vec<u8>> = (0..6)
        .map(|i| body_of(40_000 + i * 1000, i as u8 + 3))
        .collect();
    let served = bodies.clone();
    let origin = Origin::start(move |r| {
        let i: usize = r.path.trim_start_matches("/o").parse().unwrap_or(0);
        object(&served[i], "Cache-Control: max-age=3600\r\n")
    });
    let dir = config_dir(&origin.addr.to_string(), STATUS, "");
    let keep = temp_dir("keep");
    let _ = std::fs::remove_dir(&keep);
    let mut scratch = vec![0u8; 1 << 20];
    {
        let mut cairn = Cairn::start(dir.clone(), 2);
        let mut c = TcpStream::connect(cairn.addr).unwrap();
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(
                get_expect(&mut c, &format!("/o{i}"), b, &mut scratch),
                "TCP_MISS"
            );
        }
        cairn.signal("KILL");
        cairn.wait_exit(Duration::from_secs(5));
        // Keep the directory: Cairn's Drop would remove it.
        std::fs::rename(&dir, &keep).unwrap();
    }
    assert_eq!(origin.count(), 6);
    std::fs::rename(&keep, &dir).unwrap();
    {
        let mut cairn = Cairn::start(dir.clone(), 2);
        let log = cairn.wait_log("recovered");
        assert!(log.contains("6 objects"), "{log}");
        let mut c = TcpStream::connect(cairn.addr).unwrap();
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(
                get_expect(&mut c, &format!("/o{i}"), b, &mut scratch),
                "TCP_HIT",
                "/o{i} after restart"
            );
        }
        assert_eq!(origin.count(), 6, "no origin request after the restart");
        cairn.signal("KILL");
        cairn.wait_exit(Duration::from_secs(5));
        std::fs::rename(&dir, &keep).unwrap();
    }
    // Corrupt one byte in the middle of /o2's body on disk.
    let mut done = false;
    for f in segment_files(&keep) {
        let mut data = std::fs::read(&f).unwrap();
        if let Some(pos) = data.windows(64).position(|w| w == &bodies[2][1000..1064]) {
            data[pos + 10] ^= 0x55;
            std::fs::write(&f, &data).unwrap();
            done = true;
            break;
        }
    }
    assert!(done, "found /o2's bytes on disk");
    std::fs::rename(&keep, &dir).unwrap();
    let cairn = Cairn::start(dir, 2);
    let log = cairn.wait_log("recovered");
    assert!(
        log.contains("5 objects") && log.contains("1 corrupt"),
        "{log}"
    );
    let mut c = TcpStream::connect(cairn.addr).unwrap();
    for (i, b) in bodies.iter().enumerate() {
        let want = if i == 2 { "TCP_MISS" } else { "TCP_HIT" };
        assert_eq!(
            get_expect(&mut c, &format!("/o{i}"), b, &mut scratch),
            want,
            "/o{i}"
        );
    }
    assert_eq!(origin.count(), 7);
}

#[test]
fn filling_three_times_the_quota_stays_within_disk_and_memory_bounds() {
    let chunk = Arc::new(body_of(2 << 20, 9));
    let served = chunk.clone();
    let origin = Origin::start(move |_| object(&served, "Cache-Control: max-age=3600\r\n"));
    let dir = config_dir(&origin.addr.to_string(), STATUS, ""); // 64 MiB quota, 16 MiB segments
    let cairn = Cairn::start(dir.clone(), 2);
    let mut c = TcpStream::connect(cairn.addr).unwrap();
    let mut scratch = vec![0u8; 1 << 20];
    let mut rss_early = 0;
    for i in 0..96 {
        // 96 x 2 MiB = 192 MiB = 3x the quota
        get_expect(&mut c, &format!("/fill/{i}"), &chunk, &mut scratch);
        if i == 15 {
            rss_early = status_kb(cairn.pid(), "RssAnon");
        }
    }
    let rss_late = status_kb(cairn.pid(), "RssAnon");
    let on_disk: u64 = segment_files(&dir)
        .iter()
        .map(|f| std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap()) * 512)
        .sum();
    assert!(
        on_disk <= 64 << 20,
        "disk use {on_disk} exceeds the 64 MiB quota"
    );
    assert!(
        rss_late < rss_early + 8 * 1024,
        "anonymous RSS grew from {rss_early} kB to {rss_late} kB"
    );
    // Recent objects are hits, the oldest were evicted.
    assert_eq!(
        get_expect(&mut c, "/fill/95", &chunk, &mut scratch),
        "TCP_HIT"
    );
    assert_eq!(
        get_expect(&mut c, "/fill/0", &chunk, &mut scratch),
        "TCP_MISS"
    );
}

#[test]
fn no_store_is_never_written_and_max_age_1_is_revalidated_with_304() {
    let marker = b"NO-STORE-MARKER-5f0c2a9e".repeat(100);
    let m2 = marker.clone();
    let origin = Origin::start(move |r| match r.path.as_str() {
        "/secret" => object(&m2, "Cache-Control: no-store\r\n"),
        "/short" if r.header("if-none-match") == Some("\"v1\"") => Reply::Bytes(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=1\r\n\r\n"
                .to_vec(),
        ),
        "/short" => object(
            b"short-lived",
            "ETag: \"v1\"\r\nCache-Control: max-age=1\r\n",
        ),
        "/cookie" => object(b"c", "Set-Cookie: s=1\r\nCache-Control: max-age=60\r\n"),
        _ => ok(b"?"),
    });
    let dir = config_dir(&origin.addr.to_string(), &format!("{STATUS}{RFC}"), "");
    let cairn = Cairn::start(dir.clone(), 1);
    let mut c = cairn.connect();
    for _ in 0..3 {
        let r = c.get("/secret");
        assert_eq!(r.body, marker);
        assert_eq!(r.header("x-cache"), Some("TCP_MISS"));
    }
    assert_eq!(origin.count(), 3);
    for f in segment_files(&dir) {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !data.windows(24).any(|w| w == &marker[..24]),
            "no-store body found in {}",
            f.display()
        );
    }
    for _ in 0..2 {
        assert_eq!(
            c.get("/cookie").header("x-cache"),
            Some("TCP_MISS"),
            "Set-Cookie responses are not stored"
        );
    }
    let before = origin.count();
    assert_eq!(c.get("/short").header("x-cache"), Some("TCP_MISS"));
    assert_eq!(c.get("/short").header("x-cache"), Some("TCP_HIT"));
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.get("/short");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "short-lived");
    assert_eq!(r.header("x-cache"), Some("TCP_REFRESH_HIT"));
    assert_eq!(origin.count() - before, 2);
    assert_eq!(
        origin.last().header("if-none-match"),
        Some("\"v1\""),
        "revalidation is conditional"
    );
    // Refreshed: fresh again for a second.
    assert_eq!(c.get("/short").header("x-cache"), Some("TCP_HIT"));
    // HEAD is answered from the cached GET; a matching client conditional gets 304.
    c.send(b"HEAD /short HTTP/1.1\r\nHost: test.local\r\n\r\n");
    let h = c.response(true).unwrap();
    assert_eq!(
        (h.status, h.header("content-length"), h.header("x-cache")),
        (200, Some("11"), Some("TCP_HIT"))
    );
    c.send(b"GET /short HTTP/1.1\r\nHost: test.local\r\nIf-None-Match: \"v1\"\r\n\r\n");
    let n = c.response(false).unwrap();
    assert_eq!((n.status, n.header("x-cache")), (304, Some("TCP_IMS_HIT")));
    assert_eq!(origin.count() - before, 2);
}

#[test]
fn stale_objects_are_served_when_the_origin_fails_unless_must_revalidate() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/soft" => object(b"soft", "ETag: \"s\"\r\nCache-Control: max-age=1\r\n"),
        _ => object(
            b"hard",
            "ETag: \"h\"\r\nCache-Control: max-age=1, must-revalidate\r\n",
        ),
    });
    let dir = config_dir(
        &origin.addr.to_string(),
        &format!("{STATUS}{RFC}"),
        "<ConnectTimeout>1</ConnectTimeout>",
    );
    // Same cache, then the origin goes away: point the config at a dead port.
    let mut cairn = Cairn::start(dir.clone(), 1);
    let mut c = cairn.connect();
    assert_eq!(c.get("/soft").text(), "soft");
    assert_eq!(c.get("/hard").text(), "hard");
    cairn.signal("TERM");
    assert_eq!(cairn.wait_exit(Duration::from_secs(15)), Some(0));
    let keep = temp_dir("stale");
    let _ = std::fs::remove_dir(&keep);
    std::fs::rename(&dir, &keep).unwrap();
    drop(cairn);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = config_dir_in(
        keep,
        &dead.to_string(),
        &format!("{STATUS}{RFC}"),
        "<ConnectTimeout>1</ConnectTimeout>",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let r = c.get("/soft");
    assert_eq!(
        (r.status, r.text().as_str(), r.header("x-cache")),
        (200, "soft", Some("TCP_REF_FAIL_HIT"))
    );
    assert_eq!(c.get("/hard").status, 502);
    let _ = origin.connections.load(Ordering::SeqCst);
}

#[test]
fn head_misses_empty_bodies_and_unsafe_methods() {
    let origin = Origin::start(|r| match (r.method.as_str(), r.path.as_str()) {
        (_, "/private") => object(b"secret body", "Cache-Control: private\r\n"),
        (_, "/empty") => object(b"", "Cache-Control: max-age=60\r\n"),
        ("POST", _) => ok(b"posted"),
        _ => object(b"v", "Cache-Control: max-age=60\r\n"),
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), STATUS, ""), 1);
    let mut c = cairn.connect();
    // A HEAD miss is filled with GET; an uncacheable answer must still reach the
    // client as a head only, or the body would be read as the next response.
    c.send(b"HEAD /private HTTP/1.1\r\nHost: test.local\r\n\r\nGET /empty HTTP/1.1\r\nHost: test.local\r\n\r\n");
    let h = c.response(true).unwrap();
    assert_eq!((h.status, h.header("content-length")), (200, Some("11")));
    let e = c.response(false).unwrap();
    assert_eq!(
        (e.status, e.header("content-length"), e.body.len()),
        (200, Some("0"), 0),
        "an empty 200 keeps its framing"
    );
    let e = c.get("/empty");
    assert_eq!(
        (e.header("content-length"), e.header("x-cache")),
        (Some("0"), Some("TCP_HIT"))
    );
    // An unsafe method invalidates the stored response (RFC 9111 §4.4).
    assert_eq!(c.get("/page").header("x-cache"), Some("TCP_MISS"));
    assert_eq!(c.get("/page").header("x-cache"), Some("TCP_HIT"));
    c.send(b"POST /page HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(c.response(false).unwrap().text(), "posted");
    assert_eq!(c.get("/page").header("x-cache"), Some("TCP_MISS"));
}

#[test]
fn key_1_gzip_and_identity_are_separate_objects_and_ston_ignores_other_vary() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/ua" => object(
            b"per-agent",
            "Vary: User-Agent\r\nCache-Control: max-age=60\r\n",
        ),
        _ if r.header("accept-encoding") == Some("gzip") => object(
            b"GZIPPED-BYTES",
            "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\nCache-Control: max-age=60\r\n",
        ),
        _ => {
            assert_eq!(
                r.header("accept-encoding"),
                None,
                "identity variant asks for identity"
            );
            object(
                b"plain bytes",
                "Vary: Accept-Encoding\r\nCache-Control: max-age=60\r\n",
            )
        }
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), STATUS, ""), 1);
    let mut c = cairn.connect();
    let ask = |c: &mut Client, ae: &str| {
        c.send(format!("GET /text HTTP/1.1\r\nHost: test.local\r\n{ae}\r\n").as_bytes());
        c.response(false).unwrap()
    };
    let r = ask(&mut c, "Accept-Encoding: br, gzip;q=0.8, deflate\r\n");
    assert_eq!(
        (
            r.text().as_str(),
            r.header("content-encoding"),
            r.header("x-cache")
        ),
        ("GZIPPED-BYTES", Some("gzip"), Some("TCP_MISS"))
    );
    let r = ask(&mut c, "");
    assert_eq!(
        (
            r.text().as_str(),
            r.header("content-encoding"),
            r.header("x-cache")
        ),
        ("plain bytes", None, Some("TCP_MISS"))
    );
    let r = ask(&mut c, "Accept-Encoding: gzip;q=0, br\r\n");
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("plain bytes", Some("TCP_HIT")),
        "q=0 refuses gzip"
    );
    let r = ask(&mut c, "Accept-Encoding: gzip\r\n");
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("GZIPPED-BYTES", Some("TCP_HIT"))
    );
    assert_eq!(origin.count(), 2);
    // STON mode (no <TTL Mode>): KEY-4's default ignores Vary, so one object
    // serves every User-Agent (tests/vary.rs has the honoured cases).
    assert_eq!(c.get("/ua").header("x-cache"), Some("TCP_MISS"));
    assert_eq!(c.get("/ua").header("x-cache"), Some("TCP_HIT"));
}

#[test]
fn an_unsafe_method_answered_2xx_removes_every_variant_and_a_refused_one_removes_none() {
    let origin = Origin::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/x") => ok(b"posted"),
        ("POST", "/denied") | ("FOO", _) => {
            Reply::Bytes(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n".to_vec())
        }
        ("POST", _) => Reply::Bytes(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        _ if r.header("accept-encoding") == Some("gzip") => object(
            b"GZ",
            "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\nCache-Control: max-age=60\r\n",
        ),
        _ => object(
            b"plain",
            "Vary: Accept-Encoding\r\nCache-Control: max-age=60\r\n",
        ),
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), STATUS, ""), 1);
    let mut c = cairn.connect();
    let get = |c: &mut Client, path: &str, gzip: bool| {
        let ae = if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        };
        c.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{ae}\r\n").as_bytes());
        c.response(false)
            .unwrap()
            .header("x-cache")
            .unwrap()
            .to_string()
    };
    let send = |c: &mut Client, method: &str, path: &str| {
        c.send(
            format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\nx")
                .as_bytes(),
        );
        c.response(false).unwrap().status
    };
    for path in ["/x", "/denied", "/err", "/count"] {
        for gzip in [false, true] {
            assert_eq!(get(&mut c, path, gzip), "TCP_MISS");
            assert_eq!(get(&mut c, path, gzip), "TCP_HIT");
        }
    }
    // 2xx: both the gzip and the identity variant of /x are gone.
    assert_eq!(send(&mut c, "POST", "/x"), 200);
    assert_eq!(get(&mut c, "/x", false), "TCP_MISS");
    assert_eq!(get(&mut c, "/x", true), "TCP_MISS");
    // 4xx and 5xx (and an unknown method the origin refuses) remove nothing.
    assert_eq!(send(&mut c, "POST", "/denied"), 405);
    assert_eq!(send(&mut c, "POST", "/err"), 500);
    assert_eq!(send(&mut c, "FOO", "/count"), 405);
    for path in ["/denied", "/err", "/count"] {
        for gzip in [false, true] {
            assert_eq!(get(&mut c, path, gzip), "TCP_HIT", "{path} gzip={gzip}");
        }
    }
}

#[test]
fn a_close_delimited_body_is_relayed_but_never_stored() {
    // The origin may have been cut off: the body's end cannot be checked.
    let origin = Origin::start(|_| {
        Reply::ThenClose(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n\r\nmaybe all of it".to_vec(),
        )
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), STATUS, ""), 1);
    for _ in 0..2 {
        let r = cairn.connect().get("/eof");
        assert_eq!(
            (r.text().as_str(), r.header("x-cache")),
            ("maybe all of it", Some("TCP_MISS"))
        );
    }
    assert_eq!(origin.count(), 2);
}

/// A client that asks for `path` and then reads nothing, with a tiny receive
/// window, so cairn's send stalls with the object's lease held.
fn stalled_reader(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
        .unwrap();
    s
}

#[test]
fn more_slow_readers_than_segments_do_not_stop_new_objects_being_stored() {
    // 6 MiB objects in 16 MiB segments, 64 MiB in all: 4 segments, 2 objects each.
    let origin = Origin::start(|r| {
        let seed = r.path.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        object(&body_of(6 << 20, seed), "Cache-Control: max-age=3600\r\n")
    });
    let dir = config_dir(&origin.addr.to_string(), STATUS, "");
    add_cairn_settings(
        &dir,
        "<HitSendTimeoutSec>2</HitSendTimeoutSec><MinSendRate>100MB</MinSendRate>",
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = TcpStream::connect(cairn.addr).unwrap();
    let mut scratch = vec![0u8; 1 << 20];
    for i in 0..10 {
        let seed = format!("/old/{i}")
            .bytes()
            .fold(0u8, |a, b| a.wrapping_add(b));
        get_expect(
            &mut c,
            &format!("/old/{i}"),
            &body_of(6 << 20, seed),
            &mut scratch,
        );
    }
    // Eight stalled readers of hits (objects 2..10), on every segment of the cache.
    let stalled: Vec<_> = (2..10)
        .map(|i| stalled_reader(cairn.addr, &format!("/old/{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Past the lease bound (2 s + 6 MiB at 100 MB/s) the stalled sends are cut
    // off, their leases end, and new objects are stored again.
    std::thread::sleep(Duration::from_secs(3));
    let mut stored = 0;
    for i in 0..4 {
        let path = format!("/new/{i}");
        let seed = path.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        let want = body_of(6 << 20, seed);
        get_expect(&mut c, &path, &want, &mut scratch);
        if get_expect(&mut c, &path, &want, &mut scratch) == "TCP_HIT" {
            stored += 1;
        }
    }
    assert_eq!(stored, 4, "new objects are stored despite the slow readers");
    // The stalled readers were cut off: each sees the end of its stream before
    // the full object.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(
            total < 6 << 20,
            "a stalled reader got the whole object ({total} bytes)"
        );
    }
}

#[test]
fn the_default_segment_size_shrinks_to_fit_the_shard_count() {
    // 256 MB of default 64 MiB segments is 4, too few for 4 shards (each needs
    // its own, plus one to reclaim): cairn sizes them to fit and serves.
    let origin = Origin::start(|_| object(b"fits", "Cache-Control: max-age=60\r\n"));
    let dir = config_dir(&origin.addr.to_string(), STATUS, "");
    edit_server_xml(
        &dir,
        r#"<Storage SegmentSize="16MB" Quota="64MB">"#,
        r#"<Storage Quota="256MB">"#,
    );
    let cairn = Cairn::start(dir.clone(), 4);
    let mut c = TcpStream::connect(cairn.addr).unwrap();
    let mut scratch = vec![0u8; 1 << 16];
    get_expect(&mut c, "/a", b"fits", &mut scratch);
    assert_eq!(get_expect(&mut c, "/a", b"fits", &mut scratch), "TCP_HIT");
    let segs = segment_files(&dir);
    assert_eq!(segs.len(), 5, "{segs:?}");
    assert!(segs.iter().all(|f| f.metadata().unwrap().len() == 51 << 20));
}

#[test]
fn key_2_3_case_insensitive_keys_and_query_string_rules() {
    let origin = Origin::start(|r| ok(format!("seen {}", r.path).as_bytes()));
    let dir = config_dir(
        &origin.addr.to_string(),
        &format!(
            "{STATUS}<CaseSensitive>OFF</CaseSensitive><ApplyQueryString>ON</ApplyQueryString>"
        ),
        "",
    );
    std::fs::create_dir_all(dir.join("svc/test.local")).unwrap();
    std::fs::write(
        dir.join("svc/test.local/querystring.txt"),
        "/nokey/*\n$URL[/tab.html], +start&end\n*.png, -utm\n$URL[/Up.HTML], +Id\n",
    )
    .unwrap();
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    // KEY-2: one object whatever the case; the origin is asked in lower case.
    let r = c.get("/Dir/A.html");
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("TCP_MISS"), "seen /dir/a.html")
    );
    assert_eq!(c.get("/dir/a.HTML").header("x-cache"), Some("TCP_HIT"));
    // KEY-3: a listed URL's query is not in the key (ApplyQueryString ON).
    c.get("/nokey/x?session=1");
    assert_eq!(
        c.get("/nokey/x?session=2").header("x-cache"),
        Some("TCP_HIT")
    );
    // +names: only those, in that order; other URLs keep their whole query.
    c.get("/tab.html?end=2&start=1&junk=3");
    assert_eq!(
        c.get("/tab.html?start=1&end=2").header("x-cache"),
        Some("TCP_HIT")
    );
    assert_eq!(
        c.get("/tab.html?start=9&end=2").header("x-cache"),
        Some("TCP_MISS")
    );
    // -names: all but those.
    c.get("/i/a.png?w=1&utm=x");
    assert_eq!(
        c.get("/i/a.png?utm=y&w=1").header("x-cache"),
        Some("TCP_HIT")
    );
    assert_eq!(c.get("/other?a=1").header("x-cache"), Some("TCP_MISS"));
    assert_eq!(c.get("/other?a=2").header("x-cache"), Some("TCP_MISS"));
    // The fill asks the origin for the key's URL, so parameters the key leaves
    // out (an encoded or padded name) cannot decide what others are served.
    let r = c.get("/tab.html?start=7&st%61rt=evil&end=7&start%20=evil");
    assert_eq!(r.text(), "seen /tab.html?start=7&end=7");
    let r = c.get("/tab.html?end=7&start=7");
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("TCP_HIT"), "seen /tab.html?start=7&end=7")
    );
    // Under CaseSensitive OFF, patterns and names match the lowered URL.
    let r = c.get("/UP.html?x=1&ID=3");
    assert_eq!(r.text(), "seen /up.html?id=3");
    assert_eq!(
        c.get("/up.html?id=3&y=2").header("x-cache"),
        Some("TCP_HIT")
    );
}

#[test]
fn location_invalidation_keys_the_uri_as_a_request_for_it_would_be() {
    // RFC 9111 §4.4 under <CaseSensitive>OFF: `Location: /ITEM.html` names the
    // object stored for `/Item.html`, which is keyed in lower case.
    let origin = Origin::start(|r| match r.method.as_str() {
        "POST" => Reply::Bytes(
            b"HTTP/1.1 201 Created\r\nLocation: /ITEM.html?b=2\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        _ => object(b"it", "Cache-Control: max-age=60\r\n"),
    });
    let dir = config_dir(
        &origin.addr.to_string(),
        &format!("{STATUS}<CaseSensitive>OFF</CaseSensitive>"),
        "",
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    c.get("/Item.html?b=2");
    assert_eq!(c.get("/item.html?B=2").header("x-cache"), Some("TCP_HIT"));
    c.send(b"POST /make HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(c.response(false).unwrap().status, 201);
    assert_eq!(c.get("/item.html?b=2").header("x-cache"), Some("TCP_MISS"));
}
