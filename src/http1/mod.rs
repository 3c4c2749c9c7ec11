//! HTTP/1.x as pure code: bytes in, decisions out.
//!
//! Nothing here touches a socket or a clock. The shard runtime reads bytes into a
//! `BytesMut`, hands them to these parsers and decoders, and writes what they build.
//! That keeps every limit and every framing rule testable with tables.

pub mod body;
pub mod headers;
pub mod keepalive;
pub mod range;
pub mod request;
pub mod response;

pub use body::{BodyDecoder, BodyError, Decoded};
pub use request::{Limits, RequestError, RequestHead, Version};
pub use response::{ResponseError, ResponseHead};
