//! Request smuggling: every ambiguous or malformed framing is refused, and the
//! request smuggled behind it is never answered nor sent to the origin. The
//! accepted forms are answered exactly once each.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

/// The request hidden behind each bad one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";

/// Sends `raw` and reads until cairn closes (or 3 s of silence): every byte of
/// every response.
fn exchange(c: &Cairn, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| out[i + 9..].get(..3)?.parse().ok())
        .collect()
}

fn cairn_with_echo() -> (Cairn, Origin) {
    let origin = Origin::start(|r| {
        let body = format!("{} {} {}", r.method, r.path, r.body.len());
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let dir = config_dir(&origin.addr.to_string(), "", "");
    (Cairn::start(dir, 1), origin)
}

#[test]
fn smuggling_table_every_bad_framing_is_refused_and_nothing_behind_it_answered() {
    let (c, origin) = cairn_with_echo();
    let h = "Host: test.local\r\n";
    // (case, the bad request's bytes; SMUGGLED follows each)
    let cases: Vec<(&str, String)> = vec![
        ("CL and TE", format!("POST / HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE and CL", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n")),
        ("two differing CL", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 45\r\n\r\nhello")),
        ("CL +5", format!("POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello")),
        ("CL 5,5", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5,5\r\n\r\nhello")),
        ("CL -1", format!("POST / HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n")),
        ("CL hex", format!("POST / HTTP/1.1\r\n{h}Content-Length: 0x5\r\n\r\nhello")),
        ("TE xchunked", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n")),
        ("TE chunked, identity", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")),
        ("TE doubled", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE chunked, chunked", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")),
        ("space before colon", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n")),
        ("TE on HTTP/1.0", format!("POST / HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("obs-fold", format!("GET / HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n")),
        ("obs-fold on TE", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")),
        ("NUL in a value", format!("GET / HTTP/1.1\r\n{h}X-Nul: a\0b\r\n\r\n")),
        ("CR in a value", format!("GET / HTTP/1.1\r\n{h}X-Cr: a\rb\r\n\r\n")),
        ("two Host", format!("GET / HTTP/1.1\r\n{h}Host: other.local\r\n\r\n")),
        ("no Host on 1.1", "GET / HTTP/1.1\r\n\r\n".to_string()),
        ("userinfo in Host", "GET / HTTP/1.1\r\nHost: user@test.local\r\n\r\n".to_string()),
        ("userinfo in an absolute URI", format!("GET http://user@test.local/ HTTP/1.1\r\n{h}\r\n")),
        ("chunk-size overflow", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n")),
        ("bare LF in chunk lines", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n")),
        ("chunk data without CRLF", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")),
        // The same on requests whose body is drained, not forwarded (GET, HEAD).
        ("GET with CL and TE", format!("GET / HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("GET with a bad chunk", format!("GET / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")),
        ("HEAD with chunk-size overflow", format!("HEAD / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n")),
        ("negative chunk size", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")),
    ];
    let mut failures = Vec::new();
    for (name, bad) in &cases {
        let before = origin.count();
        let out = exchange(&c, format!("{bad}{SMUGGLED}").as_bytes());
        let got = statuses(&out);
        let refused = got.len() == 1 && (400..=501).contains(&got[0]);
        let smuggled_seen = origin
            .seen
            .lock()
            .unwrap()
            .iter()
            .skip(before)
            .any(|r| r.path.contains("smuggled"));
        if !refused || smuggled_seen || out.contains("smuggled") {
            failures.push(format!(
                "{name}: statuses {got:?}, origin saw smuggled: {smuggled_seen}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(origin.count(), 0, "no bad request reached the origin");
}

#[test]
fn accepted_framings_are_answered_exactly_once_each() {
    let (c, origin) = cairn_with_echo();
    let h = "Host: test.local\r\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "chunked with a trailing space, then a pipelined GET",
            format!("POST /a HTTP/1.1\r\n{h}Transfer-Encoding: chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n{h}Connection: close\r\n\r\n"),
            vec!["POST /a 5", "GET /b 0"],
        ),
        (
            "a Content-Length body, then a pipelined GET",
            format!("POST /c HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhelloGET /d HTTP/1.1\r\n{h}Connection: close\r\n\r\n"),
            vec!["POST /c 5", "GET /d 0"],
        ),
        (
            // RFC 9112 §2.2: a recipient MAY take a lone LF as a line end in the
            // head; cairn re-frames what it forwards, so nothing is ambiguous.
            "bare LF line ends in the head, then a pipelined GET",
            format!("GET /g HTTP/1.1\nHost: test.local\nX-Lf: a\n\nGET /h HTTP/1.1\r\n{h}Connection: close\r\n\r\n"),
            vec!["GET /g 0", "GET /h 0"],
        ),
        (
            "chunk extensions and a trailer, then a pipelined GET",
            format!("POST /e HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\nGET /f HTTP/1.1\r\n{h}Connection: close\r\n\r\n"),
            vec!["POST /e 5", "GET /f 0"],
        ),
    ];
    for (name, raw, want) in cases {
        let out = exchange(&c, raw.as_bytes());
        assert_eq!(statuses(&out), vec![200; want.len()], "{name}: {out}");
        for w in &want {
            assert_eq!(out.matches(w).count(), 1, "{name}: {w:?} once in {out}");
        }
    }
    assert_eq!(origin.count(), 8);
}

/// RFC 9112 §9.6: a connection closed with the client's bytes unread is
/// reset, and a reset can destroy the response before the client reads it.
/// So a refusal with bytes behind it lingers and drains; a `Connection:
/// close` exchange with nothing behind it closes at once (its FIN, no wait).
#[test]
fn close_lingers_only_when_client_bytes_are_unread() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let origin = Origin::start(|_| ok(b"fine"));
    let cairn = Cairn::start(config_dir(&origin.addr.to_string(), "", ""), 1);
    // A refused head (400) followed by 256 KiB the server never parses.
    let mut s = std::net::TcpStream::connect(cairn.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut req = b"GET / HTTP/1.1\r\nHost: test.local\r\nContent-Length: abc\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 256 << 10));
        let _ = w.write_all(&req);
    });
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(r.is_ok(), "no reset before the end: {r:?} after {text:?}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Nothing behind: the close is immediate.
    let mut s = std::net::TcpStream::connect(cairn.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed at once, not after a linger: {:?}",
        started.elapsed()
    );
    // Closed for good, not half-closed and draining: a byte sent now is
    // answered with a reset (a lingering server would read it quietly).
    let _ = s.write_all(b"x");
    std::thread::sleep(Duration::from_millis(100));
    let mut b = [0u8; 1];
    let reset = matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        || s.write_all(b"y").is_err();
    assert!(reset, "a plain close, no lingering read");
}
