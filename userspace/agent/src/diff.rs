//! Desired frontends vs what the maps hold -> an ordered list of map
//! operations. Pure: [`Programmed`] is the agent's model of the maps (read
//! back from the pinned maps at start, so a restarted agent adopts what its
//! predecessor wrote and keeps its ids), and [`plan`] both emits the ops and
//! moves the model to the state they produce.
//!
//! Order within one plan, so that no packet ever sees a half-written Service:
//! 1. new backends, and backends promoted to ACTIVE (a Maglev slot may point
//!    at them as soon as step 2 lands);
//! 2. each changed Maglev table written into a FREE table slot — never into
//!    the one a service entry points at;
//! 3. service entries switched (or deleted) in one map update each;
//! 4. backends demoted to TERMINATING (nothing hashes to them any more);
//! 5. removed backends deleted, and the counters of removed frontends
//!    zeroed for the id's next owner.
//!
//! Beside them, `FERRY_VIPS` lists every frontend address (with its number
//! of frontends): an address is put with the new backends, before its first
//! service entry, and deleted with the removed backends, after its last.
//!
//! Ids and table slots released by a plan are only reused by the next one:
//! within a plan, step 1 or 2 would otherwise overwrite something steps 4-6
//! have not yet stopped using.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferry_common::{
    backend_state, service_flags, BackendValue, EndpointKey, ServiceKey, ServiceValue, AF_INET, AF_INET6,
};
use ferry_state::Protocol;
use thiserror::Error;

use crate::desired::{BackendAddr, BackendState, DesiredFrontend, Frontend};
use crate::maglev;

/// `ServiceValue::maglev_table` of a frontend with no backend for new flows
/// (`backend_count == 0`): past `max_tables`, so even a lookup that ignored
/// the count would find nothing rather than someone else's table.
pub const NO_TABLE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub maglev_size: u32,
    pub max_tables: u32,
    pub max_services: u32,
    pub max_backends: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    /// A Maglev table over these backends (id, address), for new flows:
    /// built when applied ([`Op::table_slots`]), a bounded batch at a time,
    /// so a cold sync of 100,000 Services never holds 100,000 built tables
    /// (200 MB at 509 slots) at once.
    WriteTable {
        table: u32,
        backends: Vec<(u32, BackendAddr)>,
    },
    ResetCounters {
        service_id: u32,
    },
    PutService {
        key: ServiceKey,
        value: ServiceValue,
    },
    DeleteService {
        key: ServiceKey,
    },
    DeleteBackend {
        id: u32,
    },
    /// A frontend address and how many frontends it has (`FERRY_VIPS`).
    PutVip {
        key: EndpointKey,
        frontends: u32,
    },
    DeleteVip {
        key: EndpointKey,
    },
}

/// The slots of the Maglev table of size `m` over `backends` (id, address).
/// The planner validated the inputs (`m` prime, no more backends than slots).
pub fn table_slots(backends: &[(u32, BackendAddr)], m: u32) -> Vec<u32> {
    let identities: Vec<Vec<u8>> = backends.iter().map(|(_, a)| a.identity()).collect();
    let entries: Vec<maglev::Entry<'_>> =
        backends.iter().zip(&identities).map(|((id, _), identity)| maglev::Entry { id: *id, identity }).collect();
    maglev::build(&entries, m).expect("maglev inputs validated by the planner")
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlanError {
    #[error("frontend {frontend:?}: out of {what} (limit {limit}); left as it was")]
    Exhausted { frontend: Frontend, what: &'static str, limit: u32 },
    #[error("frontend {frontend:?}: {source}")]
    Maglev { frontend: Frontend, source: maglev::MaglevError },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedBackend {
    pub id: u32,
    pub state: BackendState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    pub value: ServiceValue,
    pub backends: BTreeMap<BackendAddr, ProgrammedBackend>,
    /// False for an adopted frontend: a predecessor killed between writing
    /// backends and switching the service may have left a table that does
    /// not match the backends, so the first sync rebuilds it (into a free
    /// slot, as always; the same backends give the same table, so no flow
    /// moves).
    pub table_verified: bool,
}

/// A pool of u32 ids below `limit`; released ids wait for [`IdPool::commit`].
#[derive(Debug, Clone, Default)]
pub struct IdPool {
    limit: u32,
    next: u32,
    free: BTreeSet<u32>,
    released: Vec<u32>,
}

impl IdPool {
    pub fn new(limit: u32) -> Self {
        Self { limit, ..Default::default() }
    }

    /// A pool where `used` are taken (adoption): gaps below the highest used
    /// id are free.
    fn with_used(limit: u32, used: &BTreeSet<u32>) -> Self {
        let next = used.last().map_or(0, |m| m + 1);
        let free = (0..next).filter(|i| !used.contains(i)).collect();
        Self { limit, next, free, released: Vec::new() }
    }

    fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn release(&mut self, id: u32) {
        self.released.push(id);
    }

    fn commit(&mut self) {
        self.free.extend(self.released.drain(..));
    }

    pub fn in_use(&self) -> usize {
        self.next as usize - self.free.len() - self.released.len()
    }
}

/// The agent's model of the maps.
#[derive(Debug, Clone)]
pub struct Programmed {
    pub limits: Limits,
    pub frontends: BTreeMap<Frontend, ProgrammedFrontend>,
    service_ids: IdPool,
    backend_ids: IdPool,
    tables: IdPool,
    /// Entries found at adoption that belong to nothing (a predecessor died
    /// between deleting a service and its backends); deleted by the next plan.
    stale_backends: Vec<u32>,
    stale_services: Vec<ServiceKey>,
    /// What `FERRY_VIPS` holds: address -> number of frontends.
    vips: BTreeMap<IpAddr, u32>,
}

impl Programmed {
    /// Empty maps.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            frontends: BTreeMap::new(),
            service_ids: IdPool::new(limits.max_services),
            backend_ids: IdPool::new(limits.max_backends),
            tables: IdPool::new(limits.max_tables),
            stale_backends: Vec::new(),
            stale_services: Vec::new(),
            vips: BTreeMap::new(),
        }
    }

    /// The model of maps read back from the pins: ids, table slots and
    /// backend states are taken over as they are, so nothing is renumbered.
    pub fn adopt(
        limits: Limits,
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (u32, BackendValue)>,
        vips: impl IntoIterator<Item = (EndpointKey, u32)>,
    ) -> Self {
        let mut p = Self::new(limits);
        // An unreadable key cannot be deleted by address: left as it is (it
        // only makes fragments to it count as VIP-bound).
        p.vips = vips.into_iter().filter_map(|(k, n)| Some((ip_of(&k.addr, k.family)?, n))).collect();
        let mut by_service_id: BTreeMap<u32, Frontend> = BTreeMap::new();
        let (mut sids, mut tables) = (BTreeSet::new(), BTreeSet::new());
        for (key, value) in services {
            let fe = match frontend_of(&key) {
                Some(fe) if !sids.contains(&value.id) && value.id < limits.max_services => fe,
                _ => {
                    p.stale_services.push(key);
                    continue;
                }
            };
            sids.insert(value.id);
            if value.maglev_table < limits.max_tables && !tables.insert(value.maglev_table) {
                // Two services on one table: impossible from this agent; the
                // first sync gives the second its own.
            }
            by_service_id.insert(value.id, fe);
            p.frontends.insert(fe, ProgrammedFrontend { value, backends: BTreeMap::new(), table_verified: false });
        }
        let mut bids = BTreeSet::new();
        for (id, b) in backends {
            let owner = by_service_id.get(&b.service_id).and_then(|fe| p.frontends.get_mut(fe));
            match (owner, backend_addr(&b)) {
                (Some(f), Some(addr)) if id < limits.max_backends && !f.backends.contains_key(&addr) => {
                    let state =
                        if b.state == backend_state::ACTIVE { BackendState::Active } else { BackendState::Terminating };
                    f.backends.insert(addr, ProgrammedBackend { id, state });
                    bids.insert(id);
                }
                _ => p.stale_backends.push(id),
            }
        }
        p.service_ids = IdPool::with_used(limits.max_services, &sids);
        p.backend_ids = IdPool::with_used(limits.max_backends, &bids);
        p.tables = IdPool::with_used(limits.max_tables, &tables);
        p
    }

    pub fn backend_count(&self) -> usize {
        self.frontends.values().map(|f| f.backends.len()).sum()
    }
}

/// Which frontends a plan looks at: all of them (first sync, adoption), or
/// only those whose Service changed.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Only(&'a BTreeSet<Frontend>),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub errors: Vec<PlanError>,
    pub frontends_added: usize,
    pub frontends_removed: usize,
}

/// Plans the ops that take the maps from `p` to `desired` (within `scope`)
/// and updates `p` to the result. A frontend that cannot be programmed
/// (ids or table slots exhausted) is left exactly as it was, and reported.
pub fn plan(p: &mut Programmed, desired: &BTreeMap<Frontend, DesiredFrontend>, scope: Scope<'_>) -> Plan {
    let keys: BTreeSet<Frontend> = match scope {
        Scope::All => desired.keys().chain(p.frontends.keys()).copied().collect(),
        Scope::Only(set) => set.clone(),
    };
    let mut phases = Phases::default();
    if let Scope::All = scope {
        // A cold sync puts every backend: sized once, the largest phase
        // never holds twice its size while growing (1.1 M ops, ~50 MB, at
        // 100,000 Services), and `into_ops` extends it in place.
        phases.add_backends.reserve(desired.values().map(|d| d.backends.len()).sum::<usize>() + desired.len());
    }
    let mut errors = Vec::new();
    for id in std::mem::take(&mut p.stale_backends) {
        phases.delete_backends.push(Op::DeleteBackend { id });
    }
    for key in std::mem::take(&mut p.stale_services) {
        phases.services.push(Op::DeleteService { key });
    }
    for fe in keys {
        match desired.get(&fe) {
            None => remove_frontend(p, fe, &mut phases),
            Some(d) => {
                if let Err(e) = upsert_frontend(p, fe, d, &mut phases) {
                    errors.push(e);
                }
            }
        }
    }
    sync_vips(p, scope, &mut phases);
    p.service_ids.commit();
    p.backend_ids.commit();
    p.tables.commit();
    let (frontends_added, frontends_removed) = (phases.added, phases.removed);
    Plan { ops: phases.into_ops(), errors, frontends_added, frontends_removed }
}

#[derive(Default)]
struct Phases {
    add_backends: Vec<Op>,
    tables: Vec<Op>,
    services: Vec<Op>,
    demote_backends: Vec<Op>,
    delete_backends: Vec<Op>,
    added: usize,
    removed: usize,
}

impl Phases {
    fn into_ops(self) -> Vec<Op> {
        // Onto the largest phase, grown once to the exact size: a cold sync
        // at 100,000 Services is 1.3 M ops, and a fresh vector would hold
        // the phases twice.
        let rest = self.tables.len() + self.services.len() + self.demote_backends.len() + self.delete_backends.len();
        let mut v = self.add_backends;
        v.reserve_exact(rest);
        v.extend(self.tables);
        v.extend(self.services);
        v.extend(self.demote_backends);
        v.extend(self.delete_backends);
        v
    }
}

/// `FERRY_VIPS` brought to the frontends now modelled, for the addresses
/// `scope` may have changed (all, or those of the frontends looked at).
fn sync_vips(p: &mut Programmed, scope: Scope<'_>, ph: &mut Phases) {
    let mut wanted: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let addrs: BTreeSet<IpAddr> = match scope {
        Scope::All => {
            for fe in p.frontends.keys() {
                *wanted.entry(fe.vip).or_default() += 1;
            }
            wanted.keys().chain(p.vips.keys()).copied().collect()
        }
        Scope::Only(set) => {
            let addrs: BTreeSet<IpAddr> = set.iter().map(|fe| fe.vip).collect();
            for vip in &addrs {
                let first = Frontend { vip: *vip, port: 0, proto: Protocol::Tcp };
                let n = p.frontends.range(first..).take_while(|(fe, _)| fe.vip == *vip).count();
                if n > 0 {
                    wanted.insert(*vip, n as u32);
                }
            }
            addrs
        }
    };
    for vip in addrs {
        let (addr, family) = addr_words(&vip);
        let key = EndpointKey { addr, family, _pad: [0; 3] };
        match (wanted.get(&vip), p.vips.get(&vip)) {
            (Some(n), cur) if cur != Some(n) => {
                ph.add_backends.push(Op::PutVip { key, frontends: *n });
                p.vips.insert(vip, *n);
            }
            (None, Some(_)) => {
                ph.delete_backends.push(Op::DeleteVip { key });
                p.vips.remove(&vip);
            }
            _ => {}
        }
    }
}

fn remove_frontend(p: &mut Programmed, fe: Frontend, ph: &mut Phases) {
    let Some(cur) = p.frontends.remove(&fe) else {
        return;
    };
    ph.services.push(Op::DeleteService { key: service_key(&fe) });
    for b in cur.backends.values() {
        ph.delete_backends.push(Op::DeleteBackend { id: b.id });
        p.backend_ids.release(b.id);
    }
    if cur.value.maglev_table != NO_TABLE {
        p.tables.release(cur.value.maglev_table);
    }
    // Zero its counters once nothing counts into them any more, so the id's
    // next owner starts from zero (ids never used before are zero already:
    // no reset on the hot path of a cold sync).
    ph.delete_backends.push(Op::ResetCounters { service_id: cur.value.id });
    p.service_ids.release(cur.value.id);
    ph.removed += 1;
}

fn upsert_frontend(p: &mut Programmed, fe: Frontend, d: &DesiredFrontend, ph: &mut Phases) -> Result<(), PlanError> {
    let limits = p.limits;
    let exhausted = |what, limit| PlanError::Exhausted { frontend: fe, what, limit };
    let existing = p.frontends.get(&fe);
    // Everything that can fail is decided before anything is emitted, so a
    // failure leaves this frontend untouched.
    let new_ids_needed = d.backends.keys().filter(|a| existing.is_none_or(|c| !c.backends.contains_key(a))).count();
    if new_ids_needed > limits.max_backends as usize - p.backend_ids.in_use() {
        return Err(exhausted("backend ids", limits.max_backends));
    }
    let active_wanted = d.active_count();
    if active_wanted > limits.maglev_size as usize {
        let source = maglev::MaglevError::TooSmall { size: limits.maglev_size, backends: active_wanted };
        return Err(PlanError::Maglev { frontend: fe, source });
    }
    let (sid, fresh) = match existing {
        Some(c) => (c.value.id, false),
        None => (p.service_ids.alloc().ok_or_else(|| exhausted("service ids", limits.max_services))?, true),
    };
    let mut cur = p.frontends.remove(&fe).unwrap_or(ProgrammedFrontend {
        value: ServiceValue { id: sid, maglev_table: NO_TABLE, ..Default::default() },
        backends: BTreeMap::new(),
        table_verified: true,
    });
    let old_active: BTreeSet<BackendAddr> = active_set(&cur.backends);
    let new_active: BTreeSet<BackendAddr> =
        d.backends.iter().filter(|(_, s)| **s == BackendState::Active).map(|(a, _)| *a).collect();
    let rebuild = fresh || !cur.table_verified || old_active != new_active;
    // The table, if one is needed.
    let mut table = cur.value.maglev_table;
    let mut new_table: Option<u32> = None;
    if rebuild {
        table = NO_TABLE;
        if !new_active.is_empty() {
            match p.tables.alloc() {
                Some(t) => {
                    table = t;
                    new_table = Some(t);
                }
                None => {
                    // Put the frontend back as it was.
                    if fresh {
                        p.service_ids.release(sid);
                    } else {
                        p.frontends.insert(fe, cur);
                    }
                    return Err(exhausted("maglev tables", limits.max_tables));
                }
            }
        }
    }

    // Backends: add / promote before, demote / delete after the switch.
    let mut next: BTreeMap<BackendAddr, ProgrammedBackend> = BTreeMap::new();
    for (addr, state) in &d.backends {
        let value = |st: BackendState| backend_value(addr, fe.proto, sid, st);
        match cur.backends.remove(addr) {
            Some(b) if b.state == *state => {
                next.insert(*addr, b);
            }
            Some(b) => {
                let op = Op::PutBackend { id: b.id, value: value(*state) };
                if *state == BackendState::Active {
                    ph.add_backends.push(op)
                } else {
                    ph.demote_backends.push(op)
                }
                next.insert(*addr, ProgrammedBackend { id: b.id, state: *state });
            }
            None => {
                let id = p.backend_ids.alloc().expect("capacity checked above");
                ph.add_backends.push(Op::PutBackend { id, value: value(*state) });
                next.insert(*addr, ProgrammedBackend { id, state: *state });
            }
        }
    }
    for b in cur.backends.values() {
        ph.delete_backends.push(Op::DeleteBackend { id: b.id });
        p.backend_ids.release(b.id);
    }

    if let Some(t) = new_table {
        let backends = new_active.iter().map(|a| (next[a].id, *a)).collect();
        ph.tables.push(Op::WriteTable { table: t, backends });
    }
    if rebuild && cur.value.maglev_table != NO_TABLE && cur.value.maglev_table < limits.max_tables {
        p.tables.release(cur.value.maglev_table);
    }

    let mut flags = 0;
    if d.affinity_timeout_s.is_some() {
        flags |= service_flags::AFFINITY;
    }
    if d.local_only {
        flags |= service_flags::LOCAL_ONLY;
    }
    let value = ServiceValue {
        id: sid,
        backend_count: new_active.len() as u32,
        maglev_table: table,
        flags,
        affinity_timeout_s: d.affinity_timeout_s.unwrap_or(0),
        _pad: 0,
    };
    if fresh {
        ph.added += 1;
    }
    if fresh || value != cur.value {
        ph.services.push(Op::PutService { key: service_key(&fe), value });
    }
    cur.value = value;
    cur.backends = next;
    cur.table_verified = true;
    p.frontends.insert(fe, cur);
    Ok(())
}

fn active_set(b: &BTreeMap<BackendAddr, ProgrammedBackend>) -> BTreeSet<BackendAddr> {
    b.iter().filter(|(_, v)| v.state == BackendState::Active).map(|(a, _)| *a).collect()
}

/// Address words as the maps store them: wire order, IPv4 in word 0.
pub fn addr_words(ip: &IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], AF_INET6)
        }
    }
}

pub fn ip_of(words: &[u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from(words[0].to_ne_bytes())),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::from(o))
        }
        _ => None,
    }
}

pub fn protocol_of(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

pub fn service_key(fe: &Frontend) -> ServiceKey {
    let (addr, family) = addr_words(&fe.vip);
    ServiceKey { addr, port: fe.port.to_be(), proto: fe.proto.ip_proto(), family }
}

pub fn frontend_of(k: &ServiceKey) -> Option<Frontend> {
    Some(Frontend { vip: ip_of(&k.addr, k.family)?, port: u16::from_be(k.port), proto: protocol_of(k.proto)? })
}

fn backend_value(addr: &BackendAddr, proto: Protocol, service_id: u32, st: BackendState) -> BackendValue {
    let (a, family) = addr_words(&addr.ip);
    BackendValue {
        addr: a,
        port: addr.port.to_be(),
        proto: proto.ip_proto(),
        family,
        service_id,
        state: if st == BackendState::Active { backend_state::ACTIVE } else { backend_state::TERMINATING },
        _pad: [0; 3],
    }
}

pub fn backend_addr(b: &BackendValue) -> Option<BackendAddr> {
    Some(BackendAddr { ip: ip_of(&b.addr, b.family)?, port: u16::from_be(b.port) })
}

#[cfg(test)]
mod tests;
