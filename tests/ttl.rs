//! The TTL rules end to end (TTL-1..9, RFC 9111 request directives and
//! stale-while-revalidate), one table or scenario per rule, against the real
//! binary and a test-owned origin. TTLs are seconds long; the tests sleep
//! past them.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::*;

const STATUS: &str = "<CacheStatusHeader>ON</CacheStatusHeader>";

fn reply(status: &str, extra: &str, body: &str) -> Reply {
    Reply::Bytes(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A config with the manager (for fileinfo), `options` in `<VHostDefault>`,
/// and `ttl_txt` as `svc/test.local/ttl.txt` when given.
fn start(origin: &Origin, options: &str, ttl_txt: Option<&str>) -> (Cairn, SocketAddr) {
    let dir = temp_dir("ttl");
    std::fs::write(
        dir.join("server.xml"),
        format!(
            "<Server><Host><Manager Port=\"0\" Listen=\"127.0.0.1\" HttpMethod=\"OFF\"><Allow>127.0.0.1</Allow></Manager></Host>{TEST_CACHE}<VHostDefault><Options>{STATUS}{options}</Options><OriginOptions><ReceiveTimeout>5</ReceiveTimeout></OriginOptions></VHostDefault></Server>"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost><Default>test.local</Default></Vhosts>",
            origin.addr
        ),
    )
    .unwrap();
    if let Some(t) = ttl_txt {
        std::fs::create_dir_all(dir.join("svc/test.local")).unwrap();
        std::fs::write(dir.join("svc/test.local/ttl.txt"), t).unwrap();
    }
    let c = Cairn::start(dir, 1);
    let log = c.wait_log("manager listening on http://");
    let rest = log.split("manager listening on http://").nth(1).unwrap();
    let mgr = rest[..rest.find('/').unwrap()].parse().unwrap();
    (c, mgr)
}

/// `TTLLeft` of the identity variant, from `/monitoring/fileinfo`.
fn ttl_left(mgr: SocketAddr, path: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(mgr).unwrap();
    write!(
        s,
        "GET /monitoring/fileinfo?url=test.local{path} HTTP/1.1\r\nHost: m\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let at = out
        .find("\"TTLLeft\":")
        .unwrap_or_else(|| panic!("{path} not cached: {out}"))
        + 10;
    out[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn get(c: &Cairn, path: &str, extra: &str) -> Response {
    let mut cl = c.connect();
    cl.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
    cl.response(false).expect("a response")
}

fn xc(r: &Response) -> &str {
    r.header("x-cache").unwrap_or("-")
}

/// Seconds from `now` to the next 00:00 UTC.
fn to_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[test]
fn ttl_1_2_6_the_priority_classes_and_ttl_txt_decide_the_ttl() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/a" | "/clock/x" => reply("200 OK", "", "a"),
        "/r" => reply("301 Moved", "Location: /a\r\n", "r"),
        "/n" | "/c404/x" => reply("404 Not Found", "", "n"),
        "/e" => reply("503 Busy", "", "e"),
        "/nc" => reply("200 OK", "Cache-Control: no-cache\r\n", "nc"),
        "/ns" => reply("200 OK", "Cache-Control: no-store\r\n", "ns"),
        "/ma" | "/custom/x" => reply("200 OK", "Cache-Control: max-age=70\r\n", "ma"),
        "/sm" => reply("200 OK", "Cache-Control: s-maxage=80\r\n", "sm"),
        _ => reply("200 OK", "", "?"),
    });
    let (c, mgr) = start(
        &origin,
        r#"<TTL><Res2xx>100</Res2xx><Res3xx>200</Res3xx><Res4xx>300</Res4xx><Res5xx>400</Res5xx><NoCache MaxAge="7">50</NoCache><NoStore>60</NoStore></TTL>"#,
        Some("/custom/*, 500\n$ORGSTATUS[404] & /c404/*, 600\n/clock/*, 1 day, 0 0\n"),
    );
    // (path, status, TTL: its class or rule)
    let table: &[(&str, u16, u64)] = &[
        ("/a", 200, 100),        // rescode: Res2xx
        ("/r", 301, 200),        // Res3xx
        ("/n", 404, 300),        // Res4xx
        ("/e", 503, 400),        // Res5xx
        ("/nc", 200, 50),        // cc_nocache: NoCache
        ("/ns", 200, 60),        // cc_nostore: NoStore
        ("/ma", 200, 70),        // cc_maxage
        ("/sm", 200, 100),       // rescode comes before cc_smaxage
        ("/custom/x", 200, 500), // custom (ttl.txt) before cc_maxage
        ("/c404/x", 404, 600),   // $ORGSTATUS
        ("/clock/x", 200, to_midnight().min(86_400)),
    ];
    for &(path, status, ttl) in table {
        let r = get(&c, path, "");
        assert_eq!((r.status, xc(&r)), (status, "TCP_MISS"), "{path}");
        let r = get(&c, path, "");
        // A stored error is a negative hit (STON's TCP_NEGATIVE_HIT).
        let want = if status >= 400 {
            "TCP_NEGATIVE_HIT"
        } else {
            "TCP_HIT"
        };
        assert_eq!(xc(&r), want, "{path}");
        let left = ttl_left(mgr, path);
        assert!(
            left <= ttl && left + 3 >= ttl,
            "{path}: TTL left {left}, want {ttl}"
        );
    }
    // NoCache MaxAge: what clients are told.
    assert_eq!(
        get(&c, "/nc", "").header("cache-control"),
        Some("max-age=7")
    );
    assert_eq!(origin.count(), table.len());
}

#[test]
fn ttl_2_each_304_grows_the_ttl_by_its_ratio_up_to_max() {
    let origin = Origin::start(|r| match r.header("if-none-match") {
        Some("\"v\"") => Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: \"v\"\r\n\r\n".to_vec()),
        _ => reply("200 OK", "ETag: \"v\"\r\n", "grows"),
    });
    let (c, _) = start(
        &origin,
        r#"<TTL><Res2xx Ratio="100" Max="3">1</Res2xx></TTL>"#,
        None,
    );
    assert_eq!(xc(&get(&c, "/g", "")), "TCP_MISS");
    std::thread::sleep(Duration::from_millis(1100));
    // 1 s, then 2 s (+100%), then 3 s (4 capped at Max).
    for fresh_for in [2000u64, 3000] {
        let t0 = Instant::now();
        assert_eq!(xc(&get(&c, "/g", "")), "TCP_REFRESH_HIT");
        std::thread::sleep(Duration::from_millis(fresh_for - 400).saturating_sub(t0.elapsed()));
        assert_eq!(
            xc(&get(&c, "/g", "")),
            "TCP_HIT",
            "fresh for {fresh_for} ms"
        );
        std::thread::sleep(Duration::from_millis(fresh_for + 150).saturating_sub(t0.elapsed()));
    }
    assert_eq!(xc(&get(&c, "/g", "")), "TCP_REFRESH_HIT", "capped at 3 s");
}

#[test]
fn ttl_3_base_request_counts_the_origin_time_against_the_ttl() {
    let slow = || {
        Origin::start(|_| {
            Reply::After(
                Duration::from_millis(1200),
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec(),
            )
        })
    };
    for (base, fresh_after_1s) in [("response", true), ("request", false)] {
        let o = slow();
        let (c, _) = start(
            &o,
            &format!(r#"<TTL Base="{base}"><Res2xx>2</Res2xx></TTL>"#),
            None,
        );
        assert_eq!(xc(&get(&c, "/s", "")), "TCP_MISS");
        std::thread::sleep(Duration::from_millis(1000));
        let hit = xc(&get(&c, "/s", "")) == "TCP_HIT";
        assert_eq!(hit, fresh_after_1s, "Base={base}");
    }
}

/// 0: answer, 1: close without a response, 2: 503, 3: 404.
fn switchable_origin(mode: Arc<AtomicU8>) -> Origin {
    Origin::start(move |r| match mode.load(Ordering::SeqCst) {
        1 => Reply::ThenClose(Vec::new()),
        2 => reply("503 Busy", "", "busy"),
        3 => reply("404 Not Found", "", "gone"),
        _ => reply("200 OK", "ETag: \"e\"\r\n", &format!("fresh {}", r.path)),
    })
}

#[test]
fn ttl_4_7_a_failed_or_erroring_origin_extends_or_replaces_by_the_switches() {
    let mode = Arc::new(AtomicU8::new(0));
    let origin = switchable_origin(mode.clone());
    let (c, mgr) = start(
        &origin,
        "<TTL><Res2xx>1</Res2xx><ConnectTimeout>20</ConnectTimeout></TTL>",
        None,
    );
    for p in ["/f", "/b", "/c"] {
        assert_eq!(get(&c, p, "").status, 200);
    }
    std::thread::sleep(Duration::from_millis(1100));
    // TTLExtensionByFail ON (default): stale served, TTL extended by <TTL><ConnectTimeout>.
    mode.store(1, Ordering::SeqCst);
    let r = get(&c, "/f", "");
    assert_eq!(
        (r.status, xc(&r), r.text().as_str()),
        (200, "TCP_REF_FAIL_HIT", "fresh /f")
    );
    let left = ttl_left(mgr, "/f");
    assert!((17..=20).contains(&left), "extended by 20 s: {left}");
    assert_eq!(xc(&get(&c, "/f", "")), "TCP_HIT");
    // TTLExtensionBy5xx ON (default): a 503 counts as a 304.
    mode.store(2, Ordering::SeqCst);
    let r = get(&c, "/b", "");
    assert_eq!((r.status, xc(&r)), (200, "TCP_REF_FAIL_HIT"));
    // TTLExtensionBy4xx OFF (default): a 404 replaces the object.
    mode.store(3, Ordering::SeqCst);
    let r = get(&c, "/c", "");
    assert_eq!((r.status, xc(&r)), (404, "TCP_REF_MISS"));

    // The switches the other way.
    let mode = Arc::new(AtomicU8::new(0));
    let origin = switchable_origin(mode.clone());
    let (c, _) = start(
        &origin,
        "<TTL><Res2xx>1</Res2xx></TTL><TTLExtensionByFail>OFF</TTLExtensionByFail><TTLExtensionBy4xx>ON</TTLExtensionBy4xx><TTLExtensionBy5xx>OFF</TTLExtensionBy5xx>",
        None,
    );
    for p in ["/f", "/b", "/c"] {
        assert_eq!(get(&c, p, "").status, 200);
    }
    std::thread::sleep(Duration::from_millis(1100));
    mode.store(1, Ordering::SeqCst);
    assert_eq!(get(&c, "/f", "").status, 502);
    mode.store(2, Ordering::SeqCst);
    assert_eq!(get(&c, "/b", "").status, 503);
    mode.store(3, Ordering::SeqCst);
    let r = get(&c, "/c", "");
    assert_eq!((r.status, xc(&r)), (200, "TCP_REF_FAIL_HIT"));
}

#[test]
fn ttl_8_refresh_expired_off_answers_100_clients_from_the_stale_copy_with_one_revalidation() {
    let origin = Origin::start(|r| match r.header("if-none-match") {
        // The revalidation is slow: nobody may wait for it.
        Some(_) => Reply::After(
            Duration::from_millis(1500),
            b"HTTP/1.1 304 Not Modified\r\nETag: \"s\"\r\n\r\n".to_vec(),
        ),
        None => reply("200 OK", "ETag: \"s\"\r\n", "the stale body"),
    });
    let (c, _) = start(
        &origin,
        "<TTL><Res2xx>1</Res2xx></TTL><RefreshExpired>OFF</RefreshExpired>",
        None,
    );
    assert_eq!(xc(&get(&c, "/s", "")), "TCP_MISS");
    std::thread::sleep(Duration::from_millis(1100));
    let n = 100;
    // Connections first, so the timings are of requests, not of handshakes.
    let clients: Vec<_> = (0..n).map(|_| c.connect()).collect();
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut cl| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let t0 = Instant::now();
                cl.send(b"GET /s HTTP/1.1\r\nHost: test.local\r\n\r\n");
                let r = cl.response(false).unwrap();
                (t0.elapsed(), r.status, r.text())
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in threads {
        let (took, status, body) = t.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "the stale body"));
        times.push(took);
    }
    times.sort();
    let median = times[n / 2];
    println!("stale answers: median {:?}, max {:?}", median, times[n - 1]);
    // The revalidation takes 1.5 s: every client was answered without it.
    assert!(
        times[n - 1] < Duration::from_millis(1000),
        "{:?}",
        times[n - 1]
    );
    // Measured alone: a median of 0.36 ms (5 ms with the other tests of
    // this file running on the same 2 cores); the bound leaves room for that.
    assert!(median < Duration::from_millis(25), "median {median:?}");
    std::thread::sleep(Duration::from_millis(1700));
    let revalidations = origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.header("if-none-match").is_some())
        .count();
    assert_eq!(
        revalidations, 1,
        "exactly one revalidation reached the origin"
    );
    // The 304 swapped fresh times in: a plain hit now.
    assert_eq!(xc(&get(&c, "/s", "")), "TCP_HIT");
}

#[test]
fn ttl_2_9_client_no_cache_nocache_expire_and_nostore_bypass() {
    let origin = Origin::start(|r| match (r.path.as_str(), r.header("if-none-match")) {
        (_, Some("\"k\"")) => {
            Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: \"k\"\r\n\r\n".to_vec())
        }
        ("/nc", _) => reply("200 OK", "ETag: \"k\"\r\nCache-Control: no-cache\r\n", "nc"),
        ("/ns", _) => reply("200 OK", "Cache-Control: no-store\r\n", "ns"),
        _ => reply("200 OK", "ETag: \"k\"\r\n", "k"),
    });
    let no_cache = "Cache-Control: no-cache\r\n";
    // Defaults: a client's no-cache is ignored (STON).
    let (c, _) = start(&origin, "", None);
    get(&c, "/k", "");
    assert_eq!(xc(&get(&c, "/k", no_cache)), "TCP_HIT");
    assert_eq!(xc(&get(&c, "/k", "Pragma: no-cache\r\n")), "TCP_HIT");
    // NoCacheRequestExpire ON: the object is revalidated first.
    let (c, _) = start(
        &origin,
        "<NoCacheRequestExpire>ON</NoCacheRequestExpire>",
        None,
    );
    get(&c, "/k", "");
    assert_eq!(xc(&get(&c, "/k", no_cache)), "TCP_REFRESH_HIT");
    assert_eq!(
        xc(&get(&c, "/k", "Cache-Control: max-age=0\r\n")),
        "TCP_REFRESH_HIT"
    );
    assert_eq!(xc(&get(&c, "/k", "")), "TCP_HIT");
    // BypassNoCacheRequest ON: straight to the origin.
    let (c, _) = start(
        &origin,
        "<BypassNoCacheRequest>ON</BypassNoCacheRequest>",
        None,
    );
    get(&c, "/k", "");
    let before = origin.count();
    assert_eq!(xc(&get(&c, "/k", no_cache)), "TCP_CLIENT_REFRESH_MISS");
    assert_eq!(origin.count(), before + 1);
    // NoCache Expire ON: stored expired, every use revalidates; NoStore Bypass ON:
    // never stored.
    let (c, _) = start(
        &origin,
        r#"<TTL><NoCache Expire="ON">60</NoCache><NoStore Bypass="ON">60</NoStore></TTL>"#,
        None,
    );
    assert_eq!(xc(&get(&c, "/nc", "")), "TCP_MISS");
    assert_eq!(xc(&get(&c, "/nc", "")), "TCP_REFRESH_HIT");
    assert_eq!(xc(&get(&c, "/nc", "")), "TCP_REFRESH_HIT");
    let before = origin.count();
    assert_eq!(xc(&get(&c, "/ns", "")), "TCP_MISS");
    // Then the URL is bypassed (no lookup, no coalesced fill) for the NoStore TTL.
    assert_eq!(xc(&get(&c, "/ns", "")), "TCP_CLIENT_REFRESH_MISS");
    assert_eq!(
        origin.count(),
        before + 2,
        "no-store with Bypass is never stored"
    );
    let (c, _) = start(
        &origin,
        r#"<TTL><NoStore Bypass="ON">1</NoStore></TTL>"#,
        None,
    );
    assert_eq!(xc(&get(&c, "/ns", "")), "TCP_MISS");
    assert_eq!(xc(&get(&c, "/ns", "")), "TCP_CLIENT_REFRESH_MISS");
    assert_eq!(
        xc(&get(&c, "/nc", "")),
        "TCP_MISS",
        "other URLs are not marked"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        xc(&get(&c, "/ns", "")),
        "TCP_MISS",
        "the mark lasts the TTL"
    );
}

#[test]
fn rfc9111_request_directives_and_stale_while_revalidate() {
    let origin = Origin::start(|r| {
        match (r.path.as_str(), r.header("if-none-match")) {
        (_, Some("\"w\"")) => Reply::After(
            Duration::from_millis(800),
            b"HTTP/1.1 304 Not Modified\r\nETag: \"w\"\r\nCache-Control: max-age=1, stale-while-revalidate=30\r\n\r\n".to_vec(),
        ),
        ("/swr", _) => reply(
            "200 OK",
            "ETag: \"w\"\r\nCache-Control: max-age=1, stale-while-revalidate=30\r\n",
            "swr",
        ),
        ("/mr", _) => reply(
            "200 OK",
            "ETag: \"w\"\r\nCache-Control: max-age=1, must-revalidate, stale-while-revalidate=30\r\n",
            "mr",
        ),
        _ => reply("200 OK", "ETag: \"w\"\r\nCache-Control: max-age=60\r\n", "d"),
    }
    });
    let (c, _) = start(&origin, r#"<TTL Mode="rfc9111"/>"#, None);
    // Request directives on a fresh object (max-age=60).
    get(&c, "/d", "");
    let revalidated = |extra: &str| {
        let t0 = Instant::now();
        let r = get(&c, "/d", extra);
        (
            xc(&r).to_string(),
            t0.elapsed() >= Duration::from_millis(700),
        )
    };
    assert_eq!(revalidated(""), ("TCP_HIT".into(), false));
    assert_eq!(
        revalidated("Cache-Control: no-cache\r\n"),
        ("TCP_REFRESH_HIT".into(), true)
    );
    assert_eq!(
        revalidated("Cache-Control: max-age=0\r\n"),
        ("TCP_REFRESH_HIT".into(), true)
    );
    assert_eq!(
        revalidated("Pragma: no-cache\r\n"),
        ("TCP_REFRESH_HIT".into(), true)
    );
    assert_eq!(
        revalidated("Cache-Control: min-fresh=3600\r\n"),
        ("TCP_REFRESH_HIT".into(), true)
    );
    assert_eq!(
        revalidated("Cache-Control: max-age=3600\r\n"),
        ("TCP_HIT".into(), false)
    );
    // only-if-cached: a stored response, or 504.
    assert_eq!(
        get(&c, "/d", "Cache-Control: only-if-cached\r\n").status,
        200
    );
    assert_eq!(
        get(&c, "/nowhere", "Cache-Control: only-if-cached\r\n").status,
        504
    );
    // stale-while-revalidate: stale at once, one revalidation behind.
    get(&c, "/swr", "");
    get(&c, "/mr", "");
    std::thread::sleep(Duration::from_millis(1100));
    let t0 = Instant::now();
    let r = get(&c, "/swr", "");
    assert_eq!((xc(&r), r.text().as_str()), ("TCP_HIT", "swr"));
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "served stale at once"
    );
    // max-stale accepts the stale copy as it is.
    assert_eq!(
        xc(&get(&c, "/swr", "Cache-Control: max-stale=60\r\n")),
        "TCP_HIT"
    );
    // must-revalidate forbids serving stale: revalidated in the foreground.
    let t0 = Instant::now();
    assert_eq!(xc(&get(&c, "/mr", "")), "TCP_REFRESH_HIT");
    assert!(t0.elapsed() >= Duration::from_millis(700));
    std::thread::sleep(Duration::from_millis(1000));
    let seen = origin.seen.lock().unwrap();
    let swr_revalidations = seen
        .iter()
        .filter(|r| r.path == "/swr" && r.header("if-none-match").is_some())
        .count();
    assert_eq!(swr_revalidations, 1);
}

#[test]
fn ston_304s_keep_the_class_ttl_after_no_cache_and_after_an_expire() {
    let origin = Origin::start(|r| match (r.path.as_str(), r.header("if-none-match")) {
        ("/nc", Some(_)) => Reply::Bytes(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"n\"\r\nCache-Control: no-cache\r\n\r\n".to_vec(),
        ),
        ("/nc", None) => reply("200 OK", "ETag: \"n\"\r\nCache-Control: no-cache\r\n", "nc"),
        (_, Some(_)) => Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec()),
        _ => reply("200 OK", "ETag: \"x\"\r\n", "x"),
    });
    let (c, mgr) = start(
        &origin,
        "<TTL><Res2xx>100</Res2xx><NoCache>1</NoCache></TTL>",
        None,
    );
    // A NoCache object's 304 says no-cache again: it keeps its 1 s TTL.
    assert_eq!(xc(&get(&c, "/nc", "")), "TCP_MISS");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(xc(&get(&c, "/nc", "")), "TCP_REFRESH_HIT");
    assert_eq!(xc(&get(&c, "/nc", "")), "TCP_HIT");
    // Expired by the manager, then a 304: fresh again for the class's TTL.
    assert_eq!(xc(&get(&c, "/x", "")), "TCP_MISS");
    let mut s = std::net::TcpStream::connect(mgr).unwrap();
    s.write_all(b"GET /command/expire?url=test.local/x HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("\"Count\":1"), "{out}");
    assert_eq!(xc(&get(&c, "/x", "")), "TCP_REFRESH_HIT");
    assert_eq!(xc(&get(&c, "/x", "")), "TCP_HIT");
    let left = ttl_left(mgr, "/x");
    assert!(left >= 100, "grown from the class TTL: {left}");
}
