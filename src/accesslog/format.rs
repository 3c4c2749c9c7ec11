//! Access-log lines as pure functions of one exchange's facts (LOG-1): STON's W3C
//! extended form and Apache's combined form. No clock, no IO.

use crate::config::{LogForm, XffLog};
use crate::http1::headers::write_decimal as decimal;
use std::io::Write;
use std::net::IpAddr;

/// The W3C header written at the top of every STON-form file.
pub const W3C_FIELDS: &str = "#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-bytes time-taken cs-referer sc-resinfo cs-range sc-cachehit cs-acceptencoding session-id sc-content-length";

/// What one line says about one exchange. Request fields are `None` when the
/// request could not be parsed.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// When the exchange ended, unix milliseconds.
    pub end_ms: u64,
    pub server_ip: Option<IpAddr>,
    pub server_port: u16,
    pub client_ip: Option<IpAddr>,
    /// The client's `X-Forwarded-For`, and how `c-ip` uses it.
    pub xff: Option<&'a [u8]>,
    pub xff_mode: XffLog,
    pub method: Option<&'a [u8]>,
    /// Path and query as the client sent them.
    pub target: Option<&'a [u8]>,
    pub version: &'a str,
    pub user_agent: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    pub range: Option<&'a [u8]>,
    pub accept_encoding: Option<&'a [u8]>,
    /// 0 when no response was sent.
    pub status: u16,
    /// Head and body bytes written to the client.
    pub bytes_sent: u64,
    /// Of those, body bytes (Apache's `%b`).
    pub body_bytes: u64,
    pub time_taken_ms: u64,
    /// `sc-resinfo`: the response was gzip-encoded / bypassed the cache.
    pub gzip: bool,
    pub bypass: bool,
    /// And the TLS version of an HTTPS request (`TLSv1.3`).
    pub tls: Option<&'static str>,
    /// The HTTP/2 stream id of an HTTP/2 request: `sc-resinfo` then says
    /// `HTTP2` and `H2_STREAM_ID=<id>` (httpd's names for the same facts).
    pub h2_stream: Option<u32>,
    pub result: &'a str,
    pub session_id: u64,
    pub content_length: Option<u64>,
}

/// Appends one line (with its newline) in `form`.
pub fn write(form: LogForm, e: &Entry, out: &mut Vec<u8>) {
    match form {
        LogForm::Ston => write_w3c(e, out),
        LogForm::Apache => write_apache(e, out),
    }
}

/// A W3C field: `-` when empty; spaces become `+` so that fields split on spaces.
fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v.filter(|v| !v.is_empty()) {
        None => out.push(b'-'),
        // Most values need no escaping: copy them whole.
        Some(v) if v.iter().all(|&b| b > b' ' && b != 0x7f) => out.extend_from_slice(v),
        Some(v) => out.extend(v.iter().map(|&b| match b {
            b' ' | b'\t' => b'+',
            // Control bytes would break a line apart.
            b if b < 0x20 || b == 0x7f => b'?',
            b => b,
        })),
    }
}

/// A list field's tokens as W3C fields joined by `sep`; `false` if it had none.
fn tokens_joined(out: &mut Vec<u8>, v: &[u8], sep: u8) -> bool {
    let mut first = true;
    for t in crate::http1::headers::tokens(v) {
        if !first {
            out.push(sep);
        }
        first = false;
        field(out, Some(t));
    }
    !first
}

/// `Accept-Encoding: gzip, deflate` is logged as `gzip+deflate`.
fn encodings(out: &mut Vec<u8>, v: Option<&[u8]>) {
    if !v.is_some_and(|v| tokens_joined(out, v, b'+')) {
        out.push(b'-');
    }
}

fn ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        Some(IpAddr::V4(v4)) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(out, u64::from(*o));
            }
        }
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
}

/// `c-ip` per `<Access XFF>`: the client's forwarded-for chain (spaces dropped)
/// and its own address.
fn client(out: &mut Vec<u8>, e: &Entry) {
    // A chain of nothing but commas and spaces counts as no chain.
    let xff = e
        .xff
        .filter(|v| crate::http1::headers::tokens(v).next().is_some());
    match (e.xff_mode, xff) {
        (XffLog::On, Some(v)) => {
            tokens_joined(out, v, b',');
            out.push(b',');
            ip(out, e.client_ip);
        }
        (XffLog::TrimCip, Some(v)) => {
            tokens_joined(out, v, b',');
        }
        _ => ip(out, e.client_ip),
    }
}

fn civil(ms: u64) -> (i64, u32, u32, u64, u64, u64) {
    let secs = ms / 1000;
    let (y, m, d) = crate::httpdate::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    (y, m, d, t / 3600, t / 60 % 60, t % 60)
}

thread_local! {
    /// `YYYY.MM.DD HH:MM:SS` of the last second formatted on this thread.
    static STAMP: std::cell::RefCell<(u64, [u8; 19])> = const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
}

fn stamp(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    STAMP.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let (y, mo, d, h, mi, s) = civil(ms);
            let mut b = Vec::with_capacity(19);
            let _ = write!(b, "{y:04}.{mo:02}.{d:02} {h:02}:{mi:02}:{s:02}");
            if let Ok(a) = <[u8; 19]>::try_from(&b[..]) {
                *c = (secs, a);
            } else {
                // A year past 9999: no cache, write it as it is.
                out.extend_from_slice(&b);
                return;
            }
        }
        out.extend_from_slice(&c.1);
    });
}

fn write_w3c(e: &Entry, out: &mut Vec<u8>) {
    stamp(out, e.end_ms);
    out.push(b' ');
    ip(out, e.server_ip);
    out.push(b' ');
    field(out, e.method);
    out.push(b' ');
    let (stem, query) = match e.target {
        Some(t) => match memchr::memchr(b'?', t) {
            Some(q) => (Some(&t[..q]), Some(&t[q + 1..])),
            None => (Some(t), None),
        },
        None => (None, None),
    };
    field(out, stem);
    out.push(b' ');
    field(out, query);
    out.push(b' ');
    decimal(out, u64::from(e.server_port));
    out.extend_from_slice(b" - ");
    client(out, e);
    out.push(b' ');
    field(out, e.user_agent);
    out.push(b' ');
    decimal(out, u64::from(e.status));
    out.push(b' ');
    decimal(out, e.bytes_sent);
    out.push(b' ');
    decimal(out, e.time_taken_ms);
    out.push(b' ');
    field(out, e.referer);
    out.push(b' ');
    let stream = e.h2_stream.map(|id| format!("H2_STREAM_ID={id}"));
    let info = [
        e.bypass.then_some("Bypass"),
        e.gzip.then_some("gzip"),
        e.tls,
        e.h2_stream.map(|_| "HTTP2"),
        stream.as_deref(),
    ];
    let mut any = false;
    for i in info.into_iter().flatten() {
        if any {
            out.push(b'+');
        }
        out.extend_from_slice(i.as_bytes());
        any = true;
    }
    if !any {
        out.push(b'-');
    }
    out.push(b' ');
    let range = e
        .range
        .map(crate::http1::headers::trim)
        .map(|r| r.strip_prefix(b"bytes=").unwrap_or(r));
    field(out, range);
    out.push(b' ');
    field(out, Some(e.result.as_bytes()));
    out.push(b' ');
    encodings(out, e.accept_encoding);
    out.push(b' ');
    decimal(out, e.session_id);
    out.push(b' ');
    match e.content_length {
        Some(n) => decimal(out, n),
        None => out.push(b'-'),
    }
    out.push(b'\n');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"`; quotes and
/// backslashes inside quoted fields are escaped as Apache does.
fn write_apache(e: &Entry, out: &mut Vec<u8>) {
    let (y, mo, d, h, mi, s) = civil(e.end_ms);
    match e.client_ip {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    let mon = MONTHS[(mo as usize).clamp(1, 12) - 1];
    let _ = write!(
        out,
        " - - [{d:02}/{mon}/{y:04}:{h:02}:{mi:02}:{s:02} +0000] \""
    );
    match (e.method, e.target) {
        (Some(m), Some(t)) => {
            quoted(out, m);
            out.push(b' ');
            quoted(out, t);
            out.push(b' ');
            out.extend_from_slice(e.version.as_bytes());
        }
        _ => out.push(b'-'),
    }
    let _ = write!(out, "\" {} ", e.status);
    // `%b`: body bytes, without the head.
    if e.body_bytes == 0 {
        out.push(b'-');
    } else {
        let _ = write!(out, "{}", e.body_bytes);
    }
    out.extend_from_slice(b" \"");
    quoted(out, e.referer.unwrap_or(b"-"));
    out.extend_from_slice(b"\" \"");
    quoted(out, e.user_agent.unwrap_or(b"-"));
    out.extend_from_slice(b"\"\n");
}

fn quoted(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            b if !(0x20..0x7f).contains(&b) => {
                let _ = write!(out, "\\x{b:02x}");
            }
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            h2_stream: None,
            end_ms: 1_340_815_944_000, // 2012-06-27 16:52:24 UTC
            server_ip: Some("220.134.10.5".parse().unwrap()),
            server_port: 80,
            client_ip: Some("61.50.7.9".parse().unwrap()),
            xff: None,
            xff_mode: XffLog::On,
            method: Some(b"GET"),
            target: Some(b"/web/h.gif"),
            version: "HTTP/1.1",
            user_agent: Some(b"Chrome/19.0 (X11; Linux)"),
            referer: None,
            range: None,
            accept_encoding: Some(b"gzip, deflate"),
            status: 200,
            bytes_sent: 98141,
            body_bytes: 98000,
            time_taken_ms: 5,
            gzip: true,
            bypass: false,
            tls: None,
            result: "TCP_HIT",
            session_id: 7,
            content_length: Some(1273735),
        }
    }

    fn line(form: LogForm, e: &Entry) -> String {
        let mut out = Vec::new();
        write(form, e, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn w3c_matches_the_fields_line() {
        // (entry change, the line expected)
        let mut e = entry();
        let l = line(LogForm::Ston, &e);
        assert_eq!(
            l,
            "2012.06.27 16:52:24 220.134.10.5 GET /web/h.gif - 80 - 61.50.7.9 Chrome/19.0+(X11;+Linux) 200 98141 5 - gzip - TCP_HIT gzip+deflate 7 1273735\n"
        );
        let names = W3C_FIELDS
            .trim_start_matches("#Fields: ")
            .split(' ')
            .count();
        assert_eq!(l.trim_end().split(' ').count(), names);
        e.target = Some(b"/a b?x=1&y=2");
        e.range = Some(b"bytes=0-99");
        e.bypass = true;
        e.gzip = false;
        e.user_agent = Some(b"");
        e.accept_encoding = None;
        e.content_length = None;
        let l = line(LogForm::Ston, &e);
        assert!(
            l.contains(" GET /a+b x=1&y=2 80 - 61.50.7.9 - 200 ")
                && l.contains(" - Bypass 0-99 TCP_HIT - 7 -\n"),
            "{l}"
        );
        assert_eq!(l.trim_end().split(' ').count(), names);
        e.tls = Some("TLSv1.3");
        assert!(line(LogForm::Ston, &e).contains(" - Bypass+TLSv1.3 0-99 "));
        e.bypass = false;
        assert!(line(LogForm::Ston, &e).contains(" - TLSv1.3 0-99 "));
        // An HTTP/2 request: httpd's HTTP2 and H2_STREAM_ID, one field still.
        e.h2_stream = Some(5);
        let l = line(LogForm::Ston, &e);
        assert!(l.contains(" - TLSv1.3+HTTP2+H2_STREAM_ID=5 0-99 "), "{l}");
        assert_eq!(l.trim_end().split(' ').count(), names);
        e.h2_stream = None;
        // An unparsed request: every request field is `-`, still the same count.
        let bare = Entry {
            end_ms: 0,
            status: 400,
            result: "TCP_ERROR",
            ..Default::default()
        };
        let l = line(LogForm::Ston, &bare);
        assert!(
            l.starts_with("1970.01.01 00:00:00 - - - - 0 - - - 400 0 0"),
            "{l}"
        );
        assert_eq!(l.trim_end().split(' ').count(), names);
        // A newline inside a value cannot start a second line.
        e.user_agent = Some(b"x\r\ny");
        assert_eq!(line(LogForm::Ston, &e).matches('\n').count(), 1);
        // XFF (the chain may not add a field either) and IPv6.
        let mut e = entry();
        e.xff = Some(b" 10.0.0.1, 10.0.0.2 ");
        assert!(line(LogForm::Ston, &e).contains(" 80 - 10.0.0.1,10.0.0.2,61.50.7.9 Chrome"));
        e.xff_mode = XffLog::TrimCip;
        assert!(line(LogForm::Ston, &e).contains(" 80 - 10.0.0.1,10.0.0.2 Chrome"));
        e.xff_mode = XffLog::Off;
        assert!(line(LogForm::Ston, &e).contains(" 80 - 61.50.7.9 Chrome"));
        e.xff = Some(b" , ,");
        e.xff_mode = XffLog::TrimCip;
        assert!(line(LogForm::Ston, &e).contains(" 80 - 61.50.7.9 Chrome"));
        e.xff = Some(b"a b, c\nd");
        e.xff_mode = XffLog::On;
        let l = line(LogForm::Ston, &e);
        assert_eq!(l.trim_end().split(' ').count(), names, "{l}");
        e.client_ip = Some("::1".parse().unwrap());
        e.xff = None;
        assert!(line(LogForm::Ston, &e).contains(" 80 - ::1 Chrome"));
    }

    #[test]
    fn apache_combined() {
        let mut e = entry();
        e.referer = Some(b"http://a/\"x\"");
        assert_eq!(
            line(LogForm::Apache, &e),
            "61.50.7.9 - - [27/Jun/2012:16:52:24 +0000] \"GET /web/h.gif HTTP/1.1\" 200 98000 \"http://a/\\\"x\\\"\" \"Chrome/19.0 (X11; Linux)\"\n"
        );
        let bare = Entry {
            status: 400,
            ..Default::default()
        };
        assert_eq!(
            line(LogForm::Apache, &bare),
            "- - - [01/Jan/1970:00:00:00 +0000] \"-\" 400 - \"-\" \"-\"\n"
        );
    }
}
