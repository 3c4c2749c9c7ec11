//! Body transforms between a body source (a cached region, a filling object, an
//! origin stream) and the downstream. A send-side transform sees each piece of
//! the object with its absolute offset, so a Range or a follower that joins a
//! fill mid-way is transformed exactly as the whole body would be (DRM's
//! keystream works this way). Framing bytes (multipart part heads) never pass
//! through it.

pub mod gzip;
pub mod rc4;
pub mod xor;

use bytes::Bytes;

pub trait SendTransform {
    /// The transformed bytes of `piece`, which starts `offset` bytes into the object.
    fn apply(&self, offset: u64, piece: Bytes) -> Bytes;
}
