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
    // Errors carry Via too. STON's policy stores a private response (NoCache,
    // TTL-1) and never its cookies (KEY-5).
    let r = c.get("/private");
    assert_eq!(r.header("set-cookie"), None);
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
    assert!(r.header("date").is_some(), "a redirect carries Date");
    assert_eq!(o.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

fn start_with_rules(o: &Origin, options: &str, expires: &str, headers: &str) -> Cairn {
    let dir = config_dir(&o.addr.to_string(), &format!("{STATUS}{options}"), "");
    let svc = dir.join("svc/test.local");
    std::fs::create_dir_all(&svc).unwrap();
    std::fs::write(svc.join("expires.txt"), expires).unwrap();
    std::fs::write(svc.join("headers.txt"), headers).unwrap();
    Cairn::start(dir, 1)
}

#[test]
fn exp_1_to_6_expires_rewriting() {
    let o = origin();
    let rules =
        "# expires.txt\n$URL[/plain], 1 hour\n/range, 60, modification\n$MIME[text/*], 30 sec\n";
    // EXP-1: OFF passes the origin's headers through.
    let off = start_with_rules(&o, "", rules, "");
    let mut c = off.connect();
    assert_eq!(c.get("/plain").header("expires"), None);
    let on = start_with_rules(
        &o,
        "<RefreshExpiresHeader>ON</RefreshExpiresHeader>",
        rules,
        "",
    );
    let mut c = on.connect();
    for _ in 0..2 {
        let r = c.get("/plain");
        let exp = crate::parse_date(r.header("expires").expect("EXP-4 Expires"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 3590..=now + 3601).contains(&exp), "{exp} vs {now}");
        let cc = r.header("cache-control").unwrap();
        assert!(
            cc.contains("max-age=36") && !cc.contains("max-age=600"),
            "EXP-4 replaces max-age: {cc}"
        );
    }
    // EXP-5: base modification from Last-Modified (1994): in the past, so now and max-age=0.
    let r = c.get("/range");
    assert!(
        r.header("cache-control").unwrap().contains("max-age=0"),
        "{:?}",
        r.header("cache-control")
    );
    // EXP-5 without Last-Modified: no Expires at all.
    let on_mod = start_with_rules(
        &o,
        "<RefreshExpiresHeader>ON</RefreshExpiresHeader>",
        "/aged, 60, modification\n",
        "",
    );
    let mut c = on_mod.connect();
    let r = c.get("/aged");
    assert_eq!(r.header("expires"), None);
    assert_eq!(r.header("cache-control"), Some("max-age=600"));
    // EXP-2: the first matching rule decides; unmatched content behaves as OFF.
    let mut c = on.connect();
    let r = c.get("/noetag"); // text/plain: third rule, 30 s
    assert!(
        r.header("cache-control").unwrap().contains("max-age=3"),
        "{:?}",
        r.header("cache-control")
    );
    // EXP-6 #ORG_MAXAGE uses the origin's max-age.
    let org = start_with_rules(
        &o,
        "<RefreshExpiresHeader>ON</RefreshExpiresHeader>",
        "*, #ORG_MAXAGE\n",
        "",
    );
    let r = org.connect().get("/plain");
    assert!(r.header("expires").is_some());
    assert!(
        r.header("cache-control").unwrap().contains("max-age=600")
            || r.header("cache-control").unwrap().contains("max-age=599")
    );
}

fn parse_date(s: &str) -> u64 {
    // IMF-fixdate via a tiny parser of our own, independent of cairn's.
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p: Vec<&str> = s.split(' ').collect();
    let (d, m, y) = (
        p[1].parse::<i64>().unwrap(),
        months.iter().position(|x| *x == p[2]).unwrap() as i64 + 1,
        p[3].parse::<i64>().unwrap(),
    );
    let t: Vec<i64> = p[4].split(':').map(|x| x.parse().unwrap()).collect();
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    (days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as u64
}

#[test]
fn mod_1_to_7_header_modification() {
    let o = origin();
    let headers = "\
# request rules
$HEADER[x-strip], $REQ[x-strip], unset
$URL[/plain], $REQ[x-added: from-rule], set
$URL[/secret], $REQ[x-edge-secret: s3cret], set
# response rules
$URL[/plain], $RES[x-one: 1], put
$URL[/plain], $RES[x-one: 2], put
$URL[/plain], $RES[cache-control: public], append
$URL[/plain], $RES[x-hit: #CACHEHIT], set
$URL[/none], $RES[x-never: 1], set, 404
$IP[127.0.0.1], $RES[x-local: yes], set, 2xx
$IP[10.0.0.0/8], $RES[x-remote: yes], set
$IP[127.0.0.1-5], $RES[x-range: yes], set
$IP[127.0.0.0/255.0.0.0], $RES[x-netmask: yes], set
!METHOD[POST], $RES[server], unset
$METHOD[GET], $REQ[host: evil.example], set
";
    let cairn = start_with_rules(&o, "<ModifyHeader>ON</ModifyHeader>", "", headers);
    assert!(
        cairn.wait_log("MOD-1").contains("headers.txt:16"),
        "the Host rule is refused with its line"
    );
    let mut c = cairn.connect();
    c.send(b"GET /plain HTTP/1.1\r\nHost: test.local\r\nX-Strip: 1\r\n\r\n");
    let r = c.response(false).unwrap();
    let seen = o.last();
    assert_eq!(seen.header("x-strip"), None, "MOD-1 request rule unset");
    assert_eq!(
        seen.header("x-added"),
        Some("from-rule"),
        "MOD-1 request rule set"
    );
    // A client naming the rule's field in Connection cannot strip it.
    let mut c2 = cairn.connect();
    c2.send(b"GET /secret HTTP/1.1\r\nHost: test.local\r\nConnection: keep-alive, X-Edge-Secret\r\nX-Edge-Secret: forged\r\n\r\n");
    assert!(c2.response(false).is_some());
    assert_eq!(o.last().header("x-edge-secret"), Some("s3cret"));
    let ones: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-one"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ones, ["1", "2"], "MOD-3 all rules in order, MOD-4 put");
    assert_eq!(
        r.header("cache-control"),
        Some("max-age=600, public"),
        "MOD-4 append"
    );
    assert_eq!(r.header("x-hit"), Some("TCP_MISS"), "MOD-7 #CACHEHIT");
    assert_eq!(r.header("x-never"), None, "MOD-5 status condition");
    assert_eq!(
        r.header("x-local"),
        Some("yes"),
        "MOD-6 single IP and class 2xx"
    );
    assert_eq!(r.header("x-remote"), None, "MOD-6 CIDR not matching");
    assert_eq!(r.header("x-range"), Some("yes"), "MOD-6 last-octet range");
    assert_eq!(r.header("x-netmask"), Some("yes"), "MOD-6 netmask");
    assert_eq!(r.header("server"), None, "negated condition and unset");
    assert_eq!(c.get("/plain").header("x-hit"), Some("TCP_HIT"));

    let first = start_with_rules(
        &o,
        r#"<ModifyHeader FirstOnly="ON">ON</ModifyHeader>"#,
        "",
        headers,
    );
    let r = first.connect().get("/plain");
    let ones: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-one"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ones, ["1"], "MOD-3 FirstOnly");
    assert_eq!(r.header("cache-control"), Some("max-age=600"));

    let off = start_with_rules(&o, "", "", headers);
    assert_eq!(
        off.connect().get("/plain").header("x-one"),
        None,
        "OFF: no rules"
    );
}

#[test]
fn a_bad_rule_line_fails_check_with_file_and_line() {
    let dir = temp_dir("badrules");
    std::fs::write(dir.join("server.xml"), server_xml("", "")).unwrap();
    std::fs::write(dir.join("vhosts.xml"), "<Vhosts><Vhost Name=\"a.test\"><Origin><Address>127.0.0.1:9</Address></Origin></Vhost></Vhosts>").unwrap();
    std::fs::create_dir_all(dir.join("svc/a.test")).unwrap();
    std::fs::write(
        dir.join("svc/a.test/expires.txt"),
        "# ok\n$URL[/a], 1 day\n$URL[/b], 3 fortnights\n",
    )
    .unwrap();
    let out = check(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("svc/a.test/expires.txt:3:"), "{err}");
}

#[test]
fn mod_6_geoip_country_and_continent() {
    let o = origin();
    let dir = config_dir(&o.addr.to_string(), "", "");
    // The test client is 127.0.0.1: make loopback "Korea, Asia" in our own database.
    let db = support::mmdb::country_db(&[
        ([127, 0, 0, 0], 8, "KR", "AS"),
        ([10, 0, 0, 0], 8, "FR", "EU"),
    ]);
    std::fs::write(dir.join("geo.mmdb"), db).unwrap();
    let server = std::fs::read_to_string(dir.join("server.xml")).unwrap();
    let server = server
        .replacen(
            "<Server>",
            r#"<Server><ServiceAccess GeoIP="geo.mmdb"/>"#,
            1,
        )
        .replace("<Options>", "<Options><ModifyHeader>ON</ModifyHeader>");
    std::fs::write(dir.join("server.xml"), server).unwrap();
    let svc = dir.join("svc/test.local");
    std::fs::create_dir_all(&svc).unwrap();
    std::fs::write(
        svc.join("headers.txt"),
        "$IP[KR], $RES[x-country: kr], set\n$IP[AP], $RES[x-asia-pacific: yes], set\n$IP[FR], $RES[x-france: yes], set\n!IP[EU], $RES[x-not-europe: yes], set\n",
    )
    .unwrap();
    let cairn = Cairn::start(dir, 1);
    assert!(cairn.wait_log("GeoIP:").contains("GeoIP2-Country"));
    let r = cairn.connect().get("/plain");
    assert_eq!(r.header("x-country"), Some("kr"), "country code");
    assert_eq!(
        r.header("x-asia-pacific"),
        Some("yes"),
        "continent (STON's AP)"
    );
    assert_eq!(r.header("x-france"), None);
    assert_eq!(r.header("x-not-europe"), Some("yes"), "negated continent");
}

#[test]
fn response_rules_cannot_touch_framing_or_connection_headers() {
    let o = origin();
    let headers = "$URL[/plain], $RES[transfer-encoding: chunked], set\n$URL[/plain], $RES[connection: close], set\n";
    let cairn = start_with_rules(&o, "<ModifyHeader>ON</ModifyHeader>", "", headers);
    assert!(
        cairn
            .wait_log("transfer-encoding")
            .contains("headers.txt:1"),
        "refused at load with its line"
    );
    let mut c = cairn.connect();
    for _ in 0..2 {
        let r = c.get("/plain");
        assert_eq!((r.status, r.text().as_str()), (200, "plain"));
        assert_eq!(r.header("transfer-encoding"), None);
        assert_eq!(r.header("connection"), Some("Keep-Alive"));
    }
}
