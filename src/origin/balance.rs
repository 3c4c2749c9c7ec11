//! Which origin address a request goes to, and which it tries next (ORG-1,
//! ORG-2, ORG-4). Balancing state is per vhost (a cursor shared by every vhost
//! would hand a two-origin vhost the same address whenever requests alternate
//! between vhosts) and per shard, so it needs no lock; exclusion state is the
//! addresses' own ([`crate::health`]), shared by all shards.

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

/// How to order the candidates.
#[derive(Debug, Clone, Copy)]
pub enum Spread {
    /// Round-robin: start at this cursor.
    Cursor(usize),
    /// Rendezvous hashing on this value (Hash: the URL; Session: the client
    /// connection): removing one of N addresses moves only its 1/N.
    Rendezvous(u64),
}

/// 64-bit finaliser (splitmix64): spreads `key ^ id` over the whole range.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The addresses to try, best first: the usable active ones; failing those
/// the usable standby ones (`<Address2>`, ORG-1); and when every address is
/// excluded, all of them (serving through an excluded address beats
/// refusing). An affinity `route` that names a usable candidate goes first.
/// Pure, so it is tested with a table.
pub fn order<'v>(
    active: &'v [OriginAddr],
    standby: &'v [OriginAddr],
    spread: Spread,
    route: Option<&str>,
) -> Vec<&'v OriginAddr> {
    let usable = |l: &'v [OriginAddr]| -> Vec<&'v OriginAddr> {
        l.iter().filter(|o| o.health.usable()).collect()
    };
    let mut out = usable(active);
    let mut rest = usable(standby);
    if out.is_empty() {
        out = std::mem::take(&mut rest);
    }
    if out.is_empty() {
        out = active.iter().chain(standby).collect();
    }
    let arrange = |v: &mut Vec<&'v OriginAddr>| match spread {
        Spread::Cursor(c) => {
            let n = v.len().max(1);
            v.rotate_left(c % n);
        }
        Spread::Rendezvous(k) => v.sort_by_key(|o| std::cmp::Reverse(mix(k ^ o.id))),
    };
    arrange(&mut out);
    // A route picks among the first group only: a cookie must not reach a
    // standby address while an active one is in service.
    if let Some(r) = route {
        if let Some(i) = out.iter().position(|o| o.route.as_deref() == Some(r)) {
            let o = out.remove(i);
            out.insert(0, o);
        }
    }
    // Retries after the active ones: a standby address is still better than
    // an error when every active address failed this request.
    arrange(&mut rest);
    out.extend(rest);
    out
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
        &addrs[self.cursor(vhost, addrs.len())]
    }

    /// Advances `vhost`'s round-robin cursor over `n` candidates (`usize::MAX`:
    /// the raw cursor, for [`order`] to rotate by).
    pub fn cursor(&self, vhost: &str, n: usize) -> usize {
        let mut map = self.by_vhost.borrow_mut();
        match map.get_mut(vhost) {
            Some(rr) => rr.pick(n),
            None => {
                let mut rr = RoundRobin::starting_at(self.offset);
                let i = rr.pick(n);
                map.insert(vhost.into(), rr);
                i
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize, base: u8) -> Vec<OriginAddr> {
        (0..n)
            .map(|i| {
                let text = format!("10.9.{base}.{}:80", i + 1);
                OriginAddr::parse(&text, "t", crate::config::OriginProtocol::Http).unwrap()
            })
            .collect()
    }

    fn exclude(o: &OriginAddr) {
        o.health.record(crate::health::Event::Failure, None, 1, 1);
    }

    fn last_octets(v: &[&OriginAddr]) -> Vec<u8> {
        v.iter()
            .map(|o| match o.addr.ip() {
                std::net::IpAddr::V4(ip) => ip.octets()[2] * 10 + ip.octets()[3],
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn order_prefers_active_then_standby_then_anything() {
        let active = addrs(3, 1);
        let standby = addrs(2, 2);
        let rr = |c| last_octets(&order(&active, &standby, Spread::Cursor(c), None));
        // Active first, rotated by the cursor; standby after, for retries.
        assert_eq!(rr(0), [11, 12, 13, 21, 22]);
        assert_eq!(rr(4), [12, 13, 11, 21, 22]);
        exclude(&active[1]);
        assert_eq!(rr(0), [11, 13, 21, 22]);
        exclude(&active[0]);
        exclude(&active[2]);
        // Every active address excluded: the standby ones serve.
        assert_eq!(rr(0), [21, 22]);
        assert_eq!(rr(1), [22, 21]);
        exclude(&standby[0]);
        exclude(&standby[1]);
        // Everything excluded: all of them, rather than an error.
        assert_eq!(rr(0).len(), 5);
    }

    #[test]
    fn a_route_goes_first_while_it_is_usable() {
        let mut active = addrs(3, 3);
        active[2].route = Some("tomcat3".into());
        let first =
            |a: &[OriginAddr]| last_octets(&order(a, &[], Spread::Cursor(0), Some("tomcat3")))[0];
        assert_eq!(first(&active), 33);
        exclude(&active[2]);
        assert_eq!(first(&active), 31);
        // A route naming a standby address does not reach it while an active
        // address is in service.
        let mut standby = addrs(1, 5);
        standby[0].route = Some("spare".into());
        let active = addrs(2, 6);
        let got = order(&active, &standby, Spread::Cursor(0), Some("spare"));
        assert_eq!(last_octets(&got), [61, 62, 51]);
    }

    #[test]
    fn rendezvous_moves_only_the_removed_addresses_share() {
        let all = addrs(3, 4);
        let top = |a: &[OriginAddr], k: u64| order(a, &[], Spread::Rendezvous(k), None)[0].addr;
        let keys: Vec<u64> = (0..3000u32)
            .map(|i| crate::config::stable_hash(&[format!("/u/{i}").as_bytes()]))
            .collect();
        let before: Vec<_> = keys.iter().map(|&k| top(&all, k)).collect();
        // The same key, the same address, every time.
        assert!(keys.iter().zip(&before).all(|(&k, a)| top(&all, k) == *a));
        let two = &all[..2];
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(&k, a)| top(two, k) != **a)
            .count();
        // Only the URLs of the removed address move: about a third.
        let third = before.iter().filter(|a| **a == all[2].addr).count();
        assert_eq!(moved, third);
        assert!((750..=1260).contains(&moved), "{moved} of 3000 moved");
    }

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
