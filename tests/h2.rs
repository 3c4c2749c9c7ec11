//! HTTP/2 end to end: h2 over TLS (ALPN) and h2c by prior knowledge on the real
//! binary, with the `h2` crate as the client (and curl and h2load where present).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

/// A config with HTTP/2 `status`, a plain listener and, where openssl can make
/// a self-signed certificate, a TLS one (`None` without it: h2c only).
fn h2_dir(origin: &Origin, status: &str) -> (std::path::PathBuf, bool) {
    let dir = config_dir(&origin.addr.to_string(), "", "");
    edit_server_xml(
        &dir,
        "<Cache>",
        &format!(
            r#"<Cache><Http2 Status="{status}"><MaxConcurrentStream>100</MaxConcurrentStream></Http2>"#
        ),
    );
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test.local",
            "-addext",
            "subjectAltName=DNS:test.local",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("openssl missing: HTTP/2 over TLS not tested");
        return (dir, false);
    }
    edit_server_xml(
        &dir,
        "</Server>",
        r#"<Https Listen="127.0.0.1:0"><Cert>cert.pem</Cert><Key>key.pem</Key></Https></Server>"#,
    );
    (dir, true)
}

/// GET `path` over h2c (prior knowledge) with the h2 crate: (status, body).
fn h2c_get(addr: SocketAddr, paths: &[&str]) -> Vec<(u16, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut out = Vec::new();
        // All at once, on one connection: concurrent streams.
        let mut pending = Vec::new();
        for p in paths {
            let mut c = client.clone().ready().await.unwrap();
            let req = http::Request::builder()
                .uri(format!("http://test.local{p}"))
                .body(())
                .unwrap();
            let (resp, _) = c.send_request(req, true).unwrap();
            pending.push(resp);
        }
        // Each body read at once by its own task: the client releases every
        // stream's window as it goes (read one after another, the unread ones
        // would hold the connection window).
        let tasks: Vec<_> = pending
            .into_iter()
            .map(|resp| {
                tokio::spawn(async move {
                    let resp = resp.await.unwrap();
                    let status = resp.status().as_u16();
                    let mut body = resp.into_body();
                    let mut got = Vec::new();
                    while let Some(d) = body.data().await {
                        let d = d.unwrap();
                        let _ = body.flow_control().release_capacity(d.len());
                        got.extend_from_slice(&d);
                    }
                    (status, got)
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

fn curl(args: &[&str], out: &Path) -> Option<String> {
    let o = Command::new("curl")
        .args(["-sk", "--max-time", "20", "-o"])
        .arg(out)
        .args(["-w", "%{http_version} %{http_code}"])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn cached_bodies_are_byte_identical_over_h2_h2c_https_and_plain_http() {
    let body: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let served = body.clone();
    let origin = Origin::start(move |_| ok(&served));
    let (dir, tls) = h2_dir(&origin, "Active");
    let cairn = Cairn::start(dir.clone(), 1);
    // Filled over plain HTTP/1.1 ...
    assert_eq!(cairn.connect().get("/obj").body, body);
    // ... and served from the cache over h2c to 20 concurrent streams.
    let paths: Vec<&str> = vec!["/obj"; 20];
    for (status, got) in h2c_get(cairn.addr, &paths) {
        assert_eq!(status, 200);
        assert_eq!(got.len(), body.len());
        assert!(got == body, "h2c body differs");
    }
    assert_eq!(origin.count(), 1, "every h2c stream was a hit");
    if !tls {
        return;
    }
    // curl where present: h2 over TLS, h2c, HTTP/1.1 over TLS.
    let https = format!("https://test.local:{}/obj", cairn.https[0].port());
    let resolve = format!("test.local:{}:127.0.0.1", cairn.https[0].port());
    let plain = format!("http://{}/obj", cairn.addr);
    let cases: [(&[&str], &str); 3] = [
        (&["--http2", "--resolve", &resolve, &https], "2 200"),
        (&["--http1.1", "--resolve", &resolve, &https], "1.1 200"),
        (
            &["--http2-prior-knowledge", "-H", "Host: test.local", &plain],
            "2 200",
        ),
    ];
    for (args, want) in cases {
        let out = dir.join("curl.out");
        let Some(got) = curl(args, &out) else {
            eprintln!("curl missing: curl cases skipped");
            return;
        };
        assert_eq!(got, want, "{args:?}");
        assert!(
            std::fs::read(&out).unwrap() == body,
            "{args:?}: body differs"
        );
    }
    assert_eq!(origin.count(), 1);
}

#[test]
fn h2load_with_100_streams_per_connection_has_no_errors() {
    let origin = Origin::start(|_| ok(&[b'x'; 1024]));
    let (dir, tls) = h2_dir(&origin, "Active");
    if !tls {
        return;
    }
    let cairn = Cairn::start(dir, 1);
    let url = format!("https://127.0.0.1:{}/1k", cairn.https[0].port());
    let Ok(o) = Command::new("h2load")
        .args(["-n", "20000", "-c", "4", "-m", "100", &url])
        .output()
    else {
        eprintln!("h2load missing: skipped");
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("20000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{text}"
    );
    assert!(text.contains("status codes: 20000 2xx"), "{text}");
}

#[test]
fn http2_is_off_unless_status_is_active_as_in_ston() {
    let origin = Origin::start(|_| ok(b"x"));
    let (dir, tls) = h2_dir(&origin, "Inactive");
    let cairn = Cairn::start(dir.clone(), 1);
    // ALPN does not offer h2: curl --http2 falls back to HTTP/1.1.
    if tls {
        let https = format!("https://test.local:{}/", cairn.https[0].port());
        let resolve = format!("test.local:{}:127.0.0.1", cairn.https[0].port());
        if let Some(got) = curl(&["--http2", "--resolve", &resolve, &https], &dir.join("o")) {
            assert_eq!(got, "1.1 200");
        }
    }
    // And the h2c preface is not an HTTP/2 connection: refused as HTTP/1.
    let mut c = cairn.connect();
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let r = c.response(false).expect("an HTTP/1 refusal");
    assert!(r.status >= 400, "{r:?}");
}

#[test]
fn a_drain_sends_goaway_and_the_stream_in_flight_finishes() {
    // The origin answers slowly: the stream is in flight when SIGTERM arrives.
    let origin = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(800));
        ok(b"finished")
    });
    let (dir, _) = h2_dir(&origin, "Active");
    let cairn = Cairn::start(dir, 1);
    let addr = cairn.addr;
    let pid = cairn.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut c = client.ready().await.unwrap();
        let req = http::Request::builder()
            .uri("http://test.local/slow")
            .body(())
            .unwrap();
        let (resp, _) = c.send_request(req, true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let resp = resp.await.expect("the stream in flight is answered");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = body.data().await {
            got.extend_from_slice(&d.unwrap());
        }
        assert_eq!(got, b"finished");
        // GOAWAY: a new stream on this connection is refused.
        let c2 = c.clone();
        let refused = match c2.ready().await {
            Err(_) => true,
            Ok(mut c2) => {
                let req = http::Request::builder()
                    .uri("http://test.local/after")
                    .body(())
                    .unwrap();
                match c2.send_request(req, true) {
                    Err(_) => true,
                    Ok((r, _)) => r.await.is_err(),
                }
            }
        };
        assert!(refused, "no new stream after GOAWAY");
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    });
}

#[test]
fn empty_bodies_heads_and_request_bodies_over_h2c() {
    let origin = Origin::start(|r| {
        if r.path == "/empty" {
            ok(b"")
        } else {
            ok(format!("{} {} bytes", r.method, r.body.len()).as_bytes())
        }
    });
    let (dir, _) = h2_dir(&origin, "Active");
    let cairn = Cairn::start(dir, 1);
    // A cached empty body: a miss, then a hit, both complete (not reset).
    for _ in 0..2 {
        let (status, len, body) = h2c_request(cairn.addr, "GET", "/empty", b"");
        assert_eq!((status, len.as_deref(), body.len()), (200, Some("0"), 0));
    }
    assert_eq!(origin.count(), 1);
    // HEAD keeps the length a GET would have.
    let _ = h2c_request(cairn.addr, "GET", "/sized", b"");
    let (status, len, body) = h2c_request(cairn.addr, "HEAD", "/sized", b"");
    assert_eq!((status, len.as_deref(), body.len()), (200, Some("11"), 0));
    // A POST body reaches the origin whole, with its length.
    let upload = vec![b'p'; 200_000];
    let (status, _, body) = h2c_request(cairn.addr, "POST", "/up", &upload);
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "POST 200000 bytes".to_string())
    );
    // Past the in-memory bound for HTTP/2 bodies: 413, not held.
    let big = vec![b'b'; 1_100_000];
    let (status, _, _) = h2c_request(cairn.addr, "POST", "/up", &big);
    assert_eq!(status, 413);
}

/// One request over h2c with the h2 crate: (status, content-length, body).
fn h2c_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Option<String>, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut c = client.ready().await.unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://test.local{path}"))
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, body.is_empty()).unwrap();
        if !body.is_empty() {
            send.send_data(bytes::Bytes::copy_from_slice(body), true)
                .unwrap();
        }
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let len = resp
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        let mut b = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = b.data().await {
            let d = d.unwrap();
            let _ = b.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        (status, len, got)
    })
}

#[test]
fn a_rapid_reset_flood_gets_goaway_and_is_counted_while_others_are_served() {
    let origin = Origin::start(|_| ok(b"hit me"));
    let (dir, _) = h2_dir(&origin, "Active");
    let cairn = Cairn::start(dir, 1);
    let addr = cairn.addr;
    let _ = h2c_request(addr, "GET", "/r", b"");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        // Open and reset streams as fast as possible (CVE-2023-44487).
        for _ in 0..20_000 {
            let Ok(mut c) = client.clone().ready().await else {
                break;
            };
            let req = http::Request::builder()
                .uri("http://test.local/r")
                .body(())
                .unwrap();
            let Ok((_, mut send)) = c.send_request(req, false) else {
                break;
            };
            send.send_reset(h2::Reason::CANCEL);
            if conn.is_finished() {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the flooding connection is ended")
            .unwrap()
    });
    // The server ends it: GOAWAY ENHANCE_YOUR_CALM, which the flooding client
    // may only see as the closed socket under its next write.
    let e = ended.expect_err("ended by the server");
    assert!(
        e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(),
        "{e:?}"
    );
    // The shard serves everyone else.
    let (status, _, body) = h2c_request(addr, "GET", "/r", b"");
    assert_eq!((status, &body[..]), (200, &b"hit me"[..]));
    cairn.signal("USR1");
    let stats = cairn.wait_log("ended by GOAWAY");
    assert!(!stats.contains(" 0 HTTP/2 connections ended"), "{stats}");
}

/// A raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal without indexing, new name" fields (short names and values).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
        out.push(v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Sends the preface, SETTINGS and `frames`, then reads the server's frames
/// until a RST_STREAM or GOAWAY: (frame type, error code).
fn first_error(addr: SocketAddr, frames: &[Vec<u8>]) -> Option<(u8, u32)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                3 => return Some((3, u32::from_be_bytes(payload[..4].try_into().unwrap()))),
                7 => return Some((7, u32::from_be_bytes(payload[4..8].try_into().unwrap()))),
                _ => {}
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

#[test]
fn malformed_http2_requests_get_the_rfc_9113_error_and_the_shard_serves_on() {
    let origin = Origin::start(|_| ok(b"fine"));
    let (dir, _) = h2_dir(&origin, "Active");
    let cairn = Cairn::start(dir, 1);
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "test.local"),
    ];
    let with = |extra: &[(&'static str, &'static str)], path: bool| {
        let mut f: Vec<(&str, &str)> = base.to_vec();
        if path {
            f.push((":path", "/"));
        }
        f.extend_from_slice(extra);
        hpack(&f)
    };
    const PROTOCOL_ERROR: u32 = 1;
    const FLOW_CONTROL_ERROR: u32 = 3;
    const STREAM_CLOSED: u32 = 5;
    const ENHANCE_YOUR_CALM: u32 = 11;
    // A header block that never ends: HEADERS without END_HEADERS, then a
    // stream of CONTINUATION frames.
    let mut flood = vec![frame(1, 0x1, 1, &with(&[], true))];
    let crumb = hpack(&[(
        "x-flood",
        "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy",
    )]);
    for _ in 0..2000 {
        flood.push(frame(9, 0, 1, &crumb));
    }
    // The connection window pushed past 2^31 - 1.
    let overflow = vec![
        frame(8, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
        frame(8, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
    ];
    // (case, frames, accepted errors as (frame type, code))
    let headers = |block: Vec<u8>| frame(1, 0x5, 1, &block);
    type Case = (&'static str, Vec<Vec<u8>>, Vec<(u8, u32)>);
    let cases: Vec<Case> = vec![
        (
            "uppercase field name",
            vec![headers(with(&[("X-Upper", "1")], true))],
            vec![(7, PROTOCOL_ERROR), (3, PROTOCOL_ERROR)],
        ),
        (
            "missing :path",
            vec![headers(with(&[], false))],
            vec![(3, PROTOCOL_ERROR), (7, PROTOCOL_ERROR)],
        ),
        (
            "connection-specific field",
            vec![headers(with(&[("connection", "close")], true))],
            vec![(3, PROTOCOL_ERROR), (7, PROTOCOL_ERROR)],
        ),
        ("CONTINUATION flood", flood, vec![(7, ENHANCE_YOUR_CALM)]),
        (
            "connection window overflow",
            overflow,
            vec![(7, FLOW_CONTROL_ERROR)],
        ),
        // RFC 9113 §5.1 asks for STREAM_CLOSED here; h2 0.4.20 ends the
        // connection with PROTOCOL_ERROR instead (a known deviation, accepted
        // until cairn filters frames itself).
        (
            "DATA on a closed stream",
            vec![headers(with(&[], true)), frame(0, 0x1, 1, b"late")],
            vec![(3, STREAM_CLOSED), (7, STREAM_CLOSED), (7, PROTOCOL_ERROR)],
        ),
    ];
    for (case, frames, accepted) in cases {
        let got = first_error(cairn.addr, &frames);
        assert!(
            got.is_some_and(|g| accepted.contains(&g)),
            "{case}: got {got:?}, want one of {accepted:?}"
        );
        // The shard serves on.
        let (status, _, body) = h2c_request(cairn.addr, "GET", "/ok", b"");
        assert_eq!((status, &body[..]), (200, &b"fine"[..]), "after {case}");
    }
}
