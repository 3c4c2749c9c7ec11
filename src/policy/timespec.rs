//! STON time values (spec §0): `86400`, `30min`, `1 day 12 hours`, `2 weeks`.
//!
//! A bare number is seconds. Otherwise the value is a sequence of
//! `<number><unit>` terms (space between number and unit optional), summed.
//! Units, case-insensitive, singular or plural: `year` (365 days), `month`
//! (30 days), `week`, `day`, `hour`, `minute`/`min`, `second`/`sec`.
//! Arithmetic is checked: a value that does not fit in u64 seconds is an error,
//! never a wrap or a panic.

/// Why a time value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("empty time value")]
    Empty,
    #[error("expected a number in time value {0:?}")]
    ExpectedNumber(String),
    #[error("unknown time unit {0:?} (year, month, week, day, hour, min, sec)")]
    UnknownUnit(String),
    #[error("time value {0:?} is too large")]
    Overflow(String),
    #[error("time value {0:?} mixes a bare number with unit terms")]
    BareInList(String),
}

const UNITS: &[(&str, u64)] = &[
    ("year", 31_536_000),
    ("years", 31_536_000),
    ("month", 2_592_000),
    ("months", 2_592_000),
    ("week", 604_800),
    ("weeks", 604_800),
    ("day", 86_400),
    ("days", 86_400),
    ("hour", 3_600),
    ("hours", 3_600),
    ("minute", 60),
    ("minutes", 60),
    ("min", 60),
    ("mins", 60),
    ("second", 1),
    ("seconds", 1),
    ("sec", 1),
    ("secs", 1),
];

fn unit_seconds(word: &str) -> Option<u64> {
    UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(word))
        .map(|&(_, s)| s)
}

/// Parses a STON time value into seconds.
pub fn parse_seconds(s: &str) -> Result<u64, TimeError> {
    use super::rulefile::snippet;
    let s = s.trim();
    if s.is_empty() {
        return Err(TimeError::Empty);
    }
    let b = s.as_bytes();
    let ws = |c: u8| c == b' ' || c == b'\t';
    let mut i = 0;
    let mut total: u64 = 0;
    let mut terms = 0u32;
    let mut bare = false;
    while i < b.len() {
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let digits_start = i;
        let mut n: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b[i] - b'0')))
                .ok_or_else(|| TimeError::Overflow(snippet(s)))?;
            i += 1;
        }
        if i == digits_start {
            return Err(TimeError::ExpectedNumber(snippet(s)));
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        // Anything else right after the unit ("1.5", "2d!") is not a time value.
        if i < b.len() && !ws(b[i]) && !b[i].is_ascii_digit() {
            return Err(TimeError::ExpectedNumber(snippet(s)));
        }
        let unit = &s[unit_start..i];
        let mult = if unit.is_empty() {
            bare = true;
            1
        } else {
            unit_seconds(unit).ok_or_else(|| TimeError::UnknownUnit(snippet(unit)))?
        };
        terms += 1;
        let term = n
            .checked_mul(mult)
            .ok_or_else(|| TimeError::Overflow(snippet(s)))?;
        total = total
            .checked_add(term)
            .ok_or_else(|| TimeError::Overflow(snippet(s)))?;
    }
    if bare && terms > 1 {
        return Err(TimeError::BareInList(snippet(s)));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §0 and the seed-002 expires.txt examples.
    #[test]
    fn valid_values() {
        let cases: &[(&str, u64)] = &[
            ("86400", 86_400),
            ("0", 0),
            ("  3600 ", 3_600),
            ("60 sec", 60),
            ("90 sec", 90),
            ("30 min", 1_800),
            ("30min", 1_800),
            ("1 years", 31_536_000),
            ("1year", 31_536_000),
            ("7 weeks", 7 * 604_800),
            ("2 weeks", 1_209_600),
            ("1 day 12 hours", 129_600),
            ("1day12hours", 129_600),
            ("1 month", 2_592_000),
            ("2 months 1 second", 5_184_001),
            ("1 DAY", 86_400),
            ("5 Minutes 5 Secs", 305),
            ("1 minute", 60),
            ("3 mins", 180),
            ("1\tday", 86_400),
            ("18446744073709551615", u64::MAX),
            ("000012", 12),
        ];
        for (s, want) in cases {
            assert_eq!(parse_seconds(s), Ok(*want), "{s:?}");
        }
    }

    #[test]
    fn invalid_values() {
        type Check = fn(&TimeError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, TimeError::Empty)),
            ("   ", |e| matches!(e, TimeError::Empty)),
            ("day", |e| matches!(e, TimeError::ExpectedNumber(_))),
            ("-5", |e| matches!(e, TimeError::ExpectedNumber(_))),
            ("+5", |e| matches!(e, TimeError::ExpectedNumber(_))),
            ("1.5 days", |e| matches!(e, TimeError::ExpectedNumber(_))),
            ("10s", |e| matches!(e, TimeError::UnknownUnit(_))),
            ("1 fortnight", |e| matches!(e, TimeError::UnknownUnit(_))),
            ("1 day 30", |e| matches!(e, TimeError::BareInList(_))),
            ("1 2", |e| matches!(e, TimeError::BareInList(_))),
            ("18446744073709551616", |e| {
                matches!(e, TimeError::Overflow(_))
            }),
            ("99999999999999999999999999", |e| {
                matches!(e, TimeError::Overflow(_))
            }),
            ("584942417356 years", |e| {
                matches!(e, TimeError::Overflow(_))
            }),
            ("5 1 sec", |e| matches!(e, TimeError::BareInList(_))),
            ("18446744073709551615 sec 1 sec", |e| {
                matches!(e, TimeError::Overflow(_))
            }),
            ("١٢", |e| matches!(e, TimeError::ExpectedNumber(_))),
            ("1 日", |e| matches!(e, TimeError::ExpectedNumber(_))),
            ("#ORG_MAXAGE", |e| matches!(e, TimeError::ExpectedNumber(_))),
        ];
        for (s, ok) in cases {
            let e = parse_seconds(s).expect_err(s);
            assert!(ok(&e), "{s:?} gave {e:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> = "0123456789 \tdayhoursminsecweekyearmonth.,-+#한é\u{feff}"
            .chars()
            .collect();
        let mut garbage = crate::fuzz::Garbage::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let s = garbage.string(&alphabet, 40);
            let _ = parse_seconds(&s);
        }
    }
}
