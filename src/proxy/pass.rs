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
    let pinned = pin(cx);
    let opts = OriginOpts {
        headers: cx.req_headers.as_ref(),
        pin: pinned.map(|(k, _)| k),
        private: pinned.and_then(|(_, p)| p.then_some(cx.req.conn.session_id)),
        ..OriginOpts::default()
    };
    let body = cx.req.body.borrow_mut().take();
    let reply = upstream::send(cx, &opts, body).await?;
    // RFC 9111 §4.4: an unsafe method answered with a non-error status invalidates
    // every stored variant of the target; a refused one (4xx, 5xx) leaves them.
    let safe = matches!(cx.head.method(), b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE");
    if !safe && reply.head.status < 400 {
        let cache = &cx.shard.shared.cache;
        cache.invalidate(&cx.key());
        // §4.4: the URIs in Location and Content-Location too, same origin only
        // (an absolute one must name this request's host).
        let host = cx.head.host().unwrap_or(cx.vhost.name.as_bytes());
        for name in ["location", "content-location"] {
            if let Some(path) = reply
                .head
                .header(name)
                .and_then(|v| same_origin_path(v, host))
            {
                // Keyed as a request for it would be (query rules, case).
                let url = super::cached::key_url(&cx.vhost.options, &cx.vhost.query_rules, path);
                let key = crate::cache::CacheKey::new(
                    &cx.vhost.name,
                    &url,
                    crate::cache::Variant::Identity,
                );
                cache.invalidate(&key);
            }
        }
    }
    relay(cx, down, reply, &Extras::new(result)).await
}

/// ORG-6: OriginAffinity keeps a client (by address) on one origin address,
/// Sticky keeps its connection on one; which applies is the method's
/// `<Bypass…Request>` (GET's for GET and HEAD, PUT's for PUT, POST's for the
/// rest). Neither: the vhost's balancing.
/// Also whether the request gets a private origin connection.
fn pin(cx: &RequestCtx<'_>) -> Option<(u64, bool)> {
    let o = &cx.vhost.options;
    let b = match cx.head.method() {
        // Only a GET the bypass settings sent here; one that passes for
        // another reason (Authorization, a client no-cache) is balanced.
        b"GET" | b"HEAD"
            if super::cached::eligible(cx.head)
                && super::way(cx.vhost, cx.head, cx.req.conn.peer.ip()) == super::Way::Pass =>
        {
            o.bypass_get
        }
        b"GET" | b"HEAD" => return None,
        b"PUT" => o.bypass_put,
        _ => o.bypass_post,
    };
    let conn = &cx.req.conn;
    // Private implies one address for the connection (its connection is there).
    let ip = || crate::config::stable_hash(&[conn.peer.ip().to_string().as_bytes()]);
    let session = || crate::config::stable_hash(&[&conn.session_id.to_le_bytes()]);
    if b.origin_affinity {
        Some((ip(), b.private))
    } else if b.sticky || b.private {
        Some((session(), b.private))
    } else {
        None
    }
}

/// Queues the origin's interim responses (103 Early Hints, 102) for this
/// client, less hop-by-hop fields and framing (RFC 9110 §15.2). Taken from the
/// reply: sent once. `flush`: write them now, as a pass-through may; a fill
/// shared with followers leaves them to go out with the head, so a client that
/// does not read cannot hold the fill.
pub(super) async fn forward_interim<D: Downstream>(
    down: &mut D,
    reply: &mut OriginReply,
    flush: bool,
) {
    let any = !reply.interim.is_empty();
    for h in std::mem::take(&mut reply.interim) {
        let named = |n: &[u8]| {
            h.headers()
                .filter(|(c, _)| c.eq_ignore_ascii_case(b"connection"))
                .any(|(_, v)| crate::http1::headers::connection_names(v, n))
        };
        let fields: Vec<(&[u8], &[u8])> = h
            .headers()
            .filter(|(n, _)| {
                !crate::http1::headers::is_hop_by_hop(n)
                    && !n.eq_ignore_ascii_case(b"content-length")
                    && !named(n)
            })
            .collect();
        if down.send_interim(h.status, &fields).await.is_err() {
            return;
        }
    }
    if any && flush {
        let _ = down.flush().await;
    }
}

/// The path of a `Location`/`Content-Location` value that names this origin:
/// an absolute path, or an `http(s)://` URL whose authority is `host`.
/// Relative references and other hosts are left alone.
fn same_origin_path<'a>(v: &'a [u8], host: &[u8]) -> Option<&'a [u8]> {
    let v = crate::http1::headers::trim(v);
    if v.starts_with(b"/") && !v.starts_with(b"//") {
        return Some(v);
    }
    let lower = v.to_ascii_lowercase();
    let rest = if lower.starts_with(b"http://") {
        &v[7..]
    } else if lower.starts_with(b"https://") {
        &v[8..]
    } else {
        return None;
    };
    let slash = rest.iter().position(|&b| b == b'/')?;
    rest[..slash]
        .eq_ignore_ascii_case(host)
        .then(|| &rest[slash..])
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
    forward_interim(down, &mut reply, true).await;
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

#[cfg(test)]
mod tests {
    use super::same_origin_path;

    #[test]
    fn location_paths_of_this_origin_only() {
        let h = b"www.a.com";
        let table: &[(&[u8], Option<&[u8]>)] = &[
            (b"/x?y=1", Some(b"/x?y=1")),
            (b" /x ", Some(b"/x")),
            (b"http://www.a.com/p", Some(b"/p")),
            (b"HTTPS://WWW.A.COM/p", Some(b"/p")),
            (b"http://evil.com/p", None),
            (b"//www.a.com/p", None),
            (b"x/y", None),
            (b"http://www.a.com", None),
        ];
        for (v, want) in table {
            assert_eq!(
                same_origin_path(v, h),
                *want,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }
}
