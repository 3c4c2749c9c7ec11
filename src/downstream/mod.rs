//! Downstream protocols: each drives client connections and implements the
//! [`Downstream`](crate::exchange::Downstream) seam for the request path.
//! HTTP/1.1 today; HTTP/2 goes beside it.

pub mod http1;
#[cfg(test)]
pub mod memory;
