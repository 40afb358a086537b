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
            "eth0",
            "netns",
            netns.name(),
        ]);
        util::sh(&["ip", "-n", ul, "link", "set", &port, "master", "ul0", "up"]);
        let addr = UnderlayAddr {
            ipv4: Ipv4Addr::new(192, 168, self.segment, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x192, self.segment as u16, 0, 0, 0, 0, host as u16),
        };
        let n = netns.name();
        util::sh(&["ip", "-n", n, "addr", "add", &format!("{}/24", addr.ipv4), "dev", "eth0"]);
        util::sh(&["ip", "-n", n, "addr", "add", &format!("{}/64", addr.ipv6), "dev", "eth0", "nodad"]);
        util::sh(&["ip", "-n", n, "link", "set", "eth0", "up"]);
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

/// Adds a route in `netns` (host-gw style: a peer node's pod CIDR via its
/// underlay address).
pub fn route_via(netns: &str, dst: &str, via: IpAddr) {
    let fam = if via.is_ipv6() { "-6" } else { "-4" };
    util::sh(&["ip", fam, "-n", netns, "route", "add", dst, "via", &via.to_string()]);
}
