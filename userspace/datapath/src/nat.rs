//! The masquerade's maps from userspace: the LPM keys of its CIDR tries,
//! the listing `ferryctl nat list` prints, and the expiry the agent runs.
//!
//! Entries expire by protocol state, from the later of the two
//! directions' last-seen times ([`NatTimeouts`], Cilium's defaults):
//! - TCP: 60 s until the remote answers, 6 h once it has, 10 s after a RST
//!   or once both sides sent a FIN;
//! - UDP 60 s; ICMP echo 30 s.
//!
//! A pair is deleted forward entry first: a packet that finds no forward
//! entry any more claims a new port, and the old reverse entry keeps its
//! port from being reused until it goes a moment later, so no reply is
//! ever given to another flow.
use std::{net::IpAddr, time::Duration};

use aya::maps::{lpm_trie::Key, HashMap, MapData};
use ferry_common::{
    ct_flags, LpmAddr, NatEntry, NatKey, AF_INET, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use ipnetwork::IpNetwork;

use crate::endpoints::endpoint_key;

/// The key of `net` in `FERRY_MASQ_SRC` / `FERRY_NONMASQ`.
pub fn lpm_key(net: IpNetwork) -> Key<LpmAddr> {
    let k = endpoint_key(net.network());
    Key::new(LpmAddr::FAMILY_BITS + net.prefix() as u32, LpmAddr { family: [k.family, 0, 0, 0], addr: k.addr })
}

/// How long an idle entry lives, by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTimeouts {
    pub tcp_opening: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for NatTimeouts {
    fn default() -> Self {
        Self {
            tcp_opening: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
        }
    }
}

/// A flow's state, from both directions' flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatState {
    /// TCP, no answer yet.
    Opening,
    /// TCP answered; UDP and ICMP answered.
    Established,
    /// TCP after a RST, or a FIN each way.
    Closing,
    /// UDP or ICMP with no reply seen.
    Unreplied,
}

impl NatState {
    pub fn of(proto: u8, fwd_flags: u32, rev_flags: u32) -> NatState {
        let all = fwd_flags | rev_flags;
        let replied = rev_flags & ct_flags::SEEN_REPLY != 0;
        if proto == IPPROTO_TCP {
            let both_fin = fwd_flags & rev_flags & ct_flags::FIN_SEEN != 0;
            if all & ct_flags::RST_SEEN != 0 || both_fin {
                NatState::Closing
            } else if replied {
                NatState::Established
            } else {
                NatState::Opening
            }
        } else if replied {
            NatState::Established
        } else {
            NatState::Unreplied
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NatState::Opening => "opening",
            NatState::Established => "established",
            NatState::Closing => "closing",
            NatState::Unreplied => "unreplied",
        }
    }
}

impl NatTimeouts {
    /// How long a flow of `proto` in `state` may stay idle.
    pub fn idle_limit(&self, proto: u8, state: NatState) -> Duration {
        match (proto, state) {
            (IPPROTO_TCP, NatState::Opening) => self.tcp_opening,
            (IPPROTO_TCP, NatState::Closing) => self.tcp_closing,
            (IPPROTO_TCP, _) => self.tcp_established,
            (IPPROTO_UDP, _) => self.udp,
            _ => self.icmp,
        }
    }
}

/// One masqueraded flow, both directions joined.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NatFlow {
    /// "tcp", "udp", "icmp".
    pub proto: &'static str,
    pub pod: IpAddr,
    /// The pod's port (its echo identifier for ICMP).
    pub pod_port: u16,
    pub nat: IpAddr,
    pub nat_port: u16,
    pub remote: IpAddr,
    /// 0 for ICMP.
    pub remote_port: u16,
    pub state: NatState,
    /// Since the last packet either way (at the entries' one-second grain).
    pub idle_s: u64,
    /// A forward entry whose reverse entry is gone (or the reverse):
    /// left by an interrupted write, removed by the next expiry.
    pub orphan: bool,
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP | IPPROTO_ICMPV6 => "icmp",
        _ => "?",
    }
}

fn ip(family: u8, addr: &[u32; 4]) -> IpAddr {
    let mut b = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if family == AF_INET {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    }
}

/// The reverse entry's key of the forward entry (`key`, `fwd`).
pub fn reverse_key(key: &NatKey, fwd: &NatEntry) -> NatKey {
    NatKey {
        src_addr: key.dst_addr,
        dst_addr: fwd.addr,
        src_port: key.dst_port,
        dst_port: fwd.port,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

fn flow(key: &NatKey, fwd: &NatEntry, rev: Option<&NatEntry>, now_ns: u64) -> NatFlow {
    let (rev_flags, rev_seen) = rev.map_or((0, 0), |r| (r.flags, r.last_seen_ns));
    let last = fwd.last_seen_ns.max(rev_seen);
    let icmp = key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6;
    NatFlow {
        proto: proto_name(key.proto),
        pod: ip(key.family, &key.src_addr),
        pod_port: u16::from_be(key.src_port),
        nat: ip(key.family, &fwd.addr),
        nat_port: u16::from_be(fwd.port),
        remote: ip(key.family, &key.dst_addr),
        remote_port: if icmp { 0 } else { u16::from_be(key.dst_port) },
        state: NatState::of(key.proto, fwd.flags, rev_flags),
        idle_s: now_ns.saturating_sub(last) / 1_000_000_000,
        orphan: rev.is_none(),
    }
}

/// CLOCK_MONOTONIC now, in the entries' unit.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

type NatMap = HashMap<MapData, NatKey, NatEntry>;

/// Every masqueraded flow (by forward entry), sorted by pod then remote.
pub fn list_nat(snat: &NatMap, snat_rev: &NatMap) -> Vec<NatFlow> {
    let now = monotonic_ns();
    let mut flows: Vec<NatFlow> = snat
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, fwd)| {
            let rev = snat_rev.get(&reverse_key(&k, &fwd), 0).ok().filter(|r| r.addr == k.src_addr);
            flow(&k, &fwd, rev.as_ref(), now)
        })
        .collect();
    flows.sort_by(|a, b| {
        (a.pod, a.pod_port, a.remote, a.remote_port).cmp(&(b.pod, b.pod_port, b.remote, b.remote_port))
    });
    flows
}

/// What one expiry pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Flows kept (forward entries).
    pub kept: usize,
    /// Flows removed.
    pub expired: usize,
    /// Reverse entries without a forward entry, removed once idle.
    pub orphans: usize,
}

/// Removes flows idle longer than their state allows, and reverse
/// entries no forward entry claims once they are as idle.
pub fn expire_nat(snat: &mut NatMap, snat_rev: &mut NatMap, timeouts: &NatTimeouts) -> Expiry {
    let now = monotonic_ns();
    let mut out = Expiry::default();
    let fwd: Vec<(NatKey, NatEntry)> = snat.iter().filter_map(|r| r.ok()).collect();
    let mut claimed = std::collections::HashSet::with_capacity(fwd.len());
    for (k, e) in &fwd {
        let rkey = reverse_key(k, e);
        let rev = snat_rev.get(&rkey, 0).ok().filter(|r| r.addr == k.src_addr);
        let f = flow(k, e, rev.as_ref(), now);
        let limit = timeouts.idle_limit(k.proto, f.state);
        if Duration::from_secs(f.idle_s) > limit {
            // Forward first (see the module's comment).
            let _ = snat.remove(k);
            if rev.is_some() {
                let _ = snat_rev.remove(&rkey);
            }
            out.expired += 1;
        } else {
            out.kept += 1;
            claimed.insert(rkey);
        }
    }
    let revs: Vec<(NatKey, NatEntry)> = snat_rev.iter().filter_map(|r| r.ok()).collect();
    for (k, e) in revs {
        if claimed.contains(&k) {
            continue;
        }
        let idle = Duration::from_nanos(now.saturating_sub(e.last_seen_ns));
        let state = NatState::of(k.proto, 0, e.flags);
        if idle > timeouts.idle_limit(k.proto, state).min(timeouts.tcp_opening) {
            // Still no forward entry (re-read: one may have been made since).
            let fwd_key = NatKey {
                src_addr: e.addr,
                dst_addr: k.src_addr,
                src_port: e.port,
                dst_port: k.src_port,
                proto: k.proto,
                family: k.family,
                _pad: [0; 2],
            };
            if snat.get(&fwd_key, 0).is_err() {
                let _ = snat_rev.remove(&k);
                out.orphans += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_their_limits() {
        let t = NatTimeouts::default();
        use ct_flags::{FIN_SEEN as F, RST_SEEN as R, SEEN_REPLY as S};
        // (proto, fwd flags, rev flags, state, limit)
        let rows = [
            (IPPROTO_TCP, 0, 0, NatState::Opening, t.tcp_opening),
            (IPPROTO_TCP, 0, S, NatState::Established, t.tcp_established),
            (IPPROTO_TCP, F, S, NatState::Established, t.tcp_established),
            (IPPROTO_TCP, F, S | F, NatState::Closing, t.tcp_closing),
            (IPPROTO_TCP, 0, S | R, NatState::Closing, t.tcp_closing),
            (IPPROTO_TCP, R, 0, NatState::Closing, t.tcp_closing),
            (IPPROTO_UDP, 0, 0, NatState::Unreplied, t.udp),
            (IPPROTO_UDP, 0, S, NatState::Established, t.udp),
            (IPPROTO_ICMP, 0, S, NatState::Established, t.icmp),
            (IPPROTO_ICMPV6, 0, 0, NatState::Unreplied, t.icmp),
        ];
        for (proto, f, r, state, limit) in rows {
            assert_eq!(NatState::of(proto, f, r), state, "{proto} {f:#x} {r:#x}");
            assert_eq!(t.idle_limit(proto, state), limit, "{proto} {state:?}");
        }
    }

    #[test]
    fn lpm_keys_carry_the_family_before_the_prefix() {
        let k = lpm_key("10.244.1.0/24".parse().unwrap());
        assert_eq!({ k.prefix_len() }, 32 + 24);
        assert_eq!(k.data().family, [AF_INET, 0, 0, 0]);
        assert_eq!(k.data().addr[0].to_ne_bytes(), [10, 244, 1, 0]);
        let k = lpm_key("fd00:10:244:1::5/64".parse().unwrap());
        assert_eq!(k.prefix_len(), 32 + 64);
        assert_eq!(k.data().family, [ferry_common::AF_INET6, 0, 0, 0]);
        // the network address, host bits cleared
        assert_eq!(k.data().addr[2..], [0, 0]);
    }
}
