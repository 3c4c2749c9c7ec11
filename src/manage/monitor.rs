//! `/monitoring/realtime` and `/monitoring/average` (STAT-1): a sampler takes
//! the summed counters once a second and keeps an hour of them; a window is
//! the difference of two samples. Pure apart from [`Samples::take`].

use crate::cache::CacheResult;
use crate::context::Shared;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// One vhost's totals at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhostTotals {
    pub name: String,
    pub requests: u64,
    pub hits: u64,
    pub classes: [u64; 6],
    pub bytes_out: u64,
    pub hit_bytes_out: u64,
    pub bytes_in: u64,
    pub time_us: u64,
    /// Origin requests in flight now, over the vhost's addresses (a gauge).
    pub origin_sessions: u64,
}

/// Everything at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    pub vhosts: Vec<VhostTotals>,
    pub client_sessions: u64,
    pub origin_bytes_in: u64,
    pub origin_connects: u64,
}

impl Sample {
    pub fn take(shared: &Shared, at_ms: u64) -> Sample {
        let live = shared.live.load();
        let origin_sessions = |name: &str| -> u64 {
            live.config
                .vhosts
                .iter()
                .filter(|v| v.name == name)
                .flat_map(|v| v.origins.iter().chain(&v.standby))
                .map(|o| o.health.in_flight.load(Relaxed))
                .sum()
        };
        let vhosts = shared
            .vhost_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|v| {
                let mut t = VhostTotals {
                    name: v.name.clone(),
                    origin_sessions: origin_sessions(&v.name),
                    ..Default::default()
                };
                for c in v.shards.iter() {
                    for r in CacheResult::ALL {
                        let n = c.results[r.index()].load(Relaxed);
                        t.requests += n;
                        if r.is_hit() {
                            t.hits += n;
                        }
                    }
                    for (i, k) in c.classes.iter().enumerate() {
                        t.classes[i] += k.load(Relaxed);
                    }
                    t.bytes_out += c.bytes_out.load(Relaxed);
                    t.hit_bytes_out += c.hit_bytes_out.load(Relaxed);
                    t.bytes_in += c.bytes_in.load(Relaxed);
                    t.time_us += c.time_us.load(Relaxed);
                }
                t
            })
            .collect();
        let sum = |f: fn(&crate::context::ShardStats) -> u64| shared.stats.iter().map(f).sum();
        Sample {
            at_ms,
            vhosts,
            client_sessions: sum(|s| s.active.load(Relaxed)),
            origin_bytes_in: sum(|s| s.origin.bytes_in.load(Relaxed)),
            origin_connects: sum(|s| s.origin.connects.load(Relaxed)),
        }
    }
}

/// An hour of samples, one a second, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    ring: VecDeque<Sample>,
}

pub const KEEP: usize = 3601;

impl Samples {
    pub fn push(&mut self, s: Sample) {
        if self.ring.len() == KEEP {
            self.ring.pop_front();
        }
        self.ring.push_back(s);
    }

    /// The window ending at the newest sample and starting `secs` before it
    /// (or at the oldest one kept).
    pub fn window(&self, secs: u64) -> Option<(&Sample, &Sample)> {
        let last = self.ring.back()?;
        let from = self
            .ring
            .iter()
            .rev()
            .find(|s| last.at_ms.saturating_sub(s.at_ms) >= secs * 1000)
            .or(self.ring.front())?;
        Some((from, last))
    }
}

/// The JSON `result` of a window: per-second rates of what changed in it.
pub fn window_json(from: &Sample, to: &Sample) -> String {
    let secs = (to.at_ms.saturating_sub(from.at_ms) as f64 / 1000.0).max(0.001);
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"Time\":{},\"Seconds\":{:.3},\"ClientSessions\":{},\"OriginBytesInPerSec\":{:.1},\"OriginConnectsPerSec\":{:.2},\"Vhosts\":[",
        to.at_ms / 1000,
        secs,
        to.client_sessions,
        to.origin_bytes_in.saturating_sub(from.origin_bytes_in) as f64 / secs,
        to.origin_connects.saturating_sub(from.origin_connects) as f64 / secs,
    );
    for (i, v) in to.vhosts.iter().enumerate() {
        let zero = VhostTotals::default();
        let f = from
            .vhosts
            .iter()
            .find(|o| o.name == v.name)
            .unwrap_or(&zero);
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let reqs = d(v.requests, f.requests);
        let hits = d(v.hits, f.hits);
        let bytes = d(v.bytes_out, f.bytes_out);
        let hit_bytes = d(v.hit_bytes_out, f.hit_bytes_out);
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                a as f64 * 100.0 / b as f64
            }
        };
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"Name\":{},\"Requests\":{reqs},\"RequestsPerSec\":{:.2},\"Hits\":{hits},\"HitRatio\":{:.2},\"ByteHitRatio\":{:.2},\"BytesOutPerSec\":{:.1},\"BytesInPerSec\":{:.1},\"Res1xx\":{},\"Res2xx\":{},\"Res3xx\":{},\"Res4xx\":{},\"Res5xx\":{},\"ResponseTimeMs\":{:.3},\"OriginSessions\":{}}}",
            crate::json::string(&v.name),
            reqs as f64 / secs,
            ratio(hits, reqs),
            ratio(hit_bytes, bytes),
            bytes as f64 / secs,
            d(v.bytes_in, f.bytes_in) as f64 / secs,
            d(v.classes[1], f.classes[1]),
            d(v.classes[2], f.classes[2]),
            d(v.classes[3], f.classes[3]),
            d(v.classes[4], f.classes[4]),
            d(v.classes[5], f.classes[5]),
            if reqs == 0 {
                0.0
            } else {
                d(v.time_us, f.time_us) as f64 / 1000.0 / reqs as f64
            },
            v.origin_sessions,
        );
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, requests: u64, hits: u64) -> Sample {
        Sample {
            at_ms,
            vhosts: vec![VhostTotals {
                name: "a".into(),
                requests,
                hits,
                classes: [0, 0, requests, 0, 0, 0],
                bytes_out: requests * 100,
                hit_bytes_out: hits * 100,
                bytes_in: requests * 30,
                time_us: requests * 2000,
                origin_sessions: 2,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn windows_are_differences_of_samples() {
        let mut s = Samples::default();
        assert!(s.window(1).is_none());
        for i in 0..(KEEP as u64 + 10) {
            s.push(sample(i * 1000, i * 10, i * 5));
        }
        assert_eq!(s.ring.len(), KEEP);
        let (a, b) = s.window(1).unwrap();
        assert_eq!(b.at_ms - a.at_ms, 1000);
        let j = window_json(a, b);
        assert!(j.contains("\"Requests\":10,"), "{j}");
        assert!(j.contains("\"HitRatio\":50.00"), "{j}");
        assert!(j.contains("\"ResponseTimeMs\":2.000"), "{j}");
        assert!(j.contains("\"BytesInPerSec\":300.0,"), "{j}");
        assert!(j.contains("\"OriginSessions\":2}"), "{j}");
        let (a, b) = s.window(300).unwrap();
        assert_eq!(b.at_ms - a.at_ms, 300_000);
        // Longer than kept: from the oldest sample.
        let (a, b) = s.window(100_000).unwrap();
        assert_eq!(b.at_ms - a.at_ms, (KEEP as u64 - 1) * 1000);
        // A vhost new in the window counts from zero.
        let mut late = sample(5000, 7, 7);
        late.vhosts[0].name = "b".into();
        assert!(window_json(&sample(4000, 3, 0), &late).contains("\"Requests\":7,"));
    }
}
