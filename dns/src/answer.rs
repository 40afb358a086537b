//! The request path: one query in, one answer (or nothing) out.
//!
//! [`answer_fast`] is synchronous and allocation-light; it answers every
//! cluster-zone question from the pre-encoded [`Zone`] and every malformed
//! one with an error rcode. What needs the network — forwarded names and
//! ExternalName targets outside the zone — comes back as [`Fast::Slow`] and
//! is finished by [`answer_slow`].

use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns as HEdns, Message, Metadata, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::wire::{self, parse_query, qtype, Query, Rcode, Reject, TC};
use crate::zone::{Authority, Zone, ZoneConfig, ZoneError};

/// Largest DNS message over TCP (RFC 1035 §4.2.2 length prefix).
pub const TCP_LIMIT: usize = 65535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Answers limited to 512 bytes, or the client's EDNS payload size.
    Udp,
    Tcp,
}

impl Transport {
    pub fn limit(self, q: &Query) -> usize {
        match self {
            Transport::Udp => q.udp_limit(),
            Transport::Tcp => TCP_LIMIT,
        }
    }
}

pub enum Fast {
    /// `out` holds the answer.
    Done {
        qtype: u16,
        rcode: Rcode,
    },
    Drop,
    Slow(Query),
}

/// State shared by every listener.
pub struct Shared {
    /// The current zone and whether it comes from a fully loaded catalog.
    zone: RwLock<(Arc<Zone>, bool)>,
    pub zone_config: ZoneConfig,
    pub metrics: Metrics,
    pub forwarder: Forwarder,
    pub query_log: bool,
}

impl Shared {
    pub fn new(
        zone_config: ZoneConfig,
        metrics: Metrics,
        forwarder: Forwarder,
        query_log: bool,
    ) -> Result<Self, ZoneError> {
        let empty = Arc::new(Zone::empty(zone_config.clone())?);
        Ok(Self { zone: RwLock::new((empty, false)), zone_config, metrics, forwarder, query_log })
    }

    /// The current zone and whether the catalog has completed its first load.
    pub fn zone(&self) -> (Arc<Zone>, bool) {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_zone(&self, z: Arc<Zone>) {
        self.metrics.zone_names.set(z.len() as i64);
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = (z, true);
        self.metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn done(q: &Query, rcode: Rcode) -> Fast {
    Fast::Done { qtype: q.qtype, rcode }
}

/// Answer `msg` from the zone if possible. Before the catalog is ready
/// (`ready` false) `zone` is the empty zone, used only to classify names;
/// `transport` decides how large an answer may be.
pub fn answer_fast(zone: &Zone, ready: bool, msg: &[u8], transport: Transport, out: &mut Vec<u8>) -> Fast {
    let q = match parse_query(msg) {
        Ok(q) => q,
        Err(Reject::Drop) => return Fast::Drop,
        Err(Reject::Header(rc)) => {
            wire::header_only(msg, rc, out);
            return Fast::Done { qtype: 0, rcode: rc };
        }
    };
    let limit = transport.limit(&q);
    let empty = |rc: Rcode, aa: bool, soa: Option<(usize, &[u8])>, out: &mut Vec<u8>| {
        wire::empty_answer(msg, &q, rc, 0, aa, soa, out);
        done(&q, rc)
    };
    // RFC 6891 §6.1.3: only EDNS version 0 exists; anything newer is BADVERS.
    if q.edns.is_some_and(|e| e.version != 0) {
        return empty(Rcode::BadVers, false, None, out);
    }
    // Only the Internet class is served: CHAOS, HESIOD, NONE and ANY-class
    // questions are refused (RFC 1035 §3.2.4; nothing here to answer with).
    if q.qclass != wire::CLASS_IN {
        return empty(Rcode::Refused, false, None, out);
    }
    match q.qtype {
        // OPT is a pseudo-type and 0 is reserved: not a valid question.
        0 | qtype::OPT => return empty(Rcode::FormErr, false, None, out),
        // Zone transfers are not offered.
        qtype::AXFR | qtype::IXFR => return empty(Rcode::Refused, false, None, out),
        // Obsolete mailbox meta-types (RFC 883).
        qtype::MAILA | qtype::MAILB => return empty(Rcode::NotImp, false, None, out),
        _ => {}
    }
    let (apex_off, soa) = match zone.authority_of(&q.name_lower) {
        Authority::Outside => return Fast::Slow(q),
        Authority::Junk => return empty(Rcode::NxDomain, false, None, out),
        // Before the first load, absence proves nothing: SERVFAIL for the
        // cluster zone rather than a false NXDOMAIN a client would cache.
        Authority::Zone { .. } if !ready => return empty(Rcode::ServFail, false, None, out),
        Authority::ReverseFallthrough if !ready => return Fast::Slow(q),
        Authority::ReverseFallthrough => (None, 0),
        Authority::Zone { apex_off, soa } => (Some(apex_off), soa),
    };
    let soa_rec = apex_off.map(|off| (off, zone.soa_tail(soa)));
    let Some(hit) = zone.lookup(&q.name_lower) else {
        if let Some(pod) = zone.pod_answer(&q.name_lower, q.qtype) {
            return match pod {
                Some(pre) => send_prebuilt(msg, &q, pre.as_ref(), limit, out),
                None => empty(Rcode::NoError, true, soa_rec, out),
            };
        }
        return match soa_rec {
            Some(_) => empty(Rcode::NxDomain, true, soa_rec, out),
            None => Fast::Slow(q),
        };
    };
    if hit.is_alias() {
        // RFC 1034 §3.6.2: the alias is the answer for CNAME (and for ANY);
        // for other types the target is chased, which may need upstreams.
        if q.qtype == qtype::CNAME || q.qtype == qtype::ANY {
            if let Some(alias) = &hit.entry().cname {
                return send_prebuilt(msg, &q, alias.0.as_ref(), limit, out);
            }
        }
        return Fast::Slow(q);
    }
    // RFC 8482 §4.1: ANY is answered with one RRset, not all of them.
    let t = (q.qtype != qtype::ANY).then_some(q.qtype);
    match hit.rrset(t) {
        Some(pre) => send_prebuilt(msg, &q, pre, limit, out),
        // The name exists (perhaps as an empty non-terminal): NODATA with
        // the SOA, so the negative answer can be cached (RFC 2308 §2.2).
        None => empty(Rcode::NoError, true, soa_rec, out),
    }
}

fn send_prebuilt(msg: &[u8], q: &Query, pre: wire::PreRef<'_>, limit: usize, out: &mut Vec<u8>) -> Fast {
    if wire::patch_answer(msg, q, pre, limit, out) {
        return done(q, Rcode::NoError);
    }
    // RFC 2181 §9: the answer does not fit; say so, the client retries over
    // TCP (RFC 7766 §6.2).
    wire::empty_answer(msg, q, Rcode::NoError, TC, true, None, out);
    done(q, Rcode::NoError)
}

/// Finish a query that needs the network: forward it, or chase an
/// ExternalName's target.
pub async fn answer_slow(shared: &Shared, msg: &[u8], q: &Query, transport: Transport) -> (Vec<u8>, Rcode) {
    let limit = transport.limit(q);
    let mut out = Vec::new();
    let Ok(req) = Message::from_vec(msg) else {
        wire::header_only(msg, Rcode::FormErr, &mut out);
        return (out, Rcode::FormErr);
    };
    let Some(hq) = req.queries.first().cloned() else {
        wire::header_only(msg, Rcode::FormErr, &mut out);
        return (out, Rcode::FormErr);
    };
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.recursion_available = true;
    resp.add_query(hq.clone());
    let (zone, ready) = shared.zone();
    let cname = zone.get(&q.name_lower).filter(|_| ready).and_then(|e| e.cname.clone());
    if let Some(alias) = cname {
        let (pre, target) = *alias;
        resp.metadata.authoritative = true;
        let mut alias = Message::from_vec(&pre.bytes).map(|m| m.answers).unwrap_or_default();
        for r in &mut alias {
            r.name = hq.name().clone();
        }
        resp.add_answers(alias);
        let (records, rc) = chase(shared, &zone, &target, hq.query_type()).await;
        resp.add_answers(records);
        resp.metadata.response_code = rc;
    } else {
        match shared.forwarder.resolve(hq.name(), hq.query_type()).await {
            Ok(m) => {
                resp.metadata.response_code = m.metadata.response_code;
                resp.add_answers(m.answers);
                resp.add_authorities(m.authorities);
                resp.add_additionals(m.additionals);
            }
            Err(e) => {
                tracing::debug!(error = %e, "forwarding failed");
                resp.metadata.response_code = ResponseCode::ServFail;
            }
        }
    }
    if let Some(e) = &req.edns {
        let mut edns = HEdns::new();
        edns.set_max_payload(wire::MAX_UDP_PAYLOAD);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        resp.set_edns(edns);
    }
    let rcode = Rcode::from_u8(u16::from(resp.metadata.response_code) as u8);
    out = resp.to_vec().unwrap_or_default();
    if out.is_empty() {
        wire::header_only(msg, Rcode::ServFail, &mut out);
        return (out, Rcode::ServFail);
    }
    if out.len() > limit {
        let t = resp.truncate();
        out = t.to_vec().unwrap_or_default();
    }
    (out, rcode)
}

/// Records for an ExternalName's target: from the zone when the target is a
/// cluster name, else from the upstreams. When the upstreams fail the CNAME
/// alone is returned (NOERROR): the client's resolver can follow it itself.
async fn chase(
    shared: &Shared,
    zone: &Zone,
    target: &Name,
    qt: RecordType,
) -> (Vec<hickory_proto::rr::Record>, ResponseCode) {
    let key = wire::ascii_to_wire(&target.to_ascii());
    if let Authority::Zone { .. } = zone.authority_of(&key) {
        let Some(e) = zone.get(&key) else {
            return (Vec::new(), ResponseCode::NXDomain);
        };
        let recs = e
            .rrset(u16::from(qt))
            .and_then(|p| Message::from_vec(&p.bytes).ok())
            .map(|m| m.answers)
            .unwrap_or_default();
        return (recs, ResponseCode::NoError);
    }
    match shared.forwarder.resolve(target, qt).await {
        Ok(m) => (m.answers, m.metadata.response_code),
        Err(_) => (Vec::new(), ResponseCode::NoError),
    }
}
