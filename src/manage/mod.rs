//! The management listener (`<Host><Manager>`, PRG-*, STAT-*): purges, reload,
//! monitoring and `/metrics`, on its own threads, off the shards. An address
//! outside `<Allow>` is disconnected at accept; a role without the right gets
//! 401. Requests are small and rare: one blocking thread per connection, at
//! most [`MAX_CONNECTIONS`] at once, each with read and write deadlines.

pub mod metrics;
pub mod monitor;
pub mod target;

use crate::cache::{CacheKey, PurgeCount, PurgeOp, Variant};
use crate::config::manager::Role;
use crate::context::{Live, Shared};
use crate::json;
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Connections served at once; past it a connection gets 503.
pub const MAX_CONNECTIONS: usize = 16;
/// A request head must arrive within this, and a reply be taken within it.
const DEADLINE: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 16 << 10;

/// Validates and swaps in the configuration (`/conf/reload`): the message to
/// report, or why the running configuration stays.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

struct Manager {
    shared: Arc<Shared>,
    reload: ReloadFn,
    samples: Mutex<monitor::Samples>,
    active: AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the accept and sampler threads on `listener` (bound by the caller,
/// or handed down by an upgrade). Returns its address.
pub fn start(
    shared: Arc<Shared>,
    listener: TcpListener,
    reload: ReloadFn,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let m = Arc::new(Manager {
        shared,
        reload,
        samples: Mutex::new(monitor::Samples::default()),
        active: AtomicUsize::new(0),
    });
    let sampler = m.clone();
    std::thread::Builder::new()
        .name("cairn-stats".into())
        .spawn(move || loop {
            let s = monitor::Sample::take(&sampler.shared, now_ms());
            sampler
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
            std::thread::sleep(Duration::from_secs(1));
        })?;
    std::thread::Builder::new()
        .name("cairn-manager".into())
        .spawn(move || accept_loop(m, listener))?;
    Ok(addr)
}

/// Accepts until the drain starts: then the socket stays open but unserved,
/// so that after an upgrade its queue waits for the new process (which holds
/// the same socket) rather than meet the old process's answers.
fn accept_loop(m: Arc<Manager>, listener: TcpListener) {
    loop {
        if *m.shared.drain.borrow() {
            log::info!("manager: draining; no more management connections here");
            return;
        }
        if !crate::net::listen::wait_readable(&listener, Duration::from_millis(100)) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("manager: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // The access list in force now (it follows reloads).
        let live = m.shared.live.load();
        let role = live
            .config
            .server
            .manager
            .as_ref()
            .and_then(|s| s.role_of(peer.ip()));
        let Some(role) = role else {
            // Debug only: strangers must not be able to flood the log.
            log::debug!("manager: {peer} is not in <Allow>; disconnected");
            drop(stream);
            continue;
        };
        drop(live);
        if m.active.fetch_add(1, Relaxed) >= MAX_CONNECTIONS {
            m.active.fetch_sub(1, Relaxed);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(DEADLINE));
            let _ = respond(
                &mut stream,
                503,
                "application/json",
                &json::reply("", "Busy", "{}"),
            );
            continue;
        }
        let worker = m.clone();
        let spawned = std::thread::Builder::new()
            .name("cairn-manager-conn".into())
            .spawn(move || {
                // Released however the connection ends, a panic included.
                struct Slot<'a>(&'a AtomicUsize);
                impl Drop for Slot<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Relaxed);
                    }
                }
                let _slot = Slot(&worker.active);
                serve_conn(&worker, stream, peer, role);
            });
        if let Err(e) = spawned {
            m.active.fetch_sub(1, Relaxed);
            log::warn!("manager: cannot start a thread for {peer}: {e}");
        }
    }
}

fn serve_conn(m: &Manager, mut stream: TcpStream, peer: SocketAddr, role: Role) {
    let _ = stream.set_write_timeout(Some(DEADLINE));
    let deadline = Instant::now() + DEADLINE;
    let mut buf = BytesMut::with_capacity(4096);
    let limits = crate::http1::request::Limits::default();
    let head = loop {
        match crate::http1::request::parse(&mut buf, &limits) {
            Ok(Some(h)) => break h,
            Ok(None) if buf.len() < MAX_HEAD => {}
            Ok(None) => {
                let _ = respond(&mut stream, 431, "text/plain", "request head too large\n");
                return;
            }
            Err(e) => {
                let _ = respond(&mut stream, e.status(), "text/plain", "malformed request\n");
                return;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            let _ = respond(&mut stream, 408, "text/plain", "request timeout\n");
            return;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                let _ = respond(&mut stream, 408, "text/plain", "request timeout\n");
                return;
            }
        }
    };
    let target = String::from_utf8_lossy(head.path()).into_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    // A browser on an allowed host must not be made to call the API for a page
    // from elsewhere (CSRF, DNS rebinding): such requests carry Origin or
    // Sec-Fetch-Site; curl, scripts and Prometheus do not.
    let cross_site = head.header("origin").is_some()
        || head
            .header("sec-fetch-site")
            .is_some_and(|v| !v.eq_ignore_ascii_case(b"none"));
    let (status, ctype, body) = if !matches!(head.method(), b"GET" | b"POST" | b"HEAD") {
        (
            405,
            "application/json",
            json::reply("", "MethodNotAllowed", "{}"),
        )
    } else if cross_site {
        (
            403,
            "application/json",
            json::reply("", "CrossSiteRefused", "{}"),
        )
    } else {
        route(m, role, path, query)
    };
    // The query may hold a password (encryptpassword): only the path is logged.
    log::info!(
        "manager: {peer} {} {path} -> {status}",
        String::from_utf8_lossy(head.method())
    );
    let body = if head.method() == b"HEAD" {
        String::new()
    } else {
        body
    };
    let _ = respond(&mut stream, status, ctype, &body);
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = crate::http1::headers::reason(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: cairn\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

/// The role each path needs; `None`: no such path.
fn needs(path: &str) -> Option<Role> {
    Some(match path {
        "/metrics" | "/monitoring/realtime" | "/monitoring/average" => Role::Looker,
        "/monitoring/fileinfo" => Role::User,
        "/monitoring/origin" => Role::Looker,
        "/command/purge"
        | "/command/expire"
        | "/command/expireafter"
        | "/command/hardpurge"
        | "/command/encryptpassword"
        | "/conf/reload" => Role::Admin,
        #[cfg(feature = "fault-injection")]
        "/debug/panic" | "/debug/renew" if crate::fault::armed() => Role::Admin,
        _ => return None,
    })
}

const JSON: &str = "application/json";

fn route(m: &Manager, role: Role, path: &str, query: &str) -> (u16, &'static str, String) {
    let Some(need) = needs(path) else {
        return (404, JSON, json::reply("", "NotFound", "{}"));
    };
    let method = path.rsplit('/').next().unwrap_or("");
    if role < need {
        return (401, JSON, json::reply(method, "Unauthorized", "{}"));
    }
    let shared = &m.shared;
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics::render(shared)),
        "/monitoring/realtime" | "/monitoring/average" => {
            let secs = match path {
                "/monitoring/realtime" => 1,
                _ => match target::query_param(query, "min").map(|v| v.parse::<u64>()) {
                    None => 300,
                    Some(Ok(n)) if (1..=60).contains(&n) => n * 60,
                    Some(_) => return (400, JSON, json::reply(method, "BadRequest", "{}")),
                },
            };
            let samples = m.samples.lock().unwrap_or_else(|p| p.into_inner());
            match samples.window(secs) {
                Some((a, b)) => (
                    200,
                    JSON,
                    json::reply(method, "OK", &monitor::window_json(a, b)),
                ),
                None => (503, JSON, json::reply(method, "NotReady", "{}")),
            }
        }
        "/monitoring/fileinfo" => fileinfo(shared, query),
        "/monitoring/origin" => (200, JSON, json::reply(method, "OK", &origins(shared))),
        "/command/encryptpassword" => {
            let live = shared.live.load();
            let source = &live.config.source;
            let Some(plain) = target::query_param(query, "password") else {
                return (400, JSON, json::reply(method, "BadRequest", "{}"));
            };
            if source.starts_with('<') {
                return (400, JSON, json::reply(method, "NoConfigDirectory", "{}"));
            }
            match crate::config::encrypt_password(std::path::Path::new(source), plain.as_bytes()) {
                Ok(enc) => (200, JSON, json::reply(method, "OK", &json::string(&enc))),
                Err(e) => (
                    500,
                    JSON,
                    json::reply(method, "Error", &json::string(&e.to_string())),
                ),
            }
        }
        #[cfg(feature = "fault-injection")]
        "/debug/panic" => {
            let shard = target::query_param(query, "shard").and_then(|v| v.parse::<usize>().ok());
            match shard.and_then(|i| shared.stats.get(i)) {
                Some(s) => {
                    s.fault.store(true, std::sync::atomic::Ordering::Relaxed);
                    (200, JSON, json::reply("panic", "OK", "{}"))
                }
                None => (400, JSON, json::reply("panic", "BadRequest", "{}")),
            }
        }
        #[cfg(feature = "fault-injection")]
        "/debug/renew" => match target::query_param(query, "fail").as_deref() {
            Some("1") | Some("0") => {
                shared
                    .cache
                    .fail_renewals(target::query_param(query, "fail").as_deref() == Some("1"));
                (200, JSON, json::reply("renew", "OK", "{}"))
            }
            _ => (400, JSON, json::reply("renew", "BadRequest", "{}")),
        },
        "/conf/reload" => match (m.reload)() {
            Ok(msg) => (200, JSON, json::reply("reload", "OK", &json::string(&msg))),
            Err(e) => (500, JSON, json::reply("reload", "Error", &json::string(&e))),
        },
        _ => {
            let op = match method {
                "purge" => PurgeOp::Purge,
                "expire" => PurgeOp::Expire,
                "hardpurge" => PurgeOp::HardPurge,
                _ => match target::query_param(query, "sec").map(|v| v.parse::<u64>()) {
                    Some(Ok(n)) if n <= 1 << 31 => PurgeOp::ExpireAfter(n),
                    _ => return (400, JSON, json::reply(method, "BadRequest", "{}")),
                },
            };
            let started = Instant::now();
            let url = target::raw_param(query, "url").unwrap_or_default();
            let targets = match target::parse(url) {
                Ok(t) => t,
                Err(e) => {
                    return (
                        400,
                        JSON,
                        json::reply(method, "BadRequest", &json::string(&e)),
                    )
                }
            };
            let live = shared.live.load();
            match purge(shared, &live, &targets, op) {
                Ok(n) => {
                    let ms = started.elapsed().as_millis() as u64;
                    log::info!(
                        "manager: {method} {url}: {} objects, {} bytes, {ms} ms",
                        n.count,
                        n.bytes
                    );
                    (
                        200,
                        JSON,
                        json::reply(method, "OK", &json::purge_result(n.count, n.bytes, ms)),
                    )
                }
                Err(host) => (
                    502,
                    JSON,
                    json::reply(method, "UnknownVhost", &json::string(&host)),
                ),
            }
        }
    }
}

/// The vhost a purge target's host names (by name, alias or wildcard alias,
/// on any listener; never the `<Default>` fallback).
fn vhost_named<'a>(live: &'a Live, host: &str) -> Option<&'a crate::config::Vhost> {
    let cfg = &live.config;
    cfg.vhosts.iter().find(|v| v.name == host).or_else(|| {
        live.routers
            .iter()
            .find_map(|r| r.lookup_named(Some(host.as_bytes())))
            .map(|i| &cfg.vhosts[i])
    })
}

/// Applies `op` to every target; `Err(host)` for a host no vhost answers to
/// (then nothing is applied).
fn purge(
    shared: &Shared,
    live: &Live,
    targets: &[target::Target],
    op: PurgeOp,
) -> Result<PurgeCount, String> {
    let cache = &shared.cache;
    let now = now_ms();
    let mut total = PurgeCount::default();
    // Every host first: a list naming an unknown one changes nothing.
    let vhosts = targets
        .iter()
        .map(|t| vhost_named(live, &t.host).ok_or_else(|| t.host.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    for (t, vhost) in targets.iter().zip(vhosts) {
        // The key holds the URL as KEY-2/KEY-3 made it: so must the target.
        let lowered;
        let t = if vhost.options.case_sensitive {
            t
        } else {
            lowered = target::Target {
                host: t.host.clone(),
                path: t.path.to_ascii_lowercase(),
            };
            &lowered
        };
        let n = if t.is_pattern() {
            let mut prefix = vhost.name.as_bytes().to_vec();
            prefix.extend_from_slice(t.literal_prefix().as_bytes());
            let pat = crate::policy::pattern::Pattern::new(
                &t.path,
                crate::policy::pattern::Case::Sensitive,
            );
            let name_len = vhost.name.len();
            cache.apply_matching(&prefix, |k| pat.matches(&k[name_len..]), op, now)
        } else {
            let url = crate::proxy::cached::key_url(
                &vhost.options,
                &vhost.query_rules,
                t.path.as_bytes(),
            );
            let key = CacheKey::new(&vhost.name, &url, Variant::Identity);
            cache.apply_all_variants(key.primary(), op, now)
        };
        total.count += n.count;
        total.bytes += n.bytes;
    }
    Ok(total)
}

/// `/monitoring/origin` (ORG-3 visibility): each address's state.
fn origins(shared: &Shared) -> String {
    let live = shared.live.load();
    let mut out = String::from("[");
    for v in &live.config.vhosts {
        let all = v
            .origins
            .iter()
            .map(|o| (o, "active"))
            .chain(v.standby.iter().map(|o| (o, "standby")));
        for (o, role) in all {
            use std::sync::atomic::Ordering::Relaxed;
            let h = &o.health;
            let s = h.state();
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&format!(
                "{{\"vhost\":{},\"address\":{},\"ip\":{},\"role\":\"{role}\",\"state\":\"{}\",\"consecutiveFailures\":{},\"goodProbes\":{},\"inFlight\":{},\"requests\":{},\"failures\":{},\"exclusions\":{},\"lastError\":{}}}",
                json::string(&v.name),
                json::string(&o.text),
                json::string(&o.addr.to_string()),
                if s.excluded { "excluded" } else { "up" },
                s.fails,
                s.goods,
                h.in_flight.load(Relaxed),
                h.requests.load(Relaxed),
                h.failures.load(Relaxed),
                h.exclusions.load(Relaxed),
                h.last_error().map_or("null".into(), |e| json::string(&e)),
            ));
        }
    }
    out.push(']');
    out
}

/// `/monitoring/fileinfo?url=host/path` (STAT-2): every stored variant.
fn fileinfo(shared: &Shared, query: &str) -> (u16, &'static str, String) {
    let url = target::raw_param(query, "url").unwrap_or_default();
    let targets = match target::parse(url) {
        Ok(t) if t.len() == 1 && !t[0].is_pattern() => t,
        _ => return (400, JSON, json::reply("fileinfo", "BadRequest", "{}")),
    };
    let live = shared.live.load();
    let Some(vhost) = vhost_named(&live, &targets[0].host) else {
        return (502, JSON, json::reply("fileinfo", "UnknownVhost", "{}"));
    };
    let now = now_ms();
    let url = crate::proxy::cached::key_url(
        &vhost.options,
        &vhost.query_rules,
        targets[0].path.as_bytes(),
    );
    let key = CacheKey::new(&vhost.name, &url, Variant::Identity);
    let mut items = Vec::new();
    // The coding variants, then the Vary ones (at most 64 listed).
    let mut keys: Vec<(String, Vec<u8>)> = Variant::ALL
        .iter()
        .map(|&v| {
            let label = match v {
                Variant::Identity => "identity",
                Variant::Gzip => "gzip",
            };
            (label.to_string(), key.with_variant(v).stored().to_vec())
        })
        .collect();
    for k in shared.cache.vary_variants(key.primary(), 64) {
        let rest = &k[key.primary().len().min(k.len())..];
        let label = String::from_utf8_lossy(rest)
            .trim_matches('\0')
            .replace('\0', "|");
        keys.push((format!("vary:{label}"), k));
    }
    for (label, stored) in keys {
        let Some(hit) = shared.cache.peek(&stored) else {
            continue;
        };
        let field = |name: &[u8]| {
            hit.headers
                .split(|&b| b == b'\n')
                .find_map(|l| {
                    let (n, val) = l.split_at(l.iter().position(|&b| b == b':')?);
                    n.eq_ignore_ascii_case(name)
                        .then(|| String::from_utf8_lossy(val[1..].trim_ascii()).into_owned())
                })
                .unwrap_or_default()
        };
        let ttl = hit.times.ttl_left_s(now);
        let lm = match hit.last_modified_s {
            0 => String::new(),
            s => crate::httpdate::format(UNIX_EPOCH + Duration::from_secs(s)),
        };
        items.push(format!(
            "{{\"Variant\":{},\"Status\":{},\"Size\":{},\"TTLLeft\":{ttl},\"Fresh\":{},\"ExpiresAt\":{},\"ContentType\":{},\"LastModified\":{},\"ETag\":{}}}",
            json::string(&label),
            hit.status,
            hit.body.len(),
            hit.times.is_fresh(now),
            now / 1000 + ttl,
            json::string(&field(b"content-type")),
            json::string(&lm),
            json::string(&String::from_utf8_lossy(&hit.etag)),
        ));
    }
    (
        200,
        JSON,
        json::reply("fileinfo", "OK", &format!("[{}]", items.join(","))),
    )
}
