//! The shard's gzip compressors (libdeflate), one per level in use, made on
//! first use: a body is compressed once, when its gzip variant is filled, and
//! never on a hit (GZ-3). They are thread-locals: a shard is a thread, so each
//! shard has its own, and a fill task on the shard reaches them without a lock.
//!
//! Compression runs on the shard's thread. So that clients cannot turn it into
//! a CPU sink (a new query string is a new object), a shard spends at most
//! [`BUDGET_PER_SECOND`] of each second compressing; past it, objects are
//! stored as they came.

use libdeflater::{CompressionLvl, Compressor};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// Compression time a shard may spend per second.
pub const BUDGET_PER_SECOND: Duration = Duration::from_millis(250);

/// Why a body was not compressed: cairn's fault, and the object is then
/// served and stored as it came; a retry fails the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GzipError {
    #[error("gzip level {0} is outside 1..=9")]
    Level(u8),
    #[error("libdeflate could not compress the body")]
    Compress,
    #[error("the shard's compression budget for this second is spent")]
    Busy,
}

pub struct Gzipper {
    by_level: RefCell<[Option<Compressor>; 9]>,
    /// The start of the current one-second window and the time spent in it.
    window: Cell<(Instant, Duration)>,
    budget: Duration,
}

impl Default for Gzipper {
    fn default() -> Self {
        Gzipper::with_budget(BUDGET_PER_SECOND)
    }
}

thread_local! {
    static SHARD: Gzipper = Gzipper::default();
}

/// Compresses with this shard's (thread's) compressors and budget.
pub fn compress(level: u8, input: &[u8]) -> Result<Vec<u8>, GzipError> {
    SHARD.with(|g| g.compress(level, input))
}

impl Gzipper {
    pub fn with_budget(budget: Duration) -> Gzipper {
        Gzipper {
            by_level: RefCell::new(Default::default()),
            window: Cell::new((Instant::now(), Duration::ZERO)),
            budget,
        }
    }

    /// `input` as one gzip member at `level` (1..=9), unless this second's
    /// budget is spent.
    pub fn compress(&self, level: u8, input: &[u8]) -> Result<Vec<u8>, GzipError> {
        if !(1..=9).contains(&level) {
            return Err(GzipError::Level(level));
        }
        let now = Instant::now();
        let (since, spent) = self.window.get();
        let spent = if now.duration_since(since) >= Duration::from_secs(1) {
            self.window.set((now, Duration::ZERO));
            Duration::ZERO
        } else {
            spent
        };
        if spent >= self.budget {
            return Err(GzipError::Busy);
        }
        let mut slots = self.by_level.borrow_mut();
        let c = slots[usize::from(level - 1)].get_or_insert_with(|| {
            Compressor::new(CompressionLvl::new(i32::from(level)).expect("1..=9 is valid"))
        });
        let mut out = vec![0u8; c.gzip_compress_bound(input.len())];
        let n = c
            .gzip_compress(input, &mut out)
            .map_err(|_| GzipError::Compress)?;
        out.truncate(n);
        let (since, spent) = self.window.get();
        self.window.set((since, spent + now.elapsed()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn what_is_compressed_decompresses_to_itself_at_every_level() {
        let g = Gzipper::default();
        let css: Vec<u8> = (0..32 * 1024)
            .map(|i| b"body { color: red; margin: 0 }\n"[i % 31])
            .collect();
        for level in 1..=9 {
            let gz = g.compress(level, &css).unwrap();
            assert!(gz.len() < css.len() / 4, "level {level}: {}", gz.len());
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, css, "level {level}");
        }
        assert_eq!(g.compress(0, b"x"), Err(GzipError::Level(0)));
        // A spent budget refuses until the next second.
        let tight = Gzipper::with_budget(Duration::from_nanos(1));
        assert!(tight.compress(6, &css).is_ok(), "the first one runs");
        assert_eq!(tight.compress(6, &css), Err(GzipError::Busy));
        assert_eq!(g.compress(10, b"x"), Err(GzipError::Level(10)));
        // Empty and incompressible inputs still make valid members.
        for input in [&b""[..], &(0..=255u8).collect::<Vec<_>>()] {
            let gz = g.compress(6, input).unwrap();
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, input);
        }
    }
}
