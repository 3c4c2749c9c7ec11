//! `svc/<vhost>/bypass.txt` (ORG-6): which GET/HEAD requests skip the cache
//! and go to the origin as they are, and which are cached whatever
//! `<BypassGetRequest>` says.
//!
//! ```text
//! # {condition}[, bypass | cache]
//! $IP[192.168.2.1-255]            // bypass (the default action)
//! /login.php, bypass
//! $HEADER[cookie: *SESSION*]
//! /static/*, cache                // cached even under BypassGetRequest ON
//! ```
//!
//! The first line whose condition matches decides.

use super::cond::{CondError, Condition, MatchCtx};
use super::rulefile::{self, snippet, Unclosed};
use super::{Parsed, RuleDiag};

#[derive(Debug, Clone)]
pub struct BypassRule {
    pub line: u32,
    pub cond: Condition,
    /// `bypass` (or no action): to the origin; `cache`: through the cache.
    pub bypass: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BypassError {
    #[error("expected '{{condition}}[, bypass | cache]', found {0} field(s)")]
    FieldCount(usize),
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("condition: {0}")]
    Cond(#[from] CondError),
    #[error("{0:?}: expected bypass or cache")]
    Action(String),
}

pub fn parse(text: &str) -> Result<Parsed<BypassRule>, Vec<RuleDiag>> {
    rulefile::parse_each(text, |no, text| {
        parse_rule(text).map(|(cond, bypass)| BypassRule {
            line: no,
            cond,
            bypass,
        })
    })
}

fn parse_rule(text: &str) -> Result<(Condition, bool), BypassError> {
    let f = rulefile::fields(text)?;
    if !(1..=2).contains(&f.len()) {
        return Err(BypassError::FieldCount(f.len()));
    }
    let cond = Condition::parse(f[0])?;
    let bypass = match f.get(1).map(|a| a.trim()) {
        None | Some("") => true,
        Some(a) if a.eq_ignore_ascii_case("bypass") => true,
        Some(a) if a.eq_ignore_ascii_case("cache") => false,
        Some(a) => return Err(BypassError::Action(snippet(a))),
    };
    Ok((cond, bypass))
}

/// The first matching line's verdict: `Some(true)` bypass, `Some(false)`
/// cache, `None` when no line matches (the `<BypassGetRequest>` default).
pub fn decide(rules: &[BypassRule], ctx: &MatchCtx<'_>) -> Option<bool> {
    rules.iter().find(|r| r.cond.matches(ctx)).map(|r| r.bypass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HeaderIter;

    #[test]
    fn first_match_decides() {
        let text =
            "/static/*, cache\n$HEADER[cookie: *SESSION*]\n/login.php, bypass\n$IP[10.1.0.0/16]\n";
        let rules = parse(text).unwrap().rules;
        assert_eq!(rules.len(), 4);
        // (url, client ip, cookie, verdict)
        let table: &[(&str, &str, &str, Option<bool>)] = &[
            ("/static/a.css", "10.1.2.3", "SESSION=1", Some(false)),
            ("/page", "192.0.2.1", "a=1; SESSION=9", Some(true)),
            ("/login.php", "192.0.2.1", "", Some(true)),
            ("/page", "10.1.9.9", "", Some(true)),
            ("/page", "192.0.2.1", "", None),
        ];
        for &(url, ip, cookie, want) in table {
            let head = [(&b"cookie"[..], cookie.as_bytes())];
            let headers = HeaderIter(|| head.iter().copied().filter(|(_, v)| !v.is_empty()));
            let ctx = MatchCtx {
                client_ip: ip.parse().unwrap(),
                method: b"GET",
                url: url.as_bytes(),
                headers: &headers,
                mime: None,
                geo: None,
            };
            assert_eq!(decide(&rules, &ctx), want, "{url} {ip} {cookie}");
        }
        for bad in ["/x, maybe", "/x, cache, 3", "$HEADER[x", "\u{e9}, \u{e9}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
