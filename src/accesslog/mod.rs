//! The access log (LOG-1), the exchange's last phase. A shard formats each line
//! into a per-target buffer of its own (no lock, no syscall); full buffers go to
//! the logger thread through this shard's bounded queue. A shard never waits for
//! the disk: when its queue is full the batch is dropped and its lines counted.

pub mod format;
pub mod roll;
mod writer;

pub use format::Entry;
pub use writer::{Logger, LoggerHandle};

use crate::config::LogTarget;
use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;

/// A shard hands a buffer to the logger once it holds this much.
const BATCH_BYTES: usize = 32 * 1024;
/// Batches a shard's queue holds before it drops (4 MiB per shard).
const QUEUE_BATCHES: usize = 128;

/// Lines for one log file, whole lines only.
pub struct Batch {
    pub target: Arc<LogTarget>,
    pub bytes: Vec<u8>,
    pub lines: u64,
}

/// The shards' ends of their queues (index = shard id).
pub struct LogQueues {
    senders: Vec<Option<SyncSender<Batch>>>,
    /// Lines the logger could not write (disk errors), as opposed to lines the
    /// shards dropped on a full queue (their own counters).
    pub lost: Arc<AtomicU64>,
}

impl LogQueues {
    /// Queues with no logger behind them: every batch is dropped and counted.
    pub fn disconnected(shards: usize) -> LogQueues {
        LogQueues {
            senders: vec![None; shards],
            lost: Arc::default(),
        }
    }

    /// One bounded queue per shard, and the logger that drains them all.
    pub fn channel(shards: usize) -> (LogQueues, Logger) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
                (Some(tx), rx)
            })
            .unzip();
        let lost = Arc::new(AtomicU64::new(0));
        (
            LogQueues {
                senders,
                lost: lost.clone(),
            },
            Logger::new(receivers, lost),
        )
    }

    pub fn sender(&self, shard: usize) -> Option<SyncSender<Batch>> {
        self.senders.get(shard).cloned().flatten()
    }
}

/// One shard's line buffers, one per log file it has written to recently.
pub struct ShardLog {
    tx: Option<SyncSender<Batch>>,
    bufs: RefCell<Vec<Batch>>,
}

impl ShardLog {
    pub fn new(tx: Option<SyncSender<Batch>>) -> ShardLog {
        ShardLog {
            tx,
            bufs: RefCell::new(Vec::new()),
        }
    }

    /// Appends one line for `target` (written by `line`, newline included).
    /// Returns the lines dropped because the queue was full.
    pub fn write(&self, target: &Arc<LogTarget>, line: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let mut bufs = self.bufs.borrow_mut();
        let i = match bufs.iter().position(|b| Arc::ptr_eq(&b.target, target)) {
            Some(i) => i,
            None => {
                bufs.push(Batch {
                    target: target.clone(),
                    bytes: Vec::with_capacity(BATCH_BYTES + 1024),
                    lines: 0,
                });
                bufs.len() - 1
            }
        };
        let b = &mut bufs[i];
        line(&mut b.bytes);
        b.lines += 1;
        if b.bytes.len() < BATCH_BYTES {
            return 0;
        }
        let full = std::mem::replace(
            b,
            Batch {
                target: target.clone(),
                bytes: Vec::with_capacity(BATCH_BYTES + 1024),
                lines: 0,
            },
        );
        drop(bufs);
        self.send(full)
    }

    /// Sends every non-empty buffer; returns the lines dropped.
    pub fn flush(&self) -> u64 {
        let pending: Vec<Batch> = self
            .bufs
            .borrow_mut()
            .drain(..)
            .filter(|b| b.lines > 0)
            .collect();
        pending.into_iter().map(|b| self.send(b)).sum()
    }

    fn send(&self, b: Batch) -> u64 {
        let lines = b.lines;
        match &self.tx {
            Some(tx) => match tx.try_send(b) {
                Ok(()) => 0,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => lines,
            },
            None => lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogForm, Roll};

    fn target(name: &str) -> Arc<LogTarget> {
        Arc::new(LogTarget {
            path: name.into(),
            form: LogForm::Ston,
            roll: Roll::Time { minutes: 1440 },
            retention: 1,
            local: true,
            xff: crate::config::XffLog::On,
        })
    }

    #[test]
    fn a_full_queue_drops_and_counts_whole_batches() {
        let (tx, rx) = mpsc::sync_channel(1);
        let log = ShardLog::new(Some(tx));
        let (a, b) = (target("a"), target("b"));
        assert_eq!(log.write(&a, |o| o.extend_from_slice(b"1\n")), 0);
        assert_eq!(log.write(&b, |o| o.extend_from_slice(b"2\n")), 0);
        assert_eq!(log.write(&a, |o| o.extend_from_slice(b"3\n")), 0);
        // Two targets, one queue slot: the second batch is refused and counted.
        assert_eq!(log.flush(), 1);
        let got = rx.try_recv().unwrap();
        assert_eq!((got.bytes.as_slice(), got.lines), (&b"1\n3\n"[..], 2));
        // A batch goes out by itself once it is big enough.
        let line = vec![b'x'; 1000];
        let mut dropped = 0;
        for _ in 0..40 {
            dropped += log.write(&a, |o| {
                o.extend_from_slice(&line);
                o.push(b'\n')
            });
        }
        assert_eq!(dropped, 0);
        assert!(rx.try_recv().unwrap().lines >= 32);
        // No logger at all: everything is counted as dropped.
        let none = ShardLog::new(None);
        none.write(&a, |o| o.push(b'\n'));
        assert_eq!(none.flush(), 1);
    }
}
