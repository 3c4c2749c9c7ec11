//! Lines and fields of the STON `.txt` rule files (spec §0).
//!
//! One rule per line; `#` at the start of a line makes it a comment; `//`
//! preceded by whitespace (or at the start) begins a trailing comment; fields are
//! separated by `,` with surrounding whitespace ignored. A comma, `&` or `//`
//! inside a `$NAME[...]` or `!NAME[...]` bracket belongs to the bracket, which is
//! what lets `$RES[cache-control: no-cache, private]` (seed 002) be one field.

/// A non-comment line: its 1-based number and its text, trimmed, comments removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub no: u32,
    pub text: &'a str,
}

/// A `$NAME[` / `!NAME[` bracket that is never closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unclosed '[' (a '$NAME[' needs its ']')")]
pub struct Unclosed;

/// The rule lines of a file, skipping blank and comment lines.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().filter_map(|(i, raw)| {
        let no = u32::try_from(i.saturating_add(1)).unwrap_or(u32::MAX);
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            return None;
        }
        let t = strip_trailing_comment(t).trim();
        (!t.is_empty()).then_some(Line { no, text: t })
    })
}

/// Parses every rule line with `rule(line number, text)`. Every malformed
/// line is reported; any one fails the file.
pub(crate) fn parse_each<R, E: std::fmt::Display>(
    text: &str,
    mut rule: impl FnMut(u32, &str) -> Result<R, E>,
) -> Result<super::Parsed<R>, Vec<super::RuleDiag>> {
    let mut out = super::Parsed::default();
    let mut errors = Vec::new();
    for line in lines(text) {
        match rule(line.no, line.text) {
            Ok(r) => out.rules.push(r),
            Err(e) => errors.push(super::RuleDiag::new(line.no, e)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Walks `s`, calling `f(index, byte)` for every byte that lies outside the
/// condition brackets. Stops early when `f` returns false. Errors if a bracket
/// is left open at the end (only when the walk was not stopped).
pub(crate) fn walk_top(s: &str, mut f: impl FnMut(usize, u8) -> bool) -> Result<(), Unclosed> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        let c = b[i];
        if depth > 0 {
            match c {
                b'[' => depth += 1,
                b']' => depth -= 1,
                _ => {}
            }
            i += 1;
            continue;
        }
        if let Some(open) = bracket_open(b, i) {
            // The `$NAME` part is at top level; the bracket content is not.
            for (j, &cj) in b.iter().enumerate().take(open).skip(i) {
                if !f(j, cj) {
                    return Ok(());
                }
            }
            depth = 1;
            i = open + 1;
            continue;
        }
        if !f(i, c) {
            return Ok(());
        }
        i += 1;
    }
    if depth > 0 {
        Err(Unclosed)
    } else {
        Ok(())
    }
}

/// If `b[i..]` starts with `$NAME[` or `!NAME[` (NAME ASCII letters, possibly
/// `REQ.` style with a dot), the index of the `[`.
pub(crate) fn bracket_open(b: &[u8], i: usize) -> Option<usize> {
    if !matches!(b.get(i), Some(b'$' | b'!')) {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'.') {
        j += 1;
    }
    (j > i + 1 && b.get(j) == Some(&b'[')).then_some(j)
}

/// Index of the `]` that closes the `[` at `open` (nesting counted).
pub(crate) fn matching_close(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'[' => depth += 1,
            b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// Cuts a trailing `//` comment (spec §0 Decision): `//` outside brackets, at the
/// start or after whitespace, so `http://x` in a value is not a comment.
fn strip_trailing_comment(t: &str) -> &str {
    let b = t.as_bytes();
    let mut cut = None;
    // An open bracket here is reported by the field splitter, not hidden.
    let _ = walk_top(t, |i, c| {
        let starts = c == b'/' && b.get(i + 1) == Some(&b'/');
        let after_space = i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t';
        if starts && after_space {
            cut = Some(i);
            return false;
        }
        true
    });
    match cut {
        Some(i) => &t[..i],
        None => t,
    }
}

/// Splits a line into its `,`-separated fields, trimmed; empty fields are kept
/// (`*.xml, , 9`).
pub(crate) fn fields(line: &str) -> Result<Vec<&str>, Unclosed> {
    let mut out = Vec::with_capacity(4);
    let mut start = 0;
    walk_top(line, |i, c| {
        if c == b',' {
            out.push(line[start..i].trim());
            start = i + 1;
        }
        true
    })?;
    out.push(line[start..].trim());
    Ok(out)
}

/// Splits a condition on ` & ` (an `&` outside brackets with whitespace, or the
/// end of the text, on both sides), so a query string `?a=1&b=2` stays one
/// pattern and a dangling `&` leaves an empty term to report.
pub(crate) fn and_terms(cond: &str) -> Result<Vec<&str>, Unclosed> {
    let b = cond.as_bytes();
    let mut out = Vec::with_capacity(2);
    let mut start = 0;
    walk_top(cond, |i, c| {
        let ws = |x: Option<&u8>| matches!(x, Some(b' ' | b'\t'));
        let before = i == 0 || ws(b.get(i - 1));
        let after = i + 1 == b.len() || ws(b.get(i + 1));
        if c == b'&' && before && after {
            out.push(cond[start..i].trim());
            start = i + 1;
        }
        true
    })?;
    out.push(cond[start..].trim());
    Ok(out)
}

/// At most `max` characters of `s` for an error message, on a char boundary.
pub(crate) fn snippet(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<(u32, &str)> {
        lines(s).map(|l| (l.no, l.text)).collect()
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let f = "\u{feff}# head\n\n  /a, 1  \r\n\t# indented comment\n/b, 2 // trailing\n// whole\nhttp://x/y, 3\n";
        assert_eq!(
            texts(f),
            vec![(3, "/a, 1"), (5, "/b, 2"), (7, "http://x/y, 3")]
        );
    }

    #[test]
    fn fields_respect_brackets() {
        let cases: &[(&str, &[&str])] = &[
            ("a, b ,c", &["a", "b", "c"]),
            ("*.xml, , 9", &["*.xml", "", "9"]),
            (
                "$IP[1.1.1.1], $RES[cache-control: no-cache, private], append, 3xx",
                &[
                    "$IP[1.1.1.1]",
                    "$RES[cache-control: no-cache, private]",
                    "append",
                    "3xx",
                ],
            ),
            (
                "$URL[*], $RES[X: $REQ.[A, B]], set",
                &["$URL[*]", "$RES[X: $REQ.[A, B]]", "set"],
            ),
            ("/a[1,2].jpg, 5", &["/a[1", "2].jpg", "5"]),
            ("", &[""]),
        ];
        for (line, want) in cases {
            assert_eq!(fields(line).unwrap(), *want, "{line}");
        }
        assert_eq!(fields("$RES[x: a, b"), Err(Unclosed));
    }

    #[test]
    fn trailing_comment_inside_brackets_is_kept() {
        let t = texts("$URL[/a], $RES[Link: <a //b>], set // c");
        assert_eq!(t, vec![(1, "$URL[/a], $RES[Link: <a //b>], set")]);
    }

    #[test]
    fn and_terms_need_spaces() {
        assert_eq!(
            and_terms("$IP[1.2.3.4] & /a?x=1&y=2").unwrap(),
            vec!["$IP[1.2.3.4]", "/a?x=1&y=2"]
        );
        assert_eq!(
            and_terms("$HEADER[x: a & b] & !URL[/c]").unwrap(),
            vec!["$HEADER[x: a & b]", "!URL[/c]"]
        );
    }

    #[test]
    fn snippet_cuts_on_char_boundary() {
        let s = "한".repeat(100);
        let sn = snippet(&s);
        assert!(sn.ends_with("..."));
        assert_eq!(sn.chars().count(), 63);
    }
}
