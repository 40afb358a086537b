//! The maps, named exactly as `ferry_common::map_names` (userspace pins them
//! by these names). Capacities here are defaults; the loader overrides them
//! from its configuration before creating the maps.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray},
};
use ferry_common::{
    AffinityKey, AffinityValue, BackendValue, Config, Counter, CtKey, CtValue, DropReason, EndpointKey, EndpointValue,
    FragKey, FragValue, LpmAddr, MaglevPair, MasqIface, NatEntry, NatKey, NextHop, PortKey, PortValue, RevNatKey,
    RevNatValue, ServiceKey, ServiceValue, SockRevKey, SockRevValue, BPF_F_MMAPABLE, DEFAULT_AFFINITY_SIZE,
    DEFAULT_CT_SIZE, DEFAULT_FRAG_SIZE, DEFAULT_MASQ_CIDRS, DEFAULT_MASQ_IFACES, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_ENDPOINTS, DEFAULT_MAX_PORTS, DEFAULT_MAX_SERVICES, DEFAULT_NAT_SIZE,
};

#[map]
pub static FERRY_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static FERRY_BACKENDS: HashMap<u32, BackendValue> = HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// `max_tables * maglev_size` backend ids, two per element; always sized by
/// the loader. Mmappable: the agent writes tables through a shared mapping.
#[map]
pub static FERRY_MAGLEV: Array<MaglevPair> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
pub static FERRY_CT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(DEFAULT_CT_SIZE, 0);

#[map]
pub static FERRY_REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::with_max_entries(DEFAULT_CT_SIZE, 0);

#[map]
pub static FERRY_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_SIZE, 0);

#[map]
pub static FERRY_SVC_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static FERRY_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::MAX, 0);

#[map]
pub static FERRY_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(ferry_common::GlobalCounter::MAX, 0);

#[map]
pub static FERRY_ENDPOINTS: HashMap<EndpointKey, EndpointValue> = HashMap::with_max_entries(DEFAULT_MAX_ENDPOINTS, 0);

#[map]
pub static FERRY_PORTS: LruHashMap<PortKey, PortValue> = LruHashMap::with_max_entries(DEFAULT_MAX_PORTS, 0);

/// Sockets the socket LB translated: (cookie, backend) -> frontend.
#[map]
pub static FERRY_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::with_max_entries(DEFAULT_CT_SIZE, 0);

#[map]
pub static FERRY_NEXTHOPS: LruHashMap<EndpointKey, NextHop> = LruHashMap::with_max_entries(DEFAULT_MAX_PORTS, 0);

/// Fragmented datagrams: (source, destination, protocol, id) -> the ports
/// of their first fragment, for the fragments after it.
#[map]
pub static FERRY_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(DEFAULT_FRAG_SIZE, 0);

/// Every frontend address (written by the agent, value: its number of
/// frontends): a fragment whose ports are unknown may still be known to be
/// VIP-bound, and then it is dropped rather than sent on untranslated.
#[map]
pub static FERRY_VIPS: HashMap<EndpointKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Masqueraded flows, pod -> remote as the pod sent them -> the node
/// address and port they leave with (masq.rs).
#[map]
pub static FERRY_SNAT: HashMap<NatKey, NatEntry> = HashMap::with_max_entries(DEFAULT_NAT_SIZE, 0);

/// Their replies, remote -> node address and port -> the pod's address and port.
#[map]
pub static FERRY_SNAT_REV: HashMap<NatKey, NatEntry> = HashMap::with_max_entries(DEFAULT_NAT_SIZE, 0);

/// Sources that are masqueraded: this node's pod CIDRs.
#[map]
pub static FERRY_MASQ_SRC: LpmTrie<LpmAddr, u8> = LpmTrie::with_max_entries(DEFAULT_MASQ_CIDRS, 0);

/// Destinations a pod reaches with its own source (ip-masq-agent's
/// nonMasqueradeCIDRs): the cluster's pod CIDRs and its nodes.
#[map]
pub static FERRY_NONMASQ: LpmTrie<LpmAddr, u8> = LpmTrie::with_max_entries(DEFAULT_MASQ_CIDRS, 0);

/// Uplink ifindex -> what its egress masquerades to.
#[map]
pub static FERRY_MASQ_IFACES: HashMap<u32, MasqIface> = HashMap::with_max_entries(DEFAULT_MASQ_IFACES, 0);

#[map]
pub static FERRY_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(c) = FERRY_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_global(stat: ferry_common::GlobalCounter) {
    if let Some(c) = FERRY_GLOBAL.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_service(id: u32, bytes: u32) {
    if let Some(c) = FERRY_SVC_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}
