//! Issue 13, "Services with backends on other nodes": a client pod on node a
//! reaches ClusterIP Services whose backends are pods on b (host-gw) and c
//! (VXLAN), with the agents routing the nodes themselves.
//!
//! ```text
//!  node a: client ──veth── [from-pod DNAT, conntrack] ── eth0 ──────────── node b: pb (host-gw)
//!          client <──veth── [to-pod reverse NAT] <─────── ferry.vxlan(6) ── node c: pc (VXLAN, behind the router)
//!          pa (a local backend, for the mixed cases)
//!  Service "web": 10.96.0.40 + fd00:96::40, TCP and UDP 80 -> 8080 (the id servers "p<node>")
//!  every node's agent reads the same Services and EndpointSlices (nodeName set)
//! ```
//!
//! The topology is the harness's [`Cluster`] (the routing tests' too). The
//! NAT state of a flow lives on the client's node only (DESIGN.md): the
//! backends' nodes hold no conntrack entry for it. Every loop is bounded in
//! count and time; every wait polls the agent's maps through ferryctl.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::assert_eventually;
use ferry_tests::harness::cluster::{Cluster, NODES, PORT};
use ferry_tests::harness::lb::{service, slice, Ep, SvcPort};
use ferry_tests::harness::{tcp_id, tcp_spread, Pod};
use serde_json::Value;

const T: Duration = Duration::from_secs(2);
/// The agents have programmed a catalog change this soon.
const SYNC: Duration = Duration::from_secs(5);
const VIP4: &str = "10.96.0.40";
const VIP6: &str = "fd00:96::40";
const PORTS: &[SvcPort<'_>] = &[("tcp", "TCP", 80, "8080"), ("udp", "UDP", 80, "8080")];
const EP_PORTS: &[(&str, &str, u16)] = &[("tcp", "TCP", PORT), ("udp", "UDP", PORT)];
/// Node indexes in [`Cluster`]: a (the client's), b (host-gw), c (VXLAN).
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn vip4() -> SocketAddr {
    SocketAddr::new(VIP4.parse().expect("vip"), 80)
}

fn vip6() -> SocketAddr {
    SocketAddr::new(VIP6.parse().expect("vip"), 80)
}

/// The three-node cluster and a client pod on node a (no server in it).
struct World {
    client: Pod,
    c: Cluster,
}

impl World {
    fn new() -> Self {
        let c = Cluster::new();
        let client = c.add_pod(A, "client");
        let w = World { client, c };
        // The new pod reaches every backend pod directly, both families,
        // before anything is measured through a VIP.
        let targets: Vec<(String, SocketAddr)> =
            w.c.pods
                .iter()
                .flat_map(|p| {
                    [
                        (p.name().to_string(), SocketAddr::new(p.ipv4().into(), PORT)),
                        (p.name().to_string(), SocketAddr::new(p.ipv6().into(), PORT)),
                    ]
                })
                .collect();
        let unreached = |timeout: Duration| -> Vec<String> {
            let targets = targets.clone();
            w.client.run(move || {
                targets
                    .into_iter()
                    .filter(|(id, sa)| tcp_id(*sa, timeout).ok().as_deref() != Some(id.as_str()))
                    .map(|(id, sa)| format!("{id} at {sa}"))
                    .collect::<Vec<_>>()
            })
        };
        let quick = Duration::from_millis(200);
        assert_eventually!(unreached(quick).is_empty(), T * 5, "the client reaches every pod: {:?}", unreached(T));
        w
    }

    /// An endpoint for pod `i` (on node `i`), of one family, with its node.
    fn ep(&self, i: usize, v6: bool) -> Ep {
        let p = &self.c.pods[i];
        let addr: IpAddr = if v6 { p.ipv6().into() } else { p.ipv4().into() };
        Ep { node: Some(NODES[i].0.to_string()), ..Ep::ready(addr) }
    }

    /// Declares Service `name` (dual-stack, on the VIPs; raw `extra` spec
    /// lines) with the pods `backends` as its
    /// endpoints, one slice per family, on every node. The slices go first,
    /// so a programmed frontend has its endpoints.
    fn service(&self, name: &str, extra: &str, backends: &[usize]) {
        self.endpoints(name, backends);
        self.c.write_all(&format!("{name}-svc.yaml"), &service(name, &[VIP4, VIP6], PORTS, extra));
    }

    /// [`service`](Self::service), then waits until every node's agent
    /// has programmed it with all of `backends`.
    fn serve(&self, name: &str, extra: &str, backends: &[usize]) {
        self.service(name, extra, backends);
        for i in [A, B, C] {
            self.wait_active(i, backends.len() as u32);
        }
    }

    /// Replaces the endpoints of `name` on every node (as the EndpointSlice
    /// controller's update reaches every agent).
    fn endpoints(&self, name: &str, backends: &[usize]) {
        for (fam, v6) in [("v4", false), ("v6", true)] {
            let eps: Vec<Ep> = backends.iter().map(|i| self.ep(*i, v6)).collect();
            self.c.write_all(&format!("{name}-{fam}-eps.yaml"), &slice(&format!("{name}-{fam}"), name, EP_PORTS, &eps));
        }
    }

    /// Waits until agent `i`'s maps give every frontend of the Service (two
    /// VIPs, TCP and UDP) exactly `active` backends for new flows.
    fn wait_active(&self, i: usize, active: u32) {
        let want: BTreeMap<(String, String), u32> = [VIP4.to_string(), format!("[{VIP6}]")]
            .into_iter()
            .flat_map(|v| [(format!("{v}:80"), "tcp".to_string()), (format!("{v}:80"), "udp".to_string())])
            .map(|k| (k, active))
            .collect();
        assert_eventually!(
            self.frontends(i) == want,
            SYNC,
            "node {i}: every frontend with {active} active backends; ferryctl says:\n{}",
            self.c.agents[i].ferryctl(&["service", "list"])
        );
    }

    /// (frontend, protocol) -> active backends, from agent `i`'s maps.
    fn frontends(&self, i: usize) -> BTreeMap<(String, String), u32> {
        let rows: Value =
            serde_json::from_str(&self.c.agents[i].ferryctl(&["-o", "json", "service", "list"])).unwrap_or_default();
        rows.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let fe = r["frontend"].as_str()?.to_string();
                let proto = r["proto"].as_str()?.to_ascii_lowercase();
                Some(((fe, proto), r["active"].as_u64()? as u32))
            })
            .collect()
    }

    /// Agent `i`'s conntrack entries whose frontend is a `web` VIP.
    fn vip_flows(&self, i: usize) -> Vec<Value> {
        let rows: Value =
            serde_json::from_str(&self.c.agents[i].ferryctl(&["-o", "json", "conntrack", "list"])).unwrap_or_default();
        let vips = [format!("{VIP4}:80"), format!("[{VIP6}]:80")];
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|r| vips.iter().any(|v| r["frontend"] == v.as_str()))
            .cloned()
            .collect()
    }

    /// Packets node a sent through a tunnel device (`ferry.vxlan`, `ferry.vxlan6`).
    fn tunnel_tx(&self, dev: &str) -> u64 {
        let out = self.c.nodes[A].ip(&["-j", "-s", "link", "show", "dev", dev]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0)
    }
}

/// One UDP request/response on `sock` to `addr`: the backend's id, if the
/// answer came from `addr` itself (the VIP, reverse-translated) and echoed
/// `payload` whole.
fn udp_ask(sock: &UdpSocket, addr: SocketAddr, payload: &[u8]) -> Result<String, String> {
    sock.send_to(payload, addr).map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {:?}", e.kind()))?;
    let nl = buf[..n].iter().position(|b| *b == b'\n').ok_or("no id line")?;
    let id = String::from_utf8_lossy(&buf[..nl]).into_owned();
    if from != addr {
        return Err(format!("{id} answered from {from}, not the VIP"));
    }
    if buf[nl + 1..n] != *payload {
        return Err(format!("{id}: echo of {} bytes differs", payload.len()));
    }
    Ok(id)
}

fn udp_socket(addr: SocketAddr) -> UdpSocket {
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).expect("bind udp");
    s.set_read_timeout(Some(T)).expect("timeout");
    s
}

/// `n` UDP requests from inside `pod`, each from a fresh socket (a new
/// flow): the count per answer (errors under "error: ...").
fn udp_spread(pod: &Pod, addr: SocketAddr, n: usize, payload_len: usize) -> BTreeMap<String, usize> {
    pod.run(move || {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let id = udp_ask(&udp_socket(addr), addr, &payload).unwrap_or_else(|e| format!("error: {e}"));
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    })
}

/// `counts` has exactly the ids `want` (each at least once) and nothing else.
fn assert_exactly(counts: &BTreeMap<String, usize>, want: &[&str], what: &str) {
    let got: BTreeSet<&str> = counts.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = want.iter().copied().collect();
    assert_eq!(got, want, "{what}: {counts:?}");
}

#[test]
fn remote_backends_clusterip_with_backends_on_b_and_c_only_spreads_over_both_and_replies_carry_the_vip() {
    let started = Instant::now();
    let w = World::new();
    let peers = w.c.routing_status(A)["peers"].clone();
    assert_eq!(peers["b"]["ipv4"], "host-gw", "{peers}");
    assert_eq!(peers["c"]["ipv6"], "vxlan", "{peers}");
    w.serve("web", "", &[B, C]);
    let tunnels_before = (w.tunnel_tx("ferry.vxlan"), w.tunnel_tx("ferry.vxlan6"));
    for addr in [vip4(), vip6()] {
        // TCP: each handshake completes on a socket connected to the VIP,
        // so the SYN-ACK came back as VIP:80 (one from the backend's own
        // address would have been answered with a RST).
        let tcp = tcp_spread(&w.client, addr, 60, T);
        assert_exactly(&tcp, &["pb", "pc"], &format!("TCP to {addr}"));
        // UDP: the answer's source is the VIP (recv_from sees it).
        let udp = udp_spread(&w.client, addr, 60, 32);
        assert_exactly(&udp, &["pb", "pc"], &format!("UDP to {addr}"));
        eprintln!("remote_backends: {addr}: tcp {tcp:?}, udp {udp:?}");
    }
    // pc was reached through the tunnels: both carried a's packets.
    let tunnels_after = (w.tunnel_tx("ferry.vxlan"), w.tunnel_tx("ferry.vxlan6"));
    assert!(
        tunnels_after.0 > tunnels_before.0 && tunnels_after.1 > tunnels_before.1,
        "ferry.vxlan / ferry.vxlan6 tx: {tunnels_before:?} -> {tunnels_after:?}"
    );
    // The NAT state is a's alone: the backends' nodes translated nothing.
    let on_a = w.vip_flows(A);
    let backends_seen: BTreeSet<String> =
        on_a.iter().filter_map(|r| r["backend"].as_str().map(str::to_string)).collect();
    let (pb, pc) = (&w.c.pods[B], &w.c.pods[C]);
    for want in [
        format!("{}:{PORT}", pb.ipv4()),
        format!("{}:{PORT}", pc.ipv4()),
        format!("[{}]:{PORT}", pb.ipv6()),
        format!("[{}]:{PORT}", pc.ipv6()),
    ] {
        assert!(backends_seen.contains(&want), "a's conntrack has flows to {want}: {backends_seen:?}");
    }
    // ... and a's to-pod program saw every flow's replies (it marks the
    // entry when it restores the VIP as their source).
    let unanswered: Vec<&Value> =
        on_a.iter().filter(|r| !r["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "seen_reply"))).collect();
    assert!(unanswered.is_empty(), "flows whose replies a did not reverse-translate: {unanswered:#?}");
    assert!(w.vip_flows(B).is_empty() && w.vip_flows(C).is_empty(), "b, c: {:?} {:?}", w.vip_flows(B), w.vip_flows(C));
    eprintln!("remote_backends: spread over b and c in {:?}", started.elapsed());
}

#[test]
fn remote_backends_a_local_backend_beside_remote_ones_and_hairpin_across_nodes() {
    let w = World::new();
    w.serve("web", "", &[A, B, C]);
    for addr in [vip4(), vip6()] {
        let tcp = tcp_spread(&w.client, addr, 90, T);
        assert_exactly(&tcp, &["pa", "pb", "pc"], &format!("TCP from a to {addr}"));
        let udp = udp_spread(&w.client, addr, 60, 32);
        assert_exactly(&udp, &["pa", "pb", "pc"], &format!("UDP from a to {addr}"));
    }
    // Hairpin: a backend connecting to its own Service is sometimes served
    // by itself (its node SNATs it to the hairpin address), and otherwise by
    // the backends on the two other nodes; none fails. pb's others are a
    // (host-gw) and c (VXLAN); pc's are both across the tunnel.
    for (i, id) in [(B, "pb"), (C, "pc")] {
        for addr in [vip4(), vip6()] {
            let got = tcp_spread(&w.c.pods[i], addr, 60, T);
            assert_exactly(&got, &["pa", "pb", "pc"], &format!("{id} to its own Service at {addr}"));
            assert!(got[id] > 0, "{id} served itself: {got:?}");
        }
    }
}

#[test]
fn remote_backends_session_affinity_client_ip_holds_across_nodes() {
    let w = World::new();
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n";
    w.serve("web", affinity, &[B, C]);
    for addr in [vip4(), vip6()] {
        let tcp = tcp_spread(&w.client, addr, 30, T);
        assert_eq!(tcp.len(), 1, "TCP to {addr}: every connection on one backend: {tcp:?}");
        let sticky = tcp.keys().next().cloned().unwrap_or_default();
        assert!(sticky == "pb" || sticky == "pc", "{tcp:?}");
        // The affinity is the client's, whatever the protocol's flow: UDP
        // from fresh sockets lands on a backend of its own, each time the same.
        let udp = udp_spread(&w.client, addr, 30, 32);
        assert_eq!(udp.len(), 1, "UDP to {addr}: every flow on one backend: {udp:?}");
        eprintln!("remote_backends: affinity {addr}: tcp {tcp:?}, udp {udp:?}");
    }
    // Another client on a keeps its own backend just as firmly.
    let other = w.c.add_pod(A, "client2");
    let counts = tcp_spread(&other, vip4(), 30, T);
    assert_eq!(counts.len(), 1, "a second client sticks too: {counts:?}");
}

#[test]
fn remote_backends_udp_request_response_through_the_vip_to_remote_backends() {
    let w = World::new();
    w.serve("web", "", &[B, C]);
    for addr in [vip4(), vip6()] {
        // New flows spread; answers come from the VIP with the payload
        // whole, small and near the pod MTU (1430: 1,300 bytes of payload
        // fit IPv6 too).
        let small = udp_spread(&w.client, addr, 60, 16);
        assert_exactly(&small, &["pb", "pc"], &format!("UDP to {addr}"));
        let big = udp_spread(&w.client, addr, 20, 1300);
        assert!(big.keys().all(|k| k == "pb" || k == "pc"), "1,300-byte requests to {addr}: {big:?}");
        // One socket is one flow: its requests all reach one backend.
        let one_flow: Result<BTreeMap<String, usize>, String> = w.client.run(move || {
            let s = udp_socket(addr);
            let mut counts = BTreeMap::new();
            for n in 0..30u32 {
                *counts.entry(udp_ask(&s, addr, &n.to_be_bytes())?).or_insert(0) += 1;
            }
            Ok(counts)
        });
        let one_flow = one_flow.unwrap_or_else(|e| panic!("one UDP flow to {addr}: {e}"));
        assert_eq!(one_flow.len(), 1, "one UDP flow to {addr} stays on its backend: {one_flow:?}");
    }
    // The UDP flows' NAT state is on a.
    let udp_on_a =
        w.vip_flows(A).iter().filter(|r| r["proto"].as_str().is_some_and(|p| p.eq_ignore_ascii_case("udp"))).count();
    assert!(udp_on_a > 0, "a holds the UDP flows' entries");
}

/// One connection of the load in the node-loss test: when it started, and
/// the backend that answered or the error.
type Attempt = (Instant, Result<String, String>);

#[test]
fn remote_backends_a_node_gone_from_the_endpoint_slices_gets_no_new_flow_from_then_on() {
    let w = World::new();
    w.serve("web", "", &[A, B, C]);
    let before = tcp_spread(&w.client, vip4(), 60, T);
    assert_exactly(&before, &["pa", "pb", "pc"], "before");

    // New connections from the client all along, v4 and v6 in turn.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let targets = [vip4(), vip6()];
    let client_ns = w.client.netns_path().to_path_buf();
    let load = std::thread::spawn(move || {
        ferry_tests::harness::util::run_in(&client_ns, move || {
            let mut out: Vec<Attempt> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            for n in 0..5000usize {
                if stop2.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let addr = targets[n % 2];
                let r = tcp_id(addr, Duration::from_millis(500)).map_err(|e| format!("{addr}: {:?}", e.kind()));
                out.push((t, r));
                std::thread::sleep(Duration::from_millis(2));
            }
            out
        })
    });
    std::thread::sleep(Duration::from_millis(200));

    // Node c goes: its underlay link dies (a flow sent there now fails),
    // then the controller drops its endpoints from the slices.
    w.c.nodes[C].ip(&["link", "set", "eth0", "down"]);
    let changed = Instant::now();
    w.endpoints("web", &[A, B]);
    w.wait_active(A, 2);
    let synced = Instant::now();
    // The load goes on past the change for a while.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let attempts = load.join().expect("load thread");

    let after: Vec<&Attempt> = attempts.iter().filter(|(t, _)| *t >= synced).collect();
    let bad: Vec<&Attempt> =
        after.iter().copied().filter(|(_, r)| !matches!(r.as_deref(), Ok("pa") | Ok("pb"))).collect();
    let seen: BTreeSet<&str> = after.iter().filter_map(|(_, r)| r.as_deref().ok()).collect();
    eprintln!(
        "remote_backends: slices changed -> a's maps in {:?}; {} connections in all, {} after, answered by {seen:?}",
        synced - changed,
        attempts.len(),
        after.len()
    );
    assert!(after.len() >= 50, "the load ran on after the change ({} connections)", after.len());
    assert!(
        bad.is_empty(),
        "{} of {} new connections after the sync failed or reached c: {bad:?}",
        bad.len(),
        after.len()
    );
    assert_eq!(seen, BTreeSet::from(["pa", "pb"]), "the remaining backends share the new flows");
    // And UDP, both families, right away.
    for addr in [vip4(), vip6()] {
        let udp = udp_spread(&w.client, addr, 30, 16);
        assert_exactly(&udp, &["pa", "pb"], &format!("UDP to {addr} after c went"));
    }
}
