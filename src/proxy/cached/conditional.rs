//! Client conditionals against a stored object, as pure functions: If-None-Match
//! and If-Modified-Since (CF-1 picks which count, LM-1 how dates compare) and
//! If-Range (IR-1).

use crate::cache::Hit;
use crate::config::{FreshnessCheck, Options};
use crate::http1::RequestHead;
use std::time::{SystemTime, UNIX_EPOCH};

fn to_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Does the client's conditional match the stored object (answer 304)?
pub fn not_modified(req: &RequestHead, hit: &Hit, o: &Options) -> bool {
    if !(200..300).contains(&hit.status) {
        return false; // conditionals apply to successful representations only
    }
    let etag_ok = o.freshness_check != FreshnessCheck::LastModified;
    let lm_ok = o.freshness_check != FreshnessCheck::ETag;
    let etag_match = || {
        let inm = req.header("if-none-match")?;
        let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
        let ours = strip(&hit.etag);
        Some(
            !hit.etag.is_empty()
                && crate::http1::headers::tokens(inm).any(|t| t == b"*" || strip(t) == ours),
        )
    };
    let lm_match = || {
        let ims = crate::httpdate::parse(req.header("if-modified-since")?).map(to_secs)?;
        Some(
            hit.last_modified_s != 0
                && if o.lm_or_later {
                    ims >= hit.last_modified_s
                } else {
                    ims == hit.last_modified_s
                },
        )
    };
    match o.freshness_check {
        // BOTH: either validator matching is enough (STON's reading of CF-1).
        FreshnessCheck::Both => etag_match() == Some(true) || lm_match() == Some(true),
        _ => (etag_ok && etag_match() == Some(true)) || (lm_ok && lm_match() == Some(true)),
    }
}

/// IR-1: with `<IfRange>ON`, a Range applies only if If-Range names this object
/// (its strong ETag, or its exact Last-Modified date); OFF ignores If-Range.
pub fn if_range_allows(req: &RequestHead, hit: &Hit, o: &Options) -> bool {
    let Some(ir) = req.header("if-range") else {
        return true;
    };
    if !o.if_range {
        return true;
    }
    let ir = crate::http1::headers::trim(ir);
    if ir.first() == Some(&b'"') {
        return !hit.etag.is_empty() && ir == &hit.etag[..];
    }
    // A gzip variant cairn made shares its Last-Modified with every other
    // compression of the object, whose bytes may differ: a date names none.
    if hit.times.flags & crate::cache::freshness::FLAG_COMPRESSED != 0 {
        return false;
    }
    crate::httpdate::parse(ir)
        .map(to_secs)
        .is_some_and(|t| hit.last_modified_s != 0 && t == hit.last_modified_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::freshness::Times;
    use bytes::{Bytes, BytesMut};

    const LM: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const LM_S: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LATER: &str = "Sun, 06 Nov 1994 09:49:37 GMT";
    const EARLIER: &str = "Sun, 06 Nov 1994 07:49:37 GMT";

    fn hit(status: u16, etag: &'static [u8], lm: u64) -> Hit {
        Hit {
            loc: (0, 0, 0),
            status,
            times: Times::default(),
            last_modified_s: lm,
            etag: Bytes::from_static(etag),
            headers: Bytes::new(),
            body: Bytes::new(),
        }
    }

    fn req(headers: &str) -> RequestHead {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
        crate::http1::request::parse(&mut BytesMut::from(raw.as_bytes()), &Default::default())
            .unwrap()
            .unwrap()
    }

    fn opts(check: FreshnessCheck, lm_or_later: bool) -> Options {
        Options {
            freshness_check: check,
            lm_or_later,
            ..Options::default()
        }
    }

    #[test]
    fn cf1_and_lm1_decide_304() {
        use FreshnessCheck::*;
        let inm = |t: &str| format!("If-None-Match: {t}\r\n");
        let ims = |t: &str| format!("If-Modified-Since: {t}\r\n");
        // (CF-1, LM-1 "or later", stored status, request headers, 304?)
        let table: Vec<(FreshnessCheck, bool, u16, String, bool)> = vec![
            (Both, false, 200, inm("\"a\""), true),
            (Both, false, 200, inm("W/\"a\""), true),
            (Both, false, 200, inm("\"b\", \"a\""), true),
            (Both, false, 200, inm("*"), true),
            (Both, false, 200, inm("\"b\""), false),
            (Both, false, 404, inm("\"a\""), false),
            (Both, false, 200, ims(LM_S), true),
            (Both, false, 200, ims(LATER), false),
            (Both, true, 200, ims(LATER), true),
            (Both, true, 200, ims(EARLIER), false),
            (Both, false, 200, inm("\"b\"") + &ims(LM_S), true),
            (ETag, false, 200, ims(LM_S), false),
            (ETag, false, 200, inm("\"a\""), true),
            (LastModified, false, 200, inm("\"a\""), false),
            (LastModified, false, 200, ims(LM_S), true),
            (Both, false, 200, String::new(), false),
            (Both, false, 200, ims("garbage"), false),
        ];
        for (check, later, status, headers, want) in table {
            let got = not_modified(
                &req(&headers),
                &hit(status, b"\"a\"", LM),
                &opts(check, later),
            );
            assert_eq!(got, want, "{check:?} later={later} {status} {headers:?}");
        }
        // Nothing stored to compare with: never 304.
        let none = hit(200, b"", 0);
        assert!(!not_modified(
            &req(&inm("\"a\"")),
            &none,
            &Options::default()
        ));
        assert!(!not_modified(&req(&ims(LM_S)), &none, &Options::default()));
    }

    #[test]
    fn ir1_if_range() {
        let on = Options {
            if_range: true,
            ..Options::default()
        };
        let off = Options {
            if_range: false,
            ..Options::default()
        };
        let h = hit(200, b"\"a\"", LM);
        let ir = |v: &str| format!("If-Range: {v}\r\n");
        // (options, request headers, range applies?)
        let table = [
            (&on, String::new(), true),
            (&on, ir("\"a\""), true),
            (&on, ir("\"b\""), false),
            (&on, ir("W/\"a\""), false),
            (&on, ir(LM_S), true),
            (&on, ir(LATER), false),
            (&off, ir("\"b\""), true),
        ];
        for (o, headers, want) in table {
            assert_eq!(if_range_allows(&req(&headers), &h, o), want, "{headers:?}");
        }
        assert!(!if_range_allows(&req(&ir("\"a\"")), &hit(200, b"", 0), &on));
    }
}
