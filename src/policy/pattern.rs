//! `*` patterns of the STON rule files (spec §0).
//!
//! `*` matches any run of bytes, `/` included; every other byte is literal (there
//! is no `?`, no class, no escape). URLs match case-sensitively; header values
//! and MIME types ASCII-case-insensitively.
//!
//! Matching allocates nothing and never backtracks: the text before the first
//! `*` must be a prefix, the text after the last `*` a suffix, and the pieces in
//! between are found leftmost-first in order. For `*`-only globs leftmost-first
//! is exact, so the cost is bounded by `input length x piece length` whatever the
//! number of stars.

/// How a pattern compares letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Sensitive,
    /// ASCII letters only; other bytes compare exactly.
    Insensitive,
}

/// A compiled `*` pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern as written, for messages.
    src: Box<str>,
    /// The pattern with runs of `*` collapsed; lowercased when case-insensitive.
    pat: Box<[u8]>,
    /// Bytes before the first `*` (all of `pat` when there is none).
    prefix: usize,
    /// Bytes after the last `*` (0 when there is no star).
    suffix: usize,
    star: bool,
    case: Case,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pattern({:?}, {:?})", self.src, self.case)
    }
}

impl Pattern {
    /// Compiles `src`. Any string is a valid pattern (the empty one matches only
    /// the empty input).
    pub fn new(src: &str, case: Case) -> Pattern {
        let mut pat = Vec::with_capacity(src.len());
        for &b in src.as_bytes() {
            if b == b'*' && pat.last() == Some(&b'*') {
                continue;
            }
            pat.push(match case {
                Case::Sensitive => b,
                Case::Insensitive => b.to_ascii_lowercase(),
            });
        }
        let first = pat.iter().position(|&b| b == b'*');
        let last = pat.iter().rposition(|&b| b == b'*');
        let (prefix, suffix, star) = match (first, last) {
            (Some(f), Some(l)) => (f, pat.len() - l - 1, true),
            _ => (pat.len(), 0, false),
        };
        Pattern {
            src: src.into(),
            pat: pat.into_boxed_slice(),
            prefix,
            suffix,
            star,
            case,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.src
    }

    pub fn case(&self) -> Case {
        self.case
    }

    /// True for a pattern that matches everything (`*`, `**`).
    pub fn matches_all(&self) -> bool {
        &*self.pat == b"*"
    }

    /// Whether `input` matches the whole pattern.
    pub fn matches(&self, input: &[u8]) -> bool {
        let p = &*self.pat;
        if !self.star {
            return self.eq(p, input);
        }
        let (pre, suf) = (&p[..self.prefix], &p[p.len() - self.suffix..]);
        if input.len() < pre.len() + suf.len() {
            return false;
        }
        if !self.eq(pre, &input[..pre.len()]) || !self.eq(suf, &input[input.len() - suf.len()..]) {
            return false;
        }
        let mut window = &input[pre.len()..input.len() - suf.len()];
        // Between the first and the last star (empty when there is one star).
        let last_star = p.len() - self.suffix - 1;
        let middle = p.get(self.prefix + 1..last_star).unwrap_or_default();
        for piece in middle.split(|&b| b == b'*').filter(|s| !s.is_empty()) {
            match self.find(piece, window) {
                Some(at) => window = &window[at + piece.len()..],
                None => return false,
            }
        }
        true
    }

    fn eq(&self, pat: &[u8], s: &[u8]) -> bool {
        match self.case {
            Case::Sensitive => pat == s,
            Case::Insensitive => {
                pat.len() == s.len()
                    && pat
                        .iter()
                        .zip(s)
                        .all(|(&a, &b)| a == b.to_ascii_lowercase())
            }
        }
    }

    /// Leftmost position of `piece` in `hay`.
    fn find(&self, piece: &[u8], hay: &[u8]) -> Option<usize> {
        if piece.len() > hay.len() {
            return None;
        }
        let first = piece[0];
        (0..=hay.len() - piece.len()).find(|&i| {
            let c = match self.case {
                Case::Sensitive => hay[i],
                Case::Insensitive => hay[i].to_ascii_lowercase(),
            };
            c == first && self.eq(piece, &hay[i..i + piece.len()])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p, Case::Sensitive).matches(s.as_bytes())
    }
    fn mi(p: &str, s: &str) -> bool {
        Pattern::new(p, Case::Insensitive).matches(s.as_bytes())
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            // EXP-3 examples (seed 002 expires.txt).
            ("/test.jpg", "/test.jpg", true),
            ("/test.jpg", "/test.jpgx", false),
            ("/test.jpg", "/Test.jpg", false),
            ("*", "", true),
            ("*", "/anything/at/all?q=1", true),
            ("/test/*.dat", "/test/a.dat", true),
            ("/test/*.dat", "/test/a/b/c.dat", true), // `*` crosses `/`
            ("/test/*.dat", "/test/.dat", true),
            ("/test/*.dat", "/test/a.dat?x", false),
            ("*.jpg", "/a/b.jpg", true),
            ("*.jpg", "/a/b.JPG", false),
            // MOD-6 examples (seed 002 headers.txt).
            ("/source/*.zip", "/source/x.zip", true),
            ("/source/*", "/source/", true),
            ("/source/*", "/sourcex", false),
            ("/*.mp4", "/v/clip.mp4", true),
            ("/secure/*.dat", "/secure/a.dat", true),
            // Multiple stars and edge cases.
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*a*", "bab", true),
            ("*a*", "bbb", false),
            ("**/x", "/x", true),
            ("a**", "a", true),
            ("*ab*ab*", "abab", true),
            ("*ab*ab*", "aba", false),
            ("*aab", "aaab", true),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("/한글/*", "/한글/파일", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(m(p, s), *want, "{p:?} ~ {s:?}");
        }
    }

    #[test]
    fn case_insensitive() {
        let cases: &[(&str, &str, bool)] = &[
            ("*IE6*", "Mozilla/4.0 (compatible; MSIE 6.0; ie6)", true),
            ("*IE6*", "Mozilla/5.0", false),
            ("image/*", "IMAGE/GIF", true),
            ("application/octet-stream", "Application/Octet-Stream", true),
            ("gzip", "GZIP", true),
            ("é", "É", false), // ASCII folding only
        ];
        for (p, s, want) in cases {
            assert_eq!(mi(p, s), *want, "{p:?} ~ {s:?}");
        }
    }

    #[test]
    fn matches_all_and_source() {
        assert!(Pattern::new("**", Case::Sensitive).matches_all());
        assert!(!Pattern::new("*a", Case::Sensitive).matches_all());
        assert_eq!(Pattern::new("/A*", Case::Insensitive).as_str(), "/A*");
    }

    /// Many stars against a long input finish quickly (no exponential backtracking).
    #[test]
    fn many_stars_are_linear() {
        let input = "a".repeat(200_000);
        let p = format!("{}b", "*a".repeat(64));
        let start = std::time::Instant::now();
        assert!(!m(&p, &input));
        let p = format!("{}*", "a*".repeat(64));
        assert!(m(&p, &input));
        let p = format!("*{}*", "a".repeat(40) + "b");
        assert!(!m(&p, &input));
        let p = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c*";
        assert!(!mi(p, &input));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Leftmost-first agrees with a reference backtracking matcher.
    #[test]
    fn agrees_with_reference() {
        fn reference(p: &[u8], s: &[u8]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((b'*', rest)) => (0..=s.len()).any(|i| reference(rest, &s[i..])),
                Some((c, rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
            }
        }
        let alphabet = b"ab*";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut x = seed;
            let mut next = |n: usize| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as usize % n
            };
            let pl = next(7);
            let sl = next(8);
            let p: Vec<u8> = (0..pl).map(|_| alphabet[next(3)]).collect();
            let s: Vec<u8> = (0..sl).map(|_| alphabet[next(2)]).collect();
            let ps = std::str::from_utf8(&p).unwrap();
            assert_eq!(
                Pattern::new(ps, Case::Sensitive).matches(&s),
                reference(&p, &s),
                "{ps:?} ~ {:?}",
                std::str::from_utf8(&s).unwrap()
            );
        }
    }
}
