//! One origin address's health (ORG-3): consecutive failures exclude it,
//! consecutive good probes restore it. The state is one fact for the whole
//! process, so every shard reads and writes the same atomics; the rules are a
//! pure [`step`] function, applied with a compare-and-swap.
//!
//! A leaf module: configuration holds an [`AddrHealth`] per address and the
//! registry keeps it across a reload, so an address excluded before a reload
//! stays excluded after it.

use ahash::AHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// What the counters mean at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub excluded: bool,
    /// Consecutive failures while in service.
    pub fails: u32,
    /// Consecutive good probes while excluded.
    pub goods: u32,
}

const EXCLUDED: u64 = 1 << 63;
const COUNT: u64 = (1 << 31) - 1;

impl State {
    fn pack(self) -> u64 {
        (u64::from(self.excluded) << 63)
            | ((u64::from(self.goods) & COUNT) << 32)
            | (u64::from(self.fails) & COUNT)
    }

    fn unpack(v: u64) -> State {
        State {
            excluded: v & EXCLUDED != 0,
            goods: ((v >> 32) & COUNT) as u32,
            fails: (v & COUNT) as u32,
        }
    }
}

/// Something learnt about the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request failed before any response (connect, send, head).
    Failure,
    /// A request got a response head.
    Success,
    /// A health or recovery probe failed or got the wrong status.
    ProbeFailure,
    ProbeSuccess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Excluded,
    Recovered,
}

/// The rules. `exclusion`: consecutive failures that exclude (0: never);
/// `recovery`: consecutive good probes that restore (0: never by probe).
/// Traffic does not restore an excluded address: only probes do, as STON
/// does, so one lucky request cannot flap it back.
pub fn step(s: State, e: Event, exclusion: u32, recovery: u32) -> (State, Option<Transition>) {
    let count = |n: u32| n.saturating_add(1).min(COUNT as u32);
    match (s.excluded, e) {
        (false, Event::Failure | Event::ProbeFailure) => {
            let fails = count(s.fails);
            if exclusion > 0 && fails >= exclusion {
                (
                    State {
                        excluded: true,
                        fails,
                        goods: 0,
                    },
                    Some(Transition::Excluded),
                )
            } else {
                (State { fails, ..s }, None)
            }
        }
        (false, Event::Success | Event::ProbeSuccess) => (State { fails: 0, ..s }, None),
        (true, Event::ProbeSuccess) => {
            let goods = count(s.goods);
            if recovery > 0 && goods >= recovery {
                (State::default(), Some(Transition::Recovered))
            } else {
                (State { goods, ..s }, None)
            }
        }
        (true, Event::ProbeFailure) => (State { goods: 0, ..s }, None),
        (true, Event::Failure | Event::Success) => (s, None),
    }
}

/// The shared health of one (vhost, address).
#[derive(Debug, Default)]
pub struct AddrHealth {
    state: AtomicU64,
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub exclusions: AtomicU64,
    /// Taken only on a failure; read by the monitoring page.
    last_error: Mutex<Option<String>>,
    /// The exclusion count when a session-route failover was last logged.
    failover_noted: AtomicU64,
}

impl AddrHealth {
    pub fn state(&self) -> State {
        State::unpack(self.state.load(Relaxed))
    }

    /// In service (not excluded): a balancer's first choice.
    pub fn usable(&self) -> bool {
        self.state.load(Relaxed) & EXCLUDED == 0
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies `e`; returns the transition it caused, if any (the caller logs
    /// it: it knows the names). Only one caller ever sees a given transition.
    pub fn record(
        &self,
        e: Event,
        error: Option<&dyn std::fmt::Display>,
        exclusion: u32,
        recovery: u32,
    ) -> Option<Transition> {
        if let Some(err) = error {
            if e == Event::Failure {
                self.failures.fetch_add(1, Relaxed);
            }
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
        }
        let mut cur = self.state.load(Relaxed);
        loop {
            let (next, t) = step(State::unpack(cur), e, exclusion, recovery);
            let packed = next.pack();
            if packed == cur {
                // The hot path's common case (a success in service): no write.
                return None;
            }
            match self
                .state
                .compare_exchange_weak(cur, packed, Relaxed, Relaxed)
            {
                Ok(_) => {
                    if t == Some(Transition::Excluded) {
                        self.exclusions.fetch_add(1, Relaxed);
                    }
                    return t;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// True once per exclusion: whether to log that a session route had to
    /// fail over from this address.
    pub fn note_failover(&self) -> bool {
        let n = self.exclusions.load(Relaxed);
        self.failover_noted.swap(n, Relaxed) != n
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an address.
#[derive(Debug)]
pub struct InFlight(Arc<AddrHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

type Registry = Mutex<AHashMap<(Box<str>, Box<str>, SocketAddr), Weak<AddrHealth>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// The health of `addr` as `text` in `vhost`: the same one a previous
/// configuration had, while anything still holds it. Called at load only.
pub fn shared(vhost: &str, text: &str, addr: SocketAddr) -> Arc<AddrHealth> {
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    let key = (Box::from(vhost), Box::from(text), addr);
    if let Some(h) = map.get(&key).and_then(Weak::upgrade) {
        return h;
    }
    // Forget the addresses no configuration holds any more.
    map.retain(|_, w| w.strong_count() > 0);
    let h = Arc::new(AddrHealth::default());
    map.insert(key, Arc::downgrade(&h));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;

    #[test]
    fn exclusion_and_recovery_rules() {
        // (events, exclusion, recovery, final state, transitions seen)
        type Row<'a> = (&'a [Event], u32, u32, (bool, u32, u32), &'a [Transition]);
        let table: &[Row] = &[
            (&[Failure, Failure], 3, 5, (false, 2, 0), &[]),
            (
                &[Failure, Failure, Success, Failure],
                3,
                5,
                (false, 1, 0),
                &[],
            ),
            (
                &[Failure, Failure, Failure],
                3,
                5,
                (true, 3, 0),
                &[Transition::Excluded],
            ),
            // Traffic neither restores nor counts while excluded.
            (
                &[Failure, Success, Failure],
                1,
                5,
                (true, 1, 0),
                &[Transition::Excluded],
            ),
            (
                &[Failure, ProbeSuccess, ProbeSuccess],
                1,
                2,
                (false, 0, 0),
                &[Transition::Excluded, Transition::Recovered],
            ),
            // A bad probe restarts the count of good ones.
            (
                &[Failure, ProbeSuccess, ProbeFailure, ProbeSuccess],
                1,
                2,
                (true, 1, 1),
                &[Transition::Excluded],
            ),
            // Exclusion 0: never excluded.
            (
                &[Failure, Failure, Failure, Failure],
                0,
                5,
                (false, 4, 0),
                &[],
            ),
            // Recovery 0: probes never restore.
            (
                &[Failure, ProbeSuccess, ProbeSuccess],
                1,
                0,
                (true, 1, 2),
                &[Transition::Excluded],
            ),
            // Health checks exclude too.
            (
                &[ProbeFailure, ProbeFailure],
                2,
                1,
                (true, 2, 0),
                &[Transition::Excluded],
            ),
        ];
        for (events, exc, rec, want, want_t) in table {
            let h = AddrHealth::default();
            let mut seen = Vec::new();
            for &e in events.iter() {
                seen.extend(h.record(e, None, *exc, *rec));
            }
            let s = h.state();
            assert_eq!((s.excluded, s.fails, s.goods), *want, "{events:?}");
            assert_eq!(&seen, want_t, "{events:?}");
            assert_eq!(h.usable(), !s.excluded);
        }
    }

    #[test]
    fn packing_round_trips_and_saturates() {
        for s in [
            State::default(),
            State {
                excluded: true,
                fails: 7,
                goods: 3,
            },
            State {
                excluded: false,
                fails: COUNT as u32,
                goods: COUNT as u32,
            },
        ] {
            assert_eq!(State::unpack(s.pack()), s);
        }
        let s = State {
            excluded: false,
            fails: COUNT as u32,
            goods: 0,
        };
        assert_eq!(step(s, Failure, 0, 0).0.fails, COUNT as u32);
    }

    #[test]
    fn the_registry_keeps_state_across_configurations() {
        let a: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let h1 = shared("v", "192.0.2.1", a);
        h1.record(Failure, None, 1, 1);
        let h2 = shared("v", "192.0.2.1", a);
        assert!(Arc::ptr_eq(&h1, &h2) && !h2.usable());
        assert!(!Arc::ptr_eq(&h1, &shared("w", "192.0.2.1", a)));
    }
}
