//! to-pod reverse NAT, the hairpin reply path, and in-place rejection of
//! new flows to a Service with no endpoints.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use ferry_common::{DropReason, RevNatValue, AF_INET, HAIRPIN_V4, HAIRPIN_V6, IPPROTO_TCP};

use crate::{
    conntrack::{flow_key, note_reply},
    csum::{set_addr, set_l4_word, set_port},
    maps::FERRY_REVNAT,
    parse::{
        parse, Packet, IP4_DST_OFF, IP4_SRC_OFF, IP6_DST_OFF, IP6_SRC_OFF, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
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
fn revnat(pkt: &Packet) -> Option<RevNatValue> {
    // SAFETY: map value pointer, copied once.
    FERRY_REVNAT.get_ptr(&flow_key(pkt)).map(|v| unsafe { *v })
}

/// tcx egress: a backend's reply on its way into the client pod gets the
/// VIP:port back as its source.
pub fn try_to_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(pkt) = parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    if pkt.problem.is_some() {
        // Never rewrite what we could not fully validate.
        return Ok(TC_ACT_OK as i32);
    }
    let Some(rn) = revnat(&pkt) else {
        return Ok(TC_ACT_OK as i32);
    };
    set_addr(ctx, &pkt, IP4_SRC_OFF, IP6_SRC_OFF, &pkt.src, &rn.vip)?;
    set_port(ctx, &pkt, pkt.l4_off(), pkt.sport, rn.vip_port)?;
    note_reply(&pkt, &pkt.dst, pkt.dport, &rn.vip, rn.vip_port);
    Ok(TC_ACT_OK as i32)
}

/// from-pod, destination = hairpin address: the reply of a pod that reached
/// itself through a Service. Source becomes the VIP:port, destination the
/// pod again; the node then routes it back down the same veth.
pub fn hairpin_reply(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    if let Some(reason) = pkt.problem {
        return Err(reason);
    }
    let Some(rn) = revnat(pkt) else {
        return Ok(TC_ACT_OK as i32);
    };
    set_addr(ctx, pkt, IP4_SRC_OFF, IP6_SRC_OFF, &pkt.src, &rn.vip)?;
    set_port(ctx, pkt, pkt.l4_off(), pkt.sport, rn.vip_port)?;
    set_addr(ctx, pkt, IP4_DST_OFF, IP6_DST_OFF, &pkt.dst, &rn.orig_client)?;
    note_reply(pkt, &rn.orig_client, pkt.dport, &rn.vip, rn.vip_port);
    Ok(TC_ACT_OK as i32)
}

/// A new flow to a Service with no endpoints. TCP: answer with a RST built
/// in place and sent straight back into the pod, so connect() fails at once
/// (RFC 9293 3.10.7.1: seq = SEG.ACK if ACK is set, else seq 0 and ack =
/// SEG.SEQ + SEG.LEN). UDP: dropped and counted (an ICMP port unreachable
/// would need the packet grown in front; not built yet).
pub fn reject(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    if pkt.proto != IPPROTO_TCP || pkt.tcp_flags & TCP_RST != 0 {
        return Err(DropReason::NoEndpoints);
    }
    let l4 = pkt.l4_off();
    let hdr = ctx.load::<[u32; 4]>(l4).map_err(|_| DropReason::Malformed)?;
    let (old_seq, old_ack, old_word) = (hdr[1], hdr[2], hdr[3]);

    // Swapping source and destination (MAC, IP, port) leaves every
    // checksum unchanged: one's-complement sums commute.
    let macs = ctx.load::<[u8; 12]>(0).map_err(|_| DropReason::Malformed)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    store(ctx, 0, &swapped)?;
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
    // SAFETY: reading the ifindex field of the skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; redirect to the egress of the veth the
    // packet came in on, i.e. back into the pod.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::HelperFailed);
    }
    Ok(TC_ACT_REDIRECT as i32)
}

#[inline(always)]
fn store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), DropReason> {
    ctx.store(off, v, 0).map_err(|_| DropReason::HelperFailed)
}
