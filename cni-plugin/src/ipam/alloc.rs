//! The pure allocator: which address to hand out next, given what is taken.
//!
//! host-local semantics: continue after the last address reserved in this
//! range set, walk its ranges in order, wrap around, skip gateways and taken
//! addresses. Continuing (rather than restarting at the bottom) keeps a
//! just-released address out of circulation as long as possible, so a stale
//! peer is unlikely to reach a new pod at an old pod's address.

use std::collections::HashSet;
use std::net::IpAddr;

use super::cidr::{from_u128, to_u128};
use super::config::RangeSet;

/// The next free address of `set` after `last`, or None if it is full.
pub fn next_free(set: &RangeSet, taken: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
    if set.is_empty() {
        return None;
    }
    let v6 = set[0].subnet.addr.is_ipv6();
    // Position right after `last`, or the start of the first range.
    let (mut ri, mut cur) = match last.and_then(|l| set.iter().position(|r| r.contains(l)).map(|i| (i, l))) {
        Some((i, l)) => (i, to_u128(l)),
        None => (set.len() - 1, to_u128(set[set.len() - 1].end)),
    };
    let origin = (ri, cur);
    loop {
        // Step to the next candidate, moving to the next range (cyclically)
        // past a range's end.
        if cur >= to_u128(set[ri].end) {
            ri = (ri + 1) % set.len();
            cur = to_u128(set[ri].start);
        } else {
            cur += 1;
        }
        let ip = from_u128(cur, v6);
        if ip != set[ri].gateway && !taken.contains(&ip) {
            return Some(ip);
        }
        if (ri, cur) == origin {
            return None;
        }
    }
}

/// How many addresses of `set` are still free (saturating).
pub fn free_count(set: &RangeSet, taken: &HashSet<IpAddr>) -> u128 {
    set.iter()
        .map(|r| {
            let size = to_u128(r.end) - to_u128(r.start) + 1;
            let gw = u128::from(r.contains(r.gateway));
            let used = taken.iter().filter(|ip| **ip != r.gateway && r.contains(**ip)).count() as u128;
            size.saturating_sub(gw).saturating_sub(used)
        })
        .fold(0u128, u128::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::super::config::IpamConfig;
    use super::*;
    use serde_json::json;

    fn set(v: serde_json::Value) -> RangeSet {
        IpamConfig::parse(&json!({ "ranges": [v] })).unwrap().sets.remove(0)
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_in_order_skipping_gateway_and_taken() {
        // one row per case: taken addresses, last reserved, expected
        let s = set(json!([{"subnet": "10.0.0.0/29"}])); // .1 gw, .2-.6 usable
        let cases: &[(&[&str], Option<&str>, Option<&str>)] = &[
            (&[], None, Some("10.0.0.2")),             // first after the gateway
            (&["10.0.0.2"], None, Some("10.0.0.3")),   // skip taken
            (&[], Some("10.0.0.4"), Some("10.0.0.5")), // continue after last
            (&[], Some("10.0.0.6"), Some("10.0.0.2")), // wrap around, skip gw
            (&["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"], None, None), // full
            (&["10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"], Some("10.0.0.5"), Some("10.0.0.4")),
        ];
        for (taken, last, want) in cases {
            let t: HashSet<IpAddr> = taken.iter().map(|s| ip(s)).collect();
            assert_eq!(next_free(&s, &t, last.map(ip)), want.map(ip), "taken {taken:?} last {last:?}");
        }
        assert_eq!(free_count(&s, &HashSet::new()), 5);
    }

    #[test]
    fn walks_multiple_ranges_and_big_ipv6() {
        let s = set(json!([
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
            {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.10"}
        ]));
        let mut taken = HashSet::new();
        let mut last = None;
        for want in ["10.0.0.10", "10.0.0.11", "10.0.1.10"] {
            let got = next_free(&s, &taken, last).unwrap();
            assert_eq!(got, ip(want));
            taken.insert(got);
            last = Some(got);
        }
        assert_eq!(next_free(&s, &taken, last), None);
        let v6 = set(json!([{"subnet": "fd00::/64"}]));
        assert_eq!(next_free(&v6, &HashSet::new(), None), Some(ip("fd00::2")));
        assert_eq!(free_count(&v6, &HashSet::new()), (1u128 << 64) - 2);
    }

    #[test]
    fn never_returns_a_taken_address_over_many_rounds() {
        let s = set(json!([{"subnet": "10.9.0.0/26"}]));
        let mut taken = HashSet::new();
        let mut last = None;
        while let Some(a) = next_free(&s, &taken, last) {
            assert!(taken.insert(a), "{a} handed out twice");
            last = Some(a);
        }
        assert_eq!(taken.len(), 61); // 64 - network - broadcast - gateway
    }
}
