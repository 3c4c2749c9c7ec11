//! End-to-end: keep-alive connections quiet between requests are parked (no
//! buffer, no task) in the shard's table, and served again when they send.

mod support;

use std::time::{Duration, Instant};
use support::*;

/// A gauge summed over the shards.
fn gauge(cairn: &Cairn, name: &str) -> u64 {
    let (_, text) = manager_call(cairn.manager_addr(), "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits up to `within` for the gauge to read `want`; the last reading.
fn gauge_becomes(cairn: &Cairn, name: &str, want: u64, within: Duration) -> u64 {
    let t = Instant::now();
    loop {
        let v = gauge(cairn, name);
        if v == want || t.elapsed() > within {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `n` parked connections (exactly), failing with what it saw.
fn parked(cairn: &Cairn, n: u64) {
    let got = gauge_becomes(cairn, "cairn_connections_parked", n, Duration::from_secs(5));
    assert_eq!(got, n, "parked connections");
}

fn origin_and_cairn(options: &str) -> (Origin, Cairn) {
    origin_and_cairn_env(options, &[])
}

fn origin_and_cairn_env(options: &str, env: &[(&str, &str)]) -> (Origin, Cairn) {
    let origin = Origin::start(|r| ok(format!("you asked for {}", r.path).as_bytes()));
    let server = format!(
        "<Server><Host><Manager Port=\"0\" Listen=\"127.0.0.1\"><Allow>127.0.0.1</Allow></Manager></Host>{TEST_CACHE}<VHostDefault><Options>{options}</Options></VHostDefault></Server>"
    );
    let dir = write_config(temp_dir("keepalive"), &server, &origin.addr.to_string());
    let cairn = Cairn::start_env(std::path::Path::new(BIN), dir, &["--shards", "2"], env);
    (origin, cairn)
}

#[test]
fn quiet_connections_are_parked_and_served_again() {
    let (_origin, cairn) = origin_and_cairn("");
    let mut clients: Vec<Client> = (0..40).map(|_| cairn.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/first/{i}")).status, 200);
    }
    parked(&cairn, 40);
    assert_eq!(
        gauge(&cairn, "cairn_connections_open"),
        40,
        "parked ones are open"
    );
    // Two pipelined requests on each: the first wakes it, both are answered
    // in order.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(
            format!(
                "GET /a/{i} HTTP/1.1\r\nHost: test.local\r\n\r\nGET /b/{i} HTTP/1.1\r\nHost: test.local\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let a = c.response(false).expect("the first answer");
        let b = c.response(false).expect("the second answer");
        assert_eq!(a.text(), format!("you asked for /a/{i}"));
        assert_eq!(b.text(), format!("you asked for /b/{i}"));
    }
    // Quiet again: parked again, and served again.
    parked(&cairn, 40);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.get(&format!("/again/{i}")).text(),
            format!("you asked for /again/{i}")
        );
    }
}

#[test]
fn a_parked_connection_whose_client_closes_leaves_the_table() {
    let (_origin, cairn) = origin_and_cairn("");
    let mut clients: Vec<Client> = (0..10).map(|_| cairn.connect()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    parked(&cairn, 10);
    drop(clients);
    let z = Duration::from_secs(3);
    assert_eq!(gauge_becomes(&cairn, "cairn_connections_parked", 0, z), 0);
    assert_eq!(gauge_becomes(&cairn, "cairn_connections_open", 0, z), 0);
}

#[test]
fn a_parked_connection_keeps_its_idle_deadline_and_a_new_request_renews_it() {
    let (_origin, cairn) = origin_and_cairn("<ClientKeepAliveSec>2</ClientKeepAliveSec>");
    // Quiet from its response on: parked, and closed 2 s after the response.
    let mut quiet = cairn.connect();
    assert_eq!(quiet.get("/").status, 200);
    let t = Instant::now();
    parked(&cairn, 1);
    assert!(quiet.is_closed(Duration::from_secs(5)));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "closed after {took:?}, not 2 s"
    );
    // One that sends again after 1.2 s (parked by then) has 2 s from its
    // new response.
    let mut back = cairn.connect();
    assert_eq!(back.get("/").status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    parked(&cairn, 1);
    assert_eq!(back.get("/again").status, 200);
    let t = Instant::now();
    assert!(back.is_closed(Duration::from_secs(5)));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "closed {took:?} after its second response, not 2 s"
    );
    assert_eq!(gauge(&cairn, "cairn_connections_parked"), 0);
}

/// The parker is told to ignore readiness (fault injection), so it is the
/// drain that finds the requests waiting on parked sockets.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs a fault-injection build: cargo test --release --features fault-injection"
)]
fn a_drain_closes_quiet_parked_connections_and_answers_waiting_requests() {
    let (_origin, mut cairn) = origin_and_cairn_env("", &[("CAIRN_FAULT_PARKER_DEAF", "1")]);
    let mut clients: Vec<Client> = (0..20).map(|_| cairn.connect()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    parked(&cairn, 20);
    // Half of them send a request, which waits on the parked socket.
    let (asking, quiet) = clients.split_at_mut(10);
    for (i, c) in asking.iter_mut().enumerate() {
        c.send(format!("GET /last/{i} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gauge(&cairn, "cairn_connections_parked"), 20, "nobody woke");
    let t = Instant::now();
    cairn.signal("TERM");
    for (i, c) in asking.iter_mut().enumerate() {
        let r = c
            .response(false)
            .expect("a request waiting at the drain is answered");
        assert_eq!(r.text(), format!("you asked for /last/{i}"));
        assert_eq!(r.header("connection"), Some("Close"));
        assert!(c.is_closed(Duration::from_secs(3)));
    }
    for c in quiet {
        assert!(c.is_closed(Duration::from_secs(3)));
    }
    assert_eq!(cairn.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The table's task ends with the drain; that is no reason to restart.
    let log = cairn.stderr();
    assert!(!log.contains(" died") && !log.contains("panic at"), "{log}");
}

/// Server CPU time so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A kernel that cannot cancel by fd (before Linux 5.19; simulated): idle
/// connections wait unparked, costing no CPU, and keep their deadline.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs a fault-injection build: cargo test --release --features fault-injection"
)]
fn without_cancel_by_fd_idle_connections_wait_unparked() {
    let (_origin, cairn) = origin_and_cairn_env(
        "<ClientKeepAliveSec>3</ClientKeepAliveSec>",
        &[("CAIRN_FAULT_NO_CANCEL", "1")],
    );
    let mut clients: Vec<Client> = (0..8).map(|_| cairn.connect()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    let t = Instant::now();
    let before = cpu_ticks(cairn.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let spent = cpu_ticks(cairn.pid()) - before;
    assert!(
        spent < 30,
        "{spent} ticks of CPU in 1.5 s of idle connections"
    );
    assert_eq!(gauge(&cairn, "cairn_connections_parked"), 0);
    assert!(
        cairn.stderr().contains("cannot cancel by fd"),
        "{}",
        cairn.stderr()
    );
    for c in &mut clients[..4] {
        assert_eq!(c.get("/again").status, 200);
    }
    for c in &mut clients[4..] {
        assert!(c.is_closed(Duration::from_secs(4)));
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2800) && took < Duration::from_millis(4500),
        "closed after {took:?}, not 3 s"
    );
}

/// The memory an idle keep-alive connection costs once parked: its slot in
/// the table (nginx's idle connection: about 0.5 KiB). Measured as anonymous
/// resident memory, after the heap is trimmed behind the burst of parks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn idle_connections_cost_under_a_kib_each() {
    const N: usize = 3000;
    raise_nofile(3 * N as u64);
    let (_origin, cairn) = origin_and_cairn("");
    let mut warm = cairn.connect();
    assert_eq!(warm.get("/").status, 200);
    parked(&cairn, 1);
    let before = status_kb(cairn.pid(), "RssAnon");
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = cairn.connect();
        c.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n");
        clients.push(c);
    }
    for c in &mut clients {
        assert_eq!(c.response(false).unwrap().status, 200);
    }
    let parked = gauge_becomes(
        &cairn,
        "cairn_connections_parked",
        N as u64 + 1,
        Duration::from_secs(5),
    );
    assert_eq!(parked, N as u64 + 1);
    // The trim follows the burst by a second (at most 5 s after its start,
    // or 10 s after an earlier trim): the memory falls to its bound then.
    let per = |kb: u64| (kb.saturating_sub(before) * 1024) / N as u64;
    let t = Instant::now();
    let mut after = status_kb(cairn.pid(), "RssAnon");
    while per(after) >= 1024 && t.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(200));
        after = status_kb(cairn.pid(), "RssAnon");
    }
    let per_conn = per(after);
    eprintln!("RssAnon {before} -> {after} kB with {N} idle connections: {per_conn} B each");
    assert!(per_conn < 1024, "{per_conn} B per idle connection");
    // Still all there (not memory given back by a shard that died), and
    // served.
    let log = cairn.stderr();
    assert!(!log.contains(" died") && !log.contains("panic at"), "{log}");
    assert_eq!(gauge(&cairn, "cairn_connections_parked"), N as u64 + 1);
    for c in clients.iter_mut().step_by(300) {
        assert_eq!(c.get("/").status, 200);
    }
}

/// Up to the hard limit: the test holds N sockets, and cairn (which inherits
/// the limit) as many.
#[allow(unsafe_code)]
fn raise_nofile(need: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the local struct only.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        assert!(
            l.rlim_max >= need,
            "this test needs {need} open files; the hard limit is {}",
            l.rlim_max
        );
        l.rlim_cur = l.rlim_cur.max(need);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}
