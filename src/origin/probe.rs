//! Probes of origin addresses, off the shards (ORG-3): `<Recovery>` probes of
//! excluded addresses and `<HealthChecker>` probes of every address. One
//! thread for the process, so an address is probed once per cycle, not once
//! per shard; its findings go to the addresses' shared health.
//!
//! Probes are blocking and one at a time, each bounded by its timeout: a
//! handful of addresses per vhost, every few seconds, needs no more.

use crate::config::{Config, OriginAddr, Vhost};
use crate::health::{Event, Transition};
use crate::http1::response;
use ahash::AHashMap;
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the thread looks for due probes.
const TICK: Duration = Duration::from_millis(250);
/// A probe reads at most this much looking for the response head.
const MAX_HEAD: usize = 16 * 1024;

/// Starts the prober. `config` returns the configuration in force (a reload
/// swaps it; probes follow). `replace` puts a configuration whose domain
/// origins were re-resolved in place of the one it was made from, unless a
/// reload came first (then it returns false and the next round starts over).
///
/// Two threads: probes, and name resolution (a slow resolver must not
/// delay exclusion and recovery).
pub fn spawn(
    config: impl Fn() -> Arc<Config> + Send + Sync + 'static,
    replace: impl Fn(&Arc<Config>, Config) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let probing = config.clone();
    std::thread::Builder::new()
        .name("cairn-health".into())
        .spawn(move || {
            let mut due: AHashMap<(usize, usize), Instant> = AHashMap::new();
            loop {
                std::thread::sleep(TICK);
                let cfg = probing();
                tick(&cfg, &mut due, Instant::now());
            }
        })?;
    std::thread::Builder::new()
        .name("cairn-resolve".into())
        .spawn(move || {
            let mut due: AHashMap<(String, String, bool), Instant> = AHashMap::new();
            loop {
                std::thread::sleep(TICK);
                let cfg = config();
                due.retain(|(v, _, _), _| cfg.vhosts.iter().any(|x| &x.name == v));
                if let Some((next, changes)) = reresolve(&cfg, &mut due, Instant::now()) {
                    if replace(&cfg, next) {
                        for line in changes {
                            log::info!("{line}");
                        }
                    } else {
                        // A reload came first: ask again against it.
                        due.clear();
                    }
                }
            }
        })?;
    Ok(())
}

/// Domain origins whose resolution is due are asked again (ORG-1); a changed
/// address set gives a new configuration (the addresses that stay keep their
/// health). A failed lookup keeps the addresses the name had.
fn reresolve(
    cfg: &Config,
    due: &mut AHashMap<(String, String, bool), Instant>,
    now: Instant,
) -> Option<(Config, Vec<String>)> {
    let r = &cfg.server.resolver;
    let mut new: Option<Config> = None;
    let mut changes = Vec::new();
    for (vi, v) in cfg.vhosts.iter().enumerate() {
        for standby in [false, true] {
            let list = if standby { &v.standby } else { &v.origins };
            let mut texts: Vec<&str> = Vec::new();
            for o in list.iter().filter(|o| o.domain.is_some()) {
                if !texts.contains(&o.text.as_str()) {
                    texts.push(&o.text);
                }
            }
            for text in texts {
                let at = due
                    .entry((v.name.clone(), text.to_string(), standby))
                    .or_insert(now + r.max_ttl);
                if now < *at {
                    continue;
                }
                let Some(first) = list.iter().find(|o| o.text == text) else {
                    continue;
                };
                let host = first.domain.as_deref().unwrap_or_default();
                let addrs = match r.lookup(host, first.addr.port()) {
                    Ok((addrs, ttl)) => {
                        *at = now + ttl;
                        addrs
                    }
                    Err(e) => {
                        *at = now + r.max_ttl.min(Duration::from_secs(10));
                        log::warn!(
                            "vhost {}: origin {text}: {e}; keeping its addresses",
                            v.name
                        );
                        continue;
                    }
                };
                let mut current: Vec<_> = list
                    .iter()
                    .filter(|o| o.text == text)
                    .map(|o| o.addr)
                    .collect();
                let mut sorted = addrs.clone();
                current.sort();
                sorted.sort();
                if current == sorted {
                    continue;
                }
                changes.push(format!(
                    "vhost {}: origin {text} now resolves to {}",
                    v.name,
                    addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                let c = new.get_or_insert_with(|| cfg.clone());
                let vh = &mut c.vhosts[vi];
                let vl = if standby {
                    &mut vh.standby
                } else {
                    &mut vh.origins
                };
                let Some(pos) = vl.iter().position(|o| o.text == text) else {
                    continue;
                };
                let proto = vl[pos].clone();
                vl.retain(|o| o.text != text);
                let fresh: Vec<OriginAddr> = addrs.iter().map(|a| proto.at(&v.name, *a)).collect();
                vl.splice(pos..pos, fresh);
            }
        }
    }
    new.map(|c| (c, changes))
}

/// The probe kind: `usize::MAX` for recovery, else the health checker's index.
const RECOVERY: usize = usize::MAX;

fn tick(cfg: &Config, due: &mut AHashMap<(usize, usize), Instant>, now: Instant) {
    let mut live = Vec::new();
    for v in &cfg.vhosts {
        let oo = &v.origin_options;
        for o in v.origins.iter().chain(&v.standby) {
            let id = Arc::as_ptr(&o.health) as usize;
            for (i, hc) in oo.health_checkers.iter().enumerate() {
                live.push((id, i));
                let at = due.entry((id, i)).or_insert(now);
                if now < *at {
                    continue;
                }
                *at = now + hc.cycle;
                let good = probe(v, o, &hc.path, &hc.res_codes, hc.timeout);
                apply(v, o, good, hc.exclusion, hc.recovery);
            }
            // With health checkers they alone judge; otherwise an excluded
            // address gets <Recovery> probes every Cycle.
            let r = &oo.recovery;
            if !oo.health_checkers.is_empty() || o.health.usable() || r.count == 0 {
                continue;
            }
            live.push((id, RECOVERY));
            let at = due.entry((id, RECOVERY)).or_insert(now + r.cycle);
            if now < *at {
                continue;
            }
            *at = now + r.cycle;
            let timeout = oo.connect_timeout + oo.receive_timeout;
            let good = probe(v, o, &r.uri, &r.res_codes, timeout);
            apply(v, o, good, oo.exclusion, r.count);
        }
    }
    due.retain(|k, _| live.contains(k));
}

fn apply(v: &Vhost, o: &OriginAddr, good: Result<u16, String>, exclusion: u32, recovery: u32) {
    let (event, why) = match &good {
        Ok(status) => (Event::ProbeSuccess, format!("probe answered {status}")),
        Err(e) => (Event::ProbeFailure, format!("probe: {e}")),
    };
    let err = good.as_ref().err().map(|e| e as &dyn std::fmt::Display);
    if let Some(t) = o.health.record(event, err, exclusion, recovery) {
        let n = match t {
            Transition::Excluded => exclusion,
            Transition::Recovered => recovery,
        };
        super::exchange::log_transition(&v.name, o, t, &why, n);
    }
}

/// One probe: `GET path`, good if a head arrives with an expected status
/// (`res_codes` empty: any). The status, or why it was not good.
fn probe(
    v: &Vhost,
    o: &OriginAddr,
    path: &str,
    res_codes: &[u16],
    timeout: Duration,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let tcp = TcpStream::connect_timeout(&o.addr, timeout).map_err(|e| format!("connect: {e}"))?;
    // Before anything reads or writes: a TLS handshake reads first, and a
    // silent origin must not hold the one probe thread.
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let host = match &v.origin_options.host {
        Some(crate::config::OriginHost::Fixed(h)) => h.as_str(),
        _ => o.host_header.as_str(),
    };
    let req = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cairn-health\r\nConnection: close\r\n\r\n",
        o.path_prefix
    );
    let status = match (&o.tls_name, &v.origin_tls) {
        (Some(name), Some(t)) => {
            let conn = rustls::ClientConnection::new(t.client.clone(), name.clone())
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(
                rustls::StreamOwned::new(conn, tcp.try_clone().map_err(|e| e.to_string())?),
                &tcp,
                &req,
                deadline,
            )?
        }
        (Some(_), None) => return Err("no TLS client configuration".into()),
        (None, _) => exchange(
            tcp.try_clone().map_err(|e| e.to_string())?,
            &tcp,
            &req,
            deadline,
        )?,
    };
    if res_codes.is_empty() || res_codes.contains(&status) {
        Ok(status)
    } else {
        Err(format!("status {status}, expected {res_codes:?}"))
    }
}

/// Writes `req` and reads up to the final response head, each step bounded
/// by what is left of `deadline` (set on `tcp`, the socket under `s`).
fn exchange(
    mut s: impl Read + Write,
    tcp: &TcpStream,
    req: &str,
    deadline: Instant,
) -> Result<u16, String> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    tcp.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    s.flush().map_err(|e| format!("send: {e}"))?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            match response::parse(&mut buf, MAX_HEAD) {
                Ok(Some(h)) if h.is_informational() => continue,
                Ok(Some(h)) => return Ok(h.status),
                Ok(None) => break,
                Err(e) => return Err(format!("bad response: {e}")),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err("response head too large".into());
        }
        tcp.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed before a response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}
