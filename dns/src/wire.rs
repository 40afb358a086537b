//! The few wire-format operations the hot path does by hand: reading the
//! header and question of a query without allocating, and patching a
//! pre-encoded response for it. Everything else (record encoding, upstream
//! messages) goes through hickory-proto; this module only exists because a
//! full `Message` decode costs more than the rest of an answer (RFC 1035 §4.1).

/// Header flag bits (RFC 1035 §4.1.1).
pub const QR: u16 = 0x8000;
pub const AA: u16 = 0x0400;
pub const TC: u16 = 0x0200;
pub const RD: u16 = 0x0100;
pub const RA: u16 = 0x0080;
pub const CD: u16 = 0x0010;

/// Response codes (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    /// Extended rcode 16: the low 4 bits are 0, the high 8 bits go in the OPT TTL.
    BadVers = 16,
}

impl Rcode {
    pub fn label(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::ServFail => "SERVFAIL",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }
    pub fn from_u8(v: u8) -> Rcode {
        match v {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            _ => Rcode::ServFail,
        }
    }
}

pub mod qtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const MAILB: u16 = 253;
    pub const MAILA: u16 = 254;
    pub const ANY: u16 = 255;
}

pub const CLASS_IN: u16 = 1;
/// The UDP payload this server advertises and honours at most: the DNS flag
/// day 2020 value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// RFC 1035 §4.2.1: UDP messages without EDNS are limited to 512 bytes.
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// The parts of a query the server acts on. `name_lower` is the question
/// name in wire form, lowercased (the lookup key); the query's own bytes keep
/// the client's case, which answers echo (RFC 4343 §4.1).
#[derive(Debug, Clone)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    pub qtype: u16,
    pub qclass: u16,
    /// Lowercased wire-format question name.
    pub name_lower: Vec<u8>,
    /// End of the question section (12 + name + 4) within the query bytes.
    pub question_end: usize,
    pub edns: Option<Edns>,
}

impl Query {
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    /// The largest response the client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.payload.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize,
            None => CLASSIC_UDP_PAYLOAD as usize,
        }
    }
    /// The question name in presentation form (for logs and upstream queries).
    pub fn name_ascii(&self) -> String {
        name_to_ascii(&self.name_lower)
    }
}

/// Why a query could not be parsed, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: too short to carry an ID, or itself a response
    /// (answering responses invites reflection loops).
    Drop,
    /// Answer with this rcode, echoing the header only (no question).
    Header(Rcode),
}

pub fn name_to_ascii(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < wire.len() && wire[i] != 0 {
        let l = wire[i] as usize;
        let end = (i + 1 + l).min(wire.len());
        for &b in &wire[i + 1..end] {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        out.push('.');
        i = end;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Lowercased wire form of an ASCII name ("a.b.c" or "a.b.c.").
pub fn ascii_to_wire(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parse the header, the single question and an optional OPT record.
pub fn parse_query(msg: &[u8]) -> Result<Query, Reject> {
    if msg.len() < 12 {
        return Err(Reject::Drop);
    }
    let id = be16(msg, 0);
    let flags = be16(msg, 2);
    if flags & QR != 0 {
        return Err(Reject::Drop);
    }
    // Only standard queries (RFC 1035 opcode 0) are served; NOTIFY, UPDATE,
    // the obsolete IQUERY and STATUS get NOTIMP (RFC 1035 §4.1.1).
    if (flags >> 11) & 0xf != 0 {
        return Err(Reject::Header(Rcode::NotImp));
    }
    let (qd, an, ns, ar) = (be16(msg, 4), be16(msg, 6), be16(msg, 8), be16(msg, 10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(Reject::Header(Rcode::FormErr));
    }
    let mut name_lower = Vec::with_capacity(64);
    let mut i = 12;
    loop {
        let Some(&l) = msg.get(i) else {
            return Err(Reject::Header(Rcode::FormErr));
        };
        // A question name starts at offset 12: a compression pointer could
        // only point back into the header, and 0x40/0x80 label types are
        // obsolete (RFC 6891 §5) — both are malformed here.
        if l & 0xc0 != 0 {
            return Err(Reject::Header(Rcode::FormErr));
        }
        name_lower.push(l);
        i += 1;
        if l == 0 {
            break;
        }
        let end = i + l as usize;
        if end > msg.len() || name_lower.len() + l as usize > 255 {
            return Err(Reject::Header(Rcode::FormErr));
        }
        name_lower.extend(msg[i..end].iter().map(u8::to_ascii_lowercase));
        i = end;
    }
    if i + 4 > msg.len() {
        return Err(Reject::Header(Rcode::FormErr));
    }
    let qtype = be16(msg, i);
    let qclass = be16(msg, i + 2);
    let question_end = i + 4;
    let mut edns = None;
    if ar == 1 {
        // The only additional record a query may carry to us is OPT with
        // the root as owner (RFC 6891 §6.1.1); TSIG/SIG(0) are not offered.
        let o = question_end;
        if o + 11 > msg.len() || msg[o] != 0 || be16(msg, o + 1) != qtype::OPT {
            return Err(Reject::Header(Rcode::FormErr));
        }
        let rdlen = be16(msg, o + 9) as usize;
        if o + 11 + rdlen > msg.len() {
            return Err(Reject::Header(Rcode::FormErr));
        }
        edns = Some(Edns { payload: be16(msg, o + 3), version: msg[o + 6], dnssec_ok: msg[o + 7] & 0x80 != 0 });
    }
    Ok(Query { id, flags, qtype, qclass, name_lower, question_end, edns })
}

/// The hash ([`crate::zone::name_hash`]) of a query's lowercased question
/// name, read without checks beyond staying in bounds: only a prefetch hint,
/// [`parse_query`] judges the query.
pub fn question_hash(msg: &[u8]) -> Option<u64> {
    let mut name = [0u8; 256];
    let mut n = 0;
    let mut i = 12;
    loop {
        let l = *msg.get(i)? as usize;
        if l & 0xc0 != 0 || n + 1 + l > name.len() {
            return None;
        }
        name[n] = l as u8;
        n += 1;
        i += 1;
        if l == 0 {
            break;
        }
        let label = msg.get(i..i + l)?;
        for (d, s) in name[n..n + l].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        n += l;
        i += l;
    }
    Some(crate::zone::name_hash(&name[..n]))
}

/// Bytes of an OPT RR for a response (RFC 6891 §6.1.2): our payload size,
/// the extended rcode bits, version 0 and the client's DO bit copied back
/// (RFC 3225 §3).
pub fn push_opt(out: &mut Vec<u8>, edns: &Edns, rcode: Rcode) {
    out.push(0);
    out.extend_from_slice(&qtype::OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.push(((rcode as u16) >> 4) as u8);
    out.push(0);
    out.push(if edns.dnssec_ok { 0x80 } else { 0 });
    out.push(0);
    out.extend_from_slice(&0u16.to_be_bytes());
}

pub fn set_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Response flags for a query: QR, the client's RD and CD copied, RA because
/// names outside the cluster are resolved for the client.
pub fn response_flags(q_flags: u16, authoritative: bool, rcode: Rcode) -> u16 {
    let mut f = QR | RA | (q_flags & (RD | CD | 0x7800)) | ((rcode as u16) & 0xf);
    if authoritative {
        f |= AA;
    }
    f
}

/// A header-only error answer for a query whose question could not be read.
pub fn header_only(msg: &[u8], rcode: Rcode, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&msg[..2]);
    let q_flags = be16(msg, 2);
    out.extend_from_slice(&response_flags(q_flags, false, rcode).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// An answer with no records (negative, errors, TC), echoing the question:
/// header + question + optional authority record tail + OPT.
///
/// `soa` is `(offset of the zone apex within the question name, SOA tail)`:
/// the SOA owner is written as a compression pointer into the question.
pub fn empty_answer(
    msg: &[u8],
    q: &Query,
    rcode: Rcode,
    flags_extra: u16,
    authoritative: bool,
    soa: Option<(usize, &[u8])>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&msg[..12]);
    let flags = response_flags(q.flags, authoritative, rcode) | flags_extra;
    set_u16(out, 2, flags);
    set_u16(out, 4, 1);
    set_u16(out, 6, 0);
    set_u16(out, 8, soa.is_some() as u16);
    set_u16(out, 10, q.edns.is_some() as u16);
    out.extend_from_slice(&msg[12..q.question_end]);
    if let Some((apex_off, tail)) = soa {
        out.extend_from_slice(&(0xc000 | (12 + apex_off) as u16).to_be_bytes());
        out.extend_from_slice(tail);
    }
    if let Some(e) = &q.edns {
        push_opt(out, e, rcode);
    }
}

/// A pre-encoded positive answer: a complete response with ID 0 whose
/// question is the lowercased name. `prefix_len` is where the additional
/// section starts: the answer without glue, which may be sent without TC
/// (RFC 2181 §9).
#[derive(Debug, Clone)]
pub struct Prebuilt {
    /// Shared: a rebuild reuses the answers of unchanged Services.
    pub bytes: std::sync::Arc<[u8]>,
    pub prefix_len: usize,
    pub additionals: u16,
}

impl Prebuilt {
    pub fn as_ref(&self) -> PreRef<'_> {
        PreRef { bytes: &self.bytes, prefix_len: self.prefix_len, additionals: self.additionals }
    }
}

/// A [`Prebuilt`] answer wherever its bytes are (the zone's lookup layout
/// stores them inline).
#[derive(Debug, Clone, Copy)]
pub struct PreRef<'a> {
    pub bytes: &'a [u8],
    pub prefix_len: usize,
    pub additionals: u16,
}

/// Write `pre` as the answer to `msg`: its ID, flags and the question exactly
/// as asked (case and type, for ANY), then answers, the glue if it fits
/// within `limit`, and OPT. Returns false when even the answers do not fit:
/// the caller then sends a TC answer.
pub fn patch_answer(msg: &[u8], q: &Query, pre: PreRef<'_>, limit: usize, out: &mut Vec<u8>) -> bool {
    let opt_len = if q.edns.is_some() { 11 } else { 0 };
    let (len, ar) = if pre.bytes.len() + opt_len <= limit {
        (pre.bytes.len(), pre.additionals)
    } else if pre.prefix_len + opt_len <= limit {
        (pre.prefix_len, 0)
    } else {
        return false;
    };
    out.clear();
    out.extend_from_slice(&pre.bytes[..len]);
    out[0..2].copy_from_slice(&msg[0..2]);
    let rcode = Rcode::NoError;
    let flags = response_flags(q.flags, true, rcode) | (be16(pre.bytes, 2) & AA);
    set_u16(out, 2, flags);
    // The pre-encoded question has the same length as the asked one (same
    // labels, only case differs), so it is overwritten in place.
    out[12..q.question_end].copy_from_slice(&msg[12..q.question_end]);
    set_u16(out, 10, ar + q.edns.is_some() as u16);
    if let Some(e) = &q.edns {
        push_opt(out, e, rcode);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn parses_and_lowercases_the_question() {
        let q = parse_query(&query("Foo.Default.SVC.cluster.local.", qtype::A)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name_lower, ascii_to_wire("foo.default.svc.cluster.local"));
        assert_eq!(q.name_ascii(), "foo.default.svc.cluster.local.");
        assert_eq!(q.udp_limit(), 512);
    }

    #[test]
    fn rejects_malformed_questions() {
        // too short for a header: dropped
        assert_eq!(parse_query(&[1, 2, 3]).unwrap_err(), Reject::Drop);
        // a response: dropped, never answered
        let mut m = query("a.", 1);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Drop);
        // opcode UPDATE (5)
        let mut m = query("a.", 1);
        m[2] = 5 << 3;
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Header(Rcode::NotImp));
        // compression pointer in the question (a loop onto itself)
        let mut m = query("a.", 1);
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Header(Rcode::FormErr));
        // label of 64 bytes: the 0x40 bit is an extended label type
        let mut m = query("a.", 1);
        m[12] = 64;
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Header(Rcode::FormErr));
        // truncated after the name
        let m = query("abc.def.", 1);
        assert_eq!(parse_query(&m[..m.len() - 3]).unwrap_err(), Reject::Header(Rcode::FormErr));
        // two questions
        let mut m = query("a.", 1);
        m[5] = 2;
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Header(Rcode::FormErr));
        // name longer than 255 bytes
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(parse_query(&query(&long, 1)).unwrap_err(), Reject::Header(Rcode::FormErr));
    }

    #[test]
    fn question_hash_is_the_lookup_hash_of_the_lowercased_name() {
        let m = query("Foo.Default.SVC.cluster.local.", qtype::A);
        let want = crate::zone::name_hash(&ascii_to_wire("foo.default.svc.cluster.local"));
        assert_eq!(question_hash(&m), Some(want));
        assert_eq!(question_hash(&m[..20]), None, "truncated");
        assert_eq!(question_hash(&[0; 5]), None);
    }

    #[test]
    fn reads_edns() {
        let mut m = query("a.", 1);
        m[11] = 1;
        m.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 0]);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.edns, Some(Edns { payload: 4096, version: 0, dnssec_ok: true }));
        assert_eq!(q.udp_limit(), MAX_UDP_PAYLOAD as usize);
    }
}
