//! Purge targets (PRG-2): `host/path`, `host/dir/*`, `host/*.jpg`, several
//! joined by `|`, a target without a host reusing the previous one, an
//! optional `http://` or `https://`. Pure.

/// One target: the host as written (port stripped, lower case) and the path
/// pattern (`*` matches any run of bytes; no `*`: one URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub path: String,
}

impl Target {
    /// The path before its first `*`: every key the target can match starts
    /// with it.
    pub fn literal_prefix(&self) -> &str {
        match self.path.find('*') {
            Some(i) => &self.path[..i],
            None => &self.path,
        }
    }

    pub fn is_pattern(&self) -> bool {
        self.path.contains('*')
    }
}

/// Longest target list accepted; more is a malformed request.
pub const MAX_TARGETS: usize = 1000;

/// Parses a `url=` value (already percent-decoded). An empty value is no
/// target (a purge of nothing); a path without any host before it, a host that
/// is not a host, or a path that does not start with `/` is an error.
pub fn parse(value: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    let mut last_host: Option<String> = None;
    for part in value.split('|').map(str::trim).filter(|p| !p.is_empty()) {
        if out.len() == MAX_TARGETS {
            return Err(format!("more than {MAX_TARGETS} targets"));
        }
        let lower = part.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &part[7..]
        } else if lower.starts_with("https://") {
            &part[8..]
        } else {
            part
        };
        let (host, path) = if rest.starts_with('/') {
            let host = last_host
                .clone()
                .ok_or_else(|| format!("'{part}': a path with no host before it"))?;
            (host, rest)
        } else {
            let (h, p) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            (
                host_of(h).ok_or_else(|| format!("'{part}': '{h}' is not a host"))?,
                p,
            )
        };
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("'{part}': the path holds spaces or control bytes"));
        }
        last_host = Some(host.clone());
        out.push(Target {
            host,
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// A host name or address, port dropped, lower case.
fn host_of(h: &str) -> Option<String> {
    let name = if let Some(v6) = h.strip_prefix('[') {
        let end = v6.find(']')? + 2;
        // After the bracket: nothing, or a port.
        let rest = &h[end..];
        let port_ok = rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok || v6[..end - 2].parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        &h[..end]
    } else {
        h.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(h, |(n, _)| n)
    };
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    ok.then(|| name.to_ascii_lowercase())
}

/// Percent-decodes a query value (`+` is a space). Invalid escapes stay as
/// they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in a query string as sent, not decoded: purge targets
/// are matched byte for byte against request targets as clients sent them
/// (`url=a.com/a%20b` names the URL `/a%20b`).
/// The value runs to the end of the query, `&` included (a URL's own query
/// has them): `url=` comes last (`sec=5&url=a.com/x?a=1&b=2`).
pub fn raw_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    let mut at = 0;
    for kv in query.split('&') {
        let (k, _) = kv.split_once('=').unwrap_or((kv, ""));
        if k == name {
            let rest = &query[at..];
            return Some(rest.split_once('=').map_or("", |(_, v)| v));
        }
        at += kv.len() + 1;
    }
    None
}

/// The value of `name` in a query string (`a=1&b=2`), percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, path: &str) -> Target {
        Target {
            host: host.into(),
            path: path.into(),
        }
    }

    #[test]
    fn target_forms() {
        let table: &[(&str, Vec<Target>)] = &[
            ("www.a.com/x.jpg", vec![t("www.a.com", "/x.jpg")]),
            ("http://WWW.A.com:8080/d/*", vec![t("www.a.com", "/d/*")]),
            ("https://a.com", vec![t("a.com", "/")]),
            (
                "a.com/*.jpg|/img/*|b.com/x|/y",
                vec![
                    t("a.com", "/*.jpg"),
                    t("a.com", "/img/*"),
                    t("b.com", "/x"),
                    t("b.com", "/y"),
                ],
            ),
            ("a.com/dir/", vec![t("a.com", "/dir/")]),
            ("a.com/p?q=1", vec![t("a.com", "/p?q=1")]),
            ("[::1]:80/x", vec![t("[::1]", "/x")]),
            ("", vec![]),
            (" | ", vec![]),
        ];
        for (input, want) in table {
            assert_eq!(&parse(input).unwrap(), want, "{input}");
        }
        for bad in [
            "/x",
            "a com/x",
            "a.com/x y",
            "a.com/\u{7}",
            "@/x",
            "[::1]junk/x",
            "[foo]/x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let many = vec!["a.com/x"; MAX_TARGETS + 1].join("|");
        assert!(parse(&many).is_err());
        assert_eq!(t("a", "/img/*.jpg").literal_prefix(), "/img/");
        assert!(!t("a", "/x").is_pattern());
    }

    #[test]
    fn url_runs_to_the_end_of_the_query() {
        assert_eq!(
            raw_param("sec=5&url=a.com/x?a=1&b=2", "url"),
            Some("a.com/x?a=1&b=2")
        );
        assert_eq!(raw_param("url=a.com/%20", "url"), Some("a.com/%20"));
        assert_eq!(raw_param("url", "url"), Some(""));
        assert_eq!(raw_param("x=1", "url"), None);
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_param("sec=5&url=a.com%2Fx%7C%2Fy", "url").as_deref(),
            Some("a.com/x|/y")
        );
        assert_eq!(
            query_param("url=a+b%zz%4", "url").as_deref(),
            Some("a b%zz%4")
        );
        assert_eq!(query_param("x=1", "url"), None);
        assert_eq!(query_param("url", "url").as_deref(), Some(""));
        assert_eq!(percent_decode("%41%"), "A%");
    }
}
