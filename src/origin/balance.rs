//! Which origin address a request goes to. Balancing state is per vhost (a cursor
//! shared by every vhost would hand a two-origin vhost the same address whenever
//! requests alternate between vhosts) and per shard, so it needs no lock.

use crate::config::OriginAddr;
use ahash::AHashMap;
use std::cell::RefCell;

/// Round-robin over one vhost's addresses: pure, so it is tested with a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Starts at `offset` so that shards do not all begin on address 0.
    pub fn starting_at(offset: usize) -> RoundRobin {
        RoundRobin { next: offset }
    }

    /// The index of the address to use out of `n` (`n > 0`), advancing the cursor.
    pub fn pick(&mut self, n: usize) -> usize {
        let i = self.next % n.max(1);
        self.next = self.next.wrapping_add(1);
        i
    }
}

/// A shard's balancers, one per vhost name (names survive a reload; indices do not).
#[derive(Debug, Default)]
pub struct Balancers {
    by_vhost: RefCell<AHashMap<Box<str>, RoundRobin>>,
    offset: usize,
}

impl Balancers {
    pub fn new(offset: usize) -> Balancers {
        Balancers {
            by_vhost: RefCell::default(),
            offset,
        }
    }

    /// The address for the next request of `vhost`. `addrs` must not be empty
    /// (the configuration loader refuses a vhost without an origin).
    pub fn pick<'v>(&self, vhost: &str, addrs: &'v [OriginAddr]) -> &'v OriginAddr {
        let mut map = self.by_vhost.borrow_mut();
        let i = match map.get_mut(vhost) {
            Some(rr) => rr.pick(addrs.len()),
            None => {
                let mut rr = RoundRobin::starting_at(self.offset);
                let i = rr.pick(addrs.len());
                map.insert(vhost.into(), rr);
                i
            }
        };
        &addrs[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_from_its_offset() {
        // (offset, n, the first picks)
        let table: &[(usize, usize, &[usize])] = &[
            (0, 1, &[0, 0, 0]),
            (0, 2, &[0, 1, 0, 1]),
            (1, 2, &[1, 0, 1, 0]),
            (5, 3, &[2, 0, 1, 2]),
        ];
        for &(offset, n, want) in table {
            let mut rr = RoundRobin::starting_at(offset);
            let got: Vec<usize> = want.iter().map(|_| rr.pick(n)).collect();
            assert_eq!(got, want, "offset {offset}, n {n}");
        }
    }

    #[test]
    fn each_vhost_has_its_own_cursor() {
        let a = [
            OriginAddr::parse("10.0.0.1:80", "a", crate::config::OriginProtocol::Http).unwrap(),
            OriginAddr::parse("10.0.0.2:80", "a", crate::config::OriginProtocol::Http).unwrap(),
        ];
        let b = [
            OriginAddr::parse("10.0.1.1:80", "b", crate::config::OriginProtocol::Http).unwrap(),
            OriginAddr::parse("10.0.1.2:80", "b", crate::config::OriginProtocol::Http).unwrap(),
        ];
        let bal = Balancers::new(0);
        let mut seen = Vec::new();
        // Alternating vhosts: with one shared cursor each vhost would always get
        // its first address.
        for _ in 0..4 {
            seen.push(bal.pick("a", &a).addr);
            seen.push(bal.pick("b", &b).addr);
        }
        let count = |x: std::net::SocketAddr| seen.iter().filter(|&&s| s == x).count();
        for o in a.iter().chain(b.iter()) {
            assert_eq!(count(o.addr), 2, "{}", o.addr);
        }
    }
}
