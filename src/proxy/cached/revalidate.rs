//! A stale object with validators: ask the origin whether it changed. 304
//! refreshes it (RFC 9111 §4.3.4), 200 replaces it, a failure serves it stale
//! where that is allowed.

use super::fill::fill_from;
use super::hit::send_hit;
use super::plan::{age_of, response_facts};
use super::{origin_opts, send_to_origin};
use crate::cache::freshness::{self, CacheControl, RequestFacts, ResponseFacts, Storable, Times};
use crate::cache::meta::kept_headers;
use crate::cache::{CacheResult, Hit};
use crate::exchange::{Downstream, ExchangeError};
use crate::http1::ResponseHead;
use crate::proxy::request::{now_ms, RequestCtx};
use bytes::Bytes;
use std::time::UNIX_EPOCH;

pub async fn revalidate<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    hit: Hit,
) -> Result<(), ExchangeError> {
    let mut extra = Vec::new();
    // A generated ETag means nothing to the origin: ask with the date only. A
    // gzip variant cairn made asks with the origin's tag behind its own.
    let purged = hit.times.flags & freshness::FLAG_PURGED != 0;
    let generated = purged || hit.times.flags & freshness::FLAG_GENERATED_ETAG != 0;
    let tag = match hit.times.flags & freshness::FLAG_COMPRESSED != 0 {
        true => super::plan::origin_etag_of_gzip(&hit.etag),
        false => Some(hit.etag.to_vec()),
    };
    if let Some(tag) = tag.filter(|t| !t.is_empty() && !generated) {
        extra.extend_from_slice(b"If-None-Match: ");
        extra.extend_from_slice(&tag);
        extra.extend_from_slice(b"\r\n");
    }
    if hit.last_modified_s != 0 && !purged {
        extra.extend_from_slice(b"If-Modified-Since: ");
        let lm = UNIX_EPOCH + std::time::Duration::from_secs(hit.last_modified_s);
        extra.extend_from_slice(crate::httpdate::format(lm).as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    let request_time = now_ms();
    let ask = origin_opts(cx, &extra);
    match send_to_origin(cx, &ask).await {
        Ok(reply) if reply.head.status == 304 => {
            let (times, headers) = refreshed(cx, &hit, &reply.head, request_time, now_ms());
            cx.shard
                .shared
                .cache
                .refresh(cx.key.stored(), hit.loc, times, headers.clone());
            let fresh = Hit {
                times,
                headers,
                ..hit
            };
            send_hit(cx, down, &fresh, CacheResult::RefreshHit, now_ms()).await
        }
        Ok(reply) => {
            drop(hit);
            fill_from(cx, down, reply, None, CacheResult::RefMiss, request_time).await
        }
        Err(e) if purged || hit.times.may_serve_stale() => {
            log::info!(
                "vhost {}: serving stale {} after origin failure ({e})",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path())
            );
            send_hit(cx, down, &hit, CacheResult::RefFailHit, now_ms()).await
        }
        Err(e) => Err(e),
    }
}

/// RFC 9111 §4.3.4: the 304's headers replace the stored ones of the same name, and
/// the time facts restart from the 304.
fn refreshed(
    cx: &RequestCtx<'_>,
    hit: &Hit,
    r304: &ResponseHead,
    request_time: u64,
    response_time: u64,
) -> (Times, Bytes) {
    let policy = cx.vhost.options.headers;
    let new_lines = kept_headers(r304, policy);
    let mut merged = Vec::with_capacity(hit.headers.len() + new_lines.len());
    // cairn's own ETag (generated, or a gzip variant's) is not the origin's to
    // replace: it names the stored bytes.
    // Nor, on a gzip variant cairn made, the fields that describe its encoding.
    let ours = hit.times.flags & freshness::FLAG_GENERATED_ETAG != 0;
    let compressed = hit.times.flags & freshness::FLAG_COMPRESSED != 0;
    let mine = |name: &[u8]| {
        (ours && name.eq_ignore_ascii_case(b"etag"))
            || (compressed && super::plan::gzip_variant_field(name))
    };
    let replaced = |name: &[u8]| {
        !mine(name)
            && r304
                .headers()
                .any(|(n, _)| n.eq_ignore_ascii_case(name) && policy.keeps(n))
    };
    for line in hit.headers.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        if !replaced(name) {
            merged.extend_from_slice(line);
        }
    }
    for line in new_lines.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        if !mine(name) {
            merged.extend_from_slice(line);
        }
    }
    let facts = response_facts(r304);
    let lifetime_ms = match freshness::storable(
        &ResponseFacts {
            status: hit.status,
            ..facts
        },
        &RequestFacts::default(),
        &cx.vhost.options.ttl,
        response_time,
    ) {
        Storable::Yes { lifetime_ms, .. } if has_explicit_freshness(&facts) => lifetime_ms,
        _ => hit.times.lifetime_ms,
    };
    let times = Times {
        request_time_ms: request_time,
        response_time_ms: response_time,
        date_s: facts.date_s.unwrap_or(response_time / 1000),
        age_s: age_of(r304),
        lifetime_ms,
        // A 304 may tighten the rules (no-cache, must-revalidate); it cannot loosen them.
        flags: hit.times.flags | revalidation_flags(&facts.cc, facts.pragma_no_cache),
    };
    (times, Bytes::from(merged))
}

fn revalidation_flags(cc: &CacheControl, pragma_no_cache: bool) -> u16 {
    let mut f = 0;
    if cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() {
        f |= freshness::FLAG_MUST_REVALIDATE;
    }
    if cc.no_cache || (pragma_no_cache && *cc == CacheControl::default()) {
        f |= freshness::FLAG_NO_CACHE;
    }
    f
}

fn has_explicit_freshness(f: &ResponseFacts) -> bool {
    f.cc.max_age.is_some() || f.cc.s_maxage.is_some() || f.expires_s.is_some()
}
