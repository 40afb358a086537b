//! Header parsing. Everything is read with `bpf_skb_load_bytes` (through
//! `TcContext::load`), which also works on the non-linear GSO packets a
//! local TCP stack sends over a veth.
//!
//! Addresses and ports are kept exactly as on the wire (network order), the
//! byte order of every map key.
use aya_ebpf::programs::TcContext;
use ferry_common::{DropReason, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Offsets with no IPv4 options (the only IPv4 headers we translate).
pub const IP4_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP4_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP4_DST_OFF: usize = ETH_HLEN + 16;
pub const IP4_L4_OFF: usize = ETH_HLEN + 20;
pub const IP6_SRC_OFF: usize = ETH_HLEN + 8;
pub const IP6_DST_OFF: usize = ETH_HLEN + 24;
pub const IP6_L4_OFF: usize = ETH_HLEN + 40;

const TCP_HLEN: u16 = 20;
const UDP_HLEN: u16 = 8;
/// A frame this short may carry Ethernet padding after the IP packet.
const ETH_MIN_FRAME: u32 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// A TCP/UDP packet whose addresses and ports could be read.
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// L4 payload length in bytes (valid when `problem` is None).
    pub l4_payload: u16,
    /// TCP header length in bytes (20 for UDP's purposes: unused).
    pub tcp_hlen: u16,
    /// Why this packet must not be translated, if it should not: it may
    /// still be looked up (to count it against a Service and drop it), but
    /// never rewritten.
    pub problem: Option<DropReason>,
}

impl Packet {
    #[inline(always)]
    fn new(family: u8, proto: u8, src: [u32; 4], dst: [u32; 4], ports: [u16; 2]) -> Self {
        Packet {
            family,
            proto,
            src,
            dst,
            sport: ports[0],
            dport: ports[1],
            tcp_flags: 0,
            l4_payload: 0,
            tcp_hlen: 0,
            problem: None,
        }
    }

    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        if self.family == AF_INET {
            IP4_L4_OFF
        } else {
            IP6_L4_OFF
        }
    }

    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off() + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }
}

/// Parses an Ethernet + IPv4/IPv6 + TCP/UDP packet. `None` means "not ours
/// to look at": not IP, another L4 protocol, an IPv6 extension header, a
/// non-first fragment (no ports), or too short to hold the addresses and
/// ports; such packets are passed untouched.
// Not inlined: the header copies live in this call's frame, not in the
// callers' (the BPF stack is 512 bytes for the whole call chain).
#[inline(never)]
pub fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    match ethertype {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => None,
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext) -> Option<Packet> {
    let ip = ctx.load::<Ipv4Hdr>(ETH_HLEN).ok()?;
    if ip.vihl >> 4 != 4 || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return None;
    }
    let ihl = ((ip.vihl & 0x0f) as u16) * 4;
    if ihl < 20 {
        return None;
    }
    let frag = u16::from_be(ip.frag_off);
    if frag & 0x1fff != 0 {
        // A non-first fragment has no L4 header: nothing to look up.
        return None;
    }
    let l4 = ETH_HLEN + ihl as usize;
    let ports = ctx.load::<[u16; 2]>(l4).ok()?;
    let tot_len = u16::from_be(ip.tot_len);
    let mut pkt = Packet::new(AF_INET, ip.proto, [ip.saddr, 0, 0, 0], [ip.daddr, 0, 0, 0], ports);
    pkt.problem = if ihl != 20 {
        Some(DropReason::Unsupported)
    } else if frag & 0x2000 != 0 {
        Some(DropReason::Fragment)
    } else if !ip_len_matches(ctx, tot_len as u32) || tot_len < ihl {
        Some(DropReason::Malformed)
    } else {
        check_l4(ctx, &mut pkt, tot_len - ihl)
    };
    Some(pkt)
}

#[inline(always)]
fn parse_v6(ctx: &TcContext) -> Option<Packet> {
    let ip = ctx.load::<Ipv6Hdr>(ETH_HLEN).ok()?;
    if (ip.nexthdr != IPPROTO_TCP && ip.nexthdr != IPPROTO_UDP) || (ip.vtc_flow & 0xf0) != 0x60 {
        // Extension headers (fragments included) are passed untouched.
        return None;
    }
    let ports = ctx.load::<[u16; 2]>(IP6_L4_OFF).ok()?;
    let payload = u16::from_be(ip.payload_len);
    let mut pkt = Packet::new(AF_INET6, ip.nexthdr, ip.saddr, ip.daddr, ports);
    pkt.problem = if !ip_len_matches(ctx, payload as u32 + 40) {
        Some(DropReason::Malformed)
    } else {
        check_l4(ctx, &mut pkt, payload)
    };
    Some(pkt)
}

/// The IP length must cover exactly the frame after the Ethernet header
/// (short frames may carry Ethernet padding after it).
#[inline(always)]
fn ip_len_matches(ctx: &TcContext, ip_len: u32) -> bool {
    let avail = ctx.len().saturating_sub(ETH_HLEN as u32);
    ip_len == avail || (ip_len < avail && ctx.len() <= ETH_MIN_FRAME)
}

/// Checks the L4 header is whole and consistent with the IP length
/// `l4_len`; fills in the TCP flags and payload length.
#[inline(always)]
fn check_l4(ctx: &TcContext, pkt: &mut Packet, l4_len: u16) -> Option<DropReason> {
    let l4 = pkt.l4_off();
    if pkt.proto == IPPROTO_TCP {
        if l4_len < TCP_HLEN {
            return Some(DropReason::Malformed);
        }
        let Ok(off_flags) = ctx.load::<[u8; 2]>(l4 + 12) else {
            return Some(DropReason::Malformed);
        };
        let hlen = ((off_flags[0] >> 4) as u16) * 4;
        if hlen < TCP_HLEN || hlen > l4_len {
            return Some(DropReason::Malformed);
        }
        pkt.tcp_flags = off_flags[1];
        pkt.tcp_hlen = hlen;
        pkt.l4_payload = l4_len - hlen;
    } else {
        if l4_len < UDP_HLEN {
            return Some(DropReason::Malformed);
        }
        let Ok(udp_len) = ctx.load::<u16>(l4 + 4) else {
            return Some(DropReason::Malformed);
        };
        let udp_len = u16::from_be(udp_len);
        if udp_len != l4_len {
            return Some(DropReason::Malformed);
        }
        pkt.l4_payload = l4_len - UDP_HLEN;
    }
    None
}
