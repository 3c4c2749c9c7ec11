//! The shard's table of parked keep-alive connections.
//!
//! A plain HTTP/1 connection quiet for [`PARK_AFTER`] between requests ends
//! its task: its read is withdrawn, its buffer and futures are freed, and
//! what is left (socket, facts, admission ticket: a slot of about 0.2 KiB)
//! waits here, watched by the shard's [`ReadySet`]. One task per shard
//! serves the table: a socket that becomes readable gets a new connection
//! task; one whose keep-alive timeout passes is closed; a drain empties it.
//! nginx keeps idle connections the same way (a small connection struct in
//! epoll, the buffer freed).
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
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

/// Slots with their deadlines, a free list (lowest first, so the tail
/// empties and is given back), and a heap of deadlines whose stale entries
/// (taken slots) are skipped, and dropped in one rebuild once they outnumber
/// the live ones. Every entry gets a new 64-bit generation: a stale heap
/// entry never takes a later entry of its slot. Tokens (for the readiness
/// set) carry the slot and the generation's low 32 bits; they name only
/// entries that are still watched.
pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: BinaryHeap<Reverse<u32>>,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u64)>>,
    len: usize,
    next_generation: u64,
}

struct Slot<T> {
    generation: u64,
    entry: Option<(T, Instant)>,
}

fn token(slot: u32, generation: u64) -> u64 {
    (generation << 32) | u64::from(slot)
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            len: 0,
            next_generation: 0,
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
        let generation = self.next_generation;
        self.next_generation += 1;
        let slot = loop {
            match self.free.pop() {
                // Indices past a shrunk tail are stale.
                Some(Reverse(i)) if (i as usize) < self.slots.len() => break i,
                Some(_) => continue,
                None => {
                    self.slots.push(Slot {
                        generation,
                        entry: None,
                    });
                    break (self.slots.len() - 1) as u32;
                }
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = generation;
        s.entry = Some((item, deadline));
        self.len += 1;
        self.deadlines.push(Reverse((deadline, slot, generation)));
        (token(slot, generation), sooner)
    }

    /// Takes the entry `token` names, if it is still here.
    pub fn take(&mut self, token: u64) -> Option<T> {
        let slot = (token & 0xffff_ffff) as u32;
        let low = token >> 32;
        let generation = self.slots.get(slot as usize)?.generation;
        if generation & 0xffff_ffff != low {
            return None;
        }
        self.take_exact(slot, generation)
    }

    fn take_exact(&mut self, slot: u32, generation: u64) -> Option<T> {
        let s = self.slots.get_mut(slot as usize)?;
        if s.generation != generation {
            return None;
        }
        let (item, _) = s.entry.take()?;
        self.free.push(Reverse(slot));
        self.len -= 1;
        while self.slots.last().is_some_and(|s| s.entry.is_none()) {
            self.slots.pop();
        }
        if self.slots.capacity() > 2 * self.slots.len() + 64 {
            self.slots
                .shrink_to(self.slots.len() + self.slots.len() / 2);
        }
        if self.free.len() > 2 * self.slots.len() + 64 {
            let n = self.slots.len();
            self.free.retain(|Reverse(i)| (*i as usize) < n);
            self.free.shrink_to(2 * n + 64);
        }
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
            if let Some(item) = self.take_exact(slot, generation) {
                return Some(item);
            }
        }
        None
    }

    /// Takes every entry.
    pub fn take_all(&mut self) -> Vec<T> {
        let all = self
            .slots
            .iter_mut()
            .filter_map(|s| s.entry.take().map(|(t, _)| t))
            .collect();
        *self = Table {
            next_generation: self.next_generation,
            ..Table::default()
        };
        all
    }

    /// Keeps the live heap entries only (a fresh, tight allocation).
    fn rebuild(&mut self) {
        let slots = &self.slots;
        let live = |&Reverse((_, i, g)): &Reverse<(Instant, u32, u64)>| {
            slots
                .get(i as usize)
                .is_some_and(|s| s.generation == g && s.entry.is_some())
        };
        let kept: Vec<_> = std::mem::take(&mut self.deadlines)
            .into_vec()
            .into_iter()
            .filter(live)
            .collect();
        let mut kept = kept;
        kept.shrink_to_fit();
        self.deadlines = BinaryHeap::from(kept);
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
    shard: Rc<ShardCtx>,
    table: RefCell<Table<Parked>>,
    ready: ReadySet,
    /// An entry's deadline became the earliest, or a trim was scheduled.
    sooner: tokio::sync::Notify,
    watch_failures: RefCell<super::Throttled>,
    wait_failures: RefCell<super::Throttled>,
    trim: RefCell<TrimPlan>,
}

/// When the heap is trimmed (`malloc_trim`): connections that park leave the
/// free pages of their busy phases among the live allocations of the ones
/// still busy, which glibc gives back only from the heap's top, so one burst
/// of idle clients would keep the memory of its peak. A trim follows a net
/// growth of the table by [`TRIM_GROWTH`] entries, [`TRIM_DELAY`] after the
/// last of them (at most [`TRIM_DELAY_MAX`] after the first), and no sooner
/// than [`TRIM_INTERVAL`] after the process's last trim: a trim walks every
/// arena, each under its lock, so it costs the other shards a short wait.
/// Clients that wake and park again do not grow the table.
#[derive(Default)]
struct TrimPlan {
    /// The table's size after the last trim (or its smallest since).
    low: usize,
    first: Option<Instant>,
    at: Option<Instant>,
    /// The process-wide interval's end, where a trim was refused for it.
    not_before: Option<Instant>,
    /// The last park that counted toward this trim: a trim anywhere in the
    /// process after it does this one's work.
    grew: Option<Instant>,
}

const TRIM_GROWTH: usize = 256;
const TRIM_DELAY: Duration = Duration::from_secs(1);
const TRIM_DELAY_MAX: Duration = Duration::from_secs(5);
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

impl TrimPlan {
    /// The table has `len` entries at `now`: when to trim, if at all.
    fn parked(&mut self, len: usize, now: Instant) -> Option<Instant> {
        if len < self.low + TRIM_GROWTH {
            return self.at;
        }
        let first = *self.first.get_or_insert(now);
        self.grew = Some(now);
        let at = (now + TRIM_DELAY).min(first + TRIM_DELAY_MAX);
        self.at = Some(self.not_before.map_or(at, |n| at.max(n)));
        self.at
    }

    /// Refused until `when` by the process-wide interval.
    fn wait(&mut self, when: Instant) {
        self.not_before = Some(when);
        self.at = Some(when);
    }

    fn left(&mut self, len: usize) {
        self.low = self.low.min(len);
    }

    fn done(&mut self, len: usize) {
        *self = TrimPlan {
            low: len,
            ..TrimPlan::default()
        };
    }
}

enum Event {
    Ready(std::io::Result<Vec<u64>>),
    Due,
    Sooner,
    Trim,
    Drain,
}

impl KeepAlive {
    pub fn new(shard: Rc<ShardCtx>) -> std::io::Result<KeepAlive> {
        Ok(KeepAlive {
            shard,
            table: RefCell::new(Table::default()),
            ready: ReadySet::new()?,
            sooner: tokio::sync::Notify::new(),
            watch_failures: RefCell::new(super::Throttled::new()),
            wait_failures: RefCell::new(super::Throttled::new()),
            trim: RefCell::new(TrimPlan::default()),
        })
    }

    /// Takes over a quiet connection. While draining it is closed instead;
    /// where its socket cannot be watched, it is served on without parking.
    pub fn park(self: &Rc<Self>, idle: Idle, mut guard: SessionGuard) {
        let shard = &self.shard;
        let Idle { conn, wait } = idle;
        if shard.draining() {
            conn.shutdown();
            return guard.end();
        }
        // The table's handle must be the socket's last one.
        guard.unlist();
        let sock = match conn.park() {
            Ok(s) => s,
            Err((conn, e)) => return self.serve_unparked(conn, wait, guard, &e),
        };
        let fd = sock.raw_fd();
        let deadline = wait.deadline();
        let (token, sooner) = self
            .table
            .borrow_mut()
            .insert(Parked { sock, wait, guard }, deadline);
        if let Err(e) = self.ready.watch(fd, token) {
            let p = self.table.borrow_mut().take(token).expect("inserted above");
            return self.serve_unparked(p.sock.resume(), p.wait, p.guard, &e);
        }
        shard.stats().parked.fetch_add(1, Relaxed);
        let len = self.table.borrow().len();
        let before = self.trim.borrow().at;
        let trim = self.trim.borrow_mut().parked(len, Instant::now());
        if sooner || (trim.is_some() && before.is_none()) {
            self.sooner.notify_one();
        }
    }

    fn serve_unparked(
        self: &Rc<Self>,
        conn: Conn,
        wait: Waiting,
        mut guard: SessionGuard,
        e: &std::io::Error,
    ) {
        if let Some(held) = self.watch_failures.borrow_mut().due() {
            log::warn!(
                "shard {}: an idle connection cannot be parked ({e}; {held} more since the last report): it keeps its buffer (see fs.epoll.max_user_watches and the open-file limit)",
                self.shard.id
            );
        }
        guard.relist(conn.clone());
        self.spawn_resumed(conn, wait.unparkable(), guard);
    }

    /// Serves the table until the shard drains, then empties it.
    pub async fn run(self: Rc<Self>) {
        let shard = self.shard.clone();
        let mut drain = std::pin::pin!(shard.drain_started());
        loop {
            let next = self.table.borrow().next_deadline();
            let due = async {
                match next {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let trim_at = self.trim.borrow().at;
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
                }, if !crate::fault::on(crate::fault::Switch::ParkerDeaf) => Event::Ready(r),
                _ = due => Event::Due,
                _ = trim => Event::Trim,
                _ = self.sooner.notified() => Event::Sooner,
                _ = &mut drain => Event::Drain,
            };
            match event {
                Event::Ready(Ok(tokens)) => {
                    for t in tokens {
                        let p = self.table.borrow_mut().take(t);
                        if let Some(p) = p {
                            self.woke(p);
                        }
                    }
                }
                Event::Ready(Err(e)) => {
                    // Not expected of epoll_wait on our own fd; do not spin.
                    if let Some(held) = self.wait_failures.borrow_mut().due() {
                        log::error!(
                            "shard {}: keep-alive readiness wait failed: {e} ({held} more since the last report)",
                            shard.id
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Event::Due => {
                    let now = Instant::now();
                    loop {
                        let p = self.table.borrow_mut().pop_expired(now);
                        let Some(p) = p else { break };
                        self.close(p);
                    }
                }
                Event::Sooner => {}
                // Parks since the timer was set may have moved the trim on.
                Event::Trim if self.trim.borrow().at.is_some_and(|a| a > Instant::now()) => {}
                Event::Trim => {
                    // Read first: the arms update the plan.
                    let grew = self.trim.borrow().grew;
                    match trim_heap(shard.id, grew) {
                        Ok(()) => {
                            let len = self.table.borrow().len();
                            self.trim.borrow_mut().done(len);
                        }
                        // Another trim (this shard's or another's) was too
                        // recent: this one waits its turn, it is not dropped.
                        Err(wait) => self.trim.borrow_mut().wait(Instant::now() + wait),
                    }
                }
                Event::Drain => {
                    // Served (with `Connection: close`) where a request is
                    // waiting, closed otherwise.
                    let all = self.table.borrow_mut().take_all();
                    for p in all {
                        self.woke(p);
                    }
                    return;
                }
            }
        }
    }

    /// Closes everything parked (the table's task failed in a drain).
    pub fn close_all(&self) {
        let all = self.table.borrow_mut().take_all();
        for p in all {
            self.close_unwatched(self.unwatched(p));
        }
    }

    /// A connection taken from the table because its socket is readable (or
    /// the shard drains): served if its client sent bytes, closed if it
    /// closed or failed (or sent nothing, in a drain).
    fn woke(self: &Rc<Self>, p: Parked) {
        let p = self.unwatched(p);
        if !p.sock.has_data() {
            return self.close_unwatched(p);
        }
        let Parked {
            sock,
            wait,
            mut guard,
        } = p;
        let conn = sock.resume();
        guard.relist(conn.clone());
        self.spawn_resumed(conn, wait, guard);
    }

    /// A connection just taken from the table: no longer watched or counted.
    fn unwatched(&self, p: Parked) -> Parked {
        self.ready.unwatch(p.sock.raw_fd());
        self.shard.stats().parked.fetch_sub(1, Relaxed);
        let len = self.table.borrow().len();
        self.trim.borrow_mut().left(len);
        p
    }

    /// Its idle timeout: its FIN, then its fd.
    fn close(&self, p: Parked) {
        let p = self.unwatched(p);
        self.close_unwatched(p);
    }

    fn close_unwatched(&self, p: Parked) {
        let Parked { sock, guard, .. } = p;
        sock.close();
        guard.end();
    }

    /// A new task for a connection with bytes to read; parked again if it
    /// goes quiet again.
    fn spawn_resumed(self: &Rc<Self>, conn: Conn, wait: Waiting, guard: SessionGuard) {
        let ka = self.clone();
        tokio_uring::spawn(async move {
            let s = ka.shard.clone();
            match Box::pin(http1::resume(s, conn, wait)).await {
                Some(idle) => ka.park(idle, guard),
                None => guard.end(),
            }
        });
    }
}

/// Whatever is still parked when the shard's runtime goes (a panic's
/// unwind) is closed by its fds' drops; the gauge forgets it here.
impl Drop for KeepAlive {
    fn drop(&mut self) {
        let n = self.table.get_mut().len() as u64;
        self.shard.stats().parked.fetch_sub(n, Relaxed);
    }
}

/// What the process-wide trim interval says (times in ms on one clock, 0:
/// never).
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// A trim after the growth did the work.
    Done,
    /// Too soon after the last trim: wait this long.
    Wait(u64),
    Go,
}

fn gate(last_ms: u64, now_ms: u64, grew_ms: u64, interval_ms: u64) -> Gate {
    // Strictly after: within one ms the trim may have come before the park.
    if last_ms != 0 && last_ms > grew_ms {
        return Gate::Done;
    }
    if now_ms < last_ms + interval_ms {
        return Gate::Wait(last_ms + interval_ms - now_ms);
    }
    Gate::Go
}

/// Gives the heap's free pages back to the kernel (glibc; other C libraries
/// have their own policy, and nothing is done). Process-wide, at most once
/// per [`TRIM_INTERVAL`]: sooner, it says how long to wait, unless a trim
/// since `grew` (another shard's) has done the work already.
fn trim_heap(shard: usize, grew: Option<Instant>) -> Result<(), Duration> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::AtomicU64;
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        static LAST_MS: AtomicU64 = AtomicU64::new(0);
        let start = *START.get_or_init(std::time::Instant::now);
        let interval = TRIM_INTERVAL.as_millis() as u64;
        // Offset by one interval, so that the first trim may come at once.
        let now_ms = start.elapsed().as_millis() as u64 + interval;
        let last = LAST_MS.load(Relaxed);
        let grew_ms = grew.map_or(0, |g| {
            let g = g.into_std().saturating_duration_since(start);
            g.as_millis() as u64 + interval
        });
        match gate(last, now_ms, grew_ms, interval) {
            Gate::Done => return Ok(()),
            Gate::Wait(ms) => return Err(Duration::from_millis(ms)),
            Gate::Go => {}
        }
        if LAST_MS
            .compare_exchange(last, now_ms, Relaxed, Relaxed)
            .is_err()
        {
            // Another shard trims now.
            return Err(TRIM_INTERVAL);
        }
        let t = std::time::Instant::now();
        // SAFETY: malloc_trim takes no pointers and is thread-safe: it locks
        // each arena in turn (other threads' mallocs on that arena wait,
        // which the interval above bounds); 0 keeps no pad at the top.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        log::debug!(
            "shard {shard}: heap trimmed after parking connections ({} µs, memory released: {})",
            t.elapsed().as_micros(),
            released == 1
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (shard, grew);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(t.free.len() <= 2 * t.slots.len() + 65, "{}", t.free.len());
        assert_eq!(t.take(keep), Some(0));
    }

    #[test]
    fn the_tail_is_given_back_and_free_slots_fill_lowest_first() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let tokens: Vec<u64> = (0..1000).map(|i| t.insert(i, t0).0).collect();
        for &tok in &tokens[10..] {
            t.take(tok).unwrap();
        }
        assert_eq!(t.slots.len(), 10, "empty tail slots go");
        assert!(t.slots.capacity() < 100, "{}", t.slots.capacity());
        t.take(tokens[3]).unwrap();
        let (tok, _) = t.insert(99, t0);
        assert_eq!(tok & 0xffff_ffff, 3, "the lowest free slot");
        assert_eq!(t.take(tokens[3]), None, "the slot's old token");
        assert_eq!(t.take(tok), Some(99));
    }

    #[test]
    fn a_stale_deadline_never_takes_a_later_entry_of_its_slot() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Table::default();
        let (a, _) = t.insert("early", t0 + s(1));
        t.take(a).unwrap();
        // Same slot, later deadline: the stale (1 s) heap entry is skipped.
        let (b, _) = t.insert("late", t0 + s(60));
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff);
        assert_eq!(t.pop_expired(t0 + s(2)), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn trims_follow_net_growth_not_churn() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let g = TRIM_GROWTH;
        let mut p = TrimPlan::default();
        // (table size, ms since t0, trim due then, in ms since t0)
        let growth: [(usize, u64, Option<u64>); 5] = [
            (g - 1, 0, None),
            (g, 100, Some(1100)),
            (g + 10, 900, Some(1900)),
            // A burst longer than the cap: no later than 5 s after its first.
            (g + 20, 4500, Some(5100)),
            (g + 30, 4800, Some(5100)),
        ];
        for (len, at, want) in growth {
            let got = p.parked(len, t0 + ms(at));
            assert_eq!(got, want.map(|w| t0 + ms(w)), "size {len} at {at} ms");
        }
        p.done(g + 30);
        // Clients that wake and park again: the size dips and returns.
        for _ in 0..1000 {
            p.left(g + 29);
            assert_eq!(p.parked(g + 30, t0 + ms(6000)), None);
        }
        assert!(p.parked(2 * g + 29, t0 + ms(7000)).is_some(), "grown again");
    }

    #[test]
    fn the_trim_gate() {
        let i = 10_000;
        // (last trim, now, last growth) → gate; times in ms, 0: never.
        let table = [
            ((0, i, i), Gate::Go),                            // the first trim, at once
            ((i + 500, i + 2000, i + 400), Gate::Done), // another shard trimmed after our growth
            ((i + 500, i + 2000, i + 500), Gate::Wait(8500)), // same ms: not known to be after
            ((i + 500, i + 2000, i + 900), Gate::Wait(8500)), // growth after the last trim
            ((i + 500, 2 * i + 500, i + 900), Gate::Go), // the interval has passed
        ];
        for ((last, now, grew), want) in table {
            assert_eq!(
                gate(last, now, grew, i),
                want,
                "last {last} now {now} grew {grew}"
            );
        }
    }

    #[test]
    fn a_refused_trim_waits_for_the_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let g = TRIM_GROWTH;
        let mut p = TrimPlan::default();
        assert_eq!(p.parked(g, t0), Some(t0 + ms(1000)));
        p.wait(t0 + ms(9000));
        // More parks do not bring it back before the interval ends.
        assert_eq!(p.parked(g + 1, t0 + ms(2000)), Some(t0 + ms(9000)));
        assert_eq!(p.at, Some(t0 + ms(9000)));
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
