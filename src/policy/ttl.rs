//! STON's TTL policy (TTL-1..4, TTL-6): how long an origin response is cached,
//! decided once when it is stored, and how that TTL grows on each 304. Pure:
//! the facts come in, the decision goes out, the clock is a parameter.
//!
//! ```text
//! # svc/<vhost>/ttl.txt: {condition}, {ttl}[, {minute hour}]
//! $URL[/live/*.m3u8], 2
//! /img/*.jpg & $ORGSTATUS[200], 1 day
//! $ORGSTATUS[4xx], 10
//! /news/*, 1 hour, 0 */6
//! ```

use super::cond::{CondError, Condition, MatchCtx};
use super::rulefile::{self, snippet, Unclosed};
use super::timespec::{parse_seconds, TimeError};
use super::{Parsed, RuleDiag};
use crate::cache::freshness::CacheControl;

/// A TTL class of `<TTL>`: its seconds, and its growth on each 304 (TTL-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassTtl {
    pub secs: u64,
    /// Percent of the current TTL added on each 304.
    pub ratio: u32,
    /// The TTL never grows past this (seconds).
    pub max: u64,
}

impl ClassTtl {
    const fn new(secs: u64, ratio: u32, max: u64) -> ClassTtl {
        ClassTtl { secs, ratio, max }
    }

    /// The TTL after a 304, from the current one (milliseconds).
    pub fn grown_ms(&self, current_ms: u64) -> u64 {
        let cap = self.max.saturating_mul(1000);
        if self.ratio == 0 || current_ms >= cap {
            return current_ms;
        }
        current_ms
            .saturating_add(current_ms / 100 * u64::from(self.ratio))
            .min(cap)
    }
}

/// A token of `Priority` (TTL-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    CcNoStore,
    CcNoCache,
    Custom,
    CcMaxAge,
    ResCode,
    CcSMaxAge,
}

impl Token {
    pub fn parse(s: &str) -> Option<Token> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "cc_nostore" => Token::CcNoStore,
            "cc_nocache" => Token::CcNoCache,
            "custom" => Token::Custom,
            "cc_maxage" => Token::CcMaxAge,
            "rescode" => Token::ResCode,
            "cc_smaxage" => Token::CcSMaxAge,
            _ => return None,
        })
    }
}

/// Which rule decided a TTL; stored with the object (in its flags) so a 304
/// grows it by the right class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// RFC 9111 mode, or an origin directive: no STON growth.
    Origin = 0,
    Res2xx = 1,
    Res3xx = 2,
    Res4xx = 3,
    Res5xx = 4,
    NoCache = 5,
    NoStore = 6,
    Custom = 7,
}

impl Class {
    pub fn from_bits(b: u16) -> Class {
        match b {
            1 => Class::Res2xx,
            2 => Class::Res3xx,
            3 => Class::Res4xx,
            4 => Class::Res5xx,
            5 => Class::NoCache,
            6 => Class::NoStore,
            7 => Class::Custom,
            _ => Class::Origin,
        }
    }
}

/// `<Options><TTL>` and the options around it (TTL-1..9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlPolicy {
    pub priority: Vec<Token>,
    /// `Base="request"`: the TTL counts from when the origin request was sent.
    pub base_request: bool,
    /// Res2xx, Res3xx, Res4xx, Res5xx.
    pub res: [ClassTtl; 4],
    pub no_cache: ClassTtl,
    /// NoCache `MaxAge`: clients are told `max-age=<this>` (0: untouched).
    pub no_cache_max_age: u64,
    /// NoCache `Expire="ON"`: stored already expired (every use revalidates).
    pub no_cache_expire: bool,
    pub no_store: ClassTtl,
    pub no_store_max_age: u64,
    /// NoStore `Bypass="ON"`: never stored.
    pub no_store_bypass: bool,
    /// TTL-4: seconds a stale object's TTL is extended by when the origin
    /// connection fails or times out, or does not answer in time.
    pub connect_timeout: u64,
    pub receive_timeout: u64,
    pub origin_busy: u64,
    /// TTL-7.
    pub extension_4xx: bool,
    pub extension_5xx: bool,
    pub extension_fail: bool,
    pub unvalidatable_status: u16,
    /// TTL-8: ON revalidates before answering; OFF answers stale at once and
    /// revalidates in the background.
    pub refresh_expired: bool,
    /// TTL-9.
    pub no_cache_request_expire: bool,
    pub bypass_no_cache_request: bool,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy {
            priority: vec![
                Token::CcNoStore,
                Token::CcNoCache,
                Token::Custom,
                Token::CcMaxAge,
                Token::ResCode,
                Token::CcSMaxAge,
            ],
            base_request: false,
            res: [
                ClassTtl::new(1800, 20, 86_400),
                ClassTtl::new(300, 0, 300),
                ClassTtl::new(30, 0, 30),
                ClassTtl::new(30, 0, 30),
            ],
            no_cache: ClassTtl::new(5, 0, 5),
            no_cache_max_age: 0,
            no_cache_expire: false,
            no_store: ClassTtl::new(5, 0, 5),
            no_store_max_age: 0,
            no_store_bypass: false,
            connect_timeout: 3,
            receive_timeout: 3,
            origin_busy: 3,
            extension_4xx: false,
            extension_5xx: true,
            extension_fail: true,
            unvalidatable_status: 0,
            refresh_expired: true,
            no_cache_request_expire: false,
            bypass_no_cache_request: false,
        }
    }
}

impl TtlPolicy {
    pub fn class_ttl(&self, c: Class) -> Option<&ClassTtl> {
        Some(match c {
            Class::Res2xx => &self.res[0],
            Class::Res3xx => &self.res[1],
            Class::Res4xx => &self.res[2],
            Class::Res5xx => &self.res[3],
            Class::NoCache => &self.no_cache,
            Class::NoStore => &self.no_store,
            Class::Origin | Class::Custom => return None,
        })
    }

    /// `max-age` clients are told for objects of class `c` (NoCache/NoStore
    /// `MaxAge`), when set.
    pub fn client_max_age(&self, c: Class) -> Option<u64> {
        match c {
            Class::NoCache if self.no_cache_max_age > 0 => Some(self.no_cache_max_age),
            Class::NoStore if self.no_store_max_age > 0 => Some(self.no_store_max_age),
            _ => None,
        }
    }
}

/// The facts of an origin response the TTL rules read.
#[derive(Debug, Clone, Copy)]
pub struct TtlFacts<'a> {
    pub status: u16,
    pub cc: &'a CacheControl,
    /// Seconds of `Expires` past `Date`, when both are there.
    pub expires_in: Option<u64>,
    pub now_s: u64,
}

/// Why a `no-store` response under NoStore `Bypass="ON"` is passed: the
/// caller also bypasses the URL for the NoStore TTL.
pub const NO_STORE_BYPASS: &str = "no-store with <NoStore Bypass=\"ON\">";

/// What the policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store, fresh for `secs`; `expired`: stored stale (NoCache `Expire="ON"`).
    Store {
        secs: u64,
        class: Class,
        expired: bool,
    },
    /// Do not store (NoStore `Bypass="ON"`, or a status STON never caches).
    Pass(&'static str),
}

/// TTL-1: the first token of `Priority` that applies decides; `custom` is the
/// TTL of the first matching ttl.txt rule, if any (with its clock-time cap
/// already applied, see [`TtlRule::ttl_at`]).
pub fn decide(p: &TtlPolicy, f: &TtlFacts<'_>, custom: Option<u64>) -> Decision {
    let class_of = |s: u16| match s {
        200..=299 if s != 206 => Some(Class::Res2xx),
        300..=399 if s != 304 => Some(Class::Res3xx),
        400..=499 => Some(Class::Res4xx),
        500..=599 => Some(Class::Res5xx),
        _ => None,
    };
    let Some(rescode) = class_of(f.status) else {
        return Decision::Pass("status STON does not cache (1xx, 206, 304)");
    };
    let store = |secs, class| Decision::Store {
        secs,
        class,
        expired: false,
    };
    for t in &p.priority {
        match t {
            Token::CcNoStore if f.cc.no_store => {
                if p.no_store_bypass {
                    return Decision::Pass(NO_STORE_BYPASS);
                }
                return store(p.no_store.secs, Class::NoStore);
            }
            Token::CcNoCache if f.cc.no_cache || f.cc.private || f.cc.must_revalidate => {
                return Decision::Store {
                    secs: p.no_cache.secs,
                    class: Class::NoCache,
                    expired: p.no_cache_expire,
                };
            }
            Token::Custom => {
                if let Some(s) = custom {
                    return store(s, Class::Custom);
                }
            }
            Token::CcMaxAge => {
                if let Some(s) = f.cc.max_age.or(f.expires_in) {
                    return store(s, Class::Origin);
                }
            }
            Token::ResCode => {
                let i = rescode as usize - 1;
                return store(p.res[i].secs, rescode);
            }
            Token::CcSMaxAge => {
                if let Some(s) = f.cc.s_maxage {
                    return store(s, Class::Origin);
                }
            }
            _ => {}
        }
    }
    let i = rescode as usize - 1;
    store(p.res[i].secs, rescode)
}

/// An `$ORGSTATUS[...]` item: one status, or a class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSpec {
    Exact(u16),
    Class(u16),
}

impl StatusSpec {
    fn matches(&self, s: u16) -> bool {
        match *self {
            StatusSpec::Exact(x) => x == s,
            StatusSpec::Class(c) => s / 100 == c,
        }
    }
}

/// One field of the clock-time spec: `*`, `N` or `*/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockField {
    Any,
    At(u32),
    Every(u32),
}

impl ClockField {
    fn parse(s: &str, limit: u32) -> Option<ClockField> {
        if s == "*" {
            return Some(ClockField::Any);
        }
        if let Some(n) = s.strip_prefix("*/") {
            let n: u32 = n.parse().ok()?;
            return (1..=limit).contains(&n).then_some(ClockField::Every(n));
        }
        let n: u32 = s.parse().ok()?;
        (n < limit).then_some(ClockField::At(n))
    }
    fn matches(&self, v: u32) -> bool {
        match *self {
            ClockField::Any => true,
            ClockField::At(n) => v == n,
            ClockField::Every(n) => v.is_multiple_of(n),
        }
    }
}

/// One line of ttl.txt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlRule {
    pub line: u32,
    /// The request terms (`$URL`, bare patterns, anything a condition takes).
    pub cond: Option<Condition>,
    /// `$ORGSTATUS[...]`: the origin's status must be one of these.
    pub status: Option<Box<[StatusSpec]>>,
    pub ttl: u64,
    /// `{minute hour}` (UTC): the object expires at the next such time if that
    /// comes first.
    pub clock: Option<(ClockField, ClockField)>,
}

impl TtlRule {
    pub fn matches(&self, ctx: &MatchCtx<'_>, status: u16) -> bool {
        self.status
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x.matches(status)))
            && self.cond.as_ref().is_none_or(|c| c.matches(ctx))
    }

    /// The TTL for an object cached at `now_s`: the rule's, or less when the
    /// next clock time comes first (TTL-6).
    pub fn ttl_at(&self, now_s: u64) -> u64 {
        match self.clock {
            None => self.ttl,
            Some((m, h)) => match next_clock(now_s, m, h) {
                Some(at) => self.ttl.min(at - now_s),
                None => self.ttl,
            },
        }
    }
}

/// The first minute strictly after `now_s` whose minute and hour (UTC) match;
/// `None` if none does within two days (an `At` never matching, say).
pub fn next_clock(now_s: u64, minute: ClockField, hour: ClockField) -> Option<u64> {
    let mut t = (now_s / 60 + 1) * 60;
    for _ in 0..(2 * 24 * 60) {
        let m = ((t / 60) % 60) as u32;
        let h = ((t / 3600) % 24) as u32;
        if minute.matches(m) && hour.matches(h) {
            return Some(t);
        }
        t += 60;
    }
    None
}

/// The first rule that matches decides.
pub fn custom_ttl(rules: &[TtlRule], ctx: &MatchCtx<'_>, status: u16, now_s: u64) -> Option<u64> {
    rules
        .iter()
        .find(|r| r.matches(ctx, status))
        .map(|r| r.ttl_at(now_s))
}

/// Why a ttl.txt line is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("expected '{{condition}}, {{ttl}}[, {{minute hour}}]', found {0} field(s)")]
    FieldCount(usize),
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("condition: {0}")]
    Cond(#[from] CondError),
    #[error("ttl: {0}")]
    Time(#[from] TimeError),
    #[error("$ORGSTATUS[{0}]: expected statuses or classes like 200|304|4xx")]
    Status(String),
    #[error("clock time {0:?}: expected '<minute> <hour>', each *, N or */N")]
    Clock(String),
}

/// Parses ttl.txt. Every malformed line is reported; any one fails the file.
pub fn parse(text: &str) -> Result<Parsed<TtlRule>, Vec<RuleDiag>> {
    rulefile::parse_each(text, parse_rule)
}

fn parse_rule(no: u32, text: &str) -> Result<TtlRule, TtlError> {
    let f = rulefile::fields(text)?;
    if !(2..=3).contains(&f.len()) {
        return Err(TtlError::FieldCount(f.len()));
    }
    // Split the condition on top-level `&`, taking the $ORGSTATUS terms out.
    let mut cuts = Vec::new();
    rulefile::walk_top(f[0], |i, b| {
        if b == b'&' {
            cuts.push(i);
        }
        true
    })?;
    let mut terms = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&f[0].len())) {
        terms.push(f[0][start..c].trim());
        start = c + 1;
    }
    let mut status = None;
    let mut rest = Vec::new();
    for t in terms {
        let upper = t.get(..11).map(str::to_ascii_uppercase);
        if upper.as_deref() == Some("$ORGSTATUS[") && t.ends_with(']') {
            let inner = &t[11..t.len() - 1];
            let mut specs = Vec::new();
            for s in inner.split('|').map(str::trim) {
                let bad = || TtlError::Status(snippet(inner));
                let spec = match s.as_bytes() {
                    [d, x, y]
                        if d.is_ascii_digit()
                            && x.eq_ignore_ascii_case(&b'x')
                            && y.eq_ignore_ascii_case(&b'x') =>
                    {
                        StatusSpec::Class(u16::from(d - b'0'))
                    }
                    _ => StatusSpec::Exact(
                        s.parse()
                            .ok()
                            .filter(|n| (100..=599).contains(n))
                            .ok_or_else(bad)?,
                    ),
                };
                specs.push(spec);
            }
            status = Some(specs.into_boxed_slice());
        } else {
            rest.push(t);
        }
    }
    let cond = match rest.is_empty() {
        true => None,
        false => Some(Condition::parse(&rest.join(" & "))?),
    };
    let ttl = parse_seconds(f[1])?;
    let clock = match f.get(2).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(c) => {
            let bad = || TtlError::Clock(snippet(c));
            let mut it = c.split_whitespace();
            let (m, h) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
            if it.next().is_some() {
                return Err(bad());
            }
            Some((
                ClockField::parse(m, 60).ok_or_else(bad)?,
                ClockField::parse(h, 24).ok_or_else(bad)?,
            ))
        }
    };
    Ok(TtlRule {
        line: no,
        cond,
        status,
        ttl,
        clock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cond::NoHeaders;

    fn cc(v: &str) -> CacheControl {
        CacheControl::parse(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn priority_decides_the_ttl() {
        let p = TtlPolicy::default();
        let d = |status, v: &str, custom| {
            decide(
                &p,
                &TtlFacts {
                    status,
                    cc: &cc(v),
                    expires_in: None,
                    now_s: 0,
                },
                custom,
            )
        };
        let s = |secs, class| Decision::Store {
            secs,
            class,
            expired: false,
        };
        // (status, Cache-Control, ttl.txt, decision)
        let table = [
            (200, "", None, s(1800, Class::Res2xx)),
            (301, "", None, s(300, Class::Res3xx)),
            (404, "", None, s(30, Class::Res4xx)),
            (503, "", None, s(30, Class::Res5xx)),
            (200, "no-store, max-age=60", Some(9), s(5, Class::NoStore)),
            (200, "private", None, s(5, Class::NoCache)),
            (
                200,
                "must-revalidate, max-age=60",
                None,
                s(5, Class::NoCache),
            ),
            (200, "max-age=60", Some(9), s(9, Class::Custom)),
            (200, "max-age=60", None, s(60, Class::Origin)),
            // rescode comes before cc_smaxage in the default priority.
            (200, "s-maxage=70", None, s(1800, Class::Res2xx)),
        ];
        for (status, v, custom, want) in table {
            assert_eq!(d(status, v, custom), want, "{status} {v:?} {custom:?}");
        }
        assert!(matches!(d(206, "", None), Decision::Pass(_)));
        assert!(matches!(d(304, "", None), Decision::Pass(_)));
        // Another order, and the NoCache/NoStore switches.
        let p2 = TtlPolicy {
            priority: vec![Token::CcSMaxAge, Token::CcMaxAge, Token::ResCode],
            no_store_bypass: true,
            no_cache_expire: true,
            ..TtlPolicy::default()
        };
        let d2 = |v: &str| {
            decide(
                &p2,
                &TtlFacts {
                    status: 200,
                    cc: &cc(v),
                    expires_in: Some(40),
                    now_s: 0,
                },
                None,
            )
        };
        assert_eq!(d2("s-maxage=70, max-age=60"), s(70, Class::Origin));
        assert_eq!(
            d2("no-store"),
            s(40, Class::Origin),
            "cc_nostore is not listed"
        );
        let p3 = TtlPolicy {
            no_store_bypass: true,
            no_cache_expire: true,
            ..TtlPolicy::default()
        };
        let f = |v: &str| TtlFacts {
            status: 200,
            cc: &*Box::leak(Box::new(cc(v))),
            expires_in: None,
            now_s: 0,
        };
        assert!(matches!(
            decide(&p3, &f("no-store"), None),
            Decision::Pass(_)
        ));
        assert_eq!(
            decide(&p3, &f("no-cache"), None),
            Decision::Store {
                secs: 5,
                class: Class::NoCache,
                expired: true
            }
        );
    }

    #[test]
    fn growth_on_304_by_ratio_capped_at_max() {
        let c = ClassTtl::new(1800, 20, 2500);
        assert_eq!(c.grown_ms(1_800_000), 2_160_000);
        assert_eq!(c.grown_ms(2_160_000), 2_500_000);
        assert_eq!(c.grown_ms(2_500_000), 2_500_000);
        assert_eq!(ClassTtl::new(30, 0, 30).grown_ms(30_000), 30_000);
        // A TTL already past Max (a custom one) is not cut by growth.
        assert_eq!(ClassTtl::new(30, 50, 40).grown_ms(100_000), 100_000);
    }

    #[test]
    fn ttl_txt_rules_and_clock_times() {
        let text = "# comment\n$URL[/live/*.m3u8], 2\n/img/*.jpg & $ORGSTATUS[200|304], 1 day\n$ORGSTATUS[4xx], 10\n*.html, 1 hour, 0 */6\n";
        let rules = parse(text).unwrap().rules;
        assert_eq!(rules.len(), 4);
        let ctx = |url: &'static str| MatchCtx {
            client_ip: "127.0.0.1".parse().unwrap(),
            method: b"GET",
            url: url.as_bytes(),
            headers: &NoHeaders,
            mime: None,
            geo: None,
        };
        let now = 1_700_000_000; // 22:13:20 UTC
        assert_eq!(custom_ttl(&rules, &ctx("/live/a.m3u8"), 200, now), Some(2));
        assert_eq!(
            custom_ttl(&rules, &ctx("/img/x.jpg"), 200, now),
            Some(86_400)
        );
        assert_eq!(custom_ttl(&rules, &ctx("/img/x.jpg"), 404, now), Some(10));
        assert_eq!(custom_ttl(&rules, &ctx("/img/x.jpg"), 500, now), None);
        // `*.html` does not match `/`.
        assert_eq!(custom_ttl(&rules, &ctx("/"), 200, now), None);
        // Next 00:00 UTC (every 6 hours at minute 0) comes before an hour is up?
        // 22:13:20 -> 00:00:00 is 6400 s: the hour wins.
        assert_eq!(custom_ttl(&rules, &ctx("/a.html"), 200, now), Some(3600));
        // At 23:30 the next 00:00 is 30 minutes away.
        let late = now - (now % 86_400) + 23 * 3600 + 1800;
        assert_eq!(custom_ttl(&rules, &ctx("/a.html"), 200, late), Some(1800));
        assert_eq!(
            next_clock(late, ClockField::Every(5), ClockField::Any),
            Some(late + 300)
        );
        for bad in [
            "/x",
            "/x, soon",
            "$ORGSTATUS[2xy], 5",
            "$ORGSTATUS[999], 5",
            "/x, 5, 61 *",
            "/x, 5, * 24",
            "/x, 5, */0 *",
            "/x, 5, 1",
            "/x, 5, 1 2 3",
            "$NOPE[x], 5",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
