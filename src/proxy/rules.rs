//! Where the STON rule files meet a live request: header modification of requests
//! (MOD-1, before the origin sees them) and of response heads (MOD-2), and Expires
//! rewriting (EXP-*), applied to the finished head just before it is sent.
//! The rules themselves are pure (`crate::policy`); this module only adapts heads.
//! Nothing here runs unless the vhost turned a feature on and has rules for it.

use crate::cache::freshness::CacheControl;
use crate::config::Vhost;
use crate::exchange::Head;
use crate::http1::RequestHead;
use crate::policy::{
    self, ExpiresFacts, ExpiresOutcome, HeaderIter, HeaderList, MatchCtx, Phase, SessionInfo,
};
use std::borrow::Cow;
use std::net::IpAddr;

/// `f` with the facts a rule file's request conditions read (no MIME type,
/// no GeoIP): for the rule files read outside the MOD/EXP phases (ttl.txt,
/// bypass.txt).
pub fn with_request_ctx<R>(
    head: &RequestHead,
    client_ip: IpAddr,
    f: impl FnOnce(&MatchCtx<'_>) -> R,
) -> R {
    let headers = policy::HeaderIter(|| head.headers());
    f(&MatchCtx {
        client_ip,
        method: head.method(),
        url: head.path(),
        headers: &headers,
        mime: None,
        geo: None,
    })
}

/// The per-request facts the rules read.
#[derive(Debug, Clone, Copy)]
pub struct RuleFacts<'a> {
    pub vhost: &'a Vhost,
    pub req: &'a RequestHead,
    pub client_ip: IpAddr,
    pub local_port: u16,
    pub session_id: u64,
    /// The request came over TLS (`#PROTOCOL` is `https`).
    pub https: bool,
    /// When the request arrived, unix seconds.
    pub request_time_s: u64,
    pub geo: Option<&'a dyn policy::GeoLookup>,
}

impl std::fmt::Debug for dyn policy::GeoLookup + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GeoLookup")
    }
}

impl RuleFacts<'_> {
    fn ctx<'a>(
        &'a self,
        headers: &'a dyn policy::HeaderLookup,
        mime: Option<&'a [u8]>,
    ) -> MatchCtx<'a> {
        MatchCtx {
            client_ip: self.client_ip,
            method: self.req.method(),
            url: self.req.path(),
            headers,
            mime,
            geo: self.geo,
        }
    }
}

/// MOD-1: the request's headers after the request rules, for the origin request.
pub fn request_headers<'a>(f: &RuleFacts<'a>) -> HeaderList<'a> {
    // Hop-by-hop fields the client's Connection names go first, before any rule
    // runs: what a rule sets must reach the origin whatever the client listed.
    let named = |name: &[u8]| {
        f.req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .any(|(_, v)| crate::http1::headers::connection_names(v, name))
    };
    // So are the unkeyed fields of a cacheable request (they never reach the
    // origin): a value a rule sets for them is the operator's, and is forwarded.
    let cacheable = super::cached::eligible(f.req);
    let unkeyed = |name: &[u8]| cacheable && f.vhost.options.is_unkeyed(name);
    let mut list: HeaderList = f
        .req
        .headers()
        .filter(|(n, _)| !named(n) && !unkeyed(n))
        .map(|(n, v)| (Cow::Borrowed(n), Cow::Borrowed(v)))
        .collect();
    let lookup = HeaderIter(|| f.req.headers());
    let ctx = f.ctx(&lookup, None);
    let vars = SessionInfo {
        https: f.https,
        port: f.local_port,
        cache_hit: "",
        hostname: &f.vhost.name,
        session_id: f.session_id,
    };
    let first_only = f.vhost.options.modify_header.unwrap_or(false);
    policy::apply(
        &f.vhost.header_rules,
        first_only,
        Phase::Request,
        &ctx,
        &vars,
        &mut list,
    );
    list
}

/// Headers the rules never see or touch: framing and connection management.
fn protected(name: &[u8]) -> bool {
    [
        b"content-length".as_slice(),
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
    ]
    .iter()
    .any(|p| p.eq_ignore_ascii_case(name))
}

/// EXP and MOD-2 on a response head. `result` is the STON code (#CACHEHIT);
/// `ttl_left` the object's remaining TTL; `now_s` the request's clock reading.
pub fn apply_response<'h>(
    head: &mut Head<'h>,
    f: &RuleFacts<'_>,
    result: &str,
    ttl_left: Option<u64>,
    now_s: u64,
) {
    let status = head.status;
    let o = &f.vhost.options;
    let mime: Option<Vec<u8>> = head.get(b"content-type").map(<[u8]>::to_vec);
    let lookup = HeaderIter(|| f.req.headers());
    let ctx = f.ctx(&lookup, mime.as_deref());
    // Each rule's condition is evaluated once; most responses match none.
    let phase = Phase::Response { status };
    let mut matched: Vec<usize> = Vec::new();
    if let Some(first_only) = o.modify_header {
        for (i, r) in f.vhost.header_rules.iter().enumerate() {
            if r.matches(phase, &ctx) {
                matched.push(i);
                if first_only {
                    break;
                }
            }
        }
    }
    if matched.is_empty() && o.refresh_expires.is_none() {
        return;
    }
    // Framing and connection fields are cairn's: the rules neither see nor touch them.
    let (kept, mut list): (HeaderList<'h>, HeaderList<'h>) = std::mem::take(head.fields_mut())
        .into_iter()
        .partition(|(n, _)| protected(n));
    if let Some(base) = o.refresh_expires {
        let get = |name: &[u8]| {
            list.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_vec())
        };
        let cc = get(b"cache-control");
        let facts = ExpiresFacts {
            now: now_s,
            request_time: f.request_time_s,
            last_modified: get(b"last-modified")
                .and_then(|v| crate::httpdate::parse(&v))
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            origin_max_age: cc
                .as_deref()
                .and_then(|v| CacheControl::parse(std::iter::once(v)).max_age),
            ttl_left,
        };
        match policy::expires::decide(&f.vhost.expires_rules, base, &ctx, &facts) {
            Some(out @ ExpiresOutcome::Refresh { max_age, .. }) => {
                list.retain(|(n, _)| {
                    !n.eq_ignore_ascii_case(b"expires") && !n.eq_ignore_ascii_case(b"cache-control")
                });
                if let Some(e) = out.expires_header() {
                    list.push((Cow::Borrowed(b"Expires"), Cow::Owned(e.into_bytes())));
                }
                list.push((
                    Cow::Borrowed(b"Cache-Control"),
                    Cow::Owned(policy::with_max_age(cc.as_deref(), max_age)),
                ));
            }
            Some(ExpiresOutcome::OmitExpires) => {
                list.retain(|(n, _)| !n.eq_ignore_ascii_case(b"expires"))
            }
            None => {}
        }
    }
    if !matched.is_empty() {
        let vars = SessionInfo {
            https: f.https,
            port: f.local_port,
            cache_hit: result,
            hostname: &f.vhost.name,
            session_id: f.session_id,
        };
        policy::modify::apply_matched(&f.vhost.header_rules, &matched, &ctx, &vars, &mut list);
        // No rule may add a second set of framing or connection fields.
        list.retain(|(n, _)| !protected(n));
    }
    list.extend(kept);
    *head.fields_mut() = list;
}
