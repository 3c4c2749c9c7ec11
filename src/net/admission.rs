//! Connection admission: a global cap on open client connections (STON's
//! `<Cache><MaxSockets Reopen>`) and an optional cap per client address. Both are
//! checked once per accept and released once per close; requests never touch them.
//!
//! Past the global cap accepting pauses (new connections are closed at once, as
//! STON does) until the count falls to `Reopen` percent of the cap, so a server at
//! its limit does not flap on every close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

/// Stripes of the per-address table: a close on one shard and an accept on another
/// rarely meet on one lock.
const STRIPES: usize = 64;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MaxSockets` reached (or not yet fallen back to `Reopen`).
    Global,
    /// This client address already holds its share.
    PerAddress,
}

type Table = HashMap<IpAddr, u32, ahash::RandomState>;

#[derive(Debug)]
pub struct Admission {
    max: AtomicUsize,
    reopen: AtomicUsize,
    per_ip: AtomicUsize,
    open: AtomicUsize,
    paused: AtomicBool,
    by_ip: Box<[Mutex<Table>]>,
    hasher: ahash::RandomState,
}

/// Held for a connection's life; releases its place when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Admission {
    /// `max` 0 means no global cap; `per_ip` 0 means no per-address cap.
    pub fn new(max: usize, reopen_pct: u8, per_ip: usize) -> Admission {
        let a = Admission {
            max: AtomicUsize::new(0),
            reopen: AtomicUsize::new(0),
            per_ip: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            by_ip: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: ahash::RandomState::new(),
        };
        a.configure(max, reopen_pct, per_ip);
        a
    }

    /// New caps (a reload). Connections already open stay open.
    pub fn configure(&self, max: usize, reopen_pct: u8, per_ip: usize) {
        self.max.store(max, Relaxed);
        self.reopen.store(
            max.saturating_mul(usize::from(reopen_pct.min(100))) / 100,
            Relaxed,
        );
        self.per_ip.store(per_ip, Relaxed);
        if max == 0 {
            self.paused.store(false, Relaxed);
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    fn stripe(&self, ip: &IpAddr) -> &Mutex<Table> {
        &self.by_ip[self.hasher.hash_one(ip) as usize % STRIPES]
    }

    /// Admits a connection from `ip`, or says why not. The global check comes
    /// first and counts only admitted connections, so refusals cannot trip the
    /// pause; concurrent accepts on several shards may pass the cap by a few.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let max = self.max.load(Relaxed);
        if max != 0 {
            let next = self.open.load(Relaxed) + 1;
            let refuse = if next > max {
                self.paused.store(true, Relaxed);
                true
            } else if self.paused.load(Relaxed) {
                // Resume only once the count has fallen back to Reopen.
                let resume = next <= self.reopen.load(Relaxed).max(1);
                if resume {
                    self.paused.store(false, Relaxed);
                }
                !resume
            } else {
                false
            };
            if refuse {
                return Err(Refusal::Global);
            }
        }
        let per_ip = self.per_ip.load(Relaxed);
        let ip = if per_ip != 0 {
            let who = client_of(ip);
            let mut t = self.stripe(&who).lock().unwrap_or_else(|p| p.into_inner());
            let n = t.entry(who).or_insert(0);
            if *n as usize >= per_ip {
                return Err(Refusal::PerAddress);
            }
            *n += 1;
            Some(who)
        } else {
            None
        };
        self.open.fetch_add(1, Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }
}

/// Who a per-address cap counts: an IPv4 address (also when it arrives
/// IPv4-mapped), or an IPv6 /64, which one host can fill with addresses.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.admission;
        a.open.fetch_sub(1, Relaxed);
        if let Some(ip) = self.ip {
            let mut t = a.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = t.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_cap_pauses_until_reopen() {
        let a = Arc::new(Admission::new(4, 50, 0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held: Vec<Ticket> = (0..4).map(|_| a.admit(ip).unwrap()).collect();
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::Global);
        assert_eq!(a.open(), 4);
        held.pop(); // 3 open: above Reopen (2), still paused
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::Global);
        held.pop(); // 2 open
        held.pop(); // 1 open: the next makes 2 = Reopen, resumes
        let t = a.admit(ip).unwrap();
        assert_eq!(a.open(), 2);
        drop((t, held));
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn per_address_cap_counts_each_address_and_forgets_closed_ones() {
        let a = Arc::new(Admission::new(0, 75, 2));
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::PerAddress);
        let _y1 = a.admit(y).unwrap();
        assert_eq!(a.open(), 3, "a refused connection holds no place");
        drop(x1);
        let _x3 = a.admit(x).unwrap();
        drop((_x2, _x3, _y1));
        assert!(a.by_ip.iter().all(|s| s.lock().unwrap().is_empty()));
        // One IPv6 /64 is one client; an IPv4-mapped address is the IPv4 one.
        let (v6a, v6b): (IpAddr, IpAddr) = (
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8:1:2:ffff::9".parse().unwrap(),
        );
        let _k = (a.admit(v6a).unwrap(), a.admit(v6b).unwrap());
        assert_eq!(
            a.admit("2001:db8:1:2::77".parse().unwrap()).unwrap_err(),
            Refusal::PerAddress
        );
        assert!(
            a.admit("2001:db8:1:3::1".parse().unwrap()).is_ok(),
            "another /64"
        );
        let _m = (a.admit(x).unwrap(), a.admit(x).unwrap());
        assert_eq!(
            a.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap_err(),
            Refusal::PerAddress
        );
        drop((_k, _m));
        // Reconfigured to no caps: anything goes.
        a.configure(0, 75, 0);
        let many: Vec<_> = (0..100).map(|_| a.admit(x).unwrap()).collect();
        assert_eq!(a.open(), 100);
        drop(many);
    }
}
