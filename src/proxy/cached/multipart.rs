//! A multipart/byteranges body (RFC 9110 §14.6) as pieces: part heads are small
//! new buffers, part bodies are slices of the stored body (no copy), each with
//! its offset into the object so that a send-side transform sees object bytes only.

use bytes::Bytes;
use std::ops::Range;

pub const BOUNDARY: &str = "cairn-7d3f9a1c5e2b";

/// One piece of the body: `Some(offset)` for object bytes, `None` for framing.
pub type Piece = (Option<u64>, Bytes);

/// The pieces, the total length and the `Content-Type` value.
pub fn multipart(
    content_type: Option<&[u8]>,
    body: &Bytes,
    ranges: &[Range<u64>],
) -> (Vec<Piece>, u64, String) {
    let ctype = content_type.map(|c| String::from_utf8_lossy(c).trim().to_string());
    let len = body.len();
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut total = 0u64;
    for r in ranges {
        let mut h = format!("\r\n--{BOUNDARY}\r\n");
        if let Some(ct) = &ctype {
            h.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        h.push_str(&format!(
            "Content-Range: bytes {}-{}/{len}\r\n\r\n",
            r.start,
            r.end - 1
        ));
        total += h.len() as u64 + (r.end - r.start);
        parts.push((None, Bytes::from(h)));
        parts.push((Some(r.start), body.slice(r.start as usize..r.end as usize)));
    }
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    total += tail.len() as u64;
    parts.push((None, Bytes::from(tail)));
    (
        parts,
        total,
        format!("multipart/byteranges; boundary={BOUNDARY}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_total_and_offsets() {
        let body = Bytes::from_static(b"0123456789");
        // (content type, ranges, expected body)
        type Case<'a> = (Option<&'a [u8]>, Vec<Range<u64>>, String);
        let table: [Case; 2] = [
            (
                Some(b"text/plain"),
                vec![0..2, 5..10],
                format!("\r\n--{BOUNDARY}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\r\n--{BOUNDARY}\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-9/10\r\n\r\n56789\r\n--{BOUNDARY}--\r\n"),
            ),
            (
                None,
                vec![9..10, 0..1],
                format!("\r\n--{BOUNDARY}\r\nContent-Range: bytes 9-9/10\r\n\r\n9\r\n--{BOUNDARY}\r\nContent-Range: bytes 0-0/10\r\n\r\n0\r\n--{BOUNDARY}--\r\n"),
            ),
        ];
        for (ct, ranges, want) in table {
            let (parts, total, ctype) = multipart(ct, &body, &ranges);
            let joined: Vec<u8> = parts.iter().flat_map(|(_, b)| b.to_vec()).collect();
            assert_eq!(String::from_utf8(joined).unwrap(), want);
            assert_eq!(total, want.len() as u64);
            assert!(ctype.ends_with(BOUNDARY));
            let offsets: Vec<u64> = parts.iter().filter_map(|(o, _)| *o).collect();
            assert_eq!(offsets, ranges.iter().map(|r| r.start).collect::<Vec<_>>());
            // Part bodies are slices of the stored body, not copies.
            for (o, b) in &parts {
                if let Some(o) = o {
                    assert_eq!(b.as_ptr(), body[*o as usize..].as_ptr());
                }
            }
        }
    }
}
