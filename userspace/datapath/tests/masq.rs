//! The uplink programs (masquerade) on hand-made packets, through
//! BPF_PROG_TEST_RUN against real (per-test) pinned maps. A test run's
//! packet arrives on the loopback device (ifindex 1), so that is the
//! "uplink" configured here. Needs root.
mod common;

use std::net::IpAddr;

use common::*;
use ferry_common::{DropReason, MasqIface};
use ferry_datapath::{endpoint_key, load_or_adopt, lpm_key, Datapath, DatapathConfig, Prog};

const LO: u32 = 1;

const POD: &str = "10.244.1.2";
const POD2: &str = "10.244.1.3";
const NODE: &str = "192.0.2.1";
const REMOTE: &str = "203.0.113.5";
const ROUTER: &str = "198.51.100.1";
const POD6: &str = "fd00:10:244:1::2";
const NODE6: &str = "fd00:192::1";
const REMOTE6: &str = "2001:db8::5";
/// Four SNAT ports: small enough to run out of.
const PORTS: (u16, u16) = (61000, 61003);

fn setup() -> (PinDir, Datapath) {
    let pin = PinDir::new();
    let mut dp = load_or_adopt(pin.path(), &DatapathConfig::small()).expect("load");
    let m = &mut dp.maps;
    let iface = MasqIface {
        addr4: endpoint_key(ip(NODE)).addr[0],
        port_min: PORTS.0,
        port_max: PORTS.1,
        addr6: endpoint_key(ip(NODE6)).addr,
    };
    m.masq_ifaces.insert(LO, iface, 0).unwrap();
    for net in ["10.244.1.0/24", "fd00:10:244:1::/64"] {
        m.masq_sources.insert(&lpm_key(net.parse().unwrap()), 1, 0).unwrap();
    }
    for net in ["10.244.0.0/16", "fd00:10:244::/48", "192.0.2.0/24"] {
        m.non_masq.insert(&lpm_key(net.parse().unwrap()), 1, 0).unwrap();
    }
    (pin, dp)
}

fn in_range(port: u16) -> bool {
    (PORTS.0..=PORTS.1).contains(&port)
}

/// A pod's TCP flow out and its reply back: source and port rewritten,
/// replies restored, checksums right, the same port for the flow's later
/// packets; IPv4 and IPv6.
#[test]
fn tcp_out_and_back() {
    let (_pin, dp) = setup();
    for (pod, node, remote) in [(POD, NODE, REMOTE), (POD6, NODE6, REMOTE6)] {
        let (v, out) = run(&dp, Prog::ToNet, &Pkt::tcp(pod, 40000, remote, 80, SYN).build());
        assert_eq!(v, OK);
        let s = decode(&out);
        assert_eq!((s.src, s.dst, s.dport), (ip(node), ip(remote), 80), "{pod}: masqueraded");
        assert!(in_range(s.sport), "{}", s.sport);
        assert!(s.checksums_ok, "{pod}: checksums after SNAT");
        let port = s.sport;

        let (v, out) = run(&dp, Prog::FromNet, &Pkt::tcp(remote, 80, node, port, SYN | ACK).build());
        assert_eq!(v, OK);
        let r = decode(&out);
        assert_eq!((r.src, r.sport, r.dst, r.dport), (ip(remote), 80, ip(pod), 40000), "{pod}: reply restored");
        assert!(r.checksums_ok);

        let (_, out) = run(&dp, Prog::ToNet, &Pkt::tcp(pod, 40000, remote, 80, ACK).build());
        assert_eq!(decode(&out).sport, port, "{pod}: one flow, one port");

        // The same port from another remote port is no reply of ours: the
        // node's own, untouched.
        let stray = Pkt::tcp(remote, 81, node, port, ACK);
        let (v, out) = run(&dp, Prog::FromNet, &stray.build());
        assert_eq!((v, out), (OK, stray.build()), "{pod}: not ours");
    }
    let nat = ferry_datapath::list_nat(&dp.maps.snat, &dp.maps.snat_rev);
    assert_eq!(nat.len(), 2, "{nat:?}");
    assert!(nat.iter().all(|f| f.state == ferry_datapath::NatState::Established && !f.orphan), "{nat:?}");
}

/// What keeps its source: pod-to-pod and pod-to-node (non-masquerade
/// destinations), the node's own packets, sources outside this node's pod
/// CIDRs, and packets that cannot be validated.
#[test]
fn what_is_left_alone() {
    let (_pin, dp) = setup();
    let mut short = Pkt::tcp(POD, 40000, REMOTE, 80, SYN);
    short.len_delta = 4; // claims bytes it does not have
    let mut bad_doff = Pkt::tcp(POD, 40000, REMOTE, 80, SYN);
    bad_doff.doff = Some(3);
    let cases = [
        ("to a pod on another node", Pkt::tcp(POD, 40000, "10.244.2.7", 80, SYN)),
        ("to a node", Pkt::tcp(POD, 40000, "192.0.2.12", 22, SYN)),
        ("from the node itself", Pkt::tcp(NODE, 40000, REMOTE, 80, SYN)),
        ("from outside the pod CIDR", Pkt::tcp("10.99.0.1", 40000, REMOTE, 80, SYN)),
        ("IPv6 to a pod", Pkt::tcp(POD6, 40000, "fd00:10:244:2::7", 80, SYN)),
        ("an IP length longer than the frame", short),
        ("a TCP header shorter than 20 bytes", bad_doff),
    ];
    for (what, p) in cases {
        let frame = p.build();
        let (v, out) = run(&dp, Prog::ToNet, &frame);
        assert_eq!((v, &out), (OK, &frame), "{what}");
    }
    assert!(ferry_datapath::list_nat(&dp.maps.snat, &dp.maps.snat_rev).is_empty());
}

/// Ports never collide: flows to one remote address and port get distinct
/// ports until the range is used up; then a new flow is dropped and
/// counted, never given a port in use. Another remote port has ports again.
#[test]
fn ports_are_distinct_and_exhaustion_is_a_counted_drop() {
    let (_pin, dp) = setup();
    let mut seen = std::collections::BTreeSet::new();
    let range = (PORTS.1 - PORTS.0 + 1) as usize;
    for i in 0..range as u16 {
        let pod = if i % 2 == 0 { POD } else { POD2 };
        let (v, out) = run(&dp, Prog::ToNet, &Pkt::udp(pod, 5000 + i, REMOTE, 53, b"q").build());
        assert_eq!(v, OK, "flow {i}");
        let s = decode(&out);
        assert!(in_range(s.sport) && s.checksums_ok, "{s:?}");
        assert!(seen.insert(s.sport), "port {} handed out twice", s.sport);
    }
    let (v, _) = run(&dp, Prog::ToNet, &Pkt::udp(POD, 6000, REMOTE, 53, b"q").build());
    assert_eq!(v, SHOT, "no port left towards {REMOTE}:53");
    assert_eq!(drops(&dp, DropReason::NatPortsExhausted), 1);
    // The flows that have ports keep them.
    let (_, out) = run(&dp, Prog::ToNet, &Pkt::udp(POD, 5000, REMOTE, 53, b"q").build());
    assert!(seen.contains(&decode(&out).sport));
    let (v, out) = run(&dp, Prog::ToNet, &Pkt::udp(POD, 6000, REMOTE, 5353, b"q").build());
    assert_eq!(v, OK);
    assert!(in_range(decode(&out).sport), "another destination port has its own range");
}

/// Ethernet + IPv4 (protocol 1) around `icmp` (its checksum filled in).
fn icmp4(src: &str, dst: &str, mut icmp: Vec<u8>) -> Vec<u8> {
    let c = fold(sum(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let (s, d): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let c = fold(sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

fn echo(ty: u8, id: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(b"ping-payload");
    m
}

/// (source, destination, ICMP type, identifier, ICMP checksum right).
fn decode_icmp4(f: &[u8]) -> (IpAddr, IpAddr, u8, u16, bool) {
    let ip = &f[14..34];
    let s: [u8; 4] = ip[12..16].try_into().unwrap();
    let d: [u8; 4] = ip[16..20].try_into().unwrap();
    let icmp = &f[34..];
    let ok = fold(sum(ip)) == 0 && fold(sum(icmp)) == 0;
    (IpAddr::from(s), IpAddr::from(d), icmp[0], u16::from_be_bytes([icmp[4], icmp[5]]), ok)
}

/// ICMP echo is masqueraded by identifier; the reply gets the pod's
/// identifier back.
#[test]
fn ping_by_identifier() {
    let (_pin, dp) = setup();
    let (v, out) = run(&dp, Prog::ToNet, &icmp4(POD, REMOTE, echo(8, 0x1234)));
    assert_eq!(v, OK);
    let (src, dst, ty, id, ok) = decode_icmp4(&out);
    assert_eq!((src, dst, ty), (ip(NODE), ip(REMOTE), 8));
    assert!(in_range(id) && ok, "id {id}, checksums {ok}");
    let (v, out) = run(&dp, Prog::FromNet, &icmp4(REMOTE, NODE, echo(0, id)));
    assert_eq!(v, OK);
    assert_eq!(decode_icmp4(&out), (ip(REMOTE), ip(POD), 0, 0x1234, true));
}

/// A frag-needed from a router about a masqueraded TCP segment reaches the
/// pod quoting the segment as the pod sent it, every checksum right: path
/// MTU discovery works through the masquerade.
#[test]
fn frag_needed_goes_back_to_the_pod() {
    let (_pin, dp) = setup();
    run(&dp, Prog::ToNet, &Pkt::tcp(POD, 40000, REMOTE, 80, SYN).build());
    let mut data = Pkt::tcp(POD, 40000, REMOTE, 80, ACK);
    data.payload = vec![7; 1400];
    let (_, out) = run(&dp, Prog::ToNet, &data.build());
    let port = decode(&out).sport;
    // Type 3 code 4, next-hop MTU 1300, quoting the IP header and 8 bytes.
    let mut msg = vec![3, 4, 0, 0, 0, 0];
    msg.extend_from_slice(&1300u16.to_be_bytes());
    msg.extend_from_slice(&out[14..14 + 20 + 8]);
    let (v, got) = run(&dp, Prog::FromNet, &icmp4(ROUTER, NODE, msg));
    assert_eq!(v, OK);
    let (src, dst, ty, _, ok) = decode_icmp4(&got);
    assert_eq!((src, dst, ty), (ip(ROUTER), ip(POD), 3));
    assert!(ok, "outer IP and ICMP checksums");
    let quoted = &got[34 + 8..];
    assert_eq!(fold(sum(&quoted[..20])), 0, "quoted IP header checksum");
    assert_eq!(&quoted[12..16], &ip4(POD), "quoted source is the pod");
    assert_eq!(&quoted[16..20], &ip4(REMOTE));
    assert_eq!(u16::from_be_bytes([quoted[20], quoted[21]]), 40000, "quoted source port is the pod's");
    assert_eq!(u16::from_be_bytes([quoted[22], quoted[23]]), 80);
    assert!(port != 40000);

    // An error about a flow we never translated passes untouched.
    let mut msg = vec![3, 4, 0, 0, 0, 0, 0x05, 0x14];
    let other = Pkt::tcp(NODE, 61002, "203.0.113.99", 80, ACK).build();
    msg.extend_from_slice(&other[14..14 + 28]);
    let frame = icmp4(ROUTER, NODE, msg);
    assert_eq!(run(&dp, Prog::FromNet, &frame), (OK, frame));
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}
