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
use crate::config::TtlMode;
use crate::exchange::{Downstream, ExchangeError};
use crate::http1::ResponseHead;
use crate::origin::OriginError;
use crate::policy::ttl::Class;
use crate::proxy::request::{now_ms, RequestCtx};
use bytes::Bytes;
use std::time::UNIX_EPOCH;

pub async fn revalidate<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    hit: Hit,
) -> Result<(), ExchangeError> {
    let purged = hit.times.flags & freshness::FLAG_PURGED != 0;
    let extra = validators(&hit, cx.vhost.origin_options.original_etag != Some(false));
    let request_time = now_ms();
    let ston = cx.vhost.options.ttl_mode == TtlMode::Ston;
    // TTL-7: every origin address excluded (ORG-3): the origin is not asked.
    // UnvalidatableObjectResCode 0 keeps the stale copy for OriginBusy
    // seconds; a status code answers with it instead.
    let v = cx.vhost;
    if ston && !purged && super::all_origins_excluded(v) {
        let p = &v.options.ttl;
        if p.unvalidatable_status != 0 {
            return Err(ExchangeError::Unvalidatable(p.unvalidatable_status));
        }
        log::info!(
            "vhost {}: every origin is excluded; serving stale {} for OriginBusy ({} s)",
            v.name,
            String::from_utf8_lossy(cx.head.path()),
            p.origin_busy
        );
        let ms = p.origin_busy.saturating_mul(1000);
        return extend(cx, down, hit, ms, CacheResult::RefFailHit).await;
    }
    let ask = origin_opts(cx, &extra);
    match send_to_origin(cx, &ask).await {
        Ok(reply) if reply.head.status == 304 => {
            let (times, headers) = refreshed(cx.vhost, &hit, &reply.head, request_time, now_ms());
            cx.shard
                .shared
                .cache
                .refresh(cx.key().stored(), hit.loc, times, headers.clone());
            let fresh = Hit {
                times,
                headers,
                ..hit
            };
            send_hit(cx, down, &fresh, CacheResult::RefreshHit, now_ms()).await
        }
        // TTL-7: with TTLExtensionBy4xx/5xx ON such an answer counts as a 304.
        Ok(reply) if ston && !purged && extends(&cx.vhost.options.ttl, reply.head.status) => {
            drop(reply);
            log::info!(
                "vhost {}: origin answered a revalidation of {} with an error; the stale copy is kept (TTLExtensionBy{}xx)",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path()),
                hit.status / 100
            );
            let ttl_ms = ston_refreshed_lifetime(cx.vhost, &hit, &Default::default());
            extend(cx, down, hit, ttl_ms, CacheResult::RefFailHit).await
        }
        Ok(reply) => {
            drop(hit);
            fill_from(cx, down, reply, None, CacheResult::RefMiss, request_time).await
        }
        // TTL-4/TTL-7: a failed origin extends the stale copy by ConnectTimeout
        // or ReceiveTimeout seconds (`<TTL>`'s), or fails the request.
        Err(e) if ston => {
            let p = &cx.vhost.options.ttl;
            if !(p.extension_fail || purged) {
                return Err(e);
            }
            log::info!(
                "vhost {}: serving stale {} after origin failure ({e})",
                cx.vhost.name,
                String::from_utf8_lossy(cx.head.path())
            );
            let secs = match &e {
                ExchangeError::Origin(
                    OriginError::ResponseTimeout(_) | OriginError::HeadTimeout(_),
                ) => p.receive_timeout,
                _ => p.connect_timeout,
            };
            extend(
                cx,
                down,
                hit,
                secs.saturating_mul(1000),
                CacheResult::RefFailHit,
            )
            .await
        }
        Err(e) if hit.times.may_serve_stale() => {
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

/// Does `<TTLExtensionBy4xx/5xx>` keep the stale copy on this answer?
pub(super) fn extends(p: &crate::policy::ttl::TtlPolicy, status: u16) -> bool {
    match status {
        400..=499 => p.extension_4xx,
        500..=599 => p.extension_5xx,
        _ => false,
    }
}

/// Keeps the stale object fresh for `ttl_ms` more, from now, and serves it.
async fn extend<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    hit: Hit,
    ttl_ms: u64,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let now = now_ms();
    let age_ms = hit.times.current_age_ms(now);
    let times = Times {
        lifetime_ms: age_ms.saturating_add(ttl_ms),
        // A purge's refetch did not happen: the copy stays purged.
        ..hit.times
    };
    cx.shard
        .shared
        .cache
        .refresh(cx.key().stored(), hit.loc, times, hit.headers.clone());
    let kept = Hit { times, ..hit };
    send_hit(cx, down, &kept, result, now).await
}

/// The conditional fields that ask the origin whether `hit` changed: none for a
/// purged object (PRG-1: fetched again whole).
/// `etag`: send If-None-Match (unless `<OriginalETag>OFF`).
pub(super) fn validators(hit: &Hit, etag: bool) -> Vec<u8> {
    let mut extra = Vec::new();
    let purged = hit.times.flags & freshness::FLAG_PURGED != 0;
    // A generated ETag means nothing to the origin: ask with the date only. A
    // gzip variant cairn made asks with the origin's tag behind its own.
    let generated = purged || hit.times.flags & freshness::FLAG_GENERATED_ETAG != 0;
    let tag = match hit.times.flags & freshness::FLAG_COMPRESSED != 0 {
        true => super::plan::origin_etag_of_gzip(&hit.etag),
        false => Some(hit.etag.to_vec()),
    };
    if let Some(tag) = tag.filter(|t| etag && !t.is_empty() && !generated) {
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
    extra
}

/// RFC 9111 §4.3.4: the 304's headers replace the stored ones of the same name, and
/// the time facts restart from the 304.
pub(super) fn refreshed(
    vhost: &crate::config::Vhost,
    hit: &Hit,
    r304: &ResponseHead,
    request_time: u64,
    response_time: u64,
) -> (Times, Bytes) {
    let ston = vhost.options.ttl_mode == TtlMode::Ston;
    let policy = vhost.options.headers;
    let new_lines = kept_headers(r304, policy);
    let mut merged = Vec::with_capacity(hit.headers.len() + new_lines.len());
    // cairn's own ETag (generated, or a gzip variant's) is not the origin's to
    // replace: it names the stored bytes.
    // Nor, on a gzip variant cairn made, the fields that describe its encoding.
    let ours = hit.times.flags & freshness::FLAG_GENERATED_ETAG != 0;
    let compressed = hit.times.flags & freshness::FLAG_COMPRESSED != 0;
    // And never what describes the stored bytes themselves: a 304 validates
    // them, it cannot re-encode or re-tag them (the cache tests' list).
    let mine = |name: &[u8]| {
        [
            b"etag".as_slice(),
            b"content-encoding",
            b"content-length",
            b"content-md5",
            b"content-range",
        ]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
            || (ours && name.eq_ignore_ascii_case(b"etag"))
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
    let lifetime_ms = if vhost.options.ttl_mode == TtlMode::Ston {
        ston_refreshed_lifetime(vhost, hit, &facts)
    } else {
        match freshness::storable(
            &ResponseFacts {
                status: hit.status,
                ..facts
            },
            &RequestFacts::default(),
            response_time,
        ) {
            Storable::Yes { lifetime_ms, .. } if has_explicit_freshness(&facts) => lifetime_ms,
            _ => hit.times.lifetime_ms,
        }
    };
    let times = Times {
        request_time_ms: request_time,
        response_time_ms: response_time,
        date_s: facts.date_s.unwrap_or(0),
        age_s: age_of(r304),
        lifetime_ms,
        // RFC 9111: a 304 may tighten the rules (no-cache, must-revalidate); it
        // cannot loosen them. STON: the class decided at fill time stands (a
        // NoCache object's 304 says no-cache again; it must not become
        // always-stale).
        flags: match ston {
            true => hit.times.flags,
            false => hit.times.flags | revalidation_flags(&facts.cc, facts.pragma_no_cache),
        },
    };
    let times = match ston {
        true => Times {
            lifetime_ms: lifetime_ms.saturating_add(times.initial_age_ms()),
            ..times
        },
        false => times,
    };
    (times, Bytes::from(merged))
}

/// TTL-2: the TTL after a 304, from then on. A STON class TTL grows by its
/// Ratio on each 304 (to its Max); a ttl.txt TTL is fixed; an origin-given one
/// follows the 304's own max-age.
pub(super) fn ston_refreshed_lifetime(
    vhost: &crate::config::Vhost,
    hit: &Hit,
    facts: &ResponseFacts,
) -> u64 {
    let p = &vhost.options.ttl;
    let class =
        Class::from_bits((hit.times.flags & freshness::CLASS_MASK) >> freshness::CLASS_SHIFT);
    // The TTL part of the lifetime: STON's TTL counts from arrival.
    let ttl = hit
        .times
        .lifetime_ms
        .saturating_sub(hit.times.initial_age_ms());
    match (class, p.class_ttl(class)) {
        // The base is the TTL as stored, kept within the class's own bounds:
        // an expire (0) or an extension (the whole stale age) must not shrink
        // or inflate what grows.
        (_, Some(c)) => {
            let floor = c.secs.saturating_mul(1000);
            let cap = c.max.saturating_mul(1000).max(floor);
            c.grown_ms(ttl.clamp(floor, cap))
        }
        (Class::Origin, None) => facts.cc.max_age.map_or(ttl, |s| s.saturating_mul(1000)),
        _ => ttl,
    }
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
