//! The cache hit path without sockets: parse the request, find the vhost, look the
//! object up, build the response head. `cargo bench --bench hit_path`.

use bytes::BytesMut;
use cairn::cache::meta::Meta;
use cairn::cache::CacheResult;
use cairn::cache::{freshness::Times, Cache, StoreConfig};
use cairn::downstream::http1::{render_head, ClientFraming};
use cairn::exchange::{BodyLen, Head};
use cairn::http1::keepalive::Decision;
use cairn::http1::{request, Limits};
use cairn::proxy::response::{header_policy, Extras};
use cairn::vhost::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

const REQ: &[u8] = b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nConnection: keep-alive\r\n\r\n";

fn hit_path(c: &mut Criterion) {
    let loaded = cairn::config::load_str(
        "<Server/>",
        r#"<Vhosts><Vhost Name="www.example.com"><Alias>example.com</Alias><Origin><Address>10.0.0.1</Address></Origin></Vhost></Vhosts>"#,
    )
    .unwrap();
    let router = Router::new(&loaded.config, &[0]);
    let (cache, _) = Cache::open(
        StoreConfig {
            dir: None,
            quota: 64 << 20,
            segment_size: 16 << 20,
            max_object: 8 << 20,
        },
        1,
    )
    .unwrap();
    let headers = b"Content-Type: application/javascript\r\nDate: Sun, 22 Nov 2026 10:00:00 GMT\r\nETag: \"5f-1a2b\"\r\nLast-Modified: Sat, 21 Nov 2026 09:00:00 GMT\r\nCache-Control: max-age=3600\r\n";
    let meta = Meta {
        status: 200,
        times: Times {
            lifetime_ms: u64::MAX / 4,
            ..Default::default()
        },
        last_modified_s: 0,
        etag: b"\"5f-1a2b\"",
        head: headers,
    };
    let body = vec![b'x'; 16 * 1024];
    let mut w = cache
        .writer(
            0,
            b"www.example.com/static/app.js?v=3",
            &meta,
            body.len() as u64,
        )
        .unwrap();
    w.push(&body);
    assert!(w.commit());
    let limits = Limits::default();
    let ka = Decision::KeepAlive {
        timeout: Some(10),
        max: None,
    };

    c.bench_function("hit_path: parse + route + lookup + head", |b| {
        let mut key = Vec::with_capacity(128);
        let mut head_buf = BytesMut::new();
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(REQ));
            let head = request::parse(&mut buf, &limits).unwrap().unwrap();
            let v = router.lookup(head.host()).unwrap();
            key.clear();
            key.extend_from_slice(loaded.config.vhosts[v].name.as_bytes());
            key.extend_from_slice(head.path());
            let hit = cache.lookup(&key).unwrap();
            let n = hit.body.len() as u64;
            let mut head = Head::from_lines(hit.status, &hit.headers, BodyLen::Known(n));
            let o = &loaded.config.vhosts[v].options;
            header_policy(o, None, 0, &mut head, &Extras::new(CacheResult::Hit));
            let out = render_head(&head, ClientFraming::Length(n), ka, &mut head_buf);
            black_box((out, hit.body));
        })
    });
    c.bench_function("hit_path: lookup only", |b| {
        b.iter(|| {
            black_box(
                cache
                    .lookup(black_box(b"www.example.com/static/app.js?v=3"))
                    .unwrap(),
            )
        })
    });
    c.bench_function("hit_path: request parse only", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(REQ));
            black_box(request::parse(&mut buf, &limits).unwrap().unwrap())
        })
    });
}

/// The rule pass a hit pays with `<ModifyHeader>ON` and 20 response rules (18 that
/// do not match this URL, 2 that do), against the same head with rules OFF.
fn rules_pass(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("cairn-bench-rules-{}", std::process::id()));
    let svc = dir.join("svc/www.example.com");
    std::fs::create_dir_all(&svc).unwrap();
    let mut rules: Vec<String> = (0..18)
        .map(|i| format!("$URL[/nomatch/{i}/*], $RES[x-rule-{i}: v], set"))
        .collect();
    rules.push("$URL[*.js?v=3], $RES[x-served-by: cairn-#CACHEHIT], set".into());
    rules.push("$HEADER[user-agent], $RES[cache-control: public], append".into());
    std::fs::write(svc.join("headers.txt"), rules.join("\n")).unwrap();
    std::fs::write(dir.join("server.xml"), "<Server><VHostDefault><Options><ModifyHeader>ON</ModifyHeader></Options></VHostDefault></Server>").unwrap();
    std::fs::write(dir.join("vhosts.xml"), r#"<Vhosts><Vhost Name="www.example.com"><Origin><Address>10.0.0.1</Address></Origin></Vhost></Vhosts>"#).unwrap();
    let loaded = cairn::config::load_dir(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let vhost = &loaded.config.vhosts[0];
    assert_eq!(vhost.header_rules.len(), 20);
    let mut buf = BytesMut::from(REQ);
    let req = request::parse(&mut buf, &Limits::default())
        .unwrap()
        .unwrap();
    let facts = cairn::proxy::rules::RuleFacts {
        vhost,
        req: &req,
        client_ip: "192.0.2.1".parse().unwrap(),
        local_port: 80,
        session_id: 1,
        https: false,
        request_time_s: 1_700_000_000,
        geo: None,
    };
    let headers = b"Content-Type: application/javascript\r\nDate: Sun, 22 Nov 2026 10:00:00 GMT\r\nETag: \"5f-1a2b\"\r\nLast-Modified: Sat, 21 Nov 2026 09:00:00 GMT\r\nCache-Control: max-age=3600\r\n";
    let ka = Decision::KeepAlive {
        timeout: Some(10),
        max: None,
    };
    let x = Extras::new(CacheResult::Hit);
    // One head buffer, as a connection has: each rendered head is dropped
    // before the next, so its room is taken back.
    let buf = std::cell::RefCell::new(BytesMut::new());
    let build = |rules: Option<&cairn::proxy::rules::RuleFacts>| {
        let mut head = Head::from_lines(200, headers, BodyLen::Known(16384));
        header_policy(&vhost.options, rules, 1_700_000_000, &mut head, &x);
        render_head(
            &head,
            ClientFraming::Length(16384),
            ka,
            &mut buf.borrow_mut(),
        )
    };
    c.bench_function("head build: rules OFF", |b| {
        b.iter(|| black_box(build(None)))
    });
    c.bench_function("head build: 20 header rules ON", |b| {
        b.iter(|| black_box(build(Some(&facts))))
    });
}

criterion_group!(benches, hit_path, rules_pass);
criterion_main!(benches);
