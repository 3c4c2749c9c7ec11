//! STON client semantics, one test per rule ID (spec/ston-http.md), against the
//! real binary with a test-owned origin.

mod support;

use std::time::Duration;
use support::*;

const STATUS: &str = "<CacheStatusHeader>ON</CacheStatusHeader>";

fn with_body(status: &str, headers: &str, body: &[u8]) -> Reply {
    let mut v = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    Reply::Bytes(v)
}

fn origin() -> Origin {
    Origin::start(|r| {
        match r.path.as_str() {
        "/plain" => with_body("200 OK", "Content-Type: text/plain\r\nServer: origin/1.0\r\nX-Custom: yes\r\nCache-Control: max-age=600\r\n", b"plain"),
        "/noetag" => with_body(
            "200 OK",
            "Content-Type: text/plain\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nCache-Control: max-age=600\r\n",
            b"0123456789",
        ),
        "/range" => with_body(
            "200 OK",
            "Content-Type: text/plain\r\nETag: \"r1\"\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nCache-Control: max-age=600\r\n",
            b"abcdefghijklmnopqrstuvwxyz",
        ),
        "/aged" => with_body("200 OK", "Age: 100\r\nCache-Control: max-age=600\r\n", b"aged"),
        "/private" => with_body("200 OK", "Server: origin/1.0\r\nX-Custom: yes\r\nSet-Cookie: s=1\r\nCache-Control: private\r\n", b"p"),
        _ => ok(b"x"),
    }
    })
}

fn start(o: &Origin, options: &str) -> Cairn {
    Cairn::start(
        config_dir(&o.addr.to_string(), &format!("{STATUS}{options}"), ""),
        1,
    )
}

#[test]
fn ka_5_max_counts_down_then_closes() {
    let o = origin();
    let cairn = start(&o, r#"<KeepAliveHeader Max="3">ON</KeepAliveHeader>"#);
    let mut c = cairn.connect();
    for want in [
        "timeout=10, max=3",
        "timeout=10, max=2",
        "timeout=10, max=1",
    ] {
        let r = c.get("/plain");
        assert_eq!(r.header("connection"), Some("Keep-Alive"));
        assert_eq!(r.header("keep-alive"), Some(want));
    }
    let r = c.get("/plain");
    assert_eq!(r.header("connection"), Some("Close"));
    assert_eq!(r.header("keep-alive"), None);
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn ka_1_2_3_7_connection_headers() {
    let o = origin();
    let cairn = start(&o, "<KeepAliveHeader>OFF</KeepAliveHeader>");
    let mut c = cairn.connect();
    let r = c.get("/plain");
    assert_eq!(
        (r.header("connection"), r.header("keep-alive")),
        (Some("Keep-Alive"), None),
        "KA-3"
    );
    c.send(b"GET /plain HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(
        (r.header("connection"), r.header("keep-alive")),
        (Some("Close"), None),
        "KA-1"
    );
    assert!(c.is_closed(Duration::from_secs(5)));
    let mut c = cairn.connect();
    c.send(b"GET /plain HTTP/1.0\r\n\r\n");
    assert_eq!(
        c.response(false).unwrap().header("connection"),
        Some("Close"),
        "KA-7"
    );
    let cairn = start(&o, "<ConnectionHeader>close</ConnectionHeader>");
    let mut c = cairn.connect();
    assert_eq!(c.get("/plain").header("connection"), Some("Close"), "KA-2");
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn via_1_srv_1_orig_1_defaults_and_switches() {
    let o = origin();
    let cairn = start(&o, "");
    let mut c = cairn.connect();
    for _ in 0..2 {
        let r = c.get("/plain");
        assert_eq!(
            r.header("via"),
            Some(concat!("cairn/", env!("CARGO_PKG_VERSION"))),
            "VIA-1"
        );
        assert_eq!(
            r.header("server"),
            Some("origin/1.0"),
            "SRV-1 forwards the origin's"
        );
        assert_eq!(
            r.header("x-custom"),
            None,
            "ORIG-1 OFF: standard headers only"
        );
    }
    // Errors carry Via too; a pass-through keeps Set-Cookie for the client.
    let r = c.get("/private");
    assert_eq!(r.header("set-cookie"), Some("s=1"));
    assert_eq!(r.header("x-custom"), None);
    let mut bad = cairn.connect();
    bad.send(b"GET / HTTP/1.1\r\n\r\n");
    assert!(bad.response(false).unwrap().header("via").is_some());

    let cairn = start(&o, "<ViaHeader>OFF</ViaHeader><ServerHeader>OFF</ServerHeader><OriginalHeader>ON</OriginalHeader>");
    let mut c = cairn.connect();
    for _ in 0..2 {
        let r = c.get("/plain");
        assert_eq!(r.header("via"), None);
        assert_eq!(r.header("server"), None);
        assert_eq!(r.header("x-custom"), Some("yes"));
    }
}

#[test]
fn age_1_and_etag_1() {
    let o = origin();
    let cairn = start(&o, "");
    let mut c = cairn.connect();
    c.get("/aged");
    assert_eq!(c.get("/aged").header("age"), None, "AGE-1 OFF by default");
    let r = c.get("/noetag");
    let generated = r
        .header("etag")
        .expect("ETAG-1: a generated ETag")
        .to_string();
    assert_eq!(generated, format!("\"{:x}-{:x}\"", 784111777u64, 10));
    assert_eq!(c.get("/noetag").header("etag"), Some(generated.as_str()));

    let cairn = start(&o, "<AgeHeader>ON</AgeHeader><ETagHeader>OFF</ETagHeader>");
    let mut c = cairn.connect();
    c.get("/aged");
    let r = c.get("/aged");
    assert_eq!(r.header("x-cache"), Some("TCP_HIT"));
    let age: u64 = r.header("age").expect("AGE-1 ON").parse().unwrap();
    assert!(
        (100..110).contains(&age),
        "age {age} includes the origin's Age: 100"
    );
    c.get("/range");
    let r = c.get("/range");
    assert_eq!(r.header("etag"), None, "ETAG-1 OFF");
    // OFF hides it, but it is still used for conditionals.
    c.send(b"GET /range HTTP/1.1\r\nHost: test.local\r\nIf-None-Match: \"r1\"\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 304);
}

#[test]
fn rg_1_ranges_from_cache() {
    let o = origin();
    let cairn = start(&o, "");
    let mut c = cairn.connect();
    c.get("/range");
    let range = |c: &mut Client, spec: &str| {
        c.send(
            format!("GET /range HTTP/1.1\r\nHost: test.local\r\nRange: {spec}\r\n\r\n").as_bytes(),
        );
        c.response(false).unwrap()
    };
    let r = range(&mut c, "bytes=0-4");
    assert_eq!(
        (r.status, r.text().as_str(), r.header("content-range")),
        (206, "abcde", Some("bytes 0-4/26"))
    );
    let r = range(&mut c, "bytes=20-100");
    assert_eq!(
        (r.status, r.text().as_str(), r.header("content-range")),
        (206, "uvwxyz", Some("bytes 20-25/26")),
        "clamped"
    );
    let r = range(&mut c, "bytes=-3");
    assert_eq!(r.text(), "xyz");
    let r = range(&mut c, "bytes=30-40");
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */26"))
    );
    let r = range(&mut c, "bytes=5-2");
    assert_eq!(
        (r.status, r.text().len()),
        (200, 26),
        "malformed Range is ignored"
    );
    let r = range(&mut c, "bytes=0-1,24-");
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap().to_string();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart");
    let body = r.text();
    assert_eq!(body.matches(&format!("--{boundary}")).count(), 3);
    assert!(
        body.contains("Content-Range: bytes 0-1/26\r\n\r\nab\r\n"),
        "{body}"
    );
    assert!(
        body.contains("Content-Range: bytes 24-25/26\r\n\r\nyz\r\n"),
        "{body}"
    );
    assert!(body.contains("Content-Type: text/plain"));
    assert_eq!(
        o.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "all served from cache"
    );
}

#[test]
fn ir_1_lm_1_cf_1_conditionals_from_cache() {
    let o = origin();
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LATER: &str = "Mon, 07 Nov 1994 08:49:37 GMT";
    let ask = |c: &mut Client, extra: &str| {
        c.send(format!("GET /range HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
        c.response(false).unwrap().status
    };
    // Defaults: IfRange OFF (ignored), LastModifiedCheck exact, ContentFreshnessCheck BOTH.
    let cairn = start(&o, "");
    let mut c = cairn.connect();
    c.get("/range");
    assert_eq!(
        ask(&mut c, "Range: bytes=0-1\r\nIf-Range: \"other\"\r\n"),
        206,
        "IR-1 OFF ignores If-Range"
    );
    assert_eq!(
        ask(&mut c, &format!("If-Modified-Since: {LM}\r\n")),
        304,
        "LM-1 exact"
    );
    assert_eq!(
        ask(&mut c, &format!("If-Modified-Since: {LATER}\r\n")),
        200,
        "LM-1 exact: later is not equal"
    );
    assert_eq!(
        ask(&mut c, "If-None-Match: \"r1\"\r\n"),
        304,
        "CF-1 BOTH: ETag"
    );
    assert_eq!(ask(&mut c, "If-None-Match: \"zz\"\r\n"), 200);

    let cairn = start(&o, "<IfRange>ON</IfRange><LastModifiedCheck>orlater</LastModifiedCheck><ContentFreshnessCheck>ETAG</ContentFreshnessCheck>");
    let mut c = cairn.connect();
    c.get("/range");
    assert_eq!(
        ask(&mut c, "Range: bytes=0-1\r\nIf-Range: \"other\"\r\n"),
        200,
        "IR-1 ON: mismatch gives the full 200"
    );
    assert_eq!(ask(&mut c, "Range: bytes=0-1\r\nIf-Range: \"r1\"\r\n"), 206);
    assert_eq!(
        ask(&mut c, &format!("Range: bytes=0-1\r\nIf-Range: {LM}\r\n")),
        206
    );
    assert_eq!(
        ask(&mut c, &format!("If-Modified-Since: {LATER}\r\n")),
        200,
        "CF-1 ETAG ignores dates"
    );
    assert_eq!(ask(&mut c, "If-None-Match: \"r1\"\r\n"), 304);

    let cairn = start(&o, "<LastModifiedCheck>orlater</LastModifiedCheck><ContentFreshnessCheck>LMT</ContentFreshnessCheck>");
    let mut c = cairn.connect();
    c.get("/range");
    assert_eq!(
        ask(&mut c, &format!("If-Modified-Since: {LATER}\r\n")),
        304,
        "LM-1 orlater"
    );
    assert_eq!(
        ask(&mut c, "If-None-Match: \"r1\"\r\n"),
        200,
        "CF-1 LMT ignores ETags"
    );
}

#[test]
fn https_1_redirects_plain_http() {
    let o = origin();
    let cairn = start(
        &o,
        r#"<RedirectHttpToHttps ResCode="301">ON</RedirectHttpToHttps>"#,
    );
    let mut c = cairn.connect();
    c.send(b"GET /a/b?c=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("https://www.example.com/a/b?c=1"))
    );
    assert_eq!(o.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}
