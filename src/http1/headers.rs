//! Header-name facts shared by the request and response paths.

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
/// `Proxy-Connection` is not standard but old clients still send it.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Iterates the comma-separated tokens of a list header (`Connection`, `Transfer-Encoding`),
/// trimmed, skipping empty elements as RFC 9110 §5.6.1 asks.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// Where a byte leaves the quoted-string state of a list value (quoted-pairs
/// honoured): one scanner for splitting and for the unclosed-quote check.
#[derive(Default)]
struct Quotes {
    quoted: bool,
    escaped: bool,
}

impl Quotes {
    /// Takes `b`; true if it is a list separator (a comma outside quotes).
    fn separator(&mut self, b: u8) -> bool {
        if self.escaped {
            self.escaped = false;
        } else if self.quoted && b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.quoted = !self.quoted;
        } else {
            return b == b',' && !self.quoted;
        }
        false
    }
}

/// Like [`tokens`], but a comma inside a quoted string (`no-cache="a, b"`,
/// quoted-pairs honoured) does not split: for lists whose items take arguments.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut q = Quotes::default();
        let end = rest
            .iter()
            .position(|&b| q.separator(b))
            .unwrap_or(rest.len());
        let item = trim(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or_default();
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Does `v` end inside a quoted string (quoted-pairs counted)?
pub fn ends_in_quote(v: &[u8]) -> bool {
    let mut q = Quotes::default();
    v.iter().for_each(|&b| {
        q.separator(b);
    });
    q.quoted
}

/// Trims optional whitespace (SP / HTAB) from both ends.
pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// True if the `Connection` header value names `name` among its tokens.
pub fn connection_names(connection: &[u8], name: &[u8]) -> bool {
    tokens(connection).any(|t| t.eq_ignore_ascii_case(name))
}

/// Parses a `Content-Length` value strictly: digits only, no sign, no overflow.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Reason phrase for the statuses cairn itself produces (and common origin ones).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_table() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"0", Some(0)),
            (b" 42 ", Some(42)),
            (b"18446744073709551615", None), // 20 digits: longer than we accept
            (b"9999999999999999999", Some(9_999_999_999_999_999_999)),
            (b"", None),
            (b"-1", None),
            (b"+1", None),
            (b"1,1", None),
            (b"0x10", None),
            (b"1 2", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_content_length(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn connection_tokens() {
        assert!(connection_names(b"keep-alive, Close", b"close"));
        assert!(connection_names(b" ,,Upgrade ,", b"upgrade"));
        assert!(!connection_names(b"closed", b"close"));
        assert!(is_hop_by_hop(b"Transfer-Encoding"));
        assert!(!is_hop_by_hop(b"Content-Length"));
    }
}

/// `n` in decimal, without the formatting machinery: response heads and log
/// lines write numbers on every request.
pub fn write_decimal(out: &mut impl bytes::BufMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// Where `part` lies inside `whole`, as a range, checked. httparse hands back
/// slices of the buffer, except for a missing reason phrase (and similar empty
/// values), which is a static `""` outside it: such a slice, or anything that is
/// not inside `whole`, becomes an empty range instead of wrapping arithmetic.
pub fn span(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let (base, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    match p.checked_sub(base) {
        Some(start) if start <= whole.len() && part.len() <= whole.len() - start => {
            start..start + part.len()
        }
        _ => 0..0,
    }
}

#[cfg(test)]
mod span_tests {
    use super::span;

    #[test]
    fn spans_inside_and_outside() {
        let whole = b"HTTP/1.1 200 OK\r\n";
        assert_eq!(span(whole, &whole[9..12]), 9..12);
        assert_eq!(span(whole, &whole[..0]), 0..0);
        assert_eq!(span(whole, &whole[whole.len()..]), whole.len()..whole.len());
        // A static empty string somewhere else in memory.
        assert_eq!(span(whole, "".as_bytes()), 0..0);
        let other = b"elsewhere";
        assert_eq!(span(whole, other), 0..0);
    }
}
