//! The cluster zone: every record the Kubernetes DNS-Based Service Discovery
//! specification (kubernetes/dns docs/specification.md) defines, computed from
//! one catalog and pre-encoded per (lowercased name, type).
//!
//! A [`Zone`] is immutable; the server builds a new one on every catalog
//! change and swaps it whole, so a query never sees half a change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ferry_state::{AddressType, Catalog, Service, ServiceType, SmallVec};
use hickory_proto::op::{Message, OpCode, Query as HQuery};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::wire::{self, ascii_to_wire, qtype, Prebuilt};
use compact::{Compact, Hit};

/// The schema version this server implements (specification §1 and §2.2).
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the schema-version record, as in the specification's example.
const SCHEMA_TTL: u32 = 28800;

#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub zone: String,
    pub ttl: u32,
    /// CoreDNS `pods insecure`: answer `a-b-c-d.<ns>.pod.<zone>` for any
    /// address without checking that such a pod exists.
    pub pods_insecure: bool,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self { zone: "cluster.local".into(), ttl: 5, pods_insecure: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("the zone build panicked")]
    Panicked,
    #[error("invalid cluster domain {zone:?}: {source}")]
    BadZone { zone: String, source: hickory_proto::ProtoError },
}

/// What exists at one name.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    /// Pre-encoded answers by record type.
    pub rrsets: Vec<(u16, Prebuilt)>,
    /// ExternalName: the CNAME answer and its target (RFC 1034 §3.6.2: the
    /// alias answers every type).
    /// Boxed: rare, and a `Name` inline would triple every map slot.
    pub cname: Option<Box<(Prebuilt, Name)>>,
}

impl Entry {
    pub fn rrset(&self, t: u16) -> Option<&Prebuilt> {
        self.rrsets.iter().find(|(rt, _)| *rt == t).map(|(_, p)| p)
    }
}

pub enum PodName {
    Namespace,
    Address(IpAddr),
}

/// A lowercased wire-format name; shared between successive zones.
type Key = Arc<[u8]>;

/// FxHash (rustc's): several times cheaper than SipHash for short names.
/// Keyed hashing buys nothing here: clients can only look names up, never
/// insert them, so they cannot build collision chains.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

/// Where a name sits relative to the zones this server answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Inside the cluster domain or an authoritative reverse zone; `apex_off`
    /// is the offset of the zone apex within the wire name, `soa` which SOA.
    Zone {
        apex_off: usize,
        soa: usize,
    },
    /// A reverse name outside the private ranges: answered when the table
    /// has it, otherwise forwarded (CoreDNS `fallthrough in-addr.arpa`).
    ReverseFallthrough,
    /// A search-list expansion that can never exist (`x.svc.<zone>.corp.`):
    /// NXDOMAIN without going upstream.
    Junk,
    Outside,
}

pub struct Zone {
    pub config: ZoneConfig,
    apex: Vec<u8>,
    /// Sharded by [`shard_of`]; shards are shared between successive zones.
    names: Vec<Arc<Shard>>,
    /// The same shards laid out for the hot path's lookup.
    compact: Vec<Compact>,
    /// SOA tails (type..rdata, owner written by the caller) by zone:
    /// index 0 is the cluster zone, then one per reverse apex.
    soa_tails: Vec<Vec<u8>>,
    reverse_apexes: Vec<Vec<u8>>,
    pod_suffix: Vec<u8>,
}

/// Reverse zones answered authoritatively: the private and shared address
/// ranges Services and pods are allocated from (RFC 6303 §4; 100.64/10 from
/// RFC 6598; fc00::/7 from RFC 4193). PTR misses there are NXDOMAIN here;
/// other reverse names fall through to the upstreams.
fn reverse_apex_names() -> Vec<String> {
    let mut v = vec!["10.in-addr.arpa".to_string(), "168.192.in-addr.arpa".to_string()];
    v.extend((16..32).map(|b| format!("{b}.172.in-addr.arpa")));
    v.extend((64..128).map(|b| format!("{b}.100.in-addr.arpa")));
    v.extend(["c.f.ip6.arpa".to_string(), "d.f.ip6.arpa".to_string()]);
    v
}

/// The records of the zone before encoding: name -> type -> records, plus
/// the glue to add to SRV answers.
#[derive(Default)]
struct Records {
    sets: BTreeMap<Name, BTreeMap<u16, Vec<Record>>>,
    glue: BTreeMap<Name, BTreeSet<Name>>,
    cnames: BTreeMap<Name, Name>,
}

impl Records {
    fn add(&mut self, name: &Name, rdata: RData, ttl: u32) {
        let t = u16::from(rdata.record_type());
        let set = self.sets.entry(name.clone()).or_default().entry(t).or_default();
        let r = Record::from_rdata(name.clone(), ttl, rdata);
        if !set.iter().any(|x| x.data == r.data) {
            set.push(r);
        }
    }
}

fn name(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?.to_lowercase();
    n.set_fqdn(true);
    Some(n)
}

/// The label the specification calls a system-assigned _hostname_ for an
/// endpoint without `hostname`: its address with dashes (what CoreDNS uses),
/// IPv6 fully expanded so the label never starts or ends with a dash.
pub fn generated_hostname(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join("-"),
    }
}

/// `d.c.b.a.in-addr.arpa.` / nibble form under `ip6.arpa.` (RFC 3596 §2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// A Service port that has an SRV record: named (specification §2.3.2,
/// "Unnamed ports do not have an SRV record").
fn srv_owner(port_name: &str, proto: &str, base: &str) -> Option<Name> {
    if port_name.is_empty() {
        return None;
    }
    name(&format!("_{port_name}._{proto}.{base}"))
}

/// PTR targets by reverse name, across all Services: one address may back
/// several headless Services, and its PTR RRset then names them all.
type Ptrs = BTreeMap<String, Vec<Name>>;

fn service_records(cat: &Catalog, svc: &Service, zone: &str, ttl: u32, recs: &mut Records, ptrs: &mut Ptrs) {
    let base_s = format!("{}.{}.svc.{}.", svc.key.name, svc.key.namespace, zone);
    let Some(base) = name(&base_s) else { return };
    if svc.service_type == ServiceType::ExternalName {
        // §2.5: a CNAME to the external name.
        if let Some(target) = svc.external_name.as_deref().and_then(name) {
            recs.cnames.insert(base, target);
        }
        return;
    }
    if !svc.headless {
        // §2.3: A/AAAA per ClusterIP family, SRV per named port, PTR per IP.
        for ip in &svc.cluster_ips {
            recs.add(&base, addr_rdata(*ip), ttl);
            ptrs.entry(reverse_name(*ip)).or_default().push(base.clone());
        }
        if svc.cluster_ips.is_empty() {
            return;
        }
        for p in &svc.ports {
            if let Some(owner) = srv_owner(&p.name, p.protocol.as_str(), &base_s) {
                recs.add(&owner, RData::SRV(SRV::new(0, 100, p.port, base.clone())), ttl);
                recs.glue.entry(owner).or_default().insert(base.clone());
            }
        }
        return;
    }
    // §2.4 headless: records per _ready_ endpoint; with
    // publishNotReadyAddresses every endpoint counts as ready (the
    // specification's tolerate-unready-endpoints, as a field today).
    let mut hosts: BTreeMap<Name, Vec<IpAddr>> = BTreeMap::new();
    for slice in cat.slices_of(&svc.key) {
        if slice.address_type == AddressType::Fqdn {
            continue;
        }
        for ep in &slice.endpoints {
            if !(ep.ready || svc.publish_not_ready_addresses) {
                continue;
            }
            for ip in ep.addresses() {
                let host = ep.hostname().map_or_else(|| generated_hostname(ip), str::to_owned);
                let Some(host_name) = name(&format!("{host}.{base_s}")) else {
                    continue;
                };
                recs.add(&base, addr_rdata(ip), ttl);
                recs.add(&host_name, addr_rdata(ip), ttl);
                ptrs.entry(reverse_name(ip)).or_default().push(host_name.clone());
                hosts.entry(host_name).or_default().push(ip);
            }
        }
    }
    if hosts.is_empty() {
        // "If there are no ready endpoints for the headless Service, the
        // answer should be NXDOMAIN": nothing is added, not even SRV names.
        return;
    }
    // §2.4.2: one SRV per (ready endpoint hostname, named Service port),
    // with the Service port's number as the specification words it.
    let weight = (100 / hosts.len()).max(1) as u16;
    for p in &svc.ports {
        if let Some(owner) = srv_owner(&p.name, p.protocol.as_str(), &base_s) {
            for host in hosts.keys() {
                recs.add(&owner, RData::SRV(SRV::new(0, weight, p.port, host.clone())), ttl);
                recs.glue.entry(owner.clone()).or_default().insert(host.clone());
            }
        }
    }
}

fn encode(qname: &Name, qt: RecordType, answers: &[Record], glue: &[Record]) -> Prebuilt {
    let mut m = Message::response(0, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_available = true;
    m.add_query(HQuery::query(qname.clone(), qt));
    m.add_answers(answers.iter().cloned());
    // Answers are built from validated names and addresses; failing to
    // encode them would be a bug in this module, not bad input.
    let prefix = m.to_vec().expect("encoding zone answers");
    m.add_additionals(glue.iter().cloned());
    let bytes = m.to_vec().expect("encoding zone answers");
    debug_assert_eq!(bytes[12..prefix.len()], prefix[12..]);
    Prebuilt { bytes: bytes.into(), prefix_len: prefix.len(), additionals: glue.len() as u16 }
}

fn soa_tail(apex: &str, ttl: u32) -> Vec<u8> {
    // RFC 2308 §5: negative answers are cached for min(SOA TTL, MINIMUM),
    // both the configured TTL so a Service that appears is seen promptly.
    let mut rdata = ascii_to_wire(&format!("ns.dns.{apex}"));
    rdata.extend(ascii_to_wire(&format!("hostmaster.{apex}")));
    for v in [1u32, 7200, 1800, 86400, ttl] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    let mut t = Vec::with_capacity(rdata.len() + 10);
    t.extend_from_slice(&qtype::SOA.to_be_bytes());
    t.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    t.extend_from_slice(&ttl.to_be_bytes());
    t.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    t.extend(rdata);
    t
}

impl Zone {
    /// An empty zone: only the apex records and the schema version.
    pub fn empty(config: ZoneConfig) -> Result<Zone, ZoneError> {
        Zone::build(&Catalog::default(), config)
    }

    pub fn build(cat: &Catalog, config: ZoneConfig) -> Result<Zone, ZoneError> {
        ZoneCache::new(config).build(cat)
    }
}

/// The names are split into shards by hash, each behind its own `Arc`: a
/// rebuild clones only the shards a change touched (a few hundred entries
/// each at 10,000 Services) and shares the rest with the zone being served.
const SHARDS: usize = 256;
type Shard = HashMap<Key, Arc<Entry>, FxBuild>;

pub fn name_hash(key: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(key);
    h.finish()
}

fn shard_of_hash(hash: u64) -> usize {
    // The high bits: the multiply leaves the low ones poorly mixed.
    (hash >> 56) as usize % SHARDS
}

fn shard_of(key: &[u8]) -> usize {
    shard_of_hash(name_hash(key))
}

/// What one Service contributes to the zone, reused as is when neither the
/// Service nor its EndpointSlices changed.
struct CachedService {
    /// Shared with the catalog it was built from, not copies (its key is
    /// this entry's).
    svc: Arc<Service>,
    slices: ferry_state::SlicesOf,
    entries: Encoded,
    /// This Service's PTR records (reverse name, target name), for merging
    /// with other Services': both are keys of `entries`, shared.
    ptr_targets: Vec<(Key, Key)>,
}

/// The contributor id of the apex records, the schema version and the pod
/// subtree: before every Service, as they were added first.
const STATIC: u32 = u32::MAX;

/// Builds zones from successive catalogs by patching the last one: only
/// the names of Services that were added, changed or removed (and their
/// ancestors) are recomputed, and only the shards holding them are copied,
/// so one Service change on a 10,000-Service zone costs milliseconds. Each
/// build still returns a whole new [`Zone`], swapped in by the caller:
/// readers never see half a change.
pub struct ZoneCache {
    config: ZoneConfig,
    /// The zone without names (apexes, SOAs), set by the first build.
    meta: Option<Zone>,
    static_entries: Encoded,
    ids: BTreeMap<ferry_state::ObjectKey, u32>,
    slots: Vec<Option<CachedService>>,
    free: Vec<u32>,
    /// Who has records at each name (several Services for a shared PTR).
    /// Inline up to two: nearly every name has one contributor, and a
    /// vector each would be an allocation per name.
    contrib: HashMap<Key, SmallVec<[u32; 2]>, FxBuild>,
    /// How many contributed names lie below each name: an empty
    /// non-terminal exists while this is non-zero.
    below: HashMap<Key, u32, FxBuild>,
    shards: Vec<Arc<Shard>>,
    compact: Vec<Compact>,
    /// What the last catalog built said had changed: the next catalog's
    /// changes are relative to it when their generations follow.
    last_changes: Option<ferry_state::Changes>,
}

type Dirty = std::collections::HashSet<Key, FxBuild>;

impl ZoneCache {
    pub fn new(config: ZoneConfig) -> Self {
        Self {
            config,
            meta: None,
            static_entries: Vec::new(),
            ids: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            contrib: HashMap::default(),
            below: HashMap::default(),
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            compact: vec![Compact::default(); SHARDS],
            last_changes: None,
        }
    }

    /// The zone's fixed parts and static records, on the first build.
    fn init(&mut self, dirty: &mut Dirty) -> Result<(), ZoneError> {
        let mut config = self.config.clone();
        config.zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
        let zone_s = config.zone.clone();
        let apex = Name::from_ascii(format!("{zone_s}."))
            .map_err(|source| ZoneError::BadZone { zone: zone_s.clone(), source })?;
        let ttl = config.ttl;
        let mut recs = Records::default();
        let ns_name = name(&format!("ns.dns.{zone_s}.")).unwrap_or_else(|| apex.clone());
        recs.add(
            &apex,
            RData::SOA(SOA::new(
                ns_name.clone(),
                name(&format!("hostmaster.{zone_s}.")).unwrap_or_else(|| apex.clone()),
                1,
                7200,
                1800,
                86400,
                ttl,
            )),
            ttl,
        );
        recs.add(&apex, RData::NS(NS(ns_name)), ttl);
        if let Some(v) = name(&format!("dns-version.{zone_s}.")) {
            recs.add(&v, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])), SCHEMA_TTL);
        }
        let reverse_apexes: Vec<Vec<u8>> = reverse_apex_names().iter().map(|s| ascii_to_wire(s)).collect();
        let mut soa_tails = vec![soa_tail(&zone_s, ttl)];
        soa_tails.extend(reverse_apex_names().iter().map(|s| soa_tail(s, ttl)));
        let pods = config.pods_insecure;
        self.meta = Some(Zone {
            apex: ascii_to_wire(&zone_s),
            names: Vec::new(),
            compact: Vec::new(),
            soa_tails,
            reverse_apexes,
            pod_suffix: ascii_to_wire(&format!("pod.{zone_s}")),
            config,
        });
        let mut entries = encode_records(recs, ttl);
        if pods {
            // The pod subtree exists (NODATA, not NXDOMAIN, for `pod.<zone>`).
            entries.push((Key::from(ascii_to_wire(&format!("pod.{zone_s}"))), Arc::default()));
        }
        self.contribute(STATIC, &entries, dirty);
        self.static_entries = entries;
        Ok(())
    }

    pub fn build(&mut self, cat: &Catalog) -> Result<Zone, ZoneError> {
        let mut dirty = Dirty::default();
        if self.meta.is_none() {
            self.init(&mut dirty)?;
        }
        let (zone_s, ttl) = {
            let c = &self.meta.as_ref().expect("set above").config;
            (c.zone.clone(), c.ttl)
        };
        let mut gone: Vec<u32> = Vec::new();
        let mut redo: Vec<(&ferry_state::ObjectKey, &Arc<Service>, Option<u32>)> = Vec::new();
        let known = self.last_changes.as_ref().and_then(|last| cat.changes.since(last));
        if let Some(changed) = known {
            // The catalog names what changed since the one built last: only
            // those Services are looked at.
            for key in changed.services {
                let id = self.ids.get(key).copied();
                match (cat.services.get_key_value(key), id) {
                    (Some((key, svc)), Some(id)) => {
                        let c = self.slots[id as usize].as_ref().expect("live id");
                        if !same(&c.svc, svc) || !same_slices(&c.slices, cat.slices_of(key)) {
                            redo.push((key, svc, Some(id)));
                        }
                    }
                    (Some((key, svc)), None) => redo.push((key, svc, None)),
                    (None, Some(id)) => gone.push(id),
                    (None, None) => {}
                }
            }
        } else {
            // Nothing is known of how this catalog relates to the last one
            // built (the first build, or one too far behind for the change
            // log): every Service's records are made again.
            gone.extend(self.ids.values().copied());
            redo.extend(cat.services.iter().map(|(key, svc)| (key, svc, None)));
        }
        self.last_changes = Some(cat.changes.clone());
        for id in gone {
            let old = self.slots[id as usize].take().expect("live id");
            self.ids.remove(&old.svc.key);
            self.withdraw(id, &old.entries, &mut dirty);
            self.free.push(id);
        }
        if self.ids.is_empty() && redo.len() > SHARDS {
            // The first build: every name is dirty and every shard fills
            // from empty. Sized once (~4 names per Service), neither holds
            // a table and its doubled successor at the zone's peak.
            let names = redo.len() * 4;
            dirty.reserve(names);
            for shard in &mut self.shards {
                Arc::make_mut(shard).reserve(names / SHARDS);
            }
        }
        let mut ids = Vec::with_capacity(redo.len());
        for (key, _, id) in &redo {
            ids.push(match *id {
                Some(id) => {
                    let old = self.slots[id as usize].take().expect("live id");
                    self.withdraw(id, &old.entries, &mut dirty);
                    id
                }
                None => {
                    let id = self.free.pop().unwrap_or_else(|| {
                        self.slots.push(None);
                        (self.slots.len() - 1) as u32
                    });
                    self.ids.insert((*key).clone(), id);
                    id
                }
            });
        }
        let work: Vec<(&ferry_state::ObjectKey, &Arc<Service>)> = redo.iter().map(|(k, s, _)| (*k, *s)).collect();
        for (id, c) in ids.into_iter().zip(encode_all(cat, &work, &zone_s, ttl)?) {
            self.contribute(id, &c.entries, &mut dirty);
            self.slots[id as usize] = Some(c);
        }
        let mut touched = [false; SHARDS];
        for k in dirty {
            let entry = self.entry_at(&k, ttl);
            let i = shard_of(&k);
            touched[i] = true;
            let shard = Arc::make_mut(&mut self.shards[i]);
            match entry {
                Some(e) => {
                    shard.insert(k, e);
                }
                None => {
                    shard.remove(&k);
                }
            }
        }
        for (i, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
            self.compact[i] = Compact::build(&self.shards[i], name_hash);
        }
        let meta = self.meta.as_ref().expect("set above");
        Ok(Zone {
            config: meta.config.clone(),
            apex: meta.apex.clone(),
            names: self.shards.clone(),
            compact: self.compact.clone(),
            soa_tails: meta.soa_tails.clone(),
            reverse_apexes: meta.reverse_apexes.clone(),
            pod_suffix: meta.pod_suffix.clone(),
        })
    }

    /// The zone-authority ancestors of `key`, nearest first, up to and
    /// including its apex (RFC 8020: they exist as empty non-terminals).
    fn ancestors<'k>(&self, key: &'k [u8]) -> Vec<&'k [u8]> {
        let meta = self.meta.as_ref().expect("initialised");
        let mut out = Vec::new();
        if !matches!(meta.authority_of(key), Authority::Zone { .. }) {
            return out;
        }
        let mut i = key[0] as usize + 1;
        while i < key.len() && key[i] != 0 {
            let suffix = &key[i..];
            if !matches!(meta.authority_of(suffix), Authority::Zone { .. }) {
                break;
            }
            out.push(suffix);
            i += key[i] as usize + 1;
        }
        out
    }

    fn contribute(&mut self, id: u32, entries: &Encoded, dirty: &mut Dirty) {
        for (k, _) in entries {
            self.contrib.entry(k.clone()).or_default().push(id);
            dirty.insert(k.clone());
            for a in self.ancestors(k) {
                match self.below.get_mut(a) {
                    Some(n) => *n += 1,
                    None => {
                        let a: Key = a.into();
                        self.below.insert(a.clone(), 1);
                        dirty.insert(a);
                    }
                }
                if !dirty.contains(a) {
                    dirty.insert(a.into());
                }
            }
        }
    }

    fn withdraw(&mut self, id: u32, entries: &Encoded, dirty: &mut Dirty) {
        for (k, _) in entries {
            if let Some(ids) = self.contrib.get_mut(k) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.contrib.remove(k);
                }
            }
            dirty.insert(k.clone());
            for a in self.ancestors(k) {
                if let Some(n) = self.below.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        self.below.remove(a);
                    }
                }
                if !dirty.contains(a) {
                    dirty.insert(a.into());
                }
            }
        }
    }

    fn entries_of(&self, id: u32) -> &Encoded {
        if id == STATIC {
            &self.static_entries
        } else {
            &self.slots[id as usize].as_ref().expect("live id").entries
        }
    }

    /// What the zone holds at `key` now: its contributors' entries merged
    /// in catalog order (static records first), an empty non-terminal, or
    /// nothing.
    fn entry_at(&self, key: &Key, ttl: u32) -> Option<Arc<Entry>> {
        let find = |id: u32| {
            self.entries_of(id)
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, e)| e.clone())
                .expect("a contributor has an entry at its name")
        };
        let mut ids = match self.contrib.get(key) {
            Some(ids) if !ids.is_empty() => ids.clone(),
            _ => return self.below.contains_key(key).then(Arc::default),
        };
        if ids.len() == 1 {
            return Some(find(ids[0]));
        }
        ids.sort_by(|a, b| match (*a, *b) {
            (STATIC, STATIC) => std::cmp::Ordering::Equal,
            (STATIC, _) => std::cmp::Ordering::Less,
            (_, STATIC) => std::cmp::Ordering::Greater,
            (a, b) => self.slots[a as usize]
                .as_ref()
                .map(|c| &c.svc.key)
                .cmp(&self.slots[b as usize].as_ref().map(|c| &c.svc.key)),
        });
        let mut cur: Arc<Entry> = find(ids[0]);
        let mut both_ptr = false;
        for &id in &ids[1..] {
            let entry = find(id);
            if cur.rrsets.is_empty() && cur.cname.is_none() {
                cur = entry;
                continue;
            }
            both_ptr |= cur.rrset(qtype::PTR).is_some() && entry.rrset(qtype::PTR).is_some();
            let c = Arc::make_mut(&mut cur);
            for (t, p) in &entry.rrsets {
                if c.rrset(*t).is_none() {
                    c.rrsets.push((*t, p.clone()));
                }
            }
            if c.cname.is_none() {
                c.cname.clone_from(&entry.cname);
            }
        }
        if !both_ptr {
            return Some(cur);
        }
        // An address behind several Services (a pod in two headless
        // Services) has one PTR RRset naming all of them.
        let rev = name(&wire::name_to_ascii(key))?;
        let mut recs = Records::default();
        for &id in ids.iter().filter(|id| **id != STATIC) {
            let c = self.slots[id as usize].as_ref().expect("live id");
            for (_, t) in c.ptr_targets.iter().filter(|(k, _)| k == key) {
                if let Some(t) = name(&wire::name_to_ascii(t)) {
                    recs.add(&rev, RData::PTR(PTR(t)), ttl);
                }
            }
        }
        encode_records(recs, ttl).into_iter().next().map(|(_, e)| e)
    }
}

/// Every Service's records, split across the cores when there are many
/// (the first build at 100,000 Services is seconds of encoding on one).
fn encode_all(
    cat: &Catalog,
    work: &[(&ferry_state::ObjectKey, &Arc<Service>)],
    zone_s: &str,
    ttl: u32,
) -> Result<Vec<CachedService>, ZoneError> {
    let encode = |(key, svc): &(&ferry_state::ObjectKey, &Arc<Service>)| {
        encode_service(cat, svc, cat.slices_of(key), zone_s, ttl)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(work.len() / 512).max(1);
    if threads == 1 {
        return Ok(work.iter().map(encode).collect());
    }
    let chunk = work.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> =
            work.chunks(chunk).map(|part| s.spawn(move || part.iter().map(encode).collect::<Vec<_>>())).collect();
        let mut out = Vec::with_capacity(work.len());
        for part in parts {
            out.extend(part.join().map_err(|_| ZoneError::Panicked)?);
        }
        Ok(out)
    })
}

fn encode_service(
    cat: &Catalog,
    svc: &Arc<Service>,
    slices: &[Arc<ferry_state::EndpointSlice>],
    zone_s: &str,
    ttl: u32,
) -> CachedService {
    let mut recs = Records::default();
    let mut ptrs = Ptrs::new();
    service_records(cat, svc, zone_s, ttl, &mut recs, &mut ptrs);
    let mut ptr_names = Vec::new();
    for (rev, targets) in ptrs {
        let Some(rev) = name(&rev) else { continue };
        for t in targets {
            recs.add(&rev, RData::PTR(PTR(t.clone())), ttl);
            ptr_names.push((ascii_to_wire(&rev.to_ascii()), ascii_to_wire(&t.to_ascii())));
        }
    }
    let entries = encode_records(recs, ttl);
    // Both names are owners of this Service's own records (a PTR target is
    // its A/AAAA owner): their keys are shared rather than allocated again.
    let key_of =
        |wire: Vec<u8>| entries.iter().find(|(k, _)| **k == *wire).map_or_else(|| Key::from(wire), |(k, _)| k.clone());
    let ptr_targets = ptr_names.into_iter().map(|(rev, t)| (key_of(rev), key_of(t))).collect();
    CachedService { svc: svc.clone(), slices: slices.into(), entries, ptr_targets }
}

/// Equal values, the same allocation first (the common case: an untouched
/// Service keeps its `Arc` from catalog to catalog).
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn same_slices(a: &[Arc<ferry_state::EndpointSlice>], b: &[Arc<ferry_state::EndpointSlice>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
}

type Encoded = Vec<(Key, Arc<Entry>)>;

/// Pre-encode every RRset of `recs`, keyed by lowercased wire name.
fn encode_records(recs: Records, ttl: u32) -> Encoded {
    let mut out = Vec::with_capacity(recs.sets.len() + recs.cnames.len());
    let empty = Vec::new();
    for (owner, sets) in &recs.sets {
        let mut entry = Entry::default();
        for (t, answers) in sets {
            // Glue (RFC 2782 "Additional section"): the addresses of SRV
            // targets, which are always records of the same Service.
            let glue: Vec<Record> = match (*t == qtype::SRV, recs.glue.get(owner)) {
                (true, Some(targets)) => targets
                    .iter()
                    .flat_map(|g| {
                        let s = recs.sets.get(g);
                        let a = s.and_then(|s| s.get(&qtype::A)).unwrap_or(&empty);
                        let aaaa = s.and_then(|s| s.get(&qtype::AAAA)).unwrap_or(&empty);
                        a.iter().chain(aaaa).cloned()
                    })
                    .collect(),
                _ => Vec::new(),
            };
            entry.rrsets.push((*t, encode(owner, RecordType::from(*t), answers, &glue)));
        }
        entry.rrsets.shrink_to_fit();
        out.push((Key::from(ascii_to_wire(&owner.to_ascii())), Arc::new(entry)));
    }
    for (owner, target) in &recs.cnames {
        let rec = Record::from_rdata(owner.clone(), ttl, RData::CNAME(CNAME(target.clone())));
        let pre = encode(owner, RecordType::CNAME, &[rec], &[]);
        let entry = Entry { rrsets: Vec::new(), cname: Some(Box::new((pre, target.clone()))) };
        out.push((Key::from(ascii_to_wire(&owner.to_ascii())), Arc::new(entry)));
    }
    out
}

impl Zone {
    /// Classify a lowercased wire name.
    pub fn authority_of(&self, name: &[u8]) -> Authority {
        if ends_with_labels(name, &self.apex) {
            return Authority::Zone { apex_off: name.len() - self.apex.len(), soa: 0 };
        }
        const ARPA4: &[u8] = b"\x07in-addr\x04arpa\x00";
        const ARPA6: &[u8] = b"\x03ip6\x04arpa\x00";
        if name.ends_with(ARPA4) || name.ends_with(ARPA6) {
            for (i, a) in self.reverse_apexes.iter().enumerate() {
                if ends_with_labels(name, a) {
                    return Authority::Zone { apex_off: name.len() - a.len(), soa: i + 1 };
                }
            }
            return Authority::ReverseFallthrough;
        }
        if contains_labels(name, &self.apex[..self.apex.len() - 1]) {
            return Authority::Junk;
        }
        Authority::Outside
    }

    /// The hot path's lookup: a name's answers read in place.
    #[inline]
    pub fn lookup(&self, name: &[u8]) -> Option<Hit<'_>> {
        let hash = name_hash(name);
        self.compact.get(shard_of_hash(hash))?.get(hash, name)
    }

    /// Prefetch what [`Self::lookup`] of a name with this hash reads:
    /// `record` false for its slot, true (once the slot had time to load)
    /// for its record. A server answering a batch of queries issues these
    /// for all of them first, so their memory reads overlap instead of
    /// stalling one after the other.
    #[inline]
    pub fn prefetch(&self, hash: u64, record: bool) {
        if let Some(c) = self.compact.get(shard_of_hash(hash)) {
            if record {
                c.prefetch_record(hash);
            } else {
                c.prefetch_slot(hash);
            }
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.names.get(shard_of(name)).and_then(|s| s.get(name)).map(|e| &**e)
    }

    pub fn soa_tail(&self, which: usize) -> &[u8] {
        &self.soa_tails[which]
    }

    pub fn len(&self) -> usize {
        self.names.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.names.iter().all(|s| s.is_empty())
    }

    /// The deprecated pod record (specification §2.6) in CoreDNS's
    /// `pods insecure` mode: `a-b-c-d.<ns>.pod.<zone>` answers a.b.c.d for
    /// any address; IPv6 as the address with ':' replaced by '-'.
    pub fn pod_name(&self, name: &[u8]) -> Option<PodName> {
        if !self.config.pods_insecure || !ends_with_labels(name, &self.pod_suffix) {
            return None;
        }
        let prefix = &name[..name.len() - self.pod_suffix.len()];
        let l1 = *prefix.first()? as usize;
        let rest = prefix.get(1 + l1..)?;
        if rest.is_empty() {
            // <ns>.pod.<zone>: exists for every namespace in this mode
            return Some(PodName::Namespace);
        }
        // otherwise exactly two labels: <ip> <ns>
        let l2 = *rest.first()? as usize;
        if rest.len() != 1 + l2 || l2 == 0 {
            return None;
        }
        let ip_label = std::str::from_utf8(&prefix[1..1 + l1]).ok()?;
        if let Ok(v4) = ip_label.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(PodName::Address(IpAddr::V4(v4)));
        }
        ip_label.replace('-', ":").parse::<Ipv6Addr>().ok().map(|v6| PodName::Address(IpAddr::V6(v6)))
    }

    /// A dynamic answer for a pod name, built with hickory (cold path):
    /// `None` when the name does not exist, `Some(None)` for NODATA.
    pub fn pod_answer(&self, name: &[u8], qt: u16) -> Option<Option<Prebuilt>> {
        let PodName::Address(ip) = self.pod_name(name)? else {
            return Some(None);
        };
        let t = match ip {
            IpAddr::V4(_) => qtype::A,
            IpAddr::V6(_) => qtype::AAAA,
        };
        if qt != t && qt != qtype::ANY {
            return Some(None);
        }
        let owner = Name::from_ascii(wire::name_to_ascii(name)).ok()?;
        let rec = Record::from_rdata(owner.clone(), self.config.ttl, addr_rdata(ip));
        Some(Some(encode(&owner, RecordType::from(qt), &[rec], &[])))
    }
}

/// `name` ends with the whole labels of `suffix` (both wire, lowercased).
fn ends_with_labels(name: &[u8], suffix: &[u8]) -> bool {
    if !name.ends_with(suffix) {
        return false;
    }
    let start = name.len() - suffix.len();
    let mut i = 0;
    while i < start {
        i += name[i] as usize + 1;
    }
    i == start
}

/// `name` contains the labels `seq` (wire, without the root) starting at a
/// label boundary and followed by at least one more label.
fn contains_labels(name: &[u8], seq: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() && name[i] != 0 {
        if name[i..].starts_with(seq) && name.get(i + seq.len()).is_some_and(|&b| b != 0) {
            return true;
        }
        i += name[i] as usize + 1;
    }
    false
}

mod compact;
#[cfg(test)]
pub(crate) mod tests;
