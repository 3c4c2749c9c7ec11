//! A miss: lead a coalesced fill (or join one, `follow`), store what may be
//! stored, and answer this client from the same bytes.

use super::follow::follow;
use super::plan::{plan, FillPlan, PlanInput};
use super::{origin_opts, send_to_origin};
use crate::cache::fill::{FillEnd, FillHead, Leader, Role};
use crate::cache::{Cache, CacheResult, Writer};
use crate::exchange::{Downstream, ExchangeError};
use crate::origin::exchange::OriginReply;
use crate::proxy::pass;
use crate::proxy::request::{now_ms, RequestCtx};
use crate::proxy::response::{self, Extras};
use bytes::Bytes;

pub async fn miss<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    match cache.fills.begin(cx.key.stored()) {
        Role::Leader(leader) => {
            let request_time = now_ms();
            // Dropping the leader on an error fails the fill for its followers.
            let reply = send_to_origin(cx, &origin_opts(cx, b"")).await?;
            fill_from(cx, down, reply, Some(leader), result, request_time).await
        }
        Role::Follower(fill) => follow(cx, down, fill, CacheResult::Miss).await,
    }
}

/// Answers from an origin response while storing it (when it may be stored) and,
/// as the leader, sharing it with followers.
pub async fn fill_from<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    reply: OriginReply,
    leader: Option<Leader>,
    result: CacheResult,
    request_time: u64,
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
    let plan = match plan(&input) {
        Ok(p) => p,
        Err(why) => {
            log::debug!(
                "{} {}: not stored: {why}",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path())
            );
            if let Some(l) = leader {
                l.finish(FillEnd::Pass); // followers fetch for themselves
            }
            return pass::relay(cx, down, reply, &Extras::new(result)).await;
        }
    };
    match leader {
        // Known length: the origin read, the store and the sharing run in a task of
        // their own, so no client (this one included) can slow the fill for the
        // others; this request follows it like any other.
        Some(l) if plan.length.is_some() => {
            l.set_head(FillHead {
                status: plan.status,
                headers: plan.headers.clone(),
                length: plan.length,
                has_body: plan.has_body,
                times: plan.times,
            });
            let fill = l.fill();
            let shared = cx.shard.shared.clone();
            let (shard_id, key) = (cx.shard.id, cx.key.stored().to_vec());
            tokio_uring::spawn(async move {
                let mut reply = reply;
                let mut store = Store::open(&shared.cache, shard_id, &key, &plan);
                let ok = loop {
                    match reply.next().await {
                        Ok(Some(b)) => {
                            store.push(&b);
                            l.push(b);
                        }
                        Ok(None) => break true,
                        Err(_) => break false, // the writer drops: its region stays dead
                    }
                };
                if ok {
                    store.commit(&shared.cache, shard_id, &key, &plan);
                }
                l.finish(if ok {
                    FillEnd::Complete
                } else {
                    FillEnd::Failed
                });
            });
            follow(cx, down, fill, result).await
        }
        other => {
            // Unknown length (chunked): not shared, so no fill can grow without bound;
            // stored at the end if it fits.
            if let Some(l) = other {
                l.finish(FillEnd::Pass);
            }
            stream_and_store(cx, down, reply, &plan, result).await
        }
    }
}

/// Streams a response to its one client while storing it.
async fn stream_and_store<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut reply: OriginReply,
    plan: &FillPlan,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    let key = cx.key.stored();
    let body = response::origin_body(plan.has_body && plan.status != 204, plan.length);
    let head = crate::exchange::Head::from_lines(plan.status, &plan.headers, body);
    let mut client_gone = response::send_head(cx, down, head, &Extras::new(result))
        .await
        .is_err();
    let mut store = Store::open(cache, cx.shard.id, key, plan);
    let mut offset = 0u64;
    loop {
        let item = match reply.next_buffered() {
            Ok(Some(item)) => Ok(item),
            Ok(None) => {
                if !client_gone {
                    client_gone = down.flush().await.is_err();
                }
                reply.next().await
            }
            Err(e) => Err(e),
        };
        match item {
            Ok(Some(b)) => {
                store.push(&b);
                let n = b.len() as u64;
                if !client_gone {
                    client_gone = response::send_piece(cx, down, Some(offset), b)
                        .await
                        .is_err();
                }
                offset += n;
                // Nobody to finish the response for, nothing to store: stop.
                if client_gone && !store.wants_more() {
                    return Err(ExchangeError::ClientGone);
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = down.flush().await;
                return Err(e.into());
            }
        }
    }
    store.commit(cache, cx.shard.id, key, plan);
    if client_gone {
        return Err(ExchangeError::ClientGone);
    }
    down.finish().await.map_err(|_| ExchangeError::ClientGone)
}

/// Where a fill's body goes: straight into a segment when the length is known,
/// else gathered (up to MaxObjectSize) and stored at the end.
struct Store<'c> {
    writer: Option<Writer<'c>>,
    gathered: Option<(Vec<Bytes>, u64)>,
    max: u64,
}

impl<'c> Store<'c> {
    fn open(cache: &'c Cache, shard: usize, key: &[u8], plan: &FillPlan) -> Store<'c> {
        Store {
            writer: plan
                .length
                .and_then(|n| cache.writer(shard, key, &plan.meta(), n)),
            gathered: plan.length.is_none().then(|| (Vec::new(), 0)),
            max: cache.config().max_object,
        }
    }

    fn push(&mut self, b: &Bytes) {
        if let Some(wr) = self.writer.as_mut() {
            if !wr.push(b) {
                self.writer = None;
            }
        }
        if let Some((parts, size)) = self.gathered.as_mut() {
            *size += b.len() as u64;
            if *size > self.max {
                self.gathered = None;
            } else {
                parts.push(b.clone());
            }
        }
    }

    fn wants_more(&self) -> bool {
        self.writer.is_some() || self.gathered.is_some()
    }

    /// Publishes the object (the body ended cleanly).
    fn commit(self, cache: &Cache, shard: usize, key: &[u8], plan: &FillPlan) {
        if let Some(wr) = self.writer {
            wr.commit();
        } else if let Some((parts, size)) = self.gathered {
            let sized = plan.with_length(size);
            if let Some(mut wr) = cache.writer(shard, key, &sized.meta(), size) {
                if parts.iter().all(|p| wr.push(p)) {
                    wr.commit();
                }
            }
        }
    }
}
