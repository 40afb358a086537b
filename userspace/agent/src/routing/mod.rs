//! Routing between nodes: every other Node's pod CIDRs become routes on this
//! node, through the underlay (host-gw) or a Ferry VXLAN device, as
//! Flannel's `vxlan` backend with `DirectRouting` does.
//!
//! ```text
//!  peer on this node's L2 segment (its InternalIP is in a subnet on the underlay device):
//!     10.244.2.0/24 via 192.168.1.12 dev eth0                          proto 70   (host-gw)
//!  peer behind a router:
//!     10.244.3.0/24 via 10.244.3.0 dev ferry.vxlan onlink              proto 70   (vxlan)
//!     neigh 10.244.3.0 lladdr <peer VTEP MAC> dev ferry.vxlan nud permanent
//!     fdb   <peer VTEP MAC> dev ferry.vxlan dst 192.168.2.11 self permanent
//! ```
//!
//! The scheme is Flannel's (pkg/backend/vxlan): a peer's gateway address on
//! the tunnel is the network address of its pod CIDR, resolved by a
//! permanent neighbour entry to the peer's VTEP MAC, which the FDB sends to
//! the peer's underlay address. Flannel publishes each node's random VTEP
//! MAC in a Node annotation; Ferry derives it from the node's InternalIP
//! ([`vtep_mac`]), so a peer's MAC needs nothing beyond the Node object.
//!
//! IPv6 pod CIDRs travel over an IPv6 underlay, through a second device
//! (`ferry.vxlan6`, local = this node's IPv6 InternalIP), as Flannel's
//! `flannel-v6.<VNI>`: a VXLAN device has one outer family (the kernel
//! opens its socket for the family of its local address), and pairing each
//! inner family with the same outer family keeps host-gw and VXLAN
//! decisions alike per family. A peer without an InternalIP of a pod CIDR's
//! family gets no route for that CIDR (reported).
//!
//! This module is pure: [`plan`] turns the Nodes and the underlay's facts
//! into the wanted state, the `diff_*` functions compare it with what the
//! kernel holds, so a Node change touches exactly its own entries and a
//! restart with nothing changed touches nothing. [`task`] does the I/O.

pub mod task;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferry_netlink::{FdbEntry, Neighbour, RouteEntry};
use ferry_state::Node;
use ipnetwork::IpNetwork;

pub use ferry_netlink::ROUTE_PROTOCOL;

/// The VXLAN device for IPv4 pod CIDRs (IPv4 underlay).
pub const VXLAN_DEV_V4: &str = "ferry.vxlan";
/// The VXLAN device for IPv6 pod CIDRs (IPv6 underlay).
pub const VXLAN_DEV_V6: &str = "ferry.vxlan6";
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// The same over IPv6 (40-byte header).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// The underlay MTU assumed while the underlay device is not known yet.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// `--routing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Per peer: host-gw when it is on this node's L2 segment, VXLAN otherwise
    /// (Flannel's vxlan backend with DirectRouting).
    Auto,
    /// A route via each peer's InternalIP; a peer off the segment gets none.
    HostGw,
    /// Every peer through the VXLAN device.
    Vxlan,
    /// No routes: someone else routes pod CIDRs (cloud routes, BGP).
    None,
}

impl Mode {
    /// Whether pods may send through a tunnel, so their MTU must leave room.
    pub fn may_tunnel(self) -> bool {
        matches!(self, Mode::Auto | Mode::Vxlan)
    }
}

/// How one peer's pod CIDR of one family is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerMode {
    HostGw,
    Vxlan,
}

impl PeerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::HostGw => "host-gw",
            PeerMode::Vxlan => "vxlan",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv6() {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
    pub fn vxlan_dev(self) -> &'static str {
        match self {
            Family::Ipv4 => VXLAN_DEV_V4,
            Family::Ipv6 => VXLAN_DEV_V6,
        }
    }
    pub fn overhead(self) -> u32 {
        match self {
            Family::Ipv4 => VXLAN_OVERHEAD_V4,
            Family::Ipv6 => VXLAN_OVERHEAD_V6,
        }
    }
}

/// The routing flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub vni: u32,
    pub port: u16,
    /// `--underlay-dev`; None: the device holding this node's InternalIP.
    pub underlay_dev: Option<String>,
}

/// What planning needs of the underlay device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Subnets directly connected on it (its addresses with their prefixes;
    /// link-local ones left out): a peer inside one is on this L2 segment.
    pub subnets: Vec<IpNetwork>,
}

/// The device a wanted route leaves through, before ifindexes are known
/// (the VXLAN device may not exist yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dev {
    Underlay,
    Vxlan(Family),
}

/// One wanted route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantRoute {
    pub node: String,
    pub dst: IpNetwork,
    pub gateway: IpAddr,
    pub dev: Dev,
}

impl WantRoute {
    /// The route with its device resolved; VXLAN routes are onlink (the
    /// gateway is in no subnet of the tunnel).
    pub fn entry(&self, oif: u32) -> RouteEntry {
        RouteEntry {
            dst: self.dst.network(),
            prefix: self.dst.prefix(),
            gateway: self.gateway,
            oif,
            onlink: matches!(self.dev, Dev::Vxlan(_)),
            protocol: ROUTE_PROTOCOL,
        }
    }
}

/// One VXLAN device and the entries it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// This node's InternalIP of the family: the outer source address.
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// This node's own gateway address on the tunnel (its pod CIDR's
    /// network address, /32 or /128, as Flannel's): the source of packets
    /// the node itself sends to remote pods, which the peers route back
    /// through their tunnels.
    pub address: Option<IpAddr>,
    pub fdb: BTreeSet<FdbEntry>,
    /// Peer gateway address -> peer VTEP MAC (permanent entries).
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
}

/// The state this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: Vec<WantRoute>,
    pub tunnels: BTreeMap<Family, Tunnel>,
    /// Every peer with at least one pod CIDR routed: how, per family.
    pub peers: BTreeMap<String, BTreeMap<Family, PeerMode>>,
    /// Node data that could not be used, each naming its node.
    pub issues: Vec<String>,
}

/// The VTEP MAC of the node whose underlay address is `ip`: locally
/// administered unicast (0x0e), a family byte, then the IPv4 address itself
/// or a 32-bit FNV-1a hash of the IPv6 address. Stable across versions and
/// computable by every peer from the Node object alone. IPv4 addresses
/// never collide; two IPv6 addresses do with probability 2^-32 per pair.
pub fn vtep_mac(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            [0x0e, 0x46, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(v) => {
            let h = v.octets().iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
            let b = h.to_be_bytes();
            [0x0e, 0x66, b[0], b[1], b[2], b[3]]
        }
    }
}

/// A node's address of one family: the first InternalIP of it. (The
/// catalog keeps InternalIPs and ExternalIPs in the order the Node lists
/// them; the kubelet lists InternalIP first.)
pub fn node_ip(node: &Node, family: Family) -> Option<IpAddr> {
    node.addresses.iter().copied().find(|a| Family::of(*a) == family)
}

/// A node's pod CIDRs that parse, at most one per family (dual-stack), with
/// what was wrong with the others.
pub fn pod_cidrs(node: &Node) -> (BTreeMap<Family, IpNetwork>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut issues = Vec::new();
    for c in &node.pod_cidrs {
        match c.parse::<IpNetwork>() {
            Ok(n) => {
                let f = Family::of(n.ip());
                match out.entry(f) {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(n);
                    }
                    std::collections::btree_map::Entry::Occupied(_) => {
                        issues.push(format!("node {}: second {} pod CIDR {c} ignored", node.name, f.as_str()))
                    }
                }
            }
            Err(e) => issues.push(format!("node {}: pod CIDR {c:?} is not a CIDR ({e}); skipped", node.name)),
        }
    }
    (out, issues)
}

/// The pod MTU for the conflist: what fits through the path pods may use.
/// host-gw and none: the underlay's MTU. auto and vxlan: the underlay's
/// minus the VXLAN overhead, 70 bytes when this node has an IPv6 pod CIDR
/// (its IPv6 traffic may take the IPv6 tunnel), else 50. An explicit
/// `--cni-mtu` is used as given where it fits, and lowered to fit
/// otherwise.
pub fn pod_mtu(mode: Mode, underlay_mtu: Option<u32>, has_ipv6_pods: bool, configured: Option<u32>) -> u32 {
    let underlay = underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU);
    let fit = if mode.may_tunnel() {
        let overhead = if has_ipv6_pods { VXLAN_OVERHEAD_V6 } else { VXLAN_OVERHEAD_V4 };
        underlay.saturating_sub(overhead)
    } else {
        underlay
    };
    configured.map_or(fit, |c| c.min(fit))
}

/// The wanted routes, tunnels and per-peer modes for `own` among `nodes`.
pub fn plan(cfg: &Config, own: &Node, underlay: &Underlay, nodes: &BTreeMap<String, Node>) -> Plan {
    let mut p = Plan::default();
    if cfg.mode == Mode::None {
        return p;
    }
    let (own_cidrs, _) = pod_cidrs(own);
    let on_segment = |ip: IpAddr| underlay.subnets.iter().any(|n| n.contains(ip));
    // Destinations already taken, so two Nodes claiming one CIDR (or a
    // peer claiming ours) give one route, deterministically (by name).
    let mut taken: Vec<(IpNetwork, String)> = own_cidrs.values().map(|n| (*n, own.name.clone())).collect();
    for peer in nodes.values().filter(|n| n.name != own.name) {
        let (cidrs, issues) = pod_cidrs(peer);
        p.issues.extend(issues);
        for (family, cidr) in cidrs {
            let Some(peer_ip) = node_ip(peer, family) else {
                p.issues.push(format!(
                    "node {}: no {} InternalIP for pod CIDR {cidr}; no route",
                    peer.name,
                    family.as_str()
                ));
                continue;
            };
            if let Some((_, holder)) = taken.iter().find(|(n, _)| n.contains(cidr.ip()) || cidr.contains(n.ip())) {
                p.issues.push(format!("node {}: pod CIDR {cidr} overlaps node {holder}'s; no route", peer.name));
                continue;
            }
            if node_ip(own, family) == Some(peer_ip) {
                p.issues.push(format!("node {}: same InternalIP {peer_ip} as this node; no route", peer.name));
                continue;
            }
            let direct = on_segment(peer_ip);
            let mode = match cfg.mode {
                Mode::Auto if direct => PeerMode::HostGw,
                Mode::Auto | Mode::Vxlan => PeerMode::Vxlan,
                Mode::HostGw if direct => PeerMode::HostGw,
                Mode::HostGw => {
                    p.issues.push(format!(
                        "node {}: InternalIP {peer_ip} is not on this node's segment ({}); host-gw cannot reach it",
                        peer.name, underlay.name
                    ));
                    continue;
                }
                Mode::None => unreachable!("returned above"),
            };
            let route = match mode {
                PeerMode::HostGw => {
                    WantRoute { node: peer.name.clone(), dst: cidr, gateway: peer_ip, dev: Dev::Underlay }
                }
                PeerMode::Vxlan => {
                    let Some(local) = node_ip(own, family) else {
                        p.issues.push(format!(
                            "node {}: this node ({}) has no {} InternalIP to tunnel from; no route to {cidr}",
                            peer.name,
                            own.name,
                            family.as_str()
                        ));
                        continue;
                    };
                    let tunnel = p.tunnels.entry(family).or_insert_with(|| Tunnel {
                        local,
                        mac: vtep_mac(local),
                        mtu: underlay.mtu.saturating_sub(family.overhead()),
                        address: own_cidrs.get(&family).map(IpNetwork::network),
                        fdb: BTreeSet::new(),
                        neighbours: BTreeMap::new(),
                    });
                    let gw = cidr.network();
                    let mac = vtep_mac(peer_ip);
                    tunnel.fdb.insert(FdbEntry { mac, dst: peer_ip });
                    tunnel.neighbours.insert(gw, mac);
                    WantRoute { node: peer.name.clone(), dst: cidr, gateway: gw, dev: Dev::Vxlan(family) }
                }
            };
            taken.push((cidr, peer.name.clone()));
            p.peers.entry(peer.name.clone()).or_default().insert(family, mode);
            p.routes.push(route);
        }
    }
    p
}

/// One change to the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    Add(RouteEntry),
    /// Our route to the same destination, differently (a peer's new
    /// InternalIP, host-gw <-> VXLAN): replaced in one request, so the
    /// destination is never without a route.
    Replace(RouteEntry),
    Delete(RouteEntry),
}

/// The changes that make the main table hold `want` as Ferry's routes.
/// `current` is every unicast main-table route (all protocols): one of
/// another protocol to a wanted destination is never replaced (it is
/// reported and that destination skipped), and only routes with
/// [`ROUTE_PROTOCOL`] are ever deleted. A correct route yields no op.
pub fn diff_routes(want: &[RouteEntry], current: &[RouteEntry]) -> (Vec<RouteOp>, Vec<String>) {
    let key = |r: &RouteEntry| (r.dst, r.prefix);
    let ours: Vec<&RouteEntry> = current.iter().filter(|r| r.protocol == ROUTE_PROTOCOL).collect();
    let mut ops = Vec::new();
    let mut conflicts = Vec::new();
    // Indexes into `ours` that stay (exact) or are changed in place.
    let mut kept = vec![false; ours.len()];
    for w in want {
        if let Some(i) = ours.iter().position(|r| *r == w) {
            kept[i] = true;
            continue;
        }
        if let Some(foreign) = current.iter().find(|r| r.protocol != ROUTE_PROTOCOL && key(r) == key(w)) {
            conflicts.push(format!(
                "a route to {}/{} of protocol {} (not Ferry's) exists; left alone, no route to it",
                w.dst, w.prefix, foreign.protocol
            ));
            continue;
        }
        match ours.iter().enumerate().position(|(i, r)| !kept[i] && key(r) == key(w)) {
            Some(i) => {
                kept[i] = true;
                ops.push(RouteOp::Replace(*w));
            }
            None => ops.push(RouteOp::Add(*w)),
        }
    }
    // Stale: a Node gone, a CIDR changed, an earlier run's leftovers.
    ops.extend(ours.iter().zip(&kept).filter(|(_, k)| !**k).map(|(r, _)| RouteOp::Delete(**r)));
    (ops, conflicts)
}

/// FDB changes on one VXLAN device: (to put, to delete). The kernel's FDB
/// is keyed by MAC; a put replaces the destination of an existing one.
pub fn diff_fdb(want: &BTreeSet<FdbEntry>, current: &[FdbEntry]) -> (Vec<FdbEntry>, Vec<FdbEntry>) {
    let puts = want.iter().filter(|w| !current.contains(w)).copied().collect();
    let dels = current.iter().filter(|c| !want.contains(c) && !want.iter().any(|w| w.mac == c.mac)).copied().collect();
    (puts, dels)
}

/// Neighbour changes on one VXLAN device: (to put, to delete). Only
/// permanent entries are the agent's; learnt ones are the kernel's.
pub fn diff_neighbours(
    want: &BTreeMap<IpAddr, [u8; 6]>,
    current: &[Neighbour],
) -> (Vec<(IpAddr, [u8; 6])>, Vec<IpAddr>) {
    let puts = want
        .iter()
        .filter(|(ip, mac)| !current.iter().any(|c| c.permanent && c.ip == **ip && c.mac == **mac))
        .map(|(ip, mac)| (*ip, *mac))
        .collect();
    let dels = current.iter().filter(|c| c.permanent && !want.contains_key(&c.ip)).map(|c| c.ip).collect();
    (puts, dels)
}
