//! The plan and the diffs, one commented row per case.

use super::*;

fn node(name: &str, addrs: &[&str], cidrs: &[&str]) -> Node {
    Node {
        name: name.into(),
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        zone: None,
    }
}

fn underlay() -> Underlay {
    Underlay {
        index: 2,
        name: "eth0".into(),
        mtu: 1500,
        subnets: vec!["192.168.1.0/24".parse().unwrap(), "fd00:192:1::/64".parse().unwrap()],
    }
}

fn cfg(mode: Mode) -> Config {
    Config { mode, vni: 1, port: 8472, underlay_dev: None }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// This node (a), a peer on the segment (b) and one behind a router (c),
/// all dual-stack.
fn cluster() -> BTreeMap<String, Node> {
    [
        node("a", &["192.168.1.11", "fd00:192:1::11"], &["10.244.1.0/24", "fd00:10:244:1::/64"]),
        node("b", &["192.168.1.12", "fd00:192:1::12"], &["10.244.2.0/24", "fd00:10:244:2::/64"]),
        node("c", &["192.168.2.11", "fd00:192:2::11"], &["10.244.3.0/24", "fd00:10:244:3::/64"]),
    ]
    .into_iter()
    .map(|n| (n.name.clone(), n))
    .collect()
}

fn routes(p: &Plan) -> Vec<(String, String, Dev)> {
    p.routes.iter().map(|r| (r.dst.to_string(), r.gateway.to_string(), r.dev)).collect()
}

#[test]
fn auto_picks_host_gw_on_the_segment_and_vxlan_behind_a_router() {
    let nodes = cluster();
    let p = plan(&cfg(Mode::Auto), &nodes["a"], &underlay(), &nodes);
    assert_eq!(
        routes(&p),
        [
            // b shares 192.168.1.0/24 and fd00:192:1::/64: via its InternalIPs
            ("10.244.2.0/24".into(), "192.168.1.12".into(), Dev::Underlay),
            ("fd00:10:244:2::/64".into(), "fd00:192:1::12".into(), Dev::Underlay),
            // c does not: via its CIDR's network address on the tunnel
            ("10.244.3.0/24".into(), "10.244.3.0".into(), Dev::Vxlan(Family::Ipv4)),
            ("fd00:10:244:3::/64".into(), "fd00:10:244:3::".into(), Dev::Vxlan(Family::Ipv6)),
        ]
    );
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    assert_eq!(p.peers["b"][&Family::Ipv4], PeerMode::HostGw);
    assert_eq!(p.peers["c"][&Family::Ipv6], PeerMode::Vxlan);
    let t4 = &p.tunnels[&Family::Ipv4];
    // local = this node's IPv4 InternalIP, MTU = underlay - 50, own gw .0
    assert_eq!((t4.local, t4.mtu, t4.address), (ip("192.168.1.11"), 1450, Some(ip("10.244.1.0"))));
    assert_eq!(t4.mac, vtep_mac(ip("192.168.1.11")));
    let c_mac = vtep_mac(ip("192.168.2.11"));
    assert_eq!(t4.fdb.iter().copied().collect::<Vec<_>>(), [FdbEntry { mac: c_mac, dst: ip("192.168.2.11") }]);
    assert_eq!(t4.neighbours, BTreeMap::from([(ip("10.244.3.0"), c_mac)]));
    let t6 = &p.tunnels[&Family::Ipv6];
    assert_eq!((t6.local, t6.mtu), (ip("fd00:192:1::11"), 1430));
    // VXLAN routes are onlink and carry Ferry's protocol
    let e = p.routes[2].entry(9);
    assert!(e.onlink && e.protocol == ROUTE_PROTOCOL && e.oif == 9);
    assert!(!p.routes[0].entry(2).onlink);
}

#[test]
fn forced_modes_and_none() {
    let nodes = cluster();
    // vxlan: every peer through the tunnel, b included
    let p = plan(&cfg(Mode::Vxlan), &nodes["a"], &underlay(), &nodes);
    assert!(p.routes.iter().all(|r| matches!(r.dev, Dev::Vxlan(_))));
    assert_eq!(p.tunnels[&Family::Ipv4].fdb.len(), 2);
    // host-gw: c cannot be reached and is reported
    let p = plan(&cfg(Mode::HostGw), &nodes["a"], &underlay(), &nodes);
    assert_eq!(p.routes.len(), 2);
    assert!(p.tunnels.is_empty());
    assert!(p.issues.iter().all(|i| i.starts_with("node c:")) && p.issues.len() == 2, "{:?}", p.issues);
    // none: nothing at all
    assert_eq!(plan(&cfg(Mode::None), &nodes["a"], &underlay(), &nodes), Plan::default());
}

#[test]
fn bad_node_data_is_reported_and_skipped() {
    let mut nodes = cluster();
    for n in [
        // no pod CIDR: no route, nothing to report
        node("d", &["192.168.1.14"], &[]),
        // a CIDR that does not parse
        node("e", &["192.168.1.15"], &["10.244.5.0/99"]),
        // an IPv6 CIDR but only an IPv4 InternalIP: the IPv4 route only
        node("f", &["192.168.1.16"], &["10.244.6.0/24", "fd00:10:244:6::/64"]),
        // this node's own CIDR claimed by another
        node("g", &["192.168.1.17"], &["10.244.1.0/24"]),
        // the same CIDR as b (b sorts first and keeps it)
        node("h", &["192.168.1.18"], &["10.244.2.0/24"]),
        // no address at all
        node("i", &[], &["10.244.9.0/24"]),
    ] {
        nodes.insert(n.name.clone(), n);
    }
    let p = plan(&cfg(Mode::Auto), &nodes["a"], &underlay(), &nodes);
    let dsts: Vec<String> = p.routes.iter().map(|r| format!("{}:{}", r.node, r.dst)).collect();
    assert_eq!(
        dsts,
        ["b:10.244.2.0/24", "b:fd00:10:244:2::/64", "c:10.244.3.0/24", "c:fd00:10:244:3::/64", "f:10.244.6.0/24"]
    );
    let named: Vec<&str> = p.issues.iter().map(|i| i.split(':').next().unwrap()).collect();
    assert_eq!(named, ["node e", "node f", "node g", "node h", "node i"], "{:?}", p.issues);
    assert!(!p.peers.contains_key("d") && !p.peers.contains_key("e"));
}

#[test]
fn this_node_without_an_address_of_a_family_tunnels_nothing_of_it() {
    let nodes = cluster();
    let mut own = nodes["a"].clone();
    own.addresses.retain(IpAddr::is_ipv4);
    let p = plan(&cfg(Mode::Auto), &own, &underlay(), &nodes);
    // c's IPv6 CIDR needs a tunnel from an IPv6 address a does not have
    assert!(!p.tunnels.contains_key(&Family::Ipv6));
    assert!(p.issues.iter().any(|i| i.starts_with("node c:") && i.contains("ipv6")), "{:?}", p.issues);
    // b is still on the IPv6 segment (the subnet is on the device)
    assert!(p.routes.iter().any(|r| r.node == "b" && r.dst.is_ipv6()));
}

#[test]
fn vtep_macs_are_unicast_local_and_distinct() {
    let a = vtep_mac(ip("192.168.1.11"));
    assert_eq!(a, [0x0e, 0x46, 192, 168, 1, 11]);
    // same host number on two IPv6 segments: different MACs
    let (x, y) = (vtep_mac(ip("fd00:192:1::11")), vtep_mac(ip("fd00:192:2::11")));
    assert_ne!(x, y);
    for m in [a, x, y] {
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    }
    // stable: the value is part of the wire contract between agent versions
    assert_eq!(vtep_mac(ip("fd00:192:1::11")), vtep_mac(ip("fd00:192:1::11")));
}

#[test]
fn pod_mtu_leaves_room_for_the_tunnel() {
    // auto, IPv4 only: underlay - 50
    assert_eq!(pod_mtu(Mode::Auto, Some(1500), false, None), 1450);
    // auto, dual-stack: the IPv6 tunnel's 70
    assert_eq!(pod_mtu(Mode::Auto, Some(1500), true, None), 1430);
    // vxlan on a jumbo underlay
    assert_eq!(pod_mtu(Mode::Vxlan, Some(9000), false, None), 8950);
    // host-gw: the underlay's own
    assert_eq!(pod_mtu(Mode::HostGw, Some(9000), true, None), 9000);
    // underlay not known yet: 1500 assumed
    assert_eq!(pod_mtu(Mode::Auto, None, true, None), 1430);
    // an explicit --cni-mtu is kept where it fits, lowered where not
    assert_eq!(pod_mtu(Mode::Auto, Some(1500), true, Some(1400)), 1400);
    assert_eq!(pod_mtu(Mode::Auto, Some(1500), true, Some(1500)), 1430);
    assert_eq!(pod_mtu(Mode::None, Some(1500), true, Some(1500)), 1500);
}

fn route(dst: &str, prefix: u8, gw: &str, oif: u32, protocol: u8) -> RouteEntry {
    RouteEntry { dst: ip(dst), prefix, gateway: ip(gw), oif, onlink: false, protocol }
}

#[test]
fn route_diff() {
    let p = ROUTE_PROTOCOL;
    let b = route("10.244.2.0", 24, "192.168.1.12", 2, p);
    let c = route("10.244.3.0", 24, "192.168.2.1", 2, p);
    let other = route("10.99.0.0", 16, "192.168.1.1", 2, 4);
    // everything in place (a restart): no op at all
    let (ops, conflicts) = diff_routes(&[b, c], &[other, b, c]);
    assert!(ops.is_empty() && conflicts.is_empty());
    // a new peer: one add
    assert_eq!(diff_routes(&[b, c], &[b]).0, [RouteOp::Add(c)]);
    // a peer gone: its route deleted, the static route never
    assert_eq!(diff_routes(&[b], &[other, b, c]).0, [RouteOp::Delete(c)]);
    // a peer's new InternalIP (or host-gw -> vxlan): replaced in place, not deleted
    let b2 = route("10.244.2.0", 24, "192.168.1.99", 2, p);
    assert_eq!(diff_routes(&[b2], &[b]).0, [RouteOp::Replace(b2)]);
    // a pod CIDR changed: the new added, the old deleted
    let b3 = route("10.244.20.0", 24, "192.168.1.12", 2, p);
    assert_eq!(diff_routes(&[b3], &[b]).0, [RouteOp::Add(b3), RouteOp::Delete(b)]);
    // someone else's route to a wanted destination: left alone, reported
    let theirs = route("10.244.2.0", 24, "192.168.1.50", 2, 4);
    let (ops, conflicts) = diff_routes(&[b], &[theirs]);
    assert!(ops.is_empty());
    assert!(conflicts[0].contains("10.244.2.0/24") && conflicts[0].contains("protocol 4"), "{conflicts:?}");
    // nothing wanted (a node removed from everything): only ours go
    assert_eq!(diff_routes(&[], &[other, b]).0, [RouteOp::Delete(b)]);
}

#[test]
fn fdb_and_neighbour_diff() {
    let m1 = [0x0e, 0x46, 192, 168, 2, 11];
    let m2 = [0x0e, 0x46, 192, 168, 3, 11];
    let e1 = FdbEntry { mac: m1, dst: ip("192.168.2.11") };
    let e2 = FdbEntry { mac: m2, dst: ip("192.168.3.11") };
    // in place: nothing
    assert_eq!(diff_fdb(&BTreeSet::from([e1]), &[e1]), (vec![], vec![]));
    // one new, one gone
    assert_eq!(diff_fdb(&BTreeSet::from([e2]), &[e1]), (vec![e2], vec![e1]));
    // same MAC, new destination: the put replaces it, no delete
    let moved = FdbEntry { mac: m1, dst: ip("192.168.9.11") };
    assert_eq!(diff_fdb(&BTreeSet::from([moved]), &[e1]), (vec![moved], vec![]));

    let n = |s: &str, mac, permanent| Neighbour { ip: ip(s), mac, permanent };
    let want = BTreeMap::from([(ip("10.244.3.0"), m1)]);
    // in place: nothing
    assert_eq!(diff_neighbours(&want, &[n("10.244.3.0", m1, true)]), (vec![], vec![]));
    // a learnt (not permanent) entry of a wanted address is made permanent;
    // learnt entries are never deleted
    assert_eq!(
        diff_neighbours(&want, &[n("10.244.3.0", m2, false), n("10.244.7.0", m2, false)]),
        (vec![(ip("10.244.3.0"), m1)], vec![])
    );
    // a stale permanent entry goes
    assert_eq!(diff_neighbours(&BTreeMap::new(), &[n("10.244.3.0", m1, true)]), (vec![], vec![ip("10.244.3.0")]));
}
