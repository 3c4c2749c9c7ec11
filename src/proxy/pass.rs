//! Pass-through: requests the cache does not handle (other methods, Authorization,
//! uncacheable responses) go to the origin and stream back as they are.

use super::heads::{self, client_framing, ClientFraming, Extras, OriginOpts};
use super::relay::ClientWriter;
use super::Outcome;
use crate::config::Vhost;
use crate::http1::keepalive::Decision;
use crate::http1::{request::Version, RequestHead};
use crate::net::Conn;
use crate::origin::exchange::{self, OriginReply, OriginRequest};
use crate::shard::Shard;
use bytes::Bytes;
use std::net::SocketAddr;
use std::rc::Rc;

/// Forwards the request and relays the response.
#[allow(clippy::too_many_arguments)] // the request's phases, passed as they are
pub async fn forward(
    shard: &Rc<Shard>,
    client: &Conn,
    vhost: &Vhost,
    req: &RequestHead,
    body: Option<Bytes>,
    peer: SocketAddr,
    ka: Decision,
    x: &Extras<'_>,
    req_headers: Option<&crate::policy::HeaderList<'_>>,
) -> Outcome {
    let origin = exchange::pick(shard, vhost);
    let head = heads::origin_request(
        req,
        origin,
        peer.ip(),
        body.as_ref().map(|b| b.len() as u64),
        &OriginOpts {
            headers: req_headers,
            ..OriginOpts::default()
        },
    );
    let oreq = OriginRequest {
        head: Bytes::from(head),
        body,
        idempotent: req.is_idempotent(),
        head_method: req.is_head(),
    };
    match exchange::send(shard, vhost, origin, &oreq).await {
        Ok(reply) => relay(shard, client, req, reply, ka, x, false).await,
        Err(status) => Outcome::Failed(status),
    }
}

/// Relays an origin response with its headers as they are (less hop-by-hop).
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    shard: &Shard,
    client: &Conn,
    req: &RequestHead,
    mut reply: OriginReply,
    ka: Decision,
    x: &Extras<'_>,
    head_only: bool,
) -> Outcome {
    let framing = client_framing(
        reply.has_body(),
        reply.length(),
        req.version == Version::Http10,
    );
    // A drain that started while we waited for the origin closes this connection too.
    let ka = if framing == ClientFraming::Close || shard.draining() {
        Decision::Close
    } else {
        ka
    };
    let head = heads::client_response(&reply.head, framing, ka, x);
    // `head_only`: a HEAD filled with GET gets the head alone.
    let mut w = ClientWriter::new(client, head, framing, head_only);
    loop {
        match reply.next().await {
            Ok(Some(b)) => {
                w.chunk(b).await;
                if w.is_gone() {
                    return Outcome::Abort;
                }
            }
            Ok(None) => break,
            Err(()) => {
                w.flush().await;
                return Outcome::Abort;
            }
        }
    }
    if !w.finish().await {
        return Outcome::Abort;
    }
    Outcome::Done { close: ka.closes() }
}
