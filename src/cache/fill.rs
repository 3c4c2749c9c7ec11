//! Request coalescing: concurrent misses for one key make one origin request.
//!
//! The first miss becomes the leader and fetches; later ones (on any shard) follow
//! the same [`Fill`]. The leader writes the body straight into its segment record
//! and says how far it got; followers send from the segment ([`BodyCursor`]), so a
//! fill holds no body bytes in memory however many clients read it, or how slowly.
//! A leader that fails, or is dropped mid-way (its task panicked), wakes every
//! follower with the error. When every client of a fill has left, the leader may
//! abandon it ([`Leader::abandon`]). This runs on the miss path only; the short
//! mutex inside a fill is never taken by a cache hit.

use super::freshness::Times;
use super::segment::{Lease, Segment};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
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

/// Where a fill's body is being written: followers read the written prefix from
/// here, each read under its own lease.
#[derive(Clone)]
pub struct BodyCursor {
    seg: Arc<Segment>,
    generation: u32,
    base: usize,
}

impl std::fmt::Debug for BodyCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyCursor(seg {}, +{})", self.seg.id, self.base)
    }
}

impl BodyCursor {
    pub(super) fn new(seg: Arc<Segment>, generation: u32, base: usize) -> BodyCursor {
        BodyCursor {
            seg,
            generation,
            base,
        }
    }

    /// Body bytes `from..to`, which the writer has already written (a fill says how
    /// far with [`Progress::written`]); the mapping, not a copy.
    pub fn bytes(&self, from: u64, to: u64) -> Option<Bytes> {
        let len = usize::try_from(to.checked_sub(from)?).ok()?;
        let off = self.base.checked_add(usize::try_from(from).ok()?)?;
        Lease::acquire(&self.seg, self.generation, off, len).map(Lease::into_bytes)
    }
}

#[derive(Debug, Default)]
struct State {
    head: Option<FillHead>,
    body: Option<BodyCursor>,
    /// Body bytes written so far; never moves back.
    written: u64,
    end: Option<FillEnd>,
}

#[derive(Debug)]
pub struct Fill {
    pub key: Vec<u8>,
    state: Mutex<State>,
    notify: Notify,
    /// Clients reading this fill now (each holds a [`Watch`]).
    watchers: AtomicUsize,
}

/// What a follower sees when it looks.
pub struct Progress {
    pub head: Option<FillHead>,
    pub body: Option<BodyCursor>,
    pub written: u64,
    pub end: Option<FillEnd>,
}

impl Fill {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until more than `sent` body bytes are written (or the head, or the
    /// end, is there), then says how far the fill is. `had_head`: the caller
    /// already has the head.
    pub async fn next(&self, sent: u64, had_head: bool) -> Progress {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                let news = s.written > sent || s.end.is_some() || (!had_head && s.head.is_some());
                if news {
                    return Progress {
                        head: if had_head { None } else { s.head.clone() },
                        body: s.body.clone(),
                        written: s.written,
                        end: s.end,
                    };
                }
            }
            notified.await;
        }
    }

    pub fn watchers(&self) -> usize {
        self.watchers.load(SeqCst)
    }
}

/// A client's interest in a fill; the fill knows nobody waits when none is left.
pub struct Watch(Arc<Fill>);

impl Watch {
    fn new(fill: &Arc<Fill>) -> Watch {
        fill.watchers.fetch_add(1, SeqCst);
        Watch(fill.clone())
    }
}

impl std::ops::Deref for Watch {
    type Target = Fill;
    fn deref(&self) -> &Fill {
        &self.0
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, SeqCst);
    }
}

/// The table of fills in progress, shared by all shards.
#[derive(Default)]
pub struct Fills {
    map: Mutex<ahash::AHashMap<Vec<u8>, Arc<Fill>>>,
}

pub enum Role {
    Leader(Leader),
    Follower(Watch),
}

impl Fills {
    fn map(&self) -> std::sync::MutexGuard<'_, ahash::AHashMap<Vec<u8>, Arc<Fill>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn begin(self: &Arc<Self>, key: &[u8]) -> Role {
        let mut m = self.map();
        if let Some(f) = m.get(key) {
            // Under the map lock: an abandoning leader sees this watcher.
            return Role::Follower(Watch::new(f));
        }
        let fill = Arc::new(Fill {
            key: key.to_vec(),
            state: Mutex::default(),
            notify: Notify::new(),
            watchers: AtomicUsize::new(0),
        });
        m.insert(key.to_vec(), fill.clone());
        Role::Leader(Leader {
            fills: self.clone(),
            fill,
            done: false,
        })
    }

    pub fn in_progress(&self) -> usize {
        self.map().len()
    }
}

/// The leader's handle. Dropping it without [`Leader::finish`] fails the fill.
pub struct Leader {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    done: bool,
}

impl Leader {
    /// A watch on the fill this leader feeds, to follow it like any other request.
    pub fn watch(&self) -> Watch {
        Watch::new(&self.fill)
    }

    pub fn watchers(&self) -> usize {
        self.fill.watchers()
    }

    /// The head, and where the body will be written.
    pub fn start(&self, head: FillHead, body: Option<BodyCursor>) {
        {
            let mut s = self.fill.lock();
            s.head = Some(head);
            s.body = body;
        }
        self.fill.notify.notify_waiters();
    }

    /// `n` more body bytes are written to the cursor's region.
    pub fn advance(&self, n: u64) {
        self.fill.lock().written += n;
        self.fill.notify.notify_waiters();
    }

    /// Ends the fill. New requests for the key stop joining it from here on.
    pub fn finish(mut self, end: FillEnd) {
        self.end(end);
    }

    /// Gives the fill up if no client watches it (checked under the table's lock, so
    /// no one can join meanwhile). Returns the leader back if someone still does.
    pub fn abandon(mut self) -> Result<(), Leader> {
        {
            let fills = self.fills.clone();
            let mut m = fills.map();
            if self.fill.watchers() != 0 {
                drop(m);
                return Err(self);
            }
            if m.get(&self.fill.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
            {
                m.remove(&self.fill.key);
            }
        }
        self.end(FillEnd::Failed);
        Ok(())
    }

    fn end(&mut self, end: FillEnd) {
        if self.done {
            return;
        }
        self.done = true;
        {
            let mut m = self.fills.map();
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

    fn head() -> FillHead {
        FillHead {
            status: 200,
            headers: Bytes::new(),
            length: Some(6),
            has_body: true,
            times: Times::default(),
        }
    }

    #[test]
    fn followers_read_the_written_prefix_from_the_segment_and_a_dropped_leader_fails() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let seg = Arc::new(Segment::anonymous(0, 1 << 20).unwrap());
            let fills = Arc::new(Fills::default());
            let Role::Leader(leader) = fills.begin(b"k") else {
                panic!()
            };
            let Role::Follower(f) = fills.begin(b"k") else {
                panic!()
            };
            assert_eq!(leader.watchers(), 1);
            let follower = tokio::spawn(async move {
                let mut got = Vec::new();
                let mut had_head = false;
                loop {
                    let p = f.next(got.len() as u64, had_head).await;
                    had_head |= p.head.is_some();
                    if p.written > got.len() as u64 {
                        let c = p.body.as_ref().unwrap();
                        got.extend_from_slice(&c.bytes(got.len() as u64, p.written).unwrap());
                    }
                    if p.end.is_some() {
                        return (got, p.end);
                    }
                }
            });
            tokio::task::yield_now().await;
            let base = 4096;
            let generation = seg.generation.load(SeqCst);
            leader.start(head(), Some(BodyCursor::new(seg.clone(), generation, base)));
            seg.write_at(base, b"abc");
            leader.advance(3);
            tokio::task::yield_now().await;
            seg.write_at(base + 3, b"def");
            leader.advance(3);
            leader.finish(FillEnd::Complete);
            let (body, end) = follower.await.unwrap();
            assert_eq!(body, b"abcdef");
            assert_eq!(end, Some(FillEnd::Complete));
            assert_eq!(fills.in_progress(), 0);
            assert_eq!(
                seg.leases(),
                0,
                "the follower's reads released their leases"
            );

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

    #[test]
    fn a_fill_is_abandoned_only_when_nobody_watches_it() {
        let fills = Arc::new(Fills::default());
        let Role::Leader(leader) = fills.begin(b"k") else {
            panic!()
        };
        let own = leader.watch();
        let Role::Follower(other) = fills.begin(b"k") else {
            panic!()
        };
        assert_eq!(leader.watchers(), 2);
        drop(own);
        let Err(leader) = leader.abandon() else {
            panic!("one client still watches")
        };
        drop(other);
        assert_eq!(leader.watchers(), 0);
        assert!(leader.abandon().is_ok(), "nobody watches");
        assert_eq!(fills.in_progress(), 0);
        // The next request leads a fresh fill.
        assert!(matches!(fills.begin(b"k"), Role::Leader(_)));
    }
}
