//! Following a fill: the same head, then the body from the segment as far as the
//! leader (on whichever shard) has written it.

use crate::cache::fill::{FillEnd, Watch};
use crate::cache::CacheResult;
use crate::exchange::{Downstream, ExchangeError, Head};
use crate::proxy::pass;
use crate::proxy::request::RequestCtx;
use crate::proxy::response::{self, origin_body, Extras};

pub async fn follow<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    fill: Watch,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let oo = &cx.vhost.origin_options;
    let wait = oo.connect_timeout + oo.receive_timeout;
    let mut offset = 0u64;
    let mut started: Option<Started> = None;
    loop {
        let asked = tokio::time::Instant::now();
        let next = tokio::time::timeout(wait, fill.next(offset, started.is_some())).await;
        // Time spent waiting for the origin is not the client's: the send's
        // deadline moves by it.
        if let Some(s) = &started {
            s.deadline.set(s.deadline.get() + asked.elapsed());
        }
        let Ok(p) = next else {
            if let Some(s) = &started {
                let _ = s.within(down.flush()).await;
            }
            return Err(ExchangeError::FillTimeout);
        };
        let s = match &started {
            Some(s) => s,
            None => {
                if p.end == Some(FillEnd::Pass) {
                    // Not shareable: fetch for ourselves, uncached.
                    return pass::forward(cx, down, CacheResult::Miss).await;
                }
                let Some(h) = &p.head else {
                    if p.end == Some(FillEnd::Failed) {
                        return Err(ExchangeError::FillFailed);
                    }
                    continue;
                };
                let body = origin_body(h.has_body && h.status != 204, h.length);
                let head = Head::from_lines(h.status, &h.headers, body);
                // Every byte from here on leases the segment: the whole send is
                // bounded as a hit's is (send_piece queues, flush and finish write).
                let length = h.length.unwrap_or(0);
                let s = started.insert(Started {
                    deadline: std::cell::Cell::new(
                        tokio::time::Instant::now() + cx.server.lease_bound(length),
                    ),
                    length,
                    times: h.times,
                });
                let mut x = Extras::new(result);
                x.age = super::age_to_send(
                    &cx.vhost.options,
                    &h.times,
                    crate::proxy::request::now_ms(),
                    false,
                );
                s.within(response::send_head(cx, down, head, &x)).await??;
                s
            }
        };
        if p.written > offset {
            // The written prefix, under its own lease: nothing is copied or held.
            let piece = match p.body.as_ref().and_then(|b| b.bytes(offset, p.written)) {
                Some(piece) => piece,
                // The segment went on (reclaimed) under a slow follower of a
                // finished fill: the stored object has the same bytes.
                None => match stored_rest(cx, s, offset, p.end) {
                    Some(rest) => rest,
                    None => {
                        let _ = s.within(down.flush()).await;
                        return Err(ExchangeError::FillFailed);
                    }
                },
            };
            let end = offset + piece.len() as u64;
            s.within(response::send_piece(cx, down, Some(offset), piece))
                .await?
                .map_err(gone)?;
            offset = end;
        }
        match p.end {
            Some(FillEnd::Complete) if offset == s.length => {
                return s.within(down.finish()).await?.map_err(gone)
            }
            Some(_) => {
                let _ = s.within(down.flush()).await;
                return Err(ExchangeError::FillFailed);
            }
            None => s.within(down.flush()).await?.map_err(gone)?,
        }
    }
}

fn gone(_: crate::exchange::ClientGone) -> ExchangeError {
    ExchangeError::ClientGone
}

/// The response head is sent: the send's deadline, the body's length and the
/// fill's time facts (which tell its stored version from a later one).
struct Started {
    deadline: std::cell::Cell<tokio::time::Instant>,
    length: u64,
    times: crate::cache::freshness::Times,
}

impl Started {
    async fn within<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, ExchangeError> {
        tokio::time::timeout_at(self.deadline.get(), f)
            .await
            .map_err(|_| ExchangeError::ClientTooSlow)
    }
}

/// The body from `offset` on, from the stored object, when the fill completed
/// and what is stored under the key is that fill's version: the same length and
/// the same time facts (a later fill, or a 304's refresh, has others; then the
/// response is cut off rather than spliced from two versions).
fn stored_rest(
    cx: &RequestCtx<'_>,
    s: &Started,
    offset: u64,
    end: Option<FillEnd>,
) -> Option<bytes::Bytes> {
    if end != Some(FillEnd::Complete) {
        return None;
    }
    let hit = cx.shard.shared.cache.lookup(cx.key().stored())?;
    (hit.body.len() as u64 == s.length && hit.times == s.times && offset <= s.length)
        .then(|| hit.body.slice(offset as usize..))
}
