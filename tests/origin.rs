//! Origin balancing, exclusion, recovery, retry, standby and session routes
//! (ORG-1..4), against real origins that the tests kill and restart.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;

/// An origin that answers every request with its name (uncacheable) and can
/// be killed (its port refuses, its connections close) and restarted on the
/// same port.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        Backend::on(name, "127.0.0.1:0".parse().unwrap(), Arc::default())
    }

    fn on(name: &'static str, addr: SocketAddr, hits: Arc<AtomicUsize>) -> Backend {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (h, st) = (h.clone(), st.clone());
                        conns.push(std::thread::spawn(move || serve(s, name, &h, &st)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        Backend {
            name,
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn restart(&mut self) {
        self.kill();
        *self = Backend::on(self.name, self.addr, self.hits.clone());
    }

    fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(mut s: TcpStream, name: &str, hits: &AtomicUsize, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(SeqCst) {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() < end + 4 + len {
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            continue;
        }
        buf.drain(..end + 4 + len);
        hits.fetch_add(1, SeqCst);
        // `/c/…` is cacheable for a second; everything else is not stored.
        let cc = if head.contains(" /c/") {
            "max-age=1"
        } else {
            "no-store"
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        );
        if s.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// A config with these `<OriginOptions>` and `<Origin>` children.
fn dir_with(origin_options: &str, origin: &str) -> std::path::PathBuf {
    let dir = temp_dir("origin");
    std::fs::write(dir.join("server.xml"), server_xml("", origin_options)).unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!("<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin>{origin}</Origin></Vhost><Default>test.local</Default></Vhosts>"),
    )
    .unwrap();
    dir
}

fn addresses(bs: &[&Backend], tag: &str) -> String {
    bs.iter()
        .map(|b| format!("<{tag}>{}</{tag}>", b.addr))
        .collect()
}

/// Fast exclusion and recovery for tests: 2 failures out, 2 good probes a
/// second apart back in.
const FAST: &str = r#"<Exclusion>2</Exclusion><Recovery Cycle="1" Uri="/health">2</Recovery><ConnectTimeout>1</ConnectTimeout>"#;

fn get_text(c: &mut Client, path: &str, extra: &str) -> (u16, String) {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
    let r = c.response(false).expect("a response");
    (r.status, r.text())
}

/// Polls `f` until it holds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn a_killed_origin_is_excluded_without_a_client_error_and_recovered_by_probes() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    let c = Backend::start("c");
    let dir = dir_with(FAST, &addresses(&[&a, &b, &c], "Address"));
    let cairn = Cairn::start(dir, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|t| {
            let (stop, errors, served, addr) =
                (stop.clone(), errors.clone(), served.clone(), cairn.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut i = 0;
                while !stop.load(SeqCst) {
                    i += 1;
                    let (status, _) = get_text(&mut c, &format!("/l/{t}/{i}"), "");
                    if status == 200 {
                        served.fetch_add(1, SeqCst);
                    } else {
                        errors.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || b.hits() > 20));
    b.kill();
    let log = cairn.wait_log("excluded from service");
    assert!(
        log.contains(&format!("origin {} excluded from service", b.addr)),
        "{log}"
    );
    let before = served.load(SeqCst);
    assert!(eventually(Duration::from_secs(5), || served.load(SeqCst)
        > before + 200));
    b.restart();
    let hits = b.hits();
    let log = cairn.wait_log("recovered back in service");
    assert!(
        log.contains(&format!("origin {} recovered back in service", b.addr)),
        "{log}"
    );
    // Traffic returns to it.
    assert!(eventually(Duration::from_secs(5), || b.hits() > hits + 20));
    stop.store(true, SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let log = cairn.stderr();
    let why: Vec<&str> = log.lines().filter(|l| l.contains("->")).collect();
    assert_eq!(errors.load(SeqCst), 0, "clients saw errors: {why:#?}");
    assert!(a.hits() > 0 && c.hits() > 0);
}

#[test]
fn hash_mode_keeps_a_url_on_one_address_and_moves_a_third_when_one_goes() {
    let bs = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let three = Cairn::start(
        dir_with(
            "<BalanceMode>Hash</BalanceMode>",
            &addresses(&[&bs[0], &bs[1], &bs[2]], "Address"),
        ),
        2,
    );
    let two = Cairn::start(
        dir_with(
            "<BalanceMode>Hash</BalanceMode>",
            &addresses(&[&bs[0], &bs[1]], "Address"),
        ),
        2,
    );
    let (mut c3, mut c2) = (three.connect(), two.connect());
    let mut moved = 0;
    for i in 0..3000 {
        let path = format!("/h/{i}");
        let (_, first) = get_text(&mut c3, &path, "");
        if i % 10 == 0 {
            // The same address every time (and from another connection).
            let (_, again) = get_text(&mut three.connect(), &path, "");
            assert_eq!(first, again, "{path}");
        }
        let (_, without_c) = get_text(&mut c2, &path, "");
        if first != without_c {
            assert_eq!(first, "c", "only c's URLs move");
            moved += 1;
        }
    }
    assert!((750..=1260).contains(&moved), "{moved} of 3000 URLs moved");
}

#[test]
fn standby_addresses_serve_only_while_every_active_one_is_excluded() {
    let mut a = Backend::start("a");
    let mut b = Backend::start("b");
    let s = Backend::start("s");
    let origin = format!(
        "{}{}",
        addresses(&[&a, &b], "Address"),
        addresses(&[&s], "Address2")
    );
    let cairn = Cairn::start(dir_with(FAST, &origin), 1);
    let mut c = cairn.connect();
    for i in 0..20 {
        assert_eq!(get_text(&mut c, &format!("/s/{i}"), "").1.len(), 1);
    }
    assert_eq!(s.hits(), 0, "standby used while actives are up");
    a.kill();
    b.kill();
    for i in 0..20 {
        let (status, body) = get_text(&mut c, &format!("/t/{i}"), "");
        assert_eq!((status, body.as_str()), (200, "s"));
    }
    a.restart();
    b.restart();
    assert!(eventually(Duration::from_secs(8), || {
        cairn.stderr().matches("recovered back in service").count() >= 2
    }));
    let used = s.hits();
    for i in 0..20 {
        assert_ne!(get_text(&mut c, &format!("/u/{i}"), "").1, "s");
    }
    assert_eq!(s.hits(), used, "standby used after the actives recovered");
}

#[test]
fn a_session_route_cookie_pins_its_address_fails_over_and_comes_back() {
    let mut t1 = Backend::start("tomcat1");
    let t2 = Backend::start("tomcat2");
    let origin = format!(
        r#"<Affinity Cookie="JSESSIONID" RouteSeparator="."/><Address Route="tomcat1">{}</Address><Address Route="tomcat2">{}</Address>"#,
        t1.addr, t2.addr
    );
    let cairn = Cairn::start(dir_with(FAST, &origin), 2);
    let cookie = "Cookie: theme=dark; JSESSIONID=8A3F9C.tomcat1\r\n";
    let mut c = cairn.connect();
    for i in 0..100 {
        assert_eq!(get_text(&mut c, &format!("/app/{i}"), cookie).1, "tomcat1");
    }
    t1.kill();
    for i in 0..20 {
        let (status, body) = get_text(&mut c, &format!("/down/{i}"), cookie);
        assert_eq!((status, body.as_str()), (200, "tomcat2"));
    }
    let log = cairn.wait_log("failing over");
    assert!(
        log.contains("session route tomcat1 is out of service"),
        "{log}"
    );
    t1.restart();
    cairn.wait_log("recovered back in service");
    for i in 0..20 {
        assert_eq!(get_text(&mut c, &format!("/back/{i}"), cookie).1, "tomcat1");
    }
    // POST pass-through without a route: OriginAffinity keeps one client on
    // one address (round-robin would alternate).
    let mut seen = Vec::new();
    for _ in 0..10 {
        c.send(b"POST /login HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nok");
        seen.push(c.response(false).unwrap().text());
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn only_idempotent_requests_fail_over_and_the_manager_shows_each_address() {
    let mut dead = Backend::start("dead");
    let live = Backend::start("live");
    dead.kill();
    let dir = dir_with(
        "<Exclusion>0</Exclusion>",
        &addresses(&[&dead, &live], "Address"),
    );
    edit_server_xml(
        &dir,
        "<Server>",
        r#"<Server><Host><Manager Port="0" Listen="127.0.0.1"><Allow>127.0.0.1</Allow></Manager></Host>"#,
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let (mut gets, mut posts_failed) = (0, 0);
    for i in 0..20 {
        let (status, body) = get_text(&mut c, &format!("/g/{i}"), "");
        assert_eq!((status, body.as_str()), (200, "live"), "a GET fails over");
        gets += 1;
        // A POST may have been acted on: never sent to a second address.
        // (From several client addresses: OriginAffinity pins each to one.)
        let from: SocketAddr = format!("127.0.0.{}:0", 2 + i).parse().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&from.into()).unwrap();
        sock.connect(&cairn.addr.into()).unwrap();
        let mut p = Client::from_stream(sock.into());
        p.send(b"POST /p HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi");
        let r = p.response(false).unwrap();
        if r.status == 502 {
            posts_failed += 1;
        } else {
            assert_eq!((r.status, r.text().as_str()), (200, "live"));
        }
    }
    assert_eq!(gets, 20);
    // Exclusion 0: the dead address stays in rotation, so the POSTs that
    // drew it got the error rather than a second try.
    assert!(posts_failed > 0, "no POST drew the dead address");
    let log = cairn.wait_log("manager listening on http://");
    let rest = log.split("manager listening on http://").nth(1).unwrap();
    let mgr: SocketAddr = rest[..rest.find('/').unwrap()].parse().unwrap();
    let mut s = TcpStream::connect(mgr).unwrap();
    s.write_all(b"GET /monitoring/origin HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let dead_entry = out
        .split("{\"vhost\"")
        .find(|e| e.contains(&dead.addr.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(dead_entry.contains("\"state\":\"up\""), "{dead_entry}");
    assert!(
        dead_entry.contains("\"lastError\":\"connect failed"),
        "{dead_entry}"
    );
    assert!(!dead_entry.contains("\"failures\":0,"), "{dead_entry}");
    drop(live);
}

#[test]
fn bypass_settings_refuse_methods_and_bypass_txt_decides_gets() {
    let origin = Origin::start(|r| match r.path.as_str() {
        p if p.starts_with("/login") => ok(b"login"),
        _ => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        ),
    });
    // Defaults: POST passes, PUT is refused.
    let cairn = Cairn::start(
        config_dir(
            &origin.addr.to_string(),
            "<CacheStatusHeader>ON</CacheStatusHeader>",
            "",
        ),
        1,
    );
    // A new connection each: a refused body stays unread, so its connection
    // is closed after the 501.
    let send = |cairn: &Cairn, m: &str| {
        let mut c = cairn.connect();
        c.send(
            format!("{m} /form HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\nx")
                .as_bytes(),
        );
        c.response(false).unwrap().status
    };
    assert_eq!(send(&cairn, "PUT"), 501);
    assert_eq!(send(&cairn, "POST"), 200);
    drop(cairn);
    // GET bypassed but for bypass.txt's `cache` lines; POST refused.
    let dir = config_dir(
        &origin.addr.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader><BypassGetRequest>ON</BypassGetRequest><BypassPostRequest>OFF</BypassPostRequest>",
        "",
    );
    std::fs::create_dir_all(dir.join("svc/test.local")).unwrap();
    std::fs::write(
        dir.join("svc/test.local/bypass.txt"),
        "/login*, bypass\n/static/*, cache\n$HEADER[cookie: *nocache*]\n",
    )
    .unwrap();
    let cairn = Cairn::start(dir, 1);
    assert_eq!(send(&cairn, "POST"), 501);
    // A refused body is neither invited nor read: 501 at once, no 100.
    let mut raw = TcpStream::connect(cairn.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    let _ = raw.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 501 "), "{got}");
    let mut c = cairn.connect();
    let xcache = |c: &mut Client, path: &str, extra: &str| {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
        let r = c.response(false).unwrap();
        r.header("x-cache").unwrap_or_default().to_string()
    };
    xcache(&mut c, "/static/a.css", "");
    assert_eq!(xcache(&mut c, "/static/a.css", ""), "TCP_HIT");
    // The first matching line decides: the `cache` line before the cookie one.
    assert_eq!(
        xcache(&mut c, "/static/a.css", "Cookie: nocache=1\r\n"),
        "TCP_HIT"
    );
    let before = origin.count();
    for _ in 0..3 {
        assert_eq!(xcache(&mut c, "/page", ""), "TCP_CLIENT_REFRESH_MISS");
        assert_eq!(xcache(&mut c, "/login", ""), "TCP_CLIENT_REFRESH_MISS");
    }
    assert_eq!(
        origin.count(),
        before + 6,
        "every bypassed GET reached the origin"
    );
}

/// A DNS server on loopback that answers A queries with `records` (TTL 1)
/// and everything else with no answer: the resolver the test controls.
fn dns_stub(records: Arc<std::sync::Mutex<Vec<[u8; 4]>>>) -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            // The question: labels from offset 12, then type and class.
            let mut at = 12;
            while at < n && q[at] != 0 {
                at += 1 + q[at] as usize;
            }
            if at + 5 > n {
                continue;
            }
            let qtype = u16::from_be_bytes([q[at + 1], q[at + 2]]);
            let mut m = q[..at + 5].to_vec();
            m[2] = 0x81;
            m[3] = 0x80;
            let ips = if qtype == 1 {
                records.lock().unwrap().clone()
            } else {
                Vec::new()
            };
            m[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
            for ip in ips {
                m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                m.extend_from_slice(&ip);
            }
            let _ = sock.send_to(&m, from);
        }
    });
    addr
}

#[test]
fn a_domain_origin_uses_every_address_it_resolves_to_and_follows_changes() {
    let a = Backend::start("a");
    let port = a.addr.port();
    let b = Backend::on(
        "b",
        format!("127.0.0.2:{port}").parse().unwrap(),
        Arc::default(),
    );
    let records = Arc::new(std::sync::Mutex::new(vec![[127, 0, 0, 1], [127, 0, 0, 2]]));
    let dns = dns_stub(records.clone());
    let dir = dir_with("", &format!("<Address>origin.test:{port}</Address>"));
    add_cairn_settings(
        &dir,
        &format!(r#"<Resolver MaxTtlSec="1">{dns}</Resolver>"#),
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    for i in 0..20 {
        assert_eq!(get_text(&mut c, &format!("/d/{i}"), "").0, 200);
    }
    assert!(
        a.hits() >= 5 && b.hits() >= 5,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
    // The name now has one address: after its TTL, only that one is used.
    *records.lock().unwrap() = vec![[127, 0, 0, 2]];
    let log = cairn.wait_log("now resolves to");
    assert!(
        log.contains(&format!(
            "origin origin.test:{port} now resolves to 127.0.0.2:{port}"
        )),
        "{log}"
    );
    let before = a.hits();
    for i in 0..20 {
        assert_eq!(
            get_text(&mut c, &format!("/e/{i}"), ""),
            (200, "b".to_string())
        );
    }
    assert_eq!(a.hits(), before);
}

#[test]
fn origin_options_set_forwarded_for_user_agent_and_validators() {
    let origin = Origin::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1\r\nETag: \"v1\"\r\nLast-Modified: Mon, 07 Dec 2026 10:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    });
    let dir = config_dir(
        &origin.addr.to_string(),
        "",
        "<XFFClientIPOnly>ON</XFFClientIPOnly><UserAgent>*</UserAgent><OriginalETag>OFF</OriginalETag>",
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let ask = "X-Forwarded-For: 203.0.113.9\r\nUser-Agent: agent/1\r\n";
    assert_eq!(get_text(&mut c, "/v", ask).0, 200);
    let seen = origin.last();
    // XFFClientIPOnly: the client's address alone; UserAgent *: the client's.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("user-agent"), Some("agent/1"));
    // OriginalETag OFF: the revalidation asks by date only.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get_text(&mut c, "/v", ask).0, 200);
    let seen = origin.last();
    assert!(
        seen.header("if-modified-since").is_some(),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("if-none-match"), None);
}

#[test]
fn private_bypass_gives_each_client_connection_its_own_origin_connection() {
    let run = |private: &str| {
        let origin = Origin::start(|_| ok(b"posted"));
        let dir = config_dir(
            &origin.addr.to_string(),
            &format!("<BypassPostRequest Private=\"{private}\">ON</BypassPostRequest>"),
            "",
        );
        let cairn = Cairn::start(dir, 1);
        let (mut a, mut b) = (cairn.connect(), cairn.connect());
        for _ in 0..3 {
            for c in [&mut a, &mut b] {
                c.send(b"POST /p HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\nx");
                assert_eq!(c.response(false).unwrap().status, 200);
            }
        }
        origin.connections.load(SeqCst)
    };
    // Pooled: the two clients' sequential POSTs share one origin connection.
    assert_eq!(run("OFF"), 1);
    // Private: one each, kept across their requests.
    assert_eq!(run("ON"), 2);
}

#[test]
fn a_stale_object_while_every_origin_is_excluded_follows_unvalidatable_object_res_code() {
    // No validators on the object and TTLExtensionByFail OFF: without TTL-7
    // the origin would be asked, and its failure answered with 502.
    for (res_code, want) in [("0", 200), ("503", 503)] {
        let mut a = Backend::start("a");
        let dir = dir_with(
            r#"<Exclusion>1</Exclusion><Recovery Cycle="3600">5</Recovery>"#,
            &addresses(&[&a], "Address"),
        );
        edit_server_xml(
            &dir,
            "<Options></Options>",
            &format!("<Options><CacheStatusHeader>ON</CacheStatusHeader><UnvalidatableObjectResCode>{res_code}</UnvalidatableObjectResCode><TTLExtensionByFail>OFF</TTLExtensionByFail><TTL><OriginBusy>30</OriginBusy></TTL></Options>"),
        );
        let cairn = Cairn::start(dir, 1);
        let mut c = cairn.connect();
        assert_eq!(get_text(&mut c, "/c/obj", ""), (200, "a".to_string()));
        a.kill();
        // One failure excludes the only address.
        assert_eq!(get_text(&mut c, "/other", "").0, 502);
        cairn.wait_log("excluded from service");
        std::thread::sleep(Duration::from_millis(1100));
        c.send(b"GET /c/obj HTTP/1.1\r\nHost: test.local\r\n\r\n");
        let r = c.response(false).unwrap();
        assert_eq!(r.status, want, "ResCode {res_code}");
        if want == 200 {
            assert_eq!(
                (r.header("x-cache"), r.text().as_str()),
                (Some("TCP_REF_FAIL_HIT"), "a")
            );
            // (stderr is read by a thread: wait for the line.)
            assert!(eventually(Duration::from_secs(2), || cairn
                .stderr()
                .contains("every origin is excluded; serving stale")));
            // Extended by OriginBusy: fresh again, a plain hit.
            assert_eq!(c.get("/c/obj").header("x-cache"), Some("TCP_HIT"));
        }
    }
}

#[test]
fn ston_mode_caches_an_origin_failure_for_the_ttl_connect_timeout() {
    // TTL-4: nothing cached and the origin down: the error is kept for
    // <TTL><ConnectTimeout> seconds, so clients meanwhile do not each ask it.
    let mut a = Backend::start("a");
    a.kill();
    let dir = dir_with("<Exclusion>0</Exclusion>", &addresses(&[&a], "Address"));
    edit_server_xml(
        &dir,
        "<Options></Options>",
        "<Options><CacheStatusHeader>ON</CacheStatusHeader><TTL><ConnectTimeout>1</ConnectTimeout></TTL></Options>",
    );
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let attempts = |cairn: &Cairn| cairn.stderr().matches("connect failed").count();
    assert_eq!(get_text(&mut c, "/down", "").0, 502);
    // (The log is read from cairn's stderr by a thread: wait for the line.)
    assert!(eventually(Duration::from_secs(2), || attempts(&cairn) == 1));
    for _ in 0..5 {
        c.send(b"GET /down HTTP/1.1\r\nHost: test.local\r\n\r\n");
        let r = c.response(false).unwrap();
        assert_eq!(
            (r.status, r.header("x-cache")),
            (502, Some("TCP_NEGATIVE_HIT"))
        );
    }
    assert_eq!(attempts(&cairn), 1, "the cached error answered");
    // Past its second, the origin is asked again.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get_text(&mut c, "/down", "").0, 502);
    assert!(
        eventually(Duration::from_secs(2), || attempts(&cairn) == 2),
        "{}",
        cairn.stderr()
    );
}

#[test]
fn with_every_address_excluded_a_request_makes_one_try_not_a_walk() {
    let (mut a, mut b, mut c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    a.kill();
    b.kill();
    c.kill();
    let dir = dir_with(
        r#"<Exclusion>1</Exclusion><Recovery Cycle="3600">5</Recovery>"#,
        &addresses(&[&a, &b, &c], "Address"),
    );
    let cairn = Cairn::start(dir, 1);
    let mut cl = cairn.connect();
    // One warning per attempt (the retry's own info line names the error too).
    let attempts = |cairn: &Cairn| {
        cairn
            .stderr()
            .lines()
            .filter(|l| l.contains("connect failed") && l.contains("-> 502"))
            .count()
    };
    // In service: the request walks all three (and excludes each).
    assert_eq!(get_text(&mut cl, "/w/1", "").0, 502);
    assert!(eventually(Duration::from_secs(2), || attempts(&cairn) == 3));
    assert!(eventually(Duration::from_secs(2), || {
        cairn.stderr().matches("excluded from service").count() == 3
    }));
    // All excluded: one try each.
    for i in 2..5 {
        assert_eq!(get_text(&mut cl, &format!("/w/{i}"), "").0, 502);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(attempts(&cairn), 6, "{}", cairn.stderr());
}
