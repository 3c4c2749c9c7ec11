//! Hits sent with sendfile, against the page-reuse hazard: the kernel keeps
//! references to the segment's pages in the socket queues after the send
//! (and so the lease) ends, and a reclaim reuses the segment. Slow readers
//! hold sent objects in their receive queues while new objects churn every
//! segment of a small cache; every byte each reader finally gets must be the
//! object it asked for. `CAIRN_STRESS_ROUNDS` makes it longer (bench/).

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

/// Over `SENDFILE_MIN` (1 MiB), so hits go out by sendfile; three fit a
/// segment (4 MiB, a multiple of 2 MiB as sendfile needs).
const LEN: usize = 1100 << 10;

/// Object `key`'s bytes: every 8 bytes say (key, word number), so a page of
/// another object, or of zeros, is caught and named.
fn body_of(key: u32) -> Vec<u8> {
    (0..LEN / 8)
        .flat_map(|w| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&key.to_le_bytes());
            b[4..].copy_from_slice(&(w as u32).to_le_bytes());
            b
        })
        .collect()
}

fn key_of(path: &str) -> u32 {
    path.rsplit('/').next().unwrap().parse().unwrap()
}

/// The first word that is not `key`'s, and what it holds.
fn first_wrong(key: u32, got: &[u8]) -> Option<(usize, u32, u32)> {
    let want = body_of(key);
    (0..got.len().min(LEN) / 8).find_map(|w| {
        let (g, e) = (&got[w * 8..w * 8 + 8], &want[w * 8..w * 8 + 8]);
        (g != e).then(|| {
            let k = u32::from_le_bytes(g[..4].try_into().unwrap());
            let n = u32::from_le_bytes(g[4..].try_into().unwrap());
            (w * 8, k, n)
        })
    })
}

/// A client that asks for `key` and reads nothing until told: the whole
/// response waits in the kernel (its receive queue, up to `rmem_max`, and
/// the server's send queue: page references either way).
fn slow_reader(addr: SocketAddr, key: u32) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4 << 20).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    std::io::Write::write_all(
        &mut s,
        format!("GET /obj/{key} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s
}

/// Reads one response with a Content-Length body.
fn read_all(s: &mut TcpStream) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0, "cut short");
                buf.extend_from_slice(&tmp[..n]);
            }
            return (head, buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn wait_metric(mgr: SocketAddr, sample: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(mgr, sample);
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small disk cache (three 4 MiB segments), one shard, and a manager.
fn small_cache(origin: &Origin, tag: &str) -> std::path::PathBuf {
    write_config(
        temp_dir(tag),
        r#"<Server><Host><Manager Port="0" Listen="127.0.0.1"><Allow>127.0.0.1</Allow></Manager></Host><Cache><Storage SegmentSize="4MB" Quota="12MB"><Disk>cache</Disk></Storage></Cache><VHostDefault><Options><CacheStatusHeader>ON</CacheStatusHeader></Options></VHostDefault></Server>"#,
        &origin.addr.to_string(),
    )
}

#[test]
fn sendfile_hits_stay_byte_exact_while_their_segments_are_reclaimed_and_rewritten() {
    let origin = Origin::start(|r| ok(&body_of(key_of(&r.path))));
    let cairn = Cairn::start(small_cache(&origin, "sendfile"), 1);
    let mgr = cairn.manager_addr();
    if cairn.stderr().contains("hits are sent by copy") {
        eprintln!(
            "this filesystem cannot renew pages under sendfile: nothing to test here\n{}",
            cairn.stderr()
        );
        return;
    }
    let sent = "cairn_sendfile_bytes_total{shard=\"0\"}";
    let reclaims = "cairn_cache_segment_reclaims_total";
    let rounds: u32 = std::env::var("CAIRN_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut c = cairn.connect();
    for round in 0..rounds {
        let base = round * 1000;
        // Three objects (one segment), cached and then hit (hits are what
        // sendfile sends).
        let held: Vec<u32> = (base..base + 3).collect();
        for &k in &held {
            let r = c.get(&format!("/obj/{k}"));
            assert_eq!((r.status, r.body.len()), (200, LEN));
        }
        // Hit once here too (a second chance at the first reclaim: the copy
        // aside); must be stored, or the readers below would not use sendfile.
        for &k in &held {
            let r = c.get(&format!("/obj/{k}"));
            assert_eq!(r.header("x-cache"), Some("TCP_HIT"), "round {round}, {k}");
            assert_eq!(first_wrong(k, &r.body), None);
        }
        // Slow readers: the whole response goes into their receive queues
        // (sendfile done, lease released) and stays there, unread.
        let before = metric(mgr, sent);
        let mut readers: Vec<(u32, TcpStream)> = held
            .iter()
            .map(|&k| (k, slow_reader(cairn.addr, k)))
            .collect();
        let want = before + (held.len() * LEN) as u64;
        assert_eq!(
            wait_metric(mgr, sent, want),
            want,
            "every body went by sendfile"
        );
        // New objects through every segment, twice over: each segment the
        // readers' pages came from is reclaimed and written again. (Misses
        // only: objects hit here would take second chances and crowd out the
        // next round's.)
        let r0 = metric(mgr, reclaims);
        let mut checked = false;
        for k in base + 100..base + 120 {
            let r = c.get(&format!("/obj/{k}"));
            assert_eq!(first_wrong(k, &r.body), None, "a miss of {k}");
            // Every segment reclaimed once: a held one kept (hit; a reclaim
            // keeps at most half a segment) was copied aside and written back
            // into renewed pages, the others went; hit or miss, each byte is
            // the object's. (Which are kept: tested in the cache's own tests.)
            if !checked && metric(mgr, reclaims) >= r0 + 3 {
                checked = true;
                for &h in &held {
                    let r = c.get(&format!("/obj/{h}"));
                    assert_eq!(first_wrong(h, &r.body), None, "{h} after its renewal");
                }
            }
        }
        assert!(checked, "segments were reclaimed");
        for k in base + 117..base + 120 {
            let r = c.get(&format!("/obj/{k}"));
            assert_eq!(r.header("x-cache"), Some("TCP_HIT"), "{k}");
            assert_eq!(first_wrong(k, &r.body), None, "a hit of {k}");
        }
        for (k, s) in &mut readers {
            let (head, body) = read_all(s);
            assert!(head.contains("TCP_HIT"), "{head}");
            assert_eq!(body.len(), LEN);
            assert_eq!(
                first_wrong(*k, &body),
                None,
                "object {k} read late: (offset, key, word) of the first wrong bytes"
            );
        }
    }
}

/// A renewal that fails (a full disk, injected in a fault-injection build)
/// costs caching, never a wrong byte or a crash, and the cache recovers when
/// the disk does.
#[test]
fn failed_renewals_serve_misses_uncached_and_the_cache_recovers() {
    let origin = Origin::start(|r| ok(&body_of(key_of(&r.path))));
    let cairn = Cairn::start(small_cache(&origin, "renew-fail"), 1);
    let mgr = cairn.manager_addr();
    if manager_call(mgr, "/debug/renew?fail=1").0 != 200 {
        eprintln!("not a fault-injection build: cargo test --release --features fault-injection");
        return;
    }
    if cairn.stderr().contains("hits are sent by copy") {
        eprintln!("this filesystem cannot renew pages under sendfile: nothing to test here");
        return;
    }
    manager_call(mgr, "/debug/renew?fail=0");
    let failures = "cairn_cache_page_renewal_failures_total";
    let mut c = cairn.connect();
    // Every segment gets objects sent by file: each would need a renewal.
    for k in 0..9 {
        c.get(&format!("/obj/{k}"));
        let r = c.get(&format!("/obj/{k}"));
        assert_eq!(r.header("x-cache"), Some("TCP_HIT"), "{k}");
    }
    assert_eq!(manager_call(mgr, "/debug/renew?fail=1").0, 200);
    for k in 100..110 {
        let r = c.get(&format!("/obj/{k}"));
        assert_eq!((r.status, first_wrong(k, &r.body)), (200, None), "{k}");
    }
    assert!(metric(mgr, failures) > 0, "renewals were tried and failed");
    let log = cairn.stderr();
    assert!(
        log.contains("renewing its pages before reuse failed"),
        "{log}"
    );
    // The disk is back: the next reclaims renew, and new objects are stored.
    assert_eq!(manager_call(mgr, "/debug/renew?fail=0").0, 200);
    let before = metric(mgr, failures);
    let mut stored = 0;
    for k in 200..215 {
        let r = c.get(&format!("/obj/{k}"));
        assert_eq!(first_wrong(k, &r.body), None, "{k}");
        let r = c.get(&format!("/obj/{k}"));
        assert_eq!(first_wrong(k, &r.body), None, "{k}");
        stored += usize::from(r.header("x-cache") == Some("TCP_HIT"));
    }
    assert_eq!(
        metric(mgr, failures),
        before,
        "no failure once the disk is back"
    );
    assert!(stored >= 10, "cached again: {stored} of 15");
    assert!(
        cairn.stderr().contains("renewed; back in use"),
        "{}",
        cairn.stderr()
    );
}
