use super::*;
use std::path::PathBuf;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cairn-cache-unit-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg(d: &std::path::Path, quota_mb: u64, seg_mb: u64) -> StoreConfig {
    StoreConfig {
        dir: Some(d.to_path_buf()),
        quota: quota_mb << 20,
        segment_size: seg_mb << 20,
        max_object: (seg_mb << 20) - 4096,
    }
}

/// A small memory-only cache: 4 segments of 1 MiB, objects up to 512 KiB.
fn memory_cache() -> (Cache, Recovery) {
    Cache::open(
        StoreConfig {
            dir: None,
            quota: 4 << 20,
            segment_size: 1 << 20,
            max_object: 1 << 19,
        },
        1,
    )
    .unwrap()
}

fn meta(head: &[u8]) -> Meta<'_> {
    Meta {
        status: 200,
        times: Times {
            lifetime_ms: 60_000,
            ..Default::default()
        },
        last_modified_s: 0,
        etag: b"\"e\"",
        head,
    }
}

fn put(c: &Cache, shard: usize, key: &[u8], body: &[u8]) -> bool {
    let Some(mut w) = c.writer(shard, key, &meta(b"Content-Type: x\r\n"), body.len() as u64) else {
        return false;
    };
    for chunk in body.chunks(7000) {
        assert!(w.push(chunk));
    }
    w.commit()
}

#[test]
fn store_lookup_zero_copy_and_collision_safety() {
    let d = dir("basic");
    let (c, rec) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
    assert_eq!(rec.objects, 0);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert!(put(&c, 0, b"h/a", &body));
    let hit = c.lookup(b"h/a").unwrap();
    assert_eq!(hit.body, body);
    assert_eq!(&hit.headers[..], b"Content-Type: x\r\n");
    assert_eq!(&hit.etag[..], b"\"e\"");
    // Zero copy: the body Bytes points into the segment mapping, not a heap copy.
    let seg = &c.store.segments[c
        .store
        .index
        .pin()
        .get(&record::key_hash(b"h/a"))
        .unwrap()
        .seg as usize];
    let map_start = seg.bytes(0, 1).as_ptr() as usize;
    let p = hit.body.as_ptr() as usize;
    assert!(
        p > map_start && p + hit.body.len() <= map_start + seg.len(),
        "body is not in the mapping"
    );
    assert!(c.lookup(b"h/b").is_none());
    // A short body never commits; an overflowing push is refused.
    let mut w = c.writer(0, b"h/short", &meta(b""), 10).unwrap();
    assert!(w.push(b"12345"));
    assert!(!w.push(b"123456"));
    assert!(!w.commit());
    assert!(c.lookup(b"h/short").is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn recovery_after_restart_and_corruption() {
    let d = dir("recover");
    {
        let (c, _) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
        for i in 0..20 {
            assert!(put(
                &c,
                i % 2,
                format!("h/{i}").as_bytes(),
                &vec![i as u8; 10_000 + i]
            ));
        }
        // A newer version of one key wins over the older record.
        assert!(put(&c, 0, b"h/3", b"newer"));
        // An abandoned write leaves a dead region, skipped on recovery.
        let mut w = c.writer(1, b"h/dead", &meta(b""), 100).unwrap();
        w.push(&[1; 50]);
        drop(w);
        // A second process cannot open the same directory, but can check it
        // (an upgrade does, before it takes over).
        assert!(matches!(
            Cache::open(cfg(&d, 8, 2), 2),
            Err(StoreError::Locked(_))
        ));
        Cache::preflight(&cfg(&d, 8, 2), 2).unwrap();
    }
    {
        let (c, rec) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
        // The older h/3 died when the newer one was published.
        assert_eq!(rec.objects, 20, "{rec:?}");
        assert_eq!(rec.corrupt, 0);
        assert_eq!(c.lookup(b"h/3").unwrap().body, &b"newer"[..]);
        assert_eq!(c.lookup(b"h/7").unwrap().body, vec![7u8; 10_007]);
        assert!(c.lookup(b"h/dead").is_none());
    }
    // Flip one body byte of h/5 on disk.
    let victim = vec![5u8; 10_005];
    let mut patched = false;
    for f in std::fs::read_dir(&d).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_none_or(|e| e != "dat") {
            continue;
        }
        let mut bytes = std::fs::read(&p).unwrap();
        if let Some(pos) = bytes.windows(victim.len()).position(|w| w == &victim[..]) {
            bytes[pos + 100] ^= 0xff;
            std::fs::write(&p, &bytes).unwrap();
            patched = true;
            break;
        }
    }
    assert!(patched);
    let (c, rec) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
    assert_eq!(rec.corrupt, 1, "{rec:?}");
    assert!(c.lookup(b"h/5").is_none(), "a corrupt record is a miss");
    for i in (0..20).filter(|&i| i != 5 && i != 3) {
        assert_eq!(
            c.lookup(format!("h/{i}").as_bytes()).unwrap().body.len(),
            10_000 + i,
            "h/{i}"
        );
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eviction_is_fifo_with_a_second_chance_and_respects_leases() {
    let d = dir("evict");
    // 4 segments of 1 MiB, 1 shard.
    let (c, _) = Cache::open(cfg(&d, 4, 1), 1).unwrap();
    let body = vec![9u8; 200_000];
    // Five objects per segment: 20 fill all four.
    for i in 0..20 {
        assert!(put(&c, 0, format!("k/{i}").as_bytes(), &body));
    }
    assert_eq!(c.store.stats.evictions.load(Relaxed), 0);
    // k/0 is hit; it should survive its segment's reclaim.
    drop(c.lookup(b"k/0").unwrap());
    for i in 20..23 {
        assert!(put(&c, 0, format!("k/{i}").as_bytes(), &body), "put {i}");
    }
    assert_eq!(c.store.stats.evictions.load(Relaxed), 1);
    assert!(c.lookup(b"k/0").is_some(), "hit object got a second chance");
    assert!(
        c.lookup(b"k/1").is_none(),
        "unhit oldest objects were evicted"
    );
    assert!(c.lookup(b"k/5").is_some(), "younger segments untouched");
    for i in 23..40 {
        assert!(put(&c, 0, format!("k/{i}").as_bytes(), &body), "put {i}");
    }
    assert!(c.store.stats.evictions.load(Relaxed) > 0);
    assert!(c.store.stats.second_chances.load(Relaxed) >= 1);
    // Disk use stays within the quota whatever is written.
    let total: u64 = std::fs::read_dir(&d)
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 4 << 20, "{total}");
    // A segment leased by an in-flight response is never reused under it.
    let pinned = c.lookup(b"k/39").unwrap();
    let copy = pinned.body.to_vec();
    for i in 40..80 {
        put(&c, 0, format!("k/{i}").as_bytes(), &body);
    }
    assert_eq!(&pinned.body[..], &copy[..]);
    drop(pinned);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn memory_only_cache_works_without_a_directory() {
    let (c, _) = memory_cache();
    assert!(put(&c, 0, b"m", b"memory"));
    assert_eq!(c.lookup(b"m").unwrap().body, &b"memory"[..]);
    assert!(
        c.writer(0, b"big", &meta(b""), 1 << 20).is_none(),
        "over max_object"
    );
}

#[test]
fn bytes_inside_an_unfinished_body_are_never_taken_for_records() {
    let d = dir("forge");
    let forged_key = b"victim/page";
    {
        let (c, _) = Cache::open(cfg(&d, 8, 2), 1).unwrap();
        // A complete, valid record for another key, as an origin could send it as a body.
        let (inner, _) = memory_cache();
        assert!(put(&inner, 0, forged_key, b"forged!"));
        let seg = &inner.store.segments[inner
            .store
            .index
            .pin()
            .get(&record::key_hash(forged_key))
            .unwrap()
            .seg as usize];
        let forged = seg.bytes(segment::SEGMENT_HEADER, 512).to_vec();
        // A slow fill holding those bytes, never finished (the process "crashes")...
        let mut slow = c.writer(0, b"attacker/file", &meta(b""), 4096).unwrap();
        assert!(slow.push(&forged));
        std::mem::forget(slow);
        // ...while a later fill on the same shard commits beyond it.
        assert!(put(&c, 0, b"later/object", b"fine"));
    }
    let (c, rec) = Cache::open(cfg(&d, 8, 2), 1).unwrap();
    assert_eq!(rec.objects, 1, "{rec:?}");
    assert!(
        c.lookup(forged_key).is_none(),
        "a forged record inside a body must not be recovered"
    );
    assert_eq!(c.lookup(b"later/object").unwrap().body, &b"fine"[..]);
    drop(c);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn recovery_reads_with_pread_and_excludes_a_segment_it_cannot_read() {
    let d = dir("truncated");
    {
        let (c, _) = Cache::open(cfg(&d, 8, 2), 1).unwrap();
        assert!(put(&c, 0, b"h/a", &vec![7u8; 300_000]));
        assert!(put(&c, 0, b"h/b", &vec![8u8; 300_000]));
    }
    // Reopen the segment, then cut its file short under the mapping, as a failing
    // disk or a careless operator would: reading the records through the mapping
    // would be SIGBUS; with pread it is an error and the segment is left out.
    let (seg, usable) =
        segment::Segment::open_file(&d.join("seg-00000.dat"), 0, 2 << 20, true).unwrap();
    assert!(usable && !seg.is_empty());
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("seg-00000.dat"))
        .unwrap()
        .set_len(100_000)
        .unwrap();
    let seg = Arc::new(seg);
    let index = index::new_index();
    let r = store::scan(
        &seg,
        &index,
        &keys::KeyIndex::default(),
        &Default::default(),
    );
    assert!(r.failed.is_some(), "the short file is an error");
    drop(seg);
    // A whole store over such a directory: starts, without the bad segment.
    let _ = std::fs::remove_dir_all(&d);
    {
        let (c, _) = Cache::open(cfg(&d, 8, 2), 1).unwrap();
        assert!(put(&c, 0, b"h/a", &vec![7u8; 300_000]));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("seg-00000.dat"))
        .unwrap();
    // Same length (so the file is taken as usable) but the records past the
    // header are gone from the file: a hole reads as zeros, the header is
    // invalid, the rest is given up. No crash either way.
    f.set_len(4096).unwrap();
    f.set_len(2 << 20).unwrap();
    let (c, rec) = Cache::open(cfg(&d, 8, 2), 1).unwrap();
    assert!(c.lookup(b"h/a").is_none());
    assert!(rec.corrupt >= 1);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn purge_kinds_change_the_entry_as_specified() {
    let (c, _) = memory_cache();
    for k in ["h/a", "h/b", "h/c", "h/d", "h/img/x.jpg", "h/img/y.png"] {
        assert!(put(&c, 0, k.as_bytes(), &[7; 1000]));
    }
    let now = 1_000;
    assert_eq!(c.apply(b"h/a", PurgeOp::Purge, now), Some(1000));
    let a = c.lookup(b"h/a").unwrap();
    assert!(!a.times.is_fresh(now) && a.times.flags & freshness::FLAG_PURGED != 0);
    assert_eq!(c.apply(b"h/b", PurgeOp::Expire, now), Some(1000));
    let b = c.lookup(b"h/b").unwrap();
    assert!(!b.times.is_fresh(now) && b.times.flags & freshness::FLAG_PURGED == 0);
    assert_eq!(c.apply(b"h/c", PurgeOp::ExpireAfter(5), now), Some(1000));
    let t = c.lookup(b"h/c").unwrap().times;
    assert!(t.is_fresh(now + 4_000) && !t.is_fresh(now + 5_001));
    assert_eq!(c.apply(b"h/d", PurgeOp::HardPurge, now), Some(1000));
    assert!(c.lookup(b"h/d").is_none());
    assert_eq!(c.apply(b"h/d", PurgeOp::HardPurge, now), None, "twice");
    assert_eq!(c.apply(b"h/nothing", PurgeOp::Purge, now), None);
    // By pattern: only matching primary keys under the prefix.
    let n = c.apply_matching(b"h/img/", |k| k.ends_with(b".jpg"), PurgeOp::HardPurge, now);
    assert_eq!(
        n,
        PurgeCount {
            count: 1,
            bytes: 1000
        }
    );
    assert!(c.lookup(b"h/img/x.jpg").is_none() && c.lookup(b"h/img/y.png").is_some());
    assert_eq!(c.keys_indexed(), 4, "hard-purged keys leave the key index");
}

#[test]
fn purges_hold_across_a_restart_and_older_versions_never_come_back() {
    let d = dir("kill");
    {
        let (c, _) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
        assert!(put(&c, 0, b"h/a", b"old a"));
        assert!(put(&c, 1, b"h/a", b"new a")); // an older record stays on disk
        assert!(put(&c, 0, b"h/b", b"b"));
        assert!(put(&c, 0, b"h/c", b"c"));
        assert!(put(&c, 0, b"h/d", b"d"));
        assert_eq!(c.apply(b"h/a", PurgeOp::HardPurge, 0), Some(5));
        assert_eq!(c.apply(b"h/b", PurgeOp::Purge, 0), Some(1));
        let key = CacheKey::new("h", b"/d", Variant::Identity);
        assert_eq!(c.invalidate(&key), 1);
        // Filled again after its purge: the new record is live.
        assert!(put(&c, 0, b"h/b", b"b again"));
    }
    let (c, _) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
    assert!(
        c.lookup(b"h/a").is_none(),
        "neither version of h/a came back"
    );
    assert_eq!(c.lookup(b"h/b").unwrap().body, &b"b again"[..]);
    assert_eq!(c.lookup(b"h/c").unwrap().body, &b"c"[..]);
    assert!(
        c.lookup(b"h/d").is_none(),
        "an invalidation holds across a restart"
    );
    assert_eq!(c.keys_indexed(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_purged_copy_that_was_hit_leaves_with_its_segment_and_stays_dead() {
    let d = dir("kill-reclaim");
    let big = vec![3u8; 400 << 10];
    {
        let (c, _) = Cache::open(cfg(&d, 4, 1), 1).unwrap();
        let seg_of = |k: &[u8]| c.store.index.pin().get(&record::key_hash(k)).map(|e| e.seg);
        assert!(put(&c, 0, b"h/k", &big));
        let s0 = seg_of(b"h/k").unwrap();
        assert_eq!(c.apply(b"h/k", PurgeOp::Purge, 0), Some(big.len() as u64));
        // Served while purged (an origin failure would): a hit, a second chance.
        drop(c.lookup(b"h/k").unwrap());
        let generation = c.store.segments[s0 as usize]
            .generation
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut i = 0;
        while c.store.segments[s0 as usize]
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
            == generation
        {
            assert!(put(&c, 0, format!("h/g{i}").as_bytes(), &big));
            i += 1;
            assert!(i < 20, "the segment was never reclaimed");
        }
        assert!(
            seg_of(b"h/k").is_none(),
            "a killed record leaves the index with its segment"
        );
        assert_eq!(c.keys_indexed(), c.objects());
    }
    let (c, _) = Cache::open(cfg(&d, 4, 1), 1).unwrap();
    assert!(c.lookup(b"h/k").is_none(), "the purged object came back");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn recovery_kills_older_live_records_so_a_later_purge_holds() {
    // A cache written before replaced records were killed: two live versions.
    let d = dir("losers");
    {
        let (c, _) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
        assert!(put(&c, 0, b"h/a", b"old"));
        let old = c
            .store
            .index
            .pin()
            .get(&record::key_hash(b"h/a"))
            .map(|e| (e.seg, e.off, e.total_len))
            .unwrap();
        assert!(put(&c, 1, b"h/a", b"new"));
        // Bring the old header back to life, as an older cairn left it.
        let seg = &c.store.segments[old.0 as usize];
        let mut h = record::Header::decode(seg.bytes(old.1 as usize, record::HEADER_LEN)).unwrap();
        assert!(h.is_dead());
        h.flags = 0;
        h.checksum = record::checksum(&[
            b"h/a",
            seg.bytes(
                old.1 as usize + record::HEADER_LEN + 3,
                (h.meta_len as u64 + h.body_len) as usize,
            ),
        ]);
        seg.write_at(old.1 as usize, &h.encode());
    }
    {
        let (c, rec) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
        assert_eq!(rec.objects, 2, "both versions read");
        assert_eq!(c.lookup(b"h/a").unwrap().body, &b"new"[..]);
        assert_eq!(c.apply(b"h/a", PurgeOp::HardPurge, 0), Some(3));
    }
    let (c, _) = Cache::open(cfg(&d, 8, 2), 2).unwrap();
    assert!(c.lookup(b"h/a").is_none(), "the old version came back");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn preflight_finds_what_open_would_refuse_without_taking_the_directory() {
    let d = dir("preflight");
    // Too small for the shards: 2 segments, 2 shards need 3.
    assert!(matches!(
        Cache::preflight(&cfg(&d, 4, 2), 2),
        Err(StoreError::TooSmall { .. })
    ));
    // A fresh directory is made and passes; open then works.
    Cache::preflight(&cfg(&d, 8, 2), 2).unwrap();
    drop(Cache::open(cfg(&d, 8, 2), 2).unwrap());
    // A segment that cannot be opened for writing is named.
    std::fs::remove_file(d.join("seg-00001.dat")).unwrap();
    std::fs::create_dir(d.join("seg-00001.dat")).unwrap();
    match Cache::preflight(&cfg(&d, 8, 2), 2) {
        Err(StoreError::Segment { path, .. }) => assert!(path.ends_with("seg-00001.dat")),
        other => panic!("{other:?}"),
    }
    assert!(Cache::open(cfg(&d, 8, 2), 2).is_err(), "open agrees");
    // A directory that cannot be made.
    let file = d.join("lock");
    assert!(matches!(
        Cache::preflight(&cfg(&file, 8, 2), 2),
        Err(StoreError::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_reclaim_after_sendfile_renews_the_pages_and_keeps_hit_objects_byte_exact() {
    let d = dir("renew");
    std::fs::create_dir_all(&d).unwrap();
    if let Err(e) = segment::renews_pages(&d) {
        eprintln!("this filesystem cannot renew pages ({e}): nothing to test");
        return;
    }
    // 4 segments of 2 MiB (sendable), 1 shard; objects of 300 KB, each its own bytes.
    let (c, _) = Cache::open(cfg(&d, 8, 2), 1).unwrap();
    let body = |i: usize| -> Vec<u8> { (0..300_000).map(|j| (i * 31 + j / 7) as u8).collect() };
    for i in 0..24 {
        assert!(put(&c, 0, format!("r/{i}").as_bytes(), &body(i)));
    }
    assert_eq!(c.store.stats.evictions.load(Relaxed), 0);
    // r/0 and r/1 are hit and sent by file: their segment must be renewed.
    let seg0 = c.store.segments[0].clone();
    for k in [&b"r/0"[..], b"r/1"] {
        let hit = c.lookup(k).unwrap();
        drop(
            c.file_body(hit.loc.0, hit.body.clone())
                .unwrap_or_else(|_| panic!("a sendable segment, inside the mapping")),
        );
    }
    assert!(seg0.needs_renewal());
    for i in 24..30 {
        assert!(put(&c, 0, format!("r/{i}").as_bytes(), &body(i)), "put {i}");
    }
    assert!(c.store.stats.evictions.load(Relaxed) >= 1);
    assert!(!seg0.needs_renewal(), "renewed by its reclaim");
    for i in [0, 1] {
        let hit = c
            .lookup(format!("r/{i}").as_bytes())
            .expect("kept: it was hit");
        assert_eq!(hit.body, body(i), "r/{i} written back byte-exact");
    }
    assert!(c.lookup(b"r/2").is_none(), "unhit: gone");
    // Objects written since are intact too.
    for i in 24..30 {
        assert_eq!(c.lookup(format!("r/{i}").as_bytes()).unwrap().body, body(i));
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&d);
}
