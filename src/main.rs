//! The `cairn` command: `run` (default), `check`, `version`.

use anyhow::{bail, Context, Result};
use cairn::config::{self, Loaded};
use cairn::net::listen;
use cairn::shard::{self, signals, Shared};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
cairn: a caching reverse proxy

USAGE:
    cairn [run] [--config DIR] [--shards N] [--site DIR] [--log-level LEVEL]
    cairn check --config DIR
    cairn drm-decrypt --config DIR --vhost NAME --url PATH [--in FILE] [--out FILE]
    cairn encrypt-password --config DIR [PLAIN]
    cairn version

With no --config, cairn runs its embedded configuration (conf/ in the source tree):
it listens on 127.0.0.1:8080 and starts a sample origin for examples/site on 127.0.0.1:8081.

OPTIONS:
    --config DIR       directory holding server.xml and vhosts.xml (STON syntax)
    --shards N         number of shards (default: one per online core)
    --site DIR         directory the embedded sample origin serves (default: examples/site)
    --log-level LEVEL  error, warn, info (default), debug, trace

drm-decrypt reads a body served under <url>/<Keyword> (stdin, or --in) and writes
the source's bytes (stdout, or --out), with the vhost's <Drm> key for --url (the
DRM URL or its source: /music/iu.mp3/drm or /music/iu.mp3). RC4 is its own
inverse, so it encrypts too.

encrypt-password prints PLAIN (or stdin, less a final newline) encrypted for
<Token Type=\"enc\"> and <IV Type=\"enc\">, under the key from the configuration's
first <Https><Key>, else DIR/secret.key (made, mode 0600, on first use).
";

#[derive(Default)]
struct Args {
    command: String,
    config: Option<PathBuf>,
    shards: Option<usize>,
    site: Option<PathBuf>,
    log_level: Option<String>,
    vhost: Option<String>,
    url: Option<String>,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    plain: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        command: "run".into(),
        ..Default::default()
    };
    let mut it = std::env::args().skip(1);
    let mut first = true;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "run" | "check" | "version" | "help" | "drm-decrypt" | "encrypt-password" if first => {
                a.command = arg.clone()
            }
            "--vhost" => a.vhost = Some(value("--vhost")?),
            "--url" => a.url = Some(value("--url")?),
            "--in" => a.input = Some(value("--in")?.into()),
            "--out" => a.output = Some(value("--out")?.into()),
            "--version" | "-V" => a.command = "version".into(),
            "--help" | "-h" => a.command = "help".into(),
            "--config" | "-c" => a.config = Some(value("--config")?.into()),
            "--site" => a.site = Some(value("--site")?.into()),
            "--log-level" => a.log_level = Some(value("--log-level")?),
            "--shards" => {
                let v = value("--shards")?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0 && n <= 1024)
                    .with_context(|| format!("--shards '{v}': expected a number from 1 to 1024"))?;
                a.shards = Some(n);
            }
            other
                if a.command == "encrypt-password"
                    && a.plain.is_none()
                    && !other.starts_with('-') =>
            {
                a.plain = Some(other.to_string())
            }
            other => bail!("unknown argument '{other}'\n\n{USAGE}"),
        }
        first = false;
    }
    Ok(a)
}

fn main() {
    // SAFETY: first in main: no other thread exists yet, and no descriptor
    // has been opened or closed since exec.
    let inherited = unsafe { cairn::upgrade::inherited() };
    if let Err(e) = real_main(inherited) {
        eprintln!("cairn: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(
    inherited: Result<Option<cairn::upgrade::Inherited>, cairn::upgrade::UpgradeError>,
) -> Result<()> {
    let args = parse_args()?;
    let level = match &args.log_level {
        Some(l) => cairn::logging::parse_level(l)
            .with_context(|| format!("--log-level '{l}': unknown level"))?,
        None => std::env::var("CAIRN_LOG")
            .ok()
            .and_then(|l| cairn::logging::parse_level(&l))
            .unwrap_or(log::LevelFilter::Info),
    };
    cairn::logging::init(level);
    match args.command.as_str() {
        "version" => {
            println!("cairn {}", cairn::VERSION);
            Ok(())
        }
        "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "check" => check(&args),
        "drm-decrypt" => drm_decrypt(&args),
        "encrypt-password" => encrypt_password(&args),
        _ => run(&args, inherited?),
    }
}

fn load(args: &Args) -> Result<Loaded> {
    let loaded = match &args.config {
        Some(dir) => config::load_dir(dir)?,
        None => config::embedded(),
    };
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    Ok(loaded)
}

fn check(args: &Args) -> Result<()> {
    if args.config.is_none() {
        bail!("check needs --config DIR");
    }
    let loaded = load(args)?;
    print!("{}", loaded.config.describe());
    println!(
        "configuration OK ({} vhosts, {} warnings)",
        loaded.config.vhosts.len(),
        loaded.warnings.len()
    );
    Ok(())
}

/// `cairn drm-decrypt`: the same key as the server's, for operators and tests.
fn drm_decrypt(args: &Args) -> Result<()> {
    use std::io::{Read, Write};
    if args.config.is_none() {
        bail!("drm-decrypt needs --config DIR");
    }
    let (Some(name), Some(url)) = (&args.vhost, &args.url) else {
        bail!("drm-decrypt needs --vhost NAME and --url PATH");
    };
    let loaded = load(args)?;
    let vhost = loaded
        .config
        .vhosts
        .iter()
        .find(|v| &v.name == name)
        .with_context(|| format!("no vhost '{name}'"))?;
    let drm = vhost
        .options
        .drm
        .as_deref()
        .with_context(|| format!("vhost '{name}' has no <Drm Status=\"Active\">"))?;
    let source = cairn::policy::drm::source_of(url.as_bytes(), &drm.keyword)
        .unwrap_or_else(|| url.as_bytes().to_vec());
    let key = cairn::policy::drm::key_for(drm, &source)?;
    let mut data = Vec::new();
    match &args.input {
        Some(p) => std::fs::File::open(p)
            .with_context(|| format!("{}", p.display()))?
            .read_to_end(&mut data)?,
        None => std::io::stdin().read_to_end(&mut data)?,
    };
    cairn::transform::rc4::Rc4::new(&key).apply_at(0, &mut data);
    match &args.output {
        Some(p) => std::fs::write(p, &data).with_context(|| format!("{}", p.display()))?,
        None => std::io::stdout().write_all(&data)?,
    }
    Ok(())
}

/// `cairn encrypt-password`: a value for `Type="enc"` (DRM-8).
fn encrypt_password(args: &Args) -> Result<()> {
    let Some(dir) = &args.config else {
        bail!("encrypt-password needs --config DIR");
    };
    let plain = match &args.plain {
        Some(p) => p.clone(),
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s.strip_suffix('\n').unwrap_or(&s).to_string()
        }
    };
    println!(
        "{}",
        cairn::config::encrypt_password(dir, plain.as_bytes())?
    );
    Ok(())
}

/// Whether a socket bound at `got` serves the configured `want` (port 0: any).
fn same_addr(got: SocketAddr, want: SocketAddr) -> bool {
    got == want || (want.port() == 0 && got.ip() == want.ip())
}

fn run(args: &Args, inherited: Option<cairn::upgrade::Inherited>) -> Result<()> {
    #[cfg(feature = "fault-injection")]
    log::warn!(
        "this is a fault-injection build (a test build): /debug/panic on the management port {}; build without --features fault-injection for production",
        if cairn::fault::armed() {
            "can make shards panic (CAIRN_FAULT_INJECTION=1)"
        } else {
            "is off (CAIRN_FAULT_INJECTION is not 1)"
        }
    );
    let loaded = load(args)?;
    let config = Arc::new(loaded.config);
    let shards = args.shards.unwrap_or_else(shard::default_shards);

    if args.config.is_none() {
        start_sample_origin(args, &config)?;
    }
    // Block the signals we handle before any shard thread exists; threads inherit it.
    signals::block().context("blocking signals")?;

    // Started by an upgrade: the old process's sockets, checked against this
    // configuration. Everything else that can fail is tried before this
    // process takes over (below): after that the old one is draining.
    let mut groups: Vec<Vec<TcpListener>> = Vec::new();
    let (handover, handed_manager) = match inherited {
        None => {
            for g in &config.listeners {
                groups.push(listen::bind_group(g.addr, shards)?);
            }
            (None, None)
        }
        Some(inh) => {
            let addrs: Vec<Vec<SocketAddr>> = inh
                .groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|l| l.local_addr())
                        .collect::<std::io::Result<_>>()
                })
                .collect::<std::io::Result<_>>()?;
            let same = addrs.len() == config.listeners.len()
                && addrs.iter().zip(&config.listeners).all(|(got, want)| {
                    got.len() == shards && got.iter().all(|&a| same_addr(a, want.addr))
                });
            if !same {
                bail!("upgrade: the new configuration listens on other addresses or with another --shards than the running process ({addrs:?}); the old process keeps serving");
            }
            groups = inh.groups;
            (Some(inh.handover), inh.manager)
        }
    };
    // The management port: after an upgrade to the same address, the old
    // process's socket (so it never closes); else bound here. An old build
    // that hands none down still holds it: bound once it has exited.
    let mut manager_later = None;
    let mut manager: Option<TcpListener> = match &config.server.manager {
        None => None,
        Some(m) => {
            match handed_manager.filter(|l| l.local_addr().is_ok_and(|a| same_addr(a, m.listen))) {
                Some(l) => Some(l),
                None => match TcpListener::bind(m.listen) {
                    Ok(l) => Some(l),
                    Err(e) if handover.is_some() && e.kind() == std::io::ErrorKind::AddrInUse => {
                        log::warn!("upgrade: the running process did not hand down the management port {}; it is bound once that process exits", m.listen);
                        manager_later = Some(m.listen);
                        None
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("manager: cannot listen on {}", m.listen))
                    }
                },
            }
        }
    };
    let geo = match &config.server.geoip {
        Some(path) => {
            let db = cairn::geoip::GeoDb::open(path)?;
            log::info!("GeoIP: {} ({})", path.display(), db.database_type());
            Some(Arc::new(db))
        }
        None => None,
    };
    let (queues, logger) = cairn::accesslog::LogQueues::channel(shards);
    let logger = logger.spawn().context("starting the access-log thread")?;
    let store = config.cache.store_config(shards);
    let upgraded = handover.is_some();
    if let Some(h) = handover {
        cairn::cache::Cache::preflight(&store, shards)
            .context("upgrade: the cache; the old process keeps serving")?;
        shard::probe_rings(shards).context(
            "upgrade: the shards' io_uring rings cannot be made (see kernel.io_uring_disabled and the memlock limit); the old process keeps serving",
        )?;
        let parent = h.parent();
        let draining = h.take_over()?;
        // At once, before the old process exits: the service manager must
        // not see its main pid leave (it would stop the unit, this included).
        if let Err(e) = cairn::notify::notify(&format!("MAINPID={}", std::process::id())) {
            log::warn!("upgrade: could not tell the service manager the new main pid: {e}");
        }
        log::info!("upgrade: taking over from pid {parent}; waiting for it to drain before opening the cache");
        draining.wait_for_exit()?;
        if let Some(addr) = manager_later {
            match TcpListener::bind(addr) {
                Ok(l) => manager = Some(l),
                Err(e) => log::error!(
                    "upgrade: the management port {addr} cannot be bound ({e}); serving without it until a restart"
                ),
            }
        }
    }
    let bound: Vec<SocketAddr> = groups
        .iter()
        .map(|g| g[0].local_addr())
        .collect::<std::io::Result<_>>()?;

    let started = Instant::now();
    let (cache, recovery) = match cairn::cache::Cache::open(store.clone(), shards) {
        Ok(c) => c,
        // Checked before the handover, so a fault since (the disk's): the old
        // process is gone, so serving without the disk beats not serving.
        Err(e) if upgraded => {
            let fallback = store.memory_fallback(shards);
            log::error!(
                "upgrade: the cache could not be opened after the handover ({e}); serving from {} MiB in memory until a restart",
                fallback.quota >> 20
            );
            cairn::cache::Cache::open(fallback, shards).context("opening a cache in memory")?
        }
        Err(e) => return Err(e).context("opening the cache"),
    };
    log::info!(
        "cache {}: {} objects ({} MiB) recovered from {} segments in {} ms{}",
        cache
            .config()
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "in memory".into()),
        recovery.objects,
        recovery.bytes >> 20,
        recovery.segments_used,
        started.elapsed().as_millis(),
        if recovery.corrupt > 0 {
            format!("; {} corrupt or torn records skipped", recovery.corrupt)
        } else {
            String::new()
        }
    );
    if recovery.excluded > 0 {
        log::error!(
            "cache: {} unreadable segment(s) excluded; the cache runs smaller until they are fixed or removed",
            recovery.excluded
        );
    }
    let mut shared = Shared::new(config.clone(), shards, Arc::new(cache));
    let swept = cairn::spool::sweep(shared.bodies.dir());
    if swept > 0 {
        log::warn!(
            "SpoolDir {}: removed {swept} request-body file(s) left by a crash",
            shared.bodies.dir().display()
        );
    }
    shared.log_queues = queues;
    shared.geo = geo;
    let shared = Arc::new(shared);
    let handles = shard::spawn_all(shared.clone(), &groups, shards).context("starting shards")?;
    let probing = shared.clone();
    let replacing = shared.clone();
    cairn::origin::probe::spawn(
        move || probing.live.load().config.clone(),
        move |old, new| replacing.replace_config(old, new),
    )
    .context("starting the origin health thread")?;
    if !shard::wait_ready(&shared, shards, Duration::from_secs(10)) {
        bail!(
            "shards did not start within 10s (is io_uring available? see kernel.io_uring_disabled)"
        );
    }
    log::info!(
        "cairn {} started: {shards} shards, config {}, vhosts: {}",
        cairn::VERSION,
        config.source,
        config
            .vhosts
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for v in &config.vhosts {
        if let Some(t) = v.access_log.as_ref() {
            log::info!(
                "vhost {}: access log {}{}",
                v.name,
                t.path.display(),
                if t.local {
                    ""
                } else {
                    " (loopback clients not logged: Local=\"OFF\", STON's default)"
                }
            );
        }
    }
    let tls: Vec<bool> = config.listeners.iter().map(|g| g.tls.is_some()).collect();
    if tls.contains(&true) {
        if cairn::net::tls::ktls_available() {
            log::info!("TLS: the kernel has kTLS (tls ULP): AES-GCM and ChaCha20 sessions go to it after the handshake (KTLS=\"OFF\" on <Https> keeps rustls)");
        } else {
            log::info!("TLS: no kernel TLS (tls ULP) here: rustls builds the records");
        }
    }
    if let (Some(m), Some(l)) = (&config.server.manager, &manager) {
        let (dir, s) = (args.config.clone(), shared.clone());
        let reload_fn: cairn::manage::ReloadFn = Arc::new(move || reload(dir.as_deref(), &s));
        // A second handle: this one stays here to be handed to an upgrade.
        let started = l
            .try_clone()
            .and_then(|l| cairn::manage::start(shared.clone(), l, reload_fn));
        match started {
            Ok(addr) => log::info!(
                "manager listening on http://{addr}/ ({} <Allow> entries; PURGE methods on the service ports {})",
                m.allow.len(),
                if m.http_method { "ON" } else { "OFF" }
            ),
            // After a handover the old process is gone: serve without it.
            Err(e) if upgraded => log::error!(
                "upgrade: the manager cannot start ({e}); serving without it until a restart"
            ),
            Err(e) => return Err(e).context("starting the manager"),
        }
    }
    for url in shard::urls(&bound, &tls) {
        println!("cairn listening on {url}");
    }
    if args.config.is_none() {
        println!("try: curl -i http://127.0.0.1:{}/", bound[0].port());
    }
    cairn::notify::ready();

    // After a handover the listening sockets are the new process's too: they
    // must not be shut down here.
    let mut successor: Option<cairn::upgrade::Handed> = None;
    loop {
        match signals::wait()? {
            signals::Signal::Hup => {
                let _ = reload(args.config.as_deref(), &shared);
            }
            signals::Signal::Stats => log_stats(&shared),
            signals::Signal::Stop => break,
            signals::Signal::Upgrade => {
                let handing = cairn::upgrade::Handing {
                    groups: &groups,
                    manager: manager.as_ref(),
                    drain: shared.drain_timeout,
                };
                match cairn::upgrade::spawn(&handing).and_then(|p| p.wait(Duration::from_secs(30)))
                {
                    Ok(handed) => {
                        log::info!("upgrade: pid {} took over; draining", handed.pid);
                        successor = Some(handed);
                        break;
                    }
                    Err(e) => log::error!("upgrade failed: {e}"),
                }
            }
        }
    }
    let handed_over = successor.is_some();
    if !handed_over {
        let _ = cairn::notify::notify("STOPPING=1");
    }
    log::info!(
        "draining: no new connections; in-flight responses have {:?}",
        shared.drain_timeout
    );
    // The flag first: the shards' accept loops stop (a readiness accept that
    // is dropped has taken nothing). Then the listeners: new connections are
    // refused from here on, and those already queued are reset rather than
    // left waiting for a shard that will not accept them.
    shared.drain.send_replace(true);
    for g in groups.iter().filter(|_| !handed_over) {
        for l in g {
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read);
        }
    }
    let deadline = Instant::now() + shared.drain_timeout + Duration::from_secs(2);
    let mut orphaned = false;
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if !orphaned && successor.as_ref().is_some_and(|s| s.successor_died()) {
            orphaned = true;
            log::error!("upgrade: the new process died while this one drains; nothing will serve after this exits (it exits 1)");
        }
    }
    orphaned |= successor.as_ref().is_some_and(|s| s.successor_died());
    // The shards have handed over their last lines; write them out.
    logger.stop();
    log_stats(&shared);
    log::info!(
        "stopped ({} panics during the run)",
        cairn::logging::PANICS.load(Relaxed)
    );
    if orphaned {
        bail!("upgrade: the new process died during the handover");
    }
    Ok(())
}

/// SIGHUP and `/conf/reload`: load and validate the configuration again, then
/// swap it in. Any error (file, line, reason) leaves the running configuration
/// in force. Returns what was logged.
fn reload(dir: Option<&std::path::Path>, shared: &Shared) -> Result<String, String> {
    let _ = cairn::notify::notify("RELOADING=1");
    let loaded = match dir {
        Some(dir) => config::load_dir(dir),
        None => Ok(config::embedded()),
    };
    let r = match loaded {
        Err(e) => Err(format!(
            "reload failed, the running configuration stays in force: {e}"
        )),
        Ok(l) => {
            for w in &l.warnings {
                log::warn!("{w}");
            }
            let n = l.config.vhosts.len();
            let old_manager = shared
                .live
                .load()
                .config
                .server
                .manager
                .as_ref()
                .map(|m| m.listen);
            if l.config.server.manager.as_ref().map(|m| m.listen) != old_manager {
                log::warn!("reload: the <Manager> address keeps its running value until a restart (its access list is reloaded)");
            }
            match shared.reload(Arc::new(l.config)) {
                Ok(()) => Ok(format!(
                    "configuration reloaded: {n} vhosts; new requests use it"
                )),
                Err(e) => Err(format!(
                    "reload refused, the running configuration stays in force: {e}"
                )),
            }
        }
    };
    match &r {
        Ok(m) => log::info!("{m}"),
        Err(e) => log::error!("{e}"),
    }
    let _ = cairn::notify::notify("READY=1");
    r
}

/// Per-shard counters and the cache's, summed when read (SIGUSR1 and at exit).
fn log_stats(shared: &Shared) {
    for (i, s) in shared.stats.iter().enumerate() {
        log::info!(
            "shard {i}: {} connections ({} refused), {} TLS handshakes ({} failed, {} handed to kTLS), {} HTTP/2 connections ended by GOAWAY for errors or floods ({} streams reset as malformed, {} reset by clients while served), {} live sessions, {} requests, {} origin connects ({} failures), {} restarts, {} log lines ({} dropped)",
            s.connections.load(Relaxed),
            s.refused.load(Relaxed),
            s.tls_handshakes.load(Relaxed),
            s.tls_failures.load(Relaxed),
            s.tls_kernel.load(Relaxed),
            s.h2_goaways.load(Relaxed),
            s.h2_stream_errors.load(Relaxed),
            s.h2_client_resets.load(Relaxed),
            s.active.load(Relaxed),
            s.requests.load(Relaxed),
            s.origin.connects.load(Relaxed),
            s.origin.failures.load(Relaxed),
            s.restarts.load(Relaxed),
            s.log_lines.load(Relaxed),
            s.log_dropped.load(Relaxed)
        );
    }
    for (i, s) in shared.stats.iter().enumerate() {
        let (made, inb, outb) = (
            s.gz_objects.load(Relaxed),
            s.gz_bytes_in.load(Relaxed),
            s.gz_bytes_out.load(Relaxed),
        );
        log::info!(
            "shard {i}: {made} gzip variants made ({inb} bytes in, {outb} out, {} saved, {:.1} ms compressing), {} DRM responses ({} refused)",
            inb.saturating_sub(outb),
            s.gz_nanos.load(Relaxed) as f64 / 1e6,
            s.drm_responses.load(Relaxed),
            s.drm_refused.load(Relaxed)
        );
    }
    let lost = shared.log_queues.lost.load(Relaxed);
    if lost > 0 {
        log::warn!("access log: {lost} lines could not be written (see the errors above)");
    }
    let c = &shared.cache.stats;
    let st = shared.cache.store_stats();
    log::info!(
        "cache: {} hits, {} misses, {} stored, {} not stored (size or space), {} objects indexed, {} fills in flight, {} fills refused (MaxFillsPerShard), {} fills abandoned, {} segments reclaimed ({} second chances)",
        c.hits.load(Relaxed),
        c.misses.load(Relaxed),
        c.stores.load(Relaxed),
        c.store_skipped.load(Relaxed),
        shared.cache.objects(),
        shared.cache.fills.in_progress(),
        shared
            .stats
            .iter()
            .map(|s| s.fills_refused.load(Relaxed))
            .sum::<u64>(),
        shared
            .stats
            .iter()
            .map(|s| s.fills_abandoned.load(Relaxed))
            .sum::<u64>(),
        st.evictions.load(Relaxed),
        st.second_chances.load(Relaxed)
    );
}

fn start_sample_origin(args: &Args, config: &config::Config) -> Result<()> {
    let site = match &args.site {
        Some(s) => s.clone(),
        None => {
            let beside_source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/site");
            if beside_source.is_dir() {
                beside_source
            } else {
                PathBuf::from("examples/site")
            }
        }
    };
    if !site.is_dir() {
        bail!(
            "sample origin: {} is not a directory (use --site DIR)",
            site.display()
        );
    }
    let addr = config.vhosts[0].origins[0].addr;
    let bound = cairn::static_origin::start(addr, site.clone())
        .with_context(|| format!("sample origin: cannot listen on {addr}"))?;
    log::info!(
        "sample origin serving {} on http://{bound}/",
        site.display()
    );
    Ok(())
}
