//! Address arithmetic for both families on a single u128 representation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// A network prefix, e.g. 10.244.0.0/24. The address is kept as written (an
/// interface address "10.0.0.5/24" is a valid `Cidr`); [`Cidr::network`]
/// masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn bits(&self) -> u8 {
        if self.addr.is_ipv6() {
            128
        } else {
            32
        }
    }

    fn host_mask(&self) -> u128 {
        let host_bits = (self.bits() - self.prefix) as u32;
        if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    pub fn network(&self) -> IpAddr {
        from_u128(to_u128(self.addr) & !self.host_mask(), self.addr.is_ipv6())
    }

    /// The last address (the IPv4 broadcast address).
    pub fn last(&self) -> IpAddr {
        from_u128(to_u128(self.network()) | self.host_mask(), self.addr.is_ipv6())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.addr.is_ipv6() && (to_u128(ip) & !self.host_mask()) == to_u128(self.network())
    }

    pub fn is_network(&self) -> bool {
        self.addr == self.network()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not in CIDR notation (address/prefix)"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{p:?} is not a prefix length"))?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        if prefix > max {
            return Err(format!("prefix length {prefix} is larger than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let c: Cidr = "10.1.2.77/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.1.2.0");
        assert_eq!(c.last().to_string(), "10.1.2.255");
        assert!(c.contains("10.1.2.1".parse().unwrap()));
        assert!(!c.contains("10.1.3.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert_eq!(v6.last().to_string(), "fd00::ffff:ffff:ffff:ffff");
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("fd00::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("banana/8".parse::<Cidr>().is_err());
    }
}
