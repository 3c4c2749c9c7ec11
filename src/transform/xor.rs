//! A keyed XOR keyed by absolute offset: the simplest transform with the property
//! DRM needs (byte i depends on i and the key only). Used by tests to prove the
//! seam under Range and coalesced fills; not a cipher.

use super::SendTransform;
use bytes::Bytes;

pub struct Xor {
    key: Vec<u8>,
}

impl Xor {
    pub fn new(key: &[u8]) -> Xor {
        assert!(!key.is_empty(), "an XOR key cannot be empty");
        Xor { key: key.to_vec() }
    }

    /// Byte `i` of the object XORed with the key byte for `i`.
    pub fn byte(&self, i: u64, b: u8) -> u8 {
        b ^ self.key[(i % self.key.len() as u64) as usize]
    }
}

impl SendTransform for Xor {
    fn apply(&self, offset: u64, piece: Bytes) -> Bytes {
        let out: Vec<u8> = piece
            .iter()
            .enumerate()
            .map(|(i, &b)| self.byte(offset + i as u64, b))
            .collect();
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_at_any_offset_match_the_whole() {
        let x = Xor::new(b"k3y");
        let body: Vec<u8> = (0..=255u8).collect();
        let whole = x.apply(0, Bytes::from(body.clone()));
        for (start, end) in [(0, 1), (1, 7), (5, 200), (254, 256)] {
            let part = x.apply(start as u64, Bytes::copy_from_slice(&body[start..end]));
            assert_eq!(&part[..], &whole[start..end], "{start}..{end}");
        }
        assert_eq!(x.apply(0, whole), Bytes::from(body));
    }
}
