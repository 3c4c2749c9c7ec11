//! `expires.txt`: what the client is told about expiry (spec §3, EXP-1..EXP-6).
//!
//! In the manner of Apache mod_expires: the first rule whose condition matches
//! decides `Expires` and `Cache-Control: max-age` for the response. These rules
//! change only what the client is told, never how long cairn caches the object.
//!
//! ```text
//! # {condition}, {time}[, {base}]
//! $URL[/test.jpg], 86400
//! /test/*.dat, 30 min, modification
//! $MIME[image/*], 1 day 12 hours, access
//! *, #ORG_MAXAGE
//! ```

use super::cond::{trim, CondError, Condition, MatchCtx};
use super::rulefile::{self, snippet, Unclosed};
use super::timespec::{parse_seconds, TimeError};
use super::{Parsed, RuleDiag};
use crate::http1::headers::{ends_in_quote, list_items};

/// The latest instant an IMF-fixdate can spell (9999-12-31T23:59:59Z): `Expires`
/// is clamped to it so formatting never overflows.
pub const MAX_EXPIRES: u64 = 253_402_300_799;

/// What the expiry time counts from (EXP-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The time of access (now).
    Access,
    /// The origin's `Last-Modified` (EXP-5).
    Modification,
}

impl Base {
    /// `access` / `modification`, any case (also the element's `Base` attribute).
    pub fn parse(s: &str) -> Option<Base> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("access") {
            Some(Base::Access)
        } else if s.eq_ignore_ascii_case("modification") {
            Some(Base::Modification)
        } else {
            None
        }
    }
}

/// The `{time}` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiresTime {
    Seconds(u64),
    /// `#ORG_MAXAGE`: the origin's max-age (EXP-6).
    OrgMaxAge,
    /// `#TTL_LEFT`: the object's remaining cache TTL, base access only (EXP-6).
    TtlLeft,
}

/// One line of expires.txt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiresRule {
    pub line: u32,
    pub cond: Condition,
    pub time: ExpiresTime,
    /// `None`: the element's `Base` attribute decides.
    pub base: Option<Base>,
}

/// Why an expires.txt line is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiresError {
    #[error("expected '{{condition}}, {{time}}[, {{base}}]', found {0} field(s)")]
    FieldCount(usize),
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("condition: {0}")]
    Cond(#[from] CondError),
    #[error("time: {0}")]
    Time(#[from] TimeError),
    #[error("base {0:?} is neither 'access' nor 'modification'")]
    BadBase(String),
    #[error("#TTL_LEFT counts from access only (EXP-6)")]
    TtlLeftNeedsAccess,
}

/// Parses expires.txt. Every malformed line is reported; any one fails the file.
pub fn parse(text: &str) -> Result<Parsed<ExpiresRule>, Vec<RuleDiag>> {
    rulefile::parse_each(text, |no, text| {
        parse_rule(text).map(|(cond, time, base)| ExpiresRule {
            line: no,
            cond,
            time,
            base,
        })
    })
}

fn parse_rule(text: &str) -> Result<(Condition, ExpiresTime, Option<Base>), ExpiresError> {
    let f = rulefile::fields(text)?;
    if !(2..=3).contains(&f.len()) {
        return Err(ExpiresError::FieldCount(f.len()));
    }
    let cond = Condition::parse(f[0])?;
    let time = if f[1].eq_ignore_ascii_case("#ORG_MAXAGE") {
        ExpiresTime::OrgMaxAge
    } else if f[1].eq_ignore_ascii_case("#TTL_LEFT") {
        ExpiresTime::TtlLeft
    } else {
        ExpiresTime::Seconds(parse_seconds(f[1])?)
    };
    let base = match f.get(2) {
        None | Some(&"") => None,
        Some(b) => Some(Base::parse(b).ok_or_else(|| ExpiresError::BadBase(snippet(b)))?),
    };
    if time == ExpiresTime::TtlLeft && base == Some(Base::Modification) {
        return Err(ExpiresError::TtlLeftNeedsAccess);
    }
    Ok((cond, time, base))
}

/// The facts about one response that the rules need. Times are unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpiresFacts {
    /// Now, when the response is being sent (the `access` base).
    pub now: u64,
    /// When the request arrived (EXP-4: max-age = Expires - request time).
    pub request_time: u64,
    /// The origin's `Last-Modified`.
    pub last_modified: Option<u64>,
    /// The origin's `Cache-Control: max-age`.
    pub origin_max_age: Option<u64>,
    /// The object's remaining cache TTL; `None` when it is not cached.
    pub ttl_left: Option<u64>,
}

/// What a matching rule says to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiresOutcome {
    /// EXP-4: send `Expires: <expires>` and set `Cache-Control` max-age to
    /// `max_age` (see [`with_max_age`]).
    Refresh { expires: u64, max_age: u64 },
    /// EXP-5/EXP-6: the rule matched but yields no time (no Last-Modified, no or
    /// zero origin max-age, no TTL): send no `Expires` (drop the origin's) and
    /// leave `Cache-Control` as it is.
    OmitExpires,
}

impl ExpiresOutcome {
    /// The `Expires` value (IMF-fixdate) to send, if any.
    pub fn expires_header(&self) -> Option<String> {
        match *self {
            ExpiresOutcome::Refresh { expires, .. } => {
                let t = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(expires.min(MAX_EXPIRES));
                Some(crate::httpdate::format(t))
            }
            ExpiresOutcome::OmitExpires => None,
        }
    }
}

/// EXP-2: the first matching rule decides; `None` when no rule matches (the
/// response then behaves as with the feature OFF, EXP-1).
pub fn decide(
    rules: &[ExpiresRule],
    default_base: Base,
    ctx: &MatchCtx<'_>,
    facts: &ExpiresFacts,
) -> Option<ExpiresOutcome> {
    let rule = rules.iter().find(|r| r.cond.matches(ctx))?;
    Some(outcome(rule, default_base, facts))
}

fn outcome(rule: &ExpiresRule, default_base: Base, f: &ExpiresFacts) -> ExpiresOutcome {
    let secs = match rule.time {
        ExpiresTime::Seconds(s) => s,
        ExpiresTime::OrgMaxAge => match f.origin_max_age {
            Some(s) if s > 0 => s,
            _ => return ExpiresOutcome::OmitExpires,
        },
        ExpiresTime::TtlLeft => match f.ttl_left {
            Some(s) => s,
            None => return ExpiresOutcome::OmitExpires,
        },
    };
    // EXP-6: #TTL_LEFT always counts from access, whatever the default says.
    let base = match rule.time {
        ExpiresTime::TtlLeft => Base::Access,
        _ => rule.base.unwrap_or(default_base),
    };
    let start = match base {
        Base::Access => f.now,
        Base::Modification => match f.last_modified {
            Some(lm) => lm,
            None => return ExpiresOutcome::OmitExpires,
        },
    };
    let expires = start.saturating_add(secs).min(MAX_EXPIRES);
    if expires < f.now {
        // EXP-5: a time in the past becomes now, with max-age=0.
        return ExpiresOutcome::Refresh {
            expires: f.now.min(MAX_EXPIRES),
            max_age: 0,
        };
    }
    ExpiresOutcome::Refresh {
        expires,
        max_age: expires.saturating_sub(f.request_time),
    }
}

/// EXP-4: a `Cache-Control` value with `max-age=<max_age>` in place of any
/// max-age the origin sent (at the first one's position, else at the end);
/// every other directive is kept as written. Commas inside quoted strings
/// (`no-cache="a, b"`) do not split directives; a directive whose quoted string
/// never closes is dropped, else it would swallow the max-age written after it.
pub fn with_max_age(cache_control: Option<&[u8]>, max_age: u64) -> Vec<u8> {
    let cc = cache_control.unwrap_or_default();
    let mut out = Vec::with_capacity(cc.len() + 24);
    let mut placed = false;
    for d in list_items(cc).filter(|d| !ends_in_quote(d)) {
        let name = trim(d.split(|&b| b == b'=').next().unwrap_or_default());
        let is_max_age = name.eq_ignore_ascii_case(b"max-age");
        if is_max_age && placed {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        if is_max_age {
            push_max_age(&mut out, max_age);
            placed = true;
        } else {
            out.extend_from_slice(d);
        }
    }
    if !placed {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        push_max_age(&mut out, max_age);
    }
    out
}

fn push_max_age(out: &mut Vec<u8>, max_age: u64) {
    use std::io::Write;
    let _ = write!(out, "max-age={max_age}");
}

/// The `max-age` of a Cache-Control value (for [`ExpiresFacts::origin_max_age`]);
/// `None` when absent or malformed; huge values saturate.
pub fn cache_control_max_age(v: &[u8]) -> Option<u64> {
    list_items(v).find_map(|d| {
        let (name, value) = match d.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&d[..i]), trim(&d[i + 1..])),
            None => return None,
        };
        if !name.eq_ignore_ascii_case(b"max-age") {
            return None;
        }
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(value.iter().fold(0u64, |acc, &d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::super::cond::tests::Req;
    use super::*;

    /// The expires.txt examples of seed 002, verbatim (with its comment lines).
    const SEED_002: &str = "# /svc/www.exmaple.com/expires.txt
# 구분자는 콤마(,)이며 {조건},{시간},{기준} 순서로 표기한다.

$URL[/test.jpg], 86400
/test.jpg, 86400
*, 86400, access
/test/1.gif, 60 sec
/test/*.dat, 30 min, modification
$MIME[application/shockwave], 1 years
$MIME[application/octet-stream], 7 weeks, modification
$MIME[image/gif], 3600, modification
$MIME[image/gif], 1 day 12 hours, access
*.jpg, 30min, modification
";

    #[test]
    fn seed_002_examples_parse() {
        let p = parse(SEED_002).expect("seed 002 expires.txt");
        assert!(p.warnings.is_empty());
        let got: Vec<(u32, ExpiresTime, Option<Base>)> =
            p.rules.iter().map(|r| (r.line, r.time, r.base)).collect();
        use Base::*;
        use ExpiresTime::Seconds as S;
        assert_eq!(
            got,
            vec![
                (4, S(86_400), None),
                (5, S(86_400), None),
                (6, S(86_400), Some(Access)),
                (7, S(60), None),
                (8, S(1_800), Some(Modification)),
                (9, S(31_536_000), None),
                (10, S(7 * 604_800), Some(Modification)),
                (11, S(3_600), Some(Modification)),
                (12, S(129_600), Some(Access)),
                (13, S(1_800), Some(Modification)),
            ]
        );
    }

    #[test]
    fn special_times_and_bases_parse() {
        let p =
            parse("*, #ORG_MAXAGE\n/a, #ttl_left, ACCESS\n/b, 5, Modification\n/c, 5,\n").unwrap();
        let got: Vec<_> = p.rules.iter().map(|r| (r.time, r.base)).collect();
        assert_eq!(
            got,
            vec![
                (ExpiresTime::OrgMaxAge, None),
                (ExpiresTime::TtlLeft, Some(Base::Access)),
                (ExpiresTime::Seconds(5), Some(Base::Modification)),
                (ExpiresTime::Seconds(5), None),
            ]
        );
    }

    /// Every bad line is reported with its number; good lines do not hide them.
    #[test]
    fn malformed_lines_are_all_reported() {
        let text = "/ok, 1\n/a\n/b, 1, 2, 3\n/c, soon\n/d, 1, later\n$FOO[x], 1\n/e, #TTL_LEFT, modification\n$URL[/f, 1\n, 5\n/ok2, 2 days\n";
        let errs = parse(text).unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(errs[0].reason.contains("1 field"), "{}", errs[0]);
        assert!(errs[2].reason.starts_with("time:"), "{}", errs[2]);
        assert!(errs[3].reason.contains("later"), "{}", errs[3]);
        assert!(errs[5].reason.contains("EXP-6"), "{}", errs[5]);
        assert_eq!(
            errs[1].to_string(),
            "line 3: expected '{condition}, {time}[, {base}]', found 4 field(s)"
        );
    }

    const NOW: u64 = 1_700_000_000;

    fn facts() -> ExpiresFacts {
        ExpiresFacts {
            now: NOW,
            request_time: NOW,
            last_modified: Some(NOW - 600),
            origin_max_age: Some(120),
            ttl_left: Some(45),
        }
    }

    fn run(rules: &str, base: Base, req: &Req<'_>, f: &ExpiresFacts) -> Option<ExpiresOutcome> {
        let p = parse(rules).unwrap();
        decide(&p.rules, base, &req.ctx(None), f)
    }

    fn refresh(expires: u64, max_age: u64) -> Option<ExpiresOutcome> {
        Some(ExpiresOutcome::Refresh { expires, max_age })
    }

    /// One row per rule: (rule id, rules, url, mime, default base, facts tweak, outcome).
    #[test]
    fn decide_table() {
        type Tweak = fn(&mut ExpiresFacts);
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            Base,
            Tweak,
            Option<ExpiresOutcome>,
        );
        let none: Tweak = |_| {};
        let omit = Some(ExpiresOutcome::OmitExpires);
        use Base::{Access as Acc, Modification as Mod};
        #[rustfmt::skip]
        let cases: &[Row<'_>] = &[
            // EXP-2: no match behaves as OFF (None); first match wins.
            ("EXP-2", "/a, 10", "/b", None, Acc, none, None),
            ("EXP-2", "/a, 10\n/a, 20", "/a", None, Acc, none, refresh(NOW + 10, 10)),
            ("EXP-2", "/x, 10\n*, 20", "/a", None, Acc, none, refresh(NOW + 20, 20)),
            // EXP-3: $URL, bare pattern, $MIME without parameters.
            ("EXP-3", "$URL[/test.jpg], 86400", "/test.jpg", None, Acc, none, refresh(NOW + 86_400, 86_400)),
            ("EXP-3", "/test/*.dat, 60", "/test/x/y.dat", None, Acc, none, refresh(NOW + 60, 60)),
            ("EXP-3", "$MIME[image/*], 1 day", "/p", Some("image/gif; q=1"), Acc, none, refresh(NOW + 86_400, 86_400)),
            ("EXP-3", "$MIME[image/gif], 1 day", "/p", Some("text/html"), Acc, none, None),
            ("EXP-3", "$MIME[image/gif], 1 day", "/p", None, Acc, none, None),
            // EXP-3: the default base comes from the element; the rule overrides it.
            ("EXP-3", "/a, 1000", "/a", None, Mod, none, refresh(NOW - 600 + 1000, 400)),
            ("EXP-3", "/a, 1000, access", "/a", None, Mod, none, refresh(NOW + 1000, 1000)),
            // EXP-4: max-age = Expires - request time (the request came 5 s ago).
            ("EXP-4", "/a, 100", "/a", None, Acc, |f| f.request_time = NOW - 5, refresh(NOW + 100, 105)),
            // EXP-5: modification base; past -> now with max-age 0; no Last-Modified -> omit.
            ("EXP-5", "/a, 30 min, modification", "/a", None, Acc, none, refresh(NOW - 600 + 1800, 1200)),
            ("EXP-5", "/a, 60, modification", "/a", None, Acc, none, refresh(NOW, 0)),
            ("EXP-5", "/a, 60, modification", "/a", None, Acc, |f| f.request_time = NOW - 9, refresh(NOW, 0)),
            ("EXP-5", "/a, 600, modification", "/a", None, Acc, none, refresh(NOW, 0)),
            ("EXP-5", "/a, 60, modification", "/a", None, Acc, |f| f.last_modified = None, omit),
            // EXP-6: #ORG_MAXAGE (missing or 0: omit), #TTL_LEFT (access only).
            ("EXP-6", "/a, #ORG_MAXAGE", "/a", None, Acc, none, refresh(NOW + 120, 120)),
            ("EXP-6", "/a, #ORG_MAXAGE, modification", "/a", None, Acc, none, refresh(NOW, 0)),
            ("EXP-6", "/a, #ORG_MAXAGE, modification", "/a", None, Acc, |f| f.origin_max_age = Some(900), refresh(NOW + 300, 300)),
            ("EXP-6", "/a, #ORG_MAXAGE", "/a", None, Acc, |f| f.origin_max_age = None, omit),
            ("EXP-6", "/a, #ORG_MAXAGE", "/a", None, Acc, |f| f.origin_max_age = Some(0), omit),
            ("EXP-6", "/a, #TTL_LEFT", "/a", None, Acc, none, refresh(NOW + 45, 45)),
            ("EXP-6", "/a, #TTL_LEFT", "/a", None, Mod, none, refresh(NOW + 45, 45)),
            ("EXP-6", "/a, #TTL_LEFT", "/a", None, Acc, |f| f.ttl_left = None, omit),
            ("EXP-6", "/a, #TTL_LEFT", "/a", None, Acc, |f| f.ttl_left = Some(0), refresh(NOW, 0)),
            // Huge values clamp to the last representable date instead of overflowing.
            ("EXP-4", "/a, 18446744073709551615", "/a", None, Acc, none, refresh(MAX_EXPIRES, MAX_EXPIRES - NOW)),
            ("EXP-4", "/a, 1", "/a", None, Acc, |f| { f.now = u64::MAX; f.request_time = u64::MAX }, refresh(MAX_EXPIRES, 0)),
        ];
        for (id, rules, url, mime, base, tweak, want) in cases {
            let mut req = Req::new("10.0.0.1", url);
            req.mime = *mime;
            let mut f = facts();
            tweak(&mut f);
            assert_eq!(
                run(rules, *base, &req, &f),
                *want,
                "{id}: {rules:?} for {url}"
            );
        }
    }

    #[test]
    fn expires_header_is_imf_fixdate() {
        let o = ExpiresOutcome::Refresh {
            expires: 784_111_777,
            max_age: 0,
        };
        assert_eq!(o.expires_header().unwrap(), "Sun, 06 Nov 1994 08:49:37 GMT");
        let o = ExpiresOutcome::Refresh {
            expires: MAX_EXPIRES,
            max_age: 0,
        };
        assert_eq!(o.expires_header().unwrap(), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(ExpiresOutcome::OmitExpires.expires_header(), None);
    }

    /// EXP-4: max-age replaced, other directives kept.
    #[test]
    fn cache_control_rewrite() {
        #[rustfmt::skip]
        let cases: &[(Option<&str>, u64, &str)] = &[
            (None, 60, "max-age=60"),
            (Some(""), 60, "max-age=60"),
            (Some("public"), 60, "public, max-age=60"),
            (Some("max-age=5"), 60, "max-age=60"),
            (Some("public, max-age=5, must-revalidate"), 0, "public, max-age=0, must-revalidate"),
            (Some("MAX-AGE = 5,no-transform"), 7, "max-age=7, no-transform"),
            (Some("max-age=1, max-age=2"), 3, "max-age=3"),
            (Some("s-maxage=100, private"), 9, "s-maxage=100, private, max-age=9"),
            (Some("no-cache=\"Set-Cookie, max-age\", max-age=1"), 2, "no-cache=\"Set-Cookie, max-age\", max-age=2"),
            (Some("x=\"a\\\"b, c\", max-age=1"), 2, "x=\"a\\\"b, c\", max-age=2"),
            (Some(" , ,public,, "), 1, "public, max-age=1"),
            // An unclosed quoted string would swallow what follows: dropped.
            (Some("x=\"unterminated, max-age=1"), 2, "max-age=2"),
        ];
        for (cc, n, want) in cases {
            let got = with_max_age(cc.map(str::as_bytes), *n);
            assert_eq!(String::from_utf8(got).unwrap(), *want, "{cc:?}");
        }
    }

    #[test]
    fn origin_max_age() {
        let cases: &[(&str, Option<u64>)] = &[
            ("max-age=120", Some(120)),
            ("public, Max-Age = 30", Some(30)),
            ("max-age=\"15\"", Some(15)),
            ("s-maxage=5", None),
            ("max-age", None),
            ("max-age=-1", None),
            ("max-age=1x", None),
            ("max-age=99999999999999999999999", Some(u64::MAX)),
            ("no-cache=\"max-age=3\", max-age=4", Some(4)),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(cache_control_max_age(v.as_bytes()), *want, "{v:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> =
            "$[]URLMIME,#ORG_MAXAGE TTL_LEFT/*.0123456789 daysmin accessmodification\"=\\\n\r한"
                .chars()
                .collect();
        let req = Req::new("10.0.0.1", "/a.jpg");
        let mut garbage = crate::fuzz::Garbage::new(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let s = garbage.string(&alphabet, 80);
            let (seed, x) = (garbage.number(), garbage.number());
            if let Ok(p) = parse(&s) {
                let f = ExpiresFacts {
                    now: seed,
                    request_time: x,
                    last_modified: Some(x ^ seed),
                    origin_max_age: Some(seed >> 3),
                    ttl_left: Some(x >> 1),
                };
                if let Some(o) = decide(&p.rules, Base::Modification, &req.ctx(None), &f) {
                    let _ = o.expires_header();
                }
            }
            let _ = with_max_age(Some(s.as_bytes()), seed);
            let _ = cache_control_max_age(s.as_bytes());
        }
    }
}
