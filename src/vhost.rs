//! Vhost lookup by `Host` (spec/ston-http.md §0): exact name, exact alias,
//! wildcard alias (`*.domain`), then `<Default>`. Pure and allocation-free per lookup.

use crate::config::Config;
use ahash::AHashMap;

/// Longest host name we look up; longer ones cannot match a valid name.
const MAX_HOST: usize = 255;

#[derive(Debug, Clone, Default)]
pub struct Router {
    exact_names: AHashMap<String, usize>,
    exact_aliases: AHashMap<String, usize>,
    /// (".domain", vhost), longest suffix first so the most specific wins.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl Router {
    /// A router over the vhosts in `members` (those sharing one listening address).
    pub fn new(config: &Config, members: &[usize]) -> Router {
        let mut r = Router::default();
        for &i in members {
            let v = &config.vhosts[i];
            r.exact_names.entry(v.name.clone()).or_insert(i);
            for a in &v.aliases {
                match a.strip_prefix('*') {
                    Some(suffix) => r.wildcards.push((suffix.to_string(), i)),
                    None => {
                        r.exact_aliases.entry(a.clone()).or_insert(i);
                    }
                }
            }
        }
        r.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        r.default = config.default_vhost.filter(|d| members.contains(d));
        r
    }

    /// The vhost for a `Host` value (port stripped, case-insensitive, trailing dot ignored).
    pub fn lookup(&self, host: Option<&[u8]>) -> Option<usize> {
        self.lookup_named(host).or(self.default)
    }

    /// [`lookup`](Self::lookup) without the `<Default>` fallback: the vhost the
    /// Host names (by name, alias or wildcard alias), if any.
    pub fn lookup_named(&self, host: Option<&[u8]>) -> Option<usize> {
        let host = host
            .map(strip_port)
            .filter(|h| !h.is_empty() && h.len() <= MAX_HOST)?;
        let mut buf = [0u8; MAX_HOST];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host);
        lower.make_ascii_lowercase();
        let name = std::str::from_utf8(lower).ok()?;
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&i) = self
            .exact_names
            .get(name)
            .or_else(|| self.exact_aliases.get(name))
        {
            return Some(i);
        }
        for (suffix, i) in &self.wildcards {
            if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        None
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order() {
        let vhosts = r#"<Vhosts>
  <Vhost Name="www.example.com"><Alias>example.com</Alias><Alias>*.example.com</Alias><Origin><Address>10.0.0.1</Address></Origin></Vhost>
  <Vhost Name="img.example.com"><Alias>*.img.example.com</Alias><Origin><Address>10.0.0.2</Address></Origin></Vhost>
  <Vhost Name="other.net"><Origin><Address>10.0.0.3</Address></Origin></Vhost>
  <Default>other.net</Default>
</Vhosts>"#;
        let l = crate::config::load_str("<Server/>", vhosts).unwrap();
        let r = Router::new(&l.config, &[0, 1, 2]);
        let cases: &[(Option<&str>, Option<usize>)] = &[
            (Some("www.example.com"), Some(0)),
            (Some("WWW.Example.COM:8080"), Some(0)),
            (Some("example.com."), Some(0)),
            (Some("img.example.com"), Some(1)), // exact name beats the *.example.com wildcard
            (Some("a.img.example.com"), Some(1)), // longer wildcard wins
            (Some("x.y.example.com"), Some(0)),
            (Some("badexample.com"), Some(2)), // default
            (Some("other.net"), Some(2)),
            (Some(""), Some(2)),
            (None, Some(2)),
            (Some("[::1]:80"), Some(2)),
        ];
        for (host, want) in cases {
            assert_eq!(r.lookup(host.map(str::as_bytes)), *want, "{host:?}");
        }
        let no_default = Router::new(&l.config, &[0]);
        assert_eq!(no_default.lookup(Some(b"nowhere")), None);
        let long = "a".repeat(300);
        assert_eq!(no_default.lookup(Some(long.as_bytes())), None);
    }
}
