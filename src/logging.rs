//! A small stderr logger: `2026-11-22T10:00:00.123Z WARN  [shard-0] message`.
//! Lines are written with one `write` each, so lines from shards never interleave.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Panics seen in any thread (connection tasks included), for the exit summary and metrics.
pub static PANICS: AtomicU64 = AtomicU64::new(0);

struct Logger {
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs() as i64;
        let (y, mo, d) = crate::httpdate::civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        let thread = std::thread::current();
        let line = format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z {:<5} [{}] {}\n",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            now.subsec_millis(),
            r.level(),
            thread.name().unwrap_or("main"),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

/// Installs the logger and a panic hook that logs panics at error level and counts them.
pub fn init(level: log::LevelFilter) {
    let _ = log::set_boxed_logger(Box::new(Logger { level }));
    log::set_max_level(level);
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        // One line: the location, then the message.
        let msg = panic_message(info.payload());
        match info.location() {
            Some(l) => log::error!("panic at {}:{}: {msg}", l.file(), l.line()),
            None => log::error!("panic: {msg}"),
        }
    }));
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// `error`, `warn`, `info`, `debug`, `trace` (case-insensitive).
pub fn parse_level(s: &str) -> Option<log::LevelFilter> {
    s.parse().ok()
}
