//! `PURGE`, `EXPIRE` and `HARDPURGE` on the service ports (PRG-4): the
//! request's URL, every variant, for Admin addresses of `<Manager>`'s list.

use super::request::RequestCtx;
use super::send_own;
use crate::cache::{CacheResult, PurgeCount, PurgeOp, Variant};
use crate::config::manager::Role;
use crate::config::ServerSettings;
use crate::exchange::{BodyLen, Downstream, ExchangeError, Head};
use std::time::Instant;

/// The operation a method names, when `<Manager HttpMethod="ON">`.
pub fn op_of(server: &ServerSettings, method: &[u8]) -> Option<PurgeOp> {
    server.manager.as_ref().filter(|m| m.http_method)?;
    match method {
        b"PURGE" => Some(PurgeOp::Purge),
        b"EXPIRE" => Some(PurgeOp::Expire),
        b"HARDPURGE" => Some(PurgeOp::HardPurge),
        _ => None,
    }
}

pub async fn by_method<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    op: PurgeOp,
) -> Result<(), ExchangeError> {
    let method = String::from_utf8_lossy(cx.head.method()).to_ascii_lowercase();
    let admin = cx
        .server
        .manager
        .as_ref()
        .and_then(|m| m.role_of(cx.req.conn.peer.ip()))
        == Some(Role::Admin);
    let (status, body) = if admin {
        let started = Instant::now();
        let cache = &cx.shard.shared.cache;
        let mut n = PurgeCount::default();
        for v in Variant::ALL {
            if let Some(size) =
                cache.apply(cx.shard.id, cx.key.with_variant(v).stored(), op, cx.now_ms)
            {
                n.count += 1;
                n.bytes += size;
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        (
            200,
            crate::json::reply(
                &method,
                "OK",
                &crate::json::purge_result(n.count, n.bytes, ms),
            ),
        )
    } else {
        cx.result.set(CacheResult::Denied);
        (403, crate::json::reply(&method, "Forbidden", "{}"))
    };
    let body = bytes::Bytes::from(body);
    let mut head = Head::new(status, BodyLen::Known(body.len() as u64));
    head.push(b"Content-Type", b"application/json".to_vec());
    head.push(b"Cache-Control", b"no-store".to_vec());
    send_own(cx, down, head, body).await
}
