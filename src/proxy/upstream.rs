//! The request sent to the origin: built as a pure function of the client's
//! request, then sent through the vhost's balancer and the shard's pool.

use super::request::RequestCtx;
use crate::config::OriginAddr;
use crate::exchange::ExchangeError;
use crate::http1::headers::{connection_names, is_hop_by_hop};
use crate::http1::RequestHead;
use crate::origin::exchange::{self, OriginReply, OriginRequest};
use bytes::Bytes;
use std::net::IpAddr;

/// True if `name` appears among the tokens of any of the `Connection` values.
fn named_by_connection<'a>(mut conn_values: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> bool {
    conn_values.any(|v| connection_names(v, name))
}

/// How a request is rewritten for the origin beyond the hop-by-hop rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct OriginOpts<'a> {
    /// Send this method instead of the client's (a HEAD miss is filled with GET).
    pub method: Option<&'a [u8]>,
    /// A cache fill: drop the client's conditionals and Range, we need the whole object.
    pub for_cache: bool,
    /// Extra header lines (`Name: value\r\n`), e.g. our own conditionals.
    pub extra: &'a [u8],
    /// The request headers after MOD-1 rules, replacing the client's.
    pub headers: Option<&'a crate::policy::HeaderList<'a>>,
    /// Dropped from a cacheable request: the key does not hold them. Set by
    /// [`send`] from the vhost; what a caller puts here is replaced.
    pub unkeyed: &'a [Box<[u8]>],
    /// `<ForwardedHeaders>ON`: the host and scheme cairn sets itself (set by
    /// [`send`], like `unkeyed`).
    pub forwarded: Option<Forwarded<'a>>,
    /// `<CaseSensitive>OFF` (KEY-2): the path goes out lower case (set by
    /// [`prepare`]).
    pub lower_path: bool,
    /// The path and query to send instead of the client's: a cache fill asks
    /// for the key's URL (KEY-2, KEY-3), so what is stored is what the key
    /// names (set by [`prepare`]).
    pub target: Option<&'a [u8]>,
    /// The Host header instead of the address's (`<Host>`; set by [`send`]).
    pub host: Option<&'a [u8]>,
    /// OriginAffinity / Sticky (ORG-6): a rendezvous key (the client's
    /// address, or its connection) that keeps a bypassed request on one
    /// address whatever the vhost's mode.
    pub pin: Option<u64>,
    /// `Private="ON"` (ORG-6): the client connection (session id) that gets
    /// an origin connection of its own.
    pub private: Option<u64>,
    /// `<XFFClientIPOnly>ON` (set by [`send`]).
    pub xff_client_only: bool,
    /// `<UserAgent>`: sent instead of the client's (set by [`send`]).
    pub user_agent: Option<&'a [u8]>,
}

/// What cairn knows of the client-facing request, for `X-Forwarded-Host` and
/// `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    pub host: &'a str,
    pub proto: &'a str,
}

fn is_forwarded_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"x-forwarded-host")
        || name.eq_ignore_ascii_case(b"x-forwarded-proto")
}

/// Request headers a cache fill must not forward (the fill wants a full 200).
fn is_client_conditional(name: &[u8]) -> bool {
    [
        b"if-none-match".as_slice(),
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        // The fill asks for the cache variant's encoding itself (KEY-1).
        b"accept-encoding",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

/// The request head sent to the origin.
pub fn origin_request(
    req: &RequestHead,
    origin: &OriginAddr,
    client_ip: IpAddr,
    body_len: Option<u64>,
    opts: &OriginOpts,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(opts.method.unwrap_or(req.method()));
    out.push(b' ');
    let path = opts.target.unwrap_or(req.path());
    if path != b"*" {
        out.extend_from_slice(origin.path_prefix.as_bytes());
    }
    let at = out.len();
    out.extend_from_slice(path);
    if opts.lower_path {
        out[at..].make_ascii_lowercase();
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(opts.host.unwrap_or(origin.host_header.as_bytes()));
    out.extend_from_slice(b"\r\n");
    let conn_values = || {
        req.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .map(|(_, v)| v)
    };
    let mut xff: Option<&[u8]> = None;
    let client_ua = req.header("user-agent");
    // MOD-1: request rules may have rewritten the client's headers.
    let rewritten = opts
        .headers
        .map(|l| l.iter().map(|(n, v)| (&n[..], &v[..])));
    let original = opts.headers.is_none().then(|| req.headers());
    for (name, value) in rewritten
        .into_iter()
        .flatten()
        .chain(original.into_iter().flatten())
    {
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"expect")
        {
            continue;
        }
        if opts.for_cache && is_client_conditional(name) {
            continue;
        }
        // (A rewritten list had the client's unkeyed fields removed before the
        // rules ran; what is left there, a rule set.)
        if opts.for_cache
            && opts.headers.is_none()
            && opts
                .unkeyed
                .iter()
                .any(|u| crate::config::same_field_name(u, name))
        {
            continue;
        }
        if opts.forwarded.is_some() && is_forwarded_field(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = Some(value);
            continue;
        }
        // <UserAgent> replaces the client's; a headers.txt rule's value (one
        // the client did not send) wins.
        if opts.user_agent.is_some()
            && name.eq_ignore_ascii_case(b"user-agent")
            && (opts.headers.is_none() || Some(value) == client_ua)
        {
            continue;
        }
        // The rewritten list had the client's Connection-named fields removed
        // before the rules ran, so a field a rule set survives (issue: a client
        // naming `X-Edge-Secret` in Connection must not strip the rule's value).
        if opts.headers.is_none() && named_by_connection(conn_values(), name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = xff.filter(|v| !v.is_empty() && !opts.xff_client_only) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    let ruled_ua = opts.headers.is_some_and(|l| {
        l.iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"user-agent") && Some(&v[..]) != client_ua)
    });
    if let Some(ua) = opts.user_agent.filter(|_| !ruled_ua) {
        out.extend_from_slice(b"User-Agent: ");
        out.extend_from_slice(ua);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = opts.forwarded {
        for (name, value) in [("X-Forwarded-Host", f.host), ("X-Forwarded-Proto", f.proto)] {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(opts.extra);
    match body_len {
        Some(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        None if matches!(req.method(), b"POST" | b"PUT" | b"PATCH") => {
            out.extend_from_slice(b"Content-Length: 0\r\n")
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends a request for this exchange to the vhost's origin, through the
/// balancer: an idempotent request that fails before any response byte tries
/// the next untried address, up to `<Retry>` more (ORG-4).
pub async fn send(
    cx: &RequestCtx<'_>,
    opts: &OriginOpts<'_>,
    body: Option<std::rc::Rc<crate::spool::RequestBody>>,
) -> Result<OriginReply, ExchangeError> {
    let candidates = candidates(cx, opts);
    let retry = cx.vhost.origin_options.retry as usize;
    // Every address excluded (the list is all of them, as a last resort):
    // one try, not a walk through every dead one (N connect timeouts).
    let all_out = candidates.iter().all(|o| !o.health.usable());
    let tries = if all_out {
        1
    } else {
        retry.saturating_add(1).min(candidates.len())
    };
    let mut i = 0;
    loop {
        let origin = candidates[i];
        let oreq = build(cx, opts, origin, body.clone());
        match exchange::send(&cx.shard.upstreams, cx.vhost, origin, &oreq).await {
            Ok(r) => return Ok(r),
            Err(e) if e.before_response() && oreq.idempotent && i + 1 < tries => {
                i += 1;
                log::info!(
                    "vhost {}: origin {}: {e}; retrying on {}",
                    cx.vhost.name,
                    origin,
                    candidates[i]
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The address to ask and the request to send it, for a task that outlives
/// the exchange (a background revalidation): the balancer's first choice.
pub fn prepare<'v>(
    cx: &RequestCtx<'v>,
    opts: &OriginOpts<'_>,
    body: Option<std::rc::Rc<crate::spool::RequestBody>>,
) -> (&'v OriginAddr, OriginRequest) {
    let origin = candidates(cx, opts)[0];
    (origin, build(cx, opts, origin, body))
}

/// The addresses this request may go to, best first (ORG-1, ORG-2).
fn candidates<'v>(cx: &RequestCtx<'v>, opts: &OriginOpts<'_>) -> Vec<&'v OriginAddr> {
    use crate::config::{stable_hash, BalanceMode};
    use crate::origin::balance::{self, Spread};
    let v = cx.vhost;
    let spread = match v.origin_options.balance {
        _ if opts.pin.is_some() => Spread::Rendezvous(opts.pin.unwrap_or_default()),
        BalanceMode::RoundRobin => {
            Spread::Cursor(cx.shard.upstreams.balancers.cursor(&v.name, usize::MAX))
        }
        BalanceMode::Session => {
            Spread::Rendezvous(stable_hash(&[&cx.req.conn.session_id.to_le_bytes()]))
        }
        BalanceMode::Hash => {
            let url = super::cached::key_url(&v.options, &v.query_rules, cx.head.path());
            Spread::Rendezvous(stable_hash(&[v.name.as_bytes(), &url]))
        }
    };
    let route = v.affinity.as_ref().and_then(|a| session_route(cx.head, a));
    let list = balance::order(&v.origins, &v.standby, spread, route);
    if let Some(r) = route.filter(|r| list[0].route.as_deref() != Some(*r)) {
        // Once per exclusion of the route's address: the cookie is the
        // client's, and a line per request would let it flood the log.
        if let Some(o) = v.origins.iter().find(|o| o.route.as_deref() == Some(r)) {
            if o.health.note_failover() {
                log::warn!(
                    "vhost {}: session route {r} is out of service; failing over to {}",
                    v.name,
                    list[0]
                );
            }
        }
    }
    list
}

/// The route suffix of the affinity cookie (`JSESSIONID=ABC.tomcat1` →
/// `tomcat1`), Tomcat's `jvmRoute` convention.
fn session_route<'h>(head: &'h RequestHead, a: &crate::config::Affinity) -> Option<&'h str> {
    let value = head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
        .flat_map(|(_, v)| v.split(|&b| b == b';'))
        .find_map(|c| {
            let c = crate::http1::headers::trim(c);
            let (n, v) = c.split_at(c.iter().position(|&b| b == b'=')?);
            (n == a.cookie.as_bytes()).then(|| &v[1..])
        })?;
    let value = std::str::from_utf8(value).ok()?;
    let (_, route) = value.rsplit_once(a.separator)?;
    (!route.is_empty()).then_some(route)
}

/// The request for `origin`: its Host and path prefix differ per address.
fn build(
    cx: &RequestCtx<'_>,
    opts: &OriginOpts<'_>,
    origin: &OriginAddr,
    body: Option<std::rc::Rc<crate::spool::RequestBody>>,
) -> OriginRequest {
    let o = &cx.vhost.options;
    let opts = &OriginOpts {
        unkeyed: &o.unkeyed,
        forwarded: o.forwarded_headers.then_some(Forwarded {
            host: &cx.vhost.name,
            proto: if cx.req.conn.tls.is_some() {
                "https"
            } else {
                "http"
            },
        }),
        lower_path: !o.case_sensitive,
        ..*opts
    };
    // A fill asks for exactly the URL the key holds: the querystring.txt
    // parameters, the case, nothing the key left out (which would let one
    // client's extra parameters decide what every other client is served).
    let key_target = opts
        .for_cache
        .then(|| super::cached::key_url(o, &cx.vhost.query_rules, cx.head.path()));
    let host = match &cx.vhost.origin_options.host {
        None => None,
        Some(crate::config::OriginHost::Fixed(h)) => Some(h.as_bytes()),
        // The key does not hold the Host: a fill shared by everyone may only
        // carry a name the vhost answers to by name (not a default vhost's
        // or a wildcard alias's any-name), or what a client made up would be
        // stored for all. Without a usable one, the address's own Host.
        Some(crate::config::OriginHost::Client) => cx.head.host().filter(|h| {
            !opts.for_cache || {
                let name = h.iter().rposition(|&b| b == b':').map_or(*h, |i| &h[..i]);
                name.eq_ignore_ascii_case(cx.vhost.name.as_bytes())
                    || cx
                        .vhost
                        .aliases
                        .iter()
                        .any(|a| !a.starts_with('*') && name.eq_ignore_ascii_case(a.as_bytes()))
            }
        }),
    };
    let oo = &cx.vhost.origin_options;
    let opts = &OriginOpts {
        target: key_target.as_deref(),
        lower_path: opts.lower_path && key_target.is_none(),
        host,
        xff_client_only: oo.xff_client_ip_only,
        user_agent: oo.user_agent.as_deref().map(str::as_bytes),
        ..*opts
    };
    cx.origin.set(Some(origin.addr));
    let head = origin_request(
        cx.head,
        origin,
        cx.req.conn.peer.ip(),
        body.as_ref().map(|b| b.len()),
        opts,
    );
    OriginRequest {
        private: opts.private,
        head: Bytes::from(head),
        body,
        idempotent: opts.for_cache || cx.head.is_idempotent(),
        head_method: opts.method.unwrap_or(cx.head.method()) == b"HEAD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::request;
    use bytes::BytesMut;

    fn req(s: &str) -> RequestHead {
        request::parse(&mut BytesMut::from(s.as_bytes()), &Default::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn origin_request_rewrites_hop_by_hop() {
        let o = OriginAddr::parse(
            "10.0.0.1:8080/base",
            "www.test",
            crate::config::OriginProtocol::Http,
        )
        .unwrap();
        let r = req("POST /p?q=1 HTTP/1.1\r\nHost: www.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: */*\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
        let out = String::from_utf8(origin_request(
            &r,
            &o,
            "10.9.9.9".parse().unwrap(),
            Some(3),
            &OriginOpts::default(),
        ))
        .unwrap();
        assert_eq!(
            out,
            "POST /base/p?q=1 HTTP/1.1\r\nHost: www.test:8080\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1, 10.9.9.9\r\nContent-Length: 3\r\n\r\n"
        );
        let g = req("GET / HTTP/1.0\r\n\r\n");
        let out = String::from_utf8(origin_request(
            &g,
            &o,
            "::1".parse().unwrap(),
            None,
            &OriginOpts::default(),
        ))
        .unwrap();
        assert_eq!(
            out,
            "GET /base/ HTTP/1.1\r\nHost: www.test:8080\r\nX-Forwarded-For: ::1\r\n\r\n"
        );
        // <Host> and a fill's key URL replace the address's Host and the path.
        let out = String::from_utf8(origin_request(
            &g,
            &o,
            "::1".parse().unwrap(),
            None,
            &OriginOpts {
                host: Some(b"origin.internal"),
                target: Some(b"/k?a=1"),
                ..OriginOpts::default()
            },
        ))
        .unwrap();
        assert!(
            out.starts_with("GET /base/k?a=1 HTTP/1.1\r\nHost: origin.internal\r\n"),
            "{out}"
        );
    }

    #[test]
    fn cacheable_requests_drop_unkeyed_headers_and_carry_our_own() {
        let o =
            OriginAddr::parse("10.0.0.1", "www.test", crate::config::OriginProtocol::Http).unwrap();
        let r = req("GET /p HTTP/1.1\r\nHost: www.test\r\nX-Forwarded-Host: evil.example\r\nx-http-method-override: DELETE\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n");
        let unkeyed = crate::config::Options::default().unkeyed;
        let ip = "10.9.9.9".parse().unwrap();
        let send =
            |opts: &OriginOpts| String::from_utf8(origin_request(&r, &o, ip, None, opts)).unwrap();
        // A cacheable request: the unkeyed fields are gone.
        let cached = OriginOpts {
            for_cache: true,
            unkeyed: &unkeyed,
            ..OriginOpts::default()
        };
        assert_eq!(
            send(&cached),
            "GET /p HTTP/1.1\r\nHost: www.test\r\nAccept: */*\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
        );
        // Pass-through is not stored: the client's fields reach the origin.
        let pass = OriginOpts {
            unkeyed: &unkeyed,
            ..OriginOpts::default()
        };
        assert!(send(&pass).contains("X-Forwarded-Host: evil.example\r\n"));
        // ForwardedHeaders ON: ours replace the client's, on every request.
        let fwd = Some(Forwarded {
            host: "www.test",
            proto: "http",
        });
        for opts in [
            OriginOpts {
                forwarded: fwd,
                ..cached
            },
            OriginOpts {
                forwarded: fwd,
                ..pass
            },
        ] {
            let out = send(&opts);
            assert!(
                !out.contains("evil.example") && !out.contains("https"),
                "{out}"
            );
            assert!(
                out.ends_with("X-Forwarded-Host: www.test\r\nX-Forwarded-Proto: http\r\n\r\n"),
                "{out}"
            );
        }
    }
}
