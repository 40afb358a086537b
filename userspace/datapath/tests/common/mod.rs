//! Shared by the datapath crate's privileged tests: a hand-made packet
//! builder / decoder with checksum verification.
#![allow(dead_code, reason = "each test binary uses a different part of the helpers")]

use std::net::IpAddr;

pub use ferry_datapath::testing::*;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;

/// BPF_PROG_TEST_RUN verdicts (TC_ACT_*).
pub const OK: u32 = 0;
pub const SHOT: u32 = 2;
pub const REDIRECT: u32 = 7;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `prog` once on `pkt`: (verdict, packet out).
pub fn run(dp: &ferry_datapath::Datapath, prog: ferry_datapath::Prog, pkt: &[u8]) -> (u32, Vec<u8>) {
    let out = ferry_datapath::test_run(&dp.pin_dir, prog, pkt).expect("test_run");
    (out.verdict, out.packet)
}

/// Drops counted for `reason`, summed over the CPUs.
pub fn drops(dp: &ferry_datapath::Datapath, reason: ferry_common::DropReason) -> u64 {
    dp.maps.drops.get(&(reason as u32), 0).unwrap().iter().sum()
}

/// A packet to build by hand. Defaults make a valid TCP SYN; the knobs
/// make it malformed in one specific way.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    /// TCP options (padded to 4 bytes by the caller).
    pub tcp_opts: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_opts: Vec<u8>,
    /// IPv4 frag_off field (host order, flags included).
    pub frag: u16,
    /// Added to the IP length field (tot_len / payload_len).
    pub len_delta: i32,
    /// IPv6 hop-by-hop extension header before the L4 header.
    pub ext_hdr: bool,
    /// An IPv6 fragment header (offset in 8-byte units, more fragments)
    /// before the L4 header (datagram id 7). Offset > 0 leaves the L4
    /// header out, as a later fragment has none.
    pub frag6: Option<(u16, bool)>,
    /// Override of the TCP data offset (in 32-bit words).
    pub doff: Option<u8>,
    /// Override of the IPv4 header length (in 32-bit words).
    pub ihl: Option<u8>,
    /// Cut the frame to this many bytes after building.
    pub truncate: Option<usize>,
}

impl Pkt {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Pkt {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: TCP,
            sport,
            dport,
            flags,
            seq: 1000,
            ack: if flags & ACK != 0 { 5000 } else { 0 },
            payload: Vec::new(),
            tcp_opts: Vec::new(),
            ip_opts: Vec::new(),
            frag: 0,
            len_delta: 0,
            ext_hdr: false,
            frag6: None,
            doff: None,
            ihl: None,
            truncate: None,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Self {
        Pkt { proto: UDP, payload: payload.to_vec(), ..Pkt::tcp(src, sport, dst, dport, 0) }
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == TCP {
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&self.ack.to_be_bytes());
            let doff = self.doff.unwrap_or(5 + (self.tcp_opts.len() / 4) as u8);
            l4.push(doff << 4);
            l4.push(self.flags);
            l4.extend_from_slice(&64240u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]); // csum, urg
            l4.extend_from_slice(&self.tcp_opts);
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let csum_off = if self.proto == TCP { 16 } else { 6 };
        let c = l4_checksum(self.src, self.dst, self.proto, &l4);
        l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = self.l4();
        if let Some((off, _)) = self.frag6 {
            if off > 0 {
                l4 = self.payload.clone();
            }
        }
        let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa];
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + self.ip_opts.len() / 4;
                let tot = (ihl * 4 + l4.len()) as i32 + self.len_delta;
                let mut ip = vec![0x40 | self.ihl.unwrap_or(ihl as u8), 0];
                ip.extend_from_slice(&(tot as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&self.frag.to_be_bytes());
                ip.extend_from_slice(&[64, self.proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_opts);
                let c = fold(sum(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let ext = if self.ext_hdr || self.frag6.is_some() { 8 } else { 0 };
                let plen = (ext + l4.len()) as i32 + self.len_delta;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(plen as u16).to_be_bytes());
                f.push(match (self.ext_hdr, self.frag6) {
                    (true, _) => 0,
                    (false, Some(_)) => 44,
                    (false, None) => self.proto,
                });
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                if self.ext_hdr {
                    // Hop-by-hop: next header, length 0 (8 bytes), PadN.
                    f.extend_from_slice(&[self.proto, 0, 1, 4, 0, 0, 0, 0]);
                } else if let Some((off, more)) = self.frag6 {
                    f.extend_from_slice(&[self.proto, 0]);
                    f.extend_from_slice(&((off << 3) | more as u16).to_be_bytes());
                    f.extend_from_slice(&7u32.to_be_bytes());
                }
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&l4);
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        f
    }
}

/// One's-complement sum of big-endian 16-bit words (odd byte padded).
pub fn sum(b: &[u8]) -> u32 {
    b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// Folds `sum` into a 16-bit one's-complement checksum.
pub fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    sum(&p)
}

fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let c = fold(pseudo(src, dst, proto, l4.len()) + sum(l4));
    if proto == UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// What a test observes of a (translated) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub src_mac: [u8; 6],
    /// The IPv4 header checksum and the L4 checksum both verify.
    pub checksums_ok: bool,
}

/// Decodes a plain (no options, no extension headers) TCP/UDP frame.
pub fn decode(f: &[u8]) -> Seen {
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, proto, l4, ip_ok) = if ethertype == 0x0800 {
        let ip = &f[14..34];
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), ip[9], &f[34..], fold(sum(ip)) == 0)
    } else {
        let s: [u8; 16] = f[22..38].try_into().unwrap();
        let d: [u8; 16] = f[38..54].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), f[20], &f[54..], true)
    };
    let l4_ok = fold(pseudo(src, dst, proto, l4.len()) + sum(l4)) == 0;
    let tcp = proto == TCP;
    Seen {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        flags: if tcp { l4[13] } else { 0 },
        seq: if tcp { u32::from_be_bytes(l4[4..8].try_into().unwrap()) } else { 0 },
        ack: if tcp { u32::from_be_bytes(l4[8..12].try_into().unwrap()) } else { 0 },
        src_mac: f[6..12].try_into().unwrap(),
        checksums_ok: ip_ok && l4_ok,
    }
}

/// Splits a built (unfragmented, no options, no extension headers) frame
/// into IP fragments of at most `chunk` L4 bytes each (a multiple of 8), as
/// a sending kernel does: IPv4 with the datagram's id in every header,
/// IPv6 with a fragment header (RFC 8200 4.5). In order, first first.
pub fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let v4 = u16::from_be_bytes([frame[12], frame[13]]) == 0x0800;
    let hlen = if v4 { 20 } else { 40 };
    let (ip, l4) = (&frame[14..14 + hlen], &frame[14 + hlen..]);
    let n = l4.len().div_ceil(chunk);
    (0..n)
        .map(|i| {
            let part = &l4[i * chunk..((i + 1) * chunk).min(l4.len())];
            let more = i + 1 < n;
            let units = (i * chunk / 8) as u16;
            let mut f = frame[..14].to_vec();
            if v4 {
                let mut h = ip.to_vec();
                h[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
                h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                h[6..8].copy_from_slice(&(units | if more { 0x2000 } else { 0 }).to_be_bytes());
                h[10..12].copy_from_slice(&[0, 0]);
                let c = fold(sum(&h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            } else {
                let mut h = ip.to_vec();
                h[4..6].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
                let next = h[6];
                h[6] = 44;
                f.extend_from_slice(&h);
                f.extend_from_slice(&[next, 0]);
                f.extend_from_slice(&((units << 3) | more as u16).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
            }
            f.extend_from_slice(part);
            f
        })
        .collect()
}

/// What a receiver makes of fragments (in any order): the datagram's
/// addresses, its L4 bytes in offset order, and whether every IPv4 header
/// checksum verified. Panics on a gap or an id mismatch.
pub fn reassemble(frags: &[Vec<u8>]) -> (IpAddr, IpAddr, Vec<u8>, bool) {
    let mut parts: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut hdr_ok = true;
    let mut addrs = None;
    let mut ids = std::collections::BTreeSet::new();
    for f in frags {
        let v4 = u16::from_be_bytes([f[12], f[13]]) == 0x0800;
        let (src, dst, off, id, data): (IpAddr, IpAddr, usize, u32, &[u8]) = if v4 {
            let ip = &f[14..34];
            hdr_ok &= fold(sum(ip)) == 0;
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            let off = (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) as usize * 8;
            (s.into(), d.into(), off, u16::from_be_bytes([ip[4], ip[5]]) as u32, &f[34..])
        } else {
            assert_eq!(f[20], 44, "a fragment header");
            let s: [u8; 16] = f[22..38].try_into().unwrap();
            let d: [u8; 16] = f[38..54].try_into().unwrap();
            let off = (u16::from_be_bytes([f[56], f[57]]) >> 3) as usize * 8;
            (s.into(), d.into(), off, u32::from_be_bytes(f[58..62].try_into().unwrap()), &f[62..])
        };
        assert!(addrs.is_none() || addrs == Some((src, dst)), "fragments disagree on addresses");
        addrs = Some((src, dst));
        ids.insert(id);
        parts.push((off, data.to_vec()));
    }
    assert_eq!(ids.len(), 1, "one datagram");
    parts.sort();
    let mut l4 = Vec::new();
    for (off, data) in parts {
        assert_eq!(off, l4.len(), "no gap, no overlap");
        l4.extend_from_slice(&data);
    }
    let (src, dst) = addrs.unwrap();
    (src, dst, l4, hdr_ok)
}

/// The UDP checksum of a reassembled datagram verifies against `src`/`dst`.
pub fn udp_checksum_ok(src: IpAddr, dst: IpAddr, l4: &[u8]) -> bool {
    fold(pseudo(src, dst, UDP, l4.len()) + sum(l4)) == 0
}
