//! Backend selection for a new flow, shared by every path that translates
//! a Service frontend: ClientIP affinity while it is fresh, else the
//! Service's Maglev table at the flow's hash. It sees a [`Flow`], not a
//! packet: the packet path (from-pod) and the socket hooks (connect-time
//! translation) describe the same decision with different inputs.
use ferry_common::{
    service_flags, AffinityKey, AffinityValue, DropReason, ServiceValue, AF_INET, IPPROTO_TCP, MAGLEV_SLOTS_PER_ENTRY,
};

use crate::{
    conntrack::backend_usable,
    maps::{FERRY_AFFINITY, FERRY_CONFIG, FERRY_MAGLEV},
    parse::Packet,
};

/// What selection needs of a new flow. A trait rather than a struct so
/// that callers pass what they already hold (a parsed packet) without a
/// copy on the 512-byte BPF stack.
pub trait Flow {
    fn family(&self) -> u8;
    /// The client, for `sessionAffinity: ClientIP`.
    fn client(&self) -> [u32; 4];
    /// Spreads flows over the Maglev table: every bit of what tells two
    /// flows of one client apart must move it.
    fn hash(&self) -> u32;
}

impl Flow for Packet {
    fn family(&self) -> u8 {
        self.family
    }

    fn client(&self) -> [u32; 4] {
        self.src
    }

    /// The 5-tuple (the VIP side is fixed per Service, so the client
    /// address and both ports carry the entropy).
    #[inline(always)]
    fn hash(&self) -> u32 {
        let mut h: u32 = 0x9747_b28c ^ self.proto as u32;
        let words = if self.family == AF_INET { 1 } else { 4 };
        let mut i = 0;
        while i < 4 {
            if i < words {
                h = mix(h, self.src[i]);
                h = mix(h, self.dst[i]);
            }
            i += 1;
        }
        h = mix(h, ((self.sport as u32) << 16) | self.dport as u32);
        if self.proto == IPPROTO_TCP {
            h ^= 0x5bd1_e995;
        }
        fmix(h)
    }
}

/// Picks the backend id of a new flow: the client's affinity entry while
/// it is fresh (`sessionAffinity: ClientIP`), else the Maglev slot of the
/// flow's hash.
#[inline(never)]
pub fn select_backend<F: Flow>(flow: &F, svc: &ServiceValue, now: u64) -> Result<u32, DropReason> {
    let affinity = svc.flags & service_flags::AFFINITY != 0;
    let akey = AffinityKey { client: flow.client(), service_id: svc.id, family: flow.family(), _pad: [0; 3] };
    if affinity {
        if let Some(a) = FERRY_AFFINITY.get_ptr_mut(akey) {
            // SAFETY: map value pointer.
            let a = unsafe { &mut *a };
            let timeout_ns = svc.affinity_timeout_s as u64 * 1_000_000_000;
            if now.wrapping_sub(a.last_used_ns) <= timeout_ns && backend_usable(a.backend_id, svc.id).is_some() {
                a.last_used_ns = now;
                return Ok(a.backend_id);
            }
        }
    }
    let id = maglev_lookup(svc, flow.hash())?;
    if affinity {
        let v = AffinityValue { backend_id: id, _pad: 0, last_used_ns: now };
        // Best effort: without the entry the next flow just hashes again.
        let _ = FERRY_AFFINITY.insert(akey, v, 0);
    }
    Ok(id)
}

#[inline(always)]
fn maglev_lookup(svc: &ServiceValue, hash: u32) -> Result<u32, DropReason> {
    let cfg = FERRY_CONFIG.get(0).ok_or(DropReason::NoBackend)?;
    let size = cfg.maglev_size;
    if size == 0 || svc.maglev_table >= cfg.max_tables {
        return Err(DropReason::NoBackend);
    }
    let idx = svc.maglev_table * size + hash % size;
    let pair = FERRY_MAGLEV.get(idx / MAGLEV_SLOTS_PER_ENTRY).ok_or(DropReason::NoBackend)?;
    Ok(pair.ids[(idx % MAGLEV_SLOTS_PER_ENTRY) as usize])
}

/// A multiply-xorshift per word (murmur3's) and murmur3's finalizer:
/// cheap, and every input bit moves the slot.
#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    let k = v.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
