//! Cache fills against hostile traffic: clients that hang up after the head,
//! origins that dribble, more misses at once than a shard should carry, and
//! bodies of unknown length.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

const OBJECT: usize = 4 << 20;

/// Bytes each origin connection of [`dribbling_origin`] wrote before it finished or
/// failed (cairn closed it).
static SENT: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn dribbling_origin(s: &mut TcpStream) {
    dribble(s, &SENT);
}

/// A 4 MiB object (distinct per query string, all cacheable), written 1400 bytes
/// at a time at about 7 MB/s, as a slow or far origin does; what each connection
/// sent goes to `record`.
fn dribble(s: &mut TcpStream, record: &Mutex<Vec<u64>>) {
    let _ = s.set_nodelay(true);
    let head = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: {OBJECT}\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let piece = [b'x'; 1400];
    let mut sent = 0u64;
    while (sent as usize) < OBJECT {
        let n = piece.len().min(OBJECT - sent as usize);
        if s.write_all(&piece[..n]).is_err() {
            break;
        }
        sent += n as u64;
        std::thread::sleep(Duration::from_micros(200));
    }
    record.lock().unwrap().push(sent);
}

/// Sends a GET and reads up to the end of the response head, then hangs up.
fn get_head_and_hang_up(addr: std::net::SocketAddr, path: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

fn x_cache(c: &Cairn, path: &str) -> (u16, String, usize) {
    let mut cl = c.connect();
    cl.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
    let r = cl.response(false).unwrap();
    (
        r.status,
        r.header("x-cache").unwrap_or("-").to_string(),
        r.body.len(),
    )
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn eight_abandoned_fills_stop_early_and_hold_no_memory() {
    let origin = scripted_origin(dribbling_origin);
    let dir = config_dir(
        &origin.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    // A cache large enough that eight 4 MiB abandons fit the waste budget (1/8
    // of the quota per minute); the next test covers going past it.
    edit_server_xml(&dir, r#"Quota="64MB""#, r#"Quota="512MB""#);
    let c = Cairn::start(dir, 1);
    // Warm up the shard (its first request allocates its buffers).
    let _ = x_cache(&c, "/warm-up");
    let before = status_kb(c.pid(), "VmRSS");
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let addr = c.addr;
            std::thread::spawn(move || get_head_and_hang_up(addr, &format!("/big?k={i}")))
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    wait_for(
        "the origin to see eight closes",
        Duration::from_secs(10),
        || SENT.lock().unwrap().len() >= 9,
    );
    let after = status_kb(c.pid(), "VmRSS");
    let sent: Vec<u64> = SENT.lock().unwrap().clone();
    // The warm-up read its (4 MiB, any path) object in full: one complete entry.
    let abandoned: Vec<u64> = sent
        .iter()
        .copied()
        .filter(|&n| n < OBJECT as u64)
        .collect();
    assert!(
        abandoned.len() >= 8,
        "every hung-up fill was abandoned: origin sent {sent:?}"
    );
    assert!(
        abandoned.iter().all(|&n| n < OBJECT as u64 / 2),
        "abandoned fills stop early: origin sent {sent:?}"
    );
    eprintln!("RSS {before} kB -> {after} kB; origin sent {sent:?}");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} kB to {after} kB for 8 abandoned 4 MiB fills"
    );
    // Nothing half-written is served: the next request fills again, in full.
    let (status, xc, len) = x_cache(&c, "/big?k=0");
    assert_eq!((status, xc.as_str(), len), (200, "TCP_MISS", OBJECT));
}

/// A fast origin: the object in one write.
fn object_origin(body: usize) -> Origin {
    Origin::start(move |_| {
        let mut v = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: {body}\r\n\r\n"
        )
        .into_bytes();
        v.resize(v.len() + body, b'y');
        Reply::After(Duration::from_millis(300), v)
    })
}

#[test]
fn background_fill_percent_zero_finishes_a_fill_nobody_waits_for() {
    static SENT0: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    fn origin_once(s: &mut TcpStream) {
        dribble(s, &SENT0);
    }
    let origin = scripted_origin(origin_once);
    let dir = config_dir(
        &origin.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    add_cairn_settings(&dir, "<BackgroundFillPercent>0</BackgroundFillPercent>");
    let c = Cairn::start(dir, 1);
    get_head_and_hang_up(c.addr, "/whole");
    wait_for("the fill to finish", Duration::from_secs(10), || {
        SENT0.lock().unwrap().first() == Some(&(OBJECT as u64))
    });
    std::thread::sleep(Duration::from_millis(100));
    let (status, xc, len) = x_cache(&c, "/whole");
    assert_eq!((status, xc.as_str(), len), (200, "TCP_HIT", OBJECT));
}

#[test]
fn misses_past_max_fills_per_shard_are_passed_through_uncached() {
    let origin = object_origin(64 << 10);
    let dir = config_dir(
        &origin.addr.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    add_cairn_settings(&dir, "<MaxFillsPerShard>2</MaxFillsPerShard>");
    let c = Cairn::start(dir, 1);
    // Five distinct misses at once, on one shard: two fill, three pass through.
    let addr = c.addr;
    let clients: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                let mut cl = Client::connect(addr);
                cl.send(format!("GET /m{i} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
                let r = cl.response(false).unwrap();
                assert_eq!((r.status, r.body.len()), (200, 64 << 10));
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    let hits = (0..5)
        .filter(|i| x_cache(&c, &format!("/m{i}")).1 == "TCP_HIT")
        .count();
    assert_eq!(hits, 2, "only the fills within the cap were stored");
    assert!(
        c.wait_log("MaxFillsPerShard reached")
            .contains("passed through uncached"),
        "{}",
        c.stderr()
    );
}

#[test]
fn chunked_bodies_are_gathered_only_within_the_fill_memory_budget() {
    // 3 MiB chunked, in 1400-byte chunks: relayed whole either way; stored only
    // when the shard's gathering budget holds it.
    fn chunked(s: &mut TcpStream) {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let piece = [b'z'; 1400];
        let mut left = 3usize << 20;
        let mut out = Vec::new();
        while left > 0 {
            let n = left.min(piece.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&piece[..n]);
            out.extend_from_slice(b"\r\n");
            left -= n;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        let _ = s.write_all(&out);
    }
    let origin = scripted_origin(chunked);
    for (budget, stored) in [("1MB", false), ("8MB", true)] {
        let dir = config_dir(
            &origin.to_string(),
            "<CacheStatusHeader>ON</CacheStatusHeader>",
            "",
        );
        add_cairn_settings(
            &dir,
            &format!("<FillMemoryPerShard>{budget}</FillMemoryPerShard>"),
        );
        let c = Cairn::start(dir, 1);
        let (status, _, len) = x_cache(&c, "/chunked");
        assert_eq!(
            (status, len),
            (200, 3 << 20),
            "relayed whole (budget {budget})"
        );
        let (_, xc, len) = x_cache(&c, "/chunked");
        assert_eq!(len, 3 << 20);
        assert_eq!(xc == "TCP_HIT", stored, "budget {budget}: {xc}");
    }
}

#[test]
fn a_relay_of_an_uncacheable_response_holds_no_fill_place() {
    // One place per shard. A slow, uncacheable download (Set-Cookie) is in
    // progress; a cacheable miss meanwhile must still be filled and stored.
    fn origin(s: &mut TcpStream) {
        dribble_or_object(s);
    }
    fn dribble_or_object(s: &mut TcpStream) {
        // scripted_origin read the request already; tell them apart by a peek
        // at nothing: the first connection is the slow one.
        static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
        if FIRST.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = s.write_all(
                format!("HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Length: {OBJECT}\r\n\r\n")
                    .as_bytes(),
            );
            for _ in 0..40 {
                if s.write_all(&[b'c'; 1400]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: 5\r\n\r\nhello",
            );
        }
    }
    let addr = scripted_origin(origin);
    let dir = config_dir(
        &addr.to_string(),
        // RFC 9111: a Set-Cookie response is not stored (STON strips and stores).
        "<CacheStatusHeader>ON</CacheStatusHeader><TTL Mode=\"rfc9111\"/>",
        "",
    );
    add_cairn_settings(&dir, "<MaxFillsPerShard>1</MaxFillsPerShard>");
    let c = Cairn::start(dir, 1);
    let mut slow = TcpStream::connect(c.addr).unwrap();
    slow.write_all(b"GET /personal HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 512];
    let _ = slow.read(&mut first); // the relay has started
    let (status, xc, _) = x_cache(&c, "/small");
    assert_eq!((status, xc.as_str()), (200, "TCP_MISS"));
    let (_, xc, _) = x_cache(&c, "/small");
    assert_eq!(
        xc, "TCP_HIT",
        "the miss was filled and stored, not passed through"
    );
    drop(slow);
}

#[test]
fn past_the_waste_budget_fills_nobody_waits_for_are_finished_and_stored() {
    static SENT_B: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    fn origin_b(s: &mut TcpStream) {
        dribble(s, &SENT_B);
    }
    let origin = scripted_origin(origin_b);
    // 64 MiB of cache, one shard: at most 8 MiB a minute may be given up.
    let dir = config_dir(
        &origin.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    let c = Cairn::start(dir, 1);
    for i in 0..6 {
        get_head_and_hang_up(c.addr, &format!("/b?k={i}"));
    }
    wait_for(
        "six origin connections to end",
        Duration::from_secs(15),
        || SENT_B.lock().unwrap().len() >= 6,
    );
    let sent = SENT_B.lock().unwrap().clone();
    let abandoned = sent.iter().filter(|&&n| n < OBJECT as u64).count();
    assert_eq!(abandoned, 2, "two 4 MiB abandons fit 8 MiB: {sent:?}");
    std::thread::sleep(Duration::from_millis(200));
    let stored = (0..6)
        .filter(|i| x_cache(&c, &format!("/b?k={i}")).1 == "TCP_HIT")
        .count();
    assert_eq!(
        stored, 4,
        "the fills past the budget were finished and stored"
    );
}

/// Origin connections [`paced_pattern`] served, and how many wrote the whole body.
static PATTERN_CONNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PATTERN_DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const PATTERN: usize = 1 << 20;

fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// A 1 MiB object whose byte `i` is `i % 251`, in 16 KiB pieces 5 ms apart
/// (about a third of a second in all), so a range near the start is answered
/// long before the body ends.
fn paced_pattern(s: &mut TcpStream) {
    use std::sync::atomic::Ordering::SeqCst;
    PATTERN_CONNS.fetch_add(1, SeqCst);
    if write_pattern(s, Duration::from_millis(5)) {
        PATTERN_DONE.fetch_add(1, SeqCst);
    }
}

/// [`PATTERN`]'s object in 16 KiB pieces `pause` apart; `false` when the
/// client went away first.
fn write_pattern(s: &mut TcpStream, pause: Duration) -> bool {
    let _ = s.set_nodelay(true);
    let head = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nETag: \"p1\"\r\nContent-Length: {PATTERN}\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let body: Vec<u8> = (0..PATTERN).map(pattern_byte).collect();
    for piece in body.chunks(16 << 10) {
        if s.write_all(piece).is_err() {
            return false;
        }
        std::thread::sleep(pause);
    }
    true
}

#[test]
fn a_range_on_a_miss_is_answered_from_the_fill_as_a_206() {
    use std::sync::atomic::Ordering::SeqCst;
    let origin = scripted_origin(paced_pattern);
    let dir = config_dir(
        &origin.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    // By default a fill the ranged client left is abandoned below 90% (so a
    // 1-byte range cannot make cairn fetch whole objects for free, RangeAmp):
    // here it is finished, so the stored object can serve the next range.
    add_cairn_settings(&dir, "<BackgroundFillPercent>0</BackgroundFillPercent>");
    let cairn = Cairn::start(dir, 1);
    let ask = |path: &str, range: &str| {
        let mut c = cairn.connect();
        c.send(
            format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nRange: {range}\r\n\r\n").as_bytes(),
        );
        c.response(false).unwrap()
    };
    let want = |a: usize, b: usize| (a..b).map(pattern_byte).collect::<Vec<u8>>();

    // One range: a 206 of exactly those bytes, before the origin has sent the rest.
    let r = ask("/a", "bytes=100-109");
    assert_eq!(PATTERN_DONE.load(SeqCst), 0, "answered while the fill runs");
    assert_eq!(
        (r.status, r.header("content-range"), r.header("x-cache")),
        (206, Some("bytes 100-109/1048576"), Some("TCP_MISS"))
    );
    assert_eq!(r.body, want(100, 110));
    assert_eq!(r.header("content-length"), Some("10"));

    // The fill went on without the client and stored the object: any range is a hit.
    wait_for("the fill of /a", Duration::from_secs(10), || {
        PATTERN_DONE.load(SeqCst) >= 1
    });
    let mut r = ask("/a", "bytes=-5");
    for _ in 0..50 {
        if r.header("x-cache") == Some("TCP_HIT") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        r = ask("/a", "bytes=-5");
    }
    assert_eq!(
        (r.status, r.header("x-cache"), r.header("content-range")),
        (206, Some("TCP_HIT"), Some("bytes 1048571-1048575/1048576"))
    );
    assert_eq!(r.body, want(PATTERN - 5, PATTERN));
    assert_eq!(PATTERN_CONNS.load(SeqCst), 1, "one origin fetch for /a");

    // A range that ends past the body is clamped; one wholly past it is a 416.
    let r = ask("/b", "bytes=1048000-2000000");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 1048000-1048575/1048576"))
    );
    assert_eq!(r.body, want(1_048_000, PATTERN));
    let r = ask("/c", "bytes=2000000-");
    assert_eq!(
        (r.status, r.header("content-range"), r.body.len()),
        (416, Some("bytes */1048576"), 0)
    );
    // Several ranges on a miss: the whole object (RFC 9110 §14.2 allows it).
    let r = ask("/d", "bytes=0-1,10-11");
    assert_eq!((r.status, r.body.len()), (200, PATTERN));
    assert_eq!(r.body, want(0, PATTERN));
    // If-Range on a miss: the whole object too.
    let mut c = cairn.connect();
    c.send(b"GET /e HTTP/1.1\r\nHost: test.local\r\nRange: bytes=0-1\r\nIf-Range: \"p1\"\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.body.len()), (200, PATTERN));
}

/// [`PATTERN`]'s bytes over about 3 s: slower than the follower's wait
/// (`ConnectTimeout` + `ReceiveTimeout`, 2 s in the test) for the whole body,
/// never idle for that long.
fn slow_pattern(s: &mut TcpStream) {
    write_pattern(s, Duration::from_millis(45));
}

#[test]
fn a_range_near_the_end_waits_for_a_slow_fill_without_timing_out() {
    let origin = scripted_origin(slow_pattern);
    let dir = config_dir(
        &origin.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "<ConnectTimeout>1</ConnectTimeout><ReceiveTimeout>1</ReceiveTimeout>",
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let started = Instant::now();
    c.send(b"GET /far HTTP/1.1\r\nHost: test.local\r\nRange: bytes=-10\r\n\r\n");
    let r = c.response(false).expect("a whole response");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the fill took longer than the wait: the case under test"
    );
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 1048566-1048575/1048576"))
    );
    assert_eq!(
        r.body,
        (PATTERN - 10..PATTERN)
            .map(pattern_byte)
            .collect::<Vec<u8>>()
    );
}
