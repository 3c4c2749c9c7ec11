//! Pass-through: requests the cache does not handle (other methods, Authorization,
//! uncacheable responses) go to the origin and stream back as they are.

use super::request::RequestCtx;
use super::response::{self, Extras};
use super::upstream::{self, OriginOpts};
use crate::cache::CacheResult;
use crate::exchange::{Downstream, ExchangeError};
use crate::origin::exchange::OriginReply;

/// Forwards the request (with its body) and relays the response.
pub async fn forward<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    cx.bypass.set(true);
    let opts = OriginOpts {
        headers: cx.req_headers.as_ref(),
        ..OriginOpts::default()
    };
    let body = cx.req.body.borrow_mut().take();
    let reply = upstream::send(cx, &opts, body).await?;
    // RFC 9111 §4.4: an unsafe method answered with a non-error status invalidates
    // every stored variant of the target; a refused one (4xx, 5xx) leaves them.
    let safe = matches!(cx.head.method(), b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE");
    if !safe && reply.head.status < 400 {
        cx.shard.shared.cache.invalidate(&cx.key());
    }
    relay(cx, down, reply, &Extras::new(result)).await
}

/// Relays an origin response with its fields as they are (less hop-by-hop).
pub async fn relay<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut reply: OriginReply,
    x: &Extras,
) -> Result<(), ExchangeError> {
    // A DRM response relayed from the origin: a 206's keystream starts at its
    // range (`Content-Range`); what cannot be encrypted byte for byte (several
    // ranges, an encoded body) is refused.
    let mut offset = 0u64;
    if cx.drm.is_some() && reply.has_body() {
        if reply.head.header("content-encoding").is_some() {
            return Err(ExchangeError::Internal(
                "DRM: the origin sent an encoded body",
            ));
        }
        if reply.head.status == 206 {
            offset = reply
                .head
                .header("content-range")
                .and_then(range_start)
                .ok_or(ExchangeError::Internal("DRM: a 206 without one byte range"))?;
        }
    }
    let body = response::origin_body(reply.has_body(), reply.length());
    let head = response::from_origin(&reply.head, body, cx.vhost.options.headers);
    response::send_head(cx, down, head, x).await?;
    loop {
        let item = match reply.next_buffered() {
            Ok(Some(item)) => Ok(item),
            Ok(None) => {
                down.flush().await.map_err(|_| ExchangeError::ClientGone)?;
                reply.next().await
            }
            Err(e) => Err(e),
        };
        match item {
            Ok(Some(b)) => {
                let n = b.len() as u64;
                response::send_piece(cx, down, Some(offset), b)
                    .await
                    .map_err(|_| ExchangeError::ClientGone)?;
                offset += n;
            }
            Ok(None) => break,
            Err(e) => {
                let _ = down.flush().await;
                return Err(e.into());
            }
        }
    }
    down.finish().await.map_err(|_| ExchangeError::ClientGone)
}

/// The first byte of `Content-Range: bytes a-b/n`.
fn range_start(v: &[u8]) -> Option<u64> {
    let v = crate::http1::headers::trim(v);
    let rest = v.strip_prefix(b"bytes ")?;
    let dash = rest.iter().position(|&b| b == b'-')?;
    crate::http1::headers::parse_content_length(&rest[..dash])
}
