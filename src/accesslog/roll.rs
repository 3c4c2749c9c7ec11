//! When a log file rolls, what the rolled file is called and which rolled files
//! retention keeps: pure functions of the time and sizes passed in.

use crate::config::Roll;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// The first roll time after `opened_ms` for a time-based roll: the next multiple
/// of `minutes` since midnight (UTC), and never later than the next midnight (the
/// log rolls at least once a day, as STON's does).
pub fn next_time_roll(opened_ms: u64, minutes: u32) -> u64 {
    let unit = u64::from(minutes.max(1)) * MINUTE_MS;
    let midnight = opened_ms - opened_ms % DAY_MS;
    let since = opened_ms - midnight;
    let next = midnight + (since / unit + 1) * unit;
    next.min(midnight + DAY_MS)
}

/// Must the file roll before `incoming` more bytes are written at `now_ms`?
/// An empty file never rolls (a line longer than the limit still gets written).
pub fn due(roll: Roll, opened_ms: u64, size: u64, now_ms: u64, incoming: u64) -> bool {
    if size == 0 {
        return false;
    }
    let by_time = |m: u32| now_ms >= next_time_roll(opened_ms, m);
    let by_size = |b: u64| size.saturating_add(incoming) > b;
    match roll {
        Roll::Time { minutes } => by_time(minutes),
        Roll::Size { bytes } => by_size(bytes),
        Roll::Both { minutes, bytes } => by_time(minutes) || by_size(bytes),
    }
}

/// `access_YYYYMMDD_HHMM.log` named for when the file was opened; size-rolled
/// files carry seconds too (STON's names).
pub fn rolled_name(stem: &str, roll: Roll, opened_ms: u64) -> String {
    let secs = opened_ms / 1000;
    let (y, m, d) = crate::httpdate::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let (h, mi, s) = (t / 3600, t / 60 % 60, t % 60);
    match roll {
        Roll::Time { .. } => format!("{stem}_{y:04}{m:02}{d:02}_{h:02}{mi:02}.log"),
        _ => format!("{stem}_{y:04}{m:02}{d:02}_{h:02}{mi:02}{s:02}.log"),
    }
}

/// Of the rolled files' names (`stem_…log`), those past `retention`, oldest first.
/// Names sort by time because the time fields are fixed-width.
pub fn expired(stem: &str, names: &[String], retention: u32) -> Vec<String> {
    let prefix = format!("{stem}_");
    let mut rolled: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".log"))
        .collect();
    rolled.sort();
    let keep = retention as usize;
    let extra = rolled.len().saturating_sub(keep);
    rolled.into_iter().take(extra).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000; // 2023-11-14 22:13:20 UTC

    #[test]
    fn time_rolls_fall_on_multiples_of_the_unit_and_at_midnight() {
        let midnight = T0 - T0 % DAY_MS;
        // (minutes, expected next roll relative to midnight)
        let table = [
            (10u32, 22 * 3_600_000 + 20 * MINUTE_MS),
            (60, 23 * 3_600_000),
            (1440, DAY_MS),
            (700, 23 * 3_600_000 + 20 * MINUTE_MS), // 700 min: 11:40, 23:20, then midnight
        ];
        for (m, want) in table {
            assert_eq!(next_time_roll(T0, m) - midnight, want, "unit {m}");
        }
        assert_eq!(
            next_time_roll(midnight + 23 * 3_600_000 + 30 * MINUTE_MS, 700),
            midnight + DAY_MS
        );
    }

    #[test]
    fn due_by_time_size_or_both() {
        let t = Roll::Time { minutes: 10 };
        let s = Roll::Size { bytes: 1000 };
        let b = Roll::Both {
            minutes: 10,
            bytes: 1000,
        };
        let later = next_time_roll(T0, 10);
        // (roll, size, now, incoming, due)
        let table = [
            (t, 10, T0, 10, false),
            (t, 10, later, 10, true),
            (t, 0, later, 10, false), // empty file: nothing to roll
            (s, 990, T0, 10, false),
            (s, 991, T0, 10, true),
            (s, 0, T0, 5000, false),
            (b, 10, later, 1, true),
            (b, 999, T0, 2, true),
            (b, 10, T0, 2, false),
        ];
        for (roll, size, now, inc, want) in table {
            assert_eq!(due(roll, T0, size, now, inc), want, "{roll:?} {size} {inc}");
        }
    }

    #[test]
    fn names_and_retention() {
        assert_eq!(
            rolled_name("access", Roll::Time { minutes: 10 }, T0),
            "access_20231114_2213.log"
        );
        assert_eq!(
            rolled_name("access", Roll::Size { bytes: 1 }, T0),
            "access_20231114_221320.log"
        );
        let names: Vec<String> = [
            "access.log",
            "access_20231114_2213.log",
            "access_20231113_2213.log",
            "access_20231114_2213_1.log",
            "other_20231101_0000.log",
            "access_20231112_0000.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expired("access", &names, 2),
            vec!["access_20231112_0000.log", "access_20231113_2213.log"]
        );
        assert!(expired("access", &names, 10).is_empty());
    }
}
