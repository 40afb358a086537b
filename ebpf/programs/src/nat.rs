//! to-pod reverse NAT, the hairpin reply path, and in-place rejection of
//! new flows to a Service with no endpoints.
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_NET, TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use ferry_common::{DropReason, RevNatValue, AF_INET, HAIRPIN_V4, HAIRPIN_V6, IPPROTO_TCP};

use crate::{
    conntrack::{flow_key, note_reply},
    csum::{set_addr, set_l4_word, set_port},
    maps::FERRY_REVNAT,
    parse::{
        parse, Frag, Packet, ETH_HLEN, IP4_DST_OFF, IP4_SRC_OFF, IP6_DST_OFF, IP6_SRC_OFF, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
};

/// The hairpin SNAT address of `family`, in map (wire) layout.
#[inline(always)]
pub fn hairpin_addr(family: u8) -> [u32; 4] {
    if family == AF_INET {
        [u32::from_ne_bytes(HAIRPIN_V4), 0, 0, 0]
    } else {
        let b = HAIRPIN_V6;
        [
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ]
    }
}

#[inline(always)]
pub fn revnat(pkt: &Packet) -> Option<RevNatValue> {
    // SAFETY: map value pointer, copied once.
    FERRY_REVNAT.get_ptr(flow_key(pkt)).map(|v| unsafe { *v })
}

/// tcx egress: a backend's reply on its way into the client pod gets the
/// VIP:port back as its source.
pub fn try_to_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Packet::EMPTY;
    if !parse(ctx, &mut pkt)? {
        return Ok(TC_ACT_OK);
    }
    if pkt.problem.is_some() {
        // Never rewrite what we could not fully validate.
        return Ok(TC_ACT_OK);
    }
    let Some(rn) = revnat(&pkt) else {
        return Ok(TC_ACT_OK);
    };
    set_addr(ctx, &pkt, IP4_SRC_OFF, IP6_SRC_OFF, &pkt.src, &rn.vip)?;
    set_port(ctx, &pkt, pkt.l4_off(), pkt.sport, rn.vip_port)?;
    note_reply(&pkt, &pkt.dst, pkt.dport, &rn.vip, rn.vip_port);
    Ok(TC_ACT_OK)
}

/// from-pod, destination = hairpin address: the reply of a pod that reached
/// itself through a Service. Source becomes the VIP:port, destination the
/// pod again; the node then routes it back down the same veth.
#[inline(never)]
pub fn hairpin_reply(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    if let Some(reason) = pkt.problem {
        return Err(reason);
    }
    let Some(rn) = revnat(pkt) else {
        return Ok(TC_ACT_OK);
    };
    set_addr(ctx, pkt, IP4_SRC_OFF, IP6_SRC_OFF, &pkt.src, &rn.vip)?;
    set_port(ctx, pkt, pkt.l4_off(), pkt.sport, rn.vip_port)?;
    set_addr(ctx, pkt, IP4_DST_OFF, IP6_DST_OFF, &pkt.dst, &rn.orig_client)?;
    note_reply(pkt, &rn.orig_client, pkt.dport, &rn.vip, rn.vip_port);
    Ok(TC_ACT_OK)
}

/// A new flow to a Service with no endpoints, answered in place and sent
/// straight back into the pod so the client fails at once instead of
/// waiting for a timeout: TCP gets a RST, UDP an ICMP / ICMPv6 port
/// unreachable (what a closed port answers).
#[inline(never)]
pub fn reject(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    // A fragment is answered only when it is an IPv4 UDP first fragment,
    // whose error can quote the UDP header as RFC 792 asks; the others
    // (later fragments have no ports, an IPv6 quote would need the
    // fragment header too, a TCP fragment's RST its whole segment length)
    // are dropped and counted.
    if pkt.frag_hdr || pkt.frag == Frag::Later || (pkt.frag == Frag::First && pkt.proto == IPPROTO_TCP) {
        return Err(DropReason::NoEndpoints);
    }
    if pkt.proto == IPPROTO_TCP {
        if pkt.tcp_flags & TCP_RST != 0 {
            // Never answer a RST (RFC 9293 3.10.7.1).
            return Err(DropReason::NoEndpoints);
        }
        rst(ctx, pkt)?;
    } else if pkt.family == AF_INET {
        icmp4_unreachable(ctx, pkt)?;
    } else {
        icmp6_unreachable(ctx, pkt)?;
    }
    bounce(ctx)
}

/// RST built over the offending segment (RFC 9293 3.10.7.1: seq = SEG.ACK
/// if ACK is set, else seq 0 and ack = SEG.SEQ + SEG.LEN).
// Not inlined: a call frame of its own keeps from-pod under the 512-byte
// BPF stack limit.
#[inline(never)]
fn rst(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    let l4 = pkt.l4_off();
    let hdr = ctx.load::<[u32; 4]>(l4).map_err(|_| DropReason::Malformed)?;
    let (old_seq, old_ack, old_word) = (hdr[1], hdr[2], hdr[3]);

    // Swapping source and destination (IP, port) leaves every checksum
    // unchanged: one's-complement sums commute.
    if pkt.family == AF_INET {
        store(ctx, IP4_SRC_OFF, &pkt.dst[0])?;
        store(ctx, IP4_DST_OFF, &pkt.src[0])?;
    } else {
        store(ctx, IP6_SRC_OFF, &pkt.dst)?;
        store(ctx, IP6_DST_OFF, &pkt.src)?;
    }
    store(ctx, l4, &[pkt.dport, pkt.sport])?;

    let (seq, ack, flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (old_ack, 0u32, TCP_RST)
    } else {
        let mut seg_len = pkt.l4_payload as u32;
        if pkt.tcp_flags & TCP_SYN != 0 {
            seg_len += 1;
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            seg_len += 1;
        }
        let ack = u32::from_be(old_seq).wrapping_add(seg_len).to_be();
        (0u32, ack, TCP_RST | TCP_ACK)
    };
    let ob = old_word.to_ne_bytes();
    // Keep the data offset; new flags; window 0.
    let word = u32::from_ne_bytes([ob[0], flags, 0, 0]);
    set_l4_word(ctx, pkt, l4 + 4, old_seq, seq)?;
    set_l4_word(ctx, pkt, l4 + 8, old_ack, ack)?;
    set_l4_word(ctx, pkt, l4 + 12, old_word, word)?;
    // The SYN's options (MSS, timestamps, ...) mean nothing in a RST: make
    // them NOPs rather than resize the packet.
    let opt_words = (pkt.tcp_hlen as usize).saturating_sub(20) / 4;
    let mut i = 0;
    while i < 10 {
        if i >= opt_words {
            break;
        }
        let off = l4 + 20 + i * 4;
        let old = ctx.load::<u32>(off).map_err(|_| DropReason::Malformed)?;
        set_l4_word(ctx, pkt, off, old, 0x0101_0101)?;
        i += 1;
    }
    Ok(())
}

/// Folds a 32-bit one's-complement sum (from `bpf_csum_diff`) into the
/// 16-bit checksum, in the byte order it is stored in.
#[inline(always)]
fn csum_fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// One's-complement sum of `buf` (a multiple of 4 bytes, on the stack).
#[inline(always)]
fn csum_of<const N: usize>(buf: &mut [u8; N]) -> Result<i64, DropReason> {
    // SAFETY: `buf` is N bytes of our stack; "from" is empty.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr().cast(), N as u32, 0) };
    if s < 0 {
        Err(DropReason::HelperFailed)
    } else {
        Ok(s)
    }
}

/// Makes room for the ICMP header and the quoted original IP header right
/// after the IP header, and cuts the quoted datagram to its first 8 bytes
/// (its UDP header), as RFC 792 / RFC 4443 2.4 ask.
#[inline(always)]
fn make_icmp_room(ctx: &TcContext, grow: i32, total: u32) -> Result<(), DropReason> {
    ctx.adjust_room(grow, BPF_ADJ_ROOM_NET, 0).map_err(|_| DropReason::HelperFailed)?;
    // SAFETY: helper on our own skb.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, total, 0) };
    if ret != 0 {
        return Err(DropReason::HelperFailed);
    }
    Ok(())
}

/// eth | IPv4 | UDP ... -> eth | IPv4 (VIP -> client) | ICMP 3/3 | quoted IPv4 | UDP header.
// Not inlined: a call frame of its own keeps from-pod under the 512-byte
// BPF stack limit.
#[inline(never)]
fn icmp4_unreachable(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    const IP: usize = 20;
    const ICMP_LEN: usize = 8 + IP + 8;
    let mut icmp = [0u8; ICMP_LEN];
    load_into(ctx, ETH_HLEN, &mut icmp[8..8 + IP])?;
    load_into(ctx, pkt.l4_off(), &mut icmp[8 + IP..])?;
    make_icmp_room(ctx, (8 + IP) as i32, (ETH_HLEN + IP + ICMP_LEN) as u32)?;
    icmp[0] = 3; // destination unreachable
    icmp[1] = 3; // port unreachable
    let c = csum_fold(csum_of(&mut icmp)?).to_ne_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];

    let mut ip = [0u8; IP];
    ip[0] = 0x45;
    ip[1] = 0xc0; // internetwork control, as the kernel sends ICMP errors
    ip[2..4].copy_from_slice(&((IP + ICMP_LEN) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1; // ICMP
               // Quoted header: source at 8+12, destination at 8+16.
    ip[12..16].copy_from_slice(&icmp[8 + 16..8 + 20]);
    ip[16..20].copy_from_slice(&icmp[8 + 12..8 + 16]);
    let c = csum_fold(csum_of(&mut ip)?).to_ne_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    store(ctx, ETH_HLEN, &ip)?;
    store(ctx, ETH_HLEN + IP, &icmp)
}

/// eth | IPv6 | UDP ... -> eth | IPv6 (VIP -> client) | ICMPv6 1/4 | quoted IPv6 | UDP header.
// Not inlined: a call frame of its own keeps from-pod under the 512-byte
// BPF stack limit.
#[inline(never)]
fn icmp6_unreachable(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    const IP: usize = 40;
    const ICMP_LEN: usize = 8 + IP + 8;
    const M: usize = 40;
    // The ICMPv6 checksum covers a pseudo-header (RFC 4443 2.3): source,
    // destination, length, next header; built in one buffer with the
    // message, which is read straight into place (stack is scarce).
    let mut sum = [0u8; M + ICMP_LEN];
    load_into(ctx, ETH_HLEN, &mut sum[M + 8..M + 8 + IP])?;
    load_into(ctx, pkt.l4_off(), &mut sum[M + 8 + IP..])?;
    make_icmp_room(ctx, (8 + IP) as i32, (ETH_HLEN + IP + ICMP_LEN) as u32)?;
    // Quoted header: source at 8..24, destination at 24..40.
    sum.copy_within(M + 8 + 24..M + 8 + 40, 0);
    sum.copy_within(M + 8 + 8..M + 8 + 24, 16);
    sum[32..36].copy_from_slice(&(ICMP_LEN as u32).to_be_bytes());
    sum[39] = 58; // ICMPv6
    sum[M] = 1; // destination unreachable
    sum[M + 1] = 4; // port unreachable
    let c = csum_fold(csum_of(&mut sum)?).to_ne_bytes();
    sum[M + 2] = c[0];
    sum[M + 3] = c[1];

    let mut ip = [0u8; 8];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(ICMP_LEN as u16).to_be_bytes());
    ip[6] = 58;
    ip[7] = 64;
    store(ctx, ETH_HLEN, &ip)?;
    let addrs: &[u8; 32] = sum[0..32].try_into().map_err(|_| DropReason::HelperFailed)?;
    store(ctx, ETH_HLEN + 8, addrs)?;
    let icmp: &[u8; ICMP_LEN] = sum[M..].try_into().map_err(|_| DropReason::HelperFailed)?;
    store(ctx, ETH_HLEN + IP, icmp)
}

/// Reads `dst.len()` packet bytes at `off` straight into `dst`.
#[inline(always)]
fn load_into(ctx: &TcContext, off: usize, dst: &mut [u8]) -> Result<(), DropReason> {
    // SAFETY: `dst` is writable for its length.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), off as u32, dst.as_mut_ptr().cast(), dst.len() as u32) };
    if ret != 0 {
        return Err(DropReason::Malformed);
    }
    Ok(())
}

/// Swaps the MACs and sends the packet out of the veth it came in on, i.e.
/// back into the pod.
fn bounce(ctx: &TcContext) -> Result<i32, DropReason> {
    let macs = ctx.load::<[u8; 12]>(0).map_err(|_| DropReason::Malformed)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    store(ctx, 0, &swapped)?;
    // SAFETY: reading the ifindex field of the skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::HelperFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

#[inline(always)]
fn store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), DropReason> {
    ctx.store(off, v, 0).map_err(|_| DropReason::HelperFailed)
}
