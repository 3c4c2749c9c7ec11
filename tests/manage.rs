//! The management listener end to end (PRG-*, STAT-*): purges by pattern over
//! many objects, hard purges across a restart, the access list and roles,
//! PURGE on the service port, `/conf/reload`, and `/metrics` read by a real
//! Prometheus text-format parser and checked against the access log.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const STATUS: &str = "<CacheStatusHeader>ON</CacheStatusHeader>";

/// A config with the manager on an ephemeral port and these `<Allow>` entries.
fn setup(origin: &Origin, allow: &str, extra_server: &str) -> PathBuf {
    let dir = temp_dir("manage");
    std::fs::write(
        dir.join("server.xml"),
        format!(
            "<Server><Host><Manager Port=\"0\" Listen=\"127.0.0.1\">{allow}</Manager></Host>{TEST_CACHE}<VHostDefault><Options>{STATUS}</Options><OriginOptions><ReceiveTimeout>2</ReceiveTimeout></OriginOptions>{extra_server}</VHostDefault></Server>"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Alias>alias.local</Alias><Origin><Address>{}</Address></Origin></Vhost><Default>test.local</Default></Vhosts>",
            origin.addr
        ),
    )
    .unwrap();
    dir
}

fn manager_addr(c: &Cairn) -> SocketAddr {
    c.manager_addr()
}

/// A connection from `from` (a loopback address) to `to`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One request to the manager from `from`; `None` when it disconnected us.
fn call_from(from: &str, mgr: SocketAddr, target: &str) -> Option<(u16, String)> {
    let mut s = connect_from(from, mgr);
    let _ = s.write_all(format!("GET {target} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Some((status, body))
}

fn call(mgr: SocketAddr, target: &str) -> (u16, String) {
    call_from("127.0.0.1", mgr, target).expect("the manager answered")
}

/// A number after `"Name":` in a JSON reply.
fn json_num(body: &str, name: &str) -> u64 {
    let pat = format!("\"{name}\":");
    let at = body
        .find(&pat)
        .unwrap_or_else(|| panic!("{name} in {body}"))
        + pat.len();
    body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

fn origin_with_switch(down: Arc<AtomicBool>) -> Origin {
    Origin::start(move |r| {
        if down.load(Ordering::SeqCst) {
            return Reply::ThenClose(Vec::new());
        }
        let body = format!("body of {}", r.path);
        if r.header("if-none-match") == Some("\"v1\"") {
            return Reply::Bytes(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=600\r\n\r\n"
                    .to_vec(),
            );
        }
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"v1\"\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
}

#[test]
fn a_pattern_purge_over_10000_objects_counts_them_and_the_next_requests_refetch() {
    let down = Arc::new(AtomicBool::new(false));
    let origin = origin_with_switch(down.clone());
    let dir = setup(&origin, "<Allow>127.0.0.1</Allow>", "");
    let cairn = Cairn::start(dir, 2);
    let mgr = manager_addr(&cairn);
    let mut c = cairn.connect();
    let mut size = 0;
    for i in 0..10_000 {
        let r = c.get(&format!("/p/{i}"));
        assert_eq!(r.status, 200);
        size += r.body.len() as u64;
    }
    for i in 0..50 {
        assert_eq!(c.get(&format!("/q/{i}")).status, 200);
    }
    assert_eq!(c.get("/p/7").header("X-Cache"), Some("TCP_HIT"));
    let before = origin.count();

    let (st, body) = call(mgr, "/command/purge?url=test.local/p/*");
    println!("purge of 10,000 by pattern: {}", body.trim());
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("\"method\":\"purge\",\"status\":\"OK\""),
        "{body}"
    );
    assert_eq!(json_num(&body, "Count"), 10_000, "{body}");
    assert_eq!(json_num(&body, "Size"), size, "{body}");

    // The next request fetches again, unconditionally; /q/ was not touched.
    let r = c.get("/p/7");
    assert_eq!(r.header("X-Cache"), Some("TCP_REF_MISS"));
    assert_eq!(origin.count(), before + 1);
    assert!(
        origin.last().header("if-none-match").is_none(),
        "a purge refetches without validators"
    );
    assert_eq!(c.get("/q/7").header("X-Cache"), Some("TCP_HIT"));
    // A purged copy is kept for when the origin fails (PRG-1).
    down.store(true, Ordering::SeqCst);
    let r = c.get("/p/8");
    assert_eq!(
        (r.status, r.header("X-Cache")),
        (200, Some("TCP_REF_FAIL_HIT"))
    );
    assert_eq!(r.text(), "body of /p/8");
    down.store(false, Ordering::SeqCst);

    // Expire: the next request revalidates, and a 304 keeps the body.
    let (st, body) = call(mgr, "/command/expire?url=alias.local/q/1|/q/2");
    assert_eq!((st, json_num(&body, "Count")), (200, 2), "{body}");
    let r = c.get("/q/1");
    assert_eq!(r.header("X-Cache"), Some("TCP_REFRESH_HIT"));
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));
    // Expire after N seconds: fresh until then.
    let (st, body) = call(mgr, "/command/expireafter?sec=1&url=test.local/q/3");
    assert_eq!((st, json_num(&body, "Count")), (200, 1), "{body}");
    assert_eq!(c.get("/q/3").header("X-Cache"), Some("TCP_HIT"));
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(c.get("/q/3").header("X-Cache"), Some("TCP_REFRESH_HIT"));

    // Malformed, unknown vhost, no target (PRG-3).
    assert_eq!(call(mgr, "/command/purge?url=/no-host").0, 400);
    assert_eq!(call(mgr, "/command/expireafter?url=test.local/x").0, 400);
    assert_eq!(call(mgr, "/command/purge?url=nowhere.local/x").0, 502);
    let (st, body) = call(mgr, "/command/purge");
    assert_eq!((st, json_num(&body, "Count")), (200, 0), "{body}");
    assert_eq!(call(mgr, "/nothing/here").0, 404);

    // fileinfo (STAT-2) on one object.
    let (st, body) = call(mgr, "/monitoring/fileinfo?url=test.local/q/9");
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("\"Variant\":\"identity\",\"Status\":200,\"Size\":12"),
        "{body}"
    );
    assert!(body.contains("\"ETag\":\"\\\"v1\\\"\""), "{body}");
    assert!(json_num(&body, "TTLLeft") > 500, "{body}");
}

#[test]
fn a_hard_purge_holds_across_a_restart() {
    let origin = origin_with_switch(Arc::new(AtomicBool::new(false)));
    let dir = setup(&origin, "<Allow>127.0.0.1</Allow>", "");
    let kept = PathBuf::from(format!("{}-kept", dir.display()));
    {
        let cairn = Cairn::start(dir.clone(), 1);
        let mgr = manager_addr(&cairn);
        let mut c = cairn.connect();
        for p in ["/a", "/b", "/img/1.jpg", "/img/2.png"] {
            assert_eq!(c.get(p).status, 200);
        }
        let (st, body) = call(mgr, "/command/hardpurge?url=test.local/a|/img/*.jpg");
        assert_eq!((st, json_num(&body, "Count")), (200, 2), "{body}");
        std::fs::rename(&dir, &kept).unwrap();
    }
    std::fs::rename(&kept, &dir).unwrap();
    let cairn = Cairn::start(dir, 1);
    let mut c = cairn.connect();
    let n = origin.count();
    assert_eq!(c.get("/b").header("X-Cache"), Some("TCP_HIT"));
    assert_eq!(c.get("/img/2.png").header("X-Cache"), Some("TCP_HIT"));
    assert_eq!(origin.count(), n);
    assert_eq!(c.get("/a").header("X-Cache"), Some("TCP_MISS"));
    assert_eq!(c.get("/img/1.jpg").header("X-Cache"), Some("TCP_MISS"));
    assert_eq!(origin.count(), n + 2);
}

#[test]
fn the_access_list_disconnects_strangers_and_roles_limit_what_is_allowed() {
    let origin = origin_with_switch(Arc::new(AtomicBool::new(false)));
    let dir = setup(
        &origin,
        r#"<Allow Role="User">127.0.0.1</Allow><Allow Role="Looker">127.0.0.3</Allow><Allow>127.0.0.4</Allow>"#,
        "",
    );
    let cairn = Cairn::start(dir, 1);
    let mgr = manager_addr(&cairn);
    assert_eq!(cairn.connect().get("/x").status, 200);
    // Outside <Allow>: disconnected, no reply.
    assert_eq!(call_from("127.0.0.2", mgr, "/metrics"), None);
    // User: monitoring yes, purge no.
    assert_eq!(
        call_from("127.0.0.1", mgr, "/command/purge?url=test.local/x")
            .unwrap()
            .0,
        401
    );
    assert_eq!(call_from("127.0.0.1", mgr, "/conf/reload").unwrap().0, 401);
    std::thread::sleep(Duration::from_millis(1100));
    let (st, body) = call_from("127.0.0.1", mgr, "/monitoring/realtime?type=json").unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"Name\":\"test.local\""), "{body}");
    // The averages come from a once-a-second sampler: on a loaded machine the
    // request may land in the next sample, so ask until it shows (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (st, body) = loop {
        let (st, body) = call_from("127.0.0.1", mgr, "/monitoring/average?min=5").unwrap();
        if st != 200 || json_num(&body, "Requests") >= 1 || std::time::Instant::now() > deadline {
            break (st, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st, 200, "{body}");
    assert!(json_num(&body, "Requests") >= 1, "{body}");
    assert_eq!(
        call_from("127.0.0.1", mgr, "/monitoring/fileinfo?url=test.local/x")
            .unwrap()
            .0,
        200
    );
    // Looker: graphs only.
    assert_eq!(
        call_from("127.0.0.3", mgr, "/monitoring/fileinfo?url=test.local/x")
            .unwrap()
            .0,
        401
    );
    assert_eq!(call_from("127.0.0.3", mgr, "/metrics").unwrap().0, 200);
    // Admin.
    let (st, body) = call_from("127.0.0.4", mgr, "/command/purge?url=test.local/x").unwrap();
    assert_eq!((st, json_num(&body, "Count")), (200, 1), "{body}");

    // PURGE on the service port (PRG-4): Admin addresses only.
    let purge = |from: &str, path: &str| {
        let mut c = Client::from_stream(connect_from(from, cairn.addr));
        c.send(format!("PURGE {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        c.response(false).unwrap()
    };
    let mut c = cairn.connect();
    assert_eq!(c.get("/y").status, 200);
    let r = purge("127.0.0.1", "/y");
    assert_eq!(r.status, 401, "a User address may not purge");
    assert_eq!(purge("127.0.0.2", "/y").status, 403, "nor a stranger");
    assert_eq!(c.get("/y").header("X-Cache"), Some("TCP_HIT"));
    let r = purge("127.0.0.4", "/y");
    assert_eq!(r.status, 200);
    assert_eq!(json_num(&r.text(), "Count"), 1, "{}", r.text());
    assert_eq!(c.get("/y").header("X-Cache"), Some("TCP_REF_MISS"));
    // The origin never saw a PURGE.
    assert!(origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.method == "GET"));
}

#[test]
fn conf_reload_validates_then_swaps_and_a_bad_file_changes_nothing() {
    let origin = origin_with_switch(Arc::new(AtomicBool::new(false)));
    let dir = setup(&origin, "<Allow>127.0.0.1</Allow>", "");
    let cairn = Cairn::start(dir.clone(), 1);
    let mgr = manager_addr(&cairn);
    let mut c = cairn.connect();
    assert_eq!(c.get("/r").header("X-Cache"), Some("TCP_MISS"));
    edit_server_xml(&dir, STATUS, "<CacheStatusHeader>OFF</CacheStatusHeader>");
    let (st, body) = call(mgr, "/conf/reload");
    assert_eq!(st, 200, "{body}");
    assert_eq!(c.get("/r").header("X-Cache"), None);
    // A broken line: refused with file and line, the running one stays.
    edit_server_xml(
        &dir,
        "<CacheStatusHeader>OFF</CacheStatusHeader>",
        "<CacheStatusHeader>MAYBE</CacheStatusHeader>",
    );
    let (st, body) = call(mgr, "/conf/reload");
    assert_eq!(st, 500, "{body}");
    assert!(body.contains("server.xml:1"), "{body}");
    assert_eq!(c.get("/r").status, 200);
    assert_eq!(c.get("/r").header("X-Cache"), None);
    // HttpMethod OFF: PURGE on the service port is refused, not sent on.
    edit_server_xml(&dir, "<CacheStatusHeader>MAYBE</CacheStatusHeader>", "");
    edit_server_xml(
        &dir,
        "Listen=\"127.0.0.1\">",
        "Listen=\"127.0.0.1\" HttpMethod=\"OFF\">",
    );
    assert_eq!(call(mgr, "/conf/reload").0, 200);
    c.send(b"PURGE /r HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 405);
    assert!(origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.method == "GET"));
    // A page in a browser cannot make the manager act (CSRF).
    let mut s = connect_from("127.0.0.1", mgr);
    s.write_all(b"GET /conf/reload HTTP/1.1\r\nHost: m\r\nOrigin: http://evil.example\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

/// `python3` with the `prometheus_client` package importable: installed
/// into the build directory on first use.
fn python_with_prometheus() -> std::process::Command {
    let deps = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pydeps");
    let importable = |d: &Path| {
        std::process::Command::new("python3")
            .env("PYTHONPATH", d)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable(&deps) {
        let st = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--target",
            ])
            .arg(&deps)
            .arg("prometheus-client==0.21.1")
            .status()
            .expect("python3 -m pip");
        assert!(
            st.success() && importable(&deps),
            "could not install prometheus-client"
        );
    }
    let mut cmd = std::process::Command::new("python3");
    cmd.env("PYTHONPATH", &deps);
    cmd
}

/// Parses an exposition with prometheus_client; returns `name{labels} -> value`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value!r}")
"#;
    let mut child = python_with_prometheus()
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

const FIELDS: &str = "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-bytes time-taken cs-referer sc-resinfo cs-range sc-cachehit cs-acceptencoding session-id sc-content-length";

#[test]
fn metrics_parse_as_prometheus_text_and_match_the_access_log() {
    let origin = Origin::start(|r| match r.path.as_str() {
        p if p.starts_with("/missing") => {
            Reply::Bytes(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope".to_vec())
        }
        "/broken" => Reply::ThenClose(Vec::new()),
        p => ok(format!("object {p}").as_bytes()),
    });
    let dir = setup(
        &origin,
        "<Allow>127.0.0.1</Allow>",
        r#"<Log Dir="logs"><Access Local="ON">ON</Access></Log>"#,
    );
    let cairn = Cairn::start(dir.clone(), 2);
    let mgr = manager_addr(&cairn);
    // A mixed run on several connections: misses, hits, 404s, an origin failure,
    // a POST passed through, a HEAD.
    let mut requests = 0;
    let mut sent_in = 0usize;
    for conn in 0..4 {
        let mut c = cairn.connect();
        for i in 0..30 {
            let path = match i % 6 {
                0..=2 => format!("/o/{}", i % 7),
                3 => format!("/missing/{conn}"),
                4 => "/broken".to_string(),
                _ => format!("/o/{conn}"),
            };
            let r = c.get(&path);
            assert!(r.status > 0);
            requests += 1;
            sent_in += format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").len();
            if r.header("connection") == Some("close") {
                c = cairn.connect();
            }
        }
        let post = b"POST /form HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi";
        c.send(post);
        assert!(c.response(false).is_some());
        let head = b"HEAD /o/1 HTTP/1.1\r\nHost: test.local\r\n\r\n";
        c.send(head);
        assert!(c.response(true).is_some());
        requests += 2;
        sent_in += post.len() + head.len();
    }
    let logs = dir.join("logs/test.local");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(logs.join("access.log")).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        if lines.len() >= requests || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), requests);
    let field = |line: &str, name: &str| -> String {
        let i = FIELDS.split(' ').position(|f| f == name).unwrap();
        line.split(' ').nth(i).unwrap().to_string()
    };
    let (st, text) = call(mgr, "/metrics");
    assert_eq!(st, 200);
    let m = parse_metrics(&text);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing from /metrics"))
    };

    let mut by_result: HashMap<String, f64> = HashMap::new();
    let mut by_class: HashMap<String, f64> = HashMap::new();
    let mut bytes = 0.0;
    for l in &lines {
        *by_result.entry(field(l, "sc-cachehit")).or_default() += 1.0;
        let class = format!("{}xx", &field(l, "sc-status")[..1]);
        *by_class.entry(class).or_default() += 1.0;
        bytes += field(l, "sc-bytes").parse::<f64>().unwrap();
    }
    assert!(by_result.len() >= 4, "a mixed run: {by_result:?}");
    for code in [
        "TCP_HIT",
        "TCP_MISS",
        "TCP_REF_MISS",
        "TCP_CLIENT_REFRESH_MISS",
        "TCP_ERROR",
        "TCP_IMS_HIT",
        "TCP_NEGATIVE_HIT",
    ] {
        assert_eq!(
            get(&format!(
                "cairn_requests_total{{result={code},vhost=test.local}}"
            )),
            by_result.get(code).copied().unwrap_or(0.0),
            "{code}"
        );
    }
    for class in ["2xx", "4xx", "5xx"] {
        assert_eq!(
            get(&format!(
                "cairn_responses_total{{class={class},vhost=test.local}}"
            )),
            by_class.get(class).copied().unwrap_or(0.0),
            "{class}"
        );
    }
    assert_eq!(get("cairn_sent_bytes_total{vhost=test.local}"), bytes);
    // STAT-1's traffic in: every request's head and body, as the client sent them.
    assert_eq!(
        get("cairn_received_bytes_total{vhost=test.local}"),
        sent_in as f64
    );
    // Hits of every kind (a stored 404 is a negative hit).
    let hits = ["TCP_HIT", "TCP_NEGATIVE_HIT"]
        .iter()
        .map(|c| by_result.get(*c).copied().unwrap_or(0.0))
        .sum::<f64>();
    let ratio = get("cairn_hit_ratio{by=requests,vhost=test.local}");
    assert!((ratio - hits / lines.len() as f64).abs() < 1e-9, "{ratio}");
    // Per shard, summed by the reader.
    let shard_sum =
        |name: &str| get(&format!("{name}{{shard=0}}")) + get(&format!("{name}{{shard=1}}"));
    assert_eq!(shard_sum("cairn_shard_requests_total"), requests as f64);
    assert!(shard_sum("cairn_origin_failures_total") >= 4.0);
    assert!(get("cairn_cache_objects{}") >= 7.0);
    assert!(get("cairn_cache_bytes{}") > 0.0);
}
