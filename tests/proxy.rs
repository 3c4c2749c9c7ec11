//! End-to-end: the real binary, a test-owned origin, raw sockets.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::*;

fn simple() -> (Origin, Cairn) {
    let origin = Origin::start(|r| ok(format!("you asked for {}", r.path).as_bytes()));
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), "", ""), 2);
    (origin, cairn)
}

#[test]
fn proxies_a_get_and_rewrites_hop_by_hop_headers() {
    let (origin, cairn) = simple();
    let mut c = cairn.connect();
    c.send(b"GET /a/b?x=1 HTTP/1.1\r\nHost: test.local\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-Forwarded-For: 10.1.1.1\r\nUser-Agent: t\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "you asked for /a/b?x=1");
    assert_eq!(r.header("content-length"), Some("22"));
    assert!(r.header("date").is_some());
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
    assert_eq!(
        seen.header("host"),
        Some(&*format!("test.local:{}", origin.addr.port()))
    );
    assert_eq!(
        seen.header("x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(seen.header("connection"), None);
    // ORG-5: origins see `<UserAgent>` (default cairn), not the client's.
    assert_eq!(seen.header("user-agent"), Some("cairn"));
}

#[test]
fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
    let (origin, cairn) = simple();
    let mut c = cairn.connect();
    c.send(
        b"GET /1 HTTP/1.1\r\nHost: test.local\r\n\r\nGET /2 HTTP/1.1\r\nHost: test.local\r\n\r\nHEAD /3 HTTP/1.1\r\nHost: test.local\r\n\r\nGET /4 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    for (i, head) in [(1, false), (2, false), (3, true), (4, false)] {
        let r = c.response(head).unwrap();
        assert_eq!(r.status, 200);
        if !head {
            assert_eq!(r.text(), format!("you asked for /{i}"));
        }
        let want = if i == 4 { "Close" } else { "Keep-Alive" };
        assert_eq!(r.header("connection"), Some(want), "response {i}");
    }
    assert!(
        c.is_closed(Duration::from_secs(5)),
        "Connection: close must close after the response"
    );
    assert_eq!(origin.count(), 4);
}

#[test]
fn malformed_and_oversized_requests_get_4xx_and_the_proxy_keeps_serving() {
    let (_origin, cairn) = simple();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "u".repeat(10 * 1024)
    );
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400), // no Host
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (huge.into_bytes(), 431),
        (long_uri.into_bytes(), 414),
    ];
    for (raw, status) in cases {
        let mut bad = cairn.connect();
        bad.send(&raw);
        // Meanwhile, another client is served normally.
        let mut good = cairn.connect();
        assert_eq!(good.get("/ok").status, 200);
        let r = bad.response(false).expect("an error response");
        assert_eq!(
            r.status,
            status,
            "{}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
        assert_eq!(r.header("connection"), Some("Close"));
        assert!(bad.is_closed(Duration::from_secs(5)));
    }
    assert_eq!(cairn.connect().get("/still-alive").status, 200);
}

#[test]
fn origin_down_gives_502_and_silent_origin_gives_504() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cairn = Cairn::start(config_dir(&dead_addr.to_string(), "", ""), 1);
    let mut c = cairn.connect();
    let r = c.get("/x");
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("connection"),
        Some("Keep-Alive"),
        "an origin failure does not cost the client its connection"
    );
    assert_eq!(c.get("/y").status, 502);
    assert!(cairn.wait_log("connect failed").contains("connect failed"));

    let silent = Origin::start(|_| Reply::Silent(Duration::from_secs(5)));
    let cairn = Cairn::start(
        config_dir(
            &silent.addr.to_string(),
            "",
            "<ReceiveTimeout>1</ReceiveTimeout>",
        ),
        1,
    );
    let mut c = cairn.connect();
    let t = Instant::now();
    let r = c.get("/slow");
    assert_eq!(r.status, 504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(cairn
        .wait_log("ReceiveTimeout (1s)")
        .contains("ReceiveTimeout (1s)"));
    // The process is alive and serves others.
    assert_eq!(cairn.connect().get("/again").status, 504);
}

#[test]
fn origin_closing_mid_body_breaks_the_client_response() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/chunked" => Reply::ThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        ),
        _ => Reply::ThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some-bytes".to_vec(),
        ),
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), "", ""), 1);
    for path in ["/length", "/chunked"] {
        let mut c = cairn.connect();
        c.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        assert!(
            c.response(false).is_none(),
            "{path}: a cut-off body must not look complete"
        );
    }
    assert!(cairn.wait_log("mid-body").contains("mid-body"));
}

#[test]
fn chunked_and_close_delimited_bodies_are_relayed() {
    let origin = Origin::start(|r| {
        match r.path.as_str() {
        "/chunked" => Reply::Bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n".to_vec()),
        "/eof" => Reply::ThenClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()),
        _ => ok(&r.body),
    }
    });
    // PUT is refused (501) unless bypassed (ORG-6, STON's default OFF).
    let cairn = Cairn::start(
        config_dir(
            &origin.addr.to_string(),
            "<BypassPutRequest>ON</BypassPutRequest>",
            "",
        ),
        1,
    );
    let mut c = cairn.connect();
    let r = c.get("/chunked");
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let r = c.get("/eof");
    assert_eq!(r.text(), "until the end");
    // HTTP/1.0 clients get a close-delimited body instead of chunks.
    let mut c10 = cairn.connect();
    c10.send(b"GET /chunked HTTP/1.0\r\n\r\n");
    let r = c10.response(false).unwrap();
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.header("transfer-encoding"), None);
    // Request bodies, chunked or not, reach the origin with a Content-Length.
    c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    assert_eq!(c.response(false).unwrap().text(), "abcde");
    assert_eq!(origin.last().header("content-length"), Some("5"));
    c.send(b"PUT /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"wxyz");
    assert_eq!(c.response(false).unwrap().text(), "wxyz");
}

#[test]
fn origin_connections_are_pooled() {
    let (origin, cairn) = simple();
    for i in 0..20 {
        // Fresh client connections; shards reuse their origin connections.
        assert_eq!(cairn.connect().get(&format!("/{i}")).status, 200);
    }
    assert_eq!(origin.count(), 20);
    assert!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "at most one origin connection per shard"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed_after_client_keep_alive_sec() {
    let origin = Origin::start(|_| ok(b"x"));
    let cairn = Cairn::start(
        config_dir(
            &origin.addr.to_string(),
            "<ClientKeepAliveSec>1</ClientKeepAliveSec>",
            "",
        ),
        1,
    );
    let mut c = cairn.connect();
    let r = c.get("/");
    assert_eq!(r.header("keep-alive"), Some("timeout=1"));
    let t = Instant::now();
    assert!(c.is_closed(Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn two_shards_two_rings_pinned_threads_and_both_serve() {
    let (_origin, mut cairn) = simple();
    let pid = cairn.pid();
    let rings = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|l| l.to_string_lossy().contains("io_uring"))
        .count();
    assert_eq!(rings, 2, "one io_uring instance per shard");
    let mut shard_threads = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap();
        if comm.starts_with("shard-") {
            let status = std::fs::read_to_string(t.join("status")).unwrap();
            let cpus = status
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .unwrap()
                .to_string();
            shard_threads.push((comm.trim().to_string(), cpus));
        }
    }
    shard_threads.sort();
    assert_eq!(shard_threads.len(), 2, "{shard_threads:?}");
    let ncpu = std::thread::available_parallelism().unwrap().get();
    if ncpu >= 2 {
        assert!(shard_threads[0].1.ends_with("\t0"), "{shard_threads:?}");
        assert!(shard_threads[1].1.ends_with("\t1"), "{shard_threads:?}");
    }
    // 40 connections: SO_REUSEPORT's hash puts all of them on one shard with
    // probability 2^-39.
    let mut clients: Vec<Client> = (0..40).map(|_| cairn.connect()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    drop(clients);
    cairn.signal("TERM");
    assert_eq!(cairn.wait_exit(Duration::from_secs(15)), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    let log = cairn.stderr();
    for shard in 0..2 {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("shard {shard}: ")) && l.contains("connections"))
            .unwrap_or_else(|| panic!("no summary for shard {shard}:\n{log}"));
        let n: u64 = line
            .split("shard ")
            .nth(1)
            .unwrap()
            .split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0, "shard {shard} served no connection: {line}");
    }
}

#[test]
fn sigterm_drains_in_flight_responses_then_exits_zero() {
    let origin = Origin::start(|_| {
        Reply::After(
            Duration::from_millis(1500),
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec(),
        )
    });
    let mut cairn = Cairn::start(config_dir(&origin.addr.to_string(), "", ""), 1);
    let mut idle = cairn.connect();
    idle.send(b"GET /warm HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert_eq!(idle.response(false).unwrap().status, 200);
    let mut busy = cairn.connect();
    busy.send(b"GET /slow HTTP/1.1\r\nHost: test.local\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    cairn.signal("TERM");
    let r = busy
        .response(false)
        .expect("the in-flight response completes");
    assert_eq!(r.text(), "slow");
    assert_eq!(
        r.header("connection"),
        Some("Close"),
        "responses during a drain close their connection"
    );
    assert!(
        idle.is_closed(Duration::from_secs(3)),
        "idle keep-alive connections are released at once"
    );
    assert_eq!(cairn.wait_exit(Duration::from_secs(15)), Some(0));
    // No new connections after the drain.
    assert!(std::net::TcpStream::connect(cairn.addr).is_err());
}

#[test]
fn a_port_held_by_another_process_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = temp_dir("busy");
    std::fs::write(dir.join("server.xml"), "<Server/>").unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!("<Vhosts><Vhost Name=\"a\"><Listen>127.0.0.1:{port}</Listen><Origin><Address>127.0.0.1:9</Address></Origin></Vhost></Vhosts>"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("already in use"),
        "{err}"
    );
}

#[test]
fn check_reports_the_effective_table_and_errors_with_file_and_line() {
    let dir = temp_dir("check");
    std::fs::write(dir.join("server.xml"), "<Server>\n<VHostDefault><Options><ClientKeepAliveSec>5</ClientKeepAliveSec></Options></VHostDefault>\n<Cache><Cleanup><Time>02:00</Time></Cleanup></Cache>\n</Server>").unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        "<Vhosts>\n<Vhost Name=\"www.example.com\"><Alias>*.example.com</Alias><Listen>*:8080</Listen><Origin><Address>10.0.0.1</Address></Origin></Vhost>\n<Default>www.example.com</Default>\n</Vhosts>",
    )
    .unwrap();
    let out = check(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("www.example.com (default)")
            && stdout.contains("0.0.0.0:8080")
            && stdout.contains("timeout=5s"),
        "{stdout}"
    );
    assert!(
        stderr.contains("server.xml:3: <Cache><Cleanup> is not supported yet"),
        "{stderr}"
    );

    std::fs::write(dir.join("vhosts.xml"), "<Vhosts>\n<Vhost Name=\"a\">\n<Origin><Address>10.0.0.1:http</Address></Origin></Vhost></Vhosts>").unwrap();
    let out = check(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vhosts.xml:3:") && stderr.contains("bad port"),
        "{stderr}"
    );
}

#[test]
fn unknown_host_without_default_is_404() {
    let origin = Origin::start(|_| ok(b"x"));
    let dir = temp_dir("nodefault");
    std::fs::write(dir.join("server.xml"), server_xml("", "")).unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!("<Vhosts><Vhost Name=\"a.test\"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>", origin.addr),
    )
    .unwrap();
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    c.send(b"GET / HTTP/1.1\r\nHost: A.TEST:80\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 200);
    assert_eq!(origin.count(), 1);
    // A body for no vhost is neither invited (100 Continue) nor read: 404, close.
    let mut c = cairn.connect();
    c.send(b"POST / HTTP/1.1\r\nHost: other.test\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (404, Some("Close")));
    assert!(c.is_closed(Duration::from_secs(5)));
}

/// The embedded default, as a newcomer runs it: no config, the sample origin, port 8080.
#[test]
fn embedded_default_serves_the_sample_site() {
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err()
        || std::net::TcpListener::bind("127.0.0.1:8081").is_err()
    {
        eprintln!("SKIP: 127.0.0.1:8080 or :8081 is in use on this machine");
        return;
    }
    let mut child = std::process::Command::new(BIN)
        .args(["--shards", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut banner = [0u8; 256];
    let n = out.read(&mut banner).unwrap();
    assert!(String::from_utf8_lossy(&banner[..n]).contains("http://127.0.0.1:8080/"));
    // A query of its own: the embedded cache outlives runs, this object must not.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let get = || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
        s.write_all(
            format!("GET /hello.txt?run={nonce} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    let first = get();
    // A newcomer sees the cache work on the second curl.
    let resp = get();
    let _ = child.kill();
    assert!(first.contains("\r\nX-Cache: TCP_MISS\r\n"), "{first}");
    assert!(resp.contains("\r\nX-Cache: TCP_HIT\r\n"), "{resp}");
    assert!(resp.contains("\r\nAge: "), "{resp}");
    let _ = child.wait();
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/site/hello.txt"
    ))
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with(&want), "{resp}");
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_running_one() {
    let origin = Origin::start(|_| ok(b"x"));
    let dir = config_dir(&origin.addr.to_string(), "", "");
    let cairn = Cairn::start(dir.clone(), 1);
    let mut c = cairn.connect();
    assert!(c.get("/a").header("via").is_some());
    // A good change applies to the next request, on the same connection too.
    std::fs::write(
        dir.join("server.xml"),
        server_xml("<ViaHeader>OFF</ViaHeader>", ""),
    )
    .unwrap();
    cairn.signal("HUP");
    assert!(cairn
        .wait_log("configuration reloaded")
        .contains("configuration reloaded: 1 vhosts"));
    assert_eq!(c.get("/b").header("via"), None);
    // A broken file is reported with file and line; the running config stays.
    let vhosts = std::fs::read_to_string(dir.join("vhosts.xml")).unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        vhosts.replace(&origin.addr.to_string(), "127.0.0.1:notaport"),
    )
    .unwrap();
    cairn.signal("HUP");
    let log = cairn.wait_log("reload failed");
    assert!(
        log.contains("reload failed") && log.contains("vhosts.xml:1:") && log.contains("bad port"),
        "{log}"
    );
    let r = c.get("/c");
    assert_eq!(
        (r.status, r.header("via")),
        (200, None),
        "still the last good configuration"
    );
    // A listen change needs a restart: refused whole.
    std::fs::write(
        dir.join("vhosts.xml"),
        vhosts.replace("127.0.0.1:0", "127.0.0.1:1"),
    )
    .unwrap();
    cairn.signal("HUP");
    assert!(cairn
        .wait_log("reload refused")
        .contains("listen addresses changed"));
    assert_eq!(cairn.connect().get("/d").status, 200);
}

#[test]
fn a_body_read_under_one_configuration_is_served_under_it_across_a_reload() {
    // The body of a request the old configuration answers itself (a redirect) is
    // drained, not kept. A reload while it arrives must not send the request to
    // the origin without its body under the new configuration.
    let origin = Origin::start(|r| ok(format!("got {} bytes", r.body.len()).as_bytes()));
    let redirect = r#"<RedirectHttpToHttps ResCode="301">ON</RedirectHttpToHttps>"#;
    let dir = config_dir(&origin.addr.to_string(), redirect, "");
    let cairn = Cairn::start(dir.clone(), 1);
    let mut c = cairn.connect();
    c.send(b"POST /form HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    // The 100 says cairn has decided what the body is for, and is reading it.
    let r = c.response(false).expect("an interim response");
    assert_eq!(r.status, 100);
    c.send(b"12345");
    std::fs::write(dir.join("server.xml"), server_xml("", "")).unwrap();
    cairn.signal("HUP");
    cairn.wait_log("configuration reloaded");
    c.send(b"67890");
    let r = c.response(false).expect("a response");
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(origin.count(), 0, "nothing reached the origin bodiless");
    // The next request runs under the new configuration.
    c.send(b"POST /form HTTP/1.1\r\nHost: test.local\r\nContent-Length: 3\r\n\r\nabc");
    let r = c.response(false).expect("a response");
    assert_eq!((r.status, r.text()), (200, "got 3 bytes".to_string()));
}

#[test]
fn each_vhost_balances_its_own_origins_evenly() {
    let origins: Vec<Origin> = (0..4).map(|_| Origin::start(|_| ok(b"x"))).collect();
    let dir = temp_dir("balance");
    std::fs::write(dir.join("server.xml"), server_xml("", "")).unwrap();
    let vhost = |name: &str, a: &Origin, b: &Origin| {
        format!(
            "<Vhost Name=\"{name}\"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address><Address>{}</Address></Origin></Vhost>",
            a.addr, b.addr
        )
    };
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts>{}{}</Vhosts>",
            vhost("a.test", &origins[0], &origins[1]),
            vhost("b.test", &origins[2], &origins[3])
        ),
    )
    .unwrap();
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let n = 200;
    for i in 0..n {
        for host in ["a.test", "b.test"] {
            // A new URL each time: every request reaches an origin. (Not
            // POST: OriginAffinity keeps one client's POSTs on one address.)
            c.send(format!("GET /{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
            assert_eq!(c.response(false).unwrap().status, 200);
        }
    }
    for (i, o) in origins.iter().enumerate() {
        let share = o.count() as f64 / n as f64;
        assert!(
            (0.45..=0.55).contains(&share),
            "origin {i} got {} of {n} requests for its vhost",
            o.count()
        );
    }
}

#[test]
fn a_slow_chunked_origin_streams_each_chunk_as_it_comes() {
    // An origin that sends one chunk, then waits before the rest: the client must
    // see the first chunk long before the origin finishes.
    let addr = scripted_origin(|s| {
        use std::io::Write;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n");
        std::thread::sleep(Duration::from_secs(3));
        let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n");
    });
    let cairn = Cairn::start(config_dir(&addr.to_string(), "", ""), 1);
    let mut s = std::net::TcpStream::connect(cairn.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "the first chunk waited {:?} for the rest",
        t.elapsed()
    );
}

#[test]
fn an_origin_status_line_without_a_reason_is_relayed_and_a_bad_status_is_502() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/bad" => Reply::Bytes(b"HTTP/1.1 999\r\nContent-Length: 0\r\n\r\n".to_vec()),
        _ => Reply::Bytes(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok".to_vec()),
    });
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), "", ""), 1);
    let mut c = cairn.connect();
    for _ in 0..3 {
        let r = c.get("/x");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert_eq!(c.get("/bad").status, 502);
    assert!(!cairn.stderr().contains("panicked"), "{}", cairn.stderr());
}

#[test]
fn a_crlf_drip_does_not_hold_a_connection_past_the_idle_deadline() {
    let origin = Origin::start(|_| ok(b"x"));
    let cairn = Cairn::start(
        config_dir(
            &origin.addr.to_string(),
            "<ClientKeepAliveSec>1</ClientKeepAliveSec>",
            "",
        ),
        1,
    );
    let mut s = std::net::TcpStream::connect(cairn.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut ended = None;
    let mut buf = [0u8; 512];
    while t.elapsed() < Duration::from_secs(4) {
        if s.write_all(b"\r\n").is_err() {
            ended = Some(t.elapsed());
            break;
        }
        // Read for 400 ms; a read of 0 bytes (or a reset) is the end.
        let stop = Instant::now() + Duration::from_millis(400);
        while Instant::now() < stop && ended.is_none() {
            match s.read(&mut buf) {
                Ok(0) => ended = Some(t.elapsed()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => ended = Some(t.elapsed()),
            }
        }
        if ended.is_some() {
            break;
        }
    }
    let ended = ended.expect("the connection was still open after 4 s of empty lines");
    assert!(ended < Duration::from_millis(2500), "{ended:?}");
}

#[test]
fn endless_interim_responses_end_in_504_within_receive_timeout() {
    // A 102 every 300 ms, for 10 s, and never a final response.
    let addr = scripted_origin(|s| {
        use std::io::Write;
        for _ in 0..33 {
            if s.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let cairn = Cairn::start(
        config_dir(&addr.to_string(), "", "<ReceiveTimeout>1</ReceiveTimeout>"),
        1,
    );
    let t = Instant::now();
    let r = cairn.connect().get("/slow");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn out_of_file_descriptors_backs_off_and_reports_once() {
    let origin = Origin::start(|_| ok(b"x"));
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), "", ""), 1);
    assert_eq!(cairn.connect().get("/warm").status, 200);
    let pid = cairn.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = |n: usize| {
        let out = std::process::Command::new("prlimit")
            // The soft limit only: raising it back needs no privilege.
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
            .output()
            .expect("prlimit (util-linux) is needed for this test");
        assert!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    limit(open + 3);
    // Far more clients than free descriptors, held for two seconds.
    let held: Vec<std::net::TcpStream> = (0..40)
        .filter_map(|_| std::net::TcpStream::connect(cairn.addr).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let reports = cairn.stderr().matches("accept failed").count();
    assert!(
        (1..=2).contains(&reports),
        "{reports} accept-failure reports:\n{}",
        cairn.stderr()
    );
    drop(held);
    let hard: usize = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or(1024);
    limit(hard.min(65536));
    // The shard recovers: a new client is served within the back-off.
    let t = Instant::now();
    let mut served = false;
    while t.elapsed() < Duration::from_secs(5) && !served {
        let mut c = cairn.connect();
        c.send(b"GET /again HTTP/1.1\r\nHost: test.local\r\n\r\n");
        served = c.response(false).is_some_and(|r| r.status == 200);
    }
    assert!(served);
}

#[test]
fn interim_responses_from_the_origin_reach_http11_clients_and_are_never_cached() {
    let addr = scripted_origin(|s| {
        let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: 5\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\nbody");
    });
    let dir = config_dir(
        &addr.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    let c = Cairn::start(dir, 1);
    let fetch = |version: &str| {
        let mut s = std::net::TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /e {version}\r\nHost: test.local\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let first = fetch("HTTP/1.1");
    assert!(
        first.starts_with(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 102 "
        ),
        "{first}"
    );
    assert!(
        first.contains("\r\n\r\nHTTP/1.1 200 OK\r\n") && first.ends_with("body"),
        "{first}"
    );
    // The hit is answered from cache: no interim response is stored.
    let hit = fetch("HTTP/1.1");
    assert!(
        hit.starts_with("HTTP/1.1 200 OK\r\n") && hit.contains("X-Cache: TCP_HIT"),
        "{hit}"
    );
}

#[test]
fn interim_responses_kept_for_the_client_are_bounded_in_bytes() {
    // Ten 103s of about 2 KiB each: the first four fit the 8 KiB kept for
    // the client; the rest are read and skipped, and the final response comes.
    let addr = scripted_origin(|s| {
        let mut out = Vec::new();
        for _ in 0..10 {
            out.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: ");
            out.extend_from_slice(&[b'a'; 2000]);
            out.extend_from_slice(b"\r\n\r\n");
        }
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody");
        let _ = s.write_all(&out);
    });
    let c = Cairn::start(config_dir(&addr.to_string(), "", ""), 1);
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /e HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(out.matches("HTTP/1.1 103 Early Hints\r\n").count(), 4);
    assert!(out.contains("HTTP/1.1 200 OK\r\n") && out.ends_with("body"));
}
