//! Packet fixtures run through the real programs with BPF_PROG_TEST_RUN
//! against real (per-test) pinned maps: description, input packet, expected
//! verdict and output. Needs root (CAP_BPF + CAP_NET_ADMIN).
mod common;

use std::net::IpAddr;

use common::*;
use ferry_common::{service_flags, DropReason};
use ferry_datapath::{load_or_adopt, test_run, DatapathConfig, Datapath, Prog};

const OK: u32 = 0;
const SHOT: u32 = 2;
const REDIRECT: u32 = 7;

const CLIENT: &str = "10.0.0.2";
const BACKEND: &str = "10.0.0.5";
const VIP: &str = "10.96.0.10";
const VIP_EMPTY: &str = "10.96.0.11";
const CLIENT6: &str = "fd00::2";
const BACKEND6: &str = "fd00::5";
const VIP6: &str = "fd00:96::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A loaded data path with: VIP:80/tcp and VIP:53/udp -> BACKEND:8080/5353,
/// VIP_EMPTY:80/tcp and :53/udp with no endpoints, VIP6:80/tcp -> BACKEND6:8080.
fn setup() -> (PinDir, Datapath) {
    let pin = PinDir::new();
    let mut dp = load_or_adopt(pin.path(), &DatapathConfig::small()).expect("load");
    let m = &mut dp.maps;
    program_service(m, 1, ip(VIP), 80, TCP, &[(ip(BACKEND), 8080)], 0, 0);
    program_service(m, 2, ip(VIP), 53, UDP, &[(ip(BACKEND), 5353)], 0, 0);
    program_service(m, 3, ip(VIP_EMPTY), 80, TCP, &[], 0, 0);
    program_service(m, 4, ip(VIP_EMPTY), 53, UDP, &[], 0, 0);
    program_service(m, 5, ip(VIP6), 80, TCP, &[(ip(BACKEND6), 8080)], 0, 0);
    (pin, dp)
}

fn run(dp: &Datapath, prog: Prog, pkt: &[u8]) -> (u32, Vec<u8>) {
    let out = test_run(&dp.pin_dir, prog, pkt).expect("test_run");
    (out.verdict, out.packet)
}

fn drops(dp: &Datapath, reason: DropReason) -> u64 {
    dp.maps.drops.get(&(reason as u32), 0).unwrap().iter().sum()
}

#[test]
fn translation_fixtures() {
    let (_pin, dp) = setup();
    struct Case {
        what: &'static str,
        prog: Prog,
        input: Pkt,
        verdict: u32,
        // (src, sport, dst, dport) expected in the output
        out: (&'static str, u16, &'static str, u16),
    }
    let cases = [
        Case {
            what: "TCP SYN to a VIP is DNATed to the backend",
            prog: Prog::FromPod,
            input: Pkt::tcp(CLIENT, 40000, VIP, 80, SYN),
            verdict: OK,
            out: (CLIENT, 40000, BACKEND, 8080),
        },
        Case {
            what: "the backend's SYN-ACK gets the VIP back as its source",
            prog: Prog::ToPod,
            input: Pkt::tcp(BACKEND, 8080, CLIENT, 40000, SYN | ACK),
            verdict: OK,
            out: (VIP, 80, CLIENT, 40000),
        },
        Case {
            what: "the client's ACK of the same flow follows the conntrack entry",
            prog: Prog::FromPod,
            input: Pkt::tcp(CLIENT, 40000, VIP, 80, ACK),
            verdict: OK,
            out: (CLIENT, 40000, BACKEND, 8080),
        },
        Case {
            what: "UDP to a VIP is DNATed",
            prog: Prog::FromPod,
            input: Pkt::udp(CLIENT, 41000, VIP, 53, b"question"),
            verdict: OK,
            out: (CLIENT, 41000, BACKEND, 5353),
        },
        Case {
            what: "the UDP answer is reverse-translated",
            prog: Prog::ToPod,
            input: Pkt::udp(BACKEND, 5353, CLIENT, 41000, b"answer!"),
            verdict: OK,
            out: (VIP, 53, CLIENT, 41000),
        },
        Case {
            what: "IPv6 TCP SYN to a VIP is DNATed",
            prog: Prog::FromPod,
            input: Pkt::tcp(CLIENT6, 40001, VIP6, 80, SYN),
            verdict: OK,
            out: (CLIENT6, 40001, BACKEND6, 8080),
        },
        Case {
            what: "IPv6 reply is reverse-translated",
            prog: Prog::ToPod,
            input: Pkt::tcp(BACKEND6, 8080, CLIENT6, 40001, SYN | ACK),
            verdict: OK,
            out: (VIP6, 80, CLIENT6, 40001),
        },
        Case {
            what: "traffic to a non-service address passes untouched",
            prog: Prog::FromPod,
            input: Pkt::tcp(CLIENT, 40002, BACKEND, 8080, SYN),
            verdict: OK,
            out: (CLIENT, 40002, BACKEND, 8080),
        },
        Case {
            what: "the VIP on a port that is not a Service port passes untouched",
            prog: Prog::FromPod,
            input: Pkt::tcp(CLIENT, 40003, VIP, 81, SYN),
            verdict: OK,
            out: (CLIENT, 40003, VIP, 81),
        },
        Case {
            what: "a pod-to-pod packet with no conntrack entry enters a pod untouched",
            prog: Prog::ToPod,
            input: Pkt::tcp(BACKEND, 8080, CLIENT, 49999, SYN | ACK),
            verdict: OK,
            out: (BACKEND, 8080, CLIENT, 49999),
        },
        Case {
            what: "SYN to a Service with no endpoints is answered with RST|ACK back into the pod",
            prog: Prog::FromPod,
            input: Pkt {
                tcp_opts: vec![2, 4, 5, 0xb4, 4, 2, 1, 1],
                ..Pkt::tcp(CLIENT, 40004, VIP_EMPTY, 80, SYN)
            },
            verdict: REDIRECT,
            out: (VIP_EMPTY, 80, CLIENT, 40004),
        },
    ];
    for c in cases {
        let input = c.input.build();
        let (verdict, out) = run(&dp, c.prog, &input);
        assert_eq!(verdict, c.verdict, "{}: verdict", c.what);
        let seen = decode(&out);
        let want = (ip(c.out.0), c.out.1, ip(c.out.2), c.out.3);
        assert_eq!((seen.src, seen.sport, seen.dst, seen.dport), want, "{}", c.what);
        assert!(seen.checksums_ok, "{}: checksums", c.what);
    }

    // The RST acknowledges the SYN (seq 1000 + 1) and comes from the VIP's side.
    let (_, out) = run(&dp, Prog::FromPod, &Pkt::tcp(CLIENT, 40005, VIP_EMPTY, 80, SYN).build());
    let rst = decode(&out);
    assert_eq!(rst.flags, RST | ACK);
    assert_eq!((rst.seq, rst.ack), (0, 1001));
    assert_eq!(rst.src_mac, [0x02, 0, 0, 0, 0, 0xbb], "MACs swapped");
    // A non-SYN segment with ACK gets a bare RST with seq = its ack.
    let (v, out) = run(&dp, Prog::FromPod, &Pkt::tcp(CLIENT, 40006, VIP_EMPTY, 80, ACK).build());
    let rst = decode(&out);
    assert_eq!((v, rst.flags, rst.seq), (REDIRECT, RST, 5000));
    // UDP to a Service with no endpoints is dropped and counted.
    let before = drops(&dp, DropReason::NoEndpoints);
    let (v, _) = run(&dp, Prog::FromPod, &Pkt::udp(CLIENT, 40007, VIP_EMPTY, 53, b"q").build());
    assert_eq!(v, SHOT);
    assert_eq!(drops(&dp, DropReason::NoEndpoints), before + 1);
}
