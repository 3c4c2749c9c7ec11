//! Streaming a response body to the client as it arrives, with the framing chosen
//! for the client (as is, chunked, or close-delimited). Chunks are `Bytes` handed
//! to vectored writes: the relay itself copies nothing.

use super::heads::ClientFraming;
use super::respond::SEND_TIMEOUT;
use crate::http1::body::{chunk_header, LAST_CHUNK};
use crate::net::{Conn, IoError};
use bytes::Bytes;

/// Pending pieces before a flush.
const MAX_PENDING: usize = 64;

/// Batches a head and body chunks into vectored writes toward one client.
pub struct ClientWriter<'a> {
    client: &'a Conn,
    framing: ClientFraming,
    /// HEAD request (or 304): the head goes out, body chunks are not sent.
    head_only: bool,
    pending: Vec<Bytes>,
    /// The client went away; keep accepting chunks (a fill continues) but drop them.
    gone: bool,
}

impl<'a> ClientWriter<'a> {
    pub fn new(client: &'a Conn, head: Vec<u8>, framing: ClientFraming, head_only: bool) -> Self {
        ClientWriter {
            client,
            framing,
            head_only,
            pending: vec![Bytes::from(head)],
            gone: false,
        }
    }

    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Queues a body chunk, flushing when enough are pending.
    pub async fn chunk(&mut self, b: Bytes) {
        if self.gone || self.head_only || b.is_empty() {
            return;
        }
        if self.framing == ClientFraming::Chunked {
            self.pending.push(chunk_header(b.len()));
            self.pending.push(b);
            self.pending.push(Bytes::from_static(b"\r\n"));
        } else {
            self.pending.push(b);
        }
        if self.pending.len() >= MAX_PENDING {
            self.flush().await;
        }
    }

    pub async fn flush(&mut self) {
        if self.gone || self.pending.is_empty() {
            return;
        }
        let bufs = std::mem::take(&mut self.pending);
        if let Err(e) = self.client.writev_all(bufs, SEND_TIMEOUT).await {
            if !matches!(e, IoError::Io(ref io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
                log::debug!("client write failed: {e}");
            }
            self.gone = true;
        }
    }

    /// Ends the body (final chunk when chunked) and flushes; `false` if the client is gone.
    pub async fn finish(mut self) -> bool {
        if self.framing == ClientFraming::Chunked && !self.head_only {
            self.pending.push(Bytes::from_static(LAST_CHUNK));
        }
        self.flush().await;
        !self.gone
    }
}
