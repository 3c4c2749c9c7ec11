//! Following a fill: the same head, then the body from the segment as far as the
//! leader (on whichever shard) has written it.

use crate::cache::fill::{FillEnd, Watch};
use crate::cache::CacheResult;
use crate::exchange::{BodyLen, Downstream, ExchangeError, Head};
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
    // `offset`: what this client has been sent; `seen`: what the fill had
    // written when last asked. The wait is for the fill's progress, not this
    // client's: a range far into the object waits for the fill to reach it,
    // which may take longer than `wait`, while the fill is far from idle.
    let mut offset = 0u64;
    let mut seen = 0u64;
    let mut started: Option<Started> = None;
    loop {
        let asked = tokio::time::Instant::now();
        let next = tokio::time::timeout(wait, fill.next(seen, started.is_some())).await;
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
        seen = p.written;
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
                let length = h.length.unwrap_or(0);
                let window = window(cx, h);
                let (head, sends) = match window {
                    Window::Whole => {
                        let body = origin_body(h.has_body && h.status != 204, h.length);
                        (Head::from_lines(h.status, &h.headers, body), length)
                    }
                    Window::Range(a, b) => {
                        let mut head = Head::from_lines(206, &h.headers, BodyLen::Known(b - a));
                        head.push(
                            b"Content-Range",
                            format!("bytes {a}-{}/{length}", b - 1).into_bytes(),
                        );
                        (head, b - a)
                    }
                    Window::Unsatisfiable => {
                        let mut head = Head::from_lines(416, &h.headers, BodyLen::Known(0));
                        head.push(b"Content-Range", format!("bytes */{length}").into_bytes());
                        (head, 0)
                    }
                };
                // Every byte from here on leases the segment: the whole send is
                // bounded as a hit's is (send_piece queues, flush and finish write).
                let (from, stop) = match window {
                    Window::Whole => (0, None),
                    Window::Range(a, b) => (a, Some(b)),
                    Window::Unsatisfiable => (0, Some(0)),
                };
                offset = from;
                let s = started.insert(Started {
                    deadline: std::cell::Cell::new(
                        tokio::time::Instant::now() + cx.server.lease_bound(sends),
                    ),
                    length,
                    stop,
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
                if s.stop == Some(0) {
                    return s.within(down.finish()).await?.map_err(gone);
                }
                s
            }
        };
        // A range ends where it ends, whatever the fill does after it.
        let upto = s.stop.map_or(p.written, |b| p.written.min(b));
        if upto > offset {
            // The written prefix, under its own lease: nothing is copied or held.
            let piece = match p.body.as_ref().and_then(|b| b.bytes(offset, upto)) {
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
        if s.stop == Some(offset) {
            return s.within(down.finish()).await?.map_err(gone);
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
    /// Where this response's body ends, when it is a range of the object's.
    stop: Option<u64>,
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
    let stop = s.stop.unwrap_or(s.length);
    (hit.body.len() as u64 == s.length && hit.times == s.times && offset <= stop)
        .then(|| hit.body.slice(offset as usize..stop as usize))
}

/// What of the object a follower sends.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Window {
    Whole,
    /// `[start, end)`: a 206 of one range.
    Range(u64, u64),
    /// A 416: no range of the request lies within the object.
    Unsatisfiable,
}

/// RFC 9110 §14: a GET's Range on a miss is answered from the fill as it
/// grows, as a hit's would be, when the object's length is known: one range
/// as a 206, none satisfiable as a 416. A request with several ranges, an
/// `If-Range` (the fill's validators are not the client's to trust before
/// the object is stored) or a DRM range past `DRM_MAX_SKIP` gets the whole
/// 200, which the RFC allows. Once stored, any range is served (`hit`).
fn window(cx: &RequestCtx<'_>, h: &crate::cache::fill::FillHead) -> Window {
    let Some(len) = h.length else {
        return Window::Whole;
    };
    if h.status != 200 || !h.has_body || cx.head.method() != b"GET" {
        return Window::Whole;
    }
    if cx.head.header("if-range").is_some() {
        return Window::Whole;
    }
    pick(cx.head.header("range"), len, cx.drm.is_some())
}

fn pick(range: Option<&[u8]>, len: u64, drm: bool) -> Window {
    use crate::http1::range::{evaluate, RangeReply};
    match evaluate(range, len) {
        RangeReply::Partial(rs) if rs.len() == 1 => {
            let r = &rs[0];
            if drm && r.start > super::hit::DRM_MAX_SKIP {
                Window::Whole
            } else {
                Window::Range(r.start, r.end)
            }
        }
        RangeReply::Unsatisfiable => Window::Unsatisfiable,
        _ => Window::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::{pick, Window};

    #[test]
    fn a_miss_answers_one_range_and_no_more() {
        let big = super::super::hit::DRM_MAX_SKIP + 10;
        // (Range, object length, DRM?, window)
        let table: &[(Option<&str>, u64, bool, Window)] = &[
            (None, 10, false, Window::Whole),
            (Some("bytes=0-4"), 10, false, Window::Range(0, 5)),
            (Some("bytes=-5"), 10, false, Window::Range(5, 10)),
            (Some("bytes=5-"), 10, false, Window::Range(5, 10)),
            (Some("bytes=5-100"), 10, false, Window::Range(5, 10)),
            (Some("bytes=10-"), 10, false, Window::Unsatisfiable),
            (Some("bytes=0-1,4-5"), 10, false, Window::Whole),
            (Some("items=0-1"), 10, false, Window::Whole),
            (Some("bytes=x-"), 10, false, Window::Whole),
            (Some("bytes=0-4"), 10, true, Window::Range(0, 5)),
            (Some("bytes=-5"), big, true, Window::Whole),
        ];
        for (range, len, drm, want) in table {
            assert_eq!(
                pick(range.map(str::as_bytes), *len, *drm),
                *want,
                "{range:?} of {len}"
            );
        }
    }
}
