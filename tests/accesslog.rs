//! The access log end to end (LOG-1): one line per request whatever happened to
//! it, fields that match the `#Fields:` line, and rolls that lose no line.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

const FIELDS: &str = "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-bytes time-taken cs-referer sc-resinfo cs-range sc-cachehit cs-acceptencoding session-id sc-content-length";

fn setup(origin: &Origin, access: &str) -> PathBuf {
    let dir = temp_dir("accesslog");
    std::fs::write(
        dir.join("server.xml"),
        format!(
            "<Server>{TEST_CACHE}<VHostDefault><Options><CacheStatusHeader>ON</CacheStatusHeader></Options><OriginOptions><ReceiveTimeout>1</ReceiveTimeout></OriginOptions><Log Dir=\"logs\">{access}</Log></VHostDefault></Server>"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>",
            origin.addr
        ),
    )
    .unwrap();
    dir
}

/// Every log line (header lines left out) across the live file and rolled ones.
fn lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn wait_lines(dir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines(dir).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Anything more would arrive within a flush interval or two.
    std::thread::sleep(Duration::from_millis(400));
    lines(dir)
}

/// A request on its own connection; returns every byte the client received.
fn raw(cairn: &Cairn, req: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(cairn.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let i = FIELDS.split(' ').position(|f| f == name).unwrap();
    line.split(' ').nth(i).unwrap()
}

#[test]
fn every_request_gets_exactly_one_line_with_the_right_fields() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/obj" => Reply::After(
            Duration::from_millis(400),
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        ),
        "/bad" => Reply::Bytes(b"this is not http\r\n\r\n".to_vec()),
        "/slow" => Reply::Silent(Duration::from_secs(5)),
        _ => ok(b"posted"),
    });
    let dir = setup(&origin, r#"<Access Local="ON">ON</Access>"#);
    let cairn = Cairn::start(dir.clone(), 2);
    let logs = dir.join("logs/test.local");
    let header = std::fs::read_to_string(logs.join("access.log")).unwrap_or_default();

    // A miss and its coalesced follower, each on its own connection.
    let addr = cairn.addr;
    let follower = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        Client::connect(addr).get("/obj").status
    });
    let leader = raw(&cairn, "GET /obj HTTP/1.1\r\nHost: test.local\r\nUser-Agent: lead agent\r\nConnection: close\r\n\r\n");
    assert_eq!(follower.join().unwrap(), 200);
    assert_eq!(origin.count(), 1, "coalesced");
    let hit = raw(
        &cairn,
        "GET /obj?x=1 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    let hit2 = raw(&cairn, "GET /obj HTTP/1.1\r\nHost: test.local\r\nAccept-Encoding: deflate, br\r\nRange: bytes=1-2\r\nConnection: close\r\n\r\n");
    assert!(String::from_utf8_lossy(&hit2).starts_with("HTTP/1.1 206"));
    let post = raw(&cairn, "POST /form HTTP/1.1\r\nHost: test.local\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
    let nf = raw(
        &cairn,
        "GET / HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n",
    );
    let bad = raw(
        &cairn,
        "GET / HTTP/1.1\r\nHost: test.local\r\nBad Header Line\r\n\r\n",
    );
    let e502 = raw(
        &cairn,
        "GET /bad HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    let e504 = raw(
        &cairn,
        "GET /slow HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    let status = |b: &[u8]| String::from_utf8_lossy(&b[9..12]).to_string();
    assert_eq!(
        [&nf, &bad, &e502, &e504].map(|b| status(b)),
        ["404", "400", "502", "504"]
    );

    let got = wait_lines(&logs, 9);
    assert_eq!(got.len(), 9, "one line per request:\n{}", got.join("\n"));
    let names = FIELDS.split(' ').count();
    for l in &got {
        assert_eq!(l.split(' ').count(), names, "{l}");
    }
    let header = if header.is_empty() {
        std::fs::read_to_string(logs.join("access.log")).unwrap()
    } else {
        header
    };
    assert!(header.contains(&format!("#Fields: {FIELDS}\n")), "{header}");
    let by = |stem: &str, query: &str, result: &str| -> Vec<&String> {
        got.iter()
            .filter(|l| {
                field(l, "cs-uri-stem") == stem
                    && field(l, "cs-uri-query") == query
                    && field(l, "sc-cachehit") == result
            })
            .collect()
    };
    // The leader (with its User-Agent, spaces as `+`) and the follower are misses.
    let misses = by("/obj", "-", "TCP_MISS");
    assert_eq!(misses.len(), 2, "{got:#?}");
    let lead = misses
        .iter()
        .find(|l| field(l, "cs(User-Agent)") == "lead+agent")
        .expect("the leader's line");
    assert_eq!(field(lead, "sc-bytes"), leader.len().to_string());
    assert!(field(lead, "time-taken").parse::<u64>().unwrap() >= 300);
    assert_eq!(field(lead, "sc-status"), "200");
    assert_eq!(field(lead, "sc-content-length"), "5");
    assert_eq!(field(lead, "c-ip"), "127.0.0.1");
    assert_eq!(field(lead, "s-port"), cairn.addr.port().to_string());
    // A query string makes another object: a miss. The plain path is a hit.
    let q = by("/obj", "x=1", "TCP_MISS");
    assert_eq!(
        (q.len(), field(q[0], "sc-bytes")),
        (1, hit.len().to_string().as_str())
    );
    let h = by("/obj", "-", "TCP_HIT");
    assert_eq!(h.len(), 1, "{got:#?}");
    assert_eq!(field(h[0], "sc-status"), "206");
    assert_eq!(field(h[0], "cs-range"), "1-2");
    assert_eq!(field(h[0], "cs-acceptencoding"), "deflate+br");
    assert_eq!(field(h[0], "sc-bytes"), hit2.len().to_string());
    let p = by("/form", "-", "TCP_CLIENT_REFRESH_MISS");
    assert_eq!(p.len(), 1);
    assert_eq!(field(p[0], "cs-method"), "POST");
    assert_eq!(field(p[0], "sc-resinfo"), "Bypass");
    assert_eq!(field(p[0], "sc-bytes"), post.len().to_string());
    for (stem, st, bytes) in [
        ("/", "404", nf.len()),
        ("-", "400", bad.len()),
        ("/bad", "502", e502.len()),
        ("/slow", "504", e504.len()),
    ] {
        let l = by(stem, "-", "TCP_ERROR");
        let l: Vec<_> = l.iter().filter(|l| field(l, "sc-status") == st).collect();
        assert_eq!(l.len(), 1, "{stem} {st}: {got:#?}");
        assert_eq!(field(l[0], "sc-bytes"), bytes.to_string(), "{stem}");
        if st == "504" {
            assert!(field(l[0], "time-taken").parse::<u64>().unwrap() >= 900);
        }
    }
}

#[test]
fn a_roll_by_size_loses_no_line_and_retention_prunes() {
    let origin = Origin::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let dir = setup(
        &origin,
        r#"<Access Type="size" Unit="4KB" Retention="100" Local="ON">ON</Access>"#,
    );
    let cairn = Cairn::start(dir.clone(), 2);
    let n = 300;
    let mut handles = Vec::new();
    for t in 0..3 {
        let addr = cairn.addr;
        handles.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            for i in 0..n / 3 {
                c.send(
                    format!(
                        "GET /r HTTP/1.1\r\nHost: test.local\r\nUser-Agent: ua-{t}-{i}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                assert_eq!(c.response(false).unwrap().status, 200);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let logs = dir.join("logs/test.local");
    let got = wait_lines(&logs, n);
    assert_eq!(got.len(), n);
    for t in 0..3 {
        for i in 0..n / 3 {
            let ua = format!("ua-{t}-{i}");
            assert_eq!(
                got.iter()
                    .filter(|l| field(l, "cs(User-Agent)") == ua)
                    .count(),
                1,
                "{ua}"
            );
        }
    }
    let files: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    let rolled: Vec<&String> = files.iter().filter(|f| f.starts_with("access_")).collect();
    assert!(rolled.len() >= 3, "rolled by size: {files:?}");
    for f in &files {
        let text = std::fs::read_to_string(logs.join(f)).unwrap();
        assert!(text.starts_with("#Software: cairn/"), "{f} has its header");
        assert!(text.len() <= 4096 + 300, "{f}: {} bytes", text.len());
    }
    drop(cairn);

    // Retention: a second run with Retention=2 keeps two rolled files.
    let dir2 = setup(
        &origin,
        r#"<Access Type="size" Unit="4KB" Retention="2" Local="ON">ON</Access>"#,
    );
    let cairn = Cairn::start(dir2.clone(), 1);
    let mut c = cairn.connect();
    for i in 0..200 {
        c.send(
            format!("GET /r HTTP/1.1\r\nHost: test.local\r\nUser-Agent: ua-{i}\r\n\r\n").as_bytes(),
        );
        assert_eq!(c.response(false).unwrap().status, 200);
    }
    let logs = dir2.join("logs/test.local");
    let deadline = Instant::now() + Duration::from_secs(5);
    let rolled = || {
        std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("access_"))
            .count()
    };
    std::thread::sleep(Duration::from_millis(500));
    while rolled() > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rolled(), 2);
}

#[test]
fn apache_form_and_no_log_element_writes_nothing() {
    let origin = Origin::start(|_| ok(b"x"));
    let dir = setup(&origin, r#"<Access Form="apache" Local="ON">ON</Access>"#);
    let cairn = Cairn::start(dir.clone(), 1);
    raw(&cairn, "GET /a?b=1 HTTP/1.1\r\nHost: test.local\r\nReferer: http://r/\r\nUser-Agent: UA 1\r\nConnection: close\r\n\r\n");
    let got = wait_lines(&dir.join("logs/test.local"), 1);
    assert_eq!(got.len(), 1);
    let l = &got[0];
    assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
    assert!(l.contains("] \"GET /a?b=1 HTTP/1.1\" 200 "), "{l}");
    assert!(l.ends_with(" \"http://r/\" \"UA 1\""), "{l}");
    drop(cairn);

    let dir = config_dir(&origin.addr.to_string(), "", "");
    let cairn = Cairn::start(dir.clone(), 1);
    assert_eq!(cairn.connect().get("/a").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dir.join("logs").exists(), "no <Log>: no files");
    drop(cairn);

    // STON's default Local="OFF": loopback clients are not logged.
    let dir = setup(&origin, "<Access>ON</Access>");
    let cairn = Cairn::start(dir.clone(), 1);
    assert_eq!(cairn.connect().get("/a").status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert!(lines(&dir.join("logs/test.local")).is_empty());
}
