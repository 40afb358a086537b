//! Client-side conntrack: `FERRY_CT` (client -> VIP, the flow as the client
//! sent it) remembers the chosen backend; `FERRY_REVNAT` (backend -> client,
//! the reply as the backend sends it) says what to restore on the way back.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use ferry_common::{
    backend_state, ct_flags, CtKey, CtValue, DropReason, GlobalCounter, RevNatKey, RevNatValue, ServiceValue,
    IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    maps::{count_global, FERRY_BACKENDS, FERRY_CT, FERRY_REVNAT},
    nat::hairpin_addr,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Where a flow goes: a backend, and whether the client is that backend.
#[derive(Clone, Copy)]
pub struct Target {
    pub backend_id: u32,
    pub addr: [u32; 4],
    pub port: u16,
    pub hairpin: bool,
}

/// CLOCK_MONOTONIC at tick resolution: flow ages and affinity timeouts are
/// seconds, and reading the clock source for every packet (bpf_ktime_get_ns)
/// was ~1% of the CPU of a connection-rate run.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no arguments, always available to tc programs (Linux >= 5.11).
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn flow_key(pkt: &Packet) -> CtKey {
    CtKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.sport,
        dst_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn tcp_flag_bits(pkt: &Packet) -> u32 {
    let mut f = 0;
    if pkt.tcp_flags & TCP_FIN != 0 {
        f |= ct_flags::FIN_SEEN;
    }
    if pkt.tcp_flags & TCP_RST != 0 {
        f |= ct_flags::RST_SEEN;
    }
    f
}

/// Whether backend `id` still exists in the maps, still belongs to
/// `service_id` and still has this address and port.
#[inline(always)]
pub fn backend_alive(id: u32, addr: &[u32; 4], port: u16, service_id: u32) -> bool {
    match FERRY_BACKENDS.get_ptr(id) {
        Some(b) => {
            // SAFETY: map value pointer, read once.
            let b = unsafe { *b };
            b.addr == *addr && b.port == port && b.service_id == service_id
        }
        None => false,
    }
}

/// Whether backend `id` can take a new flow of `service_id`.
#[inline(always)]
pub fn backend_usable(id: u32, service_id: u32) -> Option<ferry_common::BackendValue> {
    // SAFETY: map value pointer, read once.
    let b = unsafe { *FERRY_BACKENDS.get_ptr(id)? };
    (b.service_id == service_id && b.state == backend_state::ACTIVE).then_some(b)
}

/// The backend of an existing flow, if it must keep it.
///
/// A TCP SYN (without ACK) is always a new connection, even when it reuses
/// the tuple of an old entry (a client reusing a source port): it takes the
/// new-flow path, which picks a live backend and rewrites both entries.
/// Keeping the old entry would keep a backend that may have left, and keep
/// a reverse-NAT entry another flow may since have overwritten.
///
/// TCP: an established flow keeps its backend whatever happened to it in
/// the maps (its address is in the entry), so it never breaks. UDP has no
/// connection to protect: if the backend left the Service (or changed
/// address) the flow moves to a live one on this packet, so a stale entry
/// can never black-hole it (kubernetes/kubernetes#48370).
#[inline(never)]
pub fn lookup_forward(key: &CtKey, pkt: &Packet, svc: &ServiceValue, now: u64) -> Option<Target> {
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return None;
    }
    let ct = FERRY_CT.get_ptr_mut(key)?;
    // SAFETY: map value pointer; concurrent updates only race on timestamps
    // and flag bits, which are advisory.
    let entry = unsafe { &mut *ct };
    if pkt.proto != IPPROTO_TCP && !backend_alive(entry.backend_id, &entry.backend_addr, entry.backend_port, svc.id) {
        if pkt.proto == IPPROTO_UDP {
            count_global(GlobalCounter::UdpReselected);
        }
        return None;
    }
    entry.last_seen_ns = now;
    entry.flags |= tcp_flag_bits(pkt);
    let target = Target {
        backend_id: entry.backend_id,
        addr: entry.backend_addr,
        port: entry.backend_port,
        hairpin: entry.flags & ct_flags::HAIRPIN != 0,
    };
    heal_revnat(pkt, &target, entry.flags);
    Some(target)
}

/// The reverse-NAT entry of `pkt`'s flow towards `target`: keyed by the
/// reply as the backend will send it (to the client, or to the hairpin
/// address), restoring this flow's VIP.
#[inline(always)]
fn revnat_entry(pkt: &Packet, target: &Target, flags: u32) -> (RevNatKey, RevNatValue) {
    let reply_dst = if target.hairpin { hairpin_addr(pkt.family) } else { pkt.src };
    let rkey = RevNatKey {
        src_addr: target.addr,
        dst_addr: reply_dst,
        src_port: target.port,
        dst_port: pkt.sport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let rval = RevNatValue { vip: pkt.dst, vip_port: pkt.dport, _pad: 0, orig_client: pkt.src, flags };
    (rkey, rval)
}

/// An existing flow's reverse-NAT entry can be missing (evicted) or belong
/// to another flow with the same reply tuple (two Services sharing a
/// backend, one client source port: the last writer won). Point it back at
/// this flow's VIP so its replies carry the right source; one lookup when
/// it is already right.
// Not inlined: its key and value stay out of lookup_forward's frame.
#[inline(never)]
fn heal_revnat(pkt: &Packet, target: &Target, flags: u32) {
    let (rkey, rval) = revnat_entry(pkt, target, flags);
    if let Some(cur) = FERRY_REVNAT.get_ptr(&rkey) {
        // SAFETY: map value pointer, read once.
        let cur = unsafe { &*cur };
        if cur.vip == rval.vip && cur.vip_port == rval.vip_port && cur.orig_client == rval.orig_client {
            return;
        }
    }
    if FERRY_REVNAT.insert(&rkey, &rval, 0).is_err() {
        count_global(GlobalCounter::CtInsertFailed);
    }
}

/// Records a new flow: the forward entry, then the reverse-NAT entry keyed
/// by the reply as the backend will send it (to `reply_dst`, the client or
/// the hairpin address).
// Not inlined (here and in lookup_forward): separate call frames keep
// from-pod under the 512-byte BPF stack limit. At most 5 arguments (BPF).
#[inline(never)]
pub fn create(key: &CtKey, pkt: &Packet, service_id: u32, target: &Target, now: u64) -> Result<(), DropReason> {
    let flags = if target.hairpin { ct_flags::HAIRPIN } else { 0 } | tcp_flag_bits(pkt);
    let value = CtValue {
        backend_addr: target.addr,
        backend_port: target.port,
        _pad: 0,
        backend_id: target.backend_id,
        service_id,
        flags,
        created_ns: now,
        last_seen_ns: now,
    };
    let (rkey, rval) = revnat_entry(pkt, target, flags);
    // Reverse entry first: a reply can never find a forward entry without
    // its way back.
    if FERRY_REVNAT.insert(rkey, rval, 0).is_err() || FERRY_CT.insert(key, value, 0).is_err() {
        count_global(GlobalCounter::CtInsertFailed);
        return Err(DropReason::CtFull);
    }
    count_global(GlobalCounter::CtCreated);
    Ok(())
}

/// A new TCP connection straight to a pod (not through a Service) may reuse
/// the tuple of an earlier Service flow to that pod: clients pick source
/// ports per destination, so after `VIP:80 -> pod:8080` from port p, a
/// connect to `pod:8080` from p is likely. That flow's reverse-NAT entry
/// would give the new connection's replies the VIP as their source and the
/// client would reset them. Its SYN retires the entry, as Cilium's conntrack
/// re-creates the entry of a reused tuple.
#[inline(never)]
pub fn forget_reply(pkt: &Packet) {
    let reply = RevNatKey {
        src_addr: pkt.dst,
        dst_addr: pkt.src,
        src_port: pkt.dport,
        dst_port: pkt.sport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    // Absent is the common case and nothing to do.
    let _ = FERRY_REVNAT.remove(&reply);
}

/// A reply went back to the client: mark the forward entry as answered.
#[inline(always)]
pub fn note_reply(pkt: &Packet, client: &[u32; 4], client_port: u16, vip: &[u32; 4], vip_port: u16) {
    let key = CtKey {
        src_addr: *client,
        dst_addr: *vip,
        src_port: client_port,
        dst_port: vip_port,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if let Some(ct) = FERRY_CT.get_ptr_mut(key) {
        // SAFETY: map value pointer; advisory fields only.
        let entry = unsafe { &mut *ct };
        entry.last_seen_ns = now_ns();
        entry.flags |= ct_flags::SEEN_REPLY | tcp_flag_bits(pkt);
    }
}
