//! Checksum-preserving field rewrites.
//!
//! `bpf_l3/l4_csum_replace` update the checksum incrementally and know about
//! `CHECKSUM_PARTIAL` skbs (GSO packets from a local stack over veth): with
//! `BPF_F_PSEUDO_HDR` they fix the pseudo-header sum that the partial
//! checksum holds, and without it they leave a partial checksum alone
//! (the payload sum is finished later). Verified on this machine's kernel.
//!
//! A later fragment ([`Packet::has_l4`] false) has no L4 header: its
//! address rewrites touch only the IP header (the datagram's L4 checksum,
//! pseudo-header included, lives in the first fragment and was fixed
//! there), and its port rewrites are no-ops.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use ferry_common::{DropReason, IPPROTO_ICMP, IPPROTO_UDP};

use crate::parse::{Packet, IP4_CSUM_OFF};

#[inline(always)]
fn l4_flags(pkt: &Packet) -> u64 {
    // An IPv4 UDP checksum of 0 means "none": keep it 0 (and never produce
    // a 0 from a real sum). IPv6 UDP checksums are mandatory, but the flag
    // is harmless there.
    if pkt.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Rewrites a 4-byte IPv4 address at `off` (source or destination).
#[inline(always)]
pub fn set_addr4(ctx: &TcContext, pkt: &Packet, off: usize, old: u32, new: u32) -> Result<(), DropReason> {
    ctx.store(off, &new, 0).map_err(|_| DropReason::HelperFailed)?;
    ctx.l3_csum_replace(IP4_CSUM_OFF, old as u64, new as u64, 4).map_err(|_| DropReason::HelperFailed)?;
    // The ICMPv4 checksum has no pseudo-header (ICMPv6's has, below).
    if !pkt.has_l4() || pkt.proto == IPPROTO_ICMP {
        return Ok(());
    }
    ctx.l4_csum_replace(pkt.l4_csum_off(), old as u64, new as u64, BPF_F_PSEUDO_HDR as u64 | l4_flags(pkt) | 4)
        .map_err(|_| DropReason::HelperFailed)
}

/// Rewrites a 16-byte IPv6 address at `off`: one checksum diff for all
/// four words (IPv6 has no header checksum).
#[inline(always)]
pub fn set_addr6(ctx: &TcContext, pkt: &Packet, off: usize, old: &[u32; 4], new: &[u32; 4]) -> Result<(), DropReason> {
    if !pkt.has_l4() {
        return ctx.store(off, new, 0).map_err(|_| DropReason::HelperFailed);
    }
    let mut from = *old;
    let mut to = *new;
    // SAFETY: both buffers are 16 bytes on our stack.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return Err(DropReason::HelperFailed);
    }
    ctx.store(off, new, 0).map_err(|_| DropReason::HelperFailed)?;
    // size 0: `to` is a precomputed checksum difference.
    ctx.l4_csum_replace(pkt.l4_csum_off(), 0, diff as u64, BPF_F_PSEUDO_HDR as u64 | l4_flags(pkt))
        .map_err(|_| DropReason::HelperFailed)
}

/// Rewrites the address at `off4` (IPv4) / `off6` (IPv6) by family.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    pkt: &Packet,
    off4: usize,
    off6: usize,
    old: &[u32; 4],
    new: &[u32; 4],
) -> Result<(), DropReason> {
    if pkt.family == ferry_common::AF_INET {
        set_addr4(ctx, pkt, off4, old[0], new[0])
    } else {
        set_addr6(ctx, pkt, off6, old, new)
    }
}

/// Rewrites a 2-byte L4 port at `off` (not part of the pseudo-header).
#[inline(always)]
pub fn set_port(ctx: &TcContext, pkt: &Packet, off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new || !pkt.has_l4() {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| DropReason::HelperFailed)?;
    ctx.l4_csum_replace(pkt.l4_csum_off(), old as u64, new as u64, l4_flags(pkt) | 2)
        .map_err(|_| DropReason::HelperFailed)
}

/// Rewrites a 4-byte word of the L4 header at `off` (TCP seq/ack/flags,
/// options), outside the pseudo-header.
#[inline(always)]
pub fn set_l4_word(ctx: &TcContext, pkt: &Packet, off: usize, old: u32, new: u32) -> Result<(), DropReason> {
    ctx.store(off, &new, 0).map_err(|_| DropReason::HelperFailed)?;
    ctx.l4_csum_replace(pkt.l4_csum_off(), old as u64, new as u64, l4_flags(pkt) | 4)
        .map_err(|_| DropReason::HelperFailed)
}
