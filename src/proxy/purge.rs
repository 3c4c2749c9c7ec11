//! `PURGE`, `EXPIRE` and `HARDPURGE` on the service ports (PRG-4): the
//! request's URL, every variant, for Admin addresses of `<Manager>`'s list.

use super::request::RequestCtx;
use super::send_own;
use crate::cache::{CacheResult, PurgeOp};
use crate::config::manager::Role;
use crate::config::ServerSettings;
use crate::exchange::{BodyLen, Downstream, ExchangeError, Head};
use std::time::Instant;

/// The operation a method names, when cairn has a `<Manager>` (without one
/// these methods are the origin's). `Some(None)`: the method is refused
/// (`HttpMethod="OFF"`), never passed to the origin.
pub fn op_of(server: &ServerSettings, method: &[u8]) -> Option<Option<PurgeOp>> {
    let m = server.manager.as_ref()?;
    let op = match method {
        b"PURGE" => PurgeOp::Purge,
        b"EXPIRE" => PurgeOp::Expire,
        b"HARDPURGE" => PurgeOp::HardPurge,
        _ => return None,
    };
    Some(m.http_method.then_some(op))
}

pub async fn by_method<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    op: Option<PurgeOp>,
) -> Result<(), ExchangeError> {
    let method = String::from_utf8_lossy(cx.head.method()).to_ascii_lowercase();
    let role = cx
        .server
        .manager
        .as_ref()
        .and_then(|m| m.role_of(cx.req.conn.peer.ip()));
    let reply = |status: &str| crate::json::reply(&method, status, "{}");
    let (status, body) = match (op, role) {
        (None, _) => (405, reply("MethodNotAllowed")),
        (Some(op), Some(Role::Admin)) => {
            let started = Instant::now();
            let cache = &cx.shard.shared.cache;
            let n = cache.apply_all_variants(cx.key().primary(), op, cx.now_ms);
            let ms = started.elapsed().as_millis() as u64;
            let result = crate::json::purge_result(n.count, n.bytes, ms);
            (200, crate::json::reply(&method, "OK", &result))
        }
        // PRG-5: a known address without the right gets 401, a stranger 403.
        (Some(_), Some(_)) => (401, reply("Unauthorized")),
        (Some(_), None) => (403, reply("Forbidden")),
    };
    if status != 200 {
        cx.result.set(CacheResult::Denied);
    }
    let body = bytes::Bytes::from(body);
    let mut head = Head::new(status, BodyLen::Known(body.len() as u64));
    head.push(b"Content-Type", b"application/json".to_vec());
    head.push(b"Cache-Control", b"no-store".to_vec());
    send_own(cx, down, head, body).await
}
