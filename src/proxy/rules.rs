//! Where the STON rule files meet a live request: header modification of requests
//! (MOD-1, before the origin sees them) and of response heads (MOD-2), and Expires
//! rewriting (EXP-*), applied to the finished head just before it is sent.
//! The rules themselves are pure (`crate::policy`); this module only adapts heads.
//! Nothing here runs unless the vhost turned a feature on and has rules for it.

use crate::cache::freshness::CacheControl;
use crate::config::Vhost;
use crate::http1::RequestHead;
use crate::policy::{
    self, ExpiresFacts, ExpiresOutcome, HeaderIter, HeaderList, MatchCtx, Phase, SessionInfo,
};
use std::net::IpAddr;

/// The per-request facts the rules read.
#[derive(Debug, Clone, Copy)]
pub struct RuleFacts<'a> {
    pub vhost: &'a Vhost,
    pub req: &'a RequestHead,
    pub client_ip: IpAddr,
    pub local_port: u16,
    pub session_id: u64,
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
pub fn request_headers(f: &RuleFacts<'_>) -> HeaderList {
    let mut list: HeaderList = f
        .req
        .headers()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    let lookup = HeaderIter(|| f.req.headers());
    let ctx = f.ctx(&lookup, None);
    let vars = SessionInfo {
        https: false,
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

/// EXP and MOD-2 on a finished response head (status line + header lines + CRLF).
/// `result` is the STON code (#CACHEHIT); `ttl_left` the object's remaining TTL.
pub fn finalize(head: Vec<u8>, f: &RuleFacts<'_>, result: &str, ttl_left: Option<u64>) -> Vec<u8> {
    let mut parsed = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut parsed);
    let Ok(httparse::Status::Complete(_)) = resp.parse(&head) else {
        return head; // we built it; this cannot happen, but never break a response
    };
    let status = resp.code.unwrap_or(200);
    let line_end = head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut list: HeaderList = Vec::with_capacity(resp.headers.len() + 2);
    let mut kept: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for h in resp.headers.iter() {
        let pair = (h.name.as_bytes().to_vec(), h.value.to_vec());
        if protected(h.name.as_bytes()) {
            kept.push(pair);
        } else {
            list.push(pair);
        }
    }
    let lookup = HeaderIter(|| f.req.headers());
    let mime = list
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
        .map(|(_, v)| v.clone());
    let ctx = f.ctx(&lookup, mime.as_deref());
    let o = &f.vhost.options;
    if let Some(base) = o.refresh_expires {
        let get = |name: &[u8]| {
            list.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let cc = get(b"cache-control");
        let facts = ExpiresFacts {
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
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
                    list.push((b"Expires".to_vec(), e.into_bytes()));
                }
                list.push((
                    b"Cache-Control".to_vec(),
                    policy::with_max_age(cc.as_deref(), max_age),
                ));
            }
            Some(ExpiresOutcome::OmitExpires) => {
                list.retain(|(n, _)| !n.eq_ignore_ascii_case(b"expires"))
            }
            None => {}
        }
    }
    if let Some(first_only) = o.modify_header {
        let vars = SessionInfo {
            https: false,
            port: f.local_port,
            cache_hit: result,
            hostname: &f.vhost.name,
            session_id: f.session_id,
        };
        policy::apply(
            &f.vhost.header_rules,
            first_only,
            Phase::Response { status },
            &ctx,
            &vars,
            &mut list,
        );
    }
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(&head[..line_end]);
    for (n, v) in list.iter().chain(kept.iter()) {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
