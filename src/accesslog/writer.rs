//! The logger thread: drains every shard's queue, appends to the files, rolls
//! and prunes them. The only place the access log touches the disk.

use super::format::W3C_FIELDS;
use super::roll;
use super::Batch;
use crate::config::{LogForm, LogTarget};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the thread sleeps when every queue is empty.
const IDLE_POLL: Duration = Duration::from_millis(20);

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
    target: Arc<LogTarget>,
}

/// Owns the receivers until [`Logger::spawn`] moves them onto the thread.
pub struct Logger {
    receivers: Vec<Receiver<Batch>>,
    stop: Arc<AtomicBool>,
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
    pub(super) fn new(receivers: Vec<Receiver<Batch>>) -> Logger {
        Logger {
            receivers,
            stop: Arc::new(AtomicBool::new(false)),
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
                while let Ok(b) = rx.try_recv() {
                    got = true;
                    if let Err(e) = write_batch(&mut files, &b) {
                        // Once a minute per file, not once a batch.
                        let now = now_ms();
                        let last = warned.entry(b.target.path.clone()).or_insert(0);
                        if now.saturating_sub(*last) > 60_000 {
                            *last = now;
                            log::error!(
                                "access log {}: {e}; {} lines lost",
                                b.target.path.display(),
                                b.lines
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
            // Idle: roll files whose time has come even if no line arrives.
            let now = now_ms();
            for o in files.values_mut() {
                if roll::due(o.target.roll, o.opened_ms, o.size, now, 0) {
                    let _ = roll_file(o, now);
                }
            }
            std::thread::sleep(IDLE_POLL);
        }
    }
}

fn write_batch(files: &mut HashMap<PathBuf, Open>, b: &Batch) -> std::io::Result<()> {
    let open = match files.get_mut(&b.target.path) {
        Some(o) => {
            // A reload may have changed how this file rolls or reads.
            if *o.target != *b.target {
                o.target = b.target.clone();
            }
            o
        }
        None => {
            let o = open_live(&b.target, now_ms())?;
            files.entry(b.target.path.clone()).or_insert(o)
        }
    };
    // Line by line, so that a roll by size falls between two lines.
    let mut rest = &b.bytes[..];
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        let now = now_ms();
        if roll::due(
            open.target.roll,
            open.opened_ms,
            open.size,
            now,
            line.len() as u64,
        ) {
            roll_file(open, now)?;
        }
        open.file.write_all(line)?;
        open.size += line.len() as u64;
        rest = tail;
    }
    Ok(())
}

/// Opens (appending) the live file, writing the W3C header if it is new.
fn open_live(t: &Arc<LogTarget>, now: u64) -> std::io::Result<Open> {
    if let Some(dir) = t.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(&t.path)?;
    let mut size = file.metadata()?.len();
    if size == 0 {
        size = write_header(&mut file, t.form, now)?;
    }
    Ok(Open {
        file,
        opened_ms: now,
        size,
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
    std::fs::rename(&path, &dest)?;
    let fresh = open_live(&o.target, now)?;
    *o = fresh;
    let names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for old in roll::expired(&stem, &names, o.target.retention) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(())
}
