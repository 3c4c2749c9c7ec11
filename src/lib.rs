//! cairn: a thread-per-core caching reverse proxy for bare-metal Linux that loads
//! STON Edge Server configurations. See docs/architecture.md for the map.
#![deny(unsafe_code)]

pub mod accesslog;
pub mod cache;
pub mod config;
pub mod context;
pub mod dns;
pub mod downstream;
pub mod exchange;
pub mod fault;
#[cfg(test)]
mod fuzz;
#[doc(hidden)]
pub mod fuzzing;
pub mod geoip;
pub mod health;
pub mod http1;
pub mod httpdate;
pub mod json;
pub mod logging;
pub mod manage;
pub mod net;
pub mod notify;
pub mod origin;
pub mod policy;
pub mod proxy;
pub mod shard;
pub mod spool;
pub mod static_origin;
pub mod transform;
pub mod upgrade;
pub mod vhost;

/// `cairn/<version>`, for Via and the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
