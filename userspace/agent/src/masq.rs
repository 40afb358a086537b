//! Egress masquerade: what the uplink programs (ebpf masq.rs) need, kept
//! in their maps from the catalog's Nodes, and the expiry of their NAT
//! entries.
//!
//! Per routing pass (the routing thread, in the node's namespace):
//! - `FERRY_MASQ_SRC` = this node's pod CIDRs: only pods are masqueraded;
//! - `FERRY_NONMASQ` = `--non-masquerade-cidrs`, or every Node's pod CIDRs
//!   when not given (ip-masq-agent's nonMasqueradeCIDRs), plus every Node's
//!   addresses: pod-to-pod and pod-to-node traffic keep the pod's source;
//! - `FERRY_MASQ_IFACES[uplink]` = the uplink's address of each family
//!   (this node's InternalIP when the uplink holds it) and the port range;
//! - the uplink programs attached to the uplink (pinned links, like the pod
//!   veths'), and the port range in `ip_local_reserved_ports`, so the
//!   node's own sockets never take a port the masquerade hands out.
//!
//! Every write is a diff against the maps, so a restart (even after
//! `kill -9`) changes nothing that is right, and the NAT entries, pinned,
//! keep every flow. An expiry thread removes idle entries by state
//! (ferry_datapath::expire_nat) and counts what is left for `/metrics`.
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::{LpmAddr, MasqIface};
use ferry_datapath::{lpm_key, Maps, NatTimeouts};
use ferry_netlink::Netlink;
use ferry_state::{Catalog, Node};
use ipnetwork::IpNetwork;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tracing::{info, warn};

use crate::routing::{pod_cidrs, Underlay};

/// How often idle NAT entries are looked for.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(10);

/// `--masquerade-ports`: an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        Self { min: ferry_common::DEFAULT_MASQ_PORT_MIN, max: ferry_common::DEFAULT_MASQ_PORT_MAX }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 61000-65535"))?;
        let parse = |v: &str| v.trim().parse::<u16>().map_err(|e| format!("{s:?}: {v:?} is not a port ({e})"));
        let (min, max) = (parse(a)?, parse(b)?);
        if min == 0 || min > max {
            return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
        }
        Ok(Self { min, max })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// The masquerade's settings (flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pin_dir: PathBuf,
    /// None: every Node's pod CIDRs.
    pub non_masquerade: Option<Vec<IpNetwork>>,
    pub ports: PortRange,
}

/// What the maps should hold, from the catalog and the uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub sources: BTreeSet<IpNetwork>,
    pub non_masquerade: BTreeSet<IpNetwork>,
    pub addr4: Option<std::net::Ipv4Addr>,
    pub addr6: Option<std::net::Ipv6Addr>,
}

fn host_net(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix is valid")
}

/// The wanted state. `uplink_addrs`: the uplink's global addresses, in
/// kernel order; the node's own address of a family is preferred.
pub fn plan(
    cfg: &Config,
    own: &Node,
    nodes: &std::collections::BTreeMap<String, Node>,
    uplink_addrs: &[IpAddr],
) -> Plan {
    let sources = pod_cidrs(own).0.into_values().collect();
    let mut non_masquerade: BTreeSet<IpNetwork> = match &cfg.non_masquerade {
        Some(list) => list.iter().copied().collect(),
        None => nodes.values().flat_map(|n| pod_cidrs(n).0.into_values()).collect(),
    };
    non_masquerade.extend(nodes.values().flat_map(|n| n.addresses.iter().copied().map(host_net)));
    let pick = |v4: bool| {
        own.addresses
            .iter()
            .find(|a| a.is_ipv4() == v4 && uplink_addrs.contains(a))
            .or_else(|| uplink_addrs.iter().find(|a| a.is_ipv4() == v4))
            .copied()
    };
    let addr4 = match pick(true) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let addr6 = match pick(false) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    Plan { sources, non_masquerade, addr4, addr6 }
}

impl Plan {
    pub fn iface(&self, ports: PortRange) -> MasqIface {
        let e4 = self.addr4.map(|a| ferry_datapath::endpoint_key(a.into()).addr[0]).unwrap_or(0);
        let e6 = self.addr6.map(|a| ferry_datapath::endpoint_key(a.into()).addr).unwrap_or([0; 4]);
        MasqIface { addr4: e4, port_min: ports.min, port_max: ports.max, addr6: e6 }
    }
}

/// What the last pass applied, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub uplink: Option<String>,
    pub ports: Option<PortRange>,
    pub plan: Plan,
    /// Flows in the NAT map after the last expiry pass, and its size.
    pub entries: usize,
    pub capacity: u32,
    pub expired: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Shared(pub Mutex<Status>);

impl Shared {
    pub fn snapshot(&self) -> Status {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The masquerade's side of a routing pass: in the node's namespace, with
/// the uplink routing found.
pub struct Masquerade {
    cfg: Config,
    maps: Option<Maps>,
    shared: Arc<Shared>,
    reserved: bool,
}

impl Masquerade {
    pub fn new(cfg: Config, shared: Arc<Shared>) -> Self {
        Self { cfg, maps: None, shared, reserved: false }
    }

    /// Makes the maps and the uplink's attachment match the catalog.
    pub fn apply(&mut self, nl: &Netlink, cat: &Catalog, own: &Node, uplink: &Underlay) {
        let res = self.try_apply(nl, cat, own, uplink);
        self.shared.update(|s| {
            s.uplink = Some(uplink.name.clone());
            s.ports = Some(self.cfg.ports);
            match res {
                Ok(plan) => {
                    s.plan = plan;
                    s.last_error = None;
                }
                Err(e) => {
                    warn!(error = %e, "masquerade: pass failed; retrying");
                    s.last_error = Some(format!("{e:#}"));
                }
            }
        });
    }

    fn try_apply(&mut self, nl: &Netlink, cat: &Catalog, own: &Node, uplink: &Underlay) -> anyhow::Result<Plan> {
        if !self.reserved {
            reserve_ports(self.cfg.ports)?;
            self.reserved = true;
        }
        let addrs: Vec<IpAddr> = nl
            .addrs(Some(uplink.index))?
            .into_iter()
            .map(|a| a.ip)
            .filter(|ip| !matches!(ip, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80))
            .collect();
        let plan = plan(&self.cfg, own, &cat.nodes, &addrs);
        if self.maps.is_none() {
            self.maps = Some(ferry_datapath::open_pinned(&self.cfg.pin_dir)?);
        }
        let maps = self.maps.as_mut().expect("opened above");
        sync_trie(&mut maps.masq_sources, &plan.sources)?;
        sync_trie(&mut maps.non_masq, &plan.non_masquerade)?;
        let want = plan.iface(self.cfg.ports);
        let stale: Vec<u32> = maps.masq_ifaces.keys().filter_map(|k| k.ok()).filter(|k| *k != uplink.index).collect();
        if maps.masq_ifaces.get(&uplink.index, 0).ok() != Some(want) {
            maps.masq_ifaces.insert(uplink.index, want, 0)?;
            info!(uplink = %uplink.name, addr4 = ?plan.addr4, addr6 = ?plan.addr6, ports = %self.cfg.ports, "masquerade address set");
        }
        let a = ferry_datapath::attach_uplink(&self.cfg.pin_dir, uplink.index)?;
        if a.created {
            info!(uplink = %a.ifname, "masquerade programs attached");
        }
        for index in stale {
            // The uplink moved: the old one stops masquerading.
            let _ = maps.masq_ifaces.remove(&index);
            let _ = ferry_datapath::detach_uplink(&self.cfg.pin_dir, index);
            info!(ifindex = index, "masquerade removed from a former uplink");
        }
        Ok(plan)
    }
}

/// Turns masquerading off: no uplink entries (the programs then pass
/// everything) and no uplink links. NAT entries expire on their own.
pub fn disable(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut maps = ferry_datapath::open_pinned(pin_dir)?;
    let keys: Vec<u32> = maps.masq_ifaces.keys().filter_map(|k| k.ok()).collect();
    for k in &keys {
        let _ = maps.masq_ifaces.remove(k);
        let _ = ferry_datapath::detach_uplink(pin_dir, *k);
    }
    Ok(keys.len())
}

type Trie = aya::maps::LpmTrie<aya::maps::MapData, LpmAddr, u8>;

fn sync_trie(trie: &mut Trie, want: &BTreeSet<IpNetwork>) -> anyhow::Result<()> {
    let want_keys: Vec<_> = want.iter().map(|n| lpm_key(*n)).collect();
    let have: Vec<_> = trie.keys().filter_map(|k| k.ok()).collect();
    let same = |a: &aya::maps::lpm_trie::Key<LpmAddr>, b: &aya::maps::lpm_trie::Key<LpmAddr>| {
        a.prefix_len() == b.prefix_len() && a.data() == b.data()
    };
    for k in &want_keys {
        if !have.iter().any(|h| same(h, k)) {
            trie.insert(k, 1, 0)?;
        }
    }
    for h in &have {
        if !want_keys.iter().any(|k| same(h, k)) {
            trie.remove(h)?;
        }
    }
    Ok(())
}

/// Adds `ports` to `net.ipv4.ip_local_reserved_ports` of the calling
/// thread's namespace (it covers IPv6 too), keeping what is there.
fn reserve_ports(ports: PortRange) -> anyhow::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH)?;
    let current = current.trim();
    let mine = ports.to_string();
    if current.split(',').any(|r| r.trim() == mine) {
        return Ok(());
    }
    let value = if current.is_empty() { mine } else { format!("{current},{mine}") };
    std::fs::write(PATH, &value)?;
    info!(ports = %ports, "masquerade ports reserved (ip_local_reserved_ports)");
    Ok(())
}

/// Expires idle NAT entries every [`EXPIRY_INTERVAL`], on a thread of its
/// own (the maps are not namespaced).
pub fn spawn_expiry(pin_dir: PathBuf, capacity: u32, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new().name("ferry-nat-expiry".into()).spawn(move || {
        let timeouts = NatTimeouts::default();
        let mut maps = None;
        loop {
            if maps.is_none() {
                maps = ferry_datapath::open_pinned(&pin_dir).map_err(|e| warn!(error = %e, "nat expiry")).ok();
            }
            if let Some(m) = maps.as_mut() {
                let Maps { snat, snat_rev, .. } = m;
                let e = ferry_datapath::expire_nat(snat, snat_rev, &timeouts);
                if e.expired + e.orphans > 0 {
                    info!(expired = e.expired, orphans = e.orphans, kept = e.kept, "nat entries expired");
                }
                shared.update(|s| {
                    s.entries = e.kept;
                    s.capacity = capacity;
                    s.expired += e.expired as u64;
                });
            }
            std::thread::sleep(EXPIRY_INTERVAL);
        }
    })?;
    Ok(())
}

/// The masquerade's metrics, read from [`Shared`] at scrape time; the
/// entry count is read from the map then too (a key walk, ~1 µs an
/// entry), so pressure is never an expiry interval stale.
#[derive(Debug)]
pub struct MasqCollector(pub Arc<Shared>, pub PathBuf);

impl Collector for MasqCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let mut s = self.0.snapshot();
        if let Ok(maps) = ferry_datapath::open_pinned(&self.1) {
            s.entries = maps.snat.keys().filter(Result::is_ok).count();
        }
        let enc =
            encoder.encode_descriptor("nat_entries", "Masqueraded flows in the NAT map", None, MetricType::Gauge)?;
        ConstGauge::new(s.entries as i64).encode(enc)?;
        let enc = encoder.encode_descriptor(
            "nat_capacity",
            "Flows the NAT map holds (--nat-size); a full map drops new flows (drop reason nat_full)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.capacity as i64).encode(enc)?;
        let enc =
            encoder.encode_descriptor("nat_pressure", "Fraction of the NAT map in use", None, MetricType::Gauge)?;
        let pressure = if s.capacity == 0 { 0.0 } else { s.entries as f64 / s.capacity as f64 };
        ConstGauge::new(pressure).encode(enc)?;
        let enc = encoder.encode_descriptor(
            "nat_expired",
            "Masqueraded flows removed after idling past their state's timeout",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.expired).encode(enc)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str, addrs: &[&str], cidrs: &[&str]) -> Node {
        Node {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            zone: None,
        }
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNetwork> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn plans_sources_exemptions_and_addresses() {
        let a = node("a", &["192.168.1.11", "fd00:192:1::11"], &["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let b = node("b", &["192.168.1.12"], &["10.244.2.0/24", "bogus"]);
        let nodes: BTreeMap<_, _> = [("a".to_string(), a.clone()), ("b".to_string(), b)].into();
        let cfg = Config { pin_dir: "/x".into(), non_masquerade: None, ports: PortRange::default() };
        let uplink: Vec<IpAddr> =
            ["192.168.1.99", "192.168.1.11", "fd00:192:1::11"].iter().map(|a| a.parse().unwrap()).collect();
        let p = plan(&cfg, &a, &nodes, &uplink);
        assert_eq!(p.sources, nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]));
        assert_eq!(
            p.non_masquerade,
            nets(&[
                "10.244.1.0/24",
                "10.244.2.0/24",
                "fd00:10:244:1::/64",
                "192.168.1.11/32",
                "192.168.1.12/32",
                "fd00:192:1::11/128"
            ])
        );
        // the node's InternalIP, not the uplink's first address
        assert_eq!(p.addr4, Some("192.168.1.11".parse().unwrap()));
        assert_eq!(p.addr6, Some("fd00:192:1::11".parse().unwrap()));

        // An explicit list replaces the pod CIDRs; nodes stay exempt.
        let cfg = Config { non_masquerade: Some(vec!["10.0.0.0/8".parse().unwrap()]), ..cfg };
        let p = plan(&cfg, &a, &nodes, &uplink[..1]);
        assert_eq!(p.non_masquerade, nets(&["10.0.0.0/8", "192.168.1.11/32", "192.168.1.12/32", "fd00:192:1::11/128"]));
        // the uplink lacks the InternalIP: its own address; no IPv6 address: no IPv6 masquerade
        assert_eq!(p.addr4, Some("192.168.1.99".parse().unwrap()));
        assert_eq!(p.addr6, None);
        assert_eq!(p.iface(PortRange::default()).addr6, [0; 4]);
    }

    #[test]
    fn port_ranges() {
        assert_eq!("61000-65535".parse::<PortRange>(), Ok(PortRange::default()));
        assert_eq!("1-1".parse::<PortRange>(), Ok(PortRange { min: 1, max: 1 }));
        for bad in ["", "61000", "2-1", "0-10", "1-65536", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
