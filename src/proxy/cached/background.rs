//! Revalidation in the background (TTL-8 `RefreshExpired OFF`, RFC 5861
//! `stale-while-revalidate`): the client is answered from the stale copy at
//! once; one task per key asks the origin and swaps the object in place when
//! it answers. Clients already reading the old body finish it (their lease
//! keeps the bytes).

use super::fill::{custom_ttl_for, FillSlot};
use super::plan::{plan, PlanInput};
use super::revalidate::{refreshed, validators};
use super::{origin_opts, request_facts};
use crate::cache::freshness::FLAG_COMPRESSED;
use crate::cache::Hit;
use crate::context::Shared;
use crate::origin::exchange::{self, OriginReply};
use crate::proxy::request::{now_ms, RequestCtx};
use crate::proxy::upstream::{self, OriginOpts};
use std::sync::Arc;

/// Releases the key's refresh claim however the task ends (a panic included).
struct Claim(Arc<Shared>, Vec<u8>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.cache.end_refresh(&self.1);
    }
}

/// Starts the background revalidation of `hit`, unless one runs for its key
/// already. `false` when none could start (the shard's fills are all in use):
/// the caller revalidates in the foreground.
pub(super) fn start(cx: &RequestCtx<'_>, hit: &Hit) -> bool {
    let shared = cx.shard.shared.clone();
    // TTL-7: every origin excluded: no origin to ask; the copy is kept for
    // OriginBusy (the caller serves it stale either way).
    let v = cx.vhost;
    let ston = v.options.ttl_mode == crate::config::TtlMode::Ston;
    let purged = hit.times.flags & crate::cache::freshness::FLAG_PURGED != 0;
    if ston && !purged && super::all_origins_excluded(v) {
        let now = now_ms();
        let busy = v.options.ttl.origin_busy.saturating_mul(1000);
        let times = crate::cache::freshness::Times {
            lifetime_ms: hit.times.current_age_ms(now).saturating_add(busy),
            ..hit.times
        };
        shared
            .cache
            .refresh(cx.key().stored(), hit.loc, times, hit.headers.clone());
        return true;
    }
    let key = cx.key().stored().to_vec();
    if !shared.cache.begin_refresh(&key) {
        return true;
    }
    let claim = Claim(shared.clone(), key);
    let Some(slot) = FillSlot::take(cx, cx.server.max_fills) else {
        return false;
    };
    let extra = validators(hit, cx.vhost.origin_options.original_etag != Some(false));
    let ask = origin_opts(cx, &extra);
    let opts = OriginOpts {
        method: Some(b"GET"),
        for_cache: true,
        extra: &ask.0,
        headers: ask.1,
        ..OriginOpts::default()
    };
    let (origin, oreq) = upstream::prepare(cx, &opts, None);
    let job = Job {
        origin: origin.clone(),
        vhost: cx.vhost.clone(),
        head: cx.head.clone(),
        request: request_facts(cx),
        client_ip: cx.req.conn.peer.ip(),
        shard: cx.shard.id,
        // Copies: the job must not hold a lease on the segment for the whole
        // origin exchange (the body is not needed at all).
        hit: Hit {
            headers: bytes::Bytes::copy_from_slice(&hit.headers),
            etag: bytes::Bytes::copy_from_slice(&hit.etag),
            body: bytes::Bytes::new(),
            ..hit.clone()
        },
    };
    let up = cx.shard.upstreams.clone();
    tokio_uring::spawn(async move {
        let _slot = slot;
        let request_time = now_ms();
        let reply = exchange::send(&up, &job.vhost, &job.origin, &oreq).await;
        job.finish(&claim, reply, request_time).await;
    });
    true
}

struct Job {
    origin: crate::config::OriginAddr,
    vhost: crate::config::Vhost,
    head: crate::http1::RequestHead,
    request: crate::cache::freshness::RequestFacts,
    client_ip: std::net::IpAddr,
    shard: usize,
    hit: Hit,
}

impl Job {
    async fn finish(
        &self,
        claim: &Claim,
        reply: Result<OriginReply, crate::origin::OriginError>,
        request_time: u64,
    ) {
        let (shared, key) = (&claim.0, &claim.1[..]);
        let label = || {
            format!(
                "vhost {}: background revalidation of {}",
                self.vhost.name,
                String::from_utf8_lossy(self.head.path())
            )
        };
        let p = &self.vhost.options.ttl;
        let ston = self.vhost.options.ttl_mode == crate::config::TtlMode::Ston;
        let loc = self.hit.loc;
        // TTL-4/TTL-7 as in the foreground: keep the stale copy fresh for `ms`.
        let extend = |ms: u64| {
            let age = self.hit.times.current_age_ms(now_ms());
            let times = crate::cache::freshness::Times {
                lifetime_ms: age.saturating_add(ms),
                ..self.hit.times
            };
            shared
                .cache
                .refresh(key, loc, times, self.hit.headers.clone());
        };
        let mut reply = match reply {
            Ok(r) => r,
            Err(e) if ston && p.extension_fail => {
                log::info!(
                    "{}: {e}; the stale copy is kept (TTLExtensionByFail)",
                    label()
                );
                let secs = match e {
                    crate::origin::OriginError::ResponseTimeout(_)
                    | crate::origin::OriginError::HeadTimeout(_) => p.receive_timeout,
                    _ => p.connect_timeout,
                };
                return extend(secs.saturating_mul(1000));
            }
            Err(e) if ston => {
                // TTLExtensionByFail OFF: the next request meets the origin.
                log::info!("{}: {e}; the stale copy is dropped", label());
                return shared.cache.remove_at(key, loc);
            }
            Err(e) => {
                // RFC 5861: stale within its window; the next stale request tries again.
                log::info!("{}: {e}; the stale copy stays", label());
                return;
            }
        };
        if reply.head.status == 304 {
            let (times, headers) =
                refreshed(&self.vhost, &self.hit, &reply.head, request_time, now_ms());
            shared.cache.refresh(key, loc, times, headers);
            return;
        }
        if ston && super::revalidate::extends(p, reply.head.status) {
            let ttl = super::revalidate::ston_refreshed_lifetime(
                &self.vhost,
                &self.hit,
                &Default::default(),
            );
            return extend(ttl);
        }
        // A changed object: stored whole here, or dropped so the next request
        // fills it in the usual way (unknown length, not storable, a gzip
        // variant cairn makes from the identity object, another Vary).
        let have = crate::cache::key::vary_of(key)
            .map(|(_, n)| n)
            .unwrap_or_default();
        let covered = super::honoured_vary(&self.vhost, &reply.head)
            .is_some_and(|w| w.iter().all(|n| have.contains(n)));
        if !covered {
            shared.cache.remove_at(key, loc);
            return;
        }
        let input = PlanInput {
            reply: &reply.head,
            length: reply.length(),
            has_body: reply.has_body(),
            until_close: reply.until_close(),
            request: self.request,
            options: &self.vhost.options,
            max_object: shared.cache.config().max_object,
            request_time_ms: request_time,
            response_time_ms: now_ms(),
            custom_ttl: custom_ttl_for(
                &self.vhost,
                &self.head,
                self.client_ip,
                reply.head.status,
                request_time / 1000,
            ),
        };
        let planned = plan(&input).ok().filter(|p| p.length.is_some());
        let writer = match planned {
            Some(p) if self.hit.times.flags & FLAG_COMPRESSED == 0 => {
                let n = p.length.unwrap_or(0);
                shared.cache.writer(self.shard, key, &p.meta(), n)
            }
            _ => None,
        };
        let Some(mut w) = writer else {
            log::debug!("{}: changed, not stored here; dropped", label());
            shared.cache.remove_at(key, loc);
            return;
        };
        loop {
            match reply.next().await {
                Ok(Some(b)) => {
                    if !w.push(&b) {
                        return;
                    }
                }
                Ok(None) => {
                    if !w.commit() {
                        shared.cache.remove_at(key, loc);
                    }
                    return;
                }
                // Already logged; the stale copy stays.
                Err(_) => return,
            }
        }
    }
}
