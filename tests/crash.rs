//! Crash safety: `kill -9` during a mixed write load, again and again, on the
//! same cache directory. After every restart each object served must be
//! byte-identical to the origin's (compared by digest), and none may be torn.
//!
//! `CAIRN_CRASH_ROUNDS` sets the number of kills (default 3, which `cargo test`
//! runs; the full check is 20: `CAIRN_CRASH_ROUNDS=20 cargo test --release
//! --test crash -- --nocapture`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Objects `/k/<n>`: their size and bytes follow from `n` alone, so the test can
/// check any response without keeping the bodies.
const KEYS: u64 = 48;

fn size_of(n: u64) -> usize {
    // From 1 KiB to about 3 MiB, so kills land inside large writes too.
    [1 << 10, 30 << 10, 300 << 10, 1 << 20, 3 << 20][(n % 5) as usize] + n as usize * 7
}

fn byte_at(n: u64, i: usize) -> u8 {
    ((i as u64).wrapping_mul(2654435761) ^ n.wrapping_mul(0x9E37_79B9)).rotate_left(7) as u8
}

fn body(n: u64) -> Vec<u8> {
    (0..size_of(n)).map(|i| byte_at(n, i)).collect()
}

fn digest(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// One GET; `(X-Cache, body)`, or `None` when the connection broke (cairn was
/// killed mid-response: expected during the load).
fn get(addr: std::net::SocketAddr, path: &str) -> Option<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .trim()
        .parse()
        .ok()?;
    let b = raw[end..].to_vec();
    if b.len() != len {
        return None; // cut off by the kill
    }
    let xc = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Cache: "))
        .unwrap_or("-")
        .to_string();
    Some((xc, b))
}

#[test]
fn kill_9_during_mixed_writes_never_serves_a_torn_object() {
    let rounds: usize = std::env::var("CAIRN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let origin = Origin::start(|r| {
        let n: u64 = r
            .path
            .trim_start_matches("/k/")
            .split('?')
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        let b = body(n);
        let mut v = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: {}\r\n\r\n",
            b.len()
        )
        .into_bytes();
        v.extend_from_slice(&b);
        Reply::Bytes(v)
    });
    let want: Vec<u64> = (0..KEYS).map(|n| digest(&body(n))).collect();
    // A small cache (64 MiB of 16 MiB segments) so the load also reclaims.
    let dir = config_dir(
        &origin.addr.to_string(),
        "<CacheStatusHeader>ON</CacheStatusHeader>",
        "",
    );
    let keep = temp_dir("crash-keep");
    let _ = std::fs::remove_dir(&keep);
    let (mut hits_after_restart, mut checked) = (0u64, 0u64);
    let started = Instant::now();
    for round in 0..rounds {
        let mut cairn = Cairn::start(dir.clone(), 2);
        // Verify first: whatever survived the last kill is whole.
        for n in 0..KEYS {
            let (xc, b) = get(cairn.addr, &format!("/k/{n}")).expect("a whole response");
            assert_eq!(
                (b.len(), digest(&b)),
                (size_of(n), want[n as usize]),
                "round {round}: /k/{n} ({xc}) differs from the origin's"
            );
            checked += 1;
            if round > 0 && xc == "TCP_HIT" {
                hits_after_restart += 1;
            }
        }
        // Then the mixed load: four clients filling and hitting random keys,
        // with a fresh key space each round so new writes are in flight.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..4u64)
            .map(|t| {
                let (stop, served, addr) = (stop.clone(), served.clone(), cairn.addr);
                let want = want.clone();
                std::thread::spawn(move || {
                    let mut x = t * 7919 + round as u64 * 104_729 + 1;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let n = x % KEYS;
                        // Some requests bypass the stored copy: new fills.
                        let path = if x.is_multiple_of(3) {
                            format!("/k/{n}?r={round}-{}", x % 1000)
                        } else {
                            format!("/k/{n}")
                        };
                        if let Some((_, b)) = get(addr, &path) {
                            assert_eq!(digest(&b), want[n as usize], "{path} during the load");
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + (round as u64 * 137) % 500));
        cairn.signal("KILL");
        cairn.wait_exit(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        eprintln!(
            "round {round}: {} responses during the load, then kill -9",
            served.load(Ordering::Relaxed)
        );
        // Cairn's Drop removes its directory: keep it across the restart.
        std::fs::rename(&dir, &keep).unwrap();
        drop(cairn);
        std::fs::rename(&keep, &dir).unwrap();
    }
    // The last kill is verified too.
    let cairn = Cairn::start(dir, 2);
    for n in 0..KEYS {
        let (_, b) = get(cairn.addr, &format!("/k/{n}")).expect("a whole response");
        assert_eq!(digest(&b), want[n as usize], "after the last kill: /k/{n}");
        checked += 1;
    }
    eprintln!(
        "{rounds} kills in {:.1} s: {checked} objects checked by digest, {hits_after_restart} served from the recovered cache, 0 torn",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rounds < 2 || hits_after_restart > 0,
        "objects survive the restarts"
    );
}
