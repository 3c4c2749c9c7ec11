//! `svc/<vhost>/querystring.txt` (KEY-3): which URLs' query strings are part
//! of the cache key, and which of their parameters.
//!
//! ```text
//! # {URL pattern}[, +a&b | -a&b]
//! /private/personal.jpg        // the exception to <ApplyQueryString>
//! $URL[/tab.html], +start&end  // only these, in this order
//! *.png, -utm_source&utm_medium
//! ```
//!
//! A cache fill sends the origin the key's URL, not the client's: what was
//! fetched is then exactly what the key names, whatever else the client put
//! in its query (`?start=1&st%61rt=X`, a second `start`, `;` separators).
//!
//! Under `<CaseSensitive>OFF` the URL is lower-cased before it is matched,
//! so patterns and names are lower-cased at load ([`parse`]'s `case`).

use super::cond::{Cond, CondError, Condition};
use super::pattern::{Case, Pattern};
use super::rulefile::{self, snippet, Unclosed};
use super::{Parsed, RuleDiag};
use std::borrow::Cow;

/// What a line does to a matching URL's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAction {
    /// Listed alone: the exception to `<ApplyQueryString>` (ON: no query in
    /// the key; OFF: the whole query).
    Except,
    /// `+a&b`: only these parameters, in this order.
    Keep(Vec<Box<[u8]>>),
    /// `-a&b`: all but these.
    Drop(Vec<Box<[u8]>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRule {
    pub line: u32,
    /// Matched against the path, without the query.
    pub url: Pattern,
    pub action: QueryAction,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("expected '{{URL pattern}}[, +names | -names]', found {0} field(s)")]
    FieldCount(usize),
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("condition: {0}")]
    Cond(#[from] CondError),
    #[error("only a URL pattern ($URL[...] or bare) can choose a query rule: {0}")]
    NotUrl(String),
    #[error("{0:?}: expected +name&name or -name&name")]
    Action(String),
}

/// `case`: the vhost's `<CaseSensitive>`; `Insensitive` lower-cases the
/// names, since [`key_query`] then sees a lower-cased query.
pub fn parse(text: &str, case: Case) -> Result<Parsed<QueryRule>, Vec<RuleDiag>> {
    rulefile::parse_each(text, |no, text| {
        parse_rule(text, case).map(|(url, action)| QueryRule {
            line: no,
            url,
            action,
        })
    })
}

fn parse_rule(text: &str, case: Case) -> Result<(Pattern, QueryAction), QueryError> {
    let f = rulefile::fields(text)?;
    if !(1..=2).contains(&f.len()) {
        return Err(QueryError::FieldCount(f.len()));
    }
    let cond = Condition::parse(f[0])?;
    let url = match cond.terms() {
        [t] if !t.negated => match &t.cond {
            Cond::Url(p) => Pattern::new(p.as_str(), case),
            _ => return Err(QueryError::NotUrl(snippet(f[0]))),
        },
        _ => return Err(QueryError::NotUrl(snippet(f[0]))),
    };
    let action = match f.get(1).map(|a| a.trim()).filter(|a| !a.is_empty()) {
        None => QueryAction::Except,
        Some(a) => {
            let bad = || QueryError::Action(snippet(a));
            let (keep, names) = match (a.strip_prefix('+'), a.strip_prefix('-')) {
                (Some(n), _) => (true, n),
                (_, Some(n)) => (false, n),
                _ => return Err(bad()),
            };
            // A name listed twice counts once: `+a&a` would repeat `a`'s
            // parameters (found by the querystring_txt fuzz target).
            let listed = names;
            let mut names: Vec<Box<[u8]>> = Vec::new();
            for n in listed.split('&').map(str::trim).filter(|n| !n.is_empty()) {
                let n: Box<[u8]> = match case {
                    Case::Sensitive => n.as_bytes().into(),
                    Case::Insensitive => n.to_ascii_lowercase().into_bytes().into(),
                };
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            if names.is_empty() {
                return Err(bad());
            }
            if keep {
                QueryAction::Keep(names)
            } else {
                QueryAction::Drop(names)
            }
        }
    };
    Ok((url, action))
}

/// The query the key holds for `path` with `query` (without the `?`).
/// `apply`: `<ApplyQueryString>`.
pub fn key_query<'q>(
    apply: bool,
    rules: &[QueryRule],
    path: &[u8],
    query: &'q [u8],
) -> Cow<'q, [u8]> {
    let rule = rules.iter().find(|r| r.url.matches(path));
    let params = || query.split(|&b| b == b'&').filter(|p| !p.is_empty());
    let name =
        |p: &[u8]| -> Vec<u8> { p.split(|&b| b == b'=').next().unwrap_or_default().to_vec() };
    match rule.map(|r| &r.action) {
        None if apply => Cow::Borrowed(query),
        None => Cow::Borrowed(b""),
        Some(QueryAction::Except) if apply => Cow::Borrowed(b""),
        Some(QueryAction::Except) => Cow::Borrowed(query),
        Some(QueryAction::Keep(names)) => {
            let mut out = Vec::new();
            for n in names {
                for p in params().filter(|p| name(p) == **n) {
                    if !out.is_empty() {
                        out.push(b'&');
                    }
                    out.extend_from_slice(p);
                }
            }
            Cow::Owned(out)
        }
        Some(QueryAction::Drop(names)) => {
            let mut out = Vec::new();
            for p in params().filter(|p| !names.iter().any(|n| name(p) == **n)) {
                if !out.is_empty() {
                    out.push(b'&');
                }
                out.extend_from_slice(p);
            }
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_what_they_keep() {
        let text = "/private/*.jpg\n$URL[/tab.html], +start&end\n*.png, -utm&ref\n";
        let rules = parse(text, Case::Sensitive).unwrap().rules;
        assert_eq!(rules.len(), 3);
        let k = |apply, path: &str, q: &str| {
            String::from_utf8(key_query(apply, &rules, path.as_bytes(), q.as_bytes()).into_owned())
                .unwrap()
        };
        // (ApplyQueryString, path, query, key's query)
        let table = [
            (true, "/a.html", "x=1&y=2", "x=1&y=2"),
            (false, "/a.html", "x=1&y=2", ""),
            (true, "/private/me.jpg", "token=9", ""),
            (false, "/private/me.jpg", "token=9", "token=9"),
            (true, "/tab.html", "end=2&x=1&start=1", "start=1&end=2"),
            (false, "/tab.html", "end=2&start=1", "start=1&end=2"),
            (true, "/i/a.png", "w=10&utm=x&ref=y&h=5", "w=10&h=5"),
            (true, "/i/a.png", "", ""),
            (true, "/tab.html", "", ""),
        ];
        for (apply, path, q, want) in table {
            assert_eq!(k(apply, path, q), want, "{apply} {path}?{q}");
        }
        for bad in [
            "/x, *a",
            "/x, +",
            "$HEADER[x], +a",
            "!URL[/x]",
            "/x, +a, 3",
            "/x, \u{e9}a",
            "/x, \u{1F600}",
        ] {
            assert!(parse(bad, Case::Sensitive).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn case_insensitive_rules_match_the_lowered_url() {
        let rules = parse("$URL[/Tab.HTML], +Start&END\n", Case::Insensitive)
            .unwrap()
            .rules;
        // key_url lower-cases the target before it asks key_query.
        let got = key_query(true, &rules, b"/tab.html", b"end=2&x=1&start=1");
        assert_eq!(&got[..], b"start=1&end=2");
        // A name listed twice keeps its parameters once.
        let rules = parse("/d, +a&b&a\n", Case::Sensitive).unwrap().rules;
        let got = key_query(true, &rules, b"/d", b"a=1&b=2&a=3");
        assert_eq!(&got[..], b"a=1&a=3&b=2");
    }
}
