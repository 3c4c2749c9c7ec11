//! Gzip variants cairn makes (GZ-1..GZ-5). With `<Compression>` ON and a
//! compression.txt line for the URL, a gzip client's miss asks the origin for
//! the identity form (GZ-4), and a 200 of known length within `SourceSize`,
//! without a `Content-Encoding` or `no-transform`, is compressed once, on the
//! filling shard, and stored as the gzip variant: every later gzip client is a
//! plain hit of those bytes (GZ-3). Anything else is stored as it came, with
//! `Vary`.
//!
//! The read, the compression and the store run in a task of their own (as a
//! known-length fill does), so the client that led the miss, fast or slow or
//! gone, never holds the body, the fill's place or its followers.

use super::fill::{count_refused, FillSlot};
use super::follow::follow;
use super::hit::send_hit;
use super::plan::{gzip_variant, plan, with_vary, FillPlan};
use crate::cache::fill::{FillEnd, FillHead, Leader};
use crate::cache::{CacheResult, Variant};
use crate::config::CompressionSettings;
use crate::context::Shared;
use crate::exchange::{Downstream, ExchangeError, Head};
use crate::origin::exchange::OriginReply;
use crate::policy::compression::{decide, Compress};
use crate::proxy::pass;
use crate::proxy::request::{now_ms, RequestCtx};
use crate::proxy::response::{self, origin_body, Extras};
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

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
    (cx.key().variant == Variant::Gzip)
        .then(|| level(cx))
        .flatten()
        .map(|(l, _)| l)
}

/// GZ-4, GZ-5, RFC 9110 §7.7: a 200 with a body of known length within
/// `SourceSize`, not already encoded (an encoded one is passed through as it
/// is), and not marked `no-transform`.
pub(super) fn compressible(reply: &OriginReply, c: &CompressionSettings) -> bool {
    let no_transform = reply
        .head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
        .any(|(_, v)| {
            crate::http1::headers::tokens(v).any(|t| t.eq_ignore_ascii_case(b"no-transform"))
        });
    reply.head.status == 200
        && reply.has_body()
        && reply
            .length()
            .is_some_and(|n| (c.min_bytes..=c.max_bytes).contains(&n))
        && reply.head.header("content-encoding").is_none()
        && reply.head.header("content-range").is_none()
        && !no_transform
}

/// The shard's `FillMemoryPerShard` charge for a body held whole while it is
/// compressed (the body and its gzip bound); released on drop.
pub(super) struct Held {
    shared: Arc<Shared>,
    shard: usize,
    n: u64,
}

impl Held {
    /// `None` past the budget: the object is then filled as it came.
    pub(super) fn take(cx: &RequestCtx<'_>, length: u64) -> Option<Held> {
        let n = 2 * length + 64 * 1024;
        let memory = &cx.shard.stats().fill_memory;
        if memory.fetch_add(n, Relaxed) + n > cx.server.fill_memory {
            memory.fetch_sub(n, Relaxed);
            return None;
        }
        Some(Held {
            shared: cx.shard.shared.clone(),
            shard: cx.shard.id,
            n,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.stats[self.shard]
            .fill_memory
            .fetch_sub(self.n, Relaxed);
    }
}

/// What a compression fill stores: the gzip variant, or (compression refused
/// by the shard's budget, no gain, an error) the identity body with `Vary`.
struct Made {
    plan: FillPlan,
    bytes: Vec<u8>,
}

/// Compresses `body` for `p` on this shard, within its budget.
fn make(
    shared: &Shared,
    shard: usize,
    p: &FillPlan,
    body: Vec<u8>,
    level: u8,
    label: &str,
) -> Made {
    let stats = &shared.stats[shard];
    let started = std::time::Instant::now();
    match crate::transform::gzip::compress(level, &body) {
        // Worth storing only when smaller (and storable).
        Ok(gz) if gz.len() < body.len() => {
            stats
                .gz_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
            stats.gz_objects.fetch_add(1, Relaxed);
            stats.gz_bytes_in.fetch_add(body.len() as u64, Relaxed);
            stats.gz_bytes_out.fetch_add(gz.len() as u64, Relaxed);
            Made {
                plan: gzip_variant(p, gz.len() as u64),
                bytes: gz,
            }
        }
        r => {
            if let Err(e) = r {
                log::debug!("{label}: stored uncompressed: {e}");
            }
            let mut v = p.clone();
            v.headers = with_vary(&p.headers);
            Made {
                plan: v,
                bytes: body,
            }
        }
    }
}

/// Reads the identity body whole (within `deadline`), bounded by its declared
/// length.
async fn read_body(reply: &mut OriginReply, length: u64, deadline: Duration) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(length as usize);
    let read = async {
        while let Some(b) = reply.next().await? {
            body.extend_from_slice(&b);
        }
        Ok::<_, crate::origin::error::OriginError>(())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(())) if body.len() as u64 == length => Some(body),
        _ => None,
    }
}

/// The compressed fill of a gzip client's miss (`leader`), or of a
/// revalidation's 200 (`None`). `held` is its memory charge.
pub(super) async fn fill<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut reply: OriginReply,
    leader: Option<(Leader, FillSlot)>,
    result: CacheResult,
    request_time: u64,
    (level, held): (u8, Held),
) -> Result<(), ExchangeError> {
    let p = match plan(&super::fill::plan_input(cx, &reply, request_time)) {
        Ok(p) => p,
        Err(why) => {
            // Not storable: this client gets the identity response as it came.
            super::fill::mark_bypass(cx, why);
            if let Some((l, slot)) = leader {
                drop(slot);
                l.finish(FillEnd::Pass);
            }
            drop(held);
            return pass::relay(cx, down, reply, &Extras::new(result)).await;
        }
    };
    let length = p.length.unwrap_or(0);
    // Followers wait `ConnectTimeout + ReceiveTimeout` for a fill to show
    // progress: the read must finish within the second (the first is left for
    // the compression), or the fill gives way (they fetch for themselves).
    let deadline = cx.vhost.origin_options.receive_timeout;
    let label = format!(
        "{} {}",
        cx.vhost.name,
        String::from_utf8_lossy(cx.head.path())
    );
    match leader {
        Some((l, slot)) => {
            let watch = l.watch();
            let shared = cx.shard.shared.clone();
            let (shard, key) = (cx.shard.id, cx.key().stored().to_vec());
            tokio_uring::spawn(async move {
                let _slot = slot;
                let Some(body) = read_body(&mut reply, length, deadline).await else {
                    log::debug!("{label}: the body for compression did not come in time");
                    return l.finish(FillEnd::Pass);
                };
                let made = make(&shared, shard, &p, body, level, &label);
                drop(held);
                publish(&shared, shard, &key, made, l);
            });
            follow(cx, down, watch, result).await
        }
        None => {
            let Some(_slot) = FillSlot::take(cx, cx.server.max_fills) else {
                count_refused(cx);
                drop(held);
                return pass::relay(cx, down, reply, &Extras::new(result)).await;
            };
            let Some(body) = read_body(&mut reply, length, deadline).await else {
                return Err(ExchangeError::FillFailed);
            };
            let made = make(&cx.shard.shared, cx.shard.id, &p, body, level, &label);
            drop(held);
            answer_stored(cx, down, made, result).await
        }
    }
}

/// Stores what was made and ends the fill with it; followers (the leading
/// client among them) are answered from the segment.
fn publish(shared: &Shared, shard: usize, key: &[u8], made: Made, l: Leader) {
    let p = &made.plan;
    let n = made.bytes.len() as u64;
    let Some(mut w) = shared.cache.writer(shard, key, &p.meta(), n) else {
        // No room (or past MaxObjectSize): every client fetches for itself.
        return l.finish(FillEnd::Pass);
    };
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
    if !w.push(&made.bytes) {
        return l.finish(FillEnd::Failed);
    }
    l.advance(n);
    let end = if w.commit() {
        FillEnd::Complete
    } else {
        FillEnd::Failed
    };
    l.finish(end);
}

/// A revalidation's 200: stored, then answered as a hit of what was stored
/// (no body held while the client reads); from memory only without room.
async fn answer_stored<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    made: Made,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    let p = &made.plan;
    let n = made.bytes.len() as u64;
    let writer = cache.writer(cx.shard.id, cx.key().stored(), &p.meta(), n);
    if let Some(mut w) = writer {
        if w.push(&made.bytes) && w.commit() {
            let found = cache.lookup(cx.key().stored());
            if let Some(hit) = found {
                drop(made);
                return send_hit(cx, down, &hit, result, now_ms()).await;
            }
        }
    }
    let head = Head::from_lines(p.status, &p.headers, origin_body(true, Some(n)));
    response::send_head(cx, down, head, &Extras::new(result)).await?;
    if n > 0 {
        response::send_piece(cx, down, Some(0), Bytes::from(made.bytes))
            .await
            .map_err(|_| ExchangeError::ClientGone)?;
    }
    down.finish().await.map_err(|_| ExchangeError::ClientGone)
}
