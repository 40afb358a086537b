//! ferry-common: the one definition of every BPF map key and value, shared by
//! the eBPF programs (`ebpf/programs`) and userspace (agent, ctl, cni-plugin).
//!
//! Rules for every type here:
//! - `#[repr(C)]` with no implicit padding: the kernel hashes key bytes,
//!   padding included, so every byte is a named field (`_pad*` = zero).
//! - Addresses are stored as they appear on the wire (network byte order):
//!   IPv4 in `addr[0]` with `addr[1..4] == 0`, IPv6 in all four words.
//! - Ports are in network byte order, as read from the L4 header.
//! - Sizes are asserted at compile time below and in the tests.
#![no_std]

/// Pin directory (bpffs) for maps and programs; overridable at run time so
/// tests can use their own.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferry";

/// Names of the maps, as they appear in the ELF object and under the pin dir.
pub mod map_names {
    pub const SERVICES: &str = "FERRY_SERVICES";
    pub const BACKENDS: &str = "FERRY_BACKENDS";
    pub const MAGLEV: &str = "FERRY_MAGLEV";
    pub const CONNTRACK: &str = "FERRY_CT";
    pub const REVNAT: &str = "FERRY_REVNAT";
    pub const AFFINITY: &str = "FERRY_AFFINITY";
    pub const SERVICE_STATS: &str = "FERRY_SVC_STATS";
    pub const DROPS: &str = "FERRY_DROPS";
    pub const GLOBAL_STATS: &str = "FERRY_GLOBAL";
    pub const CONFIG: &str = "FERRY_CONFIG";
    pub const ENDPOINTS: &str = "FERRY_ENDPOINTS";
    pub const PORTS: &str = "FERRY_PORTS";
    pub const NEXTHOPS: &str = "FERRY_NEXTHOPS";
    pub const SOCK_REVNAT: &str = "FERRY_SOCK_REVNAT";
    pub const FRAGMENTS: &str = "FERRY_FRAGS";
    pub const VIPS: &str = "FERRY_VIPS";
    pub const SNAT: &str = "FERRY_SNAT";
    pub const SNAT_REV: &str = "FERRY_SNAT_REV";
    pub const MASQ_SOURCES: &str = "FERRY_MASQ_SRC";
    pub const NON_MASQ: &str = "FERRY_NONMASQ";
    pub const MASQ_IFACES: &str = "FERRY_MASQ_IFACES";
}

/// Names of the programs (ELF symbol names and pin names under `<pin>/progs`).
pub mod prog_names {
    pub const FROM_POD: &str = "ferry_from_pod";
    pub const TO_POD: &str = "ferry_to_pod";
    pub const FROM_NET: &str = "ferry_from_net";
    pub const TO_NET: &str = "ferry_to_net";
    pub const SOCK_CONNECT4: &str = "ferry_sock_connect4";
    pub const SOCK_CONNECT6: &str = "ferry_sock_connect6";
    pub const SOCK_SENDMSG4: &str = "ferry_sock_sendmsg4";
    pub const SOCK_SENDMSG6: &str = "ferry_sock_sendmsg6";
    pub const SOCK_RECVMSG4: &str = "ferry_sock_recvmsg4";
    pub const SOCK_RECVMSG6: &str = "ferry_sock_recvmsg6";
    pub const SOCK_GETPEERNAME4: &str = "ferry_sock_getpeername4";
    pub const SOCK_GETPEERNAME6: &str = "ferry_sock_getpeername6";
    pub const SOCK_RELEASE: &str = "ferry_sock_release";
}

/// Default map capacities. The Maglev array holds `MAX_TABLES * MAGLEV_SIZE`
/// u32 slots (in [`MaglevPair`]s); tables are double-buffered (a new table is written into a free
/// slot, then the service entry is switched to it), so `MAX_TABLES` must
/// exceed the number of frontends by the number of updates in flight.
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
/// Prime, as Maglev requires; >= 100x the backends of a typical Service keeps
/// the imbalance under 1%. 1021 x 4 bytes x 16384 tables = 67 MB.
pub const DEFAULT_MAGLEV_SIZE: u32 = 1021;
pub const DEFAULT_MAX_TABLES: u32 = 16_384;
pub const DEFAULT_CT_SIZE: u32 = 262_144;
pub const DEFAULT_AFFINITY_SIZE: u32 = 65_536;
/// Local pod addresses (two per dual-stack pod).
pub const DEFAULT_MAX_ENDPOINTS: u32 = 4096;
/// Learned pod MACs (`FERRY_PORTS`, LRU): pods on one node, with room.
pub const DEFAULT_MAX_PORTS: u32 = 4096;
/// Fragmented datagrams in flight (`FERRY_FRAGS`, LRU): an entry is needed
/// only from a datagram's first fragment to its last, microseconds apart.
/// Cilium's default for its fragments map is the same.
pub const DEFAULT_FRAG_SIZE: u32 = 8192;
/// Masqueraded flows (`FERRY_SNAT`, and as many `FERRY_SNAT_REV`): plain
/// hash maps, not LRU, so a flow's translation is never evicted under it;
/// the agent expires entries by protocol state, and a full map is a
/// counted drop of the new flow (`DropReason::NatFull`).
pub const DEFAULT_NAT_SIZE: u32 = 131_072;
/// CIDRs in each masquerade LPM trie (`FERRY_MASQ_SRC`, `FERRY_NONMASQ`).
pub const DEFAULT_MASQ_CIDRS: u32 = 1024;
/// Uplinks with a masquerade address (`FERRY_MASQ_IFACES`).
pub const DEFAULT_MASQ_IFACES: u32 = 16;
/// The default SNAT port range: above Linux's default ephemeral range
/// (32768-60999), so the node's own connections never pick these ports;
/// the agent also puts the range in `ip_local_reserved_ports`.
pub const DEFAULT_MASQ_PORT_MIN: u16 = 61_000;
pub const DEFAULT_MASQ_PORT_MAX: u16 = 65_535;

/// Source address a hairpin flow (a pod reaching itself through its own
/// Service) is SNATed to, so that the pod's reply leaves it and comes back
/// through the from-pod program to be reverse-translated. Link-local, as
/// Cilium's 169.254.42.1, never assigned to an interface. Wire order bytes.
pub const HAIRPIN_V4: [u8; 4] = [169, 254, 42, 1];
/// IPv6 counterpart, from the discard-only prefix 100::/64 (RFC 6666).
pub const HAIRPIN_V6: [u8; 16] = [0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42, 0, 1];

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A frontend: one (VIP, port, protocol) of a Service. Key of `FERRY_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// `AF_INET` (4) or `AF_INET6` (6).
    pub family: u8,
}

/// Service flags (`ServiceValue::flags`).
pub mod service_flags {
    /// `sessionAffinity: ClientIP`; `affinity_timeout_s` is valid.
    pub const AFFINITY: u32 = 1 << 0;
    /// `internalTrafficPolicy: Local` (the agent only lists local backends).
    pub const LOCAL_ONLY: u32 = 1 << 1;
}

/// Value of `FERRY_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Frontend id: index into per-service counters, owner of backends.
    pub id: u32,
    /// Backends eligible for new flows (the Maglev table's population).
    /// 0 = no endpoints: new flows are rejected (TCP RST / ICMP unreachable).
    pub backend_count: u32,
    /// Which Maglev table (index into `FERRY_MAGLEV` / `maglev_size`).
    pub maglev_table: u32,
    pub flags: u32,
    pub affinity_timeout_s: u32,
    pub _pad: u32,
}

/// Backend states (`BackendValue::state`).
pub mod backend_state {
    /// Ready: receives new flows.
    pub const ACTIVE: u8 = 0;
    /// Terminating (or not ready but serving): keeps its existing flows.
    pub const TERMINATING: u8 = 1;
}

/// Value of `FERRY_BACKENDS`, keyed by a u32 backend id. Backend ids are
/// allocated per (frontend, endpoint), never shared between frontends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: [u32; 4],
    /// Network byte order (the resolved target port).
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// The frontend this backend belongs to.
    pub service_id: u32,
    pub state: u8,
    pub _pad: [u8; 3],
}

/// Key of `FERRY_CT`: the flow as the client sent it (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// CT flags (`CtValue::flags`).
pub mod ct_flags {
    pub const SEEN_REPLY: u32 = 1 << 0;
    pub const FIN_SEEN: u32 = 1 << 1;
    pub const RST_SEEN: u32 = 1 << 2;
    /// The client reached itself through the Service: its source was
    /// SNATed to the VIP so the reply comes back through us.
    pub const HAIRPIN: u32 = 1 << 3;
}

/// Value of `FERRY_CT`. The backend's address and port are stored so that an
/// established TCP flow keeps its backend even after the backend leaves the
/// maps; UDP flows re-check `backend_id` and move when it is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub backend_addr: [u32; 4],
    pub backend_port: u16,
    pub _pad: u16,
    pub backend_id: u32,
    pub service_id: u32,
    pub flags: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_coarse_ns) of creation and of the last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// Key of `FERRY_REVNAT`: the reply as the backend sends it (backend -> client).
pub type RevNatKey = CtKey;

/// Value of `FERRY_REVNAT`: what the reply's source must be rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatValue {
    pub vip: [u32; 4],
    /// Network byte order.
    pub vip_port: u16,
    pub _pad: u16,
    /// For hairpin flows: the client's original address, to restore as the
    /// reply's destination (the request's source was rewritten to the VIP).
    pub orig_client: [u32; 4],
    pub flags: u32,
}

/// Key of `FERRY_AFFINITY` (`sessionAffinity: ClientIP`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u32; 4],
    pub service_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

/// Key of `FERRY_ENDPOINTS`: a pod address on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of `FERRY_ENDPOINTS`, written by the CNI plugin on ADD (removed on
/// DEL): where a local pod is, so a DNATed packet for it is handed straight
/// to its namespace with `bpf_redirect_peer` instead of crossing the node's
/// IP stack and bridge. Optional: without an entry the packet is routed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    /// The pod's host-side veth (its peer is the pod's interface).
    pub ifindex: u32,
    /// The MAC of the pod's interface: the redirected frame's destination.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of `FERRY_PORTS`: a pod's MAC address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of `FERRY_PORTS`, learned by from-pod as a bridge learns its FDB:
/// the host-side veth whose pod sent frames from that MAC. A translated
/// packet whose FIB next hop is that MAC goes straight into the pod
/// (`bpf_redirect_peer`), as the bridge would have delivered it, without
/// crossing the bridge and the veth's egress. Only pods behind veths the
/// data path is attached to are learned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortValue {
    pub ifindex: u32,
}

/// Value of `FERRY_NEXTHOPS` (keyed like `FERRY_ENDPOINTS`, by address):
/// a local pod's next hop as the FIB and `FERRY_PORTS` resolved it once,
/// so the flow's later packets skip the FIB lookup. Forgotten with the
/// pod's veth, like the MAC it came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The pod's host-side veth.
    pub ifindex: u32,
    /// The pod's MAC and the MAC the FIB put as the source (the gateway's).
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// Key of `FERRY_SOCK_REVNAT` (LRU): a socket the socket LB translated
/// (its cookie) and the backend it was pointed at. recvmsg and getpeername
/// find the VIP to show the application here, so a UDP reply comes from
/// the VIP and `getpeername` names the VIP, as with packet NAT. Keyed by
/// backend too, because one unconnected UDP socket may send to several.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub _pad2: u32,
}

/// Key of `FERRY_FRAGS` (LRU): one fragmented datagram, as RFC 791 / RFC
/// 8200 identify it (source, destination, protocol, identification). The
/// IPv4 identification is 16 bits, in the low half, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// As on the wire (network order).
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `FERRY_FRAGS`: the ports the datagram's first fragment carried
/// (network order), before any translation. Later fragments have no L4
/// header; with these they are looked up, and translated, as the first was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
}

/// Value of `FERRY_SOCK_REVNAT`: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub vip: [u32; 4],
    /// Network byte order.
    pub vip_port: u16,
    pub _pad: u16,
    pub service_id: u32,
}

/// Key of `FERRY_SNAT` and `FERRY_SNAT_REV`, a flow as one direction
/// carries it.
/// - `FERRY_SNAT`: a pod's packet as it reaches the uplink (pod -> remote).
/// - `FERRY_SNAT_REV`: the reply as it arrives (remote -> node address and
///   SNAT port).
///
/// ICMP echo uses the identifier as a port: `src_port` = identifier and
/// `dst_port` = 0 for a request, and the other way round for its reply, so
/// the reply's key is built exactly as a TCP/UDP reply's is.
pub type NatKey = CtKey;

/// Value of `FERRY_SNAT` (the address and port the flow leaves with) and of
/// `FERRY_SNAT_REV` (the pod address and port its replies get back). A pair
/// is written reverse entry first, with `BPF_NOEXIST`: that insert is what
/// claims the port, so two flows can never share a translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub addr: [u32; 4],
    /// Network byte order (an ICMP echo identifier for ICMP).
    pub port: u16,
    pub _pad: u16,
    /// `ct_flags`: `SEEN_REPLY`, `FIN_SEEN`, `RST_SEEN` of this direction.
    pub flags: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_coarse_ns), as conntrack's; the last
    /// packet's is refreshed at most once a second (a write per packet
    /// would bounce the entry's cache line between CPUs).
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// Key data of the masquerade LPM tries (`FERRY_MASQ_SRC`: which sources
/// are masqueraded, this node's pod CIDRs; `FERRY_NONMASQ`: destinations
/// that keep the pod's source). The family comes first, so one trie holds
/// both: the prefix length is 32 + the CIDR's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpmAddr {
    /// `[family, 0, 0, 0]`.
    pub family: [u8; 4],
    pub addr: [u32; 4],
}

impl LpmAddr {
    /// The bits before the address.
    pub const FAMILY_BITS: u32 = 32;
}

/// Value of `FERRY_MASQ_IFACES`, keyed by the uplink's ifindex: what its
/// egress masquerades to. An address of 0 means "this family is not
/// masqueraded on this uplink" (the packet passes untouched).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqIface {
    pub addr4: u32,
    /// The SNAT port (and ICMP identifier) range, host byte order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    pub addr6: [u32; 4],
}

/// Per-CPU packet/byte counters per frontend id (`FERRY_SVC_STATS`, an array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Global per-CPU event counters (`FERRY_GLOBAL`, an array indexed by
/// these): the one definition of each, with its name (the `ferryctl stats`
/// row and, prefixed `ferry_`, the Prometheus metric) and help text.
/// Indexes are stable: never renumber, only append.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalCounter {
    CtCreated = 0,
    /// The conntrack map was full (LRU eviction failed): map pressure.
    CtInsertFailed = 1,
    NoEndpointsRejected = 2,
    Hairpin = 3,
    UdpReselected = 4,
    /// Translated packets handed straight to a local backend pod.
    RedirectPeer = 5,
    /// Translated packets handed to the egress device the node's FIB named
    /// (skipping the node's IP forward path).
    FibRedirect = 6,
    /// Translated packets whose FIB next hop is a pod behind one of this
    /// node's attached veths (`FERRY_PORTS`), handed straight into it.
    LearnedPeer = 7,
    /// connect / sendmsg calls to a frontend the socket LB pointed at a
    /// backend (no per-packet NAT for those flows).
    SockTranslated = 8,
    /// connect / sendmsg calls to a frontend with no endpoints, refused
    /// with ECONNREFUSED.
    SockRefused = 9,
    /// Non-first fragments given the ports of their datagram's first
    /// fragment (`FERRY_FRAGS`), so they follow its translation.
    FragmentFollowed = 10,
    /// Pod flows given a masquerade translation (a SNAT port).
    MasqCreated = 11,
    /// Packets leaving an uplink with a pod's source masqueraded.
    MasqEgress = 12,
    /// Replies arriving at an uplink given their pod's address back.
    MasqIngress = 13,
    /// ICMP errors about a masqueraded flow translated (frag-needed,
    /// unreachable, time exceeded), either way.
    MasqIcmpError = 14,
}

impl GlobalCounter {
    /// Length of `FERRY_GLOBAL` (room to append without resizing a pinned map).
    pub const MAX: u32 = 16;
    pub const ALL: [GlobalCounter; 15] = [
        GlobalCounter::CtCreated,
        GlobalCounter::CtInsertFailed,
        GlobalCounter::NoEndpointsRejected,
        GlobalCounter::Hairpin,
        GlobalCounter::UdpReselected,
        GlobalCounter::RedirectPeer,
        GlobalCounter::FibRedirect,
        GlobalCounter::LearnedPeer,
        GlobalCounter::SockTranslated,
        GlobalCounter::SockRefused,
        GlobalCounter::FragmentFollowed,
        GlobalCounter::MasqCreated,
        GlobalCounter::MasqEgress,
        GlobalCounter::MasqIngress,
        GlobalCounter::MasqIcmpError,
    ];

    /// The counter's name: `ferryctl stats` row, and the metric
    /// `ferry_<name>_total`.
    pub const fn name(self) -> &'static str {
        match self {
            GlobalCounter::CtCreated => "conntrack_created",
            GlobalCounter::CtInsertFailed => "conntrack_insert_failures",
            GlobalCounter::NoEndpointsRejected => "no_endpoints_rejected",
            GlobalCounter::Hairpin => "hairpin_flows",
            GlobalCounter::UdpReselected => "udp_reselected",
            GlobalCounter::RedirectPeer => "redirect_peer_packets",
            GlobalCounter::FibRedirect => "fib_redirect_packets",
            GlobalCounter::LearnedPeer => "learned_peer_packets",
            GlobalCounter::SockTranslated => "sock_translated",
            GlobalCounter::SockRefused => "sock_refused",
            GlobalCounter::FragmentFollowed => "fragments_followed",
            GlobalCounter::MasqCreated => "masquerade_flows_created",
            GlobalCounter::MasqEgress => "masquerade_egress_packets",
            GlobalCounter::MasqIngress => "masquerade_ingress_packets",
            GlobalCounter::MasqIcmpError => "masquerade_icmp_errors",
        }
    }

    /// The metric's help text.
    pub const fn help(self) -> &'static str {
        match self {
            GlobalCounter::CtCreated => "Conntrack entries created",
            GlobalCounter::CtInsertFailed => "Conntrack inserts that failed (map full): map pressure",
            GlobalCounter::NoEndpointsRejected => "New flows rejected for lack of endpoints",
            GlobalCounter::Hairpin => "Flows where the client was its own backend",
            GlobalCounter::UdpReselected => "UDP flows moved off a backend that left",
            GlobalCounter::RedirectPeer => "Translated packets handed straight into a local backend pod",
            GlobalCounter::FibRedirect => "Translated packets handed to the device the node's FIB named",
            GlobalCounter::LearnedPeer => {
                "Translated packets whose FIB next hop is a pod behind an attached veth, handed straight into it"
            }
            GlobalCounter::SockTranslated => {
                "connect/sendmsg calls to a frontend pointed at a backend by the socket LB"
            }
            GlobalCounter::SockRefused => {
                "connect/sendmsg calls to a frontend without endpoints, refused (ECONNREFUSED)"
            }
            GlobalCounter::FragmentFollowed => {
                "non-first IP fragments translated with the ports of their datagram's first fragment"
            }
            GlobalCounter::MasqCreated => "Pod flows given a masquerade (SNAT) translation",
            GlobalCounter::MasqEgress => "Packets leaving an uplink with their pod source masqueraded",
            GlobalCounter::MasqIngress => "Replies to masqueraded flows given their pod's address back",
            GlobalCounter::MasqIcmpError => "ICMP errors about masqueraded flows translated (PMTU, unreachable)",
        }
    }
}

/// One element of `FERRY_MAGLEV`: two consecutive Maglev slots (backend
/// ids); slot `i` of the flat table space is `FERRY_MAGLEV[i / 2].ids[i % 2]`.
/// Pairs because the kernel rounds an array element up to 8 bytes: u32
/// elements would charge 8 bytes a slot (128 MB at the default geometry).
/// The map is `BPF_F_MMAPABLE`, so userspace writes whole tables with a
/// memcpy into a shared mapping instead of one kernel copy per slot (10 M
/// slots at 10,000 Services took 1.3-2.3 s through `BPF_MAP_UPDATE_BATCH`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaglevPair {
    pub ids: [u32; 2],
}

/// Maglev slots per `FERRY_MAGLEV` element.
pub const MAGLEV_SLOTS_PER_ENTRY: u32 = 2;

/// `BPF_F_MMAPABLE` (uapi `linux/bpf.h`): an array map userspace can mmap.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Runtime configuration (`FERRY_CONFIG`, a 1-entry array) written by the
/// agent at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub maglev_size: u32,
    pub max_tables: u32,
    /// The network namespace the socket LB serves (the node's: the
    /// loader's own, `SO_NETNS_COOKIE`). Sockets of other namespaces (pods,
    /// whose processes sit in child cgroups of the node's root cgroup) are
    /// left to the packet path at their veth. 0: every namespace.
    pub sock_netns_cookie: u64,
}

/// Why a packet was dropped: the eBPF error type, the index of `FERRY_DROPS`
/// (a per-CPU array of u64) and the `reason` label of the drop metric.
/// Codes are stable: never renumber, only append.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Headers shorter than they claim, or cut off.
    Malformed = 1,
    /// A non-first fragment to a VIP whose first fragment was not seen:
    /// without its ports it cannot be translated, and it must not leave
    /// towards the VIP untranslated.
    Fragment = 2,
    /// A new flow to a Service with no endpoints (answered with RST/ICMP).
    NoEndpoints = 3,
    /// The Maglev slot or backend entry was missing.
    NoBackend = 4,
    /// A helper (store/csum/redirect) failed.
    HelperFailed = 5,
    /// The conntrack map was full and the insert failed.
    CtFull = 6,
    /// IPv4 header with options on a VIP-bound packet we do not translate.
    Unsupported = 7,
    /// The FIB's next hop could not be written into a translated packet
    /// whose TTL was already decremented (checksum or MAC store failed).
    FibRewrite = 8,
    /// Every SNAT port towards this destination address and port was
    /// taken (`MasqIface::port_min..=port_max`, a bounded number of random
    /// tries): the new flow is dropped, never given a used port.
    NatPortsExhausted = 9,
    /// The masquerade maps were full (`--nat-size`): the new flow is dropped.
    NatFull = 10,
}

impl DropReason {
    pub const MAX: u32 = 16;
    pub const ALL: [DropReason; 10] = [
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::NoEndpoints,
        DropReason::NoBackend,
        DropReason::HelperFailed,
        DropReason::CtFull,
        DropReason::Unsupported,
        DropReason::FibRewrite,
        DropReason::NatPortsExhausted,
        DropReason::NatFull,
    ];

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::NoEndpoints => "no_endpoints",
            DropReason::NoBackend => "no_backend",
            DropReason::HelperFailed => "helper_failed",
            DropReason::CtFull => "ct_full",
            DropReason::Unsupported => "unsupported",
            DropReason::FibRewrite => "fib_rewrite",
            DropReason::NatPortsExhausted => "nat_ports_exhausted",
            DropReason::NatFull => "nat_full",
        }
    }
}

// No implicit padding anywhere: sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 24);
const _: () = assert!(core::mem::size_of::<BackendValue>() == 28);
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
const _: () = assert!(core::mem::size_of::<CtValue>() == 48);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 40);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);
const _: () = assert!(core::mem::size_of::<MaglevPair>() == 8);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointValue>() == 12);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(core::mem::size_of::<PortValue>() == 4);
const _: () = assert!(core::mem::size_of::<NextHop>() == 16);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 40);
const _: () = assert!(core::mem::size_of::<LpmAddr>() == 20);
const _: () = assert!(core::mem::size_of::<MasqIface>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: every map type here is repr(C) and Copy, has no
            // padding (sizes asserted above) and is valid for any bit pattern.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        ServiceKey,
        ServiceValue,
        BackendValue,
        CtKey,
        CtValue,
        RevNatValue,
        AffinityKey,
        AffinityValue,
        Counter,
        Config,
        MaglevPair,
        EndpointKey,
        EndpointValue,
        PortKey,
        PortValue,
        NextHop,
        SockRevKey,
        SockRevValue,
        FragKey,
        FragValue,
        NatEntry,
        LpmAddr,
        MasqIface,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// Every map type is exactly the sum of its fields (no implicit
    /// padding the kernel would hash) and aligned as the kernel expects.
    #[test]
    fn sizes_and_alignment() {
        // (type, size, sum of field sizes, alignment)
        let rows: [(&str, usize, usize, usize); 23] = [
            ("ServiceKey", size_of::<ServiceKey>(), 16 + 2 + 1 + 1, align_of::<ServiceKey>()),
            ("ServiceValue", size_of::<ServiceValue>(), 6 * 4, align_of::<ServiceValue>()),
            ("BackendValue", size_of::<BackendValue>(), 16 + 2 + 1 + 1 + 4 + 1 + 3, align_of::<BackendValue>()),
            ("CtKey", size_of::<CtKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2, align_of::<CtKey>()),
            ("CtValue", size_of::<CtValue>(), 16 + 2 + 2 + 4 + 4 + 4 + 8 + 8, align_of::<CtValue>()),
            ("RevNatValue", size_of::<RevNatValue>(), 16 + 2 + 2 + 16 + 4, align_of::<RevNatValue>()),
            ("AffinityKey", size_of::<AffinityKey>(), 16 + 4 + 1 + 3, align_of::<AffinityKey>()),
            ("AffinityValue", size_of::<AffinityValue>(), 4 + 4 + 8, align_of::<AffinityValue>()),
            ("Counter", size_of::<Counter>(), 8 + 8, align_of::<Counter>()),
            ("Config", size_of::<Config>(), 4 + 4 + 8, align_of::<Config>()),
            ("SockRevKey", size_of::<SockRevKey>(), 8 + 16 + 2 + 1 + 1 + 4, align_of::<SockRevKey>()),
            ("SockRevValue", size_of::<SockRevValue>(), 16 + 2 + 2 + 4, align_of::<SockRevValue>()),
            ("MaglevPair", size_of::<MaglevPair>(), 4 + 4, align_of::<MaglevPair>()),
            ("EndpointKey", size_of::<EndpointKey>(), 16 + 1 + 3, align_of::<EndpointKey>()),
            ("EndpointValue", size_of::<EndpointValue>(), 4 + 6 + 2, align_of::<EndpointValue>()),
            ("PortKey", size_of::<PortKey>(), 6 + 2, align_of::<PortKey>()),
            ("PortValue", size_of::<PortValue>(), 4, align_of::<PortValue>()),
            ("NextHop", size_of::<NextHop>(), 4 + 6 + 6, align_of::<NextHop>()),
            ("FragKey", size_of::<FragKey>(), 16 + 16 + 4 + 1 + 1 + 2, align_of::<FragKey>()),
            ("FragValue", size_of::<FragValue>(), 2 + 2, align_of::<FragValue>()),
            ("NatEntry", size_of::<NatEntry>(), 16 + 2 + 2 + 4 + 8 + 8, align_of::<NatEntry>()),
            ("LpmAddr", size_of::<LpmAddr>(), 4 + 16, align_of::<LpmAddr>()),
            ("MasqIface", size_of::<MasqIface>(), 4 + 2 + 2 + 16, align_of::<MasqIface>()),
        ];
        for (name, size, fields, align) in rows {
            assert_eq!(size, fields, "{name}: implicit padding");
            assert!(align <= 8, "{name}: alignment {align}");
        }
    }

    #[test]
    fn global_counters_are_stable_in_range_and_uniquely_named() {
        for (i, c) in GlobalCounter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{}", c.name());
            assert!((*c as u32) < GlobalCounter::MAX);
            assert!(GlobalCounter::ALL[..i].iter().all(|o| o.name() != c.name()), "{} twice", c.name());
        }
    }

    #[test]
    fn drop_reason_codes_are_stable_and_in_range() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32 + 1, "{}", r.as_str());
            assert!((*r as u32) < DropReason::MAX);
        }
    }
}
