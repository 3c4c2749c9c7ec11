//! `compression.txt`: which URLs cairn compresses for gzip clients (spec §5,
//! GZ-1..GZ-5).
//!
//! ```text
//! # {URL pattern}[, {method|no}[, {level}]]
//! /sample.css, no       // not compressed
//! *.css                 // the element's Method and Level
//! *.htm, gzip           // gzip at the element's Level
//! *.xml, , 9            // the element's Method at level 9
//! *.js, gzip, 5
//! ```
//!
//! First match wins; a URL that matches no line is not compressed.

use super::pattern::{Case, Pattern};
use super::rulefile::{self, snippet, Unclosed};
use super::{Parsed, RuleDiag};

/// What a matching line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// `no`: this URL is never compressed.
    No,
    /// gzip, at this level or (`None`) the element's.
    Gzip(Option<u8>),
}

/// One line of compression.txt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionRule {
    pub line: u32,
    pub url: Pattern,
    pub action: Compress,
}

/// Why a compression.txt line is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("expected '{{URL pattern}}[, {{method|no}}[, {{level}}]]', found {0} field(s)")]
    FieldCount(usize),
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("the URL pattern is empty")]
    EmptyPattern,
    #[error("compression.txt matches URLs only ({0:?}): $URL[...] or a bare pattern")]
    NotUrl(String),
    #[error("method {0:?}: only gzip (or no) is supported (GZ-1)")]
    Method(String),
    #[error("level {0:?}: gzip levels are 1 to 9 (GZ-1)")]
    Level(String),
    #[error("'no' takes no level")]
    LevelWithNo,
}

/// Parses compression.txt. Every malformed line is reported; any one fails the file.
pub fn parse(text: &str) -> Result<Parsed<CompressionRule>, Vec<RuleDiag>> {
    rulefile::parse_each(text, |no, text| {
        parse_rule(text).map(|(url, action)| CompressionRule {
            line: no,
            url,
            action,
        })
    })
}

fn parse_rule(text: &str) -> Result<(Pattern, Compress), CompressionError> {
    let f = rulefile::fields(text)?;
    if !(1..=3).contains(&f.len()) {
        return Err(CompressionError::FieldCount(f.len()));
    }
    let url = url_pattern(f[0])?;
    let method = f.get(1).copied().unwrap_or("");
    let level = match f.get(2).copied().unwrap_or("") {
        "" => None,
        l => match l.parse::<u8>() {
            Ok(n @ 1..=9) => Some(n),
            _ => return Err(CompressionError::Level(snippet(l))),
        },
    };
    let action = if method.eq_ignore_ascii_case("no") {
        if level.is_some() {
            return Err(CompressionError::LevelWithNo);
        }
        Compress::No
    } else if method.is_empty() || method.eq_ignore_ascii_case("gzip") {
        Compress::Gzip(level)
    } else {
        return Err(CompressionError::Method(snippet(method)));
    };
    Ok((url, action))
}

/// `$URL[pattern]` or a bare pattern; other conditions are per request, and a
/// compressed object is shared by every client.
fn url_pattern(field: &str) -> Result<Pattern, CompressionError> {
    let inner = match field.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("$url[") && field.ends_with(']') => {
            &field[5..field.len() - 1]
        }
        _ if field.starts_with('$') || field.starts_with('!') => {
            return Err(CompressionError::NotUrl(snippet(field)))
        }
        _ => field,
    };
    let inner = inner.trim();
    if inner.is_empty() {
        return Err(CompressionError::EmptyPattern);
    }
    Ok(Pattern::new(inner, Case::Sensitive))
}

/// What the rules decide for a URL (path and query as requested): the first
/// line whose pattern matches decides; no line, no compression. A pattern
/// without `?` is matched against the path alone, so `*.css` covers
/// `/a.css?v=2` but not `/big.bin?.css`; one with `?` against path and query.
pub fn decide(rules: &[CompressionRule], url: &[u8]) -> Compress {
    rules
        .iter()
        .find(|r| r.url.matches(subject(&r.url, url)))
        .map_or(Compress::No, |r| r.action)
}

/// What a pattern is matched against (see [`decide`]).
pub fn subject<'a>(pattern: &Pattern, url: &'a [u8]) -> &'a [u8] {
    if pattern.as_str().contains('?') {
        url
    } else {
        url.split(|&b| b == b'?').next().unwrap_or(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's own example (seed 002), with its `//` comments.
    const SEED: &str = "# /svc/www.example.com/compression.txt\n\
        # 구분자는 콤마( , ) 이다.\n\
        \n\
        /sample.css, no       // 압축하지 않는다.\n\
        *.css                 // *.css 조건\n\
        *.htm, gzip           // gzip\n\
        *.xml, , 9            // Level 9\n\
        *.js, gzip, 5         // gzip 5\n";

    #[test]
    fn the_seed_example_decides_as_the_manual_says() {
        let rules = parse(SEED).unwrap().rules;
        assert_eq!(rules.len(), 5);
        assert_eq!(rules[0].line, 4);
        for (url, want) in [
            (&b"/sample.css"[..], Compress::No),
            (b"/other.css", Compress::Gzip(None)),
            (b"/a/b/other.css?v=3", Compress::Gzip(None)),
            (b"/index.htm", Compress::Gzip(None)),
            (b"/feed.xml", Compress::Gzip(Some(9))),
            (b"/app.js", Compress::Gzip(Some(5))),
            (b"/logo.png", Compress::No),
            (b"/sample.css?x", Compress::No),
            (b"/A.CSS", Compress::No), // URLs are case-sensitive (spec §0)
            // A query does not make a URL something else.
            (b"/big.bin?.css", Compress::No),
        ] {
            assert_eq!(
                decide(&rules, url),
                want,
                "{}",
                String::from_utf8_lossy(url)
            );
        }
    }

    #[test]
    fn first_match_wins_and_url_wrappers_are_accepted() {
        let q = parse("/app?v=*, gzip, 2\n").unwrap().rules;
        assert_eq!(
            decide(&q, b"/app?v=3"),
            Compress::Gzip(Some(2)),
            "a pattern with ?"
        );
        assert_eq!(decide(&q, b"/app"), Compress::No);
        let rules = parse("$URL[/static/*], no\n*, gzip, 1\n").unwrap().rules;
        assert_eq!(decide(&rules, b"/static/a.css"), Compress::No);
        assert_eq!(decide(&rules, b"/a.css"), Compress::Gzip(Some(1)));
        assert_eq!(
            decide(&[], b"/a.css"),
            Compress::No,
            "no rules, no compression"
        );
    }

    #[test]
    fn malformed_lines_are_reported_with_their_line_numbers() {
        let text = "*.css, gzip, 10\n\
            *.js, brotli\n\
            $HEADER[user-agent: *], gzip\n\
            *.txt, no, 5\n\
            *.a, gzip, 5, extra\n\
            , gzip\n\
            *.ok\n\
            *.b, gzip, 0\n\
            *.c, gzip, x\n\
            $URL[/unclosed, gzip\n";
        let errs = parse(text).unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|d| d.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6, 8, 9, 10], "{errs:?}");
        assert!(errs[0].reason.contains("1 to 9"), "{}", errs[0].reason);
        assert!(errs[1].reason.contains("only gzip"), "{}", errs[1].reason);
        assert!(errs[2].reason.contains("URLs only"), "{}", errs[2].reason);
    }
}
