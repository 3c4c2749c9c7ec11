//! RC4 as a send-side transform (DRM-3): byte k of the response is source byte
//! k XOR keystream byte k. RC4 cannot seek, so the transform keeps its state
//! and position: consecutive pieces continue the keystream, a Range starts by
//! discarding keystream up to its first byte, and only a piece before the
//! position restarts from byte 0.

use super::SendTransform;
use bytes::Bytes;
use std::cell::RefCell;

/// RC4's state after the key schedule, and how far the keystream has run.
#[derive(Clone)]
struct State {
    s: [u8; 256],
    i: u8,
    j: u8,
    pos: u64,
}

impl State {
    fn new(key: &[u8]) -> State {
        let mut s = [0u8; 256];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut j = 0u8;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, usize::from(j));
        }
        State {
            s,
            i: 0,
            j: 0,
            pos: 0,
        }
    }

    fn next(&mut self) -> u8 {
        self.i = self.i.wrapping_add(1);
        self.j = self.j.wrapping_add(self.s[usize::from(self.i)]);
        self.s.swap(usize::from(self.i), usize::from(self.j));
        let t = self.s[usize::from(self.i)].wrapping_add(self.s[usize::from(self.j)]);
        self.pos += 1;
        self.s[usize::from(t)]
    }
}

/// One response's RC4 keystream. Per request: it is not shared.
pub struct Rc4 {
    start: State,
    at: RefCell<State>,
}

impl Rc4 {
    /// `key` must be 1..=256 bytes (the config allows 5..=256, DRM-3).
    pub fn new(key: &[u8]) -> Rc4 {
        assert!(
            !key.is_empty() && key.len() <= 256,
            "RC4 key of 1..=256 bytes"
        );
        let start = State::new(key);
        Rc4 {
            at: RefCell::new(start.clone()),
            start,
        }
    }

    /// XORs `buf`, which starts `offset` bytes into the stream, in place.
    pub fn apply_at(&self, offset: u64, buf: &mut [u8]) {
        let mut st = self.at.borrow_mut();
        if offset < st.pos {
            *st = self.start.clone();
        }
        while st.pos < offset {
            st.next();
        }
        for b in buf {
            *b ^= st.next();
        }
    }
}

impl SendTransform for Rc4 {
    fn apply(&self, offset: u64, piece: Bytes) -> Bytes {
        let mut out = piece.to_vec();
        self.apply_at(offset, &mut out);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_keystream_is_rfc_6229s() {
        // RFC 6229, 40-bit key 0x0102030405: offsets 0, 16, 240 and 4096.
        let rc4 = Rc4::new(&hex("0102030405"));
        for (offset, want) in [
            (0u64, "b2396305f03dc027ccc3524a0a1118a8"),
            (16, "6982944f18fc82d589c403a47a0d0919"),
            (240, "28cb1132c96ce286421dcaadb8b69eae"),
            (4096, "ff25b58995996707e51fbdf08b34d875"),
        ] {
            let mut z = [0u8; 16];
            rc4.apply_at(offset, &mut z);
            assert_eq!(z.to_vec(), hex(want), "offset {offset}");
        }
    }

    #[test]
    fn pieces_at_any_offset_agree_with_the_whole() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = {
            let mut d = data.clone();
            Rc4::new(b"secret key").apply_at(0, &mut d);
            d
        };
        let rc4 = Rc4::new(b"secret key");
        // In order, skipping ahead, then back to the start.
        for (a, b) in [
            (0usize, 100usize),
            (100, 1000),
            (2500, 3000),
            (10, 20),
            (4999, 5000),
        ] {
            let mut piece = data[a..b].to_vec();
            rc4.apply_at(a as u64, &mut piece);
            assert_eq!(piece, whole[a..b], "{a}..{b}");
        }
    }
}
