//! The cache hit path without sockets: parse the request, find the vhost, look the
//! object up, build the response head. `cargo bench --bench hit_path`.

use bytes::BytesMut;
use cairn::cache::meta::Meta;
use cairn::cache::{freshness::Times, Cache, StoreConfig};
use cairn::http1::keepalive::Decision;
use cairn::http1::{request, Limits};
use cairn::proxy::heads::{stored_response, ClientFraming, Extras};
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
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(REQ));
            let head = request::parse(&mut buf, &limits).unwrap().unwrap();
            let v = router.lookup(head.host()).unwrap();
            key.clear();
            key.extend_from_slice(loaded.config.vhosts[v].name.as_bytes());
            key.extend_from_slice(head.path());
            let hit = cache.lookup(&key).unwrap();
            let out = stored_response(
                hit.status,
                &hit.headers,
                ClientFraming::Length(hit.body.len() as u64),
                ka,
                &Extras::default(),
                None,
                b"",
            );
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

criterion_group!(benches, hit_path);
criterion_main!(benches);
