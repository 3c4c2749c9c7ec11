//! The logger thread: drains every shard's queue, appends to the files, rolls
//! and prunes them. The only place the access log touches the disk.

use super::format::W3C_FIELDS;
use super::roll;
use super::Batch;
use crate::config::{LogForm, LogTarget, Roll};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the thread sleeps when every queue is empty.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Batches taken from one shard's queue before the next shard's turn.
const FAIR_SHARE: usize = 16;
/// A file nothing was written to for this long is closed (it reopens on demand),
/// so a reload that renames a vhost does not keep its old file open forever.
const IDLE_CLOSE_MS: u64 = 10 * 60_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Open {
    file: File,
    opened_ms: u64,
    size: u64,
    /// Lines written since the file was opened: a file with only its header
    /// never rolls (else an idle log would roll every interval, and retention
    /// would delete the real ones).
    lines: u64,
    last_write_ms: u64,
    target: Arc<LogTarget>,
}

/// Owns the receivers until [`Logger::spawn`] moves them onto the thread.
pub struct Logger {
    receivers: Vec<Receiver<Batch>>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
}

/// Stops the logger after it has written everything already queued.
pub struct LoggerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoggerHandle {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Logger {
    pub(super) fn new(receivers: Vec<Receiver<Batch>>, lost: Arc<AtomicU64>) -> Logger {
        Logger {
            receivers,
            stop: Arc::new(AtomicBool::new(false)),
            lost,
        }
    }

    pub fn spawn(self) -> std::io::Result<LoggerHandle> {
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || self.run())?;
        Ok(LoggerHandle {
            stop,
            thread: Some(thread),
        })
    }

    fn run(self) {
        let mut files: HashMap<PathBuf, Open> = HashMap::new();
        let mut warned: HashMap<PathBuf, u64> = HashMap::new();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let mut got = false;
            for rx in &self.receivers {
                for b in rx.try_iter().take(FAIR_SHARE) {
                    got = true;
                    let lost = write_batch(&mut files, &b);
                    if let Err((e, lines)) = lost {
                        self.lost.fetch_add(lines, Ordering::Relaxed);
                        // Once a minute per file, not once a batch.
                        let now = now_ms();
                        let last = warned.entry(b.target.path.clone()).or_insert(0);
                        if now.saturating_sub(*last) > 60_000 {
                            *last = now;
                            log::error!(
                                "access log {}: {e}; {lines} lines lost",
                                b.target.path.display()
                            );
                        }
                    }
                }
            }
            if got {
                continue;
            }
            if stopping {
                return;
            }
            // Idle: roll files whose time has come even if no line arrives, and
            // close the ones nobody writes to any more.
            let now = now_ms();
            files.retain(|_, o| {
                if idle_roll_due(o, now) {
                    if let Err(e) = roll_file(o, now) {
                        log::error!("access log {}: roll failed: {e}", o.target.path.display());
                        return false;
                    }
                }
                now.saturating_sub(o.last_write_ms) < IDLE_CLOSE_MS
            });
            std::thread::sleep(IDLE_POLL);
        }
    }
}

/// A time roll with nothing new to roll: never (a header-only file stays).
fn idle_roll_due(o: &Open, now: u64) -> bool {
    o.lines > 0 && roll::due(o.target.roll, o.opened_ms, o.size, now, 0)
}

/// Appends a batch, rolling between lines where the file must roll. On an error
/// the file is forgotten (the next batch opens it again) and the lines not
/// written are returned.
fn write_batch(files: &mut HashMap<PathBuf, Open>, b: &Batch) -> Result<(), (std::io::Error, u64)> {
    let now = now_ms();
    let open = match files.get_mut(&b.target.path) {
        Some(o) => {
            // A reload may have changed how this file rolls or reads.
            if *o.target != *b.target {
                o.target = b.target.clone();
            }
            o
        }
        None => {
            let o = open_live(&b.target, now).map_err(|e| (e, b.lines))?;
            files.entry(b.target.path.clone()).or_insert(o)
        }
    };
    let mut rest = &b.bytes[..];
    let mut written = 0u64;
    let r = (|| {
        while !rest.is_empty() {
            let first = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            if open.lines > 0
                && roll::due(
                    open.target.roll,
                    open.opened_ms,
                    open.size,
                    now,
                    first as u64,
                )
            {
                roll_file(open, now)?;
            }
            // As many whole lines as fit before the next roll, in one write.
            let room = match open.target.roll {
                Roll::Size { bytes } | Roll::Both { bytes, .. } => {
                    bytes.saturating_sub(open.size).max(first as u64) as usize
                }
                Roll::Time { .. } => rest.len(),
            };
            let end = if room >= rest.len() {
                rest.len()
            } else {
                memchr::memrchr(b'\n', &rest[..room]).map_or(first, |i| i + 1)
            };
            let (run, tail) = rest.split_at(end);
            open.file.write_all(run)?;
            let n = memchr::memchr_iter(b'\n', run).count() as u64;
            open.size += run.len() as u64;
            open.lines += n;
            written += n;
            rest = tail;
        }
        Ok(())
    })();
    open.last_write_ms = now;
    r.map_err(|e: std::io::Error| {
        files.remove(&b.target.path);
        (e, b.lines.saturating_sub(written))
    })
}

/// Opens (appending) the live file, writing the W3C header if it is new.
fn open_live(t: &Arc<LogTarget>, now: u64) -> std::io::Result<Open> {
    if let Some(dir) = t.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(&t.path)?;
    let meta = file.metadata()?;
    let mut size = meta.len();
    // A file that already holds lines (reopened after an idle close or a restart)
    // keeps its age, so that its time roll (midnight, say) still happens.
    let (mut opened_ms, mut lines) = (now, 0);
    if size == 0 {
        size = write_header(&mut file, t.form, now)?;
    } else if let Ok(created) = meta.created().or_else(|_| meta.modified()) {
        opened_ms = created
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(now)
            .min(now);
        lines = 1;
    }
    Ok(Open {
        file,
        opened_ms,
        size,
        lines,
        last_write_ms: now,
        target: t.clone(),
    })
}

fn write_header(file: &mut File, form: LogForm, now: u64) -> std::io::Result<u64> {
    if form != LogForm::Ston {
        return Ok(0);
    }
    let secs = now / 1000;
    let (y, m, d) = crate::httpdate::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let head = format!(
        "#Software: cairn/{}\n#Version: 1.0\n#Date: {y:04}.{m:02}.{d:02} {:02}:{:02}:{:02}\n{W3C_FIELDS}\n",
        crate::VERSION,
        t / 3600,
        t / 60 % 60,
        t % 60
    );
    file.write_all(head.as_bytes())?;
    Ok(head.len() as u64)
}

/// Renames the live file to its rolled name, opens a fresh one, prunes old ones.
fn roll_file(o: &mut Open, now: u64) -> std::io::Result<()> {
    let path = o.target.path.clone();
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("access")
        .to_string();
    let name = roll::rolled_name(&stem, o.target.roll, o.opened_ms);
    let mut dest = dir.join(&name);
    let mut n = 1;
    while dest.exists() {
        dest = dir.join(format!("{}_{n}.log", name.trim_end_matches(".log")));
        n += 1;
    }
    o.file.flush()?;
    if let Err(e) = std::fs::rename(&path, &dest) {
        // Cannot roll (a read-only directory, say): keep appending, and try again
        // only after another full interval or size.
        log::error!("access log {}: cannot roll: {e}; appending", path.display());
        o.opened_ms = now;
        o.lines = 0;
        o.size = 0;
        return Ok(());
    }
    let fresh = open_live(&o.target, now)?;
    *o = fresh;
    // The roll is done; a failed prune is reported, never a reason to drop lines.
    let names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) => {
            log::error!(
                "access log {}: cannot list for retention: {e}",
                dir.display()
            );
            return Ok(());
        }
    };
    for old in roll::expired(&stem, &names, o.target.retention) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path, roll: Roll) -> Arc<LogTarget> {
        Arc::new(LogTarget {
            path: dir.join("v/access.log"),
            form: LogForm::Ston,
            roll,
            retention: 100,
            local: true,
            xff: crate::config::XffLog::On,
        })
    }

    fn batch(t: &Arc<LogTarget>, lines: std::ops::Range<u32>) -> Batch {
        let mut bytes = Vec::new();
        for i in lines.clone() {
            bytes.extend_from_slice(format!("line {i:04} {}\n", "x".repeat(80)).as_bytes());
        }
        Batch {
            target: t.clone(),
            bytes,
            lines: lines.len() as u64,
        }
    }

    #[test]
    fn size_rolls_fall_between_lines_and_lose_none() {
        let dir = std::env::temp_dir().join(format!("cairn-logw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = target(&dir, Roll::Size { bytes: 2048 });
        let mut files = HashMap::new();
        write_batch(&mut files, &batch(&t, 0..40)).unwrap();
        write_batch(&mut files, &batch(&t, 40..100)).unwrap();
        let mut all = Vec::new();
        for e in std::fs::read_dir(dir.join("v")).unwrap().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(text.len() <= 2048, "{}: {}", e.path().display(), text.len());
            assert!(text.starts_with("#Software: cairn/"));
            all.extend(
                text.lines()
                    .filter(|l| l.starts_with("line"))
                    .map(str::to_string),
            );
        }
        all.sort();
        assert_eq!(all.len(), 100);
        all.dedup();
        assert_eq!(all.len(), 100, "no line written twice");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_header_only_file_never_rolls_when_idle() {
        let dir = std::env::temp_dir().join(format!("cairn-logi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = target(&dir, Roll::Time { minutes: 1 });
        let o = open_live(&t, 0).unwrap();
        assert!(o.size > 0, "the W3C header is written");
        let later = 3_600_000;
        assert!(!idle_roll_due(&o, later));
        let o = Open { lines: 1, ..o };
        assert!(idle_roll_due(&o, later));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
