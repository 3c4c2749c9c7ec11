//! The shard's gzip compressors (libdeflate), one per level in use, made on
//! first use: a body is compressed once, when its gzip variant is filled, and
//! never on a hit (GZ-3).

use libdeflater::{CompressionLvl, Compressor};
use std::cell::RefCell;

/// Why a body was not compressed: cairn's fault, and the object is then
/// served and stored as it came; a retry fails the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GzipError {
    #[error("gzip level {0} is outside 1..=9")]
    Level(u8),
    #[error("libdeflate could not compress the body")]
    Compress,
}

#[derive(Default)]
pub struct Gzipper {
    by_level: RefCell<[Option<Compressor>; 9]>,
}

impl Gzipper {
    /// `input` as one gzip member at `level` (1..=9).
    pub fn compress(&self, level: u8, input: &[u8]) -> Result<Vec<u8>, GzipError> {
        if !(1..=9).contains(&level) {
            return Err(GzipError::Level(level));
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
