use super::*;

const SERVER: &str = r#"<Server>
  <VHostDefault>
    <Options>
      <ClientKeepAliveSec>7</ClientKeepAliveSec>
      <KeepAliveHeader Max="5">ON</KeepAliveHeader>
    </Options>
    <OriginOptions><ConnectTimeout>2</ConnectTimeout><ReceiveTimeout>4</ReceiveTimeout></OriginOptions>
  </VHostDefault>
  <Host><Name>ston</Name><Bogus/></Host>
</Server>"#;

fn load(server: &str, vhosts: &str) -> Result<Loaded, ConfigError> {
    xml::load("server.xml", server, "vhosts.xml", vhosts, "test")
}

fn err(server: &str, vhosts: &str) -> Diag {
    match load(server, vhosts) {
        Err(ConfigError::Invalid(d)) => d,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn inheritance_element_by_element() {
    let vhosts = r#"<Vhosts>
  <Vhost Name="A.example.com">
    <Listen>127.0.0.1:8080</Listen>
    <Origin><Address>10.0.0.1:8080</Address><Address>10.0.0.2</Address></Origin>
    <Options><KeepAliveHeader>OFF</KeepAliveHeader></Options>
    <OriginOptions><ReceiveTimeout>9</ReceiveTimeout></OriginOptions>
  </Vhost>
  <Vhost Name="b.example.com">
    <Alias>*.b.example.com</Alias>
    <Origin><Address>10.0.0.3</Address></Origin>
  </Vhost>
  <Vhost Name="off.example.com" Status="Inactive"><Origin><Address>10.0.0.4</Address></Origin></Vhost>
  <Default>b.example.com</Default>
</Vhosts>"#;
    let l = load(SERVER, vhosts).unwrap();
    let c = &l.config;
    assert_eq!(c.vhosts.len(), 2);
    let a = &c.vhosts[0];
    assert_eq!(a.name, "a.example.com");
    // Vhost set KeepAliveHeader (attributes travel with their element: Max back to 0).
    assert!(!a.options.keep_alive.keep_alive_header);
    assert_eq!(a.options.keep_alive.max, 0);
    assert_eq!(a.options.keep_alive.timeout_secs, 7); // inherited
    assert_eq!(a.origin_options.receive_timeout, Duration::from_secs(9));
    assert_eq!(a.origin_options.connect_timeout, Duration::from_secs(2)); // inherited
    assert_eq!(a.origins.len(), 2);
    assert_eq!(a.origins[1].host_header, "a.example.com");
    let b = &c.vhosts[1];
    assert_eq!(b.options.keep_alive.max, 5);
    assert_eq!(b.listen, vec!["0.0.0.0:80".parse().unwrap()]);
    assert_eq!(c.default_vhost, Some(1));
    assert_eq!(c.listeners.len(), 2);
    // An element cairn does not know: a warning with its line, not an error.
    assert!(
        l.warnings
            .iter()
            .any(|w| w.line == 9 && w.reason.contains("<Host><Bogus>")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn errors_name_file_and_line() {
    let ok_vhost =
        |body: &str| format!("<Vhosts>\n<Vhost Name=\"a\">\n{body}\n</Vhost>\n</Vhosts>");
    let cases: Vec<(String, String, &str, u32, &str)> = vec![
        ("<Server>".into(), ok_vhost("<Origin><Address>1.2.3.4</Address></Origin>"), "server.xml", 1, "malformed XML"),
        (
            "<Server><VHostDefault><Options>\n<ClientKeepAliveSec>ten</ClientKeepAliveSec></Options></VHostDefault></Server>".into(),
            ok_vhost("<Origin><Address>1.2.3.4</Address></Origin>"),
            "server.xml",
            2,
            "ClientKeepAliveSec",
        ),
        ("<Server/>".into(), ok_vhost("<Origin><Address>1.2.3.4:x</Address></Origin>"), "vhosts.xml", 3, "bad port"),
        ("<Server/>".into(), ok_vhost("<Listen>nowhere</Listen><Origin><Address>1.2.3.4</Address></Origin>"), "vhosts.xml", 3, "<Listen>"),
        ("<Server/>".into(), ok_vhost(""), "vhosts.xml", 2, "no <Origin>"),
        ("<Server/>".into(), ok_vhost("<Origin><Address>1.2.3.4</Address></Origin><Options><KeepAliveHeader>maybe</KeepAliveHeader></Options>"), "vhosts.xml", 3, "ON or OFF"),
        ("<Server/>".into(), "<Vhosts>\n<Default>zzz</Default>\n<Vhost Name=\"a\"><Origin><Address>1.2.3.4</Address></Origin></Vhost></Vhosts>".into(), "vhosts.xml", 2, "not a vhost"),
        ("<Server/>".into(), "<Vhosts>\n<Vhost Name=\"a\"><Origin><Address>1.2.3.4</Address></Origin></Vhost>\n<Vhost Name=\"A\"><Origin><Address>1.2.3.4</Address></Origin></Vhost></Vhosts>".into(), "vhosts.xml", 3, "already used"),
        ("<Server/>".into(), "<Vhosts/>".into(), "vhosts.xml", 1, "no active"),
        ("<Config/>".into(), ok_vhost(""), "server.xml", 1, "expected <Server>"),
        ("<Server><Cache><Http2 Status=\"Active\">\n<EarlyHints>yes</EarlyHints></Http2></Cache></Server>".into(), ok_vhost("<Origin><Address>1.2.3.4</Address></Origin>"), "server.xml", 2, "ON or OFF"),
        ("<Server/>".into(), ok_vhost("<Origin Protocol=\"HTTPS\">\n<Address>http://1.2.3.4</Address></Origin>"), "vhosts.xml", 4, "http:// under"),
        ("<Server/>".into(), ok_vhost("<Origin><Address>https://1.2.3.4</Address></Origin>\n<Origin><Address>https://1.2.3.5</Address><CA>/etc/ssl/certs/ca-certificates.crt</CA></Origin>"), "vhosts.xml", 4, "same <CA>"),
        ("<Server/>".into(), ok_vhost("<Origin Protocol=\"FTP\"><Address>1.2.3.4</Address></Origin>"), "vhosts.xml", 3, "HTTP or HTTPS"),
        ("<Server/>".into(), ok_vhost("<Origin Protocol=\"HTTPS\"><Address>1.2.3.4</Address>\n<CA>/nonexistent/ca.pem</CA></Origin>"), "vhosts.xml", 4, "/nonexistent/ca.pem"),
        ("<Server/>".into(), ok_vhost("<Origin><Address>https://1.2.3.4</Address>\n<CA>/etc/passwd</CA></Origin>"), "vhosts.xml", 4, "no CERTIFICATE"),
    ];
    for (server, vhosts, file, line, reason) in cases {
        let d = err(&server, &vhosts);
        assert_eq!((d.file.as_str(), d.line), (file, line), "{d}");
        assert!(d.reason.contains(reason), "{d} should mention {reason}");
    }
}

#[test]
fn embedded_default_is_valid() {
    let l = embedded();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = l.config;
    assert_eq!(c.listen_addrs(), vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(
        c.vhosts[0].origins[0].addr,
        "127.0.0.1:8081".parse().unwrap()
    );
    assert!(c.describe().contains("localhost (default)"));
    // PUT passes in the embedded default; STON's default (no element) is 501.
    assert!(c.vhosts[0].options.bypass_put.on);
    assert!(!Options::default().bypass_put.on);
}

#[test]
fn cache_storage_and_cairn_settings() {
    let v = r#"<Vhosts><Vhost Name="a"><Origin><Address>10.0.0.1</Address></Origin>
<Options><TTL Priority="cc_maxage, rescode" Base="request"><Res2xx Ratio="50" Max="600">60</Res2xx><NoCache MaxAge="7" Expire="ON">5</NoCache><Wobble/></TTL><RefreshExpired>OFF</RefreshExpired><TTLExtensionBy4xx>ON</TTLExtensionBy4xx><OriginalHeader Standard="ON">OFF</OriginalHeader><CacheStatusHeader>ON</CacheStatusHeader></Options></Vhost></Vhosts>"#;
    let server = r#"<Server><Cache><Storage SegmentSize="16MB" MaxObjectSize="8MB"><Disk Quota="2">data/cache</Disk></Storage></Cache>
<Cairn><RequestTimeoutSec>5</RequestTimeoutSec></Cairn></Server>"#;
    let l = xml::load("server.xml", server, "vhosts.xml", v, "/etc/cairn").unwrap();
    let c = &l.config.cache;
    assert_eq!(c.dir.as_deref(), Some(Path::new("/etc/cairn/data/cache")));
    assert_eq!(
        (c.quota, c.segment_size, c.max_object),
        (2 << 30, 16 << 20, 8 << 20)
    );
    assert_eq!(l.config.server.request_timeout, Duration::from_secs(5));
    let o = &l.config.vhosts[0].options;
    assert_eq!(o.ttl.res[0].secs, 60);
    assert_eq!(o.ttl.res[1].secs, 300);
    assert_eq!((o.ttl.res[0].ratio, o.ttl.res[0].max), (50, 600));
    assert_eq!(
        o.ttl.priority,
        [
            crate::policy::ttl::Token::CcMaxAge,
            crate::policy::ttl::Token::ResCode
        ]
    );
    assert!(o.ttl.base_request && o.ttl.no_cache_expire && o.ttl.extension_4xx);
    assert!(!o.ttl.refresh_expired);
    assert_eq!((o.ttl.no_cache.secs, o.ttl.no_cache_max_age), (5, 7));
    assert!(o.headers.standard_extra && !o.headers.original && o.cache_status_header);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.reason.contains("<TTL><Wobble>")),
        "{:?}",
        l.warnings
    );

    let mem = xml::load(
        "server.xml",
        "<Server><Cache><Storage/></Cache></Server>",
        "vhosts.xml",
        v,
        "/x",
    )
    .unwrap();
    assert_eq!(mem.config.cache.dir, None);

    for (bad, why) in [
        (
            r#"<Server><Cache><Storage SegmentSize="lots"><Disk>/c</Disk></Storage></Cache></Server>"#,
            "SegmentSize",
        ),
        (
            r#"<Server><Cache><Storage SegmentSize="16KB"><Disk>/c</Disk></Storage></Cache></Server>"#,
            "between",
        ),
        (
            r#"<Server><Cache><Storage Quota="10MB"><Disk>/c</Disk></Storage></Cache></Server>"#,
            "two segments",
        ),
        (
            r#"<Server><Cache><Storage><Disk Quota="x">/c</Disk></Storage></Cache></Server>"#,
            "Quota",
        ),
        (
            r#"<Server><Cache><Storage><Disk></Disk></Storage></Cache></Server>"#,
            "directory",
        ),
        (
            // 2^40 GB would wrap a shift by 30 bits.
            r#"<Server><Cache><Storage><Disk Quota="1099511627776">/c</Disk></Storage></Cache></Server>"#,
            "too large",
        ),
    ] {
        match xml::load("server.xml", bad, "vhosts.xml", v, "/x") {
            Err(ConfigError::Invalid(d)) => assert!(d.reason.contains(why), "{d}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn segments_are_sized_for_the_shard_count_unless_the_size_is_explicit() {
    let d = CacheSettings::default(); // 1 GB of 64 MiB segments: 16
    for (shards, seg) in [
        (1, 64 << 20),
        (15, 64 << 20),
        (16, 60 << 20),
        (64, 15 << 20),
    ] {
        let s = d.store_config(shards);
        assert_eq!(s.segment_size, seg, "{shards} shards");
        assert!(s.quota / s.segment_size > shards as u64, "{shards} shards");
        assert!(s.max_object <= s.segment_size - (64 << 10));
    }
    // 2000 shards on 1 GB: 1 MiB segments (the floor); the store then refuses.
    assert_eq!(d.store_config(2000).segment_size, 1 << 20);
    let explicit = CacheSettings {
        segment_explicit: true,
        ..CacheSettings::default()
    };
    assert_eq!(explicit.store_config(64).segment_size, 64 << 20);
}

#[test]
fn https_origins_get_a_client_configuration_and_plain_ones_none() {
    let vhosts = r#"<Vhosts>
  <Vhost Name="a.example"><Origin Protocol="HTTPS"><Address>10.0.0.1</Address></Origin><Origin><Address>http://10.0.0.2</Address></Origin></Vhost>
  <Vhost Name="b.example"><Origin><Address>10.0.0.3</Address></Origin></Vhost>
</Vhosts>"#;
    let l = load("<Server/>", vhosts).unwrap();
    let a = &l.config.vhosts[0];
    assert_eq!(a.origins[0].addr.port(), 443);
    assert!(a.origins[0].tls_name.is_some());
    assert!(
        a.origins[1].tls_name.is_none(),
        "http:// in a plain <Origin> stays plain"
    );
    let t = a.origin_tls.as_ref().expect("a client configuration");
    assert!(t.ca_file.is_none(), "the system's roots");
    assert!(l.config.vhosts[1].origin_tls.is_none());
}

#[test]
fn origin_balancing_failure_and_affinity_elements() {
    let server = r#"<Server><VHostDefault><OriginOptions>
  <BalanceMode>Hash</BalanceMode><Exclusion>4</Exclusion><Retry>1</Retry>
  <Recovery Cycle="3" Uri="/ping" ResCode="200, 204">2</Recovery>
  <HealthChecker ResCode="200" Timeout="2" Cycle="5" Exclusion="1" Recovery="3">/health</HealthChecker>
  <Host>origin.example.com:8080</Host>
</OriginOptions></VHostDefault></Server>"#;
    let vhosts = r#"<Vhosts><Vhost Name="a.example.com"><Origin>
  <Affinity Cookie="JSESSIONID" RouteSeparator="."/>
  <Address Route="tomcat1">10.0.0.1</Address><Address>10.0.0.2</Address>
  <Address2>10.0.0.9</Address2>
</Origin><OriginOptions><Retry>all</Retry><Host>*</Host></OriginOptions></Vhost></Vhosts>"#;
    let l = load(server, vhosts).unwrap();
    let v = &l.config.vhosts[0];
    let o = &v.origin_options;
    assert_eq!(o.balance, BalanceMode::Hash);
    assert_eq!((o.exclusion, o.retry), (4, u32::MAX));
    assert_eq!(o.host, Some(OriginHost::Client));
    assert_eq!(
        (
            o.recovery.cycle.as_secs(),
            o.recovery.uri.as_str(),
            o.recovery.count
        ),
        (3, "/ping", 2)
    );
    assert_eq!(o.recovery.res_codes, [200, 204]);
    let hc = &o.health_checkers[0];
    assert_eq!(
        (
            hc.path.as_str(),
            hc.timeout.as_secs(),
            hc.cycle.as_secs(),
            hc.exclusion,
            hc.recovery
        ),
        ("/health", 2, 5, 1, 3)
    );
    assert_eq!(v.origins.len(), 2);
    assert_eq!(v.origins[0].route.as_deref(), Some("tomcat1"));
    assert_eq!(v.standby[0].addr, "10.0.0.9:80".parse().unwrap());
    assert_eq!(
        v.affinity,
        Some(Affinity {
            cookie: "JSESSIONID".into(),
            separator: '.'
        })
    );
    // Bad values: an error with the line, never a default.
    for (bad, want) in [
        ("<BalanceMode>Random</BalanceMode>", "expected RoundRobin"),
        ("<Retry>many</Retry>", "whole number"),
        ("<Recovery Uri=\"ping\">2</Recovery>", "absolute path"),
        (
            "<HealthChecker ResCode=\"abc\">/h</HealthChecker>",
            "ResCode",
        ),
        ("<Host>a b</Host>", "host[:port]"),
    ] {
        let server = format!(
            "<Server><VHostDefault><OriginOptions>\n{bad}</OriginOptions></VHostDefault></Server>"
        );
        let d = err(
            &server,
            r#"<Vhosts><Vhost Name="a"><Origin><Address>10.0.0.1</Address></Origin></Vhost></Vhosts>"#,
        );
        assert!(d.reason.contains(want) && d.line == 2, "{bad}: {d:?}");
    }
}
