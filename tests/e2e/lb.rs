//! Issue 3 end to end: the real `ferry-agent` on a YAML directory programs
//! the eBPF data path of a node namespace; pods made by the real CNI plugin
//! talk to Services through it.
//!
//! ```text
//!  client pod ──veth── [from-pod DNAT]  node netns (ferry0)  ──veth── backend pods (IdServer "bN")
//!             <──────  [to-pod reverse NAT] ───────────────────────
//!  ferry-agent (node netns): --yaml-dir <scratch>/catalog, per-test pin dir
//! ```
//!
//! Every count, wait and load loop is bounded; each test takes seconds.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::assert_eventually;
use ferry_tests::harness::lb::{lb_node, service, slice, Agent, Ep, POD_VETHS};
use ferry_tests::harness::{tcp_id, tcp_spread, udp_echo, udp_id, Held, IdServer, Node, Pod};

const T: Duration = Duration::from_secs(2);
const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const HTTP: &[(&str, &str, u16, &str)] = &[("http", "TCP", 80, "8080")];
const HTTP_EP: &[(&str, &str, u16)] = &[("http", "TCP", 8080)];

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A node with the agent, a client pod and `n` backend pods b1..bn each
/// running a TCP id server on 8080, the programs attached everywhere.
struct World {
    agent: Agent,
    client: Pod,
    backends: Vec<(Pod, IdServer)>,
    _node: Node,
}

impl World {
    fn new(n: usize) -> Self {
        let (node, pin) = lb_node();
        let agent = Agent::start(&node, pin);
        let client = node.add_pod("client");
        let mut backends = Vec::new();
        for i in 1..=n {
            let pod = node.add_pod(&format!("b{i}"));
            let srv = IdServer::tcp(pod.netns_path(), 8080, &format!("b{i}"));
            backends.push((pod, srv));
        }
        let veths: Vec<String> = std::iter::once(&client)
            .chain(backends.iter().map(|(p, _)| p))
            .map(|p| p.host_veth.clone().expect("host veth"))
            .collect();
        let refs: Vec<&str> = veths.iter().map(String::as_str).collect();
        agent.wait_attached(&refs);
        World { agent, client, backends, _node: node }
    }

    fn ep(&self, i: usize) -> Ep {
        Ep::ready(self.backends[i].0.ipv4())
    }

    /// Declares Service `web` (VIP:80 -> 8080) with these endpoints.
    fn web(&self, eps: &[Ep]) {
        self.agent.write("web-svc.yaml", &service("web", &[VIP], HTTP, ""));
        self.set_endpoints(eps);
    }

    fn set_endpoints(&self, eps: &[Ep]) {
        self.agent.write("web-eps.yaml", &slice("web-1", "web", HTTP_EP, eps));
    }

    /// Waits until the services map shows `active` backends for new flows of
    /// the VIP (ferryctl reads the same maps).
    fn wait_active(&self, vip_port: &str, active: u32) {
        assert_eventually!(
            self.active_of(vip_port) == Some(active),
            Duration::from_secs(3),
            "{vip_port} with {active} active backends; ferryctl says:\n{}",
            self.agent.ferryctl(&["service", "list"])
        );
    }

    fn active_of(&self, vip_port: &str) -> Option<u32> {
        self.agent.frontend_row(vip_port).map(|(a, _)| a)
    }
}

/// `n` fresh connections from inside `pod`, each reading the backend's id;
/// returns the count per id (errors counted under "error: <kind>").
fn spread(pod: &Pod, addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    tcp_spread(pod, addr, n, T)
}

#[test]
fn lb_distribution_3000_connections_over_3_backends() {
    let w = World::new(3);
    w.web(&[w.ep(0), w.ep(1), w.ep(2)]);
    w.wait_active("10.96.0.10:80", 3);
    let counts = spread(&w.client, sa(VIP, 80), 3000);
    eprintln!("distribution: {counts:?}");
    for b in ["b1", "b2", "b3"] {
        let share = counts.get(b).copied().unwrap_or(0) as f64 / 3000.0 * 100.0;
        assert!((share - 33.3).abs() <= 5.0, "{b} got {share:.1}% ({counts:?})");
    }
    assert_eq!(counts.values().sum::<usize>(), 3000);
}

#[test]
fn lb_long_lived_connections_survive_backend_changes() {
    let w = World::new(4);
    w.web(&[w.ep(0), w.ep(1), w.ep(2)]);
    w.wait_active("10.96.0.10:80", 3);
    // At least 12, and more until two sit on b2 (which is removed below):
    // with 12 alone, none lands on b2 about once in 130 runs (2/3 ^ 12).
    let mut held: Vec<Held> = w.client.run(|| {
        let mut held: Vec<Held> = Vec::new();
        while held.len() < 60 && (held.len() < 12 || held.iter().filter(|h| h.backend == "b2").count() < 2) {
            held.push(Held::open(sa(VIP, 80)).expect("open"));
        }
        held
    });
    let on_b2 = held.iter().filter(|h| h.backend == "b2").count();
    assert!(on_b2 > 0, "some held connection should be on b2 for this test to mean anything");

    let ping_all = |held: Vec<Held>, round: usize| -> Vec<Held> {
        w.client.run(move || {
            let mut held = held;
            for (i, h) in held.iter_mut().enumerate() {
                h.ping(round).unwrap_or_else(|e| panic!("held connection {i} to {} broke: {e}", h.backend));
            }
            held
        })
    };
    held = ping_all(held, 0);
    // Add b4: Maglev moves some slots, established flows keep their backend.
    w.set_endpoints(&[w.ep(0), w.ep(1), w.ep(2), w.ep(3)]);
    w.wait_active("10.96.0.10:80", 4);
    held = ping_all(held, 1);
    // Remove b2 (its pod keeps running, as during a rollout): its flows go
    // on, and it gets no new flow.
    w.set_endpoints(&[w.ep(0), w.ep(2), w.ep(3)]);
    w.wait_active("10.96.0.10:80", 3);
    held = ping_all(held, 2);
    let counts = spread(&w.client, sa(VIP, 80), 300);
    assert_eq!(counts.get("b2"), None, "a removed backend got new flows: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 300);
    assert!(counts.keys().all(|k| !k.starts_with("error")), "{counts:?}");
    drop(ping_all(held, 3));
}

#[test]
fn lb_no_endpoints_is_refused_within_10ms() {
    let w = World::new(0);
    w.web(&[]);
    w.wait_active("10.96.0.10:80", 0);
    let results: Vec<(Result<(), ErrorKind>, Duration)> = w.client.run(|| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&sa(VIP, 80), T);
                (r.map(|_| ()).map_err(|e| e.kind()), t.elapsed())
            })
            .collect()
    });
    for (r, took) in results {
        assert_eq!(r, Err(ErrorKind::ConnectionRefused), "a RST, not a timeout");
        assert!(took < Duration::from_millis(10), "refused after {took:?}");
    }
}

#[test]
fn lb_hairpin_pod_reaches_itself_through_its_service() {
    let w = World::new(1);
    // The only backend is b1 itself; b1 is the client.
    w.web(&[w.ep(0)]);
    w.wait_active("10.96.0.10:80", 1);
    let ids = spread(&w.backends[0].0, sa(VIP, 80), 20);
    assert_eq!(ids, BTreeMap::from([("b1".to_string(), 20)]));
}

#[test]
fn lb_udp_request_response_through_a_vip() {
    let w = World::new(2);
    let _udp: Vec<IdServer> = w
        .backends
        .iter()
        .enumerate()
        .map(|(i, (p, _))| IdServer::udp(p.netns_path(), 5353, &format!("u{}", i + 1)))
        .collect();
    w.agent.write("dns-svc.yaml", &service("dns", &["10.96.0.53"], &[("dns", "UDP", 53, "5353")], ""));
    w.agent.write("dns-eps.yaml", &slice("dns-1", "dns", &[("dns", "UDP", 5353)], &[w.ep(0), w.ep(1)]));
    w.wait_active("10.96.0.53:53", 2);
    let answers: Vec<String> = w
        .client
        .run(|| (0..50).map(|_| udp_id(sa("10.96.0.53", 53), T).unwrap_or_else(|e| format!("error: {e}"))).collect());
    assert!(answers.iter().all(|a| a == "u1" || a == "u2"), "{answers:?}");
}

/// A UDP datagram larger than the pods' MTU (1500) leaves the client as IP
/// fragments and the backend's echo comes back as fragments too: through
/// the VIP it must arrive whole, as it does sent straight to the pod, over
/// IPv4 and IPv6 (DNS with EDNS, syslog, NFS, QUIC send such datagrams).
#[test]
fn lb_udp_datagrams_larger_than_the_mtu_cross_a_vip() {
    let w = World::new(1);
    let _udp = IdServer::udp(w.backends[0].0.netns_path(), 5353, "u1");
    let (vip4, vip6) = ("10.96.0.53", "fd00:96::53");
    w.agent.write("dns-svc.yaml", &service("dns", &[vip4, vip6], &[("dns", "UDP", 53, "5353")], ""));
    let b = &w.backends[0].0;
    w.agent.write("dns-eps.yaml", &slice("dns-v4", "dns", &[("dns", "UDP", 5353)], &[Ep::ready(b.ipv4())]));
    w.agent.write("dns-eps6.yaml", &slice("dns-v6", "dns", &[("dns", "UDP", 5353)], &[Ep::ready(b.ipv6())]));
    w.wait_active("10.96.0.53:53", 1);
    w.wait_active("[fd00:96::53]:53", 1);
    let followed = || {
        let stats: serde_json::Value = serde_json::from_str(&w.agent.ferryctl(&["-o", "json", "stats"])).expect("json");
        stats["global"]["fragments_followed"].as_u64().expect("fragments_followed")
    };
    let echo_whole = |what: &str, addr: SocketAddr| {
        for size in [2000usize, 4000, 9000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let sent = payload.clone();
            // A lost fragment loses the datagram: a few tries, as a DNS
            // client would make; what comes back must be whole.
            let echo = w.client.run(move || (0..3).find_map(|_| udp_echo(addr, &sent, T).ok()).unwrap_or_default());
            assert_eq!(echo.len(), size, "{what} {addr}: {size}-byte datagram echoed whole");
            assert!(echo == payload, "{what} {addr}: {size} bytes echoed unchanged");
        }
    };
    echo_whole("direct", SocketAddr::new(b.ipv4().into(), 5353));
    echo_whole("direct", SocketAddr::new(b.ipv6().into(), 5353));
    let before = followed();
    echo_whole("VIP", sa(vip4, 53));
    echo_whole("VIP", sa(vip6, 53));
    // Per family, 1 + 2 + 6 later fragments (MTU 1500) each way.
    let n = followed() - before;
    assert!(n >= 2 * 9 * 2, "later fragments followed their first fragment: {n}");
}

#[test]
fn lb_ipv6_and_dual_stack_service() {
    let w = World::new(2);
    w.agent.write("web-svc.yaml", &service("web", &[VIP, VIP6], HTTP, ""));
    w.agent.write("web-eps.yaml", &slice("web-v4", "web", HTTP_EP, &[w.ep(0), w.ep(1)]));
    let v6: Vec<Ep> = w.backends.iter().map(|(p, _)| Ep::ready(p.ipv6())).collect();
    w.agent.write("web-eps6.yaml", &slice("web-v6", "web", HTTP_EP, &v6));
    w.wait_active("10.96.0.10:80", 2);
    w.wait_active("[fd00:96::10]:80", 2);
    // Workaround, reported to the data-path owner: the first DNATed IPv6
    // SYN towards a backend the node has no neighbour entry for is lost
    // (the client's connect then times out). Resolve the node's neighbours
    // first so this test checks translation and spreading.
    for (p, _) in &w.backends {
        let a = SocketAddr::new(p.ipv6().into(), 8080);
        w._node.run(move || tcp_id(a, T)).expect("node reaches the backend directly");
    }
    for addr in [sa(VIP, 80), sa(VIP6, 80)] {
        let counts = spread(&w.client, addr, 60);
        eprintln!("{addr}: {counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 60);
        assert!(counts.keys().all(|k| k == "b1" || k == "b2"), "{addr}: {counts:?}");
        assert_eq!(counts.len(), 2, "{addr}: both backends used: {counts:?}");
    }
}

#[test]
fn lb_session_affinity_holds_for_its_timeout_then_ends() {
    let w = World::new(3);
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1\n";
    w.agent.write("web-svc.yaml", &service("web", &[VIP], HTTP, affinity));
    w.set_endpoints(&[w.ep(0), w.ep(1), w.ep(2)]);
    w.wait_active("10.96.0.10:80", 3);
    // Within the timeout (each use refreshes it): one backend for everything.
    let held = spread(&w.client, sa(VIP, 80), 40);
    assert_eq!(held.len(), 1, "affinity: every connection on one backend: {held:?}");
    let first = held.keys().next().unwrap().clone();
    // After 1 s idle the affinity has expired and the next connection is
    // placed by Maglev (a new random source port): over up to 10 expiries,
    // some other backend must show up ((1/3)^10 to miss by chance).
    let mut seen = vec![first.clone()];
    for _ in 0..10 {
        // Not a wait for a condition: idling past the timeout is the case
        // under test (any probe in between would refresh the affinity).
        std::thread::sleep(Duration::from_millis(1150));
        let id = w.client.run(|| tcp_id(sa(VIP, 80), T).expect("connect"));
        seen.push(id.clone());
        if id != first {
            return;
        }
    }
    panic!("affinity never ended: {seen:?}");
}

#[test]
fn lb_terminating_endpoints_keep_flows_and_are_a_fallback() {
    let w = World::new(2);
    w.web(&[w.ep(0), w.ep(1)]);
    w.wait_active("10.96.0.10:80", 2);
    // Hold connections until one sits on b2.
    let mut held: Vec<Held> = w.client.run(|| {
        let mut v = Vec::new();
        for _ in 0..60 {
            let h = Held::open(sa(VIP, 80)).expect("open");
            let on_b2 = h.backend == "b2";
            v.push(h);
            if on_b2 && v.len() >= 2 {
                break;
            }
        }
        v
    });
    assert!(held.iter().any(|h| h.backend == "b2"), "no connection reached b2");

    // b2 terminating (still serving): its flows go on, new flows only to b1.
    w.set_endpoints(&[w.ep(0), Ep::terminating(w.backends[1].0.ipv4())]);
    w.wait_active("10.96.0.10:80", 1);
    held = w.client.run(move || {
        for h in held.iter_mut() {
            h.ping(1).expect("flow on a terminating backend keeps working");
        }
        held
    });
    let counts = spread(&w.client, sa(VIP, 80), 100);
    assert_eq!(counts, BTreeMap::from([("b1".to_string(), 100)]));
    let backends = w.agent.ferryctl(&["backend", "list"]);
    assert!(backends.contains("terminating"), "{backends}");

    // Nothing ready any more: the serving-terminating b2 takes new flows.
    w.set_endpoints(&[Ep::terminating(w.backends[1].0.ipv4())]);
    w.wait_active("10.96.0.10:80", 1);
    assert_eventually!(
        spread(&w.client, sa(VIP, 80), 20) == BTreeMap::from([("b2".to_string(), 20)]),
        Duration::from_secs(2),
        "fallback to the terminating endpoint"
    );

    // Not serving either: gone; the Service has no endpoints -> refused.
    let mut gone = Ep::terminating(w.backends[1].0.ipv4());
    gone.serving = false;
    w.set_endpoints(&[gone]);
    w.wait_active("10.96.0.10:80", 0);
    let r = w.client.run(|| TcpStream::connect_timeout(&sa(VIP, 80), T).map(|_| ()).map_err(|e| e.kind()));
    assert_eq!(r, Err(ErrorKind::ConnectionRefused));
    drop(held);
}

#[test]
fn lb_yaml_endpoint_change_reaches_the_data_path_under_100ms() {
    let w = World::new(2);
    w.web(&[w.ep(0)]);
    w.wait_active("10.96.0.10:80", 1);
    assert_eq!(spread(&w.client, sa(VIP, 80), 5), BTreeMap::from([("b1".to_string(), 5)]));
    // Swap b1 for b2 and time until a new connection lands on b2, probing
    // every ~1 ms from the client (a probe itself takes ~0.2 ms).
    let mut worst = Duration::ZERO;
    for (to, id) in [(1usize, "b2"), (0, "b1"), (1, "b2")] {
        let t0 = Instant::now();
        w.set_endpoints(&[w.ep(to)]);
        let id = id.to_string();
        let took = w.client.run(move || {
            let t0 = t0;
            loop {
                if tcp_id(sa(VIP, 80), T).is_ok_and(|got| got == id) {
                    return t0.elapsed();
                }
                assert!(t0.elapsed() < Duration::from_secs(2), "change never reached the data path");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        eprintln!("endpoint change -> data path: {took:?}");
        worst = worst.max(took);
    }
    assert!(worst < Duration::from_millis(100), "worst {worst:?}");
}

#[test]
fn lb_kill9_of_the_agent_under_load_fails_no_connection() {
    let mut w = World::new(2);
    w.web(&[w.ep(0), w.ep(1)]);
    w.wait_active("10.96.0.10:80", 2);
    let mut held = w.client.run(|| Held::open(sa(VIP, 80)).expect("open"));

    // Steady load: sequential fresh connections for the whole episode.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let netns = w.client.netns_path().to_path_buf();
        std::thread::spawn(move || {
            ferry_tests::harness::util::run_in(&netns, move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match tcp_id(sa(VIP, 80), T) {
                        Ok(id) if id == "b1" || id == "b2" => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
    };
    // Each phase lasts until the load has completed some connections in it
    // (bounded), rather than a fixed time that a slow machine might spend
    // on one connection.
    let runs_on = |what: &str| {
        let from = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        assert_eventually!(
            ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= from + 30,
            Duration::from_secs(10),
            "30 connections {what}"
        );
    };
    runs_on("before the first kill");
    for _ in 0..2 {
        w.agent.kill9();
        runs_on("with no agent at all");
        w.agent.restart(); // returns once /readyz says ready
        runs_on("after the restart");
    }
    // A change after the restarts is still applied (the new agent adopted the maps).
    w.set_endpoints(&[w.ep(0)]);
    w.wait_active("10.96.0.10:80", 1);
    runs_on("after the change");
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("connections during restarts: {ok} ok, {failed} failed");
    assert!(ok > 100, "the load ran ({ok})");
    assert_eq!(failed, 0);
    let held_ok = w.client.run(move || held.ping(7).map_err(|e| e.to_string()));
    held_ok.expect("established connection across two kill -9");
    assert!(w.agent.log_text().contains("adopted=true"));
}

#[test]
fn lb_agent_attaches_to_pod_veths_that_existed_before_it() {
    // Pods first: nothing is pinned yet, so the plugin's ADD attaches nothing.
    let (node, pin) = lb_node();
    let client = node.add_pod("client");
    let b1 = node.add_pod("b1");
    let _srv = IdServer::tcp(b1.netns_path(), 8080, "b1");
    let agent = Agent::start_with(&node, pin, &["--iface-pattern", POD_VETHS]);
    let veths = [client.host_veth.clone().unwrap(), b1.host_veth.clone().unwrap()];
    agent.wait_attached(&[&veths[0], &veths[1]]);
    // The bridge matched no glob.
    assert!(!agent.log_text().contains("ifname=\"ferry0\""), "{}", agent.log_text());
    agent.write("web-svc.yaml", &service("web", &[VIP], HTTP, ""));
    agent.write("web-eps.yaml", &slice("web-1", "web", HTTP_EP, &[Ep::ready(b1.ipv4())]));
    assert_eventually!(
        client.run(|| tcp_id(sa(VIP, 80), Duration::from_millis(200))).is_ok_and(|id| id == "b1"),
        Duration::from_secs(3),
        "Service reachable through the agent-attached programs"
    );
    // b1 was never registered (no pins at its ADD): its packets follow the
    // node's FIB, not the node's IP stack: to the bridge until b1's MAC is
    // learned from its SYN-ACK, then straight into b1 (learned_peer). Every
    // connection keeps working that way.
    for i in 0..50 {
        let id = client.run(|| tcp_id(sa(VIP, 80), T));
        assert_eq!(id.as_deref().ok(), Some("b1"), "connection {i}: {id:?}");
    }
    let stats: serde_json::Value = serde_json::from_str(&agent.ferryctl(&["-o", "json", "stats"])).expect("json");
    let global = |k: &str| stats["global"][k].as_u64().unwrap_or_else(|| panic!("{k} in {stats}"));
    assert!(global("fib_redirect_packets") + global("learned_peer_packets") >= 50 * 2, "{stats}");
    assert!(global("learned_peer_packets") >= 50, "b1's MAC learned after its first SYN-ACK: {stats}");
    assert_eq!(global("redirect_peer_packets"), 0, "{stats}");
}

#[test]
fn lb_ferryctl_and_metrics_show_what_is_programmed() {
    let w = World::new(2);
    w.web(&[w.ep(0), w.ep(1)]);
    w.wait_active("10.96.0.10:80", 2);
    let held = w.client.run(|| Held::open(sa(VIP, 80)).expect("open"));
    let services = w.agent.ferryctl(&["service", "list"]);
    assert!(services.contains("default/web") && services.contains("10.96.0.10:80"), "{services}");
    let backends = w.agent.ferryctl(&["-o", "json", "backend", "list"]);
    let b: serde_json::Value = serde_json::from_str(&backends).expect("json");
    assert_eq!(b.as_array().map(Vec::len), Some(2), "{backends}");
    // Conntrack: filterable by service and by client address.
    let client_ip = w.client.ipv4().to_string();
    let ct = w.agent.ferryctl(&["conntrack", "list", "--service", "default/web", "--ip", &client_ip]);
    assert!(ct.contains(&client_ip) && ct.contains("10.96.0.10:80"), "{ct}");
    let none = w.agent.ferryctl(&["conntrack", "list", "--service", "default/other"]);
    assert_eq!(none.lines().count(), 1, "header only: {none}");
    // Works with the agent down: it reads the pinned maps.
    let mut agent = w.agent;
    agent.kill9();
    let stats = agent.ferryctl(&["-o", "json", "stats"]);
    let s: serde_json::Value = serde_json::from_str(&stats).expect("json");
    assert!(s["services"][0]["packets"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(s["conntrack_entries"].as_u64().unwrap_or(0) >= 1, "{stats}");
    agent.restart();
    let (_, metrics) = agent.http_get("/metrics").expect("metrics");
    for want in [
        "ferry_sync_duration_seconds_count",
        "ferry_services_programmed 1",
        "ferry_backends_programmed 2",
        "ferry_service_packets_total{service=\"default/web\"",
        "ferry_drops_total{reason=\"malformed\"}",
        "ferry_conntrack_entries",
        "ferry_conntrack_insert_failures_total",
    ] {
        assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    }
    // Flush: the entries go.
    let out = agent.ferryctl(&["conntrack", "flush", "--service", "default/web"]);
    assert!(out.contains("flushed"), "{out}");
    let ct = agent.ferryctl(&["conntrack", "list", "--service", "default/web"]);
    assert_eq!(ct.lines().count(), 1, "{ct}");
    drop(held);
}

/// Connects from `pod` to each of `dsts` in turn, every time from local
/// port `port` (SO_REUSEADDR, closed with RST as a busy client does), and
/// reads the server's id: "id@peer address" per connection, or
/// "error:<kind>", comma-separated.
fn connects_from_port(pod: &Pod, port: u16, dsts: &[(&str, u16)]) -> String {
    let list: Vec<String> = dsts.iter().map(|(h, p)| format!("(\"{h}\", {p})")).collect();
    let script = format!(
        r#"
import socket, struct
out = []
for dst in [{}]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(2)
    s.bind(("0.0.0.0", {port}))
    try:
        s.connect(dst)
        out.append(s.recv(10).decode().strip() + "@" + s.getpeername()[0])
    except OSError as e:
        out.append("error:" + type(e).__name__)
    s.close()
print(",".join(out))
"#,
        list.join(", ")
    );
    let out = ferry_tests::harness::util::run_timeout(
        std::process::Command::new("ip").args(["netns", "exec", pod.netns_name(), "python3", "-c", &script]),
        Duration::from_secs(20),
    );
    assert!(out.stderr.is_empty(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Two Services sharing a backend; one client source port reused for both,
/// as a busy client closing with RST does within seconds. Each connection
/// must reach its own Service. (Found by bench-lb's rate runs: after the
/// first repetition most connections stalled.)
#[test]
fn lb_source_port_reused_across_two_services_with_one_backend() {
    let w = World::new(1);
    w.web(&[w.ep(0)]);
    w.agent.write("api-svc.yaml", &service("api", &["10.96.0.11"], HTTP, ""));
    w.agent.write("api-eps.yaml", &slice("api-1", "api", HTTP_EP, &[w.ep(0)]));
    w.wait_active("10.96.0.10:80", 1);
    w.wait_active("10.96.0.11:80", 1);
    let (web, api) = ("10.96.0.10", "10.96.0.11");
    let got = connects_from_port(&w.client, 40555, &[(web, 80), (api, 80), (web, 80), (api, 80)]);
    assert_eq!(got, format!("b1@{web},b1@{api},b1@{web},b1@{api}"));
}

/// A client reaching a backend through its Service, then directly by pod IP
/// from the same source port (clients pick ports per destination, so this
/// is common under load): the direct connection must not be given the
/// Service flow's reverse NAT (its SYN-ACK would come from the VIP and be
/// reset), and the Service must still work after it.
#[test]
fn lb_direct_connection_reusing_a_service_flows_tuple_is_not_translated() {
    let w = World::new(1);
    w.web(&[w.ep(0)]);
    w.wait_active("10.96.0.10:80", 1);
    let b1 = w.backends[0].0.ipv4().to_string();
    let got = connects_from_port(&w.client, 40556, &[(VIP, 80), (&b1, 8080), (VIP, 80), (&b1, 8080)]);
    assert_eq!(got, format!("b1@{VIP},b1@{b1},b1@{VIP},b1@{b1}"));
}
