//! Vary end to end (RFC 9111 §4.1, KEY-4): one object per value of the
//! selecting fields, `Vary: *` never served from cache, STON's VaryHeader
//! list, and the Vary index across a restart and a purge.

mod support;

use std::path::PathBuf;
use support::*;

const STATUS: &str = "<CacheStatusHeader>ON</CacheStatusHeader>";

fn origin() -> Origin {
    Origin::start(|r| {
        let lang = r.header("accept-language").unwrap_or("none").to_string();
        let (vary, body) = match r.path.as_str() {
            "/star" => ("*", "star".to_string()),
            // Starts varying at its first revalidation.
            "/late" if r.header("if-none-match").is_none() => ("Origin-Nothing", "plain".into()),
            "/late" => ("Accept-Language", format!("late={lang}")),
            "/two" => (
                "Accept-Language, X-Device",
                format!("{lang}/{}", r.header("x-device").unwrap_or("-")),
            ),
            _ => ("Accept-Language", format!("lang={lang}")),
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age={}\r\nETag: \"t\"\r\nVary: {vary}\r\nContent-Length: {}\r\n\r\n{body}",
                if r.path == "/late" { 1 } else { 600 },
                body.len()
            )
            .into_bytes(),
        )
    })
}

fn dir(o: &Origin, options: &str) -> PathBuf {
    let d = config_dir(&o.addr.to_string(), &format!("{STATUS}{options}"), "");
    edit_server_xml(
        &d,
        "<Server>",
        r#"<Server><Host><Manager Port="0" Listen="127.0.0.1" HttpMethod="OFF"><Allow>127.0.0.1</Allow></Manager></Host>"#,
    );
    d
}

fn get(c: &Cairn, path: &str, extra: &str) -> (String, String) {
    let mut cl = c.connect();
    cl.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n").as_bytes());
    let r = cl.response(false).unwrap();
    (r.header("x-cache").unwrap_or("-").to_string(), r.text())
}

const EN: &str = "Accept-Language: en\r\n";
const FR: &str = "Accept-Language: fr\r\n";

#[test]
fn one_object_per_language_and_none_for_a_request_without_the_field() {
    let o = origin();
    let d = dir(&o, r#"<TTL Mode="rfc9111"/>"#);
    let kept = PathBuf::from(format!("{}-kept", d.display()));
    {
        let c = Cairn::start(d.clone(), 1);
        // The first response teaches the Vary index and is stored under its
        // request's value.
        assert_eq!(get(&c, "/v", EN), ("TCP_MISS".into(), "lang=en".into()));
        assert_eq!(get(&c, "/v", EN), ("TCP_HIT".into(), "lang=en".into()));
        assert_eq!(get(&c, "/v", FR), ("TCP_MISS".into(), "lang=fr".into()));
        assert_eq!(get(&c, "/v", ""), ("TCP_MISS".into(), "lang=none".into()));
        assert_eq!(get(&c, "/v", EN), ("TCP_HIT".into(), "lang=en".into()));
        assert_eq!(get(&c, "/v", FR), ("TCP_HIT".into(), "lang=fr".into()));
        // Normalised: spaces and combined lines select the same variant.
        assert_eq!(
            get(&c, "/v", "Accept-Language:  en \r\n"),
            ("TCP_HIT".into(), "lang=en".into())
        );
        assert_eq!(get(&c, "/v", ""), ("TCP_HIT".into(), "lang=none".into()));
        assert_eq!(o.count(), 3);
        // Two selecting fields.
        get(&c, "/two", EN);
        get(&c, "/two", &format!("{EN}X-Device: phone\r\n"));
        assert_eq!(
            get(&c, "/two", &format!("{EN}X-Device: phone\r\n")),
            ("TCP_HIT".into(), "en/phone".into())
        );
        assert_eq!(get(&c, "/two", EN), ("TCP_HIT".into(), "en/-".into()));
        // Vary: * is never served from cache.
        get(&c, "/star", "");
        get(&c, "/star", "");
        assert_eq!(get(&c, "/star", "").0, "TCP_MISS");
        std::fs::rename(&d, &kept).unwrap();
    }
    std::fs::rename(&kept, &d).unwrap();
    // After a restart the index is rebuilt from the stored keys.
    let c = Cairn::start(d, 1);
    let n = o.count();
    assert_eq!(get(&c, "/v", FR), ("TCP_HIT".into(), "lang=fr".into()));
    assert_eq!(get(&c, "/v", ""), ("TCP_HIT".into(), "lang=none".into()));
    assert_eq!(o.count(), n);
    // A purge of the URL takes every variant.
    let log = c.wait_log("manager listening on http://");
    let rest = log.split("manager listening on http://").nth(1).unwrap();
    let mgr: std::net::SocketAddr = rest[..rest.find('/').unwrap()].parse().unwrap();
    use std::io::{Read, Write};
    // fileinfo (STAT-2) lists the Vary variants too.
    let mut s = std::net::TcpStream::connect(mgr).unwrap();
    s.write_all(b"GET /monitoring/fileinfo?url=test.local/v HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut info = String::new();
    s.read_to_string(&mut info).unwrap();
    assert_eq!(info.matches("\"Variant\":\"vary:").count(), 3, "{info}");
    let mut s = std::net::TcpStream::connect(mgr).unwrap();
    s.write_all(b"GET /command/hardpurge?url=test.local/v HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("\"Count\":3"), "{out}");
    assert_eq!(get(&c, "/v", EN).0, "TCP_MISS");
}

#[test]
fn ston_mode_ignores_vary_unless_vary_header_lists_the_field() {
    let o = origin();
    // KEY-4 default: Vary is ignored (one object for every language).
    let c = Cairn::start(dir(&o, ""), 1);
    assert_eq!(get(&c, "/v", EN), ("TCP_MISS".into(), "lang=en".into()));
    assert_eq!(get(&c, "/v", FR), ("TCP_HIT".into(), "lang=en".into()));
    // Listed: honoured.
    let c = Cairn::start(dir(&o, "<VaryHeader>Accept-Language</VaryHeader>"), 1);
    get(&c, "/v", EN);
    get(&c, "/v", EN);
    get(&c, "/v", FR);
    assert_eq!(get(&c, "/v", FR), ("TCP_HIT".into(), "lang=fr".into()));
    assert_eq!(get(&c, "/v", EN), ("TCP_HIT".into(), "lang=en".into()));
    // A field not listed is ignored: /two varies on X-Device too.
    get(&c, "/two", EN);
    get(&c, "/two", EN);
    assert_eq!(
        get(&c, "/two", &format!("{EN}X-Device: phone\r\n")),
        ("TCP_HIT".into(), "en/-".into())
    );
}

#[test]
fn a_revalidation_that_starts_to_vary_rekeys_the_object() {
    let o = origin();
    let c = Cairn::start(dir(&o, r#"<TTL Mode="rfc9111"/>"#), 1);
    assert_eq!(get(&c, "/late", EN), ("TCP_MISS".into(), "plain".into()));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        get(&c, "/late", EN),
        ("TCP_REF_MISS".into(), "late=en".into())
    );
    assert_eq!(get(&c, "/late", EN), ("TCP_HIT".into(), "late=en".into()));
    assert_eq!(get(&c, "/late", FR).0, "TCP_MISS");
}

#[test]
fn the_key_holds_the_fields_the_origin_was_sent_after_request_rules() {
    // The origin varies on X-Device, which a request rule sets from User-Agent.
    let o = Origin::start(|r| {
        let body = format!("device={}", r.header("x-device").unwrap_or("desktop"));
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nVary: X-Device\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let d = dir(
        &o,
        r#"<TTL Mode="rfc9111"/><ModifyHeader>ON</ModifyHeader>"#,
    );
    std::fs::create_dir_all(d.join("svc/test.local")).unwrap();
    std::fs::write(
        d.join("svc/test.local/headers.txt"),
        "$HEADER[user-agent: *Mobile*], $REQ[x-device: mobile], set\n",
    )
    .unwrap();
    let c = Cairn::start(d, 1);
    let phone = "User-Agent: Mobile Safari\r\n";
    assert_eq!(
        get(&c, "/p", phone),
        ("TCP_MISS".into(), "device=mobile".into())
    );
    assert_eq!(
        get(&c, "/p", phone),
        ("TCP_HIT".into(), "device=mobile".into())
    );
    // A desktop browser must not get the phone's page.
    assert_eq!(
        get(&c, "/p", "User-Agent: Firefox\r\n"),
        ("TCP_MISS".into(), "device=desktop".into())
    );
}
