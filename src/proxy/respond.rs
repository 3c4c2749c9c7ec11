//! Responses cairn writes itself (errors), and small shared pieces of response heads.

use crate::http1::headers::reason;
use crate::http1::keepalive::Decision;
use crate::net::{Conn, IoError};
use bytes::Bytes;
use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest a client may take to accept response bytes before we give up on it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

thread_local! {
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends `Date: <now>` (formatted at most once a second per shard).
pub fn write_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, crate::httpdate::format(now));
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// The head and body of an error response: a small HTML page (none for 404 from an
/// unknown vhost, per spec, and none for HEAD).
/// `extra`: more header lines (`Via`, `Location`).
pub fn error_response(status: u16, ka: Decision, with_body: bool, extra: &[u8]) -> Bytes {
    let text = reason(status);
    let body = if with_body {
        format!("<html>\r\n<head><title>{status} {text}</title></head>\r\n<body>\r\n<center><h1>{status} {text}</h1></center>\r\n<hr><center>cairn</center>\r\n</body>\r\n</html>\r\n")
    } else {
        String::new()
    };
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {text}\r\n").as_bytes());
    write_date(&mut out);
    if with_body {
        out.extend_from_slice(b"Content-Type: text/html\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(extra);
    ka.write_headers(&mut out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Bytes::from(out)
}

/// Sends an error response; `no_body` for HEAD requests and the empty-bodied 404.
/// Boxed: it is rare, and inline it would enlarge every connection's future.
pub fn send_error<'a>(
    conn: &'a Conn,
    status: u16,
    ka: Decision,
    no_body: bool,
    extra: &'a [u8],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), IoError>> + 'a>> {
    Box::pin(async move {
        conn.write_all(error_response(status, ka, !no_body, extra), SEND_TIMEOUT)
            .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape() {
        let r = error_response(502, Decision::Close, true, b"");
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 502 Bad Gateway\r\nDate: "));
        assert!(s.contains("Connection: Close\r\n"));
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let empty = error_response(
            404,
            Decision::KeepAlive {
                timeout: Some(10),
                max: None,
            },
            false,
            b"",
        );
        assert!(std::str::from_utf8(&empty).unwrap().ends_with(
            "Content-Length: 0\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=10\r\n\r\n"
        ));
    }
}
