//! Downstream protocols: each drives client connections and implements the
//! [`Downstream`](crate::exchange::Downstream) seam for the request path.
//! HTTP/1.1 and HTTP/2.

pub mod h2;
pub mod h2c;
pub mod http1;
#[cfg(test)]
pub mod memory;
