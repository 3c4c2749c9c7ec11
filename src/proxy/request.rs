//! The per-request context: built once when the vhost is known, read by every
//! phase, and summed up by the log phase.

use super::rules::RuleFacts;
use crate::cache::{CacheKey, CacheResult};
use crate::config::Vhost;
use crate::context::ShardCtx;
use crate::exchange::{ExchangeError, Request};
use crate::http1::RequestHead;
use crate::policy::HeaderList;
use crate::transform::SendTransform;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;

/// What went out to the client, for the log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub status: u16,
    pub content_length: Option<u64>,
    pub gzip: bool,
}

pub struct RequestCtx<'a> {
    pub shard: &'a ShardCtx,
    pub vhost: &'a Vhost,
    /// The server-wide settings of the configuration this request runs under.
    pub server: &'a crate::config::ServerSettings,
    pub req: &'a Request,
    pub head: &'a RequestHead,
    /// Set once when the request is read; a fill that learns the URL's Vary
    /// fields re-keys it (`cached::fill`) before anything is stored.
    pub key: RefCell<CacheKey>,
    /// The one clock reading of this request, unix milliseconds: freshness, Age,
    /// Expires rules and the log line all use it.
    pub now_ms: u64,
    /// STON rule facts, when the vhost has rules in force.
    pub rules: Option<RuleFacts<'a>>,
    /// MOD-1: the request headers after the request rules.
    pub req_headers: Option<HeaderList<'a>>,
    /// The send-side transform for this response, if one applies.
    pub transform: Option<&'a dyn SendTransform>,
    /// A DRM request (`<url>/<Keyword>`): its settings; `head` is then the
    /// source's request and `transform` its RC4 keystream.
    pub drm: Option<&'a crate::policy::drm::DrmSettings>,
    pub result: Cell<CacheResult>,
    /// The origin address asked, if any.
    pub origin: Cell<Option<SocketAddr>>,
    /// Did the response bypass the cache (pass-through)?
    pub bypass: Cell<bool>,
    pub sent: Cell<Sent>,
    pub error: RefCell<Option<ExchangeError>>,
}

impl RequestCtx<'_> {
    pub fn key(&self) -> std::cell::Ref<'_, CacheKey> {
        self.key.borrow()
    }

    pub fn response_rules(&self) -> Option<&RuleFacts<'_>> {
        self.rules
            .as_ref()
            .filter(|_| self.vhost.response_rules_active())
    }

    /// Records why the exchange failed (the first reason wins).
    pub fn fail(&self, e: ExchangeError) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            *slot = Some(e);
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
