//! The STON XML dialect: `server.xml` (`<Server>`) and `vhosts.xml` (`<Vhosts>`).

use super::{
    expand_star, CacheSettings, Config, ConfigError, Diag, ListenGroup, Loaded, LogFileSettings,
    LogForm, LogSettings, LogTarget, Options, OriginAddr, OriginOptions, OriginProtocol, Roll,
    ServerSettings, Vhost, XffLog,
};
use roxmltree::{Document, Node};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file being read: its name and parsed document, for line numbers.
struct Src<'a, 'input> {
    file: &'a str,
    doc: &'a Document<'input>,
}

impl Src<'_, '_> {
    fn line(&self, n: Node) -> u32 {
        self.doc.text_pos_at(n.range().start).row
    }
    fn diag(&self, n: Node, reason: impl Into<String>) -> Diag {
        Diag {
            file: self.file.to_string(),
            line: self.line(n),
            reason: reason.into(),
        }
    }
    fn err(&self, n: Node, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(self.diag(n, reason))
    }
}

fn parse_doc<'i>(file: &str, text: &'i str) -> Result<Document<'i>, ConfigError> {
    Document::parse(text).map_err(|e| {
        ConfigError::Invalid(Diag {
            file: file.to_string(),
            line: e.pos().row,
            reason: format!("malformed XML: {e}"),
        })
    })
}

fn elements<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(|c| c.is_element())
}

fn text<'a>(n: Node<'a, '_>) -> &'a str {
    n.text().unwrap_or("").trim()
}

pub(super) fn load(
    server_file: &str,
    server_text: &str,
    vhosts_file: &str,
    vhosts_text: &str,
    source: &str,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let sdoc = parse_doc(server_file, server_text)?;
    let s = Src {
        file: server_file,
        doc: &sdoc,
    };
    let root = sdoc.root_element();
    if root.tag_name().name() != "Server" {
        return Err(s.err(
            root,
            format!(
                "root element is <{}>, expected <Server>",
                root.tag_name().name()
            ),
        ));
    }
    let mut default_options = Options::default();
    let mut default_origin = OriginOptions::default();
    let mut default_log = LogSettings::default();
    let mut cache_listen: Vec<IpAddr> = Vec::new();
    let mut cache = CacheSettings::default();
    let mut server = ServerSettings::default();
    // Relative paths in the files are relative to the configuration directory.
    let base: Option<&Path> = (!source.starts_with('<')).then(|| Path::new(source));
    // Read after the loop: `*` in their Listen needs every <Cache><Listen>.
    let mut https_nodes = Vec::new();
    for child in elements(root) {
        match child.tag_name().name() {
            "Https" => https_nodes.push(child),
            "VHostDefault" => {
                for e in elements(child) {
                    match e.tag_name().name() {
                        "Options" => apply_options(&s, e, &mut default_options, &mut warnings)?,
                        "OriginOptions" => {
                            apply_origin_options(&s, e, &mut default_origin, &mut warnings)?
                        }
                        "Log" => apply_log(&s, e, base, &mut default_log, &mut warnings)?,
                        other => warnings.push(s.diag(
                            e,
                            format!("<VHostDefault><{other}> is not supported; ignored"),
                        )),
                    }
                }
            }
            "Cache" => {
                for e in elements(child) {
                    match e.tag_name().name() {
                        "Listen" => {
                            let ip = text(e).parse().map_err(|_| {
                                s.err(
                                    e,
                                    format!("<Cache><Listen> '{}' is not an IP address", text(e)),
                                )
                            })?;
                            cache_listen.push(ip);
                        }
                        "Storage" => parse_storage(&s, e, base, &mut cache, &mut warnings)?,
                        "HttpsSNI" => server.https_sni = on_off(&s, e)?,
                        "Http2" => parse_http2(&s, e, &mut server.http2, &mut warnings)?,
                        "MaxSockets" => {
                            server.max_sockets = number(&s, e, text(e), 0, 10_000_000)? as usize;
                            if let Some(r) = e.attribute("Reopen") {
                                server.reopen_pct = number(&s, e, r.trim(), 1, 100)? as u8;
                            }
                        }
                        other => warnings.push(
                            s.diag(e, format!("<Cache><{other}> is not supported yet; ignored")),
                        ),
                    }
                }
            }
            "Cairn" => parse_cairn(&s, child, &mut server, &mut warnings)?,
            "Host" => {
                for e in elements(child) {
                    match e.tag_name().name() {
                        "Manager" => server.manager = Some(parse_manager(&s, e, &mut warnings)?),
                        // STON's host name and contact: nothing to do with them.
                        "Name" | "Admin" => {}
                        other => warnings
                            .push(s.diag(e, format!("<Host><{other}> is not supported; ignored"))),
                    }
                }
            }
            "ServiceAccess" => {
                if let Some(p) = child
                    .attribute("GeoIP")
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    let p = PathBuf::from(p);
                    let p = match base {
                        Some(b) if p.is_relative() => b.join(p),
                        _ => p,
                    };
                    if !p.is_file() {
                        return Err(s.err(
                            child,
                            format!("<ServiceAccess GeoIP>: {} is not a file", p.display()),
                        ));
                    }
                    server.geoip = Some(p);
                }
                for e in elements(child) {
                    warnings.push(s.diag(
                        e,
                        format!(
                            "<ServiceAccess><{}> is not supported yet; ignored",
                            e.tag_name().name()
                        ),
                    ));
                }
            }
            other => warnings.push(s.diag(
                child,
                format!("<Server><{other}> is not supported; ignored"),
            )),
        }
    }

    for n in https_nodes {
        let block = parse_https(&s, n, base, &cache_listen, &mut warnings)?;
        server.https.push(block);
    }

    let vdoc = parse_doc(vhosts_file, vhosts_text)?;
    let v = Src {
        file: vhosts_file,
        doc: &vdoc,
    };
    let root = vdoc.root_element();
    if root.tag_name().name() != "Vhosts" {
        return Err(v.err(
            root,
            format!(
                "root element is <{}>, expected <Vhosts>",
                root.tag_name().name()
            ),
        ));
    }
    let mut vhosts: Vec<Vhost> = Vec::new();
    let mut default_name: Option<(String, Node)> = None;
    for child in elements(root) {
        match child.tag_name().name() {
            "Vhost" => {
                let defaults = Defaults {
                    options: &default_options,
                    origin: &default_origin,
                    log: &default_log,
                    base,
                    resolver: &server.resolver,
                };
                if let Some(vh) = parse_vhost(&v, child, &defaults, &cache_listen, &mut warnings)? {
                    let dup = vhosts
                        .iter()
                        .any(|o| o.name == vh.name || o.aliases.contains(&vh.name));
                    if dup {
                        return Err(
                            v.err(child, format!("vhost name '{}' is already used", vh.name))
                        );
                    }
                    if vh.options.ttl_mode == super::TtlMode::Ston {
                        warnings.push(v.diag(
                            child,
                            format!(
                                "WARNING vhost '{}': STON TTL mode (no <TTL Mode>) caches as STON \
                                 does: responses marked no-store, private or no-cache are stored for \
                                 <NoStore>/<NoCache> seconds, Set-Cookie is stripped, Vary is ignored unless \
                                 <VaryHeader> lists the field, and stored objects are served \
                                 whatever Cookie the request carried, so \
                                 personal pages can reach other clients; set <TTL Mode=\"rfc9111\"> \
                                 for RFC 9111 caching",
                                vh.name
                            ),
                        ));
                    }
                    vhosts.push(vh);
                }
            }
            "Default" => default_name = Some((text(child).to_ascii_lowercase(), child)),
            other => warnings.push(v.diag(
                child,
                format!("<Vhosts><{other}> is not supported; ignored"),
            )),
        }
    }
    if vhosts.is_empty() {
        return Err(v.err(root, "no active <Vhost> is defined"));
    }
    if let Some(base) = base {
        for vh in &mut vhosts {
            load_rule_files(base, vh, server.geoip.is_some(), &mut warnings)?;
        }
    }
    decrypt_secrets(base, &server, &mut vhosts)?;
    let default_vhost = match default_name {
        Some((name, node)) => Some(vhosts.iter().position(|vh| vh.name == name).ok_or_else(
            || {
                v.err(
                    node,
                    format!("<Default> names '{name}', which is not a vhost"),
                )
            },
        )?),
        None => None,
    };
    let mut listeners: Vec<ListenGroup> = Vec::new();
    for (i, vh) in vhosts.iter().enumerate() {
        for addr in &vh.listen {
            match listeners.iter_mut().find(|g| g.addr == *addr) {
                Some(g) => g.vhosts.push(i),
                None => listeners.push(ListenGroup {
                    addr: *addr,
                    vhosts: vec![i],
                    tls: None,
                }),
            }
        }
    }
    tls_groups(&server, vhosts.len(), &mut listeners, &mut warnings)?;
    Ok(Loaded {
        config: Config {
            source: source.to_string(),
            vhosts,
            default_vhost,
            listeners,
            cache,
            server,
        },
        warnings,
    })
}

/// One listen group per `<Https>` address, with its certificates and rustls setup.
fn tls_groups(
    server: &ServerSettings,
    vhost_count: usize,
    listeners: &mut Vec<ListenGroup>,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    use super::tls::{server_config, CertSet, TlsGroup};
    let mut by_addr: Vec<(SocketAddr, Vec<usize>)> = Vec::new();
    for (bi, b) in server.https.iter().enumerate() {
        for a in &b.addrs {
            // Port 0 (tests, tools): each block its own ephemeral listener.
            match by_addr.iter_mut().find(|(x, _)| x == a && a.port() != 0) {
                Some((_, blocks)) => blocks.push(bi),
                None => by_addr.push((*a, vec![bi])),
            }
        }
    }
    let diag = |place: &str, reason: String| {
        let (file, line) = place.rsplit_once(':').unwrap_or((place, "0"));
        Diag {
            file: file.to_string(),
            line: line.parse().unwrap_or(0),
            reason,
        }
    };
    for (addr, blocks) in by_addr {
        let first = &server.https[blocks[0]];
        if addr.port() != 0 && listeners.iter().any(|g| g.addr == addr) {
            return Err(ConfigError::Invalid(diag(
                &first.place,
                format!("<Https Listen> {addr} is also a vhost's plain <Listen>"),
            )));
        }
        let mut blocks = blocks;
        if blocks.len() > 1 && !server.https_sni {
            // Without SNI only one certificate can serve the address: the first.
            for &b in &blocks[1..] {
                warnings.push(diag(
                    &server.https[b].place,
                    format!(
                        "WARNING <Https> shares {addr} with the block at {}, and <Cache><HttpsSNI> is OFF: \
                         only that first block's certificate is used, this one is ignored; set <HttpsSNI>ON to choose by SNI",
                        first.place
                    ),
                ));
            }
            blocks.truncate(1);
        }
        for &b in &blocks[1..] {
            let o = &server.https[b];
            if (o.tls12, o.tls13, o.ktls) != (first.tls12, first.tls13, first.ktls)
                || o.suites != first.suites
            {
                warnings.push(diag(
                    &o.place,
                    format!(
                        "<Https> on {addr}: its protocol, CipherSuite and KTLS settings are not applied; \
                         the address uses those of the first block ({})",
                        first.place
                    ),
                ));
            }
        }
        let keys = blocks
            .iter()
            .map(|&b| server.https[b].key.clone())
            .collect();
        let certs = std::sync::Arc::new(CertSet::new(keys, server.https_sni));
        let config = server_config(first, certs.clone(), server.http2.enabled).map_err(|e| {
            ConfigError::Invalid(diag(&first.place, format!("<Https> for {addr}: {e}")))
        })?;
        listeners.push(ListenGroup {
            addr,
            vhosts: (0..vhost_count).collect(),
            tls: Some(TlsGroup {
                blocks,
                sni: server.https_sni,
                server: config,
                certs,
            }),
        });
    }
    Ok(())
}

/// `<Cache><Http2 Status="Active"><MaxConcurrentStream>100</MaxConcurrentStream>
/// <ClientKeepAlive>10</ClientKeepAlive></Http2>`, with cairn's `<WindowSize>` and
/// `<StreamMaxMemSize>` (mod_http2's names).
fn parse_http2(
    s: &Src,
    node: Node,
    h: &mut super::Http2Settings,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    if let Some(st) = node.attribute("Status") {
        h.enabled = match st.trim().to_ascii_lowercase().as_str() {
            "active" => true,
            "inactive" => false,
            other => {
                return Err(s.err(
                    node,
                    format!("<Http2 Status> '{other}': expected Active or Inactive"),
                ))
            }
        };
    }
    for e in elements(node) {
        match e.tag_name().name() {
            "MaxConcurrentStream" | "MaxSessionStreams" => {
                h.max_streams = number(s, e, text(e), 1, 10_000)?
            }
            "ClientKeepAlive" => h.keepalive_secs = number(s, e, text(e), 1, 3600)?,
            "WindowSize" => h.window = number(s, e, text(e), 1024, 16 << 20)?,
            "StreamMaxMemSize" => h.stream_mem = number(s, e, text(e), 1024, 16 << 20)?,
            "EarlyHints" => {
                h.early_hints = match text(e).trim().to_ascii_uppercase().as_str() {
                    "ON" => true,
                    "OFF" => false,
                    other => {
                        return Err(s.err(e, format!("<EarlyHints> '{other}': expected ON or OFF")))
                    }
                }
            }
            other => {
                warnings.push(s.diag(e, format!("<Http2><{other}> is not supported; ignored")))
            }
        }
    }
    Ok(())
}

/// `<Server><Https Listen="…" TLS1.2="ON" …><Cert/><Key/><CA/></Https>`.
fn parse_https(
    s: &Src,
    node: Node,
    base: Option<&Path>,
    cache_listen: &[IpAddr],
    warnings: &mut Vec<Diag>,
) -> Result<super::tls::HttpsBlock, ConfigError> {
    let listen = node.attribute("Listen").map(str::trim).unwrap_or("*:443");
    let addrs = parse_listen(listen, cache_listen).ok_or_else(|| {
        s.err(
            node,
            format!("<Https Listen> '{listen}': expected IP:PORT or *:PORT"),
        )
    })?;
    let path = |t: &str| {
        let p = PathBuf::from(t);
        match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    };
    let (mut cert, mut key, mut ca) = (None, None, None);
    for e in elements(node) {
        match e.tag_name().name() {
            "Cert" => cert = Some(path(text(e))),
            "Key" => key = Some(path(text(e))),
            "CA" => ca = Some(path(text(e))).filter(|_| !text(e).is_empty()),
            other => {
                warnings.push(s.diag(e, format!("<Https><{other}> is not supported; ignored")))
            }
        }
    }
    let cert = cert.ok_or_else(|| s.err(node, "<Https> has no <Cert>"))?;
    let key = key.ok_or_else(|| s.err(node, "<Https> has no <Key>"))?;
    let loaded = super::tls::load_key(&cert, &key, ca.as_deref())
        .map_err(|e| s.err(node, format!("<Https>: {e}")))?;
    let switch = |name: &str, default: bool| -> Result<bool, ConfigError> {
        node.attribute(name).map_or(Ok(default), |v| {
            on_off_str(s, node, v)
                .map_err(|_| s.err(node, format!("<Https {name}=\"{v}\">: expected ON or OFF")))
        })
    };
    let tls13 = switch("TLS1.3", true)?;
    let tls12 = switch("TLS1.2", true)?;
    for old in ["TLS1.1", "TLS1.0", "SSL3.0"] {
        if switch(old, false)? {
            warnings.push(s.diag(
                node,
                format!("WARNING <Https {old}=\"ON\"> refused: cairn speaks TLS 1.2 and 1.3 only"),
            ));
        }
    }
    if !tls12 && !tls13 {
        return Err(s.err(
            node,
            "<Https> turns both TLS1.2 and TLS1.3 off: no protocol is left",
        ));
    }
    if !switch("FS", true)? {
        warnings.push(s.diag(
            node,
            "<Https FS=\"OFF\">: every suite cairn offers has forward secrecy; kept",
        ));
    }
    let ktls = switch("KTLS", true)?;
    let suites = match node.attribute("CipherSuite").map(str::trim) {
        Some(spec) if !spec.is_empty() => {
            let (suites, notes) = super::tls::map_ciphers(spec);
            for n in notes {
                warnings.push(s.diag(node, format!("<Https CipherSuite> {n}")));
            }
            if suites.is_empty() && tls12 {
                warnings.push(s.diag(
                    node,
                    "<Https CipherSuite> names no suite rustls has; TLS 1.2 keeps rustls's defaults",
                ));
                None
            } else {
                Some(suites)
            }
        }
        _ => None,
    };
    Ok(super::tls::HttpsBlock {
        addrs,
        cert_file: cert,
        key_file: key,
        ca_file: ca,
        key: loaded,
        tls12,
        tls13,
        suites,
        ktls,
        place: format!("{}:{}", s.file, s.line(node)),
    })
}

/// What `<VHostDefault>` gives every vhost before its own elements apply.
struct Defaults<'a> {
    options: &'a Options,
    origin: &'a OriginOptions,
    log: &'a LogSettings,
    base: Option<&'a Path>,
    resolver: &'a super::Resolver,
}

/// `<Origin Protocol="HTTP|HTTPS"><Address/>…<CA/></Origin>`.
fn parse_origin(
    s: &Src,
    node: Node,
    vh: &mut Vhost,
    defaults: &Defaults,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    let base = defaults.base;
    let protocol = match node.attribute("Protocol").map(str::trim) {
        None => OriginProtocol::Http,
        Some(p) if p.eq_ignore_ascii_case("http") => OriginProtocol::Http,
        Some(p) if p.eq_ignore_ascii_case("https") => OriginProtocol::Https,
        Some(p) => {
            return Err(s.err(
                node,
                format!("<Origin Protocol=\"{p}\">: expected HTTP or HTTPS"),
            ))
        }
    };
    let mut ca = None;
    let first = vh.origins.len();
    for a in elements(node) {
        match a.tag_name().name() {
            tag @ ("Address" | "Address2") => {
                let route = a
                    .attribute("Route")
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(Box::<str>::from);
                let addrs = OriginAddr::parse_all(text(a), &vh.name, protocol, defaults.resolver)
                    .map_err(|r| s.err(a, r))?;
                let list = if tag == "Address" {
                    &mut vh.origins
                } else {
                    &mut vh.standby
                };
                for mut o in addrs {
                    o.route = route.clone();
                    list.push(o);
                }
            }
            "Affinity" => {
                let cookie = a.attribute("Cookie").map(str::trim).unwrap_or_default();
                let sep = a.attribute("RouteSeparator").unwrap_or(".");
                let mut chars = sep.chars();
                match (cookie.is_empty(), chars.next(), chars.next()) {
                    (false, Some(c), None) => {
                        vh.affinity = Some(super::Affinity {
                            cookie: cookie.to_string(),
                            separator: c,
                        })
                    }
                    _ => return Err(s.err(
                        a,
                        "<Affinity>: expected Cookie=\"name\" and a one-character RouteSeparator",
                    )),
                }
            }
            "CA" if !text(a).is_empty() => {
                let p = PathBuf::from(text(a));
                ca = Some((
                    a,
                    match base {
                        Some(b) if p.is_relative() => b.join(p),
                        _ => p,
                    },
                ));
            }
            "CA" => {}
            other => warnings.push(s.diag(
                a,
                format!("<Origin><{other}> is not supported yet; ignored"),
            )),
        }
    }
    let https = vh.origins[first..]
        .iter()
        .chain(&vh.standby)
        .any(|o| o.tls_name.is_some());
    let at = ca.as_ref().map_or(node, |(n, _)| *n);
    let want = ca.as_ref().map(|(_, p)| p.clone());
    match &vh.origin_tls {
        // One trust per vhost: its pooled origin connections are keyed by it,
        // so a second <Origin> may not trust others than the first.
        Some(t) if https && t.ca_file != want => {
            return Err(s.err(
                at,
                "<Origin>: every HTTPS <Origin> of a vhost must name the same <CA> (or none)",
            ))
        }
        Some(_) => {}
        None if https => {
            let t = super::tls::origin_tls(want.as_deref())
                .map_err(|e| s.err(at, format!("<Origin>: {e}")))?;
            vh.origin_tls = Some(std::sync::Arc::new(t));
        }
        None => {}
    }
    if let Some((n, _)) = ca.filter(|_| !https) {
        warnings.push(s.diag(
            n,
            "<Origin><CA> is used only for HTTPS origins; no origin here is HTTPS",
        ));
    }
    Ok(())
}

fn parse_vhost(
    s: &Src,
    node: Node,
    defaults: &Defaults,
    cache_listen: &[IpAddr],
    warnings: &mut Vec<Diag>,
) -> Result<Option<Vhost>, ConfigError> {
    let name = node
        .attribute("Name")
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| s.err(node, "<Vhost> without a Name attribute"))?;
    if !valid_host_name(&name) {
        return Err(s.err(
            node,
            format!("vhost name '{name}' is not a valid host name"),
        ));
    }
    match node
        .attribute("Status")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("active") => {}
        Some("inactive") => return Ok(None),
        Some(other) => {
            return Err(s.err(
                node,
                format!("<Vhost Status=\"{other}\">: expected Active or Inactive"),
            ))
        }
    }
    let mut vh = Vhost {
        name,
        aliases: Vec::new(),
        listen: Vec::new(),
        origins: Vec::new(),
        standby: Vec::new(),
        affinity: None,
        origin_tls: None,
        options: defaults.options.clone(),
        origin_options: defaults.origin.clone(),
        expires_rules: std::sync::Arc::new([]),
        header_rules: std::sync::Arc::new([]),
        compression_rules: std::sync::Arc::new([]),
        ttl_rules: std::sync::Arc::new([]),
        query_rules: std::sync::Arc::new([]),
        bypass_rules: std::sync::Arc::new([]),
        log: defaults.log.clone(),
        access_log: None,
        origin_log: None,
    };
    let mut listen_set = false;
    for e in elements(node) {
        match e.tag_name().name() {
            "Origin" => parse_origin(s, e, &mut vh, defaults, warnings)?,
            "Listen" => {
                listen_set = true;
                let t = text(e);
                if t.eq_ignore_ascii_case("off") {
                    continue;
                }
                let addrs = parse_listen(t, cache_listen).ok_or_else(|| {
                    s.err(
                        e,
                        format!("<Listen> '{t}': expected IP:PORT, *:PORT or OFF"),
                    )
                })?;
                for a in addrs {
                    if !vh.listen.contains(&a) {
                        vh.listen.push(a);
                    }
                }
            }
            "Alias" => {
                let a = text(e).to_ascii_lowercase();
                let bare = a.strip_prefix("*.").unwrap_or(&a);
                if !valid_host_name(bare) || bare.contains('*') {
                    return Err(s.err(
                        e,
                        format!("<Alias> '{a}': expected a host name or *.domain"),
                    ));
                }
                vh.aliases.push(a);
            }
            "Options" => apply_options(s, e, &mut vh.options, warnings)?,
            "OriginOptions" => apply_origin_options(s, e, &mut vh.origin_options, warnings)?,
            "Log" => apply_log(s, e, defaults.base, &mut vh.log, warnings)?,
            other => {
                warnings.push(s.diag(e, format!("<Vhost><{other}> is not supported yet; ignored")))
            }
        }
    }
    if !listen_set {
        vh.listen = expand_star(cache_listen, 80);
    }
    if vh.origins.is_empty() {
        return Err(s.err(
            node,
            format!("vhost '{}' has no <Origin><Address>", vh.name),
        ));
    }
    if let Some(dir) = vh.log.dir.as_ref().filter(|_| vh.log.access.enabled) {
        let t = LogTarget::new(dir, &vh.name, "access", &vh.log.access);
        vh.access_log = Some(std::sync::Arc::new(t));
    }
    Ok(Some(vh))
}

fn valid_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `IP:PORT`, `[v6]:PORT`, `*:PORT`.
fn parse_listen(t: &str, cache_listen: &[IpAddr]) -> Option<Vec<SocketAddr>> {
    if let Some(port) = t.strip_prefix("*:") {
        return Some(expand_star(cache_listen, port.parse().ok()?));
    }
    t.parse::<SocketAddr>().ok().map(|a| vec![a])
}

fn apply_options(
    s: &Src,
    node: Node,
    o: &mut Options,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    for e in elements(node) {
        match e.tag_name().name() {
            "ConnectionHeader" => {
                o.keep_alive.always_close = match text(e).to_ascii_lowercase().as_str() {
                    "keep-alive" => false,
                    "close" => true,
                    other => {
                        return Err(s.err(
                            e,
                            format!("<ConnectionHeader> '{other}': expected keep-alive or close"),
                        ))
                    }
                }
            }
            "ClientKeepAliveSec" => o.keep_alive.timeout_secs = number(s, e, text(e), 1, 86_400)?,
            "KeepAliveHeader" => {
                o.keep_alive.keep_alive_header = on_off(s, e)?;
                // Attributes travel with their element: an unset Max is the default, 0.
                o.keep_alive.max = match e.attribute("Max") {
                    Some(max) => number(s, e, max.trim(), 0, u32::MAX / 2)?,
                    None => 0,
                };
            }
            "TTL" => {
                if let Some(m) = e.attribute("Mode") {
                    o.ttl_mode = match m.trim().to_ascii_lowercase().as_str() {
                        "rfc9111" => super::TtlMode::Rfc9111,
                        "ston" => super::TtlMode::Ston,
                        other => {
                            return Err(s.err(
                                e,
                                format!("<TTL Mode=\"{other}\">: expected rfc9111 or ston"),
                            ))
                        }
                    };
                }
                parse_ttl(s, e, &mut o.ttl, warnings)?;
            }
            "TTLExtensionBy4xx" => o.ttl.extension_4xx = on_off(s, e)?,
            "TTLExtensionBy5xx" => o.ttl.extension_5xx = on_off(s, e)?,
            "TTLExtensionByFail" => o.ttl.extension_fail = on_off(s, e)?,
            "UnvalidatableObjectResCode" => {
                let n = number(s, e, text(e), 0, 599)? as u16;
                // A status whose response has a body (cairn's error page).
                if n != 0 && (n < 200 || n == 204 || n == 304) {
                    return Err(s.err(
                        e,
                        format!("<UnvalidatableObjectResCode> {n}: 0 or a status from 200 to 599 (not 204 or 304)"),
                    ));
                }
                o.ttl.unvalidatable_status = n;
            }
            "RefreshExpired" => o.ttl.refresh_expired = on_off(s, e)?,
            "NoCacheRequestExpire" => o.ttl.no_cache_request_expire = on_off(s, e)?,
            "BypassNoCacheRequest" => o.ttl.bypass_no_cache_request = on_off(s, e)?,
            "OriginalHeader" => {
                o.headers.original = on_off(s, e)?;
                o.headers.standard_extra = match e.attribute("Standard") {
                    Some(v) => on_off_str(s, e, v)?,
                    None => false,
                };
            }
            "CacheStatusHeader" => o.cache_status_header = on_off(s, e)?,
            "ForwardedHeaders" => o.forwarded_headers = on_off(s, e)?,
            "UnkeyedHeaders" => {
                let mut list = Vec::new();
                for name in text(e).split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if !crate::policy::cond::is_token(name) {
                        return Err(
                            s.err(e, format!("<UnkeyedHeaders> '{name}' is not a header name"))
                        );
                    }
                    list.push(name.to_ascii_lowercase().into_bytes().into_boxed_slice());
                }
                o.unkeyed = list;
            }
            "RefreshExpiresHeader" => {
                let base = match e.attribute("Base") {
                    None => crate::policy::Base::Access,
                    Some(b) => crate::policy::Base::parse(b.trim()).ok_or_else(|| {
                        s.err(e, format!("<RefreshExpiresHeader Base=\"{b}\">: expected Access or Modification"))
                    })?,
                };
                o.refresh_expires = on_off(s, e)?.then_some(base);
            }
            "ModifyHeader" => {
                let first_only = match e.attribute("FirstOnly") {
                    Some(v) => on_off_str(s, e, v)?,
                    None => false,
                };
                o.modify_header = on_off(s, e)?.then_some(first_only);
            }
            "AgeHeader" => o.age_header = on_off(s, e)?,
            "CaseSensitive" => o.case_sensitive = on_off(s, e)?,
            tag @ ("BypassPostRequest" | "BypassGetRequest" | "BypassPutRequest") => {
                let flag = |name: &str, dflt: bool| match e.attribute(name) {
                    Some(v) => on_off_str(s, e, v),
                    None => Ok(dflt),
                };
                let b = super::Bypass {
                    on: on_off(s, e)?,
                    origin_affinity: flag("OriginAffinity", true)?,
                    sticky: flag("Sticky", true)?,
                    private: flag("Private", false)?,
                };
                match tag {
                    "BypassPostRequest" => o.bypass_post = b,
                    "BypassGetRequest" => o.bypass_get = b,
                    _ => o.bypass_put = b,
                }
            }
            "ApplyQueryString" => {
                o.apply_query = on_off(s, e)?;
                if e.attribute("Collective")
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("ON"))
                {
                    warnings.push(s.diag(
                        e,
                        "<ApplyQueryString Collective=\"ON\"> is not supported; treated as OFF",
                    ));
                }
            }
            "VaryHeader" => {
                let mut list = Vec::new();
                for name in text(e).split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if name != "*" && !crate::policy::cond::is_token(name) {
                        return Err(s.err(e, format!("<VaryHeader> '{name}' is not a header name")));
                    }
                    list.push(name.to_ascii_lowercase().into_bytes().into_boxed_slice());
                }
                o.vary_headers = list;
            }
            "AcceptEncoding" => o.accept_encoding = on_off(s, e)?,
            "Compression" => o.compression = parse_compression(s, e)?,
            "Drm" => o.drm = parse_drm(s, e, warnings)?.map(std::sync::Arc::new),
            "ETagHeader" => o.etag_header = on_off(s, e)?,
            "ViaHeader" => o.via_header = on_off(s, e)?,
            "ServerHeader" => o.server_header = on_off(s, e)?,
            "IfRange" => {
                o.if_range = on_off(s, e)?;
                if e.attribute("Purge")
                    .is_some_and(|p| !p.trim().eq_ignore_ascii_case("off"))
                {
                    warnings.push(s.diag(e, "<IfRange Purge> is not supported yet; ignored"));
                }
            }
            "LastModifiedCheck" => {
                o.lm_or_later = match text(e).to_ascii_lowercase().as_str() {
                    "exact" => false,
                    "orlater" => true,
                    other => {
                        return Err(s.err(
                            e,
                            format!("<LastModifiedCheck> '{other}': expected exact or orlater"),
                        ))
                    }
                }
            }
            "ContentFreshnessCheck" => {
                o.freshness_check = match text(e).to_ascii_uppercase().as_str() {
                    "BOTH" => super::FreshnessCheck::Both,
                    "LMT" => super::FreshnessCheck::LastModified,
                    "ETAG" => super::FreshnessCheck::ETag,
                    other => {
                        return Err(s.err(
                            e,
                            format!(
                                "<ContentFreshnessCheck> '{other}': expected BOTH, LMT or ETAG"
                            ),
                        ))
                    }
                }
            }
            "RedirectHttpToHttps" => {
                o.redirect_https = if on_off(s, e)? {
                    let code = match e.attribute("ResCode") {
                        Some(c) => number(s, e, c.trim(), 300, 399)? as u16,
                        None => 307,
                    };
                    Some(code)
                } else {
                    None
                };
            }
            other => warnings.push(s.diag(
                e,
                format!("<Options><{other}> is not supported yet; ignored"),
            )),
        }
    }
    Ok(())
}

fn apply_origin_options(
    s: &Src,
    node: Node,
    o: &mut OriginOptions,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    for e in elements(node) {
        let secs = |lo| number(s, e, text(e), lo, 3600).map(|n| Duration::from_secs(u64::from(n)));
        match e.tag_name().name() {
            "ConnectTimeout" => o.connect_timeout = secs(1)?,
            "ReceiveTimeout" => o.receive_timeout = secs(1)?,
            "ReuseTimeout" => o.reuse_timeout = secs(0)?,
            "BalanceMode" => {
                o.balance = match text(e).to_ascii_lowercase().as_str() {
                    "roundrobin" => super::BalanceMode::RoundRobin,
                    "session" => super::BalanceMode::Session,
                    "hash" => super::BalanceMode::Hash,
                    t => {
                        return Err(s.err(
                            e,
                            format!("<BalanceMode> '{t}': expected RoundRobin, Session or Hash"),
                        ))
                    }
                }
            }
            "Exclusion" => o.exclusion = number(s, e, text(e), 0, 1000)?,
            "Retry" => {
                o.retry = match text(e) {
                    t if t.eq_ignore_ascii_case("all") => u32::MAX,
                    t => number(s, e, t, 0, 1000)?,
                }
            }
            "Recovery" => {
                let r = &mut o.recovery;
                r.count = number(s, e, text(e), 0, 1000)?;
                if let Some(c) = e.attribute("Cycle") {
                    r.cycle = Duration::from_secs(u64::from(number(s, e, c.trim(), 1, 3600)?));
                }
                if let Some(u) = e.attribute("Uri") {
                    r.uri = probe_path(s, e, u)?;
                }
                if let Some(c) = e.attribute("ResCode") {
                    r.res_codes = res_codes(s, e, c)?;
                }
                if r.count == 0 {
                    warnings.push(s.diag(
                        e,
                        "<Recovery>0: an excluded address is never probed back; it serves again only when every address is excluded, or after a reload",
                    ));
                }
            }
            "HealthChecker" => {
                let attr = |name: &str, lo, hi, dflt| match e.attribute(name) {
                    Some(v) => number(s, e, v.trim(), lo, hi),
                    None => Ok(dflt),
                };
                o.health_checkers.push(super::HealthCheck {
                    path: probe_path(s, e, text(e))?,
                    res_codes: match e.attribute("ResCode") {
                        Some(c) => res_codes(s, e, c)?,
                        None => Vec::new(),
                    },
                    timeout: Duration::from_secs(u64::from(attr("Timeout", 1, 3600, 10)?)),
                    cycle: Duration::from_secs(u64::from(attr("Cycle", 1, 3600, 10)?)),
                    exclusion: attr("Exclusion", 1, 1000, 3)?,
                    recovery: attr("Recovery", 1, 1000, 5)?,
                });
            }
            "XFFClientIPOnly" => o.xff_client_ip_only = on_off(s, e)?,
            "OriginalETag" => o.original_etag = Some(on_off(s, e)?),
            "UserAgent" => {
                o.user_agent = match text(e) {
                    "*" => None,
                    ua if !ua.is_empty()
                        && ua
                            .bytes()
                            .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()) =>
                    {
                        Some(ua.to_string())
                    }
                    ua => {
                        return Err(s.err(
                            e,
                            format!("<UserAgent> '{ua}': expected a printable value or *"),
                        ))
                    }
                }
            }
            "Host" => {
                o.host = match text(e) {
                    "" => None,
                    "*" => Some(super::OriginHost::Client),
                    h if valid_host_header(h) => Some(super::OriginHost::Fixed(h.to_string())),
                    h => return Err(s.err(e, format!("<Host> '{h}': expected host[:port] or *"))),
                }
            }
            other => warnings.push(s.diag(
                e,
                format!("<OriginOptions><{other}> is not supported yet; ignored"),
            )),
        }
    }
    Ok(())
}

/// A probe's request path: absolute, printable, no spaces.
fn probe_path(s: &Src, e: Node, t: &str) -> Result<String, ConfigError> {
    let t = t.trim();
    if t.starts_with('/') && t.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(t.to_string())
    } else {
        Err(s.err(
            e,
            format!(
                "<{}> '{t}': expected an absolute path like /health",
                e.tag_name().name()
            ),
        ))
    }
}

/// `ResCode="0"` (any response) or `"200, 204"`.
fn res_codes(s: &Src, e: Node, t: &str) -> Result<Vec<u16>, ConfigError> {
    let mut out = Vec::new();
    for c in t.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match c.parse::<u16>() {
            Ok(0) => {}
            Ok(n) if (100..=599).contains(&n) => out.push(n),
            _ => {
                return Err(s.err(
                    e,
                    format!("ResCode '{c}': expected 0 (any) or statuses like 200, 204"),
                ))
            }
        }
    }
    Ok(out)
}

/// `host` or `host:port`, as a Host header may carry.
fn valid_host_header(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(']') || a.ends_with(']') => (a, Some(p)),
        _ => (h, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

fn on_off_str(s: &Src, e: Node, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_uppercase().as_str() {
        "ON" => Ok(true),
        "OFF" => Ok(false),
        other => Err(s.err(
            e,
            format!(
                "<{}> attribute '{other}': expected ON or OFF",
                e.tag_name().name()
            ),
        )),
    }
}

/// `<Server><Cache><Storage>`: `<Disk Quota="GB">path</Disk>` (STON; the first is
/// used), or none for a memory-only cache. cairn attributes on `<Storage>`:
/// `SegmentSize`, `Quota`, `MaxObjectSize` with units (`64MB`, `1GB`).
fn parse_storage(
    s: &Src,
    e: Node,
    base: Option<&Path>,
    cache: &mut CacheSettings,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    let size_attr = |name: &str| -> Result<Option<u64>, ConfigError> {
        match e.attribute(name) {
            None => Ok(None),
            Some(v) => parse_size(v).filter(|&n| n > 0).map(Some).ok_or_else(|| {
                s.err(
                    e,
                    format!("<Storage {name}=\"{v}\">: expected a size like 64MB or 1GB"),
                )
            }),
        }
    };
    let mut disks = elements(e).filter(|d| d.tag_name().name() == "Disk");
    match disks.next() {
        None => {
            cache.dir = None;
            cache.quota = 256 << 20;
        }
        Some(d) => {
            let p = text(d);
            if p.is_empty() {
                return Err(s.err(d, "<Disk> needs a directory path"));
            }
            let p = PathBuf::from(p);
            cache.dir = Some(match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            });
            if let Some(q) = d.attribute("Quota") {
                cache.quota = match q.trim().parse::<u64>() {
                    // STON: whole GB (checked: a huge number is an error, not a wrap).
                    Ok(gb) if gb > 0 => gb
                        .checked_mul(1 << 30)
                        .ok_or_else(|| s.err(d, format!("<Disk Quota=\"{q}\">: too large")))?,
                    _ => parse_size(q).filter(|&n| n > 0).ok_or_else(|| {
                        s.err(
                            d,
                            format!(
                                "<Disk Quota=\"{q}\">: expected GB (STON) or a size like 512MB"
                            ),
                        )
                    })?,
                };
            }
        }
    }
    for extra in disks {
        warnings.push(s.diag(extra, "only the first <Disk> is used; this one is ignored"));
    }
    for c in elements(e).filter(|c| c.tag_name().name() != "Disk") {
        warnings.push(s.diag(
            c,
            format!(
                "<Storage><{}> is not supported; ignored",
                c.tag_name().name()
            ),
        ));
    }
    if let Some(q) = size_attr("Quota")? {
        cache.quota = q;
    }
    if let Some(seg) = size_attr("SegmentSize")? {
        if !(1 << 20..=1 << 30).contains(&seg) {
            return Err(s.err(e, "<Storage SegmentSize>: must be between 1MB and 1GB"));
        }
        cache.segment_size = seg;
        cache.segment_explicit = true;
        cache.max_object = seg - (64 << 10);
    }
    if let Some(m) = size_attr("MaxObjectSize")? {
        cache.max_object = m;
    }
    cache.max_object = cache.max_object.min(cache.segment_size - (64 << 10));
    if cache.quota < cache.segment_size * 2 {
        return Err(s.err(
            e,
            format!(
                "cache quota {} bytes is smaller than two segments of {} bytes",
                cache.quota, cache.segment_size
            ),
        ));
    }
    Ok(())
}

/// `<Compression Method="gzip" Level="6" SourceSize="2-2048">ON|OFF</Compression>`
/// (GZ-1); `GzipLevel` is the later manual's name for `Level`.
fn parse_compression(s: &Src, e: Node) -> Result<Option<super::CompressionSettings>, ConfigError> {
    let mut c = super::CompressionSettings::default();
    if let Some(m) = e.attribute("Method").map(str::trim) {
        if !m.eq_ignore_ascii_case("gzip") {
            return Err(s.err(
                e,
                format!("<Compression Method=\"{m}\">: only gzip is supported (GZ-1)"),
            ));
        }
    }
    let level = match (e.attribute("Level"), e.attribute("GzipLevel")) {
        (Some(a), Some(b)) if a.trim() != b.trim() => {
            return Err(s.err(
                e,
                "<Compression> has both Level and GzipLevel, with different values",
            ))
        }
        (Some(l), _) | (None, Some(l)) => Some(l),
        (None, None) => None,
    };
    if let Some(l) = level {
        c.level = match l.trim().parse::<u8>() {
            Ok(n @ 1..=9) => n,
            _ => {
                return Err(s.err(
                    e,
                    format!("<Compression Level=\"{l}\">: gzip levels are 1 to 9 (GZ-1)"),
                ))
            }
        };
    }
    if let Some(r) = e.attribute("SourceSize") {
        let bad = || {
            s.err(
                e,
                format!("<Compression SourceSize=\"{r}\">: expected MIN-MAX in KB, MIN <= MAX"),
            )
        };
        let (lo, hi) = r.split_once('-').ok_or_else(bad)?;
        let kib = |v: &str| v.trim().parse::<u64>().ok().filter(|&n| n <= 1 << 30);
        match (kib(lo), kib(hi)) {
            (Some(lo), Some(hi)) if lo <= hi => {
                c.min_bytes = lo * 1024;
                c.max_bytes = hi * 1024;
            }
            _ => return Err(bad()),
        }
    }
    Ok(on_off(s, e)?.then_some(c))
}

/// `<Drm Status Keyword MaxSourceSize><Algorithm/><IV/><Token/><Key Hash/></Drm>`
/// (DRM-1..DRM-6); `Some` when Active.
fn parse_drm(
    s: &Src,
    e: Node,
    warnings: &mut Vec<Diag>,
) -> Result<Option<crate::policy::drm::DrmSettings>, ConfigError> {
    use crate::policy::drm::{parse_key, DrmSettings, Hash, KeyVar};
    let active = match e.attribute("Status").map(str::trim) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("active") => true,
        Some(v) if v.eq_ignore_ascii_case("inactive") => false,
        Some(v) => {
            return Err(s.err(
                e,
                format!("<Drm Status=\"{v}\">: expected Active or Inactive"),
            ))
        }
    };
    let keyword = e.attribute("Keyword").map(str::trim).unwrap_or("drm");
    if keyword.is_empty() || keyword.contains(['/', '?', '#']) {
        return Err(s.err(e, format!("<Drm Keyword=\"{keyword}\">: one path segment")));
    }
    let max_mb = match e.attribute("MaxSourceSize") {
        None => 500,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n <= 1 << 20)
            .ok_or_else(|| s.err(e, format!("<Drm MaxSourceSize=\"{v}\">: expected MB")))?,
    };
    let (mut iv, mut token, mut key, mut hash) =
        (Vec::new(), Vec::new(), vec![KeyVar::Token], Hash::None);
    let mut enc = Vec::new();
    for c in elements(e) {
        // `Type="enc"`: decrypted once the whole configuration (and so its
        // key material) is known, in `decrypt_secrets`.
        let mut secret = |c: Node, is_iv: bool| -> Result<Vec<u8>, ConfigError> {
            match c.attribute("Type").map(str::trim) {
                None | Some("") | Some("plain") => Ok(text(c).as_bytes().to_vec()),
                Some(t) if t.eq_ignore_ascii_case("enc") => {
                    enc.push(crate::policy::drm::EncSecret {
                        iv: is_iv,
                        text: text(c).to_string(),
                        file: s.file.to_string(),
                        line: s.line(c),
                    });
                    Ok(Vec::new())
                }
                Some(t) => Err(s.err(c, format!("Type=\"{t}\": expected enc or plain"))),
            }
        };
        match c.tag_name().name() {
            "Algorithm" => {
                if !text(c).eq_ignore_ascii_case("rc4") {
                    return Err(s.err(
                        c,
                        format!("<Drm><Algorithm> '{}': only RC4 (DRM-3)", text(c)),
                    ));
                }
            }
            "IV" => iv = secret(c, true)?,
            "Token" => token = secret(c, false)?,
            "Key" => {
                key = parse_key(text(c)).map_err(|r| s.err(c, format!("<Drm><Key>: {r}")))?;
                hash = match c.attribute("Hash") {
                    None => Hash::None,
                    Some(h) => Hash::parse(h).ok_or_else(|| {
                        s.err(
                            c,
                            format!("<Key Hash=\"{h}\">: expected none, MD5, SHA-1 or SHA-256"),
                        )
                    })?,
                };
            }
            other => warnings.push(s.diag(c, format!("<Drm><{other}> is not supported; ignored"))),
        }
    }
    let d = DrmSettings {
        keyword: keyword.to_string(),
        max_source_bytes: max_mb << 20,
        iv,
        token,
        key,
        hash,
        enc,
    };
    // DRM-3, DRM-6: a key whose length does not depend on the URL is checked
    // here (after decryption for encrypted values); one that does is checked
    // per request (500 when it is out of range).
    // An inactive <Drm> (STON's template, an empty Token) is not checked.
    if active && d.enc.is_empty() {
        check_key_len(&d).map_err(|r| s.err(e, r))?;
    }
    Ok(active.then_some(d))
}

/// The fixed-length key check of DRM-3 (see `parse_drm`).
fn check_key_len(d: &crate::policy::drm::DrmSettings) -> Result<(), String> {
    match crate::policy::drm::fixed_key_len(d) {
        Some(n) if !crate::policy::drm::KEY_BYTES.contains(&n) => Err(format!(
            "<Drm>: the RC4 key (IV included) would be {n} bytes; it must be 5 to 256 (DRM-3)"
        )),
        _ => Ok(()),
    }
}

/// DRM-8: decrypts every vhost's `Type="enc"` values, under the key from the
/// first `<Https><Key>` or `secret.key` (`config::secret`). A value that does
/// not decrypt is an error naming its file and line.
fn decrypt_secrets(
    base: Option<&Path>,
    server: &super::ServerSettings,
    vhosts: &mut [Vhost],
) -> Result<(), ConfigError> {
    let mut key = None;
    for vh in vhosts {
        let Some(d) = vh.options.drm.as_mut().filter(|d| !d.enc.is_empty()) else {
            continue;
        };
        let d = std::sync::Arc::make_mut(d);
        let mut last = (String::new(), 0);
        for e in std::mem::take(&mut d.enc) {
            last = (e.file.clone(), e.line);
            let place = |reason: String| {
                ConfigError::Invalid(Diag {
                    file: e.file.clone(),
                    line: e.line,
                    reason,
                })
            };
            if key.is_none() {
                let tls = server.https.first().map(|b| b.key_file.as_path());
                let dir = base.unwrap_or(Path::new("."));
                key = Some(
                    super::secret::key(dir, tls, false)
                        .map_err(|err| place(format!("Type=\"enc\": {err}")))?,
                );
            }
            let plain = key
                .as_ref()
                .expect("set above")
                .decrypt(&e.text)
                .map_err(|err| place(format!("Type=\"enc\": {err}")))?;
            if e.iv {
                d.iv = plain;
            } else {
                d.token = plain;
            }
        }
        check_key_len(d).map_err(|reason| {
            ConfigError::Invalid(Diag {
                file: last.0.clone(),
                line: last.1,
                reason,
            })
        })?;
    }
    Ok(())
}

/// Reads `svc/<vhost>/expires.txt` and `headers.txt` when present. A malformed line
/// is an error naming the file and line; a refused rule is a warning.
fn load_rule_files(
    base: &Path,
    vh: &mut Vhost,
    have_geoip: bool,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    let dir = base.join("svc").join(&vh.name);
    let read = |name: &str| -> Result<Option<(String, String)>, ConfigError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some((path.display().to_string(), t))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    };
    let to_diag = |file: &str, d: crate::policy::RuleDiag| Diag {
        file: file.to_string(),
        line: d.line,
        reason: d.reason,
    };
    let first_error = |file: &str, errs: Vec<crate::policy::RuleDiag>| {
        let n = errs.len();
        let mut it = errs.into_iter();
        let first = it.next().map(|d| to_diag(file, d)).unwrap_or(Diag {
            file: file.to_string(),
            line: 0,
            reason: "invalid".into(),
        });
        for d in it {
            log::error!("{}", to_diag(file, d));
        }
        ConfigError::Invalid(Diag {
            reason: if n > 1 {
                format!(
                    "{} ({} more errors in this file logged)",
                    first.reason,
                    n - 1
                )
            } else {
                first.reason.clone()
            },
            ..first
        })
    };
    if let Some((file, text)) = read("expires.txt")? {
        let parsed = crate::policy::expires::parse(&text).map_err(|e| first_error(&file, e))?;
        warnings.extend(parsed.warnings.into_iter().map(|d| to_diag(&file, d)));
        vh.expires_rules = parsed.rules.into();
    } else if vh.options.refresh_expires.is_some() {
        warnings.push(Diag {
            file: dir.join("expires.txt").display().to_string(),
            line: 0,
            reason: "RefreshExpiresHeader is ON but there is no expires.txt".into(),
        });
    }
    if let Some((file, text)) = read("headers.txt")? {
        let parsed = crate::policy::modify::parse(&text).map_err(|e| first_error(&file, e))?;
        warnings.extend(parsed.warnings.into_iter().map(|d| to_diag(&file, d)));
        for r in parsed
            .rules
            .iter()
            .filter(|r| r.cond.uses_geo() && !have_geoip)
        {
            warnings.push(Diag {
                file: file.clone(),
                line: r.line,
                reason: "a GeoIP condition without <ServiceAccess GeoIP>: it never matches".into(),
            });
        }
        vh.header_rules = parsed.rules.into();
    } else if vh.options.modify_header.is_some() {
        warnings.push(Diag {
            file: dir.join("headers.txt").display().to_string(),
            line: 0,
            reason: "ModifyHeader is ON but there is no headers.txt".into(),
        });
    }
    if let Some((file, text)) = read("querystring.txt")? {
        let case = if vh.options.case_sensitive {
            crate::policy::pattern::Case::Sensitive
        } else {
            crate::policy::pattern::Case::Insensitive
        };
        let parsed =
            crate::policy::querystring::parse(&text, case).map_err(|e| first_error(&file, e))?;
        warnings.extend(parsed.warnings.into_iter().map(|d| to_diag(&file, d)));
        vh.query_rules = parsed.rules.into();
    }
    if let Some((file, text)) = read("bypass.txt")? {
        let parsed = crate::policy::bypass::parse(&text).map_err(|e| first_error(&file, e))?;
        warnings.extend(parsed.warnings.into_iter().map(|d| to_diag(&file, d)));
        for r in parsed.rules.iter().filter(|r| r.cond.uses_geo()) {
            warnings.push(Diag {
                file: file.clone(),
                line: r.line,
                reason: "a GeoIP condition in bypass.txt: it never matches".into(),
            });
        }
        vh.bypass_rules = parsed.rules.into();
    }
    if let Some((file, text)) = read("ttl.txt")? {
        let parsed = crate::policy::ttl::parse(&text).map_err(|e| first_error(&file, e))?;
        warnings.extend(parsed.warnings.into_iter().map(|d| to_diag(&file, d)));
        if vh.options.ttl_mode == super::TtlMode::Rfc9111 && !parsed.rules.is_empty() {
            warnings.push(Diag {
                file: file.clone(),
                line: 0,
                reason: "<TTL Mode=\"rfc9111\"> ignores ttl.txt (it is STON's policy)".into(),
            });
        }
        vh.ttl_rules = parsed.rules.into();
    }
    if let Some((file, text)) = read("compression.txt")? {
        let parsed = crate::policy::compression::parse(&text).map_err(|e| first_error(&file, e))?;
        warnings.extend(parsed.warnings.into_iter().map(|d| to_diag(&file, d)));
        vh.compression_rules = parsed.rules.into();
    } else if vh.options.compression.is_some() {
        warnings.push(Diag {
            file: dir.join("compression.txt").display().to_string(),
            line: 0,
            reason:
                "Compression is ON but there is no compression.txt: nothing is compressed (GZ-2)"
                    .into(),
        });
    }
    Ok(())
}

/// `<Log Dir>` with `<Access Type Unit Retention Form>ON|OFF</Access>` (LOG-1).
/// A `<Log>` element turns logging on (STON's default is ON) in `Dir`, which
/// defaults to `logs` beside the configuration files.
fn apply_log(
    s: &Src,
    node: Node,
    base: Option<&Path>,
    log: &mut LogSettings,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    let resolve = |p: &str| {
        let p = PathBuf::from(p);
        match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    };
    match node
        .attribute("Dir")
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        Some(d) => log.dir = Some(resolve(d)),
        None if log.dir.is_none() => match base {
            Some(_) => log.dir = Some(resolve("logs")),
            None => {
                warnings.push(s.diag(
                    node,
                    "<Log> without Dir in an embedded configuration: no log files are written",
                ));
            }
        },
        None => {}
    }
    for e in elements(node) {
        match e.tag_name().name() {
            "Access" => apply_log_file(s, e, &mut log.access)?,
            "Origin" => {
                apply_log_file(s, e, &mut log.origin)?;
                if log.origin.enabled {
                    warnings.push(s.diag(
                        e,
                        "<Log><Origin>: the origin log (LOG-2) is not written yet; ignored",
                    ));
                }
                log.origin.enabled = false;
            }
            other => {
                warnings.push(s.diag(e, format!("<Log><{other}> is not supported yet; ignored")))
            }
        }
    }
    Ok(())
}

fn apply_log_file(s: &Src, e: Node, f: &mut LogFileSettings) -> Result<(), ConfigError> {
    f.enabled = on_off(s, e)?;
    let minutes = |t: &str| number(s, e, t.trim(), 1, 1440);
    // STON's size unit is MB; a suffix (`64KB`) is a cairn extension.
    let bytes = |t: &str| -> Result<u64, ConfigError> {
        let t = t.trim();
        let v = match t.parse::<u64>() {
            Ok(mb) => mb.checked_mul(1 << 20),
            Err(_) => parse_size(t),
        };
        v.filter(|&b| b >= 1024).ok_or_else(|| {
            s.err(
                e,
                format!(
                    "<{}> Unit '{t}': expected a size in MB (or 64KB, 1GB)",
                    e.tag_name().name()
                ),
            )
        })
    };
    let kind = e
        .attribute("Type")
        .unwrap_or("time")
        .trim()
        .to_ascii_lowercase();
    let unit = e.attribute("Unit");
    f.roll = match kind.as_str() {
        "time" => Roll::Time {
            minutes: unit.map(minutes).transpose()?.unwrap_or(1440),
        },
        "size" => Roll::Size {
            bytes: unit.map(bytes).transpose()?.unwrap_or(100 << 20),
        },
        "both" => {
            let u = unit.unwrap_or("1440, 100");
            let (m, b) = u.split_once(',').ok_or_else(|| {
                s.err(
                    e,
                    format!(
                        "<{}> Unit '{u}': Type=\"both\" needs \"minutes, size\"",
                        e.tag_name().name()
                    ),
                )
            })?;
            Roll::Both {
                minutes: minutes(m)?,
                bytes: bytes(b)?,
            }
        }
        other => {
            return Err(s.err(
                e,
                format!(
                    "<{}> Type '{other}': expected time, size or both",
                    e.tag_name().name()
                ),
            ))
        }
    };
    if let Some(r) = e.attribute("Retention") {
        f.retention = number(s, e, r.trim(), 1, 10_000)?;
    }
    if let Some(local) = e.attribute("Local") {
        f.local = on_off_str(s, e, local)?;
    }
    if let Some(x) = e.attribute("XFF") {
        f.xff = match x.trim().to_ascii_lowercase().as_str() {
            "on" => XffLog::On,
            "off" => XffLog::Off,
            "trimcip" => XffLog::TrimCip,
            other => {
                return Err(s.err(
                    e,
                    format!(
                        "<{}> XFF '{other}': expected ON, OFF or TrimCIP",
                        e.tag_name().name()
                    ),
                ))
            }
        };
    }
    if let Some(form) = e.attribute("Form") {
        f.form = match form.trim().to_ascii_lowercase().as_str() {
            "ston" | "w3c" => LogForm::Ston,
            "apache" => LogForm::Apache,
            other => {
                return Err(s.err(
                    e,
                    format!(
                        "<{}> Form '{other}': expected ston or apache",
                        e.tag_name().name()
                    ),
                ))
            }
        };
    }
    Ok(())
}

/// `64MB`, `1GB`, `512KB`, `100B` or a bare number of bytes (case-insensitive; KiB-based).
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_uppercase();
    let digits = v.chars().take_while(|c| c.is_ascii_digit()).count();
    let n: u64 = v[..digits].parse().ok()?;
    let mult = match v[digits..].trim() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `<Server><Cairn>`: settings STON does not have.
fn parse_cairn(
    s: &Src,
    node: Node,
    server: &mut ServerSettings,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    for e in elements(node) {
        let secs = || number(s, e, text(e), 1, 3600).map(|n| Duration::from_secs(u64::from(n)));
        match e.tag_name().name() {
            "RequestTimeoutSec" => server.request_timeout = secs()?,
            "DrainTimeoutSec" => server.drain_timeout = secs()?,
            "MaxConnectionsPerIp" => {
                server.max_per_ip = number(s, e, text(e), 0, 10_000_000)? as usize
            }
            "MaxFillsPerShard" => server.max_fills = number(s, e, text(e), 1, 100_000)? as usize,
            "BackgroundFillPercent" => {
                server.background_fill_pct = number(s, e, text(e), 0, 100)? as u8
            }
            "RequestBodyMemory" | "RequestBodyDisk" => {
                let n = parse_size(text(e)).ok_or_else(|| {
                    s.err(
                        e,
                        format!("<{}> '{}' is not a size", e.tag_name().name(), text(e)),
                    )
                })?;
                if e.tag_name().name() == "RequestBodyMemory" {
                    server.body_memory = n;
                } else {
                    server.body_disk = n;
                }
            }
            "SpoolDir" => server.spool_dir = Some(PathBuf::from(text(e))),
            "HitSendTimeoutSec" => server.hit_send_timeout = secs()?,
            "TlsHandshakeTimeoutSec" => server.handshake_timeout = secs()?,
            "Resolver" => {
                let r = &mut server.resolver;
                r.servers.clear();
                for a in text(e)
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|a| !a.is_empty())
                {
                    let addr = a
                        .parse::<SocketAddr>()
                        .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| {
                            s.err(e, format!("<Resolver> '{a}': expected IP or IP:PORT"))
                        })?;
                    r.servers.push(addr);
                }
                if let Some(t) = e.attribute("MaxTtlSec") {
                    r.max_ttl = Duration::from_secs(u64::from(number(s, e, t.trim(), 1, 86_400)?));
                }
            }
            "MinSendRate" => {
                server.min_send_rate = parse_size(text(e)).filter(|&n| n > 0).ok_or_else(|| {
                    s.err(
                        e,
                        format!(
                            "<MinSendRate> '{}' is not a size per second (16KB)",
                            text(e)
                        ),
                    )
                })?
            }
            "FillMemoryPerShard" => {
                server.fill_memory = parse_size(text(e)).ok_or_else(|| {
                    s.err(
                        e,
                        format!("<FillMemoryPerShard> '{}' is not a size", text(e)),
                    )
                })?
            }
            other => warnings.push(s.diag(e, format!("<Cairn><{other}> is not known; ignored"))),
        }
    }
    Ok(())
}

fn on_off(s: &Src, e: Node) -> Result<bool, ConfigError> {
    match text(e).to_ascii_uppercase().as_str() {
        "ON" => Ok(true),
        "OFF" => Ok(false),
        other => Err(s.err(
            e,
            format!("<{}> '{other}': expected ON or OFF", e.tag_name().name()),
        )),
    }
}

fn number(s: &Src, e: Node, t: &str, lo: u32, hi: u32) -> Result<u32, ConfigError> {
    match t.parse::<u32>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(s.err(
            e,
            format!(
                "<{}> '{t}': expected a whole number from {lo} to {hi}",
                e.tag_name().name()
            ),
        )),
    }
}

/// `<Manager Port Listen HttpMethod Role><Allow Role>…</Allow></Manager>`.
fn parse_manager(
    s: &Src,
    e: Node,
    warnings: &mut Vec<super::Diag>,
) -> Result<super::manager::ManagerSettings, ConfigError> {
    use super::manager::{Allow, ManagerSettings, Role};
    let port = match e.attribute("Port") {
        // 0: an ephemeral port (tests, tools); the bound address is logged.
        Some(p) => number(s, e, p.trim(), 0, 65_535)? as u16,
        None => 10040,
    };
    // STON listens on every address; the access list decides who is served.
    let ip: IpAddr = match e.attribute("Listen") {
        Some(a) => a
            .trim()
            .parse()
            .map_err(|_| s.err(e, format!("<Manager Listen> '{a}' is not an IP address")))?,
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let http_method = match e
        .attribute("HttpMethod")
        .map(|v| v.trim().to_ascii_uppercase())
    {
        None => true,
        Some(v) if v == "ON" => true,
        Some(v) if v == "OFF" => false,
        Some(v) => return Err(s.err(e, format!("<Manager HttpMethod> '{v}': expected ON or OFF"))),
    };
    let role_attr = |n: Node, default: Role| match n.attribute("Role") {
        None => Ok(default),
        Some(r) => Role::parse(r)
            .ok_or_else(|| s.err(n, format!("Role '{r}': expected Admin, User or Looker"))),
    };
    let default_role = role_attr(e, Role::Admin)?;
    let mut allow = Vec::new();
    for a in elements(e) {
        match a.tag_name().name() {
            "Allow" => {
                let role = role_attr(a, default_role)?;
                allow.push(
                    Allow::parse(text(a), role).map_err(|r| s.err(a, format!("<Allow> {r}")))?,
                );
            }
            other => {
                warnings.push(s.diag(a, format!("<Manager><{other}> is not supported; ignored")))
            }
        }
    }
    if http_method && e.attribute("HttpMethod").is_none() {
        warnings.push(s.diag(
            e,
            "WARNING <Manager>: HttpMethod is ON (STON's default): PURGE, EXPIRE and HARDPURGE on the service ports are taken from every Admin address of <Allow>; a proxy or TLS terminator on such an address would pass them for every client. Set HttpMethod=\"OFF\" unless you need them",
        ));
    }
    if allow.is_empty() {
        warnings.push(s.diag(
            e,
            "<Manager> has no <Allow>: every address is refused (add <Allow>127.0.0.1</Allow> for local use)",
        ));
    }
    Ok(ManagerSettings {
        listen: SocketAddr::new(ip, port),
        http_method,
        allow,
    })
}

/// `<TTL Priority Base>` with `<Res2xx Ratio Max>`…, `<NoCache Ratio Max MaxAge
/// Expire>`, `<NoStore Ratio Max MaxAge Bypass>`, `<ConnectTimeout>`,
/// `<ReceiveTimeout>`, `<OriginBusy>` (TTL-1..4).
fn parse_ttl(
    s: &Src,
    e: Node,
    t: &mut crate::policy::ttl::TtlPolicy,
    warnings: &mut Vec<Diag>,
) -> Result<(), ConfigError> {
    use crate::policy::ttl::{ClassTtl, Token};
    const TEN_YEARS: u32 = 315_360_000;
    let secs = |n: Node, v: &str| number(s, n, v.trim(), 0, TEN_YEARS).map(u64::from);
    if let Some(p) = e.attribute("Priority") {
        let mut list = Vec::new();
        for tok in p.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let tok = Token::parse(tok).ok_or_else(|| {
                s.err(e, format!("<TTL Priority>: '{tok}' is not one of cc_nostore, cc_nocache, custom, cc_maxage, rescode, cc_smaxage"))
            })?;
            if !list.contains(&tok) {
                list.push(tok);
            }
        }
        t.priority = list;
    }
    if let Some(b) = e.attribute("Base") {
        t.base_request = match b.trim().to_ascii_lowercase().as_str() {
            "request" => true,
            "response" => false,
            other => {
                return Err(s.err(
                    e,
                    format!("<TTL Base=\"{other}\">: expected request or response"),
                ))
            }
        };
    }
    let class = |n: Node, c: &mut ClassTtl| -> Result<(), ConfigError> {
        c.secs = secs(n, text(n))?;
        if let Some(r) = n.attribute("Ratio") {
            c.ratio = number(s, n, r.trim(), 0, 10_000)?;
        }
        // Without Max the default cap stays, raised to the TTL itself.
        c.max = match n.attribute("Max") {
            Some(m) => secs(n, m)?,
            None => c.max.max(c.secs),
        };
        Ok(())
    };
    for c in elements(e) {
        match c.tag_name().name() {
            "Res2xx" => class(c, &mut t.res[0])?,
            "Res3xx" => class(c, &mut t.res[1])?,
            "Res4xx" => class(c, &mut t.res[2])?,
            "Res5xx" => class(c, &mut t.res[3])?,
            "NoCache" => {
                class(c, &mut t.no_cache)?;
                if let Some(m) = c.attribute("MaxAge") {
                    t.no_cache_max_age = secs(c, m)?;
                }
                if let Some(v) = c.attribute("Expire") {
                    t.no_cache_expire = on_off_str(s, c, v)?;
                }
            }
            "NoStore" => {
                class(c, &mut t.no_store)?;
                if let Some(m) = c.attribute("MaxAge") {
                    t.no_store_max_age = secs(c, m)?;
                }
                if let Some(v) = c.attribute("Bypass") {
                    t.no_store_bypass = on_off_str(s, c, v)?;
                }
            }
            "ConnectTimeout" => t.connect_timeout = secs(c, text(c))?,
            "ReceiveTimeout" => t.receive_timeout = secs(c, text(c))?,
            "OriginBusy" => t.origin_busy = secs(c, text(c))?,
            other => warnings.push(s.diag(c, format!("<TTL><{other}> is not supported; ignored"))),
        }
    }
    Ok(())
}
