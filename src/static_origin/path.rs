//! URL path → file path, safely: percent-decoding and `.`/`..` resolution happen
//! before the path meets the file system, so nothing maps outside the root.

/// Normalises a request path (query stripped) into relative segments, or `None`
/// when it is not a valid path (bad escape, NUL, backslash, not starting with `/`).
/// `..` above the root is clamped at the root, as nginx does.
pub fn normalize(path: &[u8]) -> Option<Vec<String>> {
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    if path.first() != Some(&b'/') {
        return None;
    }
    let decoded = percent_decode(path)?;
    if decoded.contains(&0) || decoded.contains(&b'\\') {
        return None;
    }
    let text = String::from_utf8(decoded).ok()?;
    let mut out: Vec<String> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    Some(out)
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn traversal_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/", Some("")),
            ("/index.html", Some("index.html")),
            ("/a/b/../c", Some("a/c")),
            ("/../../etc/passwd", Some("etc/passwd")),
            ("/%2e%2e/%2e%2e/etc/passwd", Some("etc/passwd")),
            ("/a/%2E%2E/%2e%2E/b", Some("b")),
            ("/a/./b//c?x=../../y", Some("a/b/c")),
            ("/a%2fb", Some("a/b")),
            ("/a%00b", None),
            ("/a%5c..%5cb", None),
            ("/a%zz", None),
            ("/a%2", None),
            ("a/b", None),
            ("/%ff", None),
        ];
        for (input, want) in cases {
            let got = normalize(input.as_bytes()).map(|v| v.join("/"));
            assert_eq!(got.as_deref(), *want, "{input}");
        }
    }
}
