//! Talking to origins: the per-shard connection pool and the request exchange.

pub mod exchange;
pub mod pool;

pub use pool::Pool;
