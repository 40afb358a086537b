//! The built-in IPAM's configuration: host-local's format (`ranges` of range
//! sets, or the legacy single `subnet`/`rangeStart`/`rangeEnd`/`gateway`,
//! `routes`, `dataDir`), parsed and validated up front so that a bad config
//! fails before anything is created.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::cidr::{from_u128, to_u128, Cidr};
use crate::error::{CniError, Code, Result};

/// host-local's default state directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    /// The legacy single-range form: the same keys at the top level.
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

/// One contiguous range inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, masked to its network address.
    pub subnet: Cidr,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(ip) && to_u128(ip) >= to_u128(self.start) && to_u128(ip) <= to_u128(self.end)
    }
}

/// A set of ranges one address is taken from (one per family, typically).
pub type RangeSet = Vec<Range>;

/// A route for the pod: destination and optional gateway (none: the
/// range's gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub sets: Vec<RangeSet>,
    pub routes: Vec<RouteConf>,
    pub data_dir: PathBuf,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| invalid(format!("ipam: {what} {s:?} is not an IP address")))
}

impl IpamConfig {
    /// Parses the `ipam` object of the netconf.
    pub fn parse(ipam: &Value) -> Result<Self> {
        let raw: RawIpam =
            serde_json::from_value(ipam.clone()).map_err(|e| invalid("ipam: invalid configuration").with_details(e))?;
        let raw_sets: Vec<Vec<RawRange>> = match (raw.ranges, raw.legacy.subnet.is_some()) {
            (Some(r), false) => r,
            (None, true) => vec![vec![raw.legacy]],
            (Some(_), true) => return Err(invalid("ipam: use either \"ranges\" or \"subnet\", not both")),
            (None, false) => return Err(invalid("ipam: no \"ranges\" (or \"subnet\") configured")),
        };
        if raw_sets.is_empty() || raw_sets.iter().any(Vec::is_empty) {
            return Err(invalid("ipam: \"ranges\" must be a non-empty list of non-empty range sets"));
        }
        let mut sets = vec![];
        for raw_set in raw_sets {
            let mut set: RangeSet = vec![];
            for r in raw_set {
                let range = parse_range(&r)?;
                if let Some(first) = set.first() {
                    if first.subnet.addr.is_ipv6() != range.subnet.addr.is_ipv6() {
                        return Err(invalid(format!(
                            "ipam: range set mixes IPv4 and IPv6 ({} and {})",
                            first.subnet, range.subnet
                        )));
                    }
                }
                set.push(range);
            }
            sets.push(set);
        }
        // No address may belong to two ranges: it could be handed out twice.
        let all: Vec<&Range> = sets.iter().flatten().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.subnet.addr.is_ipv6() == b.subnet.addr.is_ipv6()
                    && to_u128(a.start) <= to_u128(b.end)
                    && to_u128(b.start) <= to_u128(a.end)
                {
                    return Err(invalid(format!("ipam: ranges {} and {} overlap", a.subnet, b.subnet)));
                }
            }
        }
        let mut routes = vec![];
        for r in raw.routes {
            let dst: Cidr = r.dst.parse().map_err(|e| invalid(format!("ipam: route dst: {e}")))?;
            let gw = r.gw.as_deref().map(|g| parse_ip("route gw", g)).transpose()?;
            if let Some(g) = gw {
                if g.is_ipv6() != dst.addr.is_ipv6() {
                    return Err(invalid(format!("ipam: route {} has a gateway of the other family", r.dst)));
                }
            }
            routes.push(RouteConf { dst: Cidr { addr: dst.network(), prefix: dst.prefix }, gw });
        }
        Ok(IpamConfig { sets, routes, data_dir: raw.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)) })
    }

    /// The range an address belongs to.
    pub fn range_of(&self, ip: IpAddr) -> Option<(usize, &Range)> {
        self.sets.iter().enumerate().find_map(|(i, s)| s.iter().find(|r| r.contains(ip)).map(|r| (i, r)))
    }
}

fn parse_range(r: &RawRange) -> Result<Range> {
    let raw_subnet = r.subnet.as_deref().ok_or_else(|| invalid("ipam: a range has no \"subnet\""))?;
    let c: Cidr = raw_subnet.parse().map_err(|e| invalid(format!("ipam: invalid subnet {raw_subnet:?}: {e}")))?;
    let subnet = Cidr { addr: c.network(), prefix: c.prefix };
    let v6 = subnet.addr.is_ipv6();
    let net = to_u128(subnet.network());
    let last = to_u128(subnet.last());
    // host-local's defaults: skip the network address, and the IPv4
    // broadcast address.
    let def_start = net.saturating_add(1).min(last);
    let def_end = if v6 { last } else { last.saturating_sub(1).max(net) };
    let within = |what: &str, s: &Option<String>, def: u128| -> Result<u128> {
        match s {
            None => Ok(def),
            Some(s) => {
                let ip = parse_ip(what, s)?;
                if !subnet.contains(ip) {
                    return Err(invalid(format!("ipam: {what} {ip} is outside subnet {subnet}")));
                }
                Ok(to_u128(ip))
            }
        }
    };
    let start = within("rangeStart", &r.range_start, def_start)?;
    let end = within("rangeEnd", &r.range_end, def_end)?;
    let gateway = within("gateway", &r.gateway, def_start)?;
    if start > end || (subnet.prefix >= subnet.bits() - 1 && r.range_start.is_none()) {
        return Err(invalid(format!("ipam: subnet {subnet} has no usable address range")));
    }
    Ok(Range { subnet, start: from_u128(start, v6), end: from_u128(end, v6), gateway: from_u128(gateway, v6) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_host_local() {
        let c = IpamConfig::parse(&json!({"subnet": "10.1.2.0/24"})).unwrap();
        let r = &c.sets[0][0];
        assert_eq!(r.start.to_string(), "10.1.2.1");
        assert_eq!(r.end.to_string(), "10.1.2.254");
        assert_eq!(r.gateway.to_string(), "10.1.2.1");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c = IpamConfig::parse(&json!({"ranges": [[{"subnet": "fd00::/120"}]]})).unwrap();
        assert_eq!(c.sets[0][0].end.to_string(), "fd00::ff");
    }

    #[test]
    fn rejects_bad_configs_with_code_7() {
        for bad in [
            json!({}),
            json!({"subnet": "10.0.0.0/33"}),
            json!({"subnet": "not-a-subnet"}),
            json!({"ranges": []}),
            json!({"ranges": [[]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "banana"}]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
            json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}),
            json!({"subnet": "10.0.0.0/32"}),
            json!({"subnet": 5}),
        ] {
            let e = IpamConfig::parse(&bad).expect_err(&bad.to_string());
            assert_eq!(e.code, 7, "{bad}: {e}");
        }
    }
}
