//! The cache's phases of a request: cache key → lookup → hit | revalidate | fill
//! (leading or following a coalesced miss). Pure decisions live in
//! `conditional`, `multipart`, `plan` and `cache::freshness`; the other files
//! move bytes between them, the origin and the downstream.

mod background;
mod compress;
mod conditional;
mod fill;
mod follow;
mod hit;
mod multipart;
mod plan;
mod revalidate;

pub use plan::generated_etag;
/// The freshness facts and the Age the cache reads from an origin head (for
/// the fuzz targets).
pub use plan::{age_of as plan_age, response_facts as plan_facts};

use super::request::RequestCtx;
use super::upstream::{self, OriginOpts};
use crate::cache::freshness::{CacheControl, RequestFacts};
use crate::cache::{CacheKey, CacheResult, Variant};
use crate::config::{TtlMode, Vhost};
use crate::exchange::{Downstream, ExchangeError};
use crate::http1::RequestHead;
use crate::origin::exchange::OriginReply;
use std::sync::atomic::Ordering::Relaxed;

/// May this request be answered from (and fill) the cache? GET and HEAD without
/// `Authorization` (RFC 9111 §3.5).
/// Every origin address of the vhost, active and standby, is out of service.
pub(super) fn all_origins_excluded(v: &Vhost) -> bool {
    v.origins
        .iter()
        .chain(&v.standby)
        .all(|o| !o.health.usable())
}

pub fn eligible(req: &RequestHead) -> bool {
    matches!(req.method(), b"GET" | b"HEAD") && req.header("authorization").is_none()
}

/// What of the client's request bears on storing the response (RFC 9111 §3).
fn request_facts(cx: &RequestCtx<'_>) -> RequestFacts {
    let h = cx.head;
    let authorized = h.header("authorization").is_some();
    RequestFacts {
        cc: CacheControl::parse(
            h.headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
                .map(|(_, v)| v),
        ),
        authorized,
        // TTL-5: STON's mode ignores cookies on cached content (warned at load).
        // What the origin is sent counts: a request rule may have removed Cookie.
        personal: cx.vhost.options.ttl_mode == TtlMode::Rfc9111 && (authorized || sends_cookie(cx)),
    }
}

fn sends_cookie(cx: &RequestCtx<'_>) -> bool {
    match &cx.req_headers {
        Some(list) => list.iter().any(|(n, _)| n.eq_ignore_ascii_case(b"cookie")),
        None => cx.head.header("cookie").is_some(),
    }
}

/// The cache key: vhost name and path with query (HEAD shares GET's key), and the
/// variant: with `<AcceptEncoding>ON` (KEY-1) a gzip-capable client and an
/// identity-only client use different objects; when the URL's responses vary
/// (RFC 9111 §4.1), the request's values of their selecting fields.
pub fn key_for(
    cache: &crate::cache::Cache,
    vhost: &Vhost,
    req: &RequestHead,
    sent: Option<&crate::policy::HeaderList<'_>>,
) -> CacheKey {
    let key = coding_key(vhost, req);
    match cache.vary_names(key.stored()) {
        Some(names) => {
            let sig = vary_signature(&names, req, sent);
            key.varied(&names, sig)
        }
        None => key,
    }
}

/// The signature of the fields the origin is sent (after MOD-1 request rules,
/// when they ran): those are what its response varied on.
pub(super) fn vary_signature(
    names: &[Box<[u8]>],
    req: &RequestHead,
    sent: Option<&crate::policy::HeaderList<'_>>,
) -> u64 {
    match sent {
        Some(list) => crate::cache::key::vary_signature(names, || {
            Box::new(list.iter().map(|(n, v)| (&n[..], &v[..])))
        }),
        None => crate::cache::key::vary_signature(names, || Box::new(req.headers())),
    }
}

/// Most `Vary` fields and longest name honoured; a response naming more is
/// not stored (every name goes into the key and is hashed per request).
const MAX_VARY_NAMES: usize = 8;
const MAX_VARY_NAME: usize = 64;

/// The selecting fields a response names that this vhost honours (KEY-4),
/// lower case, sorted, without Accept-Encoding (the coding variants cover
/// it). `None`: `Vary: *`, which no request matches.
pub fn honoured_vary(vhost: &Vhost, reply: &crate::http1::ResponseHead) -> Option<Vec<Box<[u8]>>> {
    let rfc = vhost.options.ttl_mode == TtlMode::Rfc9111;
    let list = &vhost.options.vary_headers;
    let all = rfc || list.iter().any(|n| &**n == b"*");
    if !all && list.is_empty() {
        return Some(Vec::new());
    }
    let mut names: Vec<Box<[u8]>> = Vec::new();
    for (_, v) in reply
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
    {
        for t in crate::http1::headers::tokens(v) {
            if t == b"*" || t.len() > MAX_VARY_NAME {
                return None;
            }
            let lower: Box<[u8]> = t.to_ascii_lowercase().into();
            if &*lower == b"accept-encoding" || !(all || list.contains(&lower)) {
                continue;
            }
            names.push(lower);
        }
    }
    names.sort();
    names.dedup();
    (names.len() <= MAX_VARY_NAMES).then_some(names)
}

/// The URL the key holds (KEY-2, KEY-3): lower case with `<CaseSensitive>OFF`,
/// the query as `<ApplyQueryString>` and querystring.txt say. Borrowed when
/// nothing changes it (the default).
pub fn key_url<'r>(
    o: &crate::config::Options,
    rules: &[crate::policy::querystring::QueryRule],
    target: &'r [u8],
) -> std::borrow::Cow<'r, [u8]> {
    use std::borrow::Cow;
    if o.case_sensitive && o.apply_query && rules.is_empty() {
        return Cow::Borrowed(target);
    }
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    let lowered;
    let (path, query): (&[u8], Cow<'_, [u8]>) = if o.case_sensitive {
        (
            path,
            crate::policy::querystring::key_query(o.apply_query, rules, path, query),
        )
    } else {
        lowered = target.to_ascii_lowercase();
        let (p, q) = lowered.split_at(path.len());
        let q = q.strip_prefix(b"?").unwrap_or(q);
        let q = crate::policy::querystring::key_query(o.apply_query, rules, p, q).into_owned();
        let mut out = p.to_vec();
        if !q.is_empty() {
            out.push(b'?');
            out.extend_from_slice(&q);
        }
        return Cow::Owned(out);
    };
    let mut out = path.to_vec();
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&query);
    }
    Cow::Owned(out)
}

fn coding_key(vhost: &Vhost, req: &RequestHead) -> CacheKey {
    let gzip = vhost.options.accept_encoding
        && accepts_gzip(
            req.headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"accept-encoding"))
                .map(|(_, v)| v),
        );
    let variant = if gzip {
        Variant::Gzip
    } else {
        Variant::Identity
    };
    let url = key_url(&vhost.options, &vhost.query_rules, req.path());
    CacheKey::new(&vhost.name, &url, variant)
}

/// Does the client take gzip (RFC 9110 §12.5.3)? `gzip` or `x-gzip` with a
/// non-zero q-value decides; failing those, `*` does (it stands for codings not
/// listed, so `gzip;q=0, *` is no). Every Accept-Encoding line counts; an
/// element with a malformed q-value is not acceptable.
pub fn accepts_gzip<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    use crate::http1::headers::{tokens, trim};
    let (mut named, mut star) = (None::<bool>, None::<bool>);
    for v in values {
        for t in tokens(v) {
            let mut parts = t.split(|&b| b == b';');
            let coding = trim(parts.next().unwrap_or(b""));
            let mut q_ok = true;
            for p in parts {
                let p = trim(p);
                let name = p.split(|&b| b == b'=').next().map(trim).unwrap_or(b"");
                if name.eq_ignore_ascii_case(b"q") {
                    // `q=` exactly: `q = 0.5` is malformed, so not acceptable.
                    q_ok = p.len() >= 2 && p[1] == b'=' && qvalue_nonzero(&p[2..]);
                }
            }
            if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                // Several mentions: any acceptable one accepts.
                named = Some(named.unwrap_or(false) || q_ok);
            } else if coding == b"*" {
                star = Some(star.unwrap_or(false) || q_ok);
            }
        }
    }
    named.or(star).unwrap_or(false)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`: is it
/// well formed and above zero?
fn qvalue_nonzero(q: &[u8]) -> bool {
    let (int, frac) = match q.iter().position(|&b| b == b'.') {
        Some(i) => (&q[..i], &q[i + 1..]),
        None => (q, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return false;
    }
    match int {
        b"1" => frac.iter().all(|&d| d == b'0'),
        b"0" => frac.iter().any(|&d| d != b'0'),
        _ => false,
    }
}

/// What the client's request says about using a stored response (RFC 9111
/// §5.2.1; STON's TTL-9 for its client no-cache).
#[derive(Debug, Clone, Copy, Default)]
struct ClientWants {
    /// `no-cache`, `max-age=0` or (without Cache-Control) `Pragma: no-cache`.
    no_cache: bool,
    cc: CacheControl,
}

fn client_wants(h: &RequestHead) -> ClientWants {
    let cc = CacheControl::parse(
        h.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
            .map(|(_, v)| v),
    );
    let pragma = cc == CacheControl::default()
        && h.headers().any(|(n, v)| {
            n.eq_ignore_ascii_case(b"pragma")
                && crate::http1::headers::connection_names(v, b"no-cache")
        });
    ClientWants {
        no_cache: cc.no_cache || cc.max_age == Some(0) || pragma,
        cc,
    }
}

/// The hit is inline; revalidation and misses are boxed: they are rarer and
/// their futures large, and inline they would grow every request's allocation.
pub async fn serve<D: Downstream>(cx: &RequestCtx<'_>, down: &mut D) -> Result<(), ExchangeError> {
    let cache = &cx.shard.shared.cache;
    let ston = cx.vhost.options.ttl_mode == TtlMode::Ston;
    let p = &cx.vhost.options.ttl;
    // Read only when the client sent Cache-Control or Pragma: most do not.
    let asks = cx.head.headers().any(|(n, _)| {
        n.eq_ignore_ascii_case(b"cache-control") || n.eq_ignore_ascii_case(b"pragma")
    });
    let wants = if asks {
        client_wants(cx.head)
    } else {
        ClientWants::default()
    };
    // TTL-9: BypassNoCacheRequest sends a client no-cache straight to the origin.
    if ston && wants.no_cache && p.bypass_no_cache_request {
        return Box::pin(super::pass::forward(
            cx,
            down,
            CacheResult::ClientRefreshMiss,
        ))
        .await;
    }
    // Bound first: the key's borrow must end here (a fill may re-key).
    let found = cache.lookup(cx.key().stored());
    if let Some(hit) = found {
        let now = cx.now_ms;
        let t = &hit.times;
        // Revalidation the client asks for: TTL-9's NoCacheRequestExpire in
        // STON mode, the request directives in RFC 9111 mode.
        let client_forces = match ston {
            true => wants.no_cache && p.no_cache_request_expire,
            false => {
                wants.no_cache
                    || wants
                        .cc
                        .max_age
                        .is_some_and(|m| t.current_age_ms(now) > m.saturating_mul(1000))
                    || wants.cc.min_fresh.is_some_and(|m| t.ttl_left_s(now) < m)
            }
        };
        if t.is_fresh(now) && !client_forces {
            cache.stats.hits.fetch_add(1, Relaxed);
            return hit::send_hit(cx, down, &hit, CacheResult::Hit, now).await;
        }
        let purged = t.flags & crate::cache::freshness::FLAG_PURGED != 0;
        // RFC 9111 §4.2.4: a client that accepts staleness (max-stale) gets the
        // stored copy unless the response forbade it.
        let stale_ms = t.current_age_ms(now).saturating_sub(t.lifetime_ms);
        let accepted_stale = !ston
            && !client_forces
            && !purged
            && t.may_serve_stale()
            && wants
                .cc
                .max_stale
                .is_some_and(|m| stale_ms <= m.saturating_mul(1000));
        if accepted_stale {
            cache.stats.hits.fetch_add(1, Relaxed);
            return hit::send_hit(cx, down, &hit, CacheResult::Hit, now).await;
        }
        if !client_forces
            && !purged
            && serves_stale_while_revalidating(cx, &hit, stale_ms)
            && background::start(cx, &hit)
        {
            cache.stats.hits.fetch_add(1, Relaxed);
            return hit::send_hit(cx, down, &hit, CacheResult::Hit, now).await;
        }
        if wants.cc.only_if_cached && !ston {
            return Err(ExchangeError::NotCached);
        }
        // A purged object is fetched again without validators, but kept until
        // then: it is served if the origin fails (PRG-1).
        // TTL-7: with every origin excluded, revalidate() keeps or refuses it
        // without asking, validators or not.
        if purged
            || !hit.etag.is_empty()
            || hit.last_modified_s != 0
            || (ston && all_origins_excluded(cx.vhost))
        {
            return Box::pin(revalidate::revalidate(cx, down, hit)).await;
        }
        // Stale without validators: fetch it again (and release the old lease first).
        drop(hit);
        return Box::pin(fill::miss(cx, down, CacheResult::RefMiss)).await;
    }
    if wants.cc.only_if_cached && !ston {
        return Err(ExchangeError::NotCached);
    }
    // TTL-2: a URL that answered no-store under NoStore Bypass="ON" skips
    // the coalesced fill. Only on a miss: a stored copy still wins, so no
    // one request's answer can send every client of it to the origin.
    if ston
        && p.no_store_bypass
        && cx
            .shard
            .pass_marks
            .borrow_mut()
            .active(cx.key().stored(), cx.now_ms)
    {
        return Box::pin(super::pass::forward(
            cx,
            down,
            CacheResult::ClientRefreshMiss,
        ))
        .await;
    }
    cache.stats.misses.fetch_add(1, Relaxed);
    Box::pin(fill::miss(cx, down, CacheResult::Miss)).await
}

/// May this stale object be served now while it is revalidated behind the
/// client's back? STON: `<RefreshExpired>OFF` (TTL-8), for any stale object
/// but one stored as always-revalidate (NoCache `Expire="ON"`). RFC 9111 mode:
/// the response's `stale-while-revalidate` window (RFC 5861), unless it
/// forbade serving stale.
fn serves_stale_while_revalidating(
    cx: &RequestCtx<'_>,
    hit: &crate::cache::Hit,
    stale_ms: u64,
) -> bool {
    use crate::cache::freshness::FLAG_NO_CACHE;
    if hit.times.flags & FLAG_NO_CACHE != 0 {
        return false;
    }
    if cx.vhost.options.ttl_mode == TtlMode::Ston {
        return !cx.vhost.options.ttl.refresh_expired;
    }
    if !hit.times.may_serve_stale() {
        return false;
    }
    let window = hit
        .headers
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|&b| b == b':')?;
            l[..i]
                .eq_ignore_ascii_case(b"cache-control")
                .then(|| &l[i + 1..])
        })
        .fold(CacheControl::default(), |mut cc, v| {
            cc.add(v.strip_suffix(b"\r").unwrap_or(v));
            cc
        })
        .stale_while_revalidate;
    window.is_some_and(|w| stale_ms <= w.saturating_mul(1000))
}

/// The `Age` a response carries (RFC 9111 §5.1, AGE-1): on a response from
/// cache when `<AgeHeader>` is ON, and always in RFC 9111 mode (§4: a stored
/// response used without validation MUST carry it); on a response just
/// fetched, only when it arrived with an age (the origin's `Age`, or a `Date`
/// in the past), so the origin's `Age` is passed on, not dropped.
pub(super) fn age_to_send(
    o: &crate::config::Options,
    times: &crate::cache::freshness::Times,
    now_ms: u64,
    from_cache: bool,
) -> Option<u64> {
    if !(o.age_header || o.ttl_mode == TtlMode::Rfc9111) {
        return None;
    }
    if !from_cache && times.initial_age_ms() < 1000 {
        return None;
    }
    Some(times.current_age_ms(now_ms) / 1000)
}

/// How a cache request goes to the origin: GET (a HEAD miss fills with GET), no
/// client conditionals or Range, and the variant's encoding.
fn origin_opts<'a>(
    cx: &'a RequestCtx<'_>,
    extra: &[u8],
) -> (Vec<u8>, Option<&'a crate::policy::HeaderList<'a>>) {
    let mut ask = Vec::with_capacity(extra.len() + 24);
    // GZ-4: when cairn makes the gzip variant, the origin is asked for identity.
    if cx.key().variant == Variant::Gzip && compress::makes_gzip(cx).is_none() {
        ask.extend_from_slice(b"Accept-Encoding: gzip\r\n");
    }
    ask.extend_from_slice(extra);
    (ask, cx.req_headers.as_ref())
}

async fn send_to_origin(
    cx: &RequestCtx<'_>,
    ask: &(Vec<u8>, Option<&crate::policy::HeaderList<'_>>),
) -> Result<OriginReply, ExchangeError> {
    let opts = OriginOpts {
        method: Some(b"GET"),
        for_cache: true,
        extra: &ask.0,
        headers: ask.1,
        ..OriginOpts::default()
    };
    upstream::send(cx, &opts, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_decides_the_variant() {
        // (Accept-Encoding lines, gzip variant?)
        let table: &[(&[&[u8]], bool)] = &[
            (&[b"gzip"], true),
            (&[b"gzip, deflate, br"], true),
            (&[b"br;q=1, GZIP;q=0.5"], true),
            (&[b"x-gzip"], true),
            (&[b"*"], true),
            (&[b"gzip;q=0"], false),
            (&[b"gzip;q=0.000"], false),
            (&[b"gzip;q=0.001"], true),
            (&[b"gzip; q=1.0"], true),
            (&[b"deflate, br"], false),
            (&[b""], false),
            (&[], false),
            // `*` stands for what is not listed: gzip refused by name stays refused.
            (&[b"gzip;q=0, *"], false),
            (&[b"*;q=0, gzip"], true),
            (&[b"*;q=0"], false),
            // Malformed q-values are not acceptable.
            (&[b"gzip;q=2"], false),
            (&[b"gzip;q=0.5000"], false),
            (&[b"gzip;q="], false),
            (&[b"gzip;q=1.5"], false),
            (&[b"gzip; q = 0.5"], false),
            (&[b"gzip;q"], false),
            // Every line counts.
            (&[b"br", b"gzip"], true),
            (&[b"gzip;q=0", b"*"], false),
        ];
        for (lines, want) in table {
            assert_eq!(
                accepts_gzip(lines.iter().copied()),
                *want,
                "{:?}",
                lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(l))
                    .collect::<Vec<_>>()
            );
        }
    }
}
