//! `<Host><Manager>` (PRG-5): the management listener's address and its access
//! list. Pure: parsing and matching, tested with tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What an address may do on the management port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `/monitoring/realtime`, `/monitoring/average`, `/metrics`.
    Looker,
    /// A Looker's rights and `/monitoring/fileinfo`.
    User,
    /// Everything: purges, `/conf/reload`, `/command/encryptpassword`.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "looker" => Some(Role::Looker),
            _ => None,
        }
    }
}

/// One `<Allow>`: an address, a range, a CIDR block or a netmask block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow {
    /// Inclusive bounds, both of one family.
    first: IpAddr,
    last: IpAddr,
    pub role: Role,
}

impl Allow {
    /// `192.168.1.1`, `192.168.2.1-255` (STON: the last octet), `10.0.0.1-10.0.3.9`,
    /// `192.168.3.0/24`, `192.168.4.0/255.255.255.0`, `::1`, `fd00::/8`.
    pub fn parse(text: &str, role: Role) -> Result<Allow, String> {
        let t = text.trim();
        let bad = || format!("'{t}' is not an address, range, CIDR block or netmask block");
        let (first, last) = if let Some((a, b)) = t.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let b = b.trim();
            let b: IpAddr = match (a, b.parse::<u8>()) {
                (IpAddr::V4(v4), Ok(octet)) => {
                    let o = v4.octets();
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], octet))
                }
                _ => b.parse().map_err(|_| bad())?,
            };
            (a, b)
        } else if let Some((a, m)) = t.split_once('/') {
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let m = m.trim();
            let bits = match (a, m.parse::<u8>(), m.parse::<Ipv4Addr>()) {
                (_, Ok(b), _) => b,
                (IpAddr::V4(_), _, Ok(mask)) => {
                    let m = u32::from(mask);
                    if m.leading_ones() + m.trailing_zeros() != 32 {
                        return Err(format!("'{t}': the netmask is not contiguous"));
                    }
                    m.leading_ones() as u8
                }
                _ => return Err(bad()),
            };
            match a {
                IpAddr::V4(v) if bits <= 32 => {
                    let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
                    let lo = u32::from(v) & mask;
                    (IpAddr::V4(lo.into()), IpAddr::V4((lo | !mask).into()))
                }
                IpAddr::V6(v) if bits <= 128 => {
                    let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
                    let lo = u128::from(v) & mask;
                    (
                        IpAddr::V6(Ipv6Addr::from(lo)),
                        IpAddr::V6(Ipv6Addr::from(lo | !mask)),
                    )
                }
                _ => return Err(format!("'{t}': a prefix longer than the address")),
            }
        } else {
            // `::ffff:a.b.c.d` is the IPv4 address (clients are canonicalised too).
            let a: IpAddr = t.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
            (a, a)
        };
        if first.is_ipv4() != last.is_ipv4() || first > last {
            return Err(format!("'{t}': the range is empty or mixes families"));
        }
        Ok(Allow { first, last, role })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.first.is_ipv4() && self.first <= ip && ip <= self.last
    }
}

/// The management listener and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerSettings {
    pub listen: SocketAddr,
    /// `HttpMethod`: `PURGE`, `EXPIRE` and `HARDPURGE` on the service ports,
    /// for Admin addresses of the list (PRG-4).
    pub http_method: bool,
    pub allow: Vec<Allow>,
}

impl ManagerSettings {
    /// The best role any entry gives `ip`; `None`: not allowed at all.
    pub fn role_of(&self, ip: IpAddr) -> Option<Role> {
        self.allow
            .iter()
            .filter(|a| a.contains(ip))
            .map(|a| a.role)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_forms_and_matching() {
        // (entry, address, inside?)
        let table: &[(&str, &str, bool)] = &[
            ("192.168.1.1", "192.168.1.1", true),
            ("192.168.1.1", "192.168.1.2", false),
            ("192.168.2.1-255", "192.168.2.200", true),
            ("192.168.2.10-20", "192.168.2.9", false),
            ("192.168.2.10-20", "192.168.3.15", false),
            ("10.0.0.1-10.0.3.9", "10.0.2.255", true),
            ("10.0.0.1-10.0.3.9", "10.0.3.10", false),
            ("192.168.3.0/24", "192.168.3.77", true),
            ("192.168.3.0/24", "192.168.4.1", false),
            ("192.168.3.99/24", "192.168.3.1", true),
            ("192.168.4.0/255.255.255.0", "192.168.4.9", true),
            ("192.168.4.0/255.255.0.0", "192.168.9.9", true),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("::1", "::1", true),
            ("::1", "127.0.0.1", false),
            ("::ffff:10.1.2.3", "10.1.2.3", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
        ];
        for &(entry, ip, want) in table {
            let a = Allow::parse(entry, Role::Admin).unwrap();
            assert_eq!(a.contains(ip.parse().unwrap()), want, "{entry} vs {ip}");
        }
        for bad in [
            "",
            "host.example",
            "1.2.3.4/33",
            "1.2.3.4/255.0.255.0",
            "1.2.3.9-1.2.3.1",
            "1.2.3.4-::1",
            "1.2.3.4-300",
            "::1/129",
        ] {
            assert!(Allow::parse(bad, Role::Admin).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_best_role_wins_and_others_get_none() {
        let m = ManagerSettings {
            listen: "127.0.0.1:10040".parse().unwrap(),
            http_method: true,
            allow: vec![
                Allow::parse("10.0.0.0/8", Role::Looker).unwrap(),
                Allow::parse("10.1.0.0/16", Role::User).unwrap(),
                Allow::parse("10.1.2.3", Role::Admin).unwrap(),
            ],
        };
        let role = |ip: &str| m.role_of(ip.parse().unwrap());
        assert_eq!(role("10.9.9.9"), Some(Role::Looker));
        assert_eq!(role("10.1.9.9"), Some(Role::User));
        assert_eq!(role("10.1.2.3"), Some(Role::Admin));
        assert_eq!(role("11.0.0.1"), None);
    }
}
