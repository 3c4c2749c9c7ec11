//! Hostile clients against the real binary: cache poisoning through unkeyed
//! request headers, connection caps, and request smuggling.

mod support;

use std::path::PathBuf;
use support::*;

/// An origin that shapes its answer from request headers the cache key does
/// not hold, as real origins (frameworks behind a proxy) do.
fn poisonable_origin() -> Origin {
    Origin::start(|r| {
        let host = r
            .header("x-forwarded-host")
            .unwrap_or("test.local")
            .to_string();
        let text = |status: &str, extra: String, body: String| {
            Reply::Bytes(
                format!(
                    "HTTP/1.1 {status}\r\n{extra}Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        };
        match r.path.as_str() {
            "/redirect" => text(
                "301 Moved Permanently",
                format!("Location: https://{host}/\r\n"),
                format!("moved to {host}"),
            ),
            "/page" => text("200 OK", String::new(), format!("<a href=//{host}/x>")),
            "/method" => match r.header("x-http-method-override") {
                Some(_) => text("405 Method Not Allowed", String::new(), "no".into()),
                None => text("200 OK", String::new(), "ok".into()),
            },
            "/personal" => {
                let who = match r.header("cookie") {
                    Some(c) if c.contains("user=alice") => "alice",
                    _ => "guest",
                };
                text("200 OK", String::new(), format!("hello {who}"))
            }
            _ => text("404 Not Found", String::new(), String::new()),
        }
    })
}

/// A config directory whose `server.xml` is `server` and whose one vhost
/// `test.local` fronts `origin`.
fn dir_with(server: &str, origin: &Origin) -> PathBuf {
    write_config(temp_dir("conf"), server, &origin.addr.to_string())
}

fn get_with(c: &Cairn, path: &str, extra: &str) -> Response {
    let mut cl = c.connect();
    cl.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
    cl.response(false).expect("a response")
}

/// The attacker sends the header first; the next, ordinary client must get the
/// clean object (from the cache: the origin is asked once per path).
fn probe_unkeyed(c: &Cairn, origin: &Origin) {
    let before = origin.count();
    let attack = get_with(c, "/redirect", "X-Forwarded-Host: evil.example\r\n");
    assert_eq!(attack.status, 301);
    let next = get_with(c, "/redirect", "");
    assert_eq!(next.status, 301);
    assert_eq!(next.header("location"), Some("https://test.local/"));
    assert!(!next.text().contains("evil"), "{}", next.text());

    get_with(c, "/page", "X-Forwarded-Host: evil.example\r\n");
    let page = get_with(c, "/page", "");
    assert_eq!(page.text(), "<a href=//test.local/x>");

    let attack = get_with(c, "/method", "X-HTTP-Method-Override: DELETE\r\n");
    assert_eq!(attack.status, 200, "the override never reached the origin");
    let next = get_with(c, "/method", "");
    assert_eq!((next.status, next.text().as_str()), (200, "ok"));
    assert_eq!(
        origin.count() - before,
        3,
        "each object filled once, then hits"
    );
    for seen in origin.seen.lock().unwrap().iter() {
        assert!(seen.header("x-forwarded-host").is_none(), "{seen:?}");
        assert!(seen.header("x-http-method-override").is_none(), "{seen:?}");
    }
}

/// A page personalised from Cookie, with no Cache-Control.
fn personal_page(c: &Cairn) -> (String, String) {
    let alice = get_with(c, "/personal", "Cookie: user=alice\r\n").text();
    let next = get_with(c, "/personal", "").text();
    (alice, next)
}

#[test]
fn unkeyed_headers_and_cookies_do_not_poison_the_cache_in_rfc9111_mode() {
    let origin = poisonable_origin();
    // The shipped server.xml (the embedded default), and a minimal RFC 9111 one.
    // (with the test cache: the shipped default is /var/cache/cairn, one per host)
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/server.xml"))
        .unwrap()
        .replacen("<Server>", &format!("<Server>{TEST_CACHE}"), 1);
    let minimal = server_xml(r#"<TTL Mode="rfc9111"/>"#, "");
    for server in [shipped, minimal] {
        let c = Cairn::start(dir_with(&server, &origin), 1);
        probe_unkeyed(&c, &origin);
        assert_eq!(
            personal_page(&c),
            ("hello alice".into(), "hello guest".into()),
            "the personalised page was not stored"
        );
        assert!(
            !c.stderr()
                .contains("STON TTL mode (no <TTL Mode>) caches as STON"),
            "{}",
            c.stderr()
        );
    }
}

#[test]
fn a_ston_config_keeps_ston_cookie_semantics_and_warns_about_it() {
    let origin = poisonable_origin();
    let dir = dir_with(&server_xml("", ""), &origin);
    let out = check(&dir);
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("vhost 'test.local': STON TTL mode (no <TTL Mode>) caches as STON"),
        "{report}"
    );
    let c = Cairn::start(dir, 1);
    assert!(
        c.wait_log("STON TTL mode (no <TTL Mode>) caches as STON")
            .contains("test.local"),
        "{}",
        c.stderr()
    );
    // The unkeyed-header list applies in every mode.
    probe_unkeyed(&c, &origin);
    // STON: cookies on cached content are ignored, as documented (and warned).
    assert_eq!(
        personal_page(&c),
        ("hello alice".into(), "hello alice".into())
    );
}

#[test]
fn unkeyed_headers_can_be_configured_and_forwarded_headers_set_by_cairn() {
    let origin = poisonable_origin();
    let server = server_xml(
        r#"<TTL Mode="rfc9111"/><UnkeyedHeaders>X-Other</UnkeyedHeaders><ForwardedHeaders>ON</ForwardedHeaders>"#,
        "",
    );
    let c = Cairn::start(dir_with(&server, &origin), 1);
    // The client's X-Forwarded-Host is replaced by the vhost name.
    get_with(
        &c,
        "/page",
        "X-Forwarded-Host: evil.example\r\nX-Other: 1\r\n",
    );
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-host"), Some("test.local"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(seen.header("x-other").is_none());
    assert_eq!(get_with(&c, "/page", "").text(), "<a href=//test.local/x>");
    // X-HTTP-Method-Override is no longer in the (replaced) list: forwarded.
    get_with(&c, "/method", "X-HTTP-Method-Override: DELETE\r\n");
    assert_eq!(
        origin.last().header("x-http-method-override"),
        Some("DELETE")
    );
}

/// A client connection from a chosen loopback address (the whole of 127/8 is
/// local), to tell two clients apart by address.
fn connect_from(src: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// Served: a GET on this connection gets a response.
fn served(s: &std::net::TcpStream) -> bool {
    let mut c = Client::from_stream(s.try_clone().unwrap());
    c.send(b"GET /page HTTP/1.1\r\nHost: test.local\r\n\r\n");
    c.response(false).is_some_and(|r| r.status == 200)
}

/// Closed by cairn without a byte: a read sees the end (or a reset).
fn refused(mut s: std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    match s.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(150));
}

#[test]
fn connection_caps_close_the_connection_past_the_cap_and_serve_other_addresses() {
    let origin = poisonable_origin();
    let server = format!("<Server>{TEST_CACHE}<Cache><MaxSockets Reopen=\"50\">6</MaxSockets></Cache><Cairn><MaxConnectionsPerIp>3</MaxConnectionsPerIp></Cairn></Server>");
    let c = Cairn::start(dir_with(&server, &origin), 2);
    // Per address: three connections from 127.0.0.1 are served; the fourth is
    // closed unanswered, while 127.0.0.2 is still served.
    let mut held: Vec<_> = (0..3).map(|_| connect_from("127.0.0.1", c.addr)).collect();
    assert!(held.iter().all(served));
    assert!(
        refused(connect_from("127.0.0.1", c.addr)),
        "the fourth from one address"
    );
    let other = connect_from("127.0.0.2", c.addr);
    assert!(served(&other), "another address is still served");
    // Closing one frees its place.
    drop(held.remove(0));
    settle();
    let again = connect_from("127.0.0.1", c.addr);
    assert!(served(&again));
    // Global: 4 open; two more reach MaxSockets=6, the seventh is closed, and
    // accepting stays paused until the count falls back to Reopen (50%: 3).
    let more: Vec<_> = ["127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|a| connect_from(a, c.addr))
        .collect();
    assert!(more.iter().all(served));
    assert!(
        refused(connect_from("127.0.0.5", c.addr)),
        "past MaxSockets"
    );
    drop(more);
    settle();
    assert!(
        refused(connect_from("127.0.0.5", c.addr)),
        "4 open: paused until Reopen"
    );
    drop((other, again));
    settle();
    assert!(
        served(&connect_from("127.0.0.5", c.addr)),
        "2 open: resumed"
    );
    let log = c.stderr();
    assert!(log.contains("MaxConnectionsPerIp reached"), "{log}");
    assert!(log.contains("MaxSockets reached"), "{log}");
    drop(held);
}

// ---- Request bodies ----

/// An origin that answers every request with the length and a checksum of the
/// body it received.
fn echo_origin() -> Origin {
    Origin::start(|r| {
        let sum = r
            .body
            .iter()
            .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
        let text = format!("{} {} {sum}", r.method, r.body.len());
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
            .into_bytes(),
        )
    })
}

fn checksum(b: &[u8]) -> u64 {
    b.iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64))
}

fn spool_server(spool: &std::path::Path, cairn: &str) -> String {
    format!(
        "<Server>{TEST_CACHE}<Cairn><SpoolDir>{}</SpoolDir>{cairn}</Cairn></Server>",
        spool.display()
    )
}

fn post(c: &mut Client, body: &[u8], chunked: bool) -> Response {
    if chunked {
        let mut raw =
            b"POST /up HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in body.chunks(10_000) {
            raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            raw.extend_from_slice(part);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        c.send(&raw);
    } else {
        c.send(
            format!(
                "POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        c.send(body);
    }
    c.response(false).expect("a response")
}

#[test]
fn large_request_bodies_are_spooled_and_forwarded_intact() {
    let origin = echo_origin();
    let spool = temp_dir("spool");
    let c = Cairn::start(dir_with(&spool_server(&spool, ""), &origin), 1);
    let body: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i * 7 + i / 1000) as u8)
        .collect();
    let mut cl = c.connect();
    for chunked in [false, true] {
        let r = post(&mut cl, &body, chunked);
        assert_eq!(
            r.text(),
            format!("POST {} {}", body.len(), checksum(&body)),
            "chunked: {chunked}"
        );
    }
    // A small body (in memory) on the same connection.
    let r = post(&mut cl, b"hello", false);
    assert_eq!(r.text(), format!("POST 5 {}", checksum(b"hello")));
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spooled bodies leave no file behind"
    );
}

#[test]
fn the_request_body_budget_answers_503_and_frees_its_charge() {
    let origin = echo_origin();
    let spool = temp_dir("spool");
    let server = spool_server(
        &spool,
        "<RequestBodyMemory>100KB</RequestBodyMemory><RequestBodyDisk>1MB</RequestBodyDisk>",
    );
    let c = Cairn::start(dir_with(&server, &origin), 1);
    // Larger than the whole disk budget: refused before the body is invited.
    let mut cl = c.connect();
    cl.send(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n");
    let r = cl.response(false).unwrap();
    assert_eq!(r.status, 503, "no 100 Continue, a 503");
    // Two 600 KB uploads: the first has sent 500 KB (charged as it arrives), so
    // the second, whose declared length does not fit what is left, is refused.
    let mut first = c.connect();
    first.send(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 600000\r\n\r\n");
    first.send(&vec![b'a'; 500_000]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut second = c.connect();
    second.send(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 600000\r\n\r\n");
    assert_eq!(second.response(false).unwrap().status, 503);
    // A declared length alone holds nothing: a head that never sends its body
    // does not keep others out.
    let mut idle = c.connect();
    idle.send(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 400000\r\n\r\n");
    // Small bodies still fit in memory meanwhile.
    assert_eq!(post(&mut c.connect(), b"small", false).status, 200);
    // The first finishes; its charge is released and the next upload fits.
    first.send(&vec![b'a'; 100_000]);
    assert_eq!(
        first.response(false).unwrap().text(),
        format!("POST 600000 {}", checksum(&[b'a'; 600_000]))
    );
    let r = post(&mut c.connect(), &[b'b'; 600_000], false);
    assert_eq!(r.status, 200);
    drop(idle);
}

#[test]
fn a_get_body_is_drained_not_buffered_or_forwarded() {
    let origin = echo_origin();
    let c = Cairn::start(dir_with(&server_xml("", ""), &origin), 1);
    let mut cl = c.connect();
    // A GET with a 1 MB body, then a pipelined GET: both answered, in order, and
    // the origin never sees the body.
    let mut raw =
        b"GET /g HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    raw.extend_from_slice(&vec![b'G'; 1_000_000]);
    raw.extend_from_slice(b"GET /g2 HTTP/1.1\r\nHost: test.local\r\n\r\n");
    cl.send(&raw);
    assert_eq!(cl.response(false).unwrap().text(), "GET 0 0");
    assert_eq!(cl.response(false).unwrap().text(), "GET 0 0");
    assert!(origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.body.is_empty()));
}

#[test]
fn many_slow_uploads_hold_little_memory() {
    let origin = echo_origin();
    let spool = temp_dir("spool");
    let c = Cairn::start(dir_with(&spool_server(&spool, ""), &origin), 1);
    let _ = post(&mut c.connect(), b"warm", false);
    let before = status_kb(c.pid(), "VmRSS");
    // 40 uploads of 8 MB each, 4 MB of each sent, then held: POSTs (spooled) and
    // GETs (drained as they come: the cache answers GET).
    let mut held = Vec::new();
    for i in 0..40 {
        let mut cl = c.connect();
        let method = if i % 2 == 0 { "POST" } else { "GET" };
        cl.send(
            format!("{method} /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 8000000\r\n\r\n")
                .as_bytes(),
        );
        cl.send(&vec![b'u'; 4_000_000]);
        held.push(cl);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The bytes were taken by cairn, not left in its sockets' receive queues
    // (where they would cost cairn nothing): a test of the spool, not of the kernel.
    let unread = unread_bytes(c.addr.port());
    assert!(
        unread < 16 << 20,
        "{unread} bytes still unread in cairn's sockets: the uploads were not consumed"
    );
    let during = status_kb(c.pid(), "VmRSS");
    eprintln!(
        "RSS {before} kB -> {during} kB with 40 x 4 MB of upload in flight ({unread} bytes unread)"
    );
    assert!(
        during < before + 24 * 1024,
        "RSS grew from {before} kB to {during} kB for 160 MB of uploads in flight"
    );
    // And what was spooled is what the origin gets, once the body is complete.
    let mut first = held.swap_remove(0);
    first.send(&vec![b'u'; 4_000_000]);
    let r = first.response(false).expect("a response");
    assert_eq!(
        r.text(),
        format!("POST 8000000 {}", checksum(&vec![b'u'; 8_000_000]))
    );
    drop(held);
}

#[test]
fn uploads_stalled_just_short_of_a_file_write_hold_no_gathered_memory() {
    // Each upload stops one byte short of the 64 KiB the spool gathers before a
    // file write. Gathered bytes are written out before cairn waits for more, so
    // the stalled uploads cost their read buffers, not 64 KiB (or its doubling) each.
    let origin = echo_origin();
    let spool = temp_dir("spool-stall");
    let c = Cairn::start(dir_with(&spool_server(&spool, ""), &origin), 1);
    let _ = post(&mut c.connect(), b"warm", false);
    let before = status_kb(c.pid(), "VmRSS");
    let n = 300;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut cl = c.connect();
        cl.send(b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1000000\r\n\r\n");
        cl.send(&vec![b's'; 64 * 1024 - 1]);
        held.push(cl);
    }
    std::thread::sleep(std::time::Duration::from_millis(800));
    let unread = unread_bytes(c.addr.port());
    assert!(
        unread < 2 << 20,
        "{unread} bytes unread in cairn's sockets: the uploads were not taken"
    );
    let during = status_kb(c.pid(), "VmRSS");
    eprintln!("RSS {before} kB -> {during} kB with {n} uploads stalled at 64 KiB - 1");
    // 300 x 64 KiB would be 19 MiB.
    assert!(
        during < before + 12 * 1024,
        "RSS grew from {before} kB to {during} kB: stalled uploads hold their gathered bytes"
    );
    drop(held);
}

/// Bytes waiting in the receive queues of the established TCP sockets on
/// `port` (from /proc/net/tcp: `rx_queue` of each socket whose local port it is).
fn unread_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let established = f[3] == "01";
            let rx = u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()?;
            (local_port == port && established).then_some(rx)
        })
        .sum()
}

#[test]
fn underscore_and_case_variants_of_unkeyed_headers_are_not_forwarded_either() {
    let origin = poisonable_origin();
    let c = Cairn::start(dir_with(&server_xml("", ""), &origin), 1);
    get_with(
        &c,
        "/page",
        "X_Forwarded_Host: evil.example\r\nx-forwarded-HOST: evil2.example\r\nX-Forwarded-Prefix: /evil\r\n",
    );
    let seen = origin.last();
    assert!(
        seen.headers.iter().all(|(_, v)| !v.contains("evil")),
        "{seen:?}"
    );
}
