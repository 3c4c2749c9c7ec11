//! Response heads as the request path builds them, and the phases between a
//! built head and the downstream: the STON response-header policy (VIA-1, SRV-1,
//! ETAG-1, AGE-1, `X-Cache`), then the rules (EXP, MOD-2), then send. Body pieces
//! pass through the exchange's send-side transform on their way out.

use super::request::{RequestCtx, Sent};
use crate::cache::meta::HeaderPolicy;
use crate::cache::CacheResult;
use crate::exchange::{BodyLen, ClientGone, Downstream, ExchangeError, Head};
use crate::http1::headers::{connection_names, is_hop_by_hop, reason};
use crate::http1::ResponseHead;
use bytes::Bytes;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

/// `cairn/<version>` (VIA-1; STON writes `STON/<version>`).
pub const VIA: &str = concat!("cairn/", env!("CARGO_PKG_VERSION"));

/// What the header policy adds for one response.
#[derive(Debug, Clone, Copy)]
pub struct Extras {
    pub result: CacheResult,
    /// AGE-1: the `Age` of a response served from cache, in seconds.
    pub age: Option<u64>,
    /// The object's remaining TTL (`#TTL_LEFT`), for responses from cache.
    pub ttl_left: Option<u64>,
}

impl Extras {
    pub fn new(result: CacheResult) -> Extras {
        Extras {
            result,
            age: None,
            ttl_left: None,
        }
    }
}

thread_local! {
    static DATE: RefCell<(u64, Bytes)> = const { RefCell::new((u64::MAX, Bytes::new())) };
}

/// `Date: <now>` as a value, formatted at most once a second per shard.
pub fn date_value() -> Bytes {
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, Bytes::from(crate::httpdate::format(now)));
        }
        d.1.clone()
    })
}

/// Appends a `Date: <now>\r\n` line (for stored header blocks).
pub fn write_date_line(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(&date_value());
    out.extend_from_slice(b"\r\n");
}

/// A pass-through head from an origin response: its fields less hop-by-hop ones
/// and those its `Connection` names, filtered by ORIG-1 (Set-Cookie always
/// passes: ORIG-1 keeps cookies out of the cache, not away from the client).
/// The origin's `Content-Length` passes only when no body follows.
pub fn from_origin(resp: &ResponseHead, body: BodyLen, policy: HeaderPolicy) -> Head<'_> {
    let mut h = Head::new(resp.status, body);
    let r = resp.reason();
    if !r.is_empty()
        && r.iter()
            .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        h.reason = Some(r);
    }
    let conn_values = || {
        resp.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .map(|(_, v)| v)
    };
    for (name, value) in resp.headers() {
        let cookie =
            name.eq_ignore_ascii_case(b"set-cookie") || name.eq_ignore_ascii_case(b"set-cookie2");
        let framing = name.eq_ignore_ascii_case(b"content-length");
        // Not stored (it is recomputed from cache), but a relayed response's
        // own Age must reach the client (RFC 9111 §5.1).
        let age = name.eq_ignore_ascii_case(b"age");
        if is_hop_by_hop(name) || (framing && body != BodyLen::Empty) {
            continue;
        }
        if !(cookie || framing || age || policy.keeps(name))
            || conn_values().any(|v| connection_names(v, name))
        {
            continue;
        }
        h.fields_mut()
            .push((Cow::Borrowed(name), Cow::Borrowed(value)));
    }
    h
}

/// The body length of an origin response as it will be relayed.
pub fn origin_body(has_body: bool, length: Option<u64>) -> BodyLen {
    match (has_body, length) {
        (false, _) => BodyLen::Empty,
        (true, Some(n)) => BodyLen::Known(n),
        (true, None) => BodyLen::Unknown,
    }
}

/// The STON response-header policy, then the rules, on a finished head.
pub fn apply_policy(cx: &RequestCtx<'_>, head: &mut Head<'_>, x: &Extras) {
    header_policy(
        &cx.vhost.options,
        cx.response_rules(),
        cx.now_ms / 1000,
        head,
        x,
    );
}

/// [`apply_policy`] as a pure function of the vhost's options and rule facts.
pub fn header_policy(
    o: &crate::config::Options,
    rules: Option<&super::rules::RuleFacts<'_>>,
    now_s: u64,
    head: &mut Head<'_>,
    x: &Extras,
) {
    if !o.etag_header {
        head.remove(b"etag");
    }
    if !o.server_header {
        head.remove(b"server");
    }
    if !head.has(b"date") {
        // RFC 9110 §6.6.1: a recipient with a clock adds Date when forwarding without one.
        head.push(b"Date", date_value().to_vec());
    }
    if let Some(age) = x.age {
        head.push(b"Age", age.to_string().into_bytes());
    }
    if o.via_header {
        head.push(b"Via", VIA.as_bytes());
    }
    if o.cache_status_header {
        head.push(b"X-Cache", x.result.code().as_bytes());
    }
    if let Some(f) = rules {
        super::rules::apply_response(head, f, x.result.code(), x.ttl_left, now_s);
    }
}

/// Applies the policy to `head` and sends it, noting what went out for the log.
pub async fn send_head<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    mut head: Head<'_>,
    x: &Extras,
) -> Result<(), ExchangeError> {
    if let Some(d) = cx.drm {
        // DRM-2: a source over MaxSourceSize is refused (500) before any byte.
        // A Range response's size is the whole source's (`Content-Range: …/N`).
        let total = head
            .get(b"content-range")
            .and_then(|v| v.rsplit(|&b| b == b'/').next())
            .and_then(crate::http1::headers::parse_content_length)
            .or_else(|| head.content_length());
        if total.is_some_and(|n| n > d.max_source_bytes) {
            cx.shard.stats().drm_refused.fetch_add(1, Relaxed);
            return Err(ExchangeError::Internal("DRM source over MaxSourceSize"));
        }
        cx.shard.stats().drm_responses.fetch_add(1, Relaxed);
        // DRM-7: another representation, another tag.
        if let Some(tag) = head.get(b"etag").map(crate::policy::drm::drm_etag) {
            head.remove(b"etag");
            head.push(b"ETag", tag);
        }
    }
    apply_policy(cx, &mut head, x);
    cx.result.set(x.result);
    cx.sent.set(sent_facts(cx, &head));
    down.send_head(&head)
        .await
        .map_err(|_| ExchangeError::ClientGone)
}

/// What the log line needs of a head (looked up only when the vhost logs).
pub fn sent_facts(cx: &RequestCtx<'_>, head: &Head<'_>) -> Sent {
    if cx.vhost.access_log.is_none() {
        return Sent {
            status: head.status,
            ..Sent::default()
        };
    }
    Sent {
        status: head.status,
        content_length: head.content_length(),
        gzip: head.get(b"content-encoding").is_some_and(|v| {
            crate::http1::headers::tokens(v).any(|t| t.eq_ignore_ascii_case(b"gzip"))
        }),
    }
}

/// Sends one piece of the body. `offset`: where the piece starts in the object
/// (`None` for framing bytes such as multipart part heads, which no transform sees).
pub async fn send_piece<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    offset: Option<u64>,
    piece: Bytes,
) -> Result<(), ClientGone> {
    let piece = match (cx.transform, offset) {
        (Some(t), Some(off)) => t.apply(off, piece),
        _ => piece,
    };
    down.send_body(piece).await
}

/// Hit bodies at least this long go out with sendfile where the connection
/// and the segment allow it. Measured on loopback (docs/benchmarks.md): per
/// server CPU-second, sendfile equals the vectored write at 4 MiB (the
/// kernel's page-frag path costs what the copy does there) and loses 18% at
/// 256 KiB (the head's separate write, the flag toggles and the readiness
/// waits): shorter bodies go with the head's vectored write.
pub const SENDFILE_MIN: usize = 1 << 20;

/// A piece of a hit's body from segment `seg`: by sendfile when it can be
/// ([`SENDFILE_MIN`], no transform, a sendable segment), else as
/// [`send_piece`].
pub async fn send_cached<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    offset: Option<u64>,
    piece: Bytes,
    seg: u32,
) -> Result<(), ClientGone> {
    let piece = if cx.transform.is_none() && piece.len() >= SENDFILE_MIN {
        match cx.shard.shared.cache.file_body(seg, piece) {
            Ok(body) => return down.send_file(body).await,
            Err(piece) => piece,
        }
    } else {
        piece
    };
    send_piece(cx, down, offset, piece).await
}

/// The head and body of a response cairn makes itself (errors): a small HTML page,
/// or nothing (the 404 for an unknown vhost, per spec).
pub fn error_response(status: u16, with_body: bool) -> (Head<'static>, Bytes) {
    let text = reason(status);
    let body = if with_body {
        Bytes::from(format!("<html>\r\n<head><title>{status} {text}</title></head>\r\n<body>\r\n<center><h1>{status} {text}</h1></center>\r\n<hr><center>cairn</center>\r\n</body>\r\n</html>\r\n"))
    } else {
        Bytes::new()
    };
    let mut h = Head::new(status, BodyLen::Known(body.len() as u64));
    h.push(b"Date", date_value().to_vec());
    if with_body {
        h.push(b"Content-Type", &b"text/html"[..]);
    }
    (h, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::response;
    use bytes::BytesMut;

    fn names<'a>(h: &'a Head) -> Vec<&'a [u8]> {
        h.fields().map(|(n, _)| n).collect()
    }

    #[test]
    fn pass_through_heads_drop_hop_by_hop_and_keep_framing_only_without_body() {
        let raw = "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 5\r\nConnection: X-Hop\r\nX-Hop: a\r\nETag: \"e\"\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nX-Custom: 1\r\n\r\n";
        let resp = response::parse(&mut BytesMut::from(raw.as_bytes()), 16384)
            .unwrap()
            .unwrap();
        let all = HeaderPolicy {
            original: true,
            standard_extra: false,
        };
        let h = from_origin(&resp, BodyLen::Unknown, all);
        assert_eq!(
            names(&h),
            [&b"Date"[..], b"ETag", b"Set-Cookie", b"X-Custom"]
        );
        assert_eq!(h.reason, Some(&b"OK"[..]));
        let std_only = HeaderPolicy {
            original: false,
            standard_extra: false,
        };
        let h = from_origin(&resp, BodyLen::Unknown, std_only);
        assert!(
            names(&h).contains(&&b"Set-Cookie"[..]),
            "ORIG-1 never drops cookies"
        );
        assert!(!names(&h).contains(&&b"X-Custom"[..]));
        let raw = "HTTP/1.1 304 Not\x01Modified\r\nContent-Length: 10\r\n\r\n";
        let resp = response::parse(&mut BytesMut::from(raw.as_bytes()), 16384);
        if let Ok(Some(resp)) = resp {
            let h = from_origin(&resp, BodyLen::Empty, all);
            assert_eq!(h.content_length(), Some(10));
            assert_eq!(h.reason, None, "a reason with control bytes is replaced");
        }
        let raw = "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        let resp = response::parse(&mut BytesMut::from(raw.as_bytes()), 16384)
            .unwrap()
            .unwrap();
        assert_eq!(
            from_origin(&resp, BodyLen::Empty, all).content_length(),
            Some(10)
        );
    }

    #[test]
    fn error_shape() {
        let (h, body) = error_response(502, true);
        assert_eq!(h.status, 502);
        assert_eq!(h.body, BodyLen::Known(body.len() as u64));
        assert!(std::str::from_utf8(&body)
            .unwrap()
            .contains("502 Bad Gateway"));
        assert!(h.has(b"date") && h.has(b"content-type"));
        let (h, body) = error_response(404, false);
        assert!(body.is_empty() && h.body == BodyLen::Known(0) && !h.has(b"content-type"));
    }
}
