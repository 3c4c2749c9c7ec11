//! A second downstream, in memory, for tests: it records the head and the body
//! pieces exactly as the request path hands them over, proving that the cache,
//! fill, follow, transform and pass-through phases work through the seam alone.

use crate::exchange::{BodyLen, ClientGone, Downstream, Head};
use bytes::Bytes;

#[derive(Debug, Default)]
pub struct Recorded {
    pub status: u16,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub body_len: Option<BodyLen>,
    pub pieces: Vec<Bytes>,
    pub finished: bool,
    pub aborted: bool,
    pub bound: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
    pub fn body(&self) -> Vec<u8> {
        self.pieces.concat()
    }
}

#[derive(Debug, Default)]
pub struct MemoryDownstream {
    pub rec: Recorded,
    sent: u64,
}

impl Downstream for MemoryDownstream {
    fn bind_vhost(&mut self, vhost: &crate::config::Vhost) {
        self.rec.bound = Some(vhost.name.clone());
    }
    async fn send_head(&mut self, head: &Head<'_>) -> Result<(), ClientGone> {
        self.rec.status = head.status;
        self.rec.fields = head
            .fields()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        self.rec.body_len = Some(head.body);
        self.sent += 64;
        Ok(())
    }
    async fn send_body(&mut self, piece: Bytes) -> Result<(), ClientGone> {
        self.sent += piece.len() as u64;
        self.rec.pieces.push(piece);
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), ClientGone> {
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), ClientGone> {
        self.rec.finished = true;
        Ok(())
    }
    fn abort(&mut self) {
        self.rec.aborted = true;
    }
    fn head_sent(&self) -> bool {
        self.rec.body_len.is_some()
    }
    fn bytes_sent(&self) -> u64 {
        self.sent
    }
    fn body_bytes_sent(&self) -> u64 {
        self.rec.pieces.iter().map(|p| p.len() as u64).sum()
    }
}
