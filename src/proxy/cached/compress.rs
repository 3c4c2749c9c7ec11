//! Gzip variants cairn makes (GZ-1..GZ-5). With `<Compression>` ON and a
//! compression.txt line for the URL, a gzip client's miss asks the origin for
//! the identity form (GZ-4), and a 200 of known length within `SourceSize`
//! and without a `Content-Encoding` is compressed once, on the filling shard,
//! and stored as the gzip variant: every later gzip client is a plain hit of
//! those bytes (GZ-3). Anything else is stored as it came, with `Vary`.

use super::fill::{count_refused, FillSlot};
use super::follow::follow;
use super::plan::{gzip_variant, plan, with_vary, FillPlan, PlanInput};
use crate::cache::fill::{FillEnd, FillHead, Leader};
use crate::cache::{CacheResult, Variant};
use crate::config::CompressionSettings;
use crate::exchange::{Downstream, ExchangeError, Head};
use crate::origin::exchange::OriginReply;
use crate::policy::compression::{decide, Compress};
use crate::proxy::pass;
use crate::proxy::request::{now_ms, RequestCtx};
use crate::proxy::response::{self, origin_body, Extras};
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;

/// The gzip level compression.txt gives this URL, when `<Compression>` is ON
/// and a line names it (either variant: both then carry `Vary`).
pub(super) fn level(cx: &RequestCtx<'_>) -> Option<(u8, CompressionSettings)> {
    let c = cx.vhost.options.compression?;
    match decide(&cx.vhost.compression_rules, cx.head.path()) {
        Compress::Gzip(l) => Some((l.unwrap_or(c.level), c)),
        Compress::No => None,
    }
}

/// Does this request's miss compress what the origin sends? (The gzip
/// variant, compression on for the URL.)
pub(super) fn makes_gzip(cx: &RequestCtx<'_>) -> Option<u8> {
    (cx.key.variant == Variant::Gzip)
        .then(|| level(cx))
        .flatten()
        .map(|(l, _)| l)
}

/// GZ-4, GZ-5: a 200 with a body of known length within `SourceSize`, not
/// already encoded (an encoded one is passed through as it is).
pub(super) fn compressible(reply: &OriginReply, c: &CompressionSettings) -> bool {
    reply.head.status == 200
        && reply.has_body()
        && reply
            .length()
            .is_some_and(|n| (c.min_bytes..=c.max_bytes).contains(&n))
        && reply.head.header("content-encoding").is_none()
        && reply.head.header("content-range").is_none()
}

/// The shard's `FillMemoryPerShard` charge for a body held whole while it is
/// compressed; released on drop.
struct Held<'a>(&'a std::sync::atomic::AtomicU64, u64);

impl<'a> Held<'a> {
    fn take(memory: &'a std::sync::atomic::AtomicU64, n: u64, budget: u64) -> Option<Held<'a>> {
        if memory.fetch_add(n, Relaxed) + n > budget {
            memory.fetch_sub(n, Relaxed);
            return None;
        }
        Some(Held(memory, n))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Relaxed);
    }
}

/// Reads the identity body whole, compresses it and stores the gzip variant;
/// this client (and the fill's followers) are answered from what was stored.
pub(super) async fn fill<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut reply: OriginReply,
    leader: Option<(Leader, FillSlot)>,
    result: CacheResult,
    request_time: u64,
    level: u8,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    let input = PlanInput {
        reply: &reply.head,
        length: reply.length(),
        has_body: reply.has_body(),
        until_close: reply.until_close(),
        request: super::request_facts(cx),
        options: &cx.vhost.options,
        max_object: cache.config().max_object,
        request_time_ms: request_time,
        response_time_ms: now_ms(),
    };
    let refuse = |leader: Option<(Leader, FillSlot)>| {
        if let Some((l, slot)) = leader {
            drop(slot);
            l.finish(FillEnd::Pass);
        }
    };
    let Ok(p) = plan(&input) else {
        // Not storable: this client gets the identity response as it came.
        refuse(leader);
        return pass::relay(cx, down, reply, &Extras::new(result)).await;
    };
    let (leader, _slot) = match leader {
        Some((l, slot)) => (Some(l), slot),
        None => match FillSlot::take(cx, cx.server.max_fills) {
            Some(slot) => (None, slot),
            None => {
                count_refused(cx);
                return pass::relay(cx, down, reply, &Extras::new(result)).await;
            }
        },
    };
    let length = p.length.unwrap_or(0);
    // The identity body and its gzip form (at most the same size, plus
    // framing) are held at once, within the shard's fill budget.
    let stats = cx.shard.stats();
    let Some(_held) = Held::take(&stats.fill_memory, 2 * length + 1024, cx.server.fill_memory)
    else {
        refuse(leader.map(|l| (l, _slot)));
        return pass::relay(cx, down, reply, &Extras::new(result)).await;
    };
    let mut body = Vec::with_capacity(length as usize);
    while let Some(b) = reply.next().await? {
        body.extend_from_slice(&b);
    }
    // Dropping the leader on an error above failed the fill for its followers.
    let started = std::time::Instant::now();
    let (planned, bytes) = match cx.shard.gzip.compress(level, &body) {
        Ok(gz) => {
            stats
                .gz_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
            stats.gz_objects.fetch_add(1, Relaxed);
            stats.gz_bytes_in.fetch_add(body.len() as u64, Relaxed);
            stats.gz_bytes_out.fetch_add(gz.len() as u64, Relaxed);
            (gzip_variant(&p, gz.len() as u64), gz)
        }
        Err(e) => {
            log::warn!(
                "{} {}: stored uncompressed: {e}",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path())
            );
            let mut v = p.clone();
            v.headers = with_vary(&p.headers);
            (v, body)
        }
    };
    store_and_answer(cx, down, leader, &planned, bytes, result).await
}

/// Stores `bytes` as `p` and answers from the store: as the fill's leader, its
/// followers too. Without room (or as a revalidation's 200), this client is
/// answered from memory and followers fetch for themselves.
async fn store_and_answer<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    leader: Option<Leader>,
    p: &FillPlan,
    bytes: Vec<u8>,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    let n = bytes.len() as u64;
    let writer = cache.writer(cx.shard.id, cx.key.stored(), &p.meta(), n);
    match (leader, writer) {
        (Some(l), Some(mut w)) => {
            let watch = l.watch();
            l.start(
                FillHead {
                    status: p.status,
                    headers: p.headers.clone(),
                    length: Some(n),
                    has_body: p.has_body,
                    times: p.times,
                },
                Some(w.body_cursor()),
            );
            let pushed = w.push(&bytes);
            drop(bytes);
            l.advance(n);
            let end = if pushed && w.commit() {
                FillEnd::Complete
            } else {
                FillEnd::Failed
            };
            l.finish(end);
            follow(cx, down, watch, result).await
        }
        (leader, writer) => {
            if let Some(l) = leader {
                l.finish(FillEnd::Pass);
            }
            if let Some(mut w) = writer {
                if w.push(&bytes) {
                    w.commit();
                }
            }
            let head = Head::from_lines(p.status, &p.headers, origin_body(true, Some(n)));
            response::send_head(cx, down, head, &Extras::new(result)).await?;
            if !cx.head.is_head() && n > 0 {
                response::send_piece(cx, down, Some(0), Bytes::from(bytes))
                    .await
                    .map_err(|_| ExchangeError::ClientGone)?;
            }
            down.finish().await.map_err(|_| ExchangeError::ClientGone)
        }
    }
}
