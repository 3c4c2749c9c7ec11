//! `/metrics`: the counters in Prometheus text exposition format (0.0.4),
//! per vhost and per shard, summed at scrape time. Nothing here is kept
//! between scrapes: each reads the live atomics.

use crate::cache::CacheResult;
use crate::context::{ShardStats, Shared, VhostStats};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A label value, escaped as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn sum(v: &VhostStats, f: impl Fn(&crate::context::VhostCounters) -> &AtomicU64) -> u64 {
    v.shards.iter().map(|c| f(c).load(Relaxed)).sum()
}

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The whole exposition.
pub fn render(shared: &Shared) -> String {
    let mut o = Out(String::with_capacity(16 << 10));
    let vhosts: Vec<_> = shared
        .vhost_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();

    o.family(
        "cairn_requests_total",
        "counter",
        "Requests served, by vhost and cache result (TCP_*).",
    );
    for v in &vhosts {
        for r in CacheResult::ALL {
            let n = sum(v, |c| &c.results[r.index()]);
            o.sample(
                "cairn_requests_total",
                &[("vhost", &v.name), ("result", r.code())],
                n,
            );
        }
    }
    o.family(
        "cairn_responses_total",
        "counter",
        "Responses, by vhost and status class.",
    );
    for v in &vhosts {
        for (i, class) in CLASSES.iter().enumerate() {
            let n = sum(v, |c| &c.classes[i]);
            o.sample(
                "cairn_responses_total",
                &[("vhost", &v.name), ("class", class)],
                n,
            );
        }
    }
    o.family(
        "cairn_sent_bytes_total",
        "counter",
        "Bytes sent to clients (heads and bodies), by vhost.",
    );
    for v in &vhosts {
        o.sample(
            "cairn_sent_bytes_total",
            &[("vhost", &v.name)],
            sum(v, |c| &c.bytes_out),
        );
    }
    o.family(
        "cairn_received_bytes_total",
        "counter",
        "Bytes received from clients (request heads and bodies), by vhost.",
    );
    for v in &vhosts {
        o.sample(
            "cairn_received_bytes_total",
            &[("vhost", &v.name)],
            sum(v, |c| &c.bytes_in),
        );
    }
    o.family(
        "cairn_hit_sent_bytes_total",
        "counter",
        "Bytes sent to clients for hits of any kind, by vhost.",
    );
    for v in &vhosts {
        o.sample(
            "cairn_hit_sent_bytes_total",
            &[("vhost", &v.name)],
            sum(v, |c| &c.hit_bytes_out),
        );
    }
    o.family(
        "cairn_hit_ratio",
        "gauge",
        "Hits of any kind over all requests (by=requests) or over all bytes sent (by=bytes), since start.",
    );
    for v in &vhosts {
        let all: u64 = (0..CacheResult::ALL.len())
            .map(|i| sum(v, |c| &c.results[i]))
            .sum();
        let hits: u64 = CacheResult::ALL
            .iter()
            .filter(|r| r.is_hit())
            .map(|r| sum(v, |c| &c.results[r.index()]))
            .sum();
        let bytes = sum(v, |c| &c.bytes_out);
        let hit_bytes = sum(v, |c| &c.hit_bytes_out);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        o.sample(
            "cairn_hit_ratio",
            &[("vhost", &v.name), ("by", "requests")],
            ratio(hits, all),
        );
        o.sample(
            "cairn_hit_ratio",
            &[("vhost", &v.name), ("by", "bytes")],
            ratio(hit_bytes, bytes),
        );
    }
    o.family(
        "cairn_request_seconds_total",
        "counter",
        "Time taken by requests, summed, by vhost (divide by requests for the mean).",
    );
    for v in &vhosts {
        o.sample(
            "cairn_request_seconds_total",
            &[("vhost", &v.name)],
            sum(v, |c| &c.time_us) as f64 / 1e6,
        );
    }

    // Per shard.
    type Field = fn(&ShardStats) -> u64;
    let shard_counters: &[(&str, &str, &str, Field)] = &[
        (
            "cairn_connections_total",
            "counter",
            "Client connections accepted.",
            |s| s.connections.load(Relaxed),
        ),
        (
            "cairn_connections_refused_total",
            "counter",
            "Client connections closed at accept (MaxSockets, per-address cap).",
            |s| s.refused.load(Relaxed),
        ),
        (
            "cairn_connections_open",
            "gauge",
            "Client connections open now.",
            |s| s.active.load(Relaxed),
        ),
        (
            "cairn_connections_parked",
            "gauge",
            "Keep-alive connections parked between requests: no buffer, no task.",
            |s| s.parked.load(Relaxed),
        ),
        (
            "cairn_shard_requests_total",
            "counter",
            "Requests read, on every vhost and none.",
            |s| s.requests.load(Relaxed),
        ),
        (
            "cairn_tls_handshakes_total",
            "counter",
            "TLS handshakes completed.",
            |s| s.tls_handshakes.load(Relaxed),
        ),
        (
            "cairn_tls_handshake_failures_total",
            "counter",
            "TLS handshakes failed or timed out.",
            |s| s.tls_failures.load(Relaxed),
        ),
        (
            "cairn_tls_kernel_total",
            "counter",
            "TLS sessions handed to the kernel (kTLS).",
            |s| s.tls_kernel.load(Relaxed),
        ),
        (
            "cairn_h2_goaways_total",
            "counter",
            "HTTP/2 connections ended by GOAWAY for errors or floods.",
            |s| s.h2_goaways.load(Relaxed),
        ),
        (
            "cairn_origin_connects_total",
            "counter",
            "Origin connections opened.",
            |s| s.origin.connects.load(Relaxed),
        ),
        (
            "cairn_origin_reuses_total",
            "counter",
            "Origin requests sent on a pooled connection.",
            |s| s.origin.reuses.load(Relaxed),
        ),
        (
            "cairn_origin_failures_total",
            "counter",
            "Origin exchanges that failed (connect, send, head).",
            |s| s.origin.failures.load(Relaxed),
        ),
        (
            "cairn_origin_received_bytes_total",
            "counter",
            "Body bytes read from origins.",
            |s| s.origin.bytes_in.load(Relaxed),
        ),
        (
            "cairn_fills_in_flight",
            "gauge",
            "Cache fills running.",
            |s| s.fills_active.load(Relaxed),
        ),
        (
            "cairn_fills_refused_total",
            "counter",
            "Misses passed through uncached (MaxFillsPerShard).",
            |s| s.fills_refused.load(Relaxed),
        ),
        (
            "cairn_fills_abandoned_total",
            "counter",
            "Fills given up when every client left.",
            |s| s.fills_abandoned.load(Relaxed),
        ),
        (
            "cairn_gzip_variants_total",
            "counter",
            "Gzip variants compressed.",
            |s| s.gz_objects.load(Relaxed),
        ),
        (
            "cairn_sendfile_bytes_total",
            "counter",
            "Hit body bytes sent with sendfile, not copied.",
            |s| s.sendfile_bytes.load(Relaxed),
        ),
        (
            "cairn_drm_responses_total",
            "counter",
            "DRM responses sent.",
            |s| s.drm_responses.load(Relaxed),
        ),
        (
            "cairn_log_lines_total",
            "counter",
            "Access-log lines produced.",
            |s| s.log_lines.load(Relaxed),
        ),
        (
            "cairn_log_lines_dropped_total",
            "counter",
            "Access-log lines dropped because the writer fell behind.",
            |s| s.log_dropped.load(Relaxed),
        ),
        (
            "cairn_shard_restarts_total",
            "counter",
            "Shard restarts after a panic.",
            |s| s.restarts.load(Relaxed),
        ),
    ];
    for (name, kind, help, f) in shard_counters {
        o.family(name, kind, help);
        for (i, s) in shared.stats.iter().enumerate() {
            o.sample(name, &[("shard", &i.to_string())], f(s));
        }
    }

    o.family(
        "cairn_panics_total",
        "counter",
        "Panics in any thread, connection tasks included (each is logged at error level).",
    );
    o.sample(
        "cairn_panics_total",
        &[],
        crate::logging::PANICS.load(Relaxed),
    );

    // The cache (shared by every shard).
    let c = &shared.cache;
    let st = c.store_stats();
    let (objects, bytes) = c.usage();
    let cache: &[(&str, &str, &str, u64)] = &[
        (
            "cairn_cache_objects",
            "gauge",
            "Objects in the cache index.",
            objects,
        ),
        (
            "cairn_cache_bytes",
            "gauge",
            "Body bytes of the objects in the index.",
            bytes,
        ),
        (
            "cairn_cache_lookups_hit_total",
            "counter",
            "Lookups that found a fresh object.",
            c.stats.hits.load(Relaxed),
        ),
        (
            "cairn_cache_lookups_miss_total",
            "counter",
            "Lookups that found nothing.",
            c.stats.misses.load(Relaxed),
        ),
        (
            "cairn_cache_stores_total",
            "counter",
            "Objects stored.",
            c.stats.stores.load(Relaxed),
        ),
        (
            "cairn_cache_store_skipped_total",
            "counter",
            "Objects not stored (size or space).",
            c.stats.store_skipped.load(Relaxed),
        ),
        (
            "cairn_cache_segment_reclaims_total",
            "counter",
            "Segments reclaimed for new writes.",
            st.evictions.load(Relaxed),
        ),
        (
            "cairn_cache_page_renewal_failures_total",
            "counter",
            "Reclaims that could not renew the pages bodies were sent from (a full disk): the segment waits.",
            st.renew_failures.load(Relaxed),
        ),
        (
            "cairn_cache_second_chances_total",
            "counter",
            "Objects kept through a reclaim because they were hit.",
            st.second_chances.load(Relaxed),
        ),
        (
            "cairn_cache_dropped_total",
            "counter",
            "Objects dropped by reclaims.",
            st.dropped.load(Relaxed),
        ),
        (
            "cairn_cache_fills_coalescing",
            "gauge",
            "Fills other requests may follow.",
            c.fills.in_progress() as u64,
        ),
        (
            "cairn_log_lines_lost_total",
            "counter",
            "Access-log lines the writer could not write.",
            shared.log_queues.lost.load(Relaxed),
        ),
    ];
    for (name, kind, help, v) in cache {
        o.family(name, kind, help);
        o.sample(name, &[], v);
    }
    origin_health(&mut o, shared);
    o.0
}

/// Per address (ORG-3): up or excluded, and what it has done.
fn origin_health(o: &mut Out, shared: &Shared) {
    let live = shared.live.load();
    type Get = fn(&crate::health::AddrHealth) -> u64;
    let families: [(&str, &str, &str, Get); 4] = [
        (
            "cairn_origin_up",
            "gauge",
            "1 while the address is in service, 0 while excluded.",
            |h| u64::from(h.usable()),
        ),
        (
            "cairn_origin_in_flight",
            "gauge",
            "Requests in flight to the address.",
            |h| h.in_flight.load(Relaxed),
        ),
        (
            "cairn_origin_address_failures_total",
            "counter",
            "Requests to the address that failed before a response.",
            |h| h.failures.load(Relaxed),
        ),
        (
            "cairn_origin_exclusions_total",
            "counter",
            "Times the address was excluded from service.",
            |h| h.exclusions.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in families {
        o.family(name, kind, help);
        for v in &live.config.vhosts {
            let all = v
                .origins
                .iter()
                .map(|a| (a, "active"))
                .chain(v.standby.iter().map(|a| (a, "standby")));
            for (a, role) in all {
                let addr = a.addr.to_string();
                o.sample(
                    name,
                    &[("vhost", &v.name), ("address", &addr), ("role", role)],
                    get(&a.health),
                );
            }
        }
    }
}
