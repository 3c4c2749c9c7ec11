//! A miss: lead a coalesced fill (or join one, `follow`), store what may be
//! stored, and answer this client from the same bytes.

use super::follow::follow;
use super::plan::{plan, FillPlan, PlanInput};
use super::{origin_opts, send_to_origin};
use crate::cache::fill::{FillEnd, FillHead, Leader, Role};
use crate::cache::{Cache, CacheResult, Writer};
use crate::context::Shared;
use crate::exchange::{Downstream, ExchangeError};
use crate::origin::exchange::OriginReply;
use crate::proxy::pass;
use crate::proxy::request::{now_ms, RequestCtx};
use crate::proxy::response::{self, Extras};
use std::sync::atomic::Ordering::Relaxed;

/// A place among a shard's running fills (`MaxFillsPerShard`); released on drop.
pub(super) struct FillSlot(std::sync::Arc<crate::context::Shared>, usize);

impl FillSlot {
    pub(super) fn take(cx: &RequestCtx<'_>, max: usize) -> Option<FillSlot> {
        let stats = cx.shard.stats();
        if stats.fills_active.load(Relaxed) as usize >= max {
            return None;
        }
        stats.fills_active.fetch_add(1, Relaxed);
        Some(FillSlot(cx.shard.shared.clone(), cx.shard.id))
    }
}

impl Drop for FillSlot {
    fn drop(&mut self) {
        self.0.stats[self.1].fills_active.fetch_sub(1, Relaxed);
    }
}

/// The fill limits in force (`<Cairn>`), read once per miss.
#[derive(Clone, Copy)]
struct FillLimits {
    max_fills: usize,
    background_pct: u8,
    memory: u64,
}

fn limits(cx: &RequestCtx<'_>) -> FillLimits {
    let s = cx.server;
    FillLimits {
        max_fills: s.max_fills,
        background_pct: s.background_fill_pct,
        memory: s.fill_memory,
    }
}

/// A miss passed through because of `MaxFillsPerShard`: counted, and logged the
/// 1st, 2nd, 4th, 8th… time.
pub(super) fn count_refused(cx: &RequestCtx<'_>) {
    let n = cx.shard.stats().fills_refused.fetch_add(1, Relaxed) + 1;
    if n.is_power_of_two() {
        log::warn!(
            "shard {}: MaxFillsPerShard reached; {n} passed through uncached so far",
            cx.shard.id
        );
    }
}

pub async fn miss<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    // Bound first: the key's borrow must not outlive this line (a fill may
    // re-key the request).
    let role = cache.fills.begin(cx.key().stored());
    match role {
        Role::Leader(leader) => {
            let Some(slot) = FillSlot::take(cx, limits(cx).max_fills) else {
                // Past the cap: this miss (and any that joined it) goes to the
                // origin uncached, so fill memory and origin load stay bounded.
                leader.finish(FillEnd::Pass);
                count_refused(cx);
                return pass::forward(cx, down, result).await;
            };
            let request_time = now_ms();
            // Dropping the leader on an error fails the fill for its followers.
            let reply = match send_to_origin(cx, &origin_opts(cx, b"")).await {
                Ok(r) => r,
                Err(e) => {
                    store_failure(cx, &e, result);
                    return Err(e);
                }
            };
            fill_from(cx, down, reply, Some((leader, slot)), result, request_time).await
        }
        Role::Follower(fill) => follow(cx, down, fill, CacheResult::Miss).await,
    }
}

/// TTL-4 (STON mode): with nothing cached, an origin failure is itself
/// cached for `<TTL><ConnectTimeout>` (or `<ReceiveTimeout>`, after a
/// response timeout) seconds, so the failing origin is not asked again by
/// every client meanwhile. Stored as cairn's error page of the status the
/// client got; 0 seconds stores nothing.
///
/// Only a plain miss (a stale copy is never replaced by an error page), and
/// only failures of the address itself (refused, unreachable, TLS, silent):
/// an origin that closes or resets on this request's own fields (which the
/// key does not hold) must not give everyone its error.
fn store_failure(cx: &RequestCtx<'_>, e: &ExchangeError, result: CacheResult) {
    use crate::origin::OriginError;
    let v = cx.vhost;
    // Not for a DRM request: its key is the source's, whose hits are encrypted.
    if v.options.ttl_mode != crate::config::TtlMode::Ston
        || cx.drm.is_some()
        || result != CacheResult::Miss
    {
        return;
    }
    let ExchangeError::Origin(oe) = e else {
        return;
    };
    let p = &v.options.ttl;
    let secs = match oe {
        OriginError::ResponseTimeout(_) => p.receive_timeout,
        OriginError::Connect(_) | OriginError::ConnectTimeout(_) | OriginError::Tls(_) => {
            p.connect_timeout
        }
        _ => return,
    };
    if secs == 0 {
        return;
    }
    let status = e.status();
    let (_, body) = super::super::response::error_response(status, true);
    let now = now_ms();
    let meta = crate::cache::meta::Meta {
        status,
        times: crate::cache::freshness::Times {
            // From now: a fetch that took longer than the lifetime (a
            // receive timeout) must not be stored already expired.
            request_time_ms: now,
            response_time_ms: now,
            date_s: now / 1000,
            age_s: 0,
            lifetime_ms: secs.saturating_mul(1000),
            flags: 0,
        },
        last_modified_s: 0,
        etag: b"",
        head: b"Content-Type: text/html\r\n",
    };
    let cache = &cx.shard.shared.cache;
    if let Some(mut w) = cache.writer(cx.shard.id, cx.key().stored(), &meta, body.len() as u64) {
        if w.push(&body) {
            w.commit();
        }
    }
}

/// TTL-2: NoStore `Bypass="ON"` also sends the URL straight to the origin for
/// the NoStore TTL (`cached::serve` checks the mark first).
pub(super) fn mark_bypass(cx: &RequestCtx<'_>, why: &str) {
    let secs = cx.vhost.options.ttl.no_store.secs;
    if why != crate::policy::ttl::NO_STORE_BYPASS || secs == 0 {
        return;
    }
    let now = now_ms();
    let until = now.saturating_add(secs.saturating_mul(1000));
    cx.shard
        .pass_marks
        .borrow_mut()
        .mark(cx.key().stored(), until, now);
}

/// What `plan` needs to know of an origin response to this request.
pub(super) fn plan_input<'a>(
    cx: &'a RequestCtx<'_>,
    reply: &'a OriginReply,
    request_time: u64,
) -> PlanInput<'a> {
    PlanInput {
        reply: &reply.head,
        length: reply.length(),
        has_body: reply.has_body(),
        until_close: reply.until_close(),
        request: super::request_facts(cx),
        options: &cx.vhost.options,
        max_object: cx.shard.shared.cache.config().max_object,
        request_time_ms: request_time,
        response_time_ms: now_ms(),
        custom_ttl: custom_ttl(cx, reply.head.status),
    }
}

/// TTL-6: the first ttl.txt rule matching this request and the origin's status.
pub(super) fn custom_ttl(cx: &RequestCtx<'_>, status: u16) -> Option<u64> {
    custom_ttl_for(
        cx.vhost,
        cx.head,
        cx.req.conn.peer.ip(),
        status,
        cx.now_ms / 1000,
    )
}

pub(super) fn custom_ttl_for(
    v: &crate::config::Vhost,
    head: &crate::http1::RequestHead,
    client_ip: std::net::IpAddr,
    status: u16,
    now_s: u64,
) -> Option<u64> {
    if v.ttl_rules.is_empty() || v.options.ttl_mode != crate::config::TtlMode::Ston {
        return None;
    }
    crate::proxy::rules::with_request_ctx(head, client_ip, |ctx| {
        crate::policy::ttl::custom_ttl(&v.ttl_rules, ctx, status, now_s)
    })
}

/// Answers from an origin response while storing it (when it may be stored) and,
/// as the leader, sharing it with followers.
pub(super) async fn fill_from<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    reply: OriginReply,
    leader: Option<(Leader, FillSlot)>,
    result: CacheResult,
    request_time: u64,
) -> Result<(), ExchangeError> {
    // RFC 9111 §4.1 / KEY-4: the key must hold the fields the response varies
    // on. When it does not (the first response of a URL that varies, or one
    // whose Vary changed), the Vary index learns them and this request is
    // re-keyed by its own values before anything is stored; the fill's
    // followers (other values, maybe) fetch for themselves. `Vary: *` is never
    // stored.
    let mut leader = leader;
    let mut reply = reply;
    // Interim responses are this client's: before anything of the final one,
    // queued only (they go out with the head), since followers wait on this.
    pass::forward_interim(down, &mut reply, false).await;
    let have = crate::cache::key::vary_of(cx.key().stored())
        .map(|(_, n)| n)
        .unwrap_or_default();
    let want = super::honoured_vary(cx.vhost, &reply.head);
    // Fields are only ever added to a URL's list: an origin that names some
    // only on some responses (`Vary: Origin` on CORS ones) must not make the
    // list flip, and a key with more fields than a response names is merely
    // finer than needed.
    let covered = want
        .as_ref()
        .is_some_and(|w| w.iter().all(|n| have.contains(n)));
    if !covered {
        let cache = &cx.shard.shared.cache;
        let storable = match plan(&plan_input(cx, &reply, request_time)) {
            Ok(_) => true,
            Err(why) => {
                mark_bypass(cx, why);
                false
            }
        };
        let rekeyed = match want {
            Some(w) if storable => {
                let mut names = have;
                names.extend(w);
                names.sort();
                names.dedup();
                let unvaried = cx.key().unvaried();
                let sig = super::vary_signature(&names, cx.head, cx.req_headers.as_ref());
                let key = unvaried.varied(&names, sig);
                cache.set_vary(unvaried.stored(), Some(names.into()));
                Some(key)
            }
            _ => None,
        };
        if let Some((l, slot)) = leader.take() {
            drop(slot);
            l.finish(FillEnd::Pass);
        }
        match rekeyed {
            Some(k) => *cx.key.borrow_mut() = k,
            None => {
                log::debug!(
                    "{} {}: not stored: Vary: * or too many fields, or not storable",
                    cx.vhost.name,
                    String::from_utf8_lossy(cx.head.path())
                );
                return pass::relay(cx, down, reply, &Extras::new(result)).await;
            }
        }
    }
    // GZ-3: a gzip client's miss of a URL cairn compresses.
    if let (Some(level), Some((_, c))) =
        (super::compress::makes_gzip(cx), super::compress::level(cx))
    {
        // Past the shard's fill memory it is filled as it came (identity, with Vary).
        if super::compress::compressible(&reply, &c) {
            if let Some(held) = super::compress::Held::take(cx, reply.length().unwrap_or(0)) {
                let lvl = (level, held);
                return super::compress::fill(cx, down, reply, leader, result, request_time, lvl)
                    .await;
            }
        }
    }
    let cache = &cx.shard.shared.cache;
    let mut plan = match plan(&plan_input(cx, &reply, request_time)) {
        Ok(p) => p,
        Err(why) => {
            log::debug!(
                "{} {}: not stored: {why}",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path())
            );
            mark_bypass(cx, why);
            if let Some((l, slot)) = leader {
                drop(slot); // a relay is not a fill: it must not hold a place
                l.finish(FillEnd::Pass); // followers fetch for themselves
            }
            return pass::relay(cx, down, reply, &Extras::new(result)).await;
        }
    };
    // With compression on for the URL, both variants say they vary (GZ-3).
    if super::compress::level(cx).is_some() {
        plan.headers = super::plan::with_vary(&plan.headers);
    }
    let lim = limits(cx);
    let (leader, slot) = match leader {
        Some((l, slot)) => (Some(l), Some(slot)),
        // A revalidation's 200 has no fill of its own: it still counts.
        None => match FillSlot::take(cx, lim.max_fills) {
            Some(slot) => (None, Some(slot)),
            None => {
                count_refused(cx);
                return pass::relay(cx, down, reply, &Extras::new(result)).await;
            }
        },
    };
    // A shared fill needs room in a segment (followers read from it). Without,
    // this client is answered from the origin's reply, followers fetch their own.
    let room = plan
        .length
        .is_some_and(|n| cache.can_store(cx.shard.id, cx.key().stored(), &plan.meta(), n));
    match leader {
        // Known length: the origin read and the store run in a task of their own,
        // so no client (this one included) can slow the fill for the others; every
        // client, this one too, follows it from the segment.
        Some(l) if room => {
            let watch = l.watch();
            let shared = cx.shard.shared.clone();
            let (shard_id, key) = (cx.shard.id, cx.key().stored().to_vec());
            let label = format!(
                "{} {}",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path())
            );
            tokio_uring::spawn(async move {
                let _slot = slot;
                let job = Background {
                    shared: &shared,
                    shard: shard_id,
                    key: &key,
                    plan: &plan,
                    limits: lim,
                    label: &label,
                };
                job.run(reply, l).await;
            });
            follow(cx, down, watch, result).await
        }
        leader => {
            // Not shared: unknown length (chunked: gathered within the shard's
            // budget and stored at the end if it fits), or a revalidation's 200.
            if let Some(l) = leader {
                l.finish(FillEnd::Pass);
            }
            let store = match plan.length {
                Some(n) => cache
                    .writer(cx.shard.id, cx.key().stored(), &plan.meta(), n)
                    .map_or(Store::Nothing, |w| Store::Direct(Box::new(w))),
                None => Store::Gather(Gather::new(
                    cx.shard.shared.clone(),
                    cx.shard.id,
                    cache.config().max_object,
                    lim.memory,
                )),
            };
            stream_and_store(cx, down, reply, &plan, (store, slot), result).await
        }
    }
}

/// A shared fill of known length, run as its own task on the leader's shard.
struct Background<'a> {
    shared: &'a Shared,
    shard: usize,
    key: &'a [u8],
    plan: &'a FillPlan,
    limits: FillLimits,
    label: &'a str,
}

impl Background<'_> {
    async fn run(&self, mut reply: OriginReply, l: Leader) {
        let cache = &self.shared.cache;
        let length = self.plan.length.unwrap_or(0);
        let Some(mut writer) = cache.writer(self.shard, self.key, &self.plan.meta(), length) else {
            // No room in a segment now: nothing to share from. Every client
            // fetches for itself, uncached.
            l.finish(FillEnd::Pass);
            return;
        };
        l.start(
            FillHead {
                status: self.plan.status,
                headers: self.plan.headers.clone(),
                length: self.plan.length,
                has_body: self.plan.has_body,
                times: self.plan.times,
            },
            Some(writer.body_cursor()),
        );
        let mut l = l;
        let stats = &self.shared.stats[self.shard];
        loop {
            match reply.next().await {
                Ok(Some(b)) => {
                    let n = b.len() as u64;
                    if !writer.push(&b) {
                        // More than the region holds: the length decoder never
                        // yields past Content-Length, but the region is the bound.
                        return l.finish(FillEnd::Failed);
                    }
                    // The origin's read buffer is free again before the next read.
                    drop(b);
                    l.advance(n);
                    if l.watchers() == 0
                        && !self.worth_finishing(writer.written(), length)
                        && self.may_waste(length)
                    {
                        match l.abandon() {
                            Ok(()) => {
                                stats.fills_abandoned.fetch_add(1, Relaxed);
                                log::debug!(
                                    "{}: fill abandoned at {} of {length} bytes: no client left",
                                    self.label,
                                    writer.written()
                                );
                                return; // the writer's region stays dead; the origin connection closes
                            }
                            Err(back) => {
                                // Someone joined meanwhile: nothing was given up.
                                stats.abandoned_bytes.fetch_sub(length, Relaxed);
                                l = back
                            }
                        }
                    }
                }
                Ok(None) => {
                    let end = if writer.commit() {
                        FillEnd::Complete
                    } else {
                        FillEnd::Failed
                    };
                    return l.finish(end);
                }
                // The writer drops: its region stays dead.
                Err(_) => return l.finish(FillEnd::Failed),
            }
        }
    }

    /// An abandoned fill's region stays dead until its segment is reclaimed, so
    /// clients that hang up after the head could churn the cache for free: each
    /// shard gives up at most 1/8 of its share of the quota per minute this way,
    /// past that fills are finished (and stored) as if nearly done.
    fn may_waste(&self, bytes: u64) -> bool {
        let cache = &self.shared.cache;
        let budget = cache.config().quota / (8 * self.shared.stats.len() as u64).max(1);
        let stats = &self.shared.stats[self.shard];
        // A minute from the first abandon of the window (only this shard writes).
        let now = crate::proxy::request::now_ms();
        let since = stats.abandon_since_ms.load(Relaxed);
        if since == 0 || now.saturating_sub(since) >= 60_000 {
            stats.abandon_since_ms.store(now, Relaxed);
            stats.abandoned_bytes.store(0, Relaxed);
        }
        let spent = stats.abandoned_bytes.fetch_add(bytes, Relaxed);
        if spent.saturating_add(bytes) > budget {
            stats.abandoned_bytes.fetch_sub(bytes, Relaxed);
            return false;
        }
        true
    }

    /// `BackgroundFillPercent`: is enough stored to finish without a client?
    fn worth_finishing(&self, written: u64, length: u64) -> bool {
        u128::from(written) * 100 >= u128::from(length) * u128::from(self.limits.background_pct)
    }
}

/// Streams a response to its one client while storing it.
async fn stream_and_store<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut reply: OriginReply,
    plan: &FillPlan,
    (mut store, mut slot): (Store<'_>, Option<FillSlot>),
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    // Owned: no borrow of the key may live across an await.
    let key = cx.key().stored().to_vec();
    let body = response::origin_body(plan.has_body && plan.status != 204, plan.length);
    let head = crate::exchange::Head::from_lines(plan.status, &plan.headers, body);
    let mut x = Extras::new(result);
    x.age = super::age_to_send(&cx.vhost.options, &plan.times, now_ms(), false);
    let mut client_gone = match response::send_head(cx, down, head, &x).await {
        Ok(()) => false,
        // Refused before a byte was sent (a DRM source over MaxSourceSize):
        // the client gets its error response, nothing is stored.
        Err(e @ ExchangeError::Internal(_)) => return Err(e),
        Err(_) => true,
    };
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
                if !store.wants_more() {
                    // Only a relay now, at the client's pace: free the fill's place.
                    drop(slot.take());
                }
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
    store.commit(cache, cx.shard.id, &key, plan);
    if client_gone {
        return Err(ExchangeError::ClientGone);
    }
    down.finish().await.map_err(|_| ExchangeError::ClientGone)
}

/// Where an unshared fill's body goes: straight into a segment when the length
/// is known, else gathered (within the shard's budget) and stored at the end.
enum Store<'c> {
    Direct(Box<Writer<'c>>),
    Gather(Gather),
    Nothing,
}

impl Store<'_> {
    fn push(&mut self, b: &[u8]) {
        let keep = match self {
            Store::Direct(w) => w.push(b),
            Store::Gather(g) => g.push(b),
            Store::Nothing => false,
        };
        if !keep {
            *self = Store::Nothing;
        }
    }

    fn wants_more(&self) -> bool {
        !matches!(self, Store::Nothing)
    }

    /// Publishes the object (the body ended cleanly).
    fn commit(self, cache: &Cache, shard: usize, key: &[u8], plan: &FillPlan) {
        match self {
            Store::Direct(w) => {
                w.commit();
            }
            Store::Gather(g) => {
                let sized = plan.with_length(g.size);
                if let Some(mut w) = cache.writer(shard, key, &sized.meta(), g.size) {
                    if g.pieces.iter().all(|p| w.push(p)) {
                        w.commit();
                    }
                }
            }
            Store::Nothing => {}
        }
    }
}

/// A body of unknown length, copied into pieces of [`GATHER_PIECE`] bytes: small
/// origin reads are compacted (no read buffer is pinned), and each piece is
/// charged, whole, to the shard's `FillMemoryPerShard` budget.
struct Gather {
    shared: std::sync::Arc<Shared>,
    shard: usize,
    pieces: Vec<Vec<u8>>,
    size: u64,
    charged: u64,
    max: u64,
    budget: u64,
}

const GATHER_PIECE: usize = 256 * 1024;

impl Gather {
    fn new(shared: std::sync::Arc<Shared>, shard: usize, max: u64, budget: u64) -> Gather {
        Gather {
            shared,
            shard,
            pieces: Vec::new(),
            size: 0,
            charged: 0,
            max,
            budget,
        }
    }

    /// `false` once the body is too large to store or the shard's budget is spent.
    fn push(&mut self, mut b: &[u8]) -> bool {
        self.size += b.len() as u64;
        if self.size > self.max {
            return false;
        }
        while !b.is_empty() {
            if self.pieces.last().is_none_or(|p| p.len() == p.capacity()) {
                let memory = &self.shared.stats[self.shard].fill_memory;
                let piece = GATHER_PIECE as u64;
                if memory.fetch_add(piece, Relaxed) + piece > self.budget {
                    memory.fetch_sub(piece, Relaxed);
                    return false;
                }
                self.charged += piece;
                self.pieces.push(Vec::with_capacity(GATHER_PIECE));
            }
            let p = self.pieces.last_mut().expect("a piece with room");
            let n = (p.capacity() - p.len()).min(b.len());
            p.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
        true
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        self.shared.stats[self.shard]
            .fill_memory
            .fetch_sub(self.charged, Relaxed);
    }
}
