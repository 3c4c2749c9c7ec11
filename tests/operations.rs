//! Operations under load, end to end: a shard that dies is loud and comes back
//! while the others serve. (The panic hook exists only in fault-injection
//! builds: `cargo test --release --features fault-injection`, which `.ci/run`
//! runs; without the feature the test says so and is ignored.)

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn setup(origin: &Origin) -> PathBuf {
    write_config(
        temp_dir("operations"),
        &format!(
            "<Server><Host><Manager Port=\"0\" Listen=\"127.0.0.1\"><Allow>127.0.0.1</Allow></Manager></Host>{TEST_CACHE}<VHostDefault><Options><CacheStatusHeader>ON</CacheStatusHeader></Options><Log Dir=\"logs\"><Access Local=\"ON\">ON</Access></Log></VHostDefault></Server>"
        ),
        &origin.addr.to_string(),
    )
}

/// SIGHUP, and waits (5 s at most) for the reload it makes to be logged.
fn reload(cairn: &Cairn, what: &str) {
    let reloads = |c: &Cairn| c.stderr().matches("configuration reloaded").count();
    let before = reloads(cairn);
    cairn.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(cairn) == before {
        assert!(Instant::now() < deadline, "{what}:\n{}", cairn.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn manager_addr(c: &Cairn) -> SocketAddr {
    c.manager_addr()
}

/// What one load client saw.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    /// Connections that ended (closed or reset) under the client.
    closed: Vec<Instant>,
    /// Reads that waited past the client's timeout: a hang.
    hangs: u64,
    /// Connections that ended inside a response.
    truncated: u64,
}

/// One keep-alive connection doing `GET /c/<id>/<n>` until `stop`; a broken
/// connection is counted and replaced.
fn load_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let mut s = connect();
    let mut n = 0u64;
    while !stop.load(SeqCst) {
        n += 1;
        let req = format!("GET /c/{id}/{n} HTTP/1.1\r\nHost: test.local\r\n\r\n");
        let outcome = s
            .write_all(req.as_bytes())
            .and_then(|()| read_response(&mut s));
        let mut seen = seen.lock().unwrap();
        match outcome {
            Ok(_) => seen.ok += 1,
            Err(e) => {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    seen.hangs += 1;
                }
                seen.closed.push(Instant::now());
                drop(seen);
                s = connect();
            }
        }
    }
}

/// Reads one 200 response with a Content-Length body; its head, lower case.
/// An error when the connection ends first: `UnexpectedEof` before any byte
/// of it, `InvalidData` inside it.
fn read_response(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(head));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(head);
            }
        }
        let n = match s.read(&mut b) {
            Ok(n) => n,
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
        };
        if n == 0 {
            let kind = match buf.is_empty() {
                true => std::io::ErrorKind::UnexpectedEof,
                // Part of a response, then the end.
                false => std::io::ErrorKind::InvalidData,
            };
            return Err(kind.into());
        }
        buf.extend_from_slice(&b[..n]);
    }
}

/// The shard of each load client, from the access log's `session-id` (the
/// shard is in its top bits) for the client's `/c/<id>/...` requests.
fn shards_of_clients(log: &str) -> HashMap<usize, u64> {
    let fields: Vec<&str> = cairn::accesslog::format::W3C_FIELDS
        .trim_start_matches("#Fields: ")
        .split(' ')
        .collect();
    let at = |name: &str| fields.iter().position(|f| *f == name).unwrap();
    let (stem, session) = (at("cs-uri-stem"), at("session-id"));
    let mut out = HashMap::new();
    for l in log.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(id) = f[stem]
            .strip_prefix("/c/")
            .and_then(|r| r.split('/').next()?.parse::<usize>().ok())
        else {
            continue;
        };
        let shard = f[session].parse::<u64>().unwrap() >> 48;
        out.entry(id).or_insert(shard);
    }
    out
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs a fault-injection build: cargo test --release --features fault-injection"
)]
fn a_shard_that_panics_is_logged_counted_and_restarted_while_the_other_serves() {
    let origin = Origin::start(|r| {
        let mut v =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\r\n".to_vec();
        v.extend_from_slice(&r.path.as_bytes()[..5]);
        Reply::Bytes(v)
    });
    let dir = setup(&origin);
    let log_file = dir.join("logs/test.local/access.log");
    let cairn = Cairn::start(dir, 2);
    let mgr = manager_addr(&cairn);

    const CLIENTS: usize = 16;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (stop, seen) = (stop.clone(), seen[id].clone());
            let addr = cairn.addr;
            std::thread::spawn(move || load_client(addr, id, stop, seen))
        })
        .collect();

    // Which client is on which shard: every client's lines reach the log
    // (flushed each 100 ms) before the fault.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shard_of = loop {
        let m = shards_of_clients(&std::fs::read_to_string(&log_file).unwrap_or_default());
        if m.len() == CLIENTS || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(shard_of.len(), CLIENTS, "every client in the access log");
    let on = |s: u64| shard_of.values().filter(|&&x| x == s).count();
    assert!(
        on(0) > 0 && on(1) > 0,
        "16 connections over 2 SO_REUSEPORT sockets land on both: {shard_of:?}"
    );
    for s in &seen {
        assert!(
            s.lock().unwrap().closed.is_empty(),
            "no errors before the fault"
        );
    }

    let told = Instant::now();
    assert_eq!(manager_call(mgr, "/debug/panic?shard=1").0, 200);
    let wait_until = |what: &str, done: &mut dyn FnMut() -> bool| {
        while !done() {
            assert!(
                told.elapsed() < Duration::from_secs(5),
                "{what}; log:\n{}",
                cairn.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_until("shard 1 did not restart", &mut || {
        metric(mgr, "cairn_shard_restarts_total{shard=\"1\"}") == 1
    });
    // Then new connections reach the restarted shard (its socket, kept, queued
    // what came meanwhile): within a second of the fault, one is accepted and
    // served there.
    let accepted = metric(mgr, "cairn_connections_total{shard=\"1\"}");
    let served = metric(mgr, "cairn_shard_requests_total{shard=\"1\"}");
    wait_until("no new connection on shard 1", &mut || {
        let mut c = cairn.connect();
        assert_eq!(c.get("/fresh/x").status, 200);
        metric(mgr, "cairn_connections_total{shard=\"1\"}") > accepted
            && metric(mgr, "cairn_shard_requests_total{shard=\"1\"}") > served
    });
    let back = told.elapsed();
    assert!(back < Duration::from_secs(1), "served again after {back:?}");
    // Keep the load on a while longer, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, SeqCst);
    for t in threads {
        t.join().unwrap();
    }

    for (id, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        assert_eq!(s.hangs, 0, "client {id} hung: {s:?}");
        assert!(s.ok > 0, "client {id} was served: {s:?}");
        if shard_of[&id] == 0 {
            assert!(
                s.closed.is_empty(),
                "client {id} on shard 0 saw an error: {s:?}"
            );
        } else {
            // Its connection died with the shard (closed, never left hanging),
            // and the one it opened next was served.
            assert!(s.closed.len() <= 1, "client {id}: {s:?}");
        }
    }
    assert_eq!(metric(mgr, "cairn_shard_restarts_total{shard=\"1\"}"), 1);
    assert_eq!(metric(mgr, "cairn_shard_restarts_total{shard=\"0\"}"), 0);
    assert_eq!(metric(mgr, "cairn_panics_total"), 1);
    let log = cairn.stderr();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {errors:?}");
    assert!(
        errors[0].contains("[shard-1]") && errors[0].contains("injected fault"),
        "{}",
        errors[0]
    );
    assert!(log.contains("shard 1 died: injected fault"), "{log}");
    // SIGUSR1's dump counts it too.
    cairn.signal("USR1");
    let dump = cairn.wait_log("1 restarts");
    assert!(
        dump.contains("shard 1:") && dump.contains("1 restarts"),
        "{dump}"
    );
}

fn write_server_xml(dir: &std::path::Path, status_header: &str) {
    std::fs::write(
        dir.join("server.xml"),
        format!(
            "<Server><Host><Manager Port=\"0\" Listen=\"127.0.0.1\"><Allow>127.0.0.1</Allow></Manager></Host>{TEST_CACHE}<VHostDefault><Options><CacheStatusHeader>{status_header}</CacheStatusHeader></Options><Log Dir=\"logs\"><Access Local=\"ON\">ON</Access></Log></VHostDefault></Server>"
        ),
    )
    .unwrap();
}

/// Load clients that stop at the first failure of any kind, counting it.
fn steady_load(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..clients)
        .map(|id| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    n += 1;
                    let req = format!(
                        "GET /r/{id}/{} HTTP/1.1\r\nHost: test.local\r\n\r\n",
                        n % 50
                    );
                    match s
                        .write_all(req.as_bytes())
                        .and_then(|()| read_response(&mut s))
                    {
                        Ok(_) => seen.ok += 1,
                        Err(e) => {
                            match e.kind() {
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                                    seen.hangs += 1
                                }
                                std::io::ErrorKind::InvalidData => seen.truncated += 1,
                                _ => {}
                            }
                            seen.closed.push(Instant::now());
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect()
}

#[test]
fn ten_reloads_under_load_fail_no_request_and_each_takes_effect() {
    let origin = Origin::start(|r| ok(r.path.as_bytes()));
    let dir = setup(&origin);
    let cairn = Cairn::start(dir.clone(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(cairn.addr, 6, &stop);
    // A keep-alive connection of its own, to see each configuration.
    let mut probe = cairn.connect();
    let reloads = |c: &Cairn| c.stderr().matches("configuration reloaded").count();
    let x_cache =
        |probe: &mut Client, i: usize| probe.get(&format!("/v/{i}")).header("x-cache").is_some();
    assert!(x_cache(&mut probe, 0), "CacheStatusHeader ON at start");
    for i in 1..=10 {
        let on = i % 2 == 0;
        write_server_xml(&dir, if on { "ON" } else { "OFF" });
        reload(&cairn, &format!("reload {i}"));
        // The next request on a connection opened before the reload sees it.
        assert_eq!(x_cache(&mut probe, i), on, "reload {i}");
        if i == 5 {
            // A bad file in the middle: refused with file:line, nothing changes.
            std::fs::write(dir.join("server.xml"), "<Server>\n<VHostDefault>\n<Options><CacheStatusHeader>MAYBE</CacheStatusHeader></Options></VHostDefault></Server>").unwrap();
            cairn.signal("HUP");
            let log = cairn.wait_log("reload failed");
            let line = log
                .lines()
                .find(|l| l.contains("reload failed"))
                .unwrap_or_else(|| panic!("refused:\n{log}"));
            assert!(line.contains("server.xml:3"), "{line}");
            assert_eq!(
                x_cache(&mut probe, 100),
                on,
                "the running configuration stays"
            );
        }
    }
    stop.store(true, SeqCst);
    let mut served = 0;
    for t in load {
        let seen = t.join().unwrap();
        assert!(seen.closed.is_empty() && seen.hangs == 0, "{seen:?}");
        served += seen.ok;
    }
    assert!(served > 100, "a steady load: {served} requests");
    assert_eq!(reloads(&cairn), 10);
}

#[test]
fn sigterm_under_load_finishes_in_flight_responses_and_exits_0() {
    // `/slow/*` takes 800 ms at the origin: in flight when the drain starts.
    let origin = Origin::start(|r| {
        if r.path.starts_with("/slow/") {
            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".to_vec();
            v.resize(v.len() + 65536, b's');
            Reply::After(Duration::from_millis(800), v)
        } else {
            let mut v =
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 262144\r\n\r\n"
                    .to_vec();
            v.resize(v.len() + 262144, b'b');
            Reply::Bytes(v)
        }
    });
    let dir = setup(&origin);
    let mut cairn = Cairn::start(dir, 2);
    let stop = Arc::new(AtomicBool::new(false));
    // Busy clients (256 KiB objects over keep-alive) until their connection ends.
    let load = steady_load(cairn.addr, 6, &stop);
    // Slow requests, each on its own connection, sent just before the signal.
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let addr = cairn.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(
                    format!("GET /slow/{i} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes(),
                )
                .unwrap();
                let mut raw = Vec::new();
                let r = s.read_to_end(&mut raw);
                (r.map(|_| ()), raw)
            })
        })
        .collect();
    // Every client busy and every slow request at the origin before the signal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = origin.seen.lock().unwrap().clone();
        let slow_in = seen.iter().filter(|r| r.path.starts_with("/slow/")).count();
        let busy = (0..6)
            .filter(|id| {
                seen.iter()
                    .any(|r| r.path.starts_with(&format!("/r/{id}/")))
            })
            .count();
        if slow_in == 4 && busy == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "load did not start: {slow_in} slow, {busy} busy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = Instant::now();
    cairn.signal("TERM");
    let code = cairn.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "exit status; log:\n{}", cairn.stderr());
    assert!(
        took < Duration::from_secs(12),
        "gone within the drain deadline: {took:?}"
    );
    stop.store(true, SeqCst);
    for t in slow {
        let (r, raw) = t.join().unwrap();
        assert!(r.is_ok(), "{r:?}");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body.len(), 65536, "the in-flight response completed");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    for t in load {
        // Each busy client's connection ended: between responses (closed, or
        // refused), never inside one left open (a hang).
        let seen = t.join().unwrap();
        assert_eq!((seen.hangs, seen.truncated), (0, 0), "{seen:?}");
        assert!(seen.ok > 0, "{seen:?}");
    }
}

/// Load clients that follow `Connection: close` (a draining process says it)
/// by opening a new connection, and count every failure.
fn polite_load(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..clients)
        .map(|id| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let connect = || {
                    let s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s
                };
                let mut s = connect();
                // Requests answered on the current connection.
                let mut used = 0u32;
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    n += 1;
                    let req = format!(
                        "GET /u/{id}/{} HTTP/1.1\r\nHost: test.local\r\n\r\n",
                        n % 20
                    );
                    let ask = |s: &TcpStream| {
                        let mut w = s.try_clone().unwrap();
                        w.write_all(req.as_bytes())
                            .and_then(|()| read_response(&mut w))
                    };
                    let mut got = ask(&s);
                    // An idle keep-alive connection the server closed as the
                    // request went out (not one byte of a response came back):
                    // a GET is retried on a new connection, as RFC 9112 §9.3.1
                    // allows and every browser does. Once, never on a fresh
                    // one, and never after part of a response.
                    let nothing_came = |e: &std::io::Error| {
                        use std::io::ErrorKind::*;
                        matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe)
                    };
                    if got.as_ref().is_err_and(nothing_came) && used > 0 {
                        s = connect();
                        used = 0;
                        got = ask(&s);
                    }
                    match got {
                        Ok(head) => {
                            seen.ok += 1;
                            used += 1;
                            if head.contains("\r\nconnection: close") {
                                s = connect();
                                used = 0;
                            }
                        }
                        other => {
                            seen.closed.push(Instant::now());
                            eprintln!("client {id}: {other:?}");
                            s = connect();
                            used = 0;
                        }
                    }
                }
                seen
            })
        })
        .collect()
}

fn log_count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

#[test]
fn sigusr2_hands_the_sockets_to_a_new_binary_without_a_failed_request() {
    // /slow keeps the old process draining for a while after the handover.
    let origin = Origin::start(|r| match r.path.as_str() {
        "/slow" => Reply::After(Duration::from_millis(1500), {
            let Reply::Bytes(b) = ok(b"slow") else {
                unreachable!()
            };
            b
        }),
        p => ok(p.as_bytes()),
    });
    let dir = setup(&origin);
    // Cached objects carry over: a disk cache in the config directory.
    let server = std::fs::read_to_string(dir.join("server.xml")).unwrap();
    assert!(
        server.contains("<Storage"),
        "TEST_CACHE is on disk: {server}"
    );
    let bin_dir = temp_dir("upgrade-bin");
    let bin = bin_dir.join("cairn");
    std::fs::copy(env!("CARGO_BIN_EXE_cairn"), &bin).unwrap();
    // A service manager's notification socket (sd_notify): the new process
    // must name itself the main pid before the old one exits.
    let notify_path = bin_dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let said: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let heard = said.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = notify.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            heard.lock().unwrap().push((Instant::now(), m));
        }
    });
    let mut cairn = Cairn::start_env(
        &bin,
        dir,
        &["--shards", "2"],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let old_pid = cairn.pid();
    let mgr = manager_addr(&cairn);
    let mut c = cairn.connect();
    assert_eq!(c.get("/kept").header("x-cache"), Some("TCP_MISS"));
    assert_eq!(c.get("/kept").header("x-cache"), Some("TCP_HIT"));
    drop(c);

    // A new binary that cannot start: the old one keeps serving.
    std::fs::write(bin_dir.join("broken"), "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(
        bin_dir.join("broken"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(bin_dir.join("broken"), &bin).unwrap();
    cairn.signal("USR2");
    let log = cairn.wait_log("upgrade failed");
    assert!(log.contains("exited before taking over"), "{log}");
    assert_eq!(cairn.connect().get("/kept").status, 200, "still serving");

    // A real binary whose cache directory cannot be made: refused before it
    // takes over (after, the old one would be draining), so nothing changes.
    std::fs::copy(env!("CARGO_BIN_EXE_cairn"), bin_dir.join("next")).unwrap();
    std::fs::rename(bin_dir.join("next"), &bin).unwrap();
    let conf = cairn.dir.clone();
    std::fs::write(conf.join("blocker"), "a file").unwrap();
    edit_server_xml(&conf, "<Disk>cache</Disk>", "<Disk>blocker/cache</Disk>");
    cairn.signal("USR2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_count(&cairn.stderr(), "upgrade failed") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = cairn.stderr();
    assert!(
        log.contains("upgrade: the cache; the old process keeps serving"),
        "{log}"
    );
    assert!(!log.contains("upgrade: taking over"), "{log}");
    assert_eq!(log_count(&log, "upgrade failed"), 2, "{log}");
    let mut c = cairn.connect();
    assert_eq!(
        c.get("/kept").header("x-cache"),
        Some("TCP_HIT"),
        "still the old"
    );
    drop(c);
    edit_server_xml(&conf, "<Disk>blocker/cache</Disk>", "<Disk>cache</Disk>");

    // A second copy of the real binary, installed over the first.
    std::fs::copy(env!("CARGO_BIN_EXE_cairn"), bin_dir.join("next")).unwrap();
    std::fs::rename(bin_dir.join("next"), &bin).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = polite_load(cairn.addr, 4, &stop);
    std::thread::sleep(Duration::from_millis(300));
    let addr = cairn.addr;
    let slow = std::thread::spawn(move || Client::connect(addr).get("/slow").status);
    std::thread::sleep(Duration::from_millis(100));
    cairn.signal("USR2");
    let log = cairn.wait_log("took over; draining");
    let new_pid: u32 = log
        .split("upgrade: pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the new pid in the log:\n{log}"));
    assert_ne!(new_pid, old_pid);
    // Killed however the test ends.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg(self.0.to_string())
                .status();
        }
    }
    let _kill_new = Kill(new_pid);
    assert_eq!(
        cairn.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the old process drained"
    );
    let old_gone = Instant::now();
    assert_eq!(slow.join().unwrap(), 200, "the in-flight request finished");
    // The management port was handed down, not bound again (port 0 would
    // have given another): the new process answers on the same address.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        if log_count(&cairn.stderr(), "manager listening on http://") == 2
            || Instant::now() > deadline
        {
            break cairn.stderr();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let managers: Vec<&str> = log
        .split("manager listening on http://")
        .skip(1)
        .map(|r| &r[..r.find('/').unwrap()])
        .collect();
    assert_eq!(managers, [mgr.to_string(), mgr.to_string()], "{log}");
    assert_eq!(
        manager_call(mgr, "/metrics").0,
        200,
        "the new manager answers"
    );
    // The new process serves: the old one is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = cairn.connect().get("/kept");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, SeqCst);
    let mut served = 0;
    let mut failed = Vec::new();
    for t in load {
        let seen = t.join().unwrap();
        served += seen.ok;
        failed.extend(seen.closed);
    }
    let said = said.lock().unwrap().clone();
    let alive = std::path::Path::new(&format!("/proc/{new_pid}")).exists();
    assert!(alive, "the new process runs");
    // Old ready; new main pid at take-over, while the old one still drains
    // (its slow request holds it a second after); new ready. No STOPPING=1
    // from the old process: the unit is not stopping.
    let at = |m: &str| said.iter().position(|(_, s)| s.starts_with(m));
    let (old_ready, new_main, new_ready) = (
        at(&format!("READY=1\nMAINPID={old_pid}\n")),
        at(&format!("MAINPID={new_pid}")),
        at(&format!("READY=1\nMAINPID={new_pid}\n")),
    );
    assert!(
        old_ready < new_main && new_main < new_ready && old_ready.is_some(),
        "{said:?}"
    );
    let named = said[new_main.unwrap()].0;
    assert!(
        named + Duration::from_millis(500) < old_gone,
        "MAINPID={new_pid} came {:?} before the old process was seen gone",
        old_gone.saturating_duration_since(named)
    );
    assert!(
        !said.iter().any(|(_, s)| s.contains("STOPPING")),
        "{said:?}"
    );
    assert_eq!(failed.len(), 0, "no failed request during the upgrade");
    assert!(served > 20, "{served}");
    assert_eq!(
        (r.status, r.header("x-cache")),
        (200, Some("TCP_HIT")),
        "an object cached before the upgrade is a hit after it; log:\n{}",
        cairn.stderr()
    );
}

/// A vhost added by a reload serves at once on the running listener, and one
/// removed is gone; a listener added is refused until a restart (docs say so).
#[test]
fn a_reload_adds_and_removes_a_vhost_without_a_restart() {
    let first = Origin::start(|_| ok(b"first"));
    let second = Origin::start(|_| ok(b"second"));
    let dir = setup(&first);
    let cairn = Cairn::start(dir.clone(), 1);
    let get = |host: &str| {
        let mut c = cairn.connect();
        c.send(format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        c.response(false).expect("a response")
    };
    let vhosts = |extra: &str| {
        std::fs::write(
            dir.join("vhosts.xml"),
            format!(
                "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost>{extra}<Default>test.local</Default></Vhosts>",
                first.addr
            ),
        )
        .unwrap()
    };
    assert_eq!(
        get("second.local").body,
        b"first",
        "the default vhost at first"
    );
    vhosts(&format!(
        "<Vhost Name=\"second.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost>",
        second.addr
    ));
    reload(&cairn, "adding a vhost");
    assert_eq!(
        get("second.local").body,
        b"second",
        "the added vhost serves"
    );
    assert_eq!(get("test.local").body, b"first");
    vhosts("");
    reload(&cairn, "removing it");
    assert_eq!(
        get("second.local").body,
        b"first",
        "removed: the default again"
    );
    // A new listener cannot be opened by a reload: refused, nothing changes.
    vhosts(&format!(
        "<Vhost Name=\"third.local\"><Listen>127.0.0.3:0</Listen><Origin><Address>{}</Address></Origin></Vhost>",
        second.addr
    ));
    cairn.signal("HUP");
    let log = cairn.wait_log("listen addresses changed; restart cairn to apply them");
    assert!(log.contains("reload refused"), "{log}");
    assert_eq!(get("test.local").body, b"first");
}
