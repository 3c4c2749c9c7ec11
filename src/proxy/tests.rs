//! The seam, proven: a second downstream (in memory) drives a coalesced miss with
//! a follower, a hit, a Range through a transform and a pass-through through the
//! same request path the HTTP/1 downstream uses, against a real origin socket.

use super::{serve, serve_with};
use crate::cache::{Cache, StoreConfig};
use crate::context::{ShardCtx, Shared};
use crate::downstream::memory::MemoryDownstream;
use crate::exchange::{BodyLen, ConnFacts, Protocol, Request};
use crate::transform::{xor::Xor, SendTransform};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const OBJECT: usize = 10_000;

fn object() -> Vec<u8> {
    (0..OBJECT).map(|i| (i * 7 % 251) as u8).collect()
}

/// A tiny HTTP/1.1 origin on its own thread: `/obj` is cacheable and answered
/// after a delay (so two requests overlap), anything else echoes the body length.
fn origin(requests: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let requests = requests.clone();
            std::thread::spawn(move || loop {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte) {
                        Ok(1) => buf.push(byte[0]),
                        _ => return,
                    }
                }
                requests.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let reply = if head.starts_with("GET /obj") {
                    std::thread::sleep(Duration::from_millis(300));
                    let mut r = format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: application/octet-stream\r\nContent-Length: {OBJECT}\r\n\r\n").into_bytes();
                    r.extend(object());
                    r
                } else {
                    let text = format!("got {len}");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    )
                    .into_bytes()
                };
                if s.write_all(&reply).is_err() {
                    return;
                }
            });
        }
    });
    addr
}

fn request(raw: &str, body: Option<&[u8]>) -> Request {
    let head =
        crate::http1::request::parse(&mut BytesMut::from(raw.as_bytes()), &Default::default())
            .unwrap()
            .unwrap();
    Request {
        head,
        body: std::cell::RefCell::new(body.map(|b| {
            let budget = crate::spool::Budget::new(1 << 20, 0, std::env::temp_dir());
            let charge = crate::spool::Charge::memory(&budget, b.len() as u64).unwrap();
            std::rc::Rc::new(crate::spool::RequestBody::in_memory(
                Bytes::copy_from_slice(b),
                charge,
            ))
        })),
        protocol: Protocol::Http11,
        bytes_in: 0,
        stream: None,
        conn: ConnFacts {
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            group: 0,
            session_id: 1,
            tls: None,
        },
        received: std::time::Instant::now(),
        certs: None,
    }
}

#[test]
fn a_memory_downstream_drives_every_phase() {
    let requests = Arc::new(AtomicUsize::new(0));
    let addr = origin(requests.clone());
    let loaded = crate::config::load_str(
        "<Server><VHostDefault><Options><CacheStatusHeader>ON</CacheStatusHeader></Options></VHostDefault></Server>",
        &format!(r#"<Vhosts><Vhost Name="www.test"><Listen>127.0.0.1:8080</Listen><Origin><Address>{addr}</Address></Origin></Vhost></Vhosts>"#),
    )
    .unwrap();
    let (cache, _) = Cache::open(
        StoreConfig {
            dir: None,
            quota: 8 << 20,
            segment_size: 1 << 20,
            max_object: 1 << 19,
        },
        1,
    )
    .unwrap();
    let shared = Arc::new(Shared::new(Arc::new(loaded.config), 1, Arc::new(cache)));
    tokio_uring::start(async move {
        let shard = ShardCtx::new(0, shared.clone());
        let live = shard.shared.live.load_full();
        let get = "GET /obj HTTP/1.1\r\nHost: www.test\r\n\r\n";

        // A coalesced miss: two requests at once, one origin request, one follower.
        let (r1, r2) = (request(get, None), request(get, None));
        let (mut d1, mut d2) = (MemoryDownstream::default(), MemoryDownstream::default());
        tokio::join!(
            serve(&shard, &live, &r1, &mut d1),
            serve(&shard, &live, &r2, &mut d2)
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1, "the miss was coalesced");
        for d in [&d1, &d2] {
            assert_eq!(d.rec.status, 200);
            assert_eq!(d.rec.body(), object());
            assert!(d.rec.finished && !d.rec.aborted);
            assert_eq!(d.rec.header("x-cache"), Some("TCP_MISS"));
            assert_eq!(d.rec.bound.as_deref(), Some("www.test"));
        }

        // A hit: no origin request, and the body is the mapping itself, not a copy.
        let r = request(get, None);
        let mut d = MemoryDownstream::default();
        serve(&shard, &live, &r, &mut d).await;
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(d.rec.header("x-cache"), Some("TCP_HIT"));
        assert_eq!(d.rec.body_len, Some(BodyLen::Known(OBJECT as u64)));
        assert_eq!(d.rec.pieces.len(), 1);
        let stored = shared.cache.lookup(b"www.test/obj").unwrap();
        assert_eq!(
            d.rec.pieces[0].as_ptr(),
            stored.body.as_ptr(),
            "zero-copy hit"
        );

        // Range through the transform: the bytes are those of the whole body's
        // transform at the same offsets; framing bytes are left alone.
        let xor = Xor::new(b"secret-key");
        let whole = xor.apply(0, Bytes::from(object()));
        let r = request(
            "GET /obj HTTP/1.1\r\nHost: www.test\r\nRange: bytes=100-1099\r\n\r\n",
            None,
        );
        let mut d = MemoryDownstream::default();
        serve_with(&shard, &live, &r, &mut d, Some(&xor)).await;
        assert_eq!(d.rec.status, 206);
        assert_eq!(d.rec.header("content-range"), Some("bytes 100-1099/10000"));
        assert_eq!(d.rec.body(), &whole[100..1100]);
        let r = request(
            "GET /obj HTTP/1.1\r\nHost: www.test\r\nRange: bytes=0-9,5000-5009\r\n\r\n",
            None,
        );
        let mut d = MemoryDownstream::default();
        serve_with(&shard, &live, &r, &mut d, Some(&xor)).await;
        assert_eq!(d.rec.status, 206);
        let body = d.rec.body();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("Content-Range: bytes 5000-5009/10000"),
            "{text}"
        );
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(find(&whole[0..10]) && find(&whole[5000..5010]));
        assert!(
            !find(&object()[5000..5010]),
            "no untransformed object bytes"
        );
        // The follower of a fill is transformed at the right offsets too.
        let r = request("GET /obj?fresh HTTP/1.1\r\nHost: www.test\r\n\r\n", None);
        let r = Request {
            head: crate::http1::request::parse(
                &mut BytesMut::from(&b"GET /obj?v=2 HTTP/1.1\r\nHost: www.test\r\n\r\n"[..]),
                &Default::default(),
            )
            .unwrap()
            .unwrap(),
            ..r
        };
        let r2 = request("GET /obj?v=2 HTTP/1.1\r\nHost: www.test\r\n\r\n", None);
        let (mut d1, mut d2) = (MemoryDownstream::default(), MemoryDownstream::default());
        tokio::join!(
            serve_with(&shard, &live, &r, &mut d1, Some(&xor)),
            serve_with(&shard, &live, &r2, &mut d2, Some(&xor))
        );
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        assert_eq!(d1.rec.body(), &whole[..]);
        assert_eq!(d2.rec.body(), &whole[..]);

        // Pass-through: the body reaches the origin and the answer comes back.
        let r = request(
            "POST /form HTTP/1.1\r\nHost: www.test\r\nContent-Length: 5\r\n\r\n",
            Some(b"hello"),
        );
        let mut d = MemoryDownstream::default();
        serve(&shard, &live, &r, &mut d).await;
        assert_eq!(d.rec.status, 200);
        assert_eq!(d.rec.body(), b"got 5");
        assert_eq!(d.rec.header("x-cache"), Some("TCP_CLIENT_REFRESH_MISS"));

        // Unknown vhost: the 404 goes through the same seam.
        let r = request("GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n", None);
        let mut d = MemoryDownstream::default();
        serve(&shard, &live, &r, &mut d).await;
        assert_eq!(
            (d.rec.status, d.rec.body_len),
            (404, Some(BodyLen::Known(0)))
        );
    });
}
