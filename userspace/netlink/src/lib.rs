//! ferry-netlink: network namespaces and the few link, address and route
//! operations Ferry needs, over rtnetlink / netlink-packet-route.
//!
//! Callers are short-lived (the CNI plugin) or test code, so the API is
//! synchronous: a [`Netlink`] owns a current-thread tokio runtime that is only
//! driven inside each call. One `Netlink` is one netlink socket in the
//! namespace it was opened in; [`Netlink::open_in`] opens a second socket in
//! another namespace that shares the runtime, so a plugin invocation needs
//! exactly one socket per namespace it touches and never switches namespaces
//! for individual requests.
//!
//! The node agent's routing (routes tagged with [`ROUTE_PROTOCOL`], VXLAN
//! devices, their FDB and neighbour entries) uses the same calls from a
//! thread of its own.
//!
//! "Already exists" and "does not exist" are answered as values (`Ok(false)`,
//! `Ok(None)`) where callers need idempotence; everything else is an
//! [`Error`] carrying the operation and its subject.
#![forbid(unsafe_code)]

mod netns;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType, RouteVia,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

pub use netns::{Netns, NetnsGuard};

/// Errno values callers branch on.
pub const EEXIST: i32 = libc::EEXIST;
pub const ENODEV: i32 = libc::ENODEV;
pub const ESRCH: i32 = libc::ESRCH;
pub const ENOENT: i32 = libc::ENOENT;

/// The route protocol (`rtm_protocol`) of every route the Ferry agent
/// installs: how it tells its routes from everyone else's, so it never
/// changes or deletes a route it did not create. 0-4 are the kernel's
/// (unspec, redirect, kernel, boot, static); iproute2's rt_protos names
/// 8-18, 42, 99 and 186-192 (routing daemons); Calico's Felix uses 80.
/// 70 is none of them. `ip route show proto 70` lists Ferry's routes.
pub const ROUTE_PROTOCOL: u8 = 70;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} network namespace {}: {source}", path.display())]
    Netns { op: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("opening a netlink socket: {0}")]
    Connection(std::io::Error),
    #[error("netlink {op} {subject}: {source}")]
    Request { op: &'static str, subject: String, source: rtnetlink::Error },
    #[error("{subject} exists but is a {found}, not a {expected}")]
    WrongKind { subject: String, found: String, expected: &'static str },
}

impl Error {
    /// The kernel's errno for a failed request (positive, e.g. `EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request { source: rtnetlink::Error::NetlinkError(m), .. } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

/// fe80::/64 with the modified EUI-64 interface id of `mac` (RFC 4291
/// appendix A).
fn eui64_link_local(mac: [u8; 6]) -> std::net::Ipv6Addr {
    let m = mac;
    std::net::Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
}

fn request_err(op: &'static str, subject: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let subject = subject.into();
    move |source| Error::Request { op, subject, source }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Index of the bridge (or other master) this link is enslaved to.
    pub controller: Option<u32>,
    pub up: bool,
    /// `IFLA_INFO_KIND` ("bridge", "veth", ...); None for physical devices.
    pub kind: Option<String>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]]),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// An interface address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// A route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A route the agent manages: a unicast route in the main table to `dst/prefix`
/// via `gateway` out of link `oif`, tagged with `protocol`. `onlink`: the
/// gateway is on the link even though no subnet of the link holds it (a
/// VXLAN peer's gateway address, as Flannel's backend routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    pub oif: u32,
    pub onlink: bool,
    pub protocol: u8,
}

impl std::fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} via {} dev #{}", self.dst, self.prefix, self.gateway, self.oif)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// A kernel VXLAN device as the agent wants it (or found it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// The outer source address; its family is the tunnel's underlay family.
    pub local: IpAddr,
    /// The underlay device (ifindex) encapsulated packets leave through.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// One FDB entry of a VXLAN device: frames to `mac` are sent to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// One neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    /// `NUD_PERMANENT`: put there by someone, not learnt by the kernel.
    pub permanent: bool,
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some((*v).into()),
        NeighbourAddress::Inet6(v) => Some((*v).into()),
        // An FDB entry (family AF_BRIDGE) does not say which family its
        // NDA_DST is: netlink-packet-route leaves it raw. Its length does.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn neighbour_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v) => NeighbourAddress::Inet(v),
        IpAddr::V6(v) => NeighbourAddress::Inet6(v),
    }
}

/// What to create for one veth pair. The peer is created directly inside
/// `peer_netns` under its final name, so no move-and-rename round trips are
/// needed and a half-created pod interface never appears in the host
/// namespace.
#[derive(Debug)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Bridge to enslave the host end to, in the same request.
    pub controller: Option<u32>,
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: BorrowedFd<'a>,
}

/// One netlink socket plus the runtime that drives it.
pub struct Netlink {
    rt: Rc<tokio::runtime::Runtime>,
    handle: Handle,
}

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn open() -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(Error::Connection)?;
        Self::connect(Rc::new(rt))
    }

    /// A second socket, opened inside `ns` (the socket stays bound to it),
    /// sharing this one's runtime.
    pub fn open_in(&self, ns: &Netns) -> Result<Self, Error> {
        let _guard = ns.enter()?;
        Self::connect(self.rt.clone())
    }

    fn connect(rt: Rc<tokio::runtime::Runtime>) -> Result<Self, Error> {
        let _ctx = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connection)?;
        rt.spawn(conn);
        Ok(Self { rt, handle })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The link called `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        let mut req = self.handle.link().get().match_name(name.to_string()).execute();
        match self.block_on(req.try_next()) {
            Ok(m) => Ok(m.map(|m| Link::from_message(&m))),
            Err(e) => {
                let e = request_err("get link", name)(e);
                if e.errno() == Some(ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>, Error> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> = self.block_on(req.try_collect()).map_err(request_err("dump links", "*"))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Creates the bridge (up, with a fixed MAC so it never changes as ports
    /// come and go) or returns the existing one. Concurrent callers race
    /// safely: the loser of the creation gets EEXIST and reads the winner's.
    /// Returns the link and whether this call created it.
    pub fn ensure_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<(Link, bool), Error> {
        if let Some(l) = self.existing_bridge(name)? {
            return Ok((l, false));
        }
        let msg = LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build();
        let created = match self.block_on(self.handle.link().add(msg).execute()) {
            Ok(()) => true,
            Err(e) => {
                let e = request_err("create bridge", name)(e);
                if e.errno() != Some(EEXIST) {
                    return Err(e);
                }
                false
            }
        };
        let missing =
            || Error::Request { op: "get bridge", subject: name.to_string(), source: rtnetlink::Error::RequestFailed };
        if created {
            // Still down: no kernel link-local yet (see below).
            let index = self.link(name)?.ok_or_else(missing)?.index;
            self.set_addrgenmode_none(index)?;
        }
        let link = self.existing_bridge(name)?.ok_or_else(missing)?;
        if created {
            // The node solicits a pod's IPv6 neighbour entry from the
            // bridge's link-local address, and sends nothing while that is
            // tentative: the kernel's own link-local would hold a pod's first
            // routed IPv6 packet for DAD's ~1 s. Ours is the MAC's EUI-64
            // (what the kernel would pick), added without DAD.
            self.add_addr(link.index, IpAddr::V6(eui64_link_local(mac)), 64)?;
        }
        Ok((link, created))
    }

    fn existing_bridge(&self, name: &str) -> Result<Option<Link>, Error> {
        let Some(l) = self.link(name)? else { return Ok(None) };
        if l.kind.as_deref() != Some("bridge") {
            return Err(Error::WrongKind {
                subject: name.to_string(),
                found: l.kind.unwrap_or_else(|| "device".into()),
                expected: "bridge",
            });
        }
        if !l.up {
            self.set_up(l.index)?;
        }
        Ok(Some(l))
    }

    /// Creates a veth pair, host end up and enslaved, peer (down) inside its
    /// namespace, in a single request. The peer cannot be brought up in the
    /// same request: the kernel configures it before the two ends are paired
    /// and veth_open() then fails with ENOTCONN; bring it up with
    /// [`Netlink::set_up`] from a socket in its namespace.
    pub fn add_veth(&self, spec: &VethSpec<'_>) -> Result<(), Error> {
        let peer = LinkUnspec::new_with_name(spec.peer_name)
            .mtu(spec.mtu)
            .address(spec.peer_mac.to_vec())
            .setns_by_fd(spec.peer_netns.as_raw_fd())
            .build();
        let mut b =
            LinkVeth::new(spec.name, spec.peer_name).mtu(spec.mtu).address(spec.mac.to_vec()).up().set_info_data(
                netlink_packet_route::link::InfoData::Veth(netlink_packet_route::link::InfoVeth::Peer(peer)),
            );
        if let Some(c) = spec.controller {
            b = b.controller(c);
        }
        self.block_on(self.handle.link().add(b.build()).execute())
            .map_err(request_err("create veth", format!("{} (peer {})", spec.name, spec.peer_name)))
    }

    /// No kernel-generated IPv6 link-local address on this link (set while
    /// it is still down, before the kernel would make one).
    fn set_addrgenmode_none(&self, index: u32) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
            ])]))
            .build();
        self.block_on(self.handle.link().set(msg).execute())
            .map_err(request_err("set addrgenmode none", format!("link #{index}")))
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.block_on(self.handle.link().set(msg).execute())
            .map_err(request_err("set mtu", format!("link #{index} to {mtu}")))
    }

    pub fn set_up(&self, index: u32) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.block_on(self.handle.link().set(msg).execute()).map_err(request_err("set up", format!("link #{index}")))
    }

    /// Hairpin mode on a bridge port: frames may leave through the port they
    /// came in on, so a pod can reach itself through a Service VIP.
    pub fn set_hairpin(&self, port_index: u32, on: bool) -> Result<(), Error> {
        let msg = LinkBridgePort::new(port_index).append_info_data(InfoBridgePort::HairpinMode(on)).build();
        self.block_on(self.handle.link().set_port(msg).execute())
            .map_err(request_err("set hairpin", format!("link #{port_index}")))
    }

    /// Deletes the link called `name`; Ok(false) if there was none.
    pub fn del_link(&self, name: &str) -> Result<bool, Error> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.block_on(self.handle.link().del_with_message(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = request_err("delete link", name)(e);
                if e.errno() == Some(ENODEV) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Adds an address; Ok(false) if it was already there. IPv6 addresses
    /// are added with IFA_F_NODAD: the address is ours by IPAM, and duplicate
    /// address detection would keep it "tentative" (unusable) for a second
    /// or more after ADD returned.
    pub fn add_addr(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<bool, Error> {
        let mut req = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.block_on(req.execute()) {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = request_err("add address", format!("{ip}/{prefix} on link #{index}"))(e);
                if e.errno() == Some(EEXIST) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Addresses, of one link or (None) of all links.
    pub fn addrs(&self, index: Option<u32>) -> Result<Vec<Addr>, Error> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> =
            self.block_on(req.execute().try_collect()).map_err(request_err("dump addresses", "*"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                // IFA_LOCAL is the interface's own address on point-to-point
                // links; IFA_ADDRESS otherwise. Prefer LOCAL when present.
                let ip = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        m.attributes.iter().find_map(|a| match a {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                Some(Addr { index: m.header.index, ip, prefix: m.header.prefix_len })
            })
            .collect())
    }

    /// Adds a route in the main table; Ok(false) if it already existed.
    pub fn add_route(&self, route: &Route) -> Result<bool, Error> {
        let subject = || format!("{}/{} via {:?}", route.dst, route.prefix, route.gateway);
        let invalid = |e: String| Error::Request {
            op: "build route",
            subject: format!("{}: {e}", subject()),
            source: rtnetlink::Error::RequestFailed,
        };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst, route.prefix)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(gw) = route.gateway {
            b = b.gateway(gw).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(oif) = route.oif {
            b = b.output_interface(oif);
        }
        match self.block_on(self.handle.route().add(b.build()).execute()) {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = request_err("add route", subject())(e);
                if e.errno() == Some(EEXIST) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Routes of the main table for one address family.
    pub fn routes(&self, v6: bool) -> Result<Vec<Route>, Error> {
        let (msgs, unspecified) = self.main_table(v6)?;
        Ok(msgs.iter().map(|m| parse_route(m, unspecified)).collect())
    }

    /// The main table's routes of one family, and that family's
    /// unspecified address (the destination of a default route).
    fn main_table(&self, v6: bool) -> Result<(Vec<RouteMessage>, IpAddr), Error> {
        let msg = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let msgs: Vec<RouteMessage> = self
            .block_on(self.handle.route().get(msg).execute().try_collect())
            .map_err(request_err("dump routes", if v6 { "ipv6" } else { "ipv4" }))?;
        let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let unspecified: IpAddr =
            if v6 { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
        let msgs = msgs.into_iter().filter(|m| m.header.table == RT_TABLE_MAIN && m.header.address_family == family);
        Ok((msgs.collect(), unspecified))
    }
}

impl Netlink {
    /// The VXLAN device `spec.name` as the kernel has it (its spec as found,
    /// with `mtu` and `mac` read back), if there is one.
    pub fn vxlan(&self, name: &str) -> Result<Option<(Link, VxlanSpec)>, Error> {
        let mut req = self.handle.link().get().match_name(name.to_string()).execute();
        let msg = match self.block_on(req.try_next()) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => {
                let e = request_err("get link", name)(e);
                return if e.errno() == Some(ENODEV) { Ok(None) } else { Err(e) };
            }
        };
        let link = Link::from_message(&msg);
        if link.kind.as_deref() != Some("vxlan") {
            return Err(Error::WrongKind {
                subject: name.to_string(),
                found: link.kind.unwrap_or_else(|| "device".into()),
                expected: "vxlan",
            });
        }
        let mut spec = VxlanSpec {
            name: name.to_string(),
            vni: 0,
            port: 0,
            local: std::net::Ipv4Addr::UNSPECIFIED.into(),
            underlay: 0,
            mtu: link.mtu,
            mac: link.mac.unwrap_or_default(),
        };
        let infos = msg.attributes.iter().filter_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        });
        for i in infos.flatten() {
            if let LinkInfo::Data(InfoData::Vxlan(attrs)) = i {
                for a in attrs {
                    match a {
                        InfoVxlan::Id(v) => spec.vni = *v,
                        InfoVxlan::Port(p) => spec.port = *p,
                        InfoVxlan::Local(ip) => spec.local = (*ip).into(),
                        InfoVxlan::Local6(ip) => spec.local = (*ip).into(),
                        InfoVxlan::Link(l) => spec.underlay = *l,
                        _ => {}
                    }
                }
            }
        }
        Ok(Some((link, spec)))
    }

    /// Makes the VXLAN device match `spec` and be up: created if missing
    /// (with learning off: every FDB entry is put there by the agent, as
    /// Flannel's backend does), its MTU corrected in place, and re-created
    /// only when its identity (VNI, port, local address, underlay) differs,
    /// which no correction in place can change. Returns the link and
    /// whether it was (re-)created.
    pub fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(Link, bool), Error> {
        if let Some((link, found)) = self.vxlan(&spec.name)? {
            let same = found.vni == spec.vni
                && found.port == spec.port
                && found.local == spec.local
                && found.underlay == spec.underlay
                && found.mac == spec.mac;
            if same {
                if found.mtu != spec.mtu {
                    self.set_mtu(link.index, spec.mtu)?;
                }
                if !link.up {
                    self.set_up(link.index)?;
                }
                let link = self.link(&spec.name)?.unwrap_or(link);
                return Ok((link, false));
            }
            self.del_link(&spec.name)?;
        }
        let mut b = LinkVxlan::new(&spec.name, spec.vni).dev(spec.underlay).port(spec.port).learning(false);
        b = match spec.local {
            IpAddr::V4(ip) => b.local(ip),
            IpAddr::V6(ip) => b.local6(ip),
        };
        let msg = b.mtu(spec.mtu).address(spec.mac.to_vec()).build();
        self.block_on(self.handle.link().add(msg).execute()).map_err(request_err("create vxlan", &spec.name))?;
        let missing =
            || Error::Request { op: "get vxlan", subject: spec.name.clone(), source: rtnetlink::Error::RequestFailed };
        let index = self.link(&spec.name)?.ok_or_else(missing)?.index;
        // Nothing on a tunnel needs an IPv6 link-local address: without one
        // the kernel sends no DAD or router solicitations into it.
        self.set_addrgenmode_none(index)?;
        self.set_up(index)?;
        Ok((self.link(&spec.name)?.ok_or_else(missing)?, true))
    }

    /// Adds `entry`, or replaces the route to the same destination (only
    /// with `replace`: the caller has checked that the route it replaces is
    /// its own, as NLM_F_REPLACE matches on destination and metric, not on
    /// protocol).
    pub fn put_route(&self, entry: &RouteEntry, replace: bool) -> Result<(), Error> {
        let msg = route_message(entry).map_err(|e| Error::Request {
            op: "build route",
            subject: format!("{entry}: {e}"),
            source: rtnetlink::Error::RequestFailed,
        })?;
        let req = self.handle.route().add(msg);
        let req = if replace { req.replace() } else { req };
        self.block_on(req.execute())
            .map_err(request_err(if replace { "replace route" } else { "add route" }, entry.to_string()))
    }

    /// Deletes `entry` (matched on destination, gateway, device and
    /// protocol, so a route of another protocol is never the one deleted);
    /// Ok(false) if it was not there.
    pub fn del_route(&self, entry: &RouteEntry) -> Result<bool, Error> {
        let msg = route_message(entry).map_err(|e| Error::Request {
            op: "build route",
            subject: format!("{entry}: {e}"),
            source: rtnetlink::Error::RequestFailed,
        })?;
        match self.block_on(self.handle.route().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = request_err("delete route", entry.to_string())(e);
                if e.errno() == Some(ESRCH) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Unicast routes of the main table, both families, every protocol,
    /// with gateway and device (those without a gateway or device have
    /// them `UNSPECIFIED` / 0).
    pub fn route_entries(&self) -> Result<Vec<RouteEntry>, Error> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let (msgs, unspecified) = self.main_table(v6)?;
            for m in msgs.iter().filter(|m| m.header.kind == RouteType::Unicast) {
                let r = parse_route(m, unspecified);
                out.push(RouteEntry {
                    dst: r.dst,
                    prefix: r.prefix,
                    gateway: r.gateway.unwrap_or(unspecified),
                    oif: r.oif.unwrap_or(0),
                    onlink: m.header.flags.contains(RouteFlags::Onlink),
                    protocol: m.header.protocol.into(),
                });
            }
        }
        Ok(out)
    }

    /// The FDB entries of link `index` that send to a remote address
    /// (`bridge fdb show dev X` with a `dst`).
    pub fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, Error> {
        let req = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        let msgs: Vec<NeighbourMessage> = self.block_on(req.try_collect()).map_err(request_err("dump fdb", "*"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                        NeighbourAttribute::Destination(d) => dst = neighbour_ip(d),
                        _ => {}
                    }
                }
                Some(FdbEntry { mac: mac?, dst: dst? })
            })
            .collect())
    }

    /// Adds (or replaces) a permanent FDB entry on a VXLAN device
    /// (`bridge fdb replace MAC dev X dst IP self permanent`).
    pub fn put_fdb(&self, index: u32, entry: &FdbEntry) -> Result<(), Error> {
        let req = self
            .handle
            .neighbours()
            .add_bridge(index, &entry.mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(entry.dst)
            .replace();
        self.block_on(req.execute())
            .map_err(request_err("add fdb", format!("{} dst {} on link #{index}", fmt_mac(&entry.mac), entry.dst)))
    }

    /// Deletes an FDB entry; Ok(false) if it was not there.
    pub fn del_fdb(&self, index: u32, entry: &FdbEntry) -> Result<bool, Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(neighbour_addr(entry.dst)));
        self.del_neighbour_message(msg, || format!("fdb {} dst {} on link #{index}", fmt_mac(&entry.mac), entry.dst))
    }

    /// The neighbour entries of link `index`, both families.
    pub fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, Error> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let req = self.handle.neighbours().get().set_address_family(family).execute();
            let msgs: Vec<NeighbourMessage> =
                self.block_on(req.try_collect()).map_err(request_err("dump neighbours", "*"))?;
            for m in msgs.iter().filter(|m| m.header.ifindex == index) {
                let mut mac = None;
                let mut ip = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                        NeighbourAttribute::Destination(d) => ip = neighbour_ip(d),
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.push(Neighbour { ip, mac, permanent: m.header.state == NeighbourState::Permanent });
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a permanent neighbour entry (`ip neigh replace IP
    /// lladdr MAC dev X nud permanent`).
    pub fn put_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error> {
        let req =
            self.handle.neighbours().add(index, ip).link_layer_address(&mac).state(NeighbourState::Permanent).replace();
        self.block_on(req.execute())
            .map_err(request_err("add neighbour", format!("{ip} lladdr {} on link #{index}", fmt_mac(&mac))))
    }

    /// Deletes the neighbour entry of `ip` on link `index`; Ok(false) if
    /// there was none.
    pub fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<bool, Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(neighbour_addr(ip)));
        self.del_neighbour_message(msg, || format!("neighbour {ip} on link #{index}"))
    }

    fn del_neighbour_message(&self, msg: NeighbourMessage, subject: impl Fn() -> String) -> Result<bool, Error> {
        match self.block_on(self.handle.neighbours().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = request_err("delete", subject())(e);
                if matches!(e.errno(), Some(ENOENT) | Some(ESRCH)) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The message for `e`; Err: `e` is not a valid route (a prefix too long
/// for its family, a gateway of the other family).
fn route_message(e: &RouteEntry) -> Result<RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(e.dst, e.prefix)
        .and_then(|b| b.gateway(e.gateway))
        .map_err(|err| err.to_string())?
        .output_interface(e.oif)
        .protocol(RouteProtocol::from(e.protocol));
    if e.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

fn parse_route(m: &RouteMessage, unspecified: IpAddr) -> Route {
    let mut r = Route { dst: unspecified, prefix: m.header.destination_prefix_length, gateway: None, oif: None };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                if let Some(ip) = route_ip(d) {
                    r.dst = ip
                }
            }
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Via(RouteVia::Inet(v)) => r.gateway = Some((*v).into()),
            RouteAttribute::Via(RouteVia::Inet6(v)) => r.gateway = Some((*v).into()),
            RouteAttribute::Oif(o) => r.oif = Some(*o),
            _ => {}
        }
    }
    r
}

const RT_TABLE_MAIN: u8 = 254;

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}
