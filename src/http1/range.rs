//! `Range: bytes=…` against a stored object of known length (RFC 9110 §14, STON RG-1):
//! single and multiple ranges, suffix and open-ended forms, an end past EOF clamped,
//! a start past EOF → 416, anything malformed ignored (full 200).

use std::ops::Range;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeReply {
    /// No (usable) Range: the full representation, 200.
    Full,
    /// 206 with these byte ranges (one: Content-Range; several: multipart/byteranges).
    Partial(Vec<Range<u64>>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// At most this many ranges are honoured; more is treated as malformed (a request
/// for thousands of tiny ranges is an amplification attack, not a download).
const MAX_RANGES: usize = 32;

pub fn evaluate(header: Option<&[u8]>, len: u64) -> RangeReply {
    let Some(h) = header else {
        return RangeReply::Full;
    };
    let Ok(h) = std::str::from_utf8(h) else {
        return RangeReply::Full;
    };
    let h = h.trim();
    let Some(spec) = h
        .strip_prefix("bytes=")
        .or_else(|| h.strip_prefix("Bytes="))
    else {
        return RangeReply::Full; // other units are ignored
    };
    let mut out = Vec::new();
    let mut any = false;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        any = true;
        if out.len() >= MAX_RANGES {
            return RangeReply::Full;
        }
        let Some((a, b)) = part.split_once('-') else {
            return RangeReply::Full;
        };
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                s.parse().ok()
            }
        };
        let r = if a.is_empty() {
            // Suffix: the last N bytes.
            let Some(n) = num(b) else {
                return RangeReply::Full;
            };
            if n == 0 {
                continue; // unsatisfiable on its own
            }
            len.saturating_sub(n)..len
        } else {
            let Some(start) = num(a) else {
                return RangeReply::Full;
            };
            let end = if b.is_empty() {
                len
            } else {
                let Some(e) = num(b) else {
                    return RangeReply::Full;
                };
                if e < start {
                    return RangeReply::Full; // invalid: ignore the header
                }
                e.saturating_add(1).min(len)
            };
            if start >= len {
                continue; // unsatisfiable on its own
            }
            start..end
        };
        if !r.is_empty() {
            out.push(r);
        }
    }
    if !any {
        return RangeReply::Full;
    }
    if out.is_empty() {
        return RangeReply::Unsatisfiable;
    }
    RangeReply::Partial(coalesce(out))
}

/// Overlapping or adjacent ranges are merged (RFC 9110 §14.2), so `0-,0-,0-…`
/// sends the object once, not once per copy. Disjoint ranges keep the order the
/// client asked for.
fn coalesce(ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).all(|w| w[1].start > w[0].end) {
        return ranges;
    }
    let mut out: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // ranges lists are what we test
    fn rg_1_table() {
        let p = |v: Vec<Range<u64>>| RangeReply::Partial(v);
        let cases: Vec<(Option<&str>, RangeReply)> = vec![
            (None, RangeReply::Full),
            (Some("bytes=0-99"), p(vec![0..100])),
            (Some("bytes=900-"), p(vec![900..1000])),
            (Some("bytes=-100"), p(vec![900..1000])),
            (Some("bytes=-5000"), p(vec![0..1000])),
            (Some("bytes=990-2000"), p(vec![990..1000])), // end past EOF clamped
            (
                Some("bytes=0-0, 10-19 ,-1"),
                p(vec![0..1, 10..20, 999..1000]),
            ),
            (Some("bytes=1000-"), RangeReply::Unsatisfiable), // start past EOF
            (Some("bytes=5000-6000"), RangeReply::Unsatisfiable),
            (Some("bytes=5000-6000, 0-1"), p(vec![0..2])),
            (Some("bytes=-0"), RangeReply::Unsatisfiable),
            (Some("bytes=10-5"), RangeReply::Full), // malformed: ignored
            (Some("bytes=a-b"), RangeReply::Full),
            (Some("bytes=1-2-3"), RangeReply::Full),
            (Some("items=0-1"), RangeReply::Full),
            (Some("bytes="), RangeReply::Full),
            (Some("bytes=,,"), RangeReply::Full),
            (Some("bytes=99999999999999999999-"), RangeReply::Full),
            (Some("bytes=+1-2"), RangeReply::Full),
            // Overlapping or adjacent ranges are merged; disjoint ones keep their order.
            (Some("bytes=0-,0-,0-,0-"), p(vec![0..1000])),
            (Some("bytes=0-9,5-14"), p(vec![0..15])),
            (Some("bytes=10-19,0-9"), p(vec![0..20])),
            (
                Some("bytes=500-599,0-9,-1,505-510"),
                p(vec![0..10, 500..600, 999..1000]),
            ),
            (Some("bytes=500-599,0-9"), p(vec![500..600, 0..10])),
        ];
        for (h, want) in cases {
            assert_eq!(evaluate(h.map(str::as_bytes), 1000), want, "{h:?}");
        }
        let many = format!(
            "bytes={}",
            (0..40)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(evaluate(Some(many.as_bytes()), 1000), RangeReply::Full);
        assert_eq!(evaluate(Some(b"bytes=0-"), 0), RangeReply::Unsatisfiable);
    }
}
