//! The little JSON cairn writes (management replies): string escaping, and the
//! purge reply of PRG-3. Writing only; cairn never parses JSON.

use std::fmt::Write;

/// `s` as a JSON string, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// STON's reply envelope: `{"version":…,"method":…,"status":…,"result":…}`
/// (`result` is JSON already).
pub fn reply(method: &str, status: &str, result: &str) -> String {
    format!(
        "{{\"version\":{},\"method\":{},\"status\":{},\"result\":{}}}\n",
        string(crate::VERSION),
        string(method),
        string(status),
        result
    )
}

/// The result of a purge (PRG-3): objects, their bytes, milliseconds taken.
pub fn purge_result(count: u64, size: u64, ms: u64) -> String {
    format!("{{\"Count\":{count},\"Size\":{size},\"Time\":{ms}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
        assert_eq!(string("ü/x"), "\"ü/x\"");
        let r = reply("purge", "OK", &purge_result(2, 10, 0));
        assert!(
            r.contains(r#""method":"purge","status":"OK","result":{"Count":2,"Size":10,"Time":0}"#)
        );
    }
}
