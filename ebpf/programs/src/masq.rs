//! Egress masquerade at the node's uplink: tc egress (to-net) SNATs pod
//! traffic leaving the cluster to the uplink's address, tc ingress
//! (from-net) gives the replies, and the ICMP errors about those flows,
//! their pod's address back. Nothing of it is a netfilter rule.
//!
//! A pod's packet is masqueraded when its source is in `FERRY_MASQ_SRC`
//! (this node's pod CIDRs) and its destination is not in `FERRY_NONMASQ`
//! (the cluster's pod CIDRs and nodes, or the operator's list), on an
//! uplink with an entry in `FERRY_MASQ_IFACES`.
//!
//! Ports: a new flow takes a random port of the uplink's range; the
//! reverse entry is inserted first with `BPF_NOEXIST`, and that insert is
//! the claim, so two flows can never hold the same (remote address, remote
//! port, protocol, SNAT port), on any CPU. A taken port is retried with
//! another random one, `SNAT_TRIES` times (a range that small is walked
//! whole); then the flow is dropped and counted (`NatPortsExhausted`),
//! never given a used port. The range
//! (default 61000-65535) is outside the kernel's ephemeral range, and the
//! agent reserves it (`ip_local_reserved_ports`), so the node's own
//! connections never use it. Because the remote end is part of the key, the
//! range is per destination: 4,536 flows to each remote address and port.
//!
//! The maps are plain hash maps: a translation is never evicted while its
//! flow lives. The agent expires entries by protocol state (the
//! `ct_flags` kept in each direction's entry and the last-seen time).
use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK},
    helpers::{bpf_csum_diff, bpf_get_prandom_u32},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use ferry_common::{ct_flags, DropReason, GlobalCounter, LpmAddr, MasqIface, NatEntry, NatKey, AF_INET, IPPROTO_TCP};

use crate::{
    conntrack::{flow_key, now_ns},
    csum::{set_addr, set_port},
    maps::{count_global, FERRY_MASQ_IFACES, FERRY_MASQ_SRC, FERRY_NONMASQ, FERRY_SNAT, FERRY_SNAT_REV},
    parse::{
        echo_reply, echo_request, is_icmp_error, parse, parse_icmp, parse_quoted, Icmp, Packet, Quoted, IP4_DST_OFF,
        IP4_SRC_OFF, IP6_DST_OFF, IP6_SRC_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

/// Random ports tried for a new flow before it is dropped.
const SNAT_TRIES: u32 = 32;
/// How stale an entry's last-seen time may get before a packet refreshes it.
const REFRESH_NS: u64 = 1_000_000_000;
const EEXIST: i32 = 17;

/// tcx egress of the uplink.
pub fn try_to_net(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(iface) = uplink(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let mut pkt = Packet::EMPTY;
    if parse(ctx, &mut pkt)? {
        if pkt.problem.is_some() {
            // Never rewrite what we could not fully validate.
            return Ok(TC_ACT_OK);
        }
        return snat(ctx, &pkt, &iface, pkt.l4_off());
    }
    let mut icmp = Icmp::EMPTY;
    if !parse_icmp(ctx, &mut pkt, &mut icmp) {
        return Ok(TC_ACT_OK);
    }
    if icmp.ty == echo_request(pkt.family) {
        pkt.sport = icmp.id;
        return snat(ctx, &pkt, &iface, pkt.l4_off() + 4);
    }
    if is_icmp_error(pkt.family, &icmp) {
        return icmp_error_out(ctx, &pkt, &iface);
    }
    Ok(TC_ACT_OK)
}

/// tcx ingress of the uplink.
pub fn try_from_net(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(iface) = uplink(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let mut pkt = Packet::EMPTY;
    if parse(ctx, &mut pkt)? {
        if pkt.problem.is_some() || pkt.dst != nat_addr(&iface, pkt.family) {
            return Ok(TC_ACT_OK);
        }
        return reverse(ctx, &pkt, pkt.l4_off() + 2);
    }
    let mut icmp = Icmp::EMPTY;
    if !parse_icmp(ctx, &mut pkt, &mut icmp) {
        return Ok(TC_ACT_OK);
    }
    if pkt.dst != nat_addr(&iface, pkt.family) {
        return Ok(TC_ACT_OK);
    }
    if icmp.ty == echo_reply(pkt.family) {
        pkt.dport = icmp.id;
        return reverse(ctx, &pkt, pkt.l4_off() + 4);
    }
    if is_icmp_error(pkt.family, &icmp) {
        return icmp_error_in(ctx, &pkt);
    }
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn uplink(ctx: &TcContext) -> Option<MasqIface> {
    // SAFETY: reading the ifindex field of the skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value pointer, copied once.
    FERRY_MASQ_IFACES.get_ptr(ifindex).map(|v| unsafe { *v })
}

/// The uplink's address of `family` in map layout; all zero when that
/// family is not masqueraded there.
#[inline(always)]
fn nat_addr(iface: &MasqIface, family: u8) -> [u32; 4] {
    if family == AF_INET {
        [iface.addr4, 0, 0, 0]
    } else {
        iface.addr6
    }
}

#[inline(always)]
fn lpm_key(family: u8, addr: &[u32; 4]) -> Key<LpmAddr> {
    let bits = if family == AF_INET { 32 } else { 128 };
    Key::new(LpmAddr::FAMILY_BITS + bits, LpmAddr { family: [family, 0, 0, 0], addr: *addr })
}

/// Whether a packet from `src` to `dst` is to be masqueraded.
// Not inlined: the trie keys stay out of the callers' frames.
#[inline(never)]
fn masquerades(family: u8, src: &[u32; 4], dst: &[u32; 4]) -> bool {
    FERRY_MASQ_SRC.get(lpm_key(family, src)).is_some() && FERRY_NONMASQ.get(lpm_key(family, dst)).is_none()
}

#[inline(always)]
fn tcp_bits(pkt: &Packet) -> u32 {
    let mut f = 0;
    if pkt.proto == IPPROTO_TCP {
        if pkt.tcp_flags & TCP_FIN != 0 {
            f |= ct_flags::FIN_SEEN;
        }
        if pkt.tcp_flags & TCP_RST != 0 {
            f |= ct_flags::RST_SEEN;
        }
    }
    f
}

/// Notes a packet of the entry's direction: flag bits, and the last-seen
/// time when it has aged. A TCP SYN on a tuple whose connection had closed
/// starts a new connection: its closing flags go.
#[inline(always)]
fn touch(entry: &mut NatEntry, pkt: &Packet, extra: u32, now: u64) {
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        entry.flags = 0;
    }
    let flags = entry.flags | tcp_bits(pkt) | extra;
    if flags != entry.flags {
        // Written only on a change: most packets leave the line clean.
        entry.flags = flags;
    }
    if now.wrapping_sub(entry.last_seen_ns) > REFRESH_NS {
        entry.last_seen_ns = now;
    }
}

/// A pod's packet leaving: its existing translation, or a new one.
/// `port_off`: where its source port (or echo identifier) is.
#[inline(never)]
fn snat(ctx: &TcContext, pkt: &Packet, iface: &MasqIface, port_off: usize) -> Result<i32, DropReason> {
    let addr = nat_addr(iface, pkt.family);
    if addr == [0; 4] {
        return Ok(TC_ACT_OK);
    }
    if pkt.src == addr {
        hold_node_port(pkt, iface);
        return Ok(TC_ACT_OK);
    }
    let key = flow_key(pkt);
    let now = now_ns();
    let nat = match FERRY_SNAT.get_ptr_mut(&key) {
        Some(e) => {
            // SAFETY: map value pointer; concurrent updates only race on
            // the advisory time and flag fields.
            let e = unsafe { &mut *e };
            touch(e, pkt, 0, now);
            (e.addr, e.port)
        }
        None => {
            if !masquerades(pkt.family, &pkt.src, &pkt.dst) {
                return Ok(TC_ACT_OK);
            }
            allocate(&key, pkt, iface, now)?
        }
    };
    set_addr(ctx, pkt, IP4_SRC_OFF, IP6_SRC_OFF, &pkt.src, &nat.0)?;
    set_port(ctx, pkt, port_off, pkt.sport, nat.1)?;
    count_global(GlobalCounter::MasqEgress);
    Ok(TC_ACT_OK)
}

/// The node's own flow from a port of the SNAT range (a socket bound to it
/// explicitly; the kernel never picks one, the range is reserved): its
/// reverse entry is claimed as an identity translation, so no pod flow to
/// the same remote is given that port. Untouched if a pod flow holds it
/// already (the node's socket then shares the tuple, as it would behind
/// any NAT).
#[inline(never)]
fn hold_node_port(pkt: &Packet, iface: &MasqIface) {
    let port = u16::from_be(pkt.sport);
    if port < iface.port_min || port > iface.port_max || pkt.problem.is_some() {
        return;
    }
    let key = flow_key(pkt);
    let now = now_ns();
    if let Some(e) = FERRY_SNAT.get_ptr_mut(&key) {
        // SAFETY: map value pointer; advisory fields only.
        touch(unsafe { &mut *e }, pkt, 0, now);
        return;
    }
    let rkey = NatKey {
        src_addr: pkt.dst,
        dst_addr: pkt.src,
        src_port: pkt.dport,
        dst_port: pkt.sport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let same = NatEntry { addr: pkt.src, port: pkt.sport, _pad: 0, flags: 0, created_ns: now, last_seen_ns: now };
    if FERRY_SNAT_REV.insert(&rkey, &same, BPF_NOEXIST as u64).is_ok() {
        let _ = record(&key, &rkey, &same);
    }
}

/// Claims a free SNAT port for the new flow `key` and records both
/// directions; returns the (address, port) it leaves with.
#[inline(never)]
fn allocate(key: &NatKey, pkt: &Packet, iface: &MasqIface, now: u64) -> Result<([u32; 4], u16), DropReason> {
    let addr = nat_addr(iface, pkt.family);
    let (min, max) = (iface.port_min as u32, iface.port_max as u32);
    let range = max.saturating_sub(min) + 1;
    let mut rkey = NatKey {
        src_addr: pkt.dst,
        dst_addr: addr,
        src_port: pkt.dport,
        dst_port: 0,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let back = NatEntry { addr: pkt.src, port: pkt.sport, _pad: 0, flags: 0, created_ns: now, last_seen_ns: now };
    // SAFETY: plain helper call.
    let start = unsafe { bpf_get_prandom_u32() };
    let mut i = 0;
    while i < SNAT_TRIES {
        // A range the tries cover is walked from a random start, so its
        // last free port is always found; a larger one is sampled.
        let off = if range <= SNAT_TRIES {
            start.wrapping_add(i) % range
        } else {
            // SAFETY: plain helper call.
            (unsafe { bpf_get_prandom_u32() }) % range
        };
        let port = ((min + off) as u16).to_be();
        rkey.dst_port = port;
        match FERRY_SNAT_REV.insert(&rkey, &back, BPF_NOEXIST as u64) {
            Ok(()) => {
                let fwd = NatEntry { addr, port, _pad: 0, flags: 0, created_ns: now, last_seen_ns: now };
                return record(key, &rkey, &fwd);
            }
            Err(e) if e == -EEXIST => {}
            Err(_) => return Err(DropReason::NatFull),
        }
        i += 1;
    }
    Err(DropReason::NatPortsExhausted)
}

/// The forward entry of a flow whose reverse entry `rkey` was just
/// claimed. Another CPU may have translated the same flow a moment ago:
/// then its translation stands and the claim is given back.
#[inline(never)]
fn record(key: &NatKey, rkey: &NatKey, fwd: &NatEntry) -> Result<([u32; 4], u16), DropReason> {
    match FERRY_SNAT.insert(key, fwd, BPF_NOEXIST as u64) {
        Ok(()) => {
            count_global(GlobalCounter::MasqCreated);
            Ok((fwd.addr, fwd.port))
        }
        Err(e) => {
            let _ = FERRY_SNAT_REV.remove(rkey);
            if e != -EEXIST {
                return Err(DropReason::NatFull);
            }
            // SAFETY: map value pointer, copied once.
            let won = unsafe { *FERRY_SNAT.get_ptr(key).ok_or(DropReason::NatFull)? };
            Ok((won.addr, won.port))
        }
    }
}

/// A reply arriving for a masqueraded flow: its pod's address and port
/// back. `port_off`: where its destination port (or echo identifier) is.
#[inline(never)]
fn reverse(ctx: &TcContext, pkt: &Packet, port_off: usize) -> Result<i32, DropReason> {
    let key = flow_key(pkt);
    let Some(e) = FERRY_SNAT_REV.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: map value pointer; advisory fields only are written.
    let e = unsafe { &mut *e };
    touch(e, pkt, ct_flags::SEEN_REPLY, now_ns());
    let (addr, port) = (e.addr, e.port);
    set_addr(ctx, pkt, IP4_DST_OFF, IP6_DST_OFF, &pkt.dst, &addr)?;
    set_port(ctx, pkt, port_off, pkt.dport, port)?;
    count_global(GlobalCounter::MasqIngress);
    Ok(TC_ACT_OK)
}

/// One address and port of an ICMP error's quoted datagram to rewrite.
struct QuotedRewrite {
    /// Offset of the quoted address (source or destination).
    addr_off: usize,
    old_addr: [u32; 4],
    new_addr: [u32; 4],
    /// Offset of the quoted port (or echo identifier).
    port_off: usize,
    old_port: u16,
    new_port: u16,
}

/// An ICMP error from the outside about a packet a pod sent through the
/// masquerade (frag-needed, so path-MTU discovery works; unreachable; time
/// exceeded): the error goes to the pod, quoting the packet as the pod
/// sent it.
#[inline(never)]
fn icmp_error_in(ctx: &TcContext, outer: &Packet) -> Result<i32, DropReason> {
    let Some(q) = parse_quoted(ctx, outer) else {
        return Ok(TC_ACT_OK);
    };
    // The quoted packet went node:port -> remote; its reply's key is ours.
    let key = quoted_reply_key(&q, outer.family);
    // SAFETY: map value pointer, copied once.
    let Some(e) = FERRY_SNAT_REV.get_ptr(&key).map(|e| unsafe { *e }) else {
        return Ok(TC_ACT_OK);
    };
    let off = if outer.family == AF_INET { 12 } else { 8 };
    let port_off = quoted_port_off(&q, true);
    let rw = QuotedRewrite {
        addr_off: q.ip_off + off,
        old_addr: q.src,
        new_addr: e.addr,
        port_off,
        old_port: q.sport,
        new_port: e.port,
    };
    rewrite_quoted(ctx, outer, &q, &rw)?;
    set_addr(ctx, outer, IP4_DST_OFF, IP6_DST_OFF, &outer.dst, &e.addr)?;
    count_global(GlobalCounter::MasqIcmpError);
    Ok(TC_ACT_OK)
}

/// An ICMP error a pod sends about a reply it received through the
/// masquerade (say, port unreachable for a late UDP reply): it leaves
/// from the node's address, quoting the reply as the remote sent it.
#[inline(never)]
fn icmp_error_out(ctx: &TcContext, outer: &Packet, iface: &MasqIface) -> Result<i32, DropReason> {
    let Some(q) = parse_quoted(ctx, outer) else {
        return Ok(TC_ACT_OK);
    };
    if q.proto != ferry_common::IPPROTO_TCP && q.proto != ferry_common::IPPROTO_UDP {
        return Ok(TC_ACT_OK);
    }
    // The quoted packet went remote -> pod; the pod's flow is its reverse.
    let key = quoted_reply_key(&q, outer.family);
    // SAFETY: map value pointer, copied once.
    let Some(e) = FERRY_SNAT.get_ptr(&key).map(|e| unsafe { *e }) else {
        return Ok(TC_ACT_OK);
    };
    if e.addr != nat_addr(iface, outer.family) {
        return Ok(TC_ACT_OK);
    }
    let off = if outer.family == AF_INET { 16 } else { 24 };
    let rw = QuotedRewrite {
        addr_off: q.ip_off + off,
        old_addr: q.dst,
        new_addr: e.addr,
        port_off: quoted_port_off(&q, false),
        old_port: q.dport,
        new_port: e.port,
    };
    rewrite_quoted(ctx, outer, &q, &rw)?;
    set_addr(ctx, outer, IP4_SRC_OFF, IP6_SRC_OFF, &outer.src, &e.addr)?;
    count_global(GlobalCounter::MasqIcmpError);
    Ok(TC_ACT_OK)
}

/// The key of the reverse of the quoted packet's flow.
#[inline(always)]
fn quoted_reply_key(q: &Quoted, family: u8) -> NatKey {
    NatKey {
        src_addr: q.dst,
        dst_addr: q.src,
        src_port: q.dport,
        dst_port: q.sport,
        proto: q.proto,
        family,
        _pad: [0; 2],
    }
}

/// Where the quoted source (`source`) or destination port is; an echo's
/// identifier is 4 bytes into its header.
#[inline(always)]
fn quoted_port_off(q: &Quoted, source: bool) -> usize {
    if q.proto == ferry_common::IPPROTO_TCP || q.proto == ferry_common::IPPROTO_UDP {
        q.l4_off + if source { 0 } else { 2 }
    } else {
        q.l4_off + 4
    }
}

/// Rewrites one address and port of the quoted datagram, keeping the
/// quoted IPv4 header checksum and the ICMP checksum right. The quoted L4
/// checksum is left as it is: the quote is usually cut short, and no stack
/// checks it (Linux's icmp_rcv and icmpv6_rcv read only the ports).
#[inline(never)]
fn rewrite_quoted(ctx: &TcContext, outer: &Packet, q: &Quoted, rw: &QuotedRewrite) -> Result<(), DropReason> {
    let icmp_csum = outer.l4_csum_off();
    let fail = |_| DropReason::HelperFailed;
    if outer.family == AF_INET {
        let csum_off = q.ip_off + 10;
        let old_csum = ctx.load::<u16>(csum_off).map_err(|_| DropReason::Malformed)?;
        ctx.store(rw.addr_off, &rw.new_addr[0], 0).map_err(fail)?;
        ctx.l3_csum_replace(csum_off, rw.old_addr[0] as u64, rw.new_addr[0] as u64, 4).map_err(fail)?;
        let new_csum = ctx.load::<u16>(csum_off).map_err(|_| DropReason::Malformed)?;
        ctx.l4_csum_replace(icmp_csum, rw.old_addr[0] as u64, rw.new_addr[0] as u64, 4).map_err(fail)?;
        ctx.l4_csum_replace(icmp_csum, old_csum as u64, new_csum as u64, 2).map_err(fail)?;
    } else {
        let mut from = rw.old_addr;
        let mut to = rw.new_addr;
        // SAFETY: both buffers are 16 bytes on our stack.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(DropReason::HelperFailed);
        }
        ctx.store(rw.addr_off, &rw.new_addr, 0).map_err(fail)?;
        ctx.l4_csum_replace(icmp_csum, 0, diff as u64, 0).map_err(fail)?;
    }
    if rw.old_port != rw.new_port {
        ctx.store(rw.port_off, &rw.new_port, 0).map_err(fail)?;
        ctx.l4_csum_replace(icmp_csum, rw.old_port as u64, rw.new_port as u64, 2).map_err(fail)?;
    }
    Ok(())
}
