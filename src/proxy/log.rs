//! The exchange's last phase: one access-log line per request (LOG-1), whatever
//! happened to it: hit, miss, follower, pass-through, refusal or error.

use super::request::Sent;
use crate::accesslog::{format, Entry};
use crate::cache::CacheResult;
use crate::config::Vhost;
use crate::context::ShardCtx;
use crate::exchange::{ConnFacts, Protocol};
use crate::http1::RequestHead;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Everything the line says, gathered by the request path.
pub struct Exchanged<'a> {
    pub vhost: Option<&'a Vhost>,
    pub conn: &'a ConnFacts,
    pub head: Option<&'a RequestHead>,
    pub protocol: Protocol,
    /// The HTTP/2 stream, if any.
    pub stream: Option<u32>,
    pub received: Instant,
    pub now_ms: u64,
    pub sent: Sent,
    pub bytes_sent: u64,
    pub body_bytes: u64,
    /// Bytes the client sent for the request (head and body).
    pub bytes_in: u64,
    pub result: CacheResult,
    pub bypass: bool,
}

pub fn write(shard: &ShardCtx, x: &Exchanged<'_>) {
    if let Some(v) = x.vhost {
        count(shard, &v.name, x);
    }
    let Some(target) = x.vhost.and_then(|v| v.access_log.as_ref()) else {
        return;
    };
    // STON's `Local="OFF"` (its default): loopback clients are not logged.
    if !target.local && x.conn.peer.ip().to_canonical().is_loopback() {
        return;
    }
    let taken = x.received.elapsed();
    // One pass over the request's fields for all the ones the line names.
    let mut f: [Option<&[u8]>; 5] = [None; 5];
    const NAMES: [&[u8]; 5] = [
        b"user-agent",
        b"referer",
        b"range",
        b"accept-encoding",
        b"x-forwarded-for",
    ];
    for (n, v) in x.head.into_iter().flat_map(RequestHead::headers) {
        if let Some(i) = NAMES.iter().position(|w| n.eq_ignore_ascii_case(w)) {
            f[i].get_or_insert(v);
        }
    }
    let e = Entry {
        end_ms: x.now_ms + taken.as_millis() as u64,
        server_ip: Some(x.conn.local.ip()),
        server_port: x.conn.local.port(),
        client_ip: Some(x.conn.peer.ip()),
        xff: f[4],
        xff_mode: target.xff,
        method: x.head.map(RequestHead::method),
        target: x.head.map(RequestHead::path),
        version: x.protocol.as_str(),
        user_agent: f[0],
        referer: f[1],
        range: f[2],
        accept_encoding: f[3],
        status: x.sent.status,
        bytes_sent: x.bytes_sent,
        body_bytes: x.body_bytes,
        time_taken_ms: taken.as_millis() as u64,
        gzip: x.sent.gzip,
        tls: x.conn.tls.map(|t| t.version.as_str()),
        h2_stream: x.stream,
        bypass: x.bypass,
        result: x.result.code(),
        session_id: x.conn.session_id,
        content_length: x.sent.content_length,
    };
    let stats = shard.stats();
    stats.log_lines.fetch_add(1, Relaxed);
    let dropped = shard
        .log
        .write(target, |out| format::write(target.form, &e, out));
    if dropped > 0 {
        stats.log_dropped.fetch_add(dropped, Relaxed);
    }
}

/// The vhost's counters (the metrics): every request, whether logged or not.
fn count(shard: &ShardCtx, vhost: &str, x: &Exchanged<'_>) {
    let taken = x.received.elapsed().as_micros() as u64;
    shard.vhost_counters(vhost, |c| {
        c.results[x.result.index()].fetch_add(1, Relaxed);
        let class = match x.sent.status {
            100..=599 => (x.sent.status / 100) as usize,
            _ => 0,
        };
        c.classes[class].fetch_add(1, Relaxed);
        c.bytes_out.fetch_add(x.bytes_sent, Relaxed);
        c.bytes_in.fetch_add(x.bytes_in, Relaxed);
        if x.result.is_hit() {
            c.hit_bytes_out.fetch_add(x.bytes_sent, Relaxed);
        }
        c.time_us.fetch_add(taken, Relaxed);
    });
}
