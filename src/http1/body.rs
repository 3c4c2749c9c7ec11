//! Message-body decoders for both directions: Content-Length, chunked, and
//! read-until-close. They consume framing from a `BytesMut` and hand out the
//! payload as `Bytes` split off the same buffer, so no payload byte is copied.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size line (size + extensions) we accept.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes we read (and discard).
const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("malformed chunked encoding: {0}")]
    BadChunk(&'static str),
    #[error("body larger than the limit")]
    TooLarge,
    #[error("connection closed before the body was complete")]
    Incomplete,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Payload bytes, in order.
    Data(Bytes),
    /// The buffer holds no further complete piece: read more.
    NeedMore,
    /// The body is complete; bytes left in the buffer belong to the next message.
    Done,
}

#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    /// Delimited by the peer closing the connection (responses only).
    UntilClose,
}

impl BodyDecoder {
    pub fn length(n: u64) -> Self {
        BodyDecoder::Length { remaining: n }
    }
    pub fn chunked(max_total: u64) -> Self {
        BodyDecoder::Chunked(ChunkedDecoder::new(max_total))
    }

    /// Takes the next piece of payload out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        match self {
            BodyDecoder::Length { remaining } => {
                if *remaining == 0 {
                    return Ok(Decoded::Done);
                }
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*remaining).min(buf.len() as u64) as usize;
                *remaining -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            BodyDecoder::Chunked(c) => c.decode(buf),
            BodyDecoder::UntilClose => {
                if buf.is_empty() {
                    Ok(Decoded::NeedMore)
                } else {
                    Ok(Decoded::Data(buf.split().freeze()))
                }
            }
        }
    }

    /// The peer closed the connection: is that a clean end of this body?
    pub fn finish_on_eof(&self) -> Result<(), BodyError> {
        match self {
            BodyDecoder::Length { remaining: 0 } | BodyDecoder::UntilClose => Ok(()),
            BodyDecoder::Chunked(c) if c.is_done() => Ok(()),
            _ => Err(BodyError::Incomplete),
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(c) => c.is_done(),
            BodyDecoder::UntilClose => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailers,
    Done,
}

/// RFC 9112 §7.1 chunked decoding, strict about CRLF (lenient parsers are how
/// request smuggling happens) and bounded in every dimension.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    total: u64,
    max_total: u64,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(max_total: u64) -> Self {
        ChunkedDecoder {
            state: State::Size,
            total: 0,
            max_total,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(BodyError::BadChunk("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err(BodyError::BadChunk("chunk-size line too long"));
                    }
                    if nl == 0 || buf[nl - 1] != b'\r' {
                        return Err(BodyError::BadChunk("chunk-size line not ended by CRLF"));
                    }
                    let size = parse_chunk_size(&buf[..nl - 1])?;
                    let _ = buf.split_to(nl + 1);
                    if size == 0 {
                        self.state = State::Trailers;
                        continue;
                    }
                    self.total = self
                        .total
                        .checked_add(size)
                        .filter(|&t| t <= self.max_total)
                        .ok_or(BodyError::TooLarge)?;
                    self.state = State::Data(size);
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    self.state = if n as u64 == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n as u64)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(BodyError::BadChunk("chunk data not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::BadChunk("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if self.trailer_bytes + buf.len() > MAX_TRAILERS {
                            return Err(BodyError::BadChunk("trailers too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if nl == 0 || buf[nl - 1] != b'\r' {
                        return Err(BodyError::BadChunk("trailer line not ended by CRLF"));
                    }
                    self.trailer_bytes += nl + 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(BodyError::BadChunk("trailers too large"));
                    }
                    let _ = buf.split_to(nl + 1);
                    if nl == 1 {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

/// `1*HEXDIG [ BWS ; ext ]`; at most 15 hex digits so the size fits comfortably in u64.
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BodyError::BadChunk("missing chunk size"));
    }
    if digits > 15 {
        return Err(BodyError::TooLarge);
    }
    let rest = &line[digits..];
    let rest_trim = super::headers::trim(rest);
    if !rest_trim.is_empty() && rest_trim[0] != b';' {
        return Err(BodyError::BadChunk("invalid chunk size"));
    }
    if rest.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(BodyError::BadChunk("control byte in chunk extension"));
    }
    let s = std::str::from_utf8(&line[..digits])
        .map_err(|_| BodyError::BadChunk("invalid chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| BodyError::BadChunk("invalid chunk size"))
}

/// Writes the chunk-size line for a chunk of `len` bytes (`len` > 0).
pub fn chunk_header(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the payload.
    fn run(input: &[u8], step: usize, max: u64) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut d = ChunkedDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Done => return Ok((out, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(BodyError::Incomplete);
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_table() {
        type Case<'a> = (&'a [u8], Result<&'a [u8], BodyError>);
        let cases: Vec<Case> = vec![
            (b"5\r\nhello\r\n0\r\n\r\n", Ok(b"hello")),
            (
                b"5;ext=1\r\nhello\r\n6 ; x\r\n world\r\n0\r\n\r\n",
                Ok(b"hello world"),
            ),
            (
                b"A\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n",
                Ok(b"0123456789"),
            ),
            (b"0\r\n\r\n", Ok(b"")),
            (
                b"5\nhello\r\n0\r\n\r\n",
                Err(BodyError::BadChunk("chunk-size line not ended by CRLF")),
            ),
            (
                b"5\r\nhelloXX0\r\n\r\n",
                Err(BodyError::BadChunk("chunk data not followed by CRLF")),
            ),
            (b"z\r\n", Err(BodyError::BadChunk("missing chunk size"))),
            (
                b"5x\r\nhello\r\n",
                Err(BodyError::BadChunk("invalid chunk size")),
            ),
            (b"-5\r\n", Err(BodyError::BadChunk("missing chunk size"))),
            (b"ffffffffffffffffff\r\n", Err(BodyError::TooLarge)),
            (b"5\r\nhel", Err(BodyError::Incomplete)),
        ];
        for (input, want) in cases {
            for step in [1, 3, 1000] {
                let got = run(input, step, 1 << 20).map(|(o, _)| o);
                assert_eq!(
                    got,
                    want.clone().map(|w| w.to_vec()),
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn limit_and_leftover() {
        assert_eq!(
            run(b"8\r\n12345678\r\n0\r\n\r\n", 100, 7),
            Err(BodyError::TooLarge)
        );
        let (body, rest) = run(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1", 100, 10).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(rest, b"GET / HTTP/1.1");
    }

    #[test]
    fn length_and_close() {
        let mut d = BodyDecoder::length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Done);
        assert_eq!(&buf[..], b"def");
        assert!(d.finish_on_eof().is_ok());
        assert_eq!(
            BodyDecoder::length(3).finish_on_eof(),
            Err(BodyError::Incomplete)
        );
        assert!(BodyDecoder::UntilClose.finish_on_eof().is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = 88172645463325252u64;
        for _ in 0..20_000 {
            let mut v = Vec::new();
            for _ in 0..(s % 64) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let alphabet = b"0123456789abcdefxX;\r\n \t";
                v.push(alphabet[(s % alphabet.len() as u64) as usize]);
            }
            let _ = run(&v, 1 + (s % 5) as usize, 1 << 16);
        }
    }
}
