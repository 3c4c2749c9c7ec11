//! Request coalescing: concurrent misses for one key make one origin request.
//!
//! The first miss becomes the leader and fetches; later ones (on any shard) follow
//! the same [`Fill`], receiving the head and the body chunks as the leader receives
//! them, not after a polling delay. A leader that fails, or is dropped mid-way
//! (its client vanished, its task panicked), wakes every follower with the error.
//! This runs on the miss path only; the short mutex inside a fill is never taken
//! by a cache hit.

use super::freshness::Times;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The response head a fill shares: status and the header lines kept by policy.
#[derive(Debug, Clone)]
pub struct FillHead {
    pub status: u16,
    pub headers: Bytes,
    /// Known body length (Content-Length), if any.
    pub length: Option<u64>,
    /// False for responses that have no body at all (204, and 304s).
    pub has_body: bool,
    pub times: Times,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillEnd {
    /// The body is complete.
    Complete,
    /// The response must not be shared (not cacheable): followers fetch for themselves.
    Pass,
    /// The origin failed before or during the body.
    Failed,
}

#[derive(Debug, Default)]
struct State {
    head: Option<FillHead>,
    chunks: Vec<Bytes>,
    end: Option<FillEnd>,
}

#[derive(Debug)]
pub struct Fill {
    pub key: Vec<u8>,
    state: Mutex<State>,
    notify: Notify,
}

/// What a follower sees when it looks.
pub struct Progress {
    pub head: Option<FillHead>,
    pub chunks: Vec<Bytes>,
    pub end: Option<FillEnd>,
}

impl Fill {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until something past `seen` chunks (or the head, or the end) is available,
    /// then returns it. `had_head`: the caller already has the head.
    pub async fn next(&self, seen: usize, had_head: bool) -> Progress {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                let news =
                    s.chunks.len() > seen || s.end.is_some() || (!had_head && s.head.is_some());
                if news {
                    return Progress {
                        head: if had_head { None } else { s.head.clone() },
                        chunks: s.chunks[seen.min(s.chunks.len())..].to_vec(),
                        end: s.end,
                    };
                }
            }
            notified.await;
        }
    }
}

/// The table of fills in progress, shared by all shards.
#[derive(Default)]
pub struct Fills {
    map: Mutex<ahash::AHashMap<Vec<u8>, Arc<Fill>>>,
}

pub enum Role {
    Leader(Leader),
    Follower(Arc<Fill>),
}

impl Fills {
    pub fn begin(self: &Arc<Self>, key: &[u8]) -> Role {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = m.get(key) {
            return Role::Follower(f.clone());
        }
        let fill = Arc::new(Fill {
            key: key.to_vec(),
            state: Mutex::default(),
            notify: Notify::new(),
        });
        m.insert(key.to_vec(), fill.clone());
        Role::Leader(Leader {
            fills: self.clone(),
            fill,
            done: false,
        })
    }

    pub fn in_progress(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The leader's handle. Dropping it without [`Leader::finish`] fails the fill.
pub struct Leader {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    done: bool,
}

impl Leader {
    /// The fill this leader feeds, to follow it like any other request.
    pub fn fill(&self) -> Arc<Fill> {
        self.fill.clone()
    }

    pub fn set_head(&self, head: FillHead) {
        self.fill.lock().head = Some(head);
        self.fill.notify.notify_waiters();
    }

    pub fn push(&self, chunk: Bytes) {
        self.fill.lock().chunks.push(chunk);
        self.fill.notify.notify_waiters();
    }

    /// Ends the fill. New requests for the key stop joining it from here on.
    pub fn finish(mut self, end: FillEnd) {
        self.end(end);
    }

    fn end(&mut self, end: FillEnd) {
        if self.done {
            return;
        }
        self.done = true;
        {
            let mut m = self.fills.map.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&self.fill.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
            {
                m.remove(&self.fill.key);
            }
        }
        self.fill.lock().end = Some(end);
        self.fill.notify.notify_waiters();
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(FillEnd::Failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_see_head_chunks_and_end_and_a_dropped_leader_fails() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let fills = Arc::new(Fills::default());
            let Role::Leader(leader) = fills.begin(b"k") else {
                panic!()
            };
            let Role::Follower(f) = fills.begin(b"k") else {
                panic!()
            };
            let follower = tokio::spawn(async move {
                let p = f.next(0, false).await;
                let mut got = p.chunks.concat();
                let mut seen = p.chunks.len();
                let mut end = p.end;
                while end.is_none() {
                    let p = f.next(seen, true).await;
                    seen += p.chunks.len();
                    got.extend(p.chunks.concat());
                    end = p.end;
                }
                (got, end)
            });
            tokio::task::yield_now().await;
            leader.set_head(FillHead {
                status: 200,
                headers: Bytes::new(),
                length: Some(6),
                has_body: true,
                times: Times::default(),
            });
            leader.push(Bytes::from_static(b"abc"));
            tokio::task::yield_now().await;
            leader.push(Bytes::from_static(b"def"));
            leader.finish(FillEnd::Complete);
            let (body, end) = follower.await.unwrap();
            assert_eq!(body, b"abcdef");
            assert_eq!(end, Some(FillEnd::Complete));
            assert_eq!(fills.in_progress(), 0);

            let Role::Leader(leader) = fills.begin(b"k") else {
                panic!("a finished fill is gone")
            };
            let Role::Follower(f) = fills.begin(b"k") else {
                panic!()
            };
            drop(leader);
            assert_eq!(f.next(0, false).await.end, Some(FillEnd::Failed));
        });
    }
}
