//! The shard's table of parked keep-alive connections.
//!
//! A plain HTTP/1 connection quiet for [`PARK_AFTER`] between requests ends
//! its task: its read is withdrawn, its buffer and futures are freed, and
//! what is left (socket, facts, admission ticket, session entry: about
//! 0.2 KiB) waits here, watched by the shard's [`ReadySet`]. One task per
//! shard serves the table: a socket that becomes readable gets a new
//! connection task; one whose keep-alive timeout passes is closed; a drain
//! closes them all. nginx keeps idle connections the same way (a small
//! connection struct in epoll, the buffer freed).
//!
//! The table holds at most `MaxSockets` entries: each holds the admission
//! ticket its connection was accepted with.
//!
//! [`PARK_AFTER`]: crate::downstream::http1::PARK_AFTER

use super::SessionGuard;
use crate::context::ShardCtx;
use crate::downstream::http1::{self, Idle, Waiting};
use crate::net::readiness::ReadySet;
use crate::net::{Conn, ParkedSocket};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

/// Slots with their deadlines, a free list, and a heap of deadlines whose
/// stale entries (taken slots) are skipped, and dropped in one rebuild once
/// they outnumber the live ones. Tokens carry a generation, so a token of a
/// slot since reused takes nothing.
pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    len: usize,
}

struct Slot<T> {
    generation: u32,
    entry: Option<(T, Instant)>,
}

fn token(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: BinaryHeap::new(),
            len: 0,
        }
    }
}

impl<T> Table<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `item`, due at `deadline`; returns its token, and whether the
    /// deadline is now the earliest (the waiter must look again).
    pub fn insert(&mut self, item: T, deadline: Instant) -> (u64, bool) {
        let sooner = self.next_deadline().is_none_or(|d| deadline < d);
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.entry = Some((item, deadline));
        self.len += 1;
        self.deadlines.push(Reverse((deadline, slot, s.generation)));
        (token(slot, s.generation), sooner)
    }

    /// Takes the entry `token` names, if it is still here.
    pub fn take(&mut self, token: u64) -> Option<T> {
        let (slot, generation) = ((token & 0xffff_ffff) as u32, (token >> 32) as u32);
        let s = self.slots.get_mut(slot as usize)?;
        if s.generation != generation {
            return None;
        }
        let (item, _) = s.entry.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        if self.deadlines.len() > 2 * self.len + 64 {
            self.rebuild();
        }
        Some(item)
    }

    /// The earliest deadline a heap entry names (perhaps a taken one's: the
    /// waiter then wakes for nothing, once).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Takes the next entry due by `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<T> {
        while let Some(&Reverse((d, slot, generation))) = self.deadlines.peek() {
            if d > now {
                return None;
            }
            self.deadlines.pop();
            if let Some(item) = self.take(token(slot, generation)) {
                return Some(item);
            }
        }
        None
    }

    /// Takes every entry.
    pub fn take_all(&mut self) -> Vec<T> {
        self.deadlines.clear();
        self.free.clear();
        self.len = 0;
        let all = self
            .slots
            .iter_mut()
            .filter_map(|s| s.entry.take().map(|(t, _)| t))
            .collect();
        self.slots.clear();
        all
    }

    fn rebuild(&mut self) {
        self.deadlines = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.entry
                    .as_ref()
                    .map(|(_, d)| Reverse((*d, i as u32, s.generation)))
            })
            .collect();
    }
}

/// What a parked connection holds.
pub struct Parked {
    sock: ParkedSocket,
    wait: Waiting,
    guard: SessionGuard,
}

/// One shard's parked connections.
pub struct KeepAlive {
    table: RefCell<Table<Parked>>,
    ready: ReadySet,
    /// An entry's deadline became the earliest.
    sooner: tokio::sync::Notify,
    watch_failures: RefCell<super::Throttled>,
    /// Connections parked since the heap was last trimmed, and when the next
    /// trim is due.
    parks: Cell<usize>,
    trim_at: Cell<Option<Instant>>,
}

/// After this many connections parked, the heap is trimmed (`malloc_trim`):
/// their busy phases left free pages among the live allocations of the
/// connections still busy, which glibc returns only from the heap's top. One
/// burst of idle clients would otherwise keep the memory of its peak.
const TRIM_AFTER_PARKS: usize = 256;
/// The trim waits this long after the count is reached, so that one trim
/// follows a burst.
const TRIM_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

enum Event {
    Ready(std::io::Result<Vec<u64>>),
    Due,
    Sooner,
    Trim,
    Drain,
}

impl KeepAlive {
    pub fn new() -> std::io::Result<KeepAlive> {
        Ok(KeepAlive {
            table: RefCell::new(Table::default()),
            ready: ReadySet::new()?,
            sooner: tokio::sync::Notify::new(),
            watch_failures: RefCell::new(super::Throttled::new()),
            parks: Cell::new(0),
            trim_at: Cell::new(None),
        })
    }

    /// Takes over a quiet connection. While draining it is closed instead;
    /// where its socket cannot be watched, it is served on without parking.
    pub fn park(self: &Rc<Self>, shard: &Rc<ShardCtx>, idle: Idle, mut guard: SessionGuard) {
        let Idle { conn, wait } = idle;
        if shard.draining() {
            conn.shutdown();
            return ended(shard, guard, wait.facts.session_id);
        }
        // The table's handle must be the socket's last one.
        guard.unlist();
        let sock = match conn.park() {
            Ok(s) => s,
            Err((conn, e)) => return self.unparkable(shard, conn, wait, guard, &e),
        };
        let fd = sock.raw_fd();
        let deadline = wait.deadline();
        let (token, sooner) = self
            .table
            .borrow_mut()
            .insert(Parked { sock, wait, guard }, deadline);
        if let Err(e) = self.ready.watch(fd, token) {
            let p = self.table.borrow_mut().take(token).expect("inserted above");
            return self.unparkable(shard, p.sock.resume(), p.wait, p.guard, &e);
        }
        shard.stats().parked.fetch_add(1, Relaxed);
        self.parks.set(self.parks.get() + 1);
        let trim = self.parks.get() >= TRIM_AFTER_PARKS && self.trim_at.get().is_none();
        if trim {
            self.trim_at.set(Some(Instant::now() + TRIM_DELAY));
        }
        if sooner || trim {
            self.sooner.notify_one();
        }
    }

    fn unparkable(
        self: &Rc<Self>,
        shard: &Rc<ShardCtx>,
        conn: Conn,
        wait: Waiting,
        mut guard: SessionGuard,
        e: &std::io::Error,
    ) {
        if let Some(held) = self.watch_failures.borrow_mut().due() {
            log::warn!(
                "shard {}: an idle connection cannot be parked ({e}; {held} more since the last report): it keeps its buffer (see fs.epoll.max_user_watches and the open-file limit)",
                shard.id
            );
        }
        guard.relist(conn.clone());
        self.serve(shard, conn, wait.unparkable(), guard);
    }

    /// Serves the table until the shard drains, then closes what is parked.
    pub async fn run(self: Rc<Self>, shard: Rc<ShardCtx>) {
        let mut drain = std::pin::pin!(shard.drain_started());
        loop {
            let next = self.table.borrow().next_deadline();
            let due = async {
                match next {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let trim_at = self.trim_at.get();
            let trim = async {
                match trim_at {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                r = async {
                    let mut woke = Vec::new();
                    self.ready.ready(&mut woke).await.map(|()| woke)
                } => Event::Ready(r),
                _ = due => Event::Due,
                _ = trim => Event::Trim,
                _ = self.sooner.notified() => Event::Sooner,
                _ = &mut drain => Event::Drain,
            };
            match event {
                Event::Ready(Ok(tokens)) => {
                    for t in tokens {
                        let p = self.table.borrow_mut().take(t);
                        let Some(p) = p else { continue };
                        let p = self.unwatched(&shard, p);
                        if p.sock.peer_gone() {
                            close(&shard, p);
                        } else {
                            let Parked {
                                sock,
                                wait,
                                mut guard,
                            } = p;
                            let conn = sock.resume();
                            guard.relist(conn.clone());
                            self.serve(&shard, conn, wait, guard);
                        }
                    }
                }
                Event::Ready(Err(e)) => {
                    // Not expected of epoll_wait on our own fd; do not spin.
                    log::error!("shard {}: keep-alive readiness wait failed: {e}", shard.id);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Event::Due => {
                    let now = Instant::now();
                    loop {
                        let p = self.table.borrow_mut().pop_expired(now);
                        let Some(p) = p else { break };
                        let p = self.unwatched(&shard, p);
                        close(&shard, p);
                    }
                }
                Event::Sooner => {}
                Event::Trim => {
                    self.parks.set(0);
                    self.trim_at.set(None);
                    trim_heap(shard.id);
                }
                Event::Drain => {
                    let all = self.table.borrow_mut().take_all();
                    for p in all {
                        let p = self.unwatched(&shard, p);
                        close(&shard, p);
                    }
                    return;
                }
            }
        }
    }

    /// A connection just taken from the table: no longer watched or counted.
    fn unwatched(&self, shard: &ShardCtx, p: Parked) -> Parked {
        self.ready.unwatch(p.sock.raw_fd());
        shard.stats().parked.fetch_sub(1, Relaxed);
        p
    }

    /// A new task for a connection with bytes to read; parked again if it
    /// goes quiet again.
    fn serve(
        self: &Rc<Self>,
        shard: &Rc<ShardCtx>,
        conn: Conn,
        wait: Waiting,
        guard: SessionGuard,
    ) {
        let (ka, s) = (self.clone(), shard.clone());
        tokio_uring::spawn(async move {
            let session_id = wait.facts.session_id;
            match Box::pin(http1::resume(s.clone(), conn, wait)).await {
                Some(idle) => ka.park(&s, idle, guard),
                None => ended(&s, guard, session_id),
            }
        });
    }
}

/// Gives the heap's free pages back to the kernel (glibc; other C libraries
/// have their own policy, and nothing is done).
fn trim_heap(shard: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = std::time::Instant::now();
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks
        // each arena in turn); 0 keeps no pad at the top.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        log::debug!(
            "shard {shard}: heap trimmed after parking connections ({} µs, memory released: {})",
            t.elapsed().as_micros(),
            released == 1
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = shard;
}

/// A parked connection closed (its idle timeout, a drain, its peer's close):
/// its FIN, then its fd.
fn close(shard: &ShardCtx, p: Parked) {
    let Parked { sock, wait, guard } = p;
    sock.close();
    ended(shard, guard, wait.facts.session_id);
}

/// What the end of every connection does: its session entry and admission
/// ticket go, and so do its private origin connections (Private="ON").
pub fn ended(shard: &ShardCtx, guard: SessionGuard, session_id: u64) {
    drop(guard);
    shard.upstreams.pool.borrow_mut().drop_owner(session_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_take_once_and_not_after_reuse() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let (a, _) = t.insert("a", t0);
        assert_eq!(t.take(a), Some("a"));
        assert_eq!(t.take(a), None, "taken twice");
        let (b, _) = t.insert("b", t0);
        assert_ne!(a, b, "a reused slot has a new generation");
        assert_eq!(t.take(a), None, "an old token takes the slot's new entry");
        assert_eq!(t.take(b), Some("b"));
        assert!(t.is_empty());
    }

    #[test]
    fn expiry_in_deadline_order_skipping_taken() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Table::default();
        let cases = [("c", 3), ("a", 1), ("d", 4), ("b", 2)];
        let mut tokens = Vec::new();
        for (name, at) in cases {
            tokens.push(t.insert(name, t0 + s(at)).0);
        }
        assert_eq!(t.take(tokens[0]), Some("c"));
        assert_eq!(t.next_deadline(), Some(t0 + s(1)));
        assert_eq!(t.pop_expired(t0), None, "nothing due yet");
        let mut got = Vec::new();
        while let Some(x) = t.pop_expired(t0 + s(3)) {
            got.push(x);
        }
        assert_eq!(got, ["a", "b"], "c was taken; d is not due");
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop_expired(t0 + s(9)), Some("d"));
        assert_eq!(t.pop_expired(t0 + s(9)), None);
    }

    #[test]
    fn insert_says_when_the_earliest_deadline_moves() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Table::default();
        let table = [(5, true), (7, false), (5, false), (2, true), (3, false)];
        for (at, sooner) in table {
            assert_eq!(t.insert(at, t0 + s(at)).1, sooner, "deadline {at}");
        }
    }

    #[test]
    fn stale_deadlines_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let (keep, _) = t.insert(0u32, t0 + Duration::from_secs(60));
        // A connection that parks and wakes over and over within its timeout.
        for i in 0..10_000u32 {
            let (tok, _) = t.insert(i, t0 + Duration::from_secs(60));
            assert_eq!(t.take(tok), Some(i));
        }
        assert!(
            t.deadlines.len() <= 2 * t.len() + 65,
            "{}",
            t.deadlines.len()
        );
        assert!(t.slots.len() <= 2, "slots are reused");
        assert_eq!(t.take(keep), Some(0));
    }

    #[test]
    fn take_all_empties() {
        let t0 = Instant::now();
        let mut t = Table::default();
        for i in 0..5 {
            t.insert(i, t0);
        }
        let mut all = t.take_all();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4]);
        assert!(t.is_empty());
        assert_eq!(t.pop_expired(t0), None);
    }
}
