//! RFC 9111 core as pure functions: may a response be stored, for how long is it
//! fresh, how old is it now. Time is passed in (milliseconds since the epoch), so
//! every rule is tested without a clock.

use crate::http1::headers::{ends_in_quote, list_items, tokens, trim};

/// The directives of `Cache-Control` cairn acts on (RFC 9111 §5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// Request directives (§5.2.1): `max-stale` without a value is `u64::MAX`.
    pub min_fresh: Option<u64>,
    pub max_stale: Option<u64>,
    pub only_if_cached: bool,
    /// RFC 5861: a stale response may be served this long past its lifetime
    /// while one revalidation runs in the background.
    pub stale_while_revalidate: Option<u64>,
}

impl CacheControl {
    /// Merges one `Cache-Control` header value into `self` (a message may carry several).
    pub fn add(&mut self, value: &[u8]) {
        // A quoted string that never closes hides what follows it (a `no-store`,
        // say): fail closed.
        if ends_in_quote(value) {
            self.no_store = true;
        }
        // Quote-aware: `no-cache="x, max-age=9"` has no max-age directive.
        for t in list_items(value) {
            let (name, arg) = match t.iter().position(|&b| b == b'=') {
                Some(i) => (trim(&t[..i]), Some(trim(&t[i + 1..]))),
                None => (t, None),
            };
            let secs = || {
                let a = arg?;
                let a = a
                    .strip_prefix(b"\"")
                    .and_then(|a| a.strip_suffix(b"\""))
                    .unwrap_or(a);
                if a.is_empty() || !a.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                // RFC 9111 §1.2.2: overflow means "infinity", capped at 2^31.
                Some(
                    std::str::from_utf8(a)
                        .ok()?
                        .parse::<u64>()
                        .unwrap_or(u64::MAX)
                        .min(1 << 31),
                )
            };
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("no-store") {
                self.no_store = true;
            } else if is("no-cache") {
                // `no-cache="Set-Cookie"` (qualified) only forbids sending those
                // fields unrevalidated. cairn never stores Set-Cookie; any other
                // named field it does not strip, so it revalidates the whole response.
                self.no_cache |= arg.is_none_or(|a| !only_set_cookie(a));
            } else if is("private") {
                // Qualified (`private="X-User"`): a shared cache must not store those
                // fields (RFC 9111 §5.2.2.7). cairn does not strip them: it stores
                // nothing, the safe reading.
                self.private = true;
            } else if is("public") {
                self.public = true;
            } else if is("must-revalidate") {
                self.must_revalidate = true;
            } else if is("proxy-revalidate") {
                self.proxy_revalidate = true;
            } else if is("max-age") {
                // A malformed max-age makes the response stale (RFC 9111 §4.2.1).
                self.max_age = Some(secs().unwrap_or(0));
            } else if is("s-maxage") {
                self.s_maxage = Some(secs().unwrap_or(0));
            } else if is("min-fresh") {
                // Malformed: the strictest reading (never fresh enough).
                self.min_fresh = Some(secs().unwrap_or(u64::MAX));
            } else if is("max-stale") {
                // Without a value any staleness is accepted; malformed accepts none.
                self.max_stale = Some(match arg {
                    None => u64::MAX,
                    Some(_) => secs().unwrap_or(0),
                });
            } else if is("only-if-cached") {
                self.only_if_cached = true;
            } else if is("stale-while-revalidate") {
                self.stale_while_revalidate = secs();
            }
        }
    }

    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> CacheControl {
        let mut cc = CacheControl::default();
        for v in values {
            cc.add(v);
        }
        cc
    }
}

/// Does the quoted field list of a qualified directive name only Set-Cookie?
fn only_set_cookie(arg: &[u8]) -> bool {
    let inner = arg
        .strip_prefix(b"\"")
        .and_then(|a| a.strip_suffix(b"\""))
        .unwrap_or(arg);
    let mut names = tokens(inner).peekable();
    names.peek().is_some()
        && names.all(|n| {
            n.eq_ignore_ascii_case(b"set-cookie") || n.eq_ignore_ascii_case(b"set-cookie2")
        })
}

/// The longest heuristic lifetime (RFC 9111 §4.2.2 leaves the cap to the
/// cache; a day, as Traffic Server's default).
pub const MAX_HEURISTIC_S: u64 = 86_400;

/// Statuses a cache understands and may store with explicit freshness.
fn understood(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 302 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses that are heuristically cacheable (RFC 9110 §15.1), less 206: cairn
/// stores whole objects only.
fn heuristic(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

pub const FLAG_MUST_REVALIDATE: u16 = 1;
pub const FLAG_NO_CACHE: u16 = 2;
/// The stored ETag was generated by cairn (ETAG-1), not sent by the origin.
pub const FLAG_GENERATED_ETAG: u16 = 4;
/// cairn compressed the body (a gzip variant it made, GZ-3).
pub const FLAG_COMPRESSED: u16 = 8;
/// Purged (PRG-1): fetch again without validators; serve this copy only if the
/// origin fails. Set in the index only, never stored.
pub const FLAG_PURGED: u16 = 16;
/// Bits 8..12: the STON TTL class that decided the lifetime (`policy::ttl::Class`).
pub const CLASS_SHIFT: u16 = 8;
pub const CLASS_MASK: u16 = 0xf << CLASS_SHIFT;

/// What the response facts say about storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storable {
    /// Store, fresh for `lifetime_ms` from its age zero; `flags` as above.
    Yes {
        lifetime_ms: u64,
        flags: u16,
    },
    No(&'static str),
}

/// The facts of a response relevant to storing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseFacts {
    pub status: u16,
    pub cc: CacheControl,
    pub pragma_no_cache: bool,
    /// `Expires` as seconds since the epoch; `Some(0)` for an invalid value (already expired).
    pub expires_s: Option<u64>,
    pub date_s: Option<u64>,
    /// `Last-Modified` as seconds since the epoch (for heuristic freshness).
    pub last_modified_s: Option<u64>,
    pub has_set_cookie: bool,
}

/// What of the request bears on storing its response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    pub cc: CacheControl,
    /// The request carried `Authorization` (§3.5).
    pub authorized: bool,
    /// The response may be personal (the request carried `Cookie` or
    /// `Authorization`, and the vhost is in RFC 9111 mode): no heuristic
    /// freshness unless the response says `public` (or gives explicit freshness).
    pub personal: bool,
}

/// RFC 9111 §3 (may we store) and §4.2 (freshness lifetime): explicit
/// freshness, else heuristic freshness of 10% of the time since Last-Modified
/// (§4.2.2) for heuristically cacheable statuses, capped at a day.
pub fn storable(f: &ResponseFacts, req: &RequestFacts, response_time_ms: u64) -> Storable {
    let request_cc = &req.cc;
    let cc = &f.cc;
    if request_cc.no_store || cc.no_store {
        return Storable::No("no-store");
    }
    if cc.private {
        return Storable::No("private");
    }
    if req.authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Storable::No("request carried Authorization");
    }
    if !understood(f.status) {
        return Storable::No("status not cacheable");
    }
    let mut flags = 0;
    if cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() {
        flags |= FLAG_MUST_REVALIDATE;
    }
    // `Pragma: no-cache` counts only without Cache-Control (RFC 9111 §5.4).
    let no_cache = cc.no_cache || (f.pragma_no_cache && *cc == CacheControl::default());
    if no_cache {
        // Stored, but every use must be revalidated first (§5.2.2.4).
        return Storable::Yes {
            lifetime_ms: 0,
            flags: flags | FLAG_NO_CACHE,
        };
    }
    let explicit_s = cc.s_maxage.or(cc.max_age).or_else(|| {
        f.expires_s.map(|e| {
            let base = f.date_s.unwrap_or(response_time_ms / 1000);
            e.saturating_sub(base)
        })
    });
    let lifetime_s = match explicit_s {
        Some(s) => s,
        None if req.personal && !cc.public => {
            return Storable::No("heuristic freshness on a request with Cookie or Authorization")
        }
        None if heuristic(f.status) => {
            let date = f.date_s.unwrap_or(response_time_ms / 1000);
            match f.last_modified_s.filter(|&lm| lm < date) {
                Some(lm) => ((date - lm) / 10).min(MAX_HEURISTIC_S),
                None => {
                    return Storable::No("no explicit freshness and no Last-Modified to guess from")
                }
            }
        }
        None => return Storable::No("no explicit freshness and not heuristically cacheable"),
    };
    Storable::Yes {
        lifetime_ms: lifetime_s.saturating_mul(1000),
        flags,
    }
}

/// The time facts of a stored response (RFC 9111 §4.2.3), all in milliseconds
/// except where named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    pub request_time_ms: u64,
    pub response_time_ms: u64,
    pub date_s: u64,
    pub age_s: u64,
    pub lifetime_ms: u64,
    pub flags: u16,
}

impl Times {
    /// `current_age` of §4.2.3.
    pub fn current_age_ms(&self, now_ms: u64) -> u64 {
        // Date has whole seconds: compared in whole seconds, so a response
        // in the second its Date names is not up to 999 ms old already.
        let apparent = match self.date_s {
            0 => 0,
            d => (self.response_time_ms / 1000)
                .saturating_sub(d)
                .saturating_mul(1000),
        };
        let delay = self.response_time_ms.saturating_sub(self.request_time_ms);
        let corrected_age = self.age_s.saturating_mul(1000).saturating_add(delay);
        let initial = apparent.max(corrected_age);
        initial.saturating_add(now_ms.saturating_sub(self.response_time_ms))
    }

    /// The age it had when it arrived (`corrected_initial_age`).
    pub fn initial_age_ms(&self) -> u64 {
        self.current_age_ms(self.response_time_ms)
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        self.flags & FLAG_NO_CACHE == 0 && self.lifetime_ms > self.current_age_ms(now_ms)
    }

    /// May a stale copy be served when the origin fails (TCP_REF_FAIL_HIT)?
    pub fn may_serve_stale(&self) -> bool {
        // RFC 9111 §4.2.4: never with must-revalidate (or s-maxage), nor with no-cache.
        self.flags & (FLAG_MUST_REVALIDATE | FLAG_NO_CACHE) == 0
    }

    /// Seconds of freshness left (0 when stale).
    pub fn ttl_left_s(&self, now_ms: u64) -> u64 {
        self.lifetime_ms.saturating_sub(self.current_age_ms(now_ms)) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &str) -> CacheControl {
        CacheControl::parse(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn cache_control_parsing_honours_quoted_strings() {
        let c = cc(r#"no-cache="x, max-age=9999, y", private="a,b", max-age=5"#);
        assert_eq!(c.max_age, Some(5));
        assert!(c.no_cache && c.private, "qualified forms fail closed");
        assert!(!cc(r#"no-cache="Set-Cookie, set-cookie2""#).no_cache);
        assert!(cc(r#"no-cache="Set-Cookie, X-Auth""#).no_cache);
        assert!(cc(r#"no-cache="""#).no_cache);
        assert!(cc(r#"private="X-User", max-age=60"#).private);
        // An unclosed quote hides the no-store after it: not stored at all.
        assert!(cc(r#"no-cache="x, no-store"#).no_store);
        assert!(!cc(r#"no-cache="x", max-age=5"#).no_store);
        let c = cc(r#"no-cache="x, s-maxage=60""#);
        assert_eq!(c.s_maxage, None);
        let items: Vec<&[u8]> =
            crate::http1::headers::list_items(br#" a, b="1,\"2", ,c "#).collect();
        assert_eq!(items, vec![&b"a"[..], br#"b="1,\"2""#, b"c"]);
    }

    #[test]
    fn cache_control_parsing() {
        let c = cc("public, max-age=60, s-maxage=\"120\", must-revalidate");
        assert_eq!(
            (c.public, c.max_age, c.s_maxage, c.must_revalidate),
            (true, Some(60), Some(120), true)
        );
        assert_eq!(cc("max-age=abc").max_age, Some(0));
        assert_eq!(cc("max-age=99999999999999999999").max_age, Some(1 << 31));
        assert!(cc("No-Store").no_store);
        assert!(!cc("no-cache=\"Set-Cookie\"").no_cache);
        assert!(cc("no-cache").no_cache);
        assert!(cc(" , private ,").private);
    }

    #[test]
    fn storable_table() {
        let now = 1_000_000_000_000u64;
        let base = ResponseFacts {
            status: 200,
            date_s: Some(now / 1000),
            // Modified 100,000 s before Date: heuristically fresh for 10,000 s.
            last_modified_s: Some(now / 1000 - 100_000),
            ..Default::default()
        };
        let cases: Vec<(&str, ResponseFacts, Storable)> = vec![
            (
                "heuristic 2xx",
                base,
                Storable::Yes {
                    lifetime_ms: 10_000_000,
                    flags: 0,
                },
            ),
            (
                "heuristic without Last-Modified",
                ResponseFacts {
                    last_modified_s: None,
                    ..base
                },
                Storable::No("no explicit freshness and no Last-Modified to guess from"),
            ),
            (
                "heuristic capped at a day",
                ResponseFacts {
                    last_modified_s: Some(1),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: MAX_HEURISTIC_S * 1000,
                    flags: 0,
                },
            ),
            (
                "Last-Modified after Date",
                ResponseFacts {
                    last_modified_s: Some(now / 1000 + 5),
                    ..base
                },
                Storable::No("no explicit freshness and no Last-Modified to guess from"),
            ),
            (
                "max-age",
                ResponseFacts {
                    cc: cc("max-age=5"),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 5000,
                    flags: 0,
                },
            ),
            (
                "s-maxage wins",
                ResponseFacts {
                    cc: cc("max-age=5, s-maxage=7"),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 7000,
                    flags: FLAG_MUST_REVALIDATE,
                },
            ),
            (
                "expires",
                ResponseFacts {
                    expires_s: Some(now / 1000 + 90),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 90_000,
                    flags: 0,
                },
            ),
            (
                "expires invalid",
                ResponseFacts {
                    expires_s: Some(0),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 0,
                    flags: 0,
                },
            ),
            (
                "no-store",
                ResponseFacts {
                    cc: cc("no-store"),
                    ..base
                },
                Storable::No("no-store"),
            ),
            (
                "private",
                ResponseFacts {
                    cc: cc("private, max-age=60"),
                    ..base
                },
                Storable::No("private"),
            ),
            (
                "no-cache",
                ResponseFacts {
                    cc: cc("no-cache, max-age=60"),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 0,
                    flags: FLAG_NO_CACHE,
                },
            ),
            (
                "pragma",
                ResponseFacts {
                    pragma_no_cache: true,
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 0,
                    flags: FLAG_NO_CACHE,
                },
            ),
            (
                "3xx heuristic",
                ResponseFacts {
                    status: 301,
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 10_000_000,
                    flags: 0,
                },
            ),
            (
                "404 heuristic",
                ResponseFacts {
                    status: 404,
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 10_000_000,
                    flags: 0,
                },
            ),
            (
                "302 needs explicit",
                ResponseFacts {
                    status: 302,
                    ..base
                },
                Storable::No("no explicit freshness and not heuristically cacheable"),
            ),
            (
                "302 explicit",
                ResponseFacts {
                    status: 302,
                    cc: cc("max-age=9"),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 9000,
                    flags: 0,
                },
            ),
            (
                "500",
                ResponseFacts {
                    status: 500,
                    ..base
                },
                Storable::No("status not cacheable"),
            ),
            (
                "206",
                ResponseFacts {
                    status: 206,
                    ..base
                },
                Storable::No("status not cacheable"),
            ),
            (
                "must-revalidate",
                ResponseFacts {
                    cc: cc("max-age=1, must-revalidate"),
                    ..base
                },
                Storable::Yes {
                    lifetime_ms: 1000,
                    flags: FLAG_MUST_REVALIDATE,
                },
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(storable(&f, &RequestFacts::default(), now), want, "{name}");
        }
        assert_eq!(
            storable(
                &base,
                &RequestFacts {
                    cc: cc("no-store"),
                    ..Default::default()
                },
                now
            ),
            Storable::No("no-store")
        );
        let authorized = RequestFacts {
            authorized: true,
            ..Default::default()
        };
        assert_eq!(
            storable(&base, &authorized, now),
            Storable::No("request carried Authorization")
        );
        let public = ResponseFacts {
            cc: cc("public, max-age=3"),
            ..base
        };
        assert!(matches!(
            storable(&public, &authorized, now),
            Storable::Yes { .. }
        ));
        // A request with Cookie (RFC 9111 mode): heuristic freshness is refused,
        // explicit freshness or `public` still stores.
        let personal = RequestFacts {
            personal: true,
            ..Default::default()
        };
        let heuristic = ResponseFacts {
            status: 200,
            last_modified_s: Some(1),
            ..Default::default()
        };
        let cookie_cases = [
            ("no freshness", heuristic, false),
            (
                "max-age",
                ResponseFacts {
                    cc: cc("max-age=5"),
                    ..heuristic
                },
                true,
            ),
            (
                "s-maxage",
                ResponseFacts {
                    cc: cc("s-maxage=5"),
                    ..heuristic
                },
                true,
            ),
            (
                "Expires",
                ResponseFacts {
                    expires_s: Some(now / 1000 + 60),
                    ..heuristic
                },
                true,
            ),
            (
                "public",
                ResponseFacts {
                    cc: cc("public"),
                    ..heuristic
                },
                true,
            ),
        ];
        for (name, f, stored) in cookie_cases {
            let got = storable(&f, &personal, now);
            assert_eq!(
                matches!(got, Storable::Yes { .. }),
                stored,
                "{name}: {got:?}"
            );
            // Without Cookie every case stores.
            assert!(
                matches!(
                    storable(&f, &RequestFacts::default(), now),
                    Storable::Yes { .. }
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn age_and_freshness() {
        // RFC 9111 §4.2.3 worked through: origin said Age: 10, Date 2 s before the
        // response arrived, the request took 1 s.
        let t = Times {
            request_time_ms: 99_000,
            response_time_ms: 100_000,
            date_s: 98,
            age_s: 10,
            lifetime_ms: 60_000,
            flags: 0,
        };
        assert_eq!(t.current_age_ms(100_000), 11_000); // max(2 s apparent, 10 s + 1 s delay)
        assert_eq!(t.current_age_ms(130_000), 41_000);
        assert!(t.is_fresh(148_999));
        assert!(!t.is_fresh(149_000));
        assert_eq!(t.ttl_left_s(100_000), 49);
        let no_cache = Times {
            flags: FLAG_NO_CACHE,
            ..t
        };
        assert!(!no_cache.is_fresh(100_000));
        // A clock going backwards never underflows.
        assert_eq!(t.current_age_ms(0), 11_000);
    }
}
