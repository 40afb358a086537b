//! Header parsing. Everything is read with `bpf_skb_load_bytes` (through
//! `TcContext::load`), which also works on the non-linear GSO packets a
//! local TCP stack sends over a veth.
//!
//! Addresses and ports are kept exactly as on the wire (network order), the
//! byte order of every map key.
//!
//! Fragments: only a datagram's first fragment carries the L4 header. Its
//! ports are remembered in `FERRY_FRAGS` under the datagram's identity, and
//! the fragments after it (in any order) are given them, so every fragment
//! is looked up and translated as its first was, and only the first has its
//! ports and L4 checksum rewritten ([`Frag`]). A fragment that arrives
//! before its first (or whose first was never seen) cannot be translated:
//! if it is bound for a VIP it is dropped and counted, never sent on
//! untranslated; to any other address it passes untouched. Cilium's
//! fragment tracking makes the same trade: holding fragments back for a
//! late first one would need a reassembly buffer in the data path.
use aya_ebpf::programs::TcContext;
use ferry_common::{
    DropReason, EndpointKey, FragKey, FragValue, GlobalCounter, AF_INET, AF_INET6, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP,
};

use crate::maps::{count_global, FERRY_FRAGS, FERRY_VIPS};

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
/// The IPv6 fragment header's length (RFC 8200 4.5) and next-header value.
const IP6_FRAG_HLEN: usize = 8;
const IPPROTO_FRAGMENT: u8 = 44;

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

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    Whole,
    /// Offset 0: carries the L4 header (ports, checksum) of the whole
    /// datagram, the first of several fragments. An IPv6 atomic fragment
    /// (RFC 6946) is `Whole`, only its L4 header is 8 bytes further.
    First,
    /// No L4 header: the ports are the first fragment's (`FERRY_FRAGS`),
    /// and only the IP header may be rewritten.
    Later,
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
    pub frag: Frag,
    /// IPv6 with a fragment header: the L4 header is 8 bytes further.
    pub frag_hdr: bool,
    /// Why this packet must not be translated, if it should not: it may
    /// still be looked up (to count it against a Service and drop it), but
    /// never rewritten.
    pub problem: Option<DropReason>,
}

impl Packet {
    /// Nothing parsed yet: what a caller hands to [`parse`].
    pub const EMPTY: Packet = Packet::new(0, 0, [0; 4], [0; 4], [0, 0]);

    #[inline(always)]
    const fn new(family: u8, proto: u8, src: [u32; 4], dst: [u32; 4], ports: [u16; 2]) -> Self {
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
            frag: Frag::Whole,
            frag_hdr: false,
            problem: None,
        }
    }

    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        if self.family == AF_INET {
            IP4_L4_OFF
        } else if self.frag_hdr {
            IP6_L4_OFF + IP6_FRAG_HLEN
        } else {
            IP6_L4_OFF
        }
    }

    /// Whether the packet has an L4 header to rewrite (ports, checksum).
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.frag != Frag::Later
    }

    /// Where the L4 checksum is: TCP 16, UDP 6, ICMP and ICMPv6 2.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off()
            + match self.proto {
                IPPROTO_TCP => 16,
                IPPROTO_UDP => 6,
                _ => 2,
            }
    }
}

/// Parses an Ethernet + IPv4/IPv6 + TCP/UDP packet (or fragment of one)
/// into `pkt`, the caller's (one copy of the packet's fields on the stack).
/// `Ok(false)` means "not ours to look at": not IP, another L4 protocol,
/// an IPv6 extension header other than one fragment header, a later
/// fragment of a datagram whose first fragment was not seen (not
/// VIP-bound), or too short to hold the addresses and ports; such packets
/// are passed untouched. `Err(Fragment)`: such a fragment, bound for a VIP.
// Inlined, but its parts are not: the header copies live in the parsers'
// frames and the fragment key in follow_fragment's, one at a time, not in
// the callers' (the BPF stack is 512 bytes for the whole call chain).
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<bool, DropReason> {
    let Some(id) = parse_headers(ctx, pkt) else {
        return Ok(false);
    };
    if pkt.frag == Frag::Whole {
        return Ok(true);
    }
    follow_fragment(pkt, id)
}

/// The headers into `pkt`; for a fragment, its datagram's identification.
#[inline(never)]
fn parse_headers(ctx: &TcContext, pkt: &mut Packet) -> Option<u32> {
    let ethertype = ctx.load::<u16>(12).ok()?;
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_v4(ctx, pkt),
        ETH_P_IPV6 => parse_v6(ctx, pkt),
        _ => None,
    }
}

/// A first fragment's ports are remembered; a later fragment gets them.
/// `Ok(false)`: a later fragment whose first was not seen, not VIP-bound.
// Not inlined, like the header parsers: each keeps its copies in its own
// frame, and only one of them is on the stack at a time.
#[inline(never)]
fn follow_fragment(pkt: &mut Packet, id: u32) -> Result<bool, DropReason> {
    let key = FragKey { src: pkt.src, dst: pkt.dst, id, proto: pkt.proto, family: pkt.family, _pad: [0; 2] };
    if pkt.frag == Frag::First {
        if pkt.problem.is_none() {
            let ports = FragValue { sport: pkt.sport, dport: pkt.dport };
            // A full map evicts its oldest datagram (LRU): nothing to handle.
            let _ = FERRY_FRAGS.insert(&key, &ports, 0);
        }
        return Ok(true);
    }
    match FERRY_FRAGS.get_ptr(&key) {
        Some(v) => {
            // SAFETY: map value pointer, read once.
            let v = unsafe { *v };
            pkt.sport = v.sport;
            pkt.dport = v.dport;
            count_global(GlobalCounter::FragmentFollowed);
            Ok(true)
        }
        None => {
            let vip = EndpointKey { addr: pkt.dst, family: pkt.family, _pad: [0; 3] };
            if FERRY_VIPS.get_ptr(&vip).is_some() {
                Err(DropReason::Fragment)
            } else {
                Ok(false)
            }
        }
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, pkt: &mut Packet) -> Option<u32> {
    const MF: u16 = 0x2000;
    const OFFSET: u16 = 0x1fff;
    let ip = ctx.load::<Ipv4Hdr>(ETH_HLEN).ok()?;
    if ip.vihl >> 4 != 4 || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return None;
    }
    let ihl = ((ip.vihl & 0x0f) as u16) * 4;
    if ihl < 20 {
        return None;
    }
    let frag_off = u16::from_be(ip.frag_off);
    let tot_len = u16::from_be(ip.tot_len);
    let (src, dst) = ([ip.saddr, 0, 0, 0], [ip.daddr, 0, 0, 0]);
    let len_ok = ip_len_matches(ctx, tot_len as u32) && tot_len >= ihl;
    let ip_problem = if ihl != 20 {
        Some(DropReason::Unsupported)
    } else if !len_ok {
        Some(DropReason::Malformed)
    } else {
        None
    };
    if frag_off & OFFSET != 0 {
        // A later fragment: no L4 header, its ports come from the first.
        *pkt = Packet::new(AF_INET, ip.proto, src, dst, [0, 0]);
        pkt.frag = Frag::Later;
        pkt.problem = ip_problem;
        return Some(ip.id as u32);
    }
    let l4 = ETH_HLEN + ihl as usize;
    let ports = ctx.load::<[u16; 2]>(l4).ok()?;
    *pkt = Packet::new(AF_INET, ip.proto, src, dst, ports);
    if frag_off & MF != 0 {
        pkt.frag = Frag::First;
    }
    // The L4 header is only read when the IP header is sound.
    pkt.problem = match ip_problem {
        Some(p) => Some(p),
        None => check_l4(ctx, pkt, tot_len - ihl),
    };
    Some(ip.id as u32)
}

/// The IPv6 fragment header (RFC 8200 4.5).
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6FragHdr {
    nexthdr: u8,
    _reserved: u8,
    /// Offset in 8-byte units (13 bits), 2 reserved bits, M (more).
    off_m: u16,
    id: u32,
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, pkt: &mut Packet) -> Option<u32> {
    let ip = ctx.load::<Ipv6Hdr>(ETH_HLEN).ok()?;
    if (ip.vtc_flow & 0xf0) != 0x60 {
        return None;
    }
    let payload = u16::from_be(ip.payload_len);
    let len_ok = ip_len_matches(ctx, payload as u32 + 40);
    let (mut proto, mut l4_len, mut frag, mut id) = (ip.nexthdr, payload, Frag::Whole, 0);
    if ip.nexthdr == IPPROTO_FRAGMENT {
        // One fragment header right after the fixed header (where Linux
        // puts it); any other extension header is passed untouched.
        let fh = ctx.load::<Ipv6FragHdr>(IP6_L4_OFF).ok()?;
        let off_m = u16::from_be(fh.off_m);
        proto = fh.nexthdr;
        l4_len = payload.wrapping_sub(IP6_FRAG_HLEN as u16);
        id = fh.id;
        frag = if off_m & 0xfff8 != 0 {
            Frag::Later
        } else if off_m & 1 != 0 {
            Frag::First
        } else {
            Frag::Whole
        };
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let frag_hdr = ip.nexthdr == IPPROTO_FRAGMENT;
    *pkt = Packet::new(AF_INET6, proto, ip.saddr, ip.daddr, [0, 0]);
    pkt.frag = frag;
    pkt.frag_hdr = frag_hdr;
    if frag == Frag::Later {
        pkt.problem = if len_ok && payload >= IP6_FRAG_HLEN as u16 { None } else { Some(DropReason::Malformed) };
        return Some(id);
    }
    let ports = ctx.load::<[u16; 2]>(pkt.l4_off()).ok()?;
    pkt.sport = ports[0];
    pkt.dport = ports[1];
    pkt.problem = if !len_ok || (frag_hdr && payload < IP6_FRAG_HLEN as u16) {
        Some(DropReason::Malformed)
    } else {
        check_l4(ctx, pkt, l4_len)
    };
    Some(id)
}

/// The IP length must cover exactly the frame after the Ethernet header
/// (short frames may carry Ethernet padding after it).
#[inline(always)]
fn ip_len_matches(ctx: &TcContext, ip_len: u32) -> bool {
    let avail = ctx.len().saturating_sub(ETH_HLEN as u32);
    ip_len == avail || (ip_len < avail && ctx.len() <= ETH_MIN_FRAME)
}

/// Checks the L4 header is whole and consistent with the IP length
/// `l4_len` (this packet's L4 bytes); fills in the TCP flags and payload
/// length. A first fragment holds only the start of its datagram: the
/// header must be whole in it, and a UDP length must exceed it.
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
        let consistent = if pkt.frag == Frag::First { udp_len > l4_len } else { udp_len == l4_len };
        if !consistent {
            return Some(DropReason::Malformed);
        }
        pkt.l4_payload = l4_len - UDP_HLEN;
    }
    None
}

/// The first bytes of an ICMP / ICMPv6 message.
#[derive(Clone, Copy)]
pub struct Icmp {
    pub ty: u8,
    /// The identifier of an echo request or reply (network order).
    pub id: u16,
}

impl Icmp {
    pub const EMPTY: Icmp = Icmp { ty: 0xff, id: 0 };
}

/// Parses an unfragmented Ethernet + IPv4 (no options) / IPv6 (no
/// extension header) + ICMP / ICMPv6 packet into `pkt` (ports 0) and its
/// ICMP header into `icmp`. False: anything else, or lengths that do not
/// add up; such packets are passed untouched.
// Out-parameters, not an Option<Icmp> return: the verifier refused the
// partly undefined register LLVM returned the None in.
#[inline(never)]
pub fn parse_icmp(ctx: &TcContext, pkt: &mut Packet, icmp: &mut Icmp) -> bool {
    match icmp_headers(ctx, pkt) {
        Some(h) => {
            icmp.ty = h[0];
            icmp.id = u16::from_ne_bytes([h[4], h[5]]);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn icmp_headers(ctx: &TcContext, pkt: &mut Packet) -> Option<[u8; 8]> {
    let ethertype = ctx.load::<u16>(12).ok()?;
    match u16::from_be(ethertype) {
        ETH_P_IP => {
            let ip = ctx.load::<Ipv4Hdr>(ETH_HLEN).ok()?;
            // Neither options nor fragments: an ICMP error must quote its
            // datagram's header whole, and echo identifiers live only in
            // the first fragment.
            if ip.vihl != 0x45 || ip.proto != IPPROTO_ICMP || u16::from_be(ip.frag_off) & 0x3fff != 0 {
                return None;
            }
            let tot_len = u16::from_be(ip.tot_len);
            if !ip_len_matches(ctx, tot_len as u32) || tot_len < 20 + ICMP_HLEN {
                return None;
            }
            *pkt = Packet::new(AF_INET, IPPROTO_ICMP, [ip.saddr, 0, 0, 0], [ip.daddr, 0, 0, 0], [0, 0]);
            pkt.l4_payload = tot_len - 20 - ICMP_HLEN;
        }
        ETH_P_IPV6 => {
            let ip = ctx.load::<Ipv6Hdr>(ETH_HLEN).ok()?;
            let payload = u16::from_be(ip.payload_len);
            if (ip.vtc_flow & 0xf0) != 0x60
                || ip.nexthdr != IPPROTO_ICMPV6
                || !ip_len_matches(ctx, payload as u32 + 40)
                || payload < ICMP_HLEN
            {
                return None;
            }
            *pkt = Packet::new(AF_INET6, IPPROTO_ICMPV6, ip.saddr, ip.daddr, [0, 0]);
            pkt.l4_payload = payload - ICMP_HLEN;
        }
        _ => return None,
    }
    ctx.load::<[u8; 8]>(pkt.l4_off()).ok()
}

/// The ICMP header: type, code, checksum, and 4 bytes (identifier and
/// sequence, or unused / next-hop MTU).
pub const ICMP_HLEN: u16 = 8;

/// The datagram an ICMP error quotes, as far as a translation needs it.
pub struct Quoted {
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports as quoted; an echo request's identifier as `sport` (and
    /// `dport` 0), as the masquerade keys an echo.
    pub sport: u16,
    pub dport: u16,
    /// Offset of the quoted IP header.
    pub ip_off: usize,
    /// Offset of the quoted L4 header.
    pub l4_off: usize,
}

/// The datagram quoted by the ICMP error `outer` (parsed by
/// [`parse_icmp`]): an IPv4 header without options or an IPv6 header
/// without extensions, then TCP, UDP or an echo request, of the outer's
/// family. None: anything else (passed untouched).
#[inline(never)]
pub fn parse_quoted(ctx: &TcContext, outer: &Packet) -> Option<Quoted> {
    let ip_off = outer.l4_off() + ICMP_HLEN as usize;
    let (proto, src, dst, l4_off) = if outer.family == AF_INET {
        let ip = ctx.load::<Ipv4Hdr>(ip_off).ok()?;
        if ip.vihl != 0x45 {
            return None;
        }
        (ip.proto, [ip.saddr, 0, 0, 0], [ip.daddr, 0, 0, 0], ip_off + 20)
    } else {
        let ip = ctx.load::<Ipv6Hdr>(ip_off).ok()?;
        if (ip.vtc_flow & 0xf0) != 0x60 {
            return None;
        }
        (ip.nexthdr, ip.saddr, ip.daddr, ip_off + 40)
    };
    // RFC 792 / 4443 quote at least 8 bytes of the datagram: its ports, or
    // an echo's identifier.
    let l4 = ctx.load::<[u16; 4]>(l4_off).ok()?;
    let echo = l4[0].to_ne_bytes()[0] == echo_request(outer.family);
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (l4[0], l4[1]),
        IPPROTO_ICMP if outer.family == AF_INET && echo => (l4[2], 0),
        IPPROTO_ICMPV6 if outer.family == AF_INET6 && echo => (l4[2], 0),
        _ => return None,
    };
    Some(Quoted { proto, src, dst, sport, dport, ip_off, l4_off })
}

/// ICMP types the masquerade knows, by family.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;

#[inline(always)]
pub fn echo_request(family: u8) -> u8 {
    if family == AF_INET {
        ICMP_ECHO_REQUEST
    } else {
        ICMP6_ECHO_REQUEST
    }
}

#[inline(always)]
pub fn echo_reply(family: u8) -> u8 {
    if family == AF_INET {
        ICMP_ECHO_REPLY
    } else {
        ICMP6_ECHO_REPLY
    }
}

/// Whether `icmp` is an error that quotes the datagram it is about:
/// destination unreachable (frag-needed among them) and time exceeded for
/// IPv4; destination unreachable, packet too big and time exceeded for
/// IPv6.
#[inline(always)]
pub fn is_icmp_error(family: u8, icmp: &Icmp) -> bool {
    if family == AF_INET {
        icmp.ty == 3 || icmp.ty == 11
    } else {
        icmp.ty == 1 || icmp.ty == 2 || icmp.ty == 3
    }
}
