//! Restart time for a full cache: fills a disk cache (default 4 GiB of 1 MiB
//! objects) in a scratch directory, then times reopening it, which rebuilds the
//! index and verifies every record's checksum.
//!
//! `cargo bench --bench recovery -- [GiB] [dir]` (default 4 GiB under /var/tmp).
//! Run `sync; echo 3 > /proc/sys/vm/drop_caches` between fill and reopen for a cold
//! figure; the program reports both a warm and (when permitted) a cold reopen.

use cairn::cache::meta::Meta;
use cairn::cache::{freshness::Times, Cache, StoreConfig};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let gib: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/cairn-recovery-bench".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = StoreConfig {
        dir: Some(dir.clone()),
        quota: gib << 30,
        segment_size: 64 << 20,
        max_object: 32 << 20,
    };
    let body: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let t = Instant::now();
    let n_objects;
    {
        let (cache, _) = Cache::open(cfg.clone(), 1).expect("open");
        let meta = Meta {
            status: 200,
            times: Times {
                lifetime_ms: 3_600_000,
                ..Default::default()
            },
            last_modified_s: 0,
            etag: b"\"e\"",
            head: b"Content-Type: application/octet-stream\r\n",
        };
        // Fill to about 97%: leave one segment's worth so nothing is evicted yet.
        let target = (gib << 30) / (body.len() as u64 + 4096) - 64;
        let mut n = 0;
        for i in 0..target {
            let key = format!("bench.local/object/{i}");
            let Some(mut w) = cache.writer(0, key.as_bytes(), &meta, body.len() as u64) else {
                break;
            };
            w.push(&body);
            w.commit();
            n += 1;
        }
        n_objects = n;
    }
    println!(
        "filled {n_objects} objects ({:.2} GiB) in {:.1} s",
        n_objects as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let (_, rec) = Cache::open(cfg.clone(), 1).expect("reopen");
    println!(
        "warm reopen: {} objects, {} corrupt, rebuilt in {} ms (wall {:.2} s)",
        rec.objects,
        rec.corrupt,
        rec.millis,
        t.elapsed().as_secs_f64()
    );
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    if cold {
        let t = Instant::now();
        let (_, rec) = Cache::open(cfg, 1).expect("reopen");
        println!(
            "cold reopen (page cache dropped): {} objects, rebuilt in {} ms (wall {:.2} s)",
            rec.objects,
            rec.millis,
            t.elapsed().as_secs_f64()
        );
    } else {
        println!("cold reopen skipped: cannot drop the page cache here");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
