//! Answering from a stored object: 200, 304 (client conditional), 206 (one range
//! or multipart), 416. The head and the body (a `Bytes` over the segment
//! mapping) are handed to the downstream together, so HTTP/1 writes them in one
//! vectored submission without copying the body.

use super::conditional::{if_range_allows, not_modified};
use super::multipart::multipart;
use crate::cache::{CacheResult, Hit};
use crate::exchange::{BodyLen, Downstream, ExchangeError, Head};
use crate::http1::range::{self, RangeReply};

/// How far into a DRM object a Range may start (keystream skipped for it):
/// about 0.1 s of one core.
pub const DRM_MAX_SKIP: u64 = 64 << 20;
use crate::proxy::request::RequestCtx;
use crate::proxy::response::{self, Extras};

/// `now`: the request's clock reading, or a fresh one after a trip to the origin
/// (so Age and the TTL left count that trip).
///
/// The hit's bytes lease their segment, which cannot be reclaimed while the lease
/// lives: the whole send is bounded (`HitSendTimeoutSec` + size / `MinSendRate`),
/// so slow readers cannot keep new objects out of the cache.
pub async fn send_hit<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    hit: &Hit,
    result: CacheResult,
    now: u64,
) -> Result<(), ExchangeError> {
    let o = &cx.vhost.options;
    // Decided once, here: the reply, and so how many bytes the deadline allows
    // for (a Range, a HEAD or a 304 of a large object gets what its bytes need).
    let reply = if not_modified(cx.head, hit, o) {
        None
    } else if hit.status == 200 && if_range_allows(cx.head, hit, o) {
        match range::evaluate(cx.head.header("range"), hit.body.len() as u64) {
            // RC4 cannot seek: a DRM Range runs the keystream to its start, so
            // only one range, at most `DRM_MAX_SKIP` in, is served as a 206;
            // others get the whole 200 (RFC 9110 §14.2 allows ignoring Range),
            // whose keystream costs what is sent, at the client's pace.
            RangeReply::Partial(rs)
                if cx.drm.is_some() && (rs.len() > 1 || rs[0].start > DRM_MAX_SKIP) =>
            {
                Some(RangeReply::Full)
            }
            r => Some(r),
        }
    } else {
        Some(RangeReply::Full)
    };
    let sends = match &reply {
        _ if cx.head.method() == b"HEAD" => 0,
        Some(RangeReply::Partial(rs)) => rs.iter().map(|r| r.end - r.start).sum(),
        Some(RangeReply::Full) => hit.body.len() as u64,
        None | Some(RangeReply::Unsatisfiable) => 0,
    };
    let bound = cx.server.lease_bound(sends);
    tokio::time::timeout(bound, send(cx, down, hit, result, now, reply))
        .await
        .unwrap_or(Err(ExchangeError::ClientTooSlow))
}

/// `reply`: `None` for a 304 (the client's copy is current), else the range
/// answer.
async fn send<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    hit: &Hit,
    result: CacheResult,
    now: u64,
    reply: Option<RangeReply>,
) -> Result<(), ExchangeError> {
    let o = &cx.vhost.options;
    // A stored error answered as it is: STON's TCP_NEGATIVE_HIT.
    let result = match result {
        CacheResult::Hit if hit.status >= 400 => CacheResult::NegativeHit,
        r => r,
    };
    let mut x = Extras::new(result);
    x.ttl_left = Some(hit.times.ttl_left_s(now));
    x.age = super::age_to_send(o, &hit.times, now, true);
    let gone = |_| ExchangeError::ClientGone;
    let Some(ranges) = reply else {
        x.result = CacheResult::ImsHit;
        let head = Head::from_lines(304, &hit.headers, BodyLen::Empty);
        response::send_head(cx, down, head, &x).await?;
        return down.finish().await.map_err(gone);
    };
    let len = hit.body.len() as u64;
    match ranges {
        RangeReply::Full => {
            // RFC 9110 §8.6: no Content-Length on a 204.
            let body = if hit.status == 204 {
                BodyLen::Empty
            } else {
                BodyLen::Known(len)
            };
            let head = Head::from_lines(hit.status, &hit.headers, body);
            response::send_head(cx, down, head, &x).await?;
            if body != BodyLen::Empty {
                response::send_cached(cx, down, Some(0), hit.body.clone(), hit.loc.0)
                    .await
                    .map_err(gone)?;
            }
        }
        RangeReply::Unsatisfiable => {
            let mut head = Head::from_lines(416, &hit.headers, BodyLen::Known(0));
            head.push(b"Content-Range", format!("bytes */{len}").into_bytes());
            response::send_head(cx, down, head, &x).await?;
        }
        RangeReply::Partial(rs) if rs.len() == 1 => {
            let r = &rs[0];
            let mut head = Head::from_lines(206, &hit.headers, BodyLen::Known(r.end - r.start));
            head.push(
                b"Content-Range",
                format!("bytes {}-{}/{len}", r.start, r.end - 1).into_bytes(),
            );
            response::send_head(cx, down, head, &x).await?;
            let piece = hit.body.slice(r.start as usize..r.end as usize);
            response::send_cached(cx, down, Some(r.start), piece, hit.loc.0)
                .await
                .map_err(gone)?;
        }
        RangeReply::Partial(rs) => {
            let mut head = Head::from_lines(206, &hit.headers, BodyLen::Known(0));
            let (parts, total, ctype) = multipart(head.get(b"content-type"), &hit.body, &rs);
            head.body = BodyLen::Known(total);
            head.remove(b"content-type");
            head.push(b"Content-Type", ctype.into_bytes());
            response::send_head(cx, down, head, &x).await?;
            for (offset, piece) in parts {
                response::send_piece(cx, down, offset, piece)
                    .await
                    .map_err(gone)?;
            }
        }
    }
    down.finish().await.map_err(gone)
}
