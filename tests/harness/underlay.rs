//! Several nodes: an underlay L2 segment of its own (a namespace holding a
//! bridge, like the switch between hosts) that node namespaces and outside
//! "client" namespaces join through a veth named `eth0` on their side.
//!
//! ```text
//!  underlay netns "fyt<pid>u<k>":  ul0 (bridge)
//!     ├── u<j> ── veth ── eth0 in node A   192.168.<k>.<a>/24, fd00:192:<k>::<a>/64
//!     ├── u<j> ── veth ── eth0 in node B
//!     └── u<j> ── veth ── eth0 in a client netns
//! ```
//!
//! Two segments joined by a [`Router`] (a namespace with forwarding on, as
//! host 1 of each) make nodes that are not on one L2 segment:
//!
//! ```text
//!  segment k:  node A .11, node B .12 ── router .1 (eth0) ┐ ip_forward=1 in the router only
//!  segment m:  node C .11             ── router .1 (eth1) ┘
//!  A, B: 192.168.m.0/24 and fd00:192:m::/64 via 192.168.k.1 / fd00:192:k::1; C likewise
//! ```
//!
//! Still nothing reaches the root namespace: the underlay has no uplink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use super::node::Node;
use super::util::{self, NamedNetns};

static SEGMENT: AtomicU32 = AtomicU32::new(0);

/// One underlay segment; dropping it unplugs every member.
#[derive(Debug)]
pub struct Underlay {
    netns: NamedNetns,
    segment: u8,
    ports: AtomicU32,
}

/// A namespace's address on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayAddr {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Underlay {
    pub fn new() -> Self {
        util::sweep_stale();
        let netns = NamedNetns::create(&util::unique("u"));
        util::sh(&["ip", "-n", netns.name(), "link", "add", "ul0", "type", "bridge"]);
        util::sh(&["ip", "-n", netns.name(), "link", "set", "ul0", "up"]);
        Underlay { netns, segment: (SEGMENT.fetch_add(1, Ordering::Relaxed) % 200) as u8 + 1, ports: AtomicU32::new(0) }
    }

    /// Plugs a namespace in as host number `host` (2..=254) of the segment:
    /// `eth0` there, with 192.168.<segment>.<host>/24 and
    /// fd00:192:<segment>::<host>/64 (no DAD).
    pub fn plug(&self, netns: &NamedNetns, host: u8) -> UnderlayAddr {
        assert!((2..=254).contains(&host), "host number {host} out of 2..=254");
        self.plug_as(netns, host, "eth0")
    }

    /// The segment's number (the third octet of its IPv4 subnet).
    pub fn segment(&self) -> u8 {
        self.segment
    }

    /// The segment's subnets: 192.168.<segment>.0/24, fd00:192:<segment>::/64.
    pub fn subnets(&self) -> (String, String) {
        (format!("192.168.{}.0/24", self.segment), format!("fd00:192:{:x}::/64", self.segment))
    }

    /// The address host number `host` gets on this segment.
    pub fn addr(&self, host: u8) -> UnderlayAddr {
        UnderlayAddr {
            ipv4: Ipv4Addr::new(192, 168, self.segment, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x192, self.segment as u16, 0, 0, 0, 0, host as u16),
        }
    }

    /// [`plug`](Self::plug) with another interface name (a router's second leg).
    fn plug_as(&self, netns: &NamedNetns, host: u8, ifname: &str) -> UnderlayAddr {
        let port = format!("u{}", self.ports.fetch_add(1, Ordering::Relaxed));
        let ul = self.netns.name();
        util::sh(&[
            "ip",
            "-n",
            ul,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            netns.name(),
        ]);
        util::sh(&["ip", "-n", ul, "link", "set", &port, "master", "ul0", "up"]);
        let addr = self.addr(host);
        let n = netns.name();
        util::sh(&["ip", "-n", n, "addr", "add", &format!("{}/24", addr.ipv4), "dev", ifname]);
        util::sh(&["ip", "-n", n, "addr", "add", &format!("{}/64", addr.ipv6), "dev", ifname, "nodad"]);
        // No DAD for the kernel's link-local either: a node forwards (pod
        // traffic, the router everything) and solicits neighbours from its
        // link-local only (ndisc_send_ns), so a tentative one held every
        // forwarded IPv6 packet for the first ~2 s. A real node's link is
        // long up.
        let key = format!("net.ipv6.conf.{ifname}.accept_dad");
        netns.run(move || util::sysctl(&key, "0"));
        util::sh(&["ip", "-n", n, "link", "set", ifname, "up"]);
        addr
    }

    /// Plugs a node in.
    pub fn plug_node(&self, node: &Node, host: u8) -> UnderlayAddr {
        self.plug(&node.0.netns, host)
    }

    /// A plain namespace on the segment (a client outside the cluster);
    /// deleted when the returned value drops.
    pub fn client(&self, host: u8) -> (NamedNetns, UnderlayAddr) {
        let ns = NamedNetns::create(&util::unique("c"));
        let addr = self.plug(&ns, host);
        (ns, addr)
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Self::new()
    }
}

/// A router between segments: a namespace of its own, host 1 of each
/// segment (`eth0`, `eth1`, ...), forwarding IPv4 and IPv6 (in that
/// namespace only). Deleted, with its legs, on drop.
#[derive(Debug)]
pub struct Router {
    netns: NamedNetns,
    /// (segment number, this router's address on it).
    legs: Vec<(u8, UnderlayAddr, (String, String))>,
}

impl Router {
    /// The router's host number on every segment.
    pub const HOST: u8 = 1;

    pub fn new(segments: &[&Underlay]) -> Self {
        util::sweep_stale();
        let netns = NamedNetns::create(&util::unique("r"));
        netns.run(|| {
            util::sysctl("net.ipv4.ip_forward", "1");
            util::sysctl("net.ipv6.conf.all.forwarding", "1");
        });
        let legs = segments
            .iter()
            .enumerate()
            .map(|(i, ul)| (ul.segment(), ul.plug_as(&netns, Self::HOST, &format!("eth{i}")), ul.subnets()))
            .collect();
        Router { netns, legs }
    }

    pub fn name(&self) -> &str {
        self.netns.name()
    }

    /// Gives `netns`, plugged into `on`, routes to every other segment via
    /// this router (what a real network's gateway does for the nodes).
    pub fn connect(&self, netns: &str, on: &Underlay) {
        let (_, via, _) = self.legs.iter().find(|(s, _, _)| *s == on.segment()).expect("the router is on that segment");
        for (_, _, (v4, v6)) in self.legs.iter().filter(|(s, _, _)| *s != on.segment()) {
            util::sh(&["ip", "-4", "-n", netns, "route", "add", v4, "via", &via.ipv4.to_string()]);
            util::sh(&["ip", "-6", "-n", netns, "route", "add", v6, "via", &via.ipv6.to_string()]);
        }
    }
}

/// Adds a route in `netns` (host-gw style: a peer node's pod CIDR via its
/// underlay address).
pub fn route_via(netns: &str, dst: &str, via: IpAddr) {
    let fam = if via.is_ipv6() { "-6" } else { "-4" };
    util::sh(&["ip", fam, "-n", netns, "route", "add", dst, "via", &via.to_string()]);
}
