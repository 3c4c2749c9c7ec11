//! Configuration as data: STON-style `server.xml` + `vhosts.xml` parse into one
//! immutable, typed [`Config`]. Errors carry file, line and reason; unknown or not
//! yet supported elements become warnings, never silent.

pub mod manager;
mod origin_addr;
pub mod secret;
pub mod tls;
mod xml;

pub use origin_addr::{stable_hash, OriginAddr, OriginProtocol, Resolver};

use crate::http1::keepalive;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A finding in a configuration file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub file: String,
    pub line: u32,
    pub reason: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(Diag),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Making an encrypted secret (`cairn encrypt-password`).
    #[error("{0}")]
    Secret(secret::SecretError),
}

/// Per-vhost client-facing options (`<Options>`), inherited from `<VHostDefault>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub keep_alive: keepalive::Policy,
    /// `<TTL>` and the options around it (TTL-1..9): STON's policy, used
    /// unless `ttl_mode` is RFC 9111.
    pub ttl: crate::policy::ttl::TtlPolicy,
    /// `<OriginalHeader Standard>` (ORIG-1).
    pub headers: crate::cache::meta::HeaderPolicy,
    /// `<CacheStatusHeader>` (cairn): add `X-Cache: TCP_HIT`… to responses. Debug aid; off.
    pub cache_status_header: bool,
    /// `<AgeHeader>` (AGE-1), default OFF.
    pub age_header: bool,
    /// `<ETagHeader>` (ETAG-1), default ON.
    pub etag_header: bool,
    /// `<ViaHeader>` (VIA-1), default ON.
    pub via_header: bool,
    /// `<ServerHeader>` (SRV-1), default ON.
    pub server_header: bool,
    /// `<IfRange>` (IR-1), default OFF: If-Range is ignored.
    pub if_range: bool,
    /// `<LastModifiedCheck>` (LM-1): `orlater` when true, `exact` (default) when false.
    pub lm_or_later: bool,
    /// `<ContentFreshnessCheck>` (CF-1).
    pub freshness_check: FreshnessCheck,
    /// `<RedirectHttpToHttps ResCode>` (HTTPS-1): the status to redirect with, when ON.
    pub redirect_https: Option<u16>,
    /// `<AcceptEncoding>` (KEY-1), default ON: gzip and identity variants are
    /// separate objects.
    pub accept_encoding: bool,
    /// `<RefreshExpiresHeader Base>` (EXP-1..EXP-6): the default base when ON.
    pub refresh_expires: Option<crate::policy::Base>,
    /// `<ModifyHeader FirstOnly>` (MOD-3): `Some(first_only)` when ON.
    pub modify_header: Option<bool>,
    /// `<TTL Mode>` (TTL-5): STON's priority, or RFC 9111's rules.
    pub ttl_mode: TtlMode,
    /// `<UnkeyedHeaders>` (cairn): request headers never forwarded on a cacheable
    /// request, because the cache key does not hold them (lower case).
    pub unkeyed: Vec<Box<[u8]>>,
    /// `<ForwardedHeaders>` (cairn), default OFF: cairn sets `X-Forwarded-Host`
    /// (the vhost name) and `X-Forwarded-Proto` itself, replacing the client's.
    pub forwarded_headers: bool,
    /// `<Compression Method Level SourceSize>` (GZ-1): `Some` when ON.
    pub compression: Option<CompressionSettings>,
    /// `<CaseSensitive>` (KEY-2), default ON; OFF lower-cases the URL for the
    /// key and for the origin request.
    pub case_sensitive: bool,
    /// `<ApplyQueryString>` (KEY-3), default ON: the query is part of the key,
    /// but for what querystring.txt says.
    pub apply_query: bool,
    /// `<VaryHeader>` (KEY-4): the Vary fields honoured in STON mode (lower
    /// case; `*` for all). Empty, STON's default: Vary is ignored. RFC 9111
    /// mode honours every field whatever this says.
    pub vary_headers: Vec<Box<[u8]>>,
    /// `<Drm Status="Active">` (DRM-1..DRM-7).
    pub drm: Option<std::sync::Arc<crate::policy::drm::DrmSettings>>,
    /// ORG-6: what POST, GET and PUT do (`<Bypass…Request>`).
    pub bypass_post: Bypass,
    pub bypass_get: Bypass,
    pub bypass_put: Bypass,
}

/// `<Compression>` ON: gzip at `level` for objects whose identity size is
/// within `min_bytes..=max_bytes` (`SourceSize`, KiB, inclusive), for URLs
/// compression.txt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSettings {
    pub level: u8,
    pub min_bytes: u64,
    pub max_bytes: u64,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        CompressionSettings {
            level: 6,
            min_bytes: 2 * 1024,
            max_bytes: 2048 * 1024,
        }
    }
}

/// Which freshness rules a vhost's cache follows (TTL-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlMode {
    /// STON: cookies on cached content are ignored (a page personalised from
    /// `Cookie` may be stored under heuristic freshness). Warned about at load.
    #[default]
    Ston,
    /// RFC 9111: no heuristic freshness for a request that carried `Cookie` or
    /// `Authorization`; explicit freshness (`s-maxage`, `max-age`, `Expires`) or
    /// `public` still stores.
    Rfc9111,
}

/// Request headers an origin may use to shape a response although the cache key
/// does not include them (web-cache poisoning vectors), stripped from cacheable
/// requests by default.
pub const DEFAULT_UNKEYED: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-original-uri",
    "x-http-host-override",
    "front-end-https",
    "x-host",
    "x-original-host",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl Options {
    /// Is `name` in the vhost's unkeyed list (`_` counting as `-`)?
    pub fn is_unkeyed(&self, name: &[u8]) -> bool {
        self.unkeyed.iter().any(|u| same_field_name(u, name))
    }
}

/// Field names equal ignoring case, with `_` and `-` the same: CGI, WSGI and
/// PHP-FPM map both to `HTTP_X_FORWARDED_HOST`, so `X_Forwarded_Host` must not
/// pass where `X-Forwarded-Host` is stopped.
pub fn same_field_name(a: &[u8], b: &[u8]) -> bool {
    let norm = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| norm(x) == norm(y))
}

/// Which client validators a 304 from cache considers (CF-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessCheck {
    Both,
    LastModified,
    ETag,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive: keepalive::Policy::default(),
            ttl: Default::default(),
            headers: Default::default(),
            cache_status_header: false,
            age_header: false,
            etag_header: true,
            via_header: true,
            server_header: true,
            if_range: false,
            lm_or_later: false,
            freshness_check: FreshnessCheck::Both,
            redirect_https: None,
            accept_encoding: true,
            refresh_expires: None,
            modify_header: None,
            ttl_mode: TtlMode::Ston,
            unkeyed: DEFAULT_UNKEYED
                .iter()
                .map(|n| n.as_bytes().into())
                .collect(),
            forwarded_headers: false,
            compression: None,
            vary_headers: Vec::new(),
            case_sensitive: true,
            apply_query: true,
            drm: None,
            bypass_post: Bypass {
                on: true,
                ..Bypass::default()
            },
            bypass_get: Bypass::default(),
            bypass_put: Bypass::default(),
        }
    }
}

/// `<BypassPostRequest OriginAffinity Sticky Private>` and its GET and PUT
/// siblings (ORG-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bypass {
    /// ON: the method goes to the origin (GET: skipping the cache); OFF: POST
    /// and PUT are refused with 501, GET is cached.
    pub on: bool,
    /// One client (by address) on one origin address.
    pub origin_affinity: bool,
    /// One client connection on one origin address.
    pub sticky: bool,
    /// A dedicated origin connection per client connection.
    pub private: bool,
}

impl Default for Bypass {
    fn default() -> Self {
        Bypass {
            on: false,
            origin_affinity: true,
            sticky: true,
            private: false,
        }
    }
}

/// Per-vhost origin options (`<OriginOptions>`), inherited from `<VHostDefault>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginOptions {
    /// `<ConnectTimeout>`: past it the client gets 504 (a refused connection gets 502).
    pub connect_timeout: Duration,
    /// `<ReceiveTimeout>`: longest silence from the origin while waiting for a response.
    pub receive_timeout: Duration,
    /// `<ReuseTimeout>`: an idle pooled origin connection older than this is closed.
    pub reuse_timeout: Duration,
    /// `<BalanceMode>` (ORG-2).
    pub balance: BalanceMode,
    /// `<Exclusion>`: consecutive failures that take an address out of
    /// service (0: never).
    pub exclusion: u32,
    /// `<Recovery>`: how an excluded address is probed back.
    pub recovery: Recovery,
    /// `<HealthChecker>`s: probes that run whatever the traffic.
    pub health_checkers: Vec<HealthCheck>,
    /// `<Retry>`: further addresses an idempotent request that failed before
    /// any response byte may try (ORG-4); `u32::MAX` for `all`.
    pub retry: u32,
    /// `<Host>`: the origin's Host header instead of STON's table.
    pub host: Option<OriginHost>,
    /// `<XFFClientIPOnly>ON`: X-Forwarded-For is the client's address alone,
    /// not appended to what the client sent.
    pub xff_client_ip_only: bool,
    /// `<UserAgent>`: `None` (`*`) forwards the client's.
    pub user_agent: Option<String>,
    /// `<OriginalETag>`: `Some(false)` (STON's OFF, when a config says so)
    /// revalidates with If-Modified-Since only; unset or ON sends
    /// If-None-Match too (RFC 9110 §13.1.2 prefers the entity tag).
    pub original_etag: Option<bool>,
}

impl Default for OriginOptions {
    fn default() -> Self {
        OriginOptions {
            connect_timeout: Duration::from_secs(3),
            receive_timeout: Duration::from_secs(10),
            reuse_timeout: Duration::from_secs(60),
            balance: BalanceMode::RoundRobin,
            exclusion: 3,
            recovery: Recovery::default(),
            health_checkers: Vec::new(),
            retry: u32::MAX,
            host: None,
            xff_client_ip_only: false,
            user_agent: Some("cairn".into()),
            original_etag: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceMode {
    #[default]
    RoundRobin,
    /// One client connection, one address (rendezvous on the session).
    Session,
    /// Consistent hashing of the cache key's URL.
    Hash,
}

/// `<Recovery Cycle="10" Uri="/" ResCode="0">5</Recovery>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub cycle: Duration,
    pub uri: String,
    /// Statuses that count as good; empty: any response.
    pub res_codes: Vec<u16>,
    /// Consecutive good probes that restore an address (0: never by probe).
    pub count: u32,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            cycle: Duration::from_secs(10),
            uri: "/".into(),
            res_codes: Vec::new(),
            count: 5,
        }
    }
}

/// `<HealthChecker ResCode="200" Timeout="10" Cycle="10" Exclusion="3"
/// Recovery="5">/path</HealthChecker>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub res_codes: Vec<u16>,
    pub timeout: Duration,
    pub cycle: Duration,
    pub exclusion: u32,
    pub recovery: u32,
}

/// `<Host>`: a fixed Host header, or `*` for the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginHost {
    Fixed(String),
    Client,
}

/// `<Origin><Affinity Cookie="JSESSIONID" RouteSeparator="."/>`: Tomcat's
/// `jvmRoute`: the cookie value's suffix after the separator names the
/// address (`Route=` on `<Address>`) that holds the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub cookie: String,
    pub separator: char,
}

#[derive(Debug, Clone)]
pub struct Vhost {
    pub name: String,
    pub aliases: Vec<String>,
    pub listen: Vec<SocketAddr>,
    pub origins: Vec<OriginAddr>,
    /// `<Address2>`: used only while every `<Address>` is excluded (ORG-1).
    pub standby: Vec<OriginAddr>,
    pub affinity: Option<Affinity>,
    /// How HTTPS origins are verified; set when any origin is over TLS.
    pub origin_tls: Option<std::sync::Arc<tls::OriginTls>>,
    pub options: Options,
    pub origin_options: OriginOptions,
    /// `svc/<vhost>/expires.txt` (EXP-*), applied when `<RefreshExpiresHeader>` is ON.
    pub expires_rules: std::sync::Arc<[crate::policy::ExpiresRule]>,
    /// `svc/<vhost>/headers.txt` (MOD-*), applied when `<ModifyHeader>` is ON.
    pub header_rules: std::sync::Arc<[crate::policy::HeaderRule]>,
    /// `svc/<vhost>/querystring.txt` (KEY-3).
    pub query_rules: std::sync::Arc<[crate::policy::querystring::QueryRule]>,
    /// `svc/<vhost>/bypass.txt` (ORG-6).
    pub bypass_rules: std::sync::Arc<[crate::policy::bypass::BypassRule]>,
    /// `svc/<vhost>/ttl.txt` (TTL-6): the `custom` TTLs of STON's policy.
    pub ttl_rules: std::sync::Arc<[crate::policy::ttl::TtlRule]>,
    /// `svc/<vhost>/compression.txt` (GZ-2), applied when `<Compression>` is ON.
    pub compression_rules: std::sync::Arc<[crate::policy::compression::CompressionRule]>,
    /// `<Log>` as inherited from `<VHostDefault>` and set here.
    pub log: LogSettings,
    /// The access log this vhost writes (LOG-1), when `<Log><Access>` is ON.
    pub access_log: Option<std::sync::Arc<LogTarget>>,
    /// The origin log (LOG-2): not written yet, always `None`.
    pub origin_log: Option<std::sync::Arc<LogTarget>>,
}

/// How an access-log line is written (`<Access Form>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogForm {
    /// STON's W3C extended form with its `#Fields:` line.
    #[default]
    Ston,
    /// Apache's combined log format.
    Apache,
}

/// When a log file is rolled (`Type` and `Unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roll {
    /// Every `minutes`, on multiples of it since midnight (UTC), and at midnight.
    Time { minutes: u32 },
    /// When the file would pass `bytes`.
    Size { bytes: u64 },
    /// Whichever comes first.
    Both { minutes: u32, bytes: u64 },
}

/// What `c-ip` says when the client sent `X-Forwarded-For` (`<Access XFF>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XffLog {
    /// The header's addresses, then the client's (`a,b,client`).
    #[default]
    On,
    /// The client's address only.
    Off,
    /// The header's addresses when there are any, else the client's.
    TrimCip,
}

/// One log file's settings (`<Access>`, `<Origin>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileSettings {
    pub enabled: bool,
    pub roll: Roll,
    /// Rolled files kept; older ones are deleted.
    pub retention: u32,
    pub form: LogForm,
    /// `Local`: log loopback clients too (STON's default is OFF).
    pub local: bool,
    pub xff: XffLog,
}

impl Default for LogFileSettings {
    fn default() -> Self {
        LogFileSettings {
            enabled: true,
            roll: Roll::Time { minutes: 1440 },
            retention: 10,
            form: LogForm::Ston,
            local: false,
            xff: XffLog::On,
        }
    }
}

/// `<Log Dir>`: per-vhost logs live in `Dir/<vhost>/`. Without any `<Log>` element
/// nothing is written (the embedded default writes no files).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSettings {
    pub dir: Option<PathBuf>,
    pub access: LogFileSettings,
    pub origin: LogFileSettings,
}

/// A resolved log file: where it lives and how it is written and rolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// The live file (`Dir/<vhost>/access.log`); rolled files sit beside it.
    pub path: PathBuf,
    pub form: LogForm,
    pub roll: Roll,
    pub retention: u32,
    pub local: bool,
    pub xff: XffLog,
}

impl LogTarget {
    pub fn new(dir: &Path, vhost: &str, stem: &str, f: &LogFileSettings) -> LogTarget {
        LogTarget {
            path: dir.join(vhost).join(format!("{stem}.log")),
            form: f.form,
            roll: f.roll,
            retention: f.retention,
            local: f.local,
            xff: f.xff,
        }
    }
}

impl Vhost {
    /// Do response heads need the rule pass (EXP or MOD rules in force)?
    pub fn response_rules_active(&self) -> bool {
        (self.options.refresh_expires.is_some() && !self.expires_rules.is_empty())
            || (self.options.modify_header.is_some()
                && self
                    .header_rules
                    .iter()
                    .any(|r| r.phase == crate::policy::RulePhase::Response))
    }

    /// Do request heads need the rule pass (MOD-1)?
    pub fn request_rules_active(&self) -> bool {
        self.options.modify_header.is_some()
            && self
                .header_rules
                .iter()
                .any(|r| r.phase == crate::policy::RulePhase::Request)
    }
}

/// Vhosts sharing one listening address; `Host` picks among them.
#[derive(Debug, Clone)]
pub struct ListenGroup {
    pub addr: SocketAddr,
    pub vhosts: Vec<usize>,
    /// A `<Server><Https>` address: every vhost is a candidate, TLS in front.
    pub tls: Option<tls::TlsGroup>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the files came from (`<embedded>` for the built-in default).
    pub source: String,
    pub vhosts: Vec<Vhost>,
    pub default_vhost: Option<usize>,
    pub listeners: Vec<ListenGroup>,
    pub cache: CacheSettings,
    pub server: ServerSettings,
}

/// `<Server><Cache><Storage>`: where and how big the cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Segment directory; `None` for a memory-only cache (`<Storage/>` with no `<Disk>`).
    pub dir: Option<PathBuf>,
    pub quota: u64,
    pub segment_size: u64,
    pub max_object: u64,
    /// `<Storage SegmentSize>` was given: it is kept even when it leaves too few
    /// segments for the shards (an error at start, naming both).
    pub segment_explicit: bool,
}

impl CacheSettings {
    pub const DEFAULT_SEGMENT: u64 = 64 << 20;

    /// The default location: `/var/cache/cairn` for root, else the user's cache dir.
    pub fn default_dir() -> PathBuf {
        let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
            || std::env::var("HOME").map(|h| h == "/root").unwrap_or(false);
        if is_root {
            return PathBuf::from("/var/cache/cairn");
        }
        match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) => PathBuf::from(x).join("cairn"),
            (None, Some(h)) => PathBuf::from(h).join(".cache/cairn"),
            _ => PathBuf::from("cairn-cache"),
        }
    }

    /// The store's settings for `shards` shards. Each shard writes to a segment of
    /// its own and one more is needed to reclaim, so without an explicit
    /// `SegmentSize` the segments shrink (whole MiB, at least 1 MiB) until the
    /// quota holds `shards + 1` of them: the default 1 GB cache starts on any core
    /// count. A different size re-initialises the segment files (a cold cache).
    pub fn store_config(&self, shards: usize) -> crate::cache::StoreConfig {
        let need = shards as u64 + 1;
        let (mut segment_size, mut max_object) = (self.segment_size, self.max_object);
        if !self.segment_explicit && self.quota / segment_size < need {
            segment_size = (self.quota / need) & !((1 << 20) - 1);
            segment_size = segment_size.max(1 << 20);
            max_object = max_object.min(segment_size - (64 << 10));
        }
        crate::cache::StoreConfig {
            dir: self.dir.clone(),
            quota: self.quota,
            segment_size,
            max_object,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            dir: Some(CacheSettings::default_dir()),
            quota: 1 << 30,
            segment_size: Self::DEFAULT_SEGMENT,
            max_object: Self::DEFAULT_SEGMENT - (1 << 20),
            segment_explicit: false,
        }
    }
}

/// Server-wide cairn settings (`<Server><Cairn>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// A request head or body must arrive within this (then 408).
    pub request_timeout: Duration,
    /// How long in-flight responses may run on after SIGTERM.
    pub drain_timeout: Duration,
    /// `<ServiceAccess GeoIP="path">`: a MaxMind `.mmdb` for `$IP[<country>]` rules.
    pub geoip: Option<PathBuf>,
    /// `<Cache><MaxSockets>`: open client connections, all shards together (0: no cap).
    pub max_sockets: usize,
    /// `<MaxSockets Reopen>`: past the cap, accepting resumes at this percentage.
    pub reopen_pct: u8,
    /// `<Cairn><MaxConnectionsPerIp>`: open connections per client address (0: no cap).
    pub max_per_ip: usize,
    /// `<Cairn><MaxFillsPerShard>`: cache fills a shard runs at once; past it a miss
    /// is passed through, not stored.
    pub max_fills: usize,
    /// `<Cairn><BackgroundFillPercent>`: a fill every client has left goes on only
    /// if at least this much of it is stored (0: always; 100: never).
    pub background_fill_pct: u8,
    /// `<Cairn><FillMemoryPerShard>`: bytes a shard may hold gathering bodies of
    /// unknown length (chunked) for the cache; past it they are relayed, not stored.
    pub fill_memory: u64,
    /// `<Cairn><RequestBodyMemory>`: request bodies held in memory, all at once.
    pub body_memory: u64,
    /// `<Cairn><RequestBodyDisk>`: request bodies spooled to disk, all at once.
    pub body_disk: u64,
    /// `<Cairn><SpoolDir>`: where spooled bodies go (unlinked files); the system's
    /// temporary directory when unset.
    pub spool_dir: Option<PathBuf>,
    /// `<Cairn><HitSendTimeoutSec>` and `<Cairn><MinSendRate>`: a response sent
    /// from the cache must be done within this plus its size at this rate; past
    /// it the client is cut off, so a slow reader cannot pin a segment.
    pub hit_send_timeout: Duration,
    pub min_send_rate: u64,
    /// `<Server><Https>` blocks, in file order.
    pub https: Vec<tls::HttpsBlock>,
    /// `<Cache><HttpsSNI>`: several certificates on one address, chosen by SNI.
    pub https_sni: bool,
    /// A TLS handshake must finish within this, else the connection is closed.
    pub handshake_timeout: Duration,
    /// How domain origins are resolved, at load and again while running.
    pub resolver: Resolver,
    /// `<Cache><Http2>`: HTTP/2 (h2 over TLS, h2c by prior knowledge).
    pub http2: Http2Settings,
    /// `<Host><Manager>`: the management listener (PRG-5); none without it.
    pub manager: Option<manager::ManagerSettings>,
}

/// `<Http2 Status><MaxConcurrentStream><ClientKeepAlive>` and cairn's
/// mod_http2-like limits (spec/http2.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Settings {
    /// STON's default is `Inactive`.
    pub enabled: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (MaxSessionStreams).
    pub max_streams: u32,
    /// Per-stream receive window for request bodies (WindowSize).
    pub window: u32,
    /// Response bytes buffered per stream before the producer waits (StreamMaxMemSize).
    pub stream_mem: u32,
    /// A connection with no open stream is closed after this (GOAWAY).
    pub keepalive_secs: u32,
    /// 103 Early Hints with a response's `rel=preload` links (H2EarlyHints).
    pub early_hints: bool,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            enabled: false,
            max_streams: 100,
            window: 65_535,
            stream_mem: 65_536,
            keepalive_secs: 10,
            early_hints: false,
        }
    }
}

impl ServerSettings {
    /// How long a response of `len` bytes from the cache may take.
    pub fn lease_bound(&self, len: u64) -> Duration {
        let rate = self.min_send_rate.max(1);
        self.hit_send_timeout + Duration::from_secs(len / rate)
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            geoip: None,
            max_sockets: 80_000,
            reopen_pct: 75,
            max_per_ip: 0,
            max_fills: 64,
            background_fill_pct: 90,
            fill_memory: 64 << 20,
            body_memory: 64 << 20,
            body_disk: 1 << 30,
            spool_dir: None,
            hit_send_timeout: Duration::from_secs(60),
            min_send_rate: 16 << 10,
            https: Vec::new(),
            https_sni: false,
            handshake_timeout: Duration::from_secs(10),
            resolver: Resolver::default(),
            http2: Http2Settings::default(),
            manager: None,
        }
    }
}

/// A loaded configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diag>,
}

/// Loads `server.xml` and `vhosts.xml` from a configuration directory.
pub fn load_dir(dir: &Path) -> Result<Loaded, ConfigError> {
    let dir = &std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ConfigError::Io { path, source })
    };
    let server = read("server.xml")?;
    let vhosts = read("vhosts.xml")?;
    let server_name = dir.join("server.xml").display().to_string();
    let vhosts_name = dir.join("vhosts.xml").display().to_string();
    xml::load(
        &server_name,
        &server,
        &vhosts_name,
        &vhosts,
        &dir.display().to_string(),
    )
}

/// The built-in configuration `cairn` runs with no `--config`: the files shipped in `conf/`.
pub fn embedded() -> Loaded {
    xml::load(
        "<embedded>/server.xml",
        include_str!("../../conf/server.xml"),
        "<embedded>/vhosts.xml",
        include_str!("../../conf/vhosts.xml"),
        "<embedded>",
    )
    .expect("the embedded configuration is valid (checked by a unit test)")
}

impl Config {
    /// The effective vhost table, for `cairn check`.
    pub fn describe(&self) -> String {
        use fmt::Write;
        let mut s = String::new();
        let c = &self.cache;
        let _ = writeln!(
            s,
            "cache: {} quota={} MiB segment={} MiB max-object={} MiB",
            c.dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "memory".into()),
            c.quota >> 20,
            c.segment_size >> 20,
            c.max_object >> 20
        );
        let _ = writeln!(
            s,
            "{:<28} {:<28} {:<24} origins",
            "vhost", "aliases", "listen"
        );
        for (i, v) in self.vhosts.iter().enumerate() {
            let aliases = if v.aliases.is_empty() {
                "-".to_string()
            } else {
                v.aliases.join(",")
            };
            let listen: Vec<String> = v.listen.iter().map(|a| a.to_string()).collect();
            let origins: Vec<String> = v.origins.iter().map(|o| o.to_string()).collect();
            let mark = if self.default_vhost == Some(i) {
                " (default)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:<28} {:<28} {:<24} {}",
                format!("{}{}", v.name, mark),
                aliases,
                if listen.is_empty() {
                    "OFF".into()
                } else {
                    listen.join(",")
                },
                origins.join(",")
            );
            let ka = &v.options.keep_alive;
            let oo = &v.origin_options;
            let _ = writeln!(
                s,
                "    keep-alive: {} timeout={}s header={} max={}; origin: connect={}s receive={}s reuse={}s",
                if ka.always_close { "close" } else { "keep-alive" },
                ka.timeout_secs,
                if ka.keep_alive_header { "ON" } else { "OFF" },
                ka.max,
                oo.connect_timeout.as_secs(),
                oo.receive_timeout.as_secs(),
                oo.reuse_timeout.as_secs()
            );
        }
        s
    }

    /// Listening addresses that do not use `*` expansion; used to print URLs to try.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|g| g.addr).collect()
    }
}

/// `*` in a `<Listen>` means these addresses (`<Server><Cache><Listen>`), or all.
pub(crate) fn expand_star(cache_listen: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    if cache_listen.is_empty() {
        vec![SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)]
    } else {
        cache_listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    }
}

#[cfg(test)]
mod tests;

/// Loads from strings; for tests and tools.
/// DRM-8: `plain` encrypted for `Type="enc"` under `dir`'s key material
/// (`dir/secret.key`, else the first `<Https><Key>` of `dir/server.xml`, else a
/// new `dir/secret.key`). The management API's `/command/encryptpassword` is
/// to call this. A server.xml that does not parse is refused: the key it
/// names could not be known.
pub fn encrypt_password(dir: &Path, plain: &[u8]) -> Result<String, ConfigError> {
    let server = dir.join("server.xml");
    let tls_key = match std::fs::read_to_string(&server) {
        Ok(xml) => first_https_key(&xml)
            .map_err(|reason| {
                ConfigError::Invalid(Diag {
                    file: server.display().to_string(),
                    line: 0,
                    reason,
                })
            })?
            .map(|k| match Path::new(&k).is_relative() {
                true => dir.join(k),
                false => PathBuf::from(k),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ConfigError::Io {
                path: server,
                source,
            })
        }
    };
    let key = secret::key(dir, tls_key.as_deref(), true).map_err(ConfigError::Secret)?;
    key.encrypt(plain).map_err(ConfigError::Secret)
}

/// The first `<Https>` block's `<Key>` (its last, as the loader reads it).
fn first_https_key(xml: &str) -> Result<Option<String>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let Some(https) = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("Https"))
    else {
        return Ok(None);
    };
    Ok(https
        .children()
        .rfind(|n| n.has_tag_name("Key"))
        .and_then(|k| k.text())
        .map(|t| t.trim().to_string()))
}

pub fn load_str(server: &str, vhosts: &str) -> Result<Loaded, ConfigError> {
    xml::load("server.xml", server, "vhosts.xml", vhosts, "<string>")
}
