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

use ferry_state::{AddressType, Catalog, Service, ServiceType};
use hickory_proto::op::{Message, OpCode, Query as HQuery};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::wire::{self, ascii_to_wire, qtype, Prebuilt};

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
        Self {
            zone: "cluster.local".into(),
            ttl: 5,
            pods_insecure: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("the zone build panicked")]
    Panicked,
    #[error("invalid cluster domain {zone:?}: {source}")]
    BadZone {
        zone: String,
        source: hickory_proto::ProtoError,
    },
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
    names: HashMap<Key, Arc<Entry>, FxBuild>,
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
    let mut v = vec![
        "10.in-addr.arpa".to_string(),
        "168.192.in-addr.arpa".to_string(),
    ];
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
        let set = self
            .sets
            .entry(name.clone())
            .or_default()
            .entry(t)
            .or_default();
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
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
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

fn service_records(
    cat: &Catalog,
    svc: &Service,
    zone: &str,
    ttl: u32,
    recs: &mut Records,
    ptrs: &mut Ptrs,
) {
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
            ptrs.entry(reverse_name(*ip))
                .or_default()
                .push(base.clone());
        }
        if svc.cluster_ips.is_empty() {
            return;
        }
        for p in &svc.ports {
            if let Some(owner) = srv_owner(&p.name, p.protocol.as_str(), &base_s) {
                recs.add(
                    &owner,
                    RData::SRV(SRV::new(0, 100, p.port, base.clone())),
                    ttl,
                );
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
            for ip in &ep.addresses {
                let host = ep
                    .hostname
                    .clone()
                    .unwrap_or_else(|| generated_hostname(*ip));
                let Some(host_name) = name(&format!("{host}.{base_s}")) else {
                    continue;
                };
                recs.add(&base, addr_rdata(*ip), ttl);
                recs.add(&host_name, addr_rdata(*ip), ttl);
                ptrs.entry(reverse_name(*ip))
                    .or_default()
                    .push(host_name.clone());
                hosts.entry(host_name).or_default().push(*ip);
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
                recs.add(
                    &owner,
                    RData::SRV(SRV::new(0, weight, p.port, host.clone())),
                    ttl,
                );
                recs.glue
                    .entry(owner.clone())
                    .or_default()
                    .insert(host.clone());
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
    Prebuilt {
        bytes: bytes.into(),
        prefix_len: prefix.len(),
        additionals: glue.len() as u16,
    }
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

/// What one Service contributed to the last zone, reused as is when
/// neither the Service nor its EndpointSlices changed: a rebuild then only
/// encodes what changed, so a 10,000-Service zone is swapped within
/// milliseconds of an edit.
struct CachedService {
    svc: Service,
    slices: Vec<ferry_state::EndpointSlice>,
    entries: Encoded,
    /// This Service's PTR records, for merging with other Services'.
    ptr_targets: Vec<(Key, Name)>,
}

/// Builds zones from successive catalogs, reusing unchanged Services.
pub struct ZoneCache {
    config: ZoneConfig,
    /// Size of the last zone, to allocate the next one at once.
    last_names: usize,
    services: HashMap<ferry_state::ObjectKey, CachedService>,
}

impl ZoneCache {
    pub fn new(config: ZoneConfig) -> Self {
        Self {
            config,
            last_names: 0,
            services: HashMap::new(),
        }
    }

    pub fn build(&mut self, cat: &Catalog) -> Result<Zone, ZoneError> {
        let mut config = self.config.clone();
        config.zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
        let zone_s = config.zone.clone();
        let apex = Name::from_ascii(format!("{zone_s}.")).map_err(|source| ZoneError::BadZone {
            zone: zone_s.clone(),
            source,
        })?;
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
            recs.add(
                &v,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                SCHEMA_TTL,
            );
        }

        let reverse_apexes: Vec<Vec<u8>> = reverse_apex_names()
            .iter()
            .map(|s| ascii_to_wire(s))
            .collect();
        let mut soa_tails = vec![soa_tail(&zone_s, ttl)];
        soa_tails.extend(reverse_apex_names().iter().map(|s| soa_tail(s, ttl)));
        let mut zone = Zone {
            apex: ascii_to_wire(&zone_s),
            names: HashMap::default(),
            soa_tails,
            reverse_apexes,
            pod_suffix: ascii_to_wire(&format!("pod.{zone_s}")),
            config,
        };

        // Records are encoded Service by Service, so the scratch records
        // of only one Service exist at a time next to the growing zone, and
        // an unchanged Service's encoded entries are shared, not rebuilt.
        zone.add_records(recs, ttl);
        let mut old = std::mem::take(&mut self.services);
        self.services.reserve(cat.services.len());
        zone.names.reserve(self.last_names);
        let mut ptr_merges: Vec<Key> = Vec::new();
        for (key, svc) in &cat.services {
            let slices = cat.slices_of(key);
            let (owned_key, cached) = match old.remove_entry(key) {
                Some((k, c)) if c.svc == *svc && c.slices == slices => (k, c),
                _ => {
                    let mut recs = Records::default();
                    let mut ptrs = Ptrs::new();
                    service_records(cat, svc, &zone_s, ttl, &mut recs, &mut ptrs);
                    let mut ptr_targets = Vec::new();
                    for (rev, targets) in ptrs {
                        let Some(rev) = name(&rev) else { continue };
                        for t in targets {
                            recs.add(&rev, RData::PTR(PTR(t.clone())), ttl);
                            ptr_targets.push((Key::from(ascii_to_wire(&rev.to_ascii())), t));
                        }
                    }
                    let c = CachedService {
                        svc: svc.clone(),
                        slices: slices.to_vec(),
                        entries: encode_records(recs, ttl),
                        ptr_targets,
                    };
                    (key.clone(), c)
                }
            };
            for (k, e) in &cached.entries {
                if zone.insert_key(k.clone(), e.clone()) {
                    ptr_merges.push(k.clone());
                }
            }
            self.services.insert(owned_key, cached);
        }
        drop(old);
        // An address behind several Services (a pod in two headless
        // Services) has one PTR RRset naming all of them.
        if !ptr_merges.is_empty() {
            let merge: std::collections::HashSet<Key> = ptr_merges.into_iter().collect();
            let mut recs = Records::default();
            for c in self.services.values() {
                for (k, t) in c.ptr_targets.iter().filter(|(k, _)| merge.contains(k)) {
                    if let Some(rev) = name(&wire::name_to_ascii(k)) {
                        recs.add(&rev, RData::PTR(PTR(t.clone())), ttl);
                    }
                }
            }
            for (k, e) in encode_records(recs, ttl) {
                zone.names.insert(k, e);
            }
        }
        if zone.config.pods_insecure {
            let pod = name(&format!("pod.{zone_s}.")).expect("zone validated above");
            zone.insert_key(Key::from(ascii_to_wire(&pod.to_ascii())), Arc::default());
        }
        self.last_names = zone.names.len();
        Ok(zone)
    }
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
            entry
                .rrsets
                .push((*t, encode(owner, RecordType::from(*t), answers, &glue)));
        }
        entry.rrsets.shrink_to_fit();
        out.push((Key::from(ascii_to_wire(&owner.to_ascii())), Arc::new(entry)));
    }
    for (owner, target) in &recs.cnames {
        let rec = Record::from_rdata(owner.clone(), ttl, RData::CNAME(CNAME(target.clone())));
        let pre = encode(owner, RecordType::CNAME, &[rec], &[]);
        let entry = Entry {
            rrsets: Vec::new(),
            cname: Some(Box::new((pre, target.clone()))),
        };
        out.push((Key::from(ascii_to_wire(&owner.to_ascii())), Arc::new(entry)));
    }
    out
}

impl Zone {
    fn add_records(&mut self, recs: Records, ttl: u32) {
        for (key, entry) in encode_records(recs, ttl) {
            self.insert_key(key, entry);
        }
    }

    /// Add `entry` at `key`, merging with what is there (an empty
    /// non-terminal added for an earlier name, or another Service's types).
    /// Returns true when both had a PTR RRset: the caller merges those.
    fn insert_key(&mut self, key: Key, entry: Arc<Entry>) -> bool {
        self.add_ancestors(&key);
        match self.names.get_mut(&key) {
            Some(old) if old.rrsets.is_empty() && old.cname.is_none() => {
                *old = entry;
                false
            }
            Some(old) => {
                let both_ptr = old.rrset(qtype::PTR).is_some() && entry.rrset(qtype::PTR).is_some();
                let old = Arc::make_mut(old);
                for (t, p) in &entry.rrsets {
                    if old.rrset(*t).is_none() {
                        old.rrsets.push((*t, p.clone()));
                    }
                }
                if old.cname.is_none() {
                    old.cname.clone_from(&entry.cname);
                }
                both_ptr
            }
            None => {
                self.names.insert(key, entry);
                false
            }
        }
    }

    /// Every name between a record's owner and its zone apex exists, even
    /// with no records (an empty non-terminal): queries for it are NODATA,
    /// not NXDOMAIN (RFC 8020, RFC 4592 §2.2.2).
    fn add_ancestors(&mut self, key: &[u8]) {
        if !matches!(self.authority_of(key), Authority::Zone { .. }) {
            return;
        }
        // Walk up from the parent; a suffix already present had its own
        // ancestors added then, so the walk stops there.
        let mut i = key[0] as usize + 1;
        while i < key.len() && key[i] != 0 {
            let suffix = &key[i..];
            if self.names.contains_key(suffix) || !matches!(self.authority_of(suffix), Authority::Zone { .. }) {
                return;
            }
            self.names.insert(suffix.into(), Arc::default());
            i += key[i] as usize + 1;
        }
        // the apex itself: always exists (it has the SOA)
    }

    /// Classify a lowercased wire name.
    pub fn authority_of(&self, name: &[u8]) -> Authority {
        if ends_with_labels(name, &self.apex) {
            return Authority::Zone {
                apex_off: name.len() - self.apex.len(),
                soa: 0,
            };
        }
        const ARPA4: &[u8] = b"\x07in-addr\x04arpa\x00";
        const ARPA6: &[u8] = b"\x03ip6\x04arpa\x00";
        if name.ends_with(ARPA4) || name.ends_with(ARPA6) {
            for (i, a) in self.reverse_apexes.iter().enumerate() {
                if ends_with_labels(name, a) {
                    return Authority::Zone {
                        apex_off: name.len() - a.len(),
                        soa: i + 1,
                    };
                }
            }
            return Authority::ReverseFallthrough;
        }
        if contains_labels(name, &self.apex[..self.apex.len() - 1]) {
            return Authority::Junk;
        }
        Authority::Outside
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.names.get(name).map(|e| &**e)
    }

    pub fn soa_tail(&self, which: usize) -> &[u8] {
        &self.soa_tails[which]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
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
        ip_label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| PodName::Address(IpAddr::V6(v6)))
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

#[cfg(test)]
pub(crate) mod tests;
