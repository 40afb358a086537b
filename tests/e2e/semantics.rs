//! Issue 11, items 1-3, end to end: Service semantics as Kubernetes defines
//! them, seen from a client pod. The real `ferry-agent` programs the data
//! path from a YAML directory holding Services and EndpointSlices written as
//! a cluster holds them; real TCP servers in pods answer `<pod>:<port>`, so
//! each connection shows which pod and which port it reached.
//!
//! ```text
//!  client pod ──veth── [from-pod DNAT]  node netns (ferry0)  ──veth── pods b1.. (IdServer "bN:port" per port)
//!  ferry-agent (node netns): --yaml-dir <scratch>/catalog, per-test pin dir
//! ```
//!
//! 1. Ports per EndpointSlice: test/e2e/network/endpointslice.go's "multiple
//!    ports in multiple slices" and "multiple IPs in multiple slices", and a
//!    rolling update that changed the container port.
//! 2. The `ready` condition is the contract (publishNotReadyAddresses).
//! 3. `service.kubernetes.io/service-proxy-name` and
//!    `service.kubernetes.io/headless` hand a Service to someone else
//!    (service.go "should implement service.kubernetes.io/service-proxy-name"
//!    and ".../headless": the labelled Service is not reachable, and becomes
//!    reachable when the label goes).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_tests::assert_eventually;
use ferry_tests::harness::lb::{lb_node, service, slice, Agent, Ep};
use ferry_tests::harness::{tcp_id, tcp_spread, Held, IdServer, Node, Pod};

const T: Duration = Duration::from_secs(2);
const VIP: &str = "10.96.0.20";
/// A second, unlabelled Service: once it is programmed, the agent has
/// synced the catalog that also held the labelled one.
const CANARY_VIP: &str = "10.96.0.21";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A node with the agent, a client pod and `n` pods b1..bn (no servers yet:
/// [`World::serve`] starts them per port), programs attached everywhere.
struct World {
    agent: Agent,
    client: Pod,
    pods: Vec<Pod>,
    servers: Vec<IdServer>,
    _node: Node,
}

impl World {
    fn new(n: usize, agent_args: &[&str]) -> Self {
        let (node, pin) = lb_node();
        let agent = Agent::start_with(&node, pin, agent_args);
        let client = node.add_pod("client");
        let pods: Vec<Pod> = (1..=n).map(|i| node.add_pod(&format!("b{i}"))).collect();
        let veths: Vec<String> =
            std::iter::once(&client).chain(&pods).map(|p| p.host_veth.clone().expect("host veth")).collect();
        let refs: Vec<&str> = veths.iter().map(String::as_str).collect();
        agent.wait_attached(&refs);
        World { agent, client, pods, servers: Vec::new(), _node: node }
    }

    /// Pod `i` (0-based: b1 is 0) listens on `port`, answering "b<i+1>:<port>".
    fn serve(&mut self, i: usize, port: u16) {
        let id = format!("b{}:{port}", i + 1);
        self.servers.push(IdServer::tcp(self.pods[i].netns_path(), port, &id));
    }

    fn ep(&self, i: usize) -> Ep {
        Ep::ready(self.pods[i].ipv4())
    }

    /// An endpoint of pod `i` with these conditions.
    fn ep_with(&self, i: usize, ready: bool, serving: bool, terminating: bool) -> Ep {
        Ep { addr: self.pods[i].ipv4().into(), ready, serving, terminating, node: None }
    }

    /// ferryctl's row for `vip_port` (`10.96.0.20:80`): (active backends,
    /// all backends including terminating ones), or `None` when the frontend
    /// is not programmed.
    fn row(&self, vip_port: &str) -> Option<(u32, usize)> {
        self.agent.frontend_row(vip_port)
    }

    fn active_of(&self, vip_port: &str) -> Option<u32> {
        self.row(vip_port).map(|(a, _)| a)
    }

    /// Waits until `vip_port` has `active` backends for new flows and
    /// `total` in all.
    fn wait_backends(&self, vip_port: &str, active: u32, total: usize) {
        assert_eventually!(
            self.row(vip_port) == Some((active, total)),
            Duration::from_secs(3),
            "{vip_port} with {active} active of {total} backends; ferryctl says:\n{}",
            self.agent.ferryctl(&["service", "list"])
        );
    }

    /// Waits until `vip_port` is programmed at all (write a Service's
    /// slices before the Service, and this means they have been read too).
    fn wait_programmed(&self, vip_port: &str) {
        assert_eventually!(
            self.row(vip_port).is_some(),
            Duration::from_secs(3),
            "{vip_port} programmed; ferryctl says:\n{}",
            self.agent.ferryctl(&["service", "list"])
        );
    }

    fn wait_active(&self, vip_port: &str, active: u32) {
        assert_eventually!(
            self.active_of(vip_port) == Some(active),
            Duration::from_secs(3),
            "{vip_port} with {active} active backends; ferryctl says:\n{}",
            self.agent.ferryctl(&["service", "list"])
        );
    }

    /// The canary Service (CANARY_VIP:80 -> b1:8080) in its own files.
    fn canary(&self) {
        self.agent.write("canary-svc.yaml", &service("canary", &[CANARY_VIP], &[("http", "TCP", 80, "8080")], ""));
        self.agent.write("canary-eps.yaml", &slice("canary-1", "canary", &[("http", "TCP", 8080)], &[self.ep(0)]));
    }
}

/// `n` fresh connections from inside `pod`; the count per answer
/// (errors counted under "error: <kind>").
fn spread(pod: &Pod, addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    tcp_spread(pod, addr, n, T)
}

fn all(id: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(id.to_string(), n)])
}

/// One connection from `pod`: the answer, or the error kind.
fn connect_once(pod: &Pod, addr: SocketAddr) -> Result<String, ErrorKind> {
    pod.run(move || tcp_id(addr, Duration::from_millis(500)).map_err(|e| e.kind()))
}

/// A Service YAML (from the harness's `service`) with labels added to its
/// metadata (`key: value, ...` in YAML flow syntax).
fn labelled(yaml: String, labels: &str) -> String {
    let meta = "  namespace: default\n";
    assert!(yaml.contains(meta), "service YAML shape changed:\n{yaml}");
    yaml.replacen(meta, &format!("{meta}  labels: {{{labels}}}\n"), 1)
}

/// The Service of endpointslice.go's two multi-slice cases: ports 80 and
/// 81, each targetPort defaulting to its own number (the pods listen
/// elsewhere: only the slices know where).
fn two_port_service() -> String {
    service("multi", &[VIP], &[("port80", "TCP", 80, "80"), ("port81", "TCP", 81, "81")], "")
}

/// endpointslice.go "should support a Service with multiple ports specified
/// in multiple EndpointSlices": one pod listening on 8090 and 9090, one
/// slice per Service port, the same address in both. Port 80 must reach
/// 8090 and port 81 9090, every time. (With a numeric-targetPort fallback,
/// the other slice's endpoint was also a backend at :80 / :81, where nothing
/// listens: part of the connections were reset.)
#[test]
fn semantics_multiple_ports_in_multiple_slices() {
    let mut w = World::new(1, &[]);
    w.serve(0, 8090);
    w.serve(0, 9090);
    w.agent.write("multi-eps-1.yaml", &slice("multi-1", "multi", &[("port80", "TCP", 8090)], &[w.ep(0)]));
    w.agent.write("multi-eps-2.yaml", &slice("multi-2", "multi", &[("port81", "TCP", 9090)], &[w.ep(0)]));
    w.agent.write("multi-svc.yaml", &two_port_service());
    w.wait_programmed(&format!("{VIP}:80"));
    w.wait_programmed(&format!("{VIP}:81"));
    assert_eq!(spread(&w.client, sa(VIP, 80), 40), all("b1:8090", 40));
    assert_eq!(spread(&w.client, sa(VIP, 81), 40), all("b1:9090", 40));
    // One backend each, nothing at :80 / :81.
    assert_eq!(w.row(&format!("{VIP}:80")), Some((1, 1)));
    assert_eq!(w.row(&format!("{VIP}:81")), Some((1, 1)));
}

/// endpointslice.go "should support a Service with multiple endpoint IPs
/// specified in multiple EndpointSlices": two pods on 8090, each in the
/// slice of one Service port. Each Service port reaches its own pod only.
#[test]
fn semantics_multiple_ips_in_multiple_slices() {
    let mut w = World::new(2, &[]);
    w.serve(0, 8090);
    w.serve(1, 8090);
    w.agent.write("multi-eps-1.yaml", &slice("multi-1", "multi", &[("port80", "TCP", 8090)], &[w.ep(0)]));
    w.agent.write("multi-eps-2.yaml", &slice("multi-2", "multi", &[("port81", "TCP", 8090)], &[w.ep(1)]));
    w.agent.write("multi-svc.yaml", &two_port_service());
    w.wait_programmed(&format!("{VIP}:80"));
    w.wait_programmed(&format!("{VIP}:81"));
    assert_eq!(spread(&w.client, sa(VIP, 80), 40), all("b1:8090", 40));
    assert_eq!(spread(&w.client, sa(VIP, 81), 40), all("b2:8090", 40));
    assert_eq!(w.row(&format!("{VIP}:80")), Some((1, 1)));
    assert_eq!(w.row(&format!("{VIP}:81")), Some((1, 1)));
}

/// A rolling update whose new pods listen on another container port
/// (targetPort is the name "http": 8080 in the old pods, 9090 in the new).
/// The EndpointSlice controller keeps old and new pods in separate slices,
/// each with its number; every connection reaches a pod on the port that
/// pod listens on, through every step, and a connection to the old pod
/// survives its termination.
#[test]
fn semantics_rolling_update_that_changed_the_container_port() {
    let mut w = World::new(2, &[]);
    w.serve(0, 8080); // old pod
    w.serve(1, 9090); // new pod
    w.agent.write("web-svc.yaml", &service("web", &[VIP], &[("http", "TCP", 80, "http")], ""));
    w.agent.write("web-old.yaml", &slice("web-old", "web", &[("http", "TCP", 8080)], &[w.ep(0)]));
    w.wait_backends(&format!("{VIP}:80"), 1, 1);
    assert_eq!(spread(&w.client, sa(VIP, 80), 20), all("b1:8080", 20));
    let mut held = w.client.run(|| Held::open(sa(VIP, 80)).expect("open"));
    assert_eq!(held.backend, "b1:8080");

    // Surge: the new pod is ready in its own slice, the old one still too.
    w.agent.write("web-new.yaml", &slice("web-new", "web", &[("http", "TCP", 9090)], &[w.ep(1)]));
    w.wait_backends(&format!("{VIP}:80"), 2, 2);
    let both = spread(&w.client, sa(VIP, 80), 60);
    assert_eq!(both.keys().collect::<Vec<_>>(), ["b1:8080", "b2:9090"], "{both:?}");

    // The old pod terminates (still serving): no new flows, its flow goes on.
    w.agent.write(
        "web-old.yaml",
        &slice("web-old", "web", &[("http", "TCP", 8080)], &[Ep::terminating(w.pods[0].ipv4())]),
    );
    w.wait_backends(&format!("{VIP}:80"), 1, 2);
    assert_eq!(spread(&w.client, sa(VIP, 80), 20), all("b2:9090", 20));
    held = w.client.run(move || {
        held.ping(1).expect("the old pod's flow survives its termination");
        held
    });

    // The old slice is gone: the new pod alone, still on 9090.
    w.agent.remove("web-old.yaml");
    w.wait_backends(&format!("{VIP}:80"), 1, 1);
    assert_eq!(spread(&w.client, sa(VIP, 80), 20), all("b2:9090", 20));
    drop(held);
}

/// With publishNotReadyAddresses the EndpointSlice controller writes
/// `ready: true` for pods that are not ready and for terminating pods, and
/// kube-proxy sends them traffic (pkg/proxy/topology.go
/// `CategorizeEndpoints`: `IsReady()` alone decides). Ferry used to refuse
/// both (RST). And an endpoint that is serving but neither ready nor
/// terminating is no fallback: with nothing else, the Service refuses.
#[test]
fn semantics_ready_is_the_contract() {
    let mut w = World::new(1, &[]);
    w.serve(0, 8080);
    let pnra = "  publishNotReadyAddresses: true\n";
    let eps = |e: Ep| slice("web-1", "web", &[("http", "TCP", 8080)], &[e]);

    // A pod whose readiness probe fails: ready: true, serving: false. (The
    // slice first: once the Service is programmed, the slice was read.)
    w.agent.write("web-eps.yaml", &eps(w.ep_with(0, true, false, false)));
    w.agent.write("web-svc.yaml", &service("web", &[VIP], &[("http", "TCP", 80, "8080")], pnra));
    w.wait_programmed(&format!("{VIP}:80"));
    assert_eq!(
        spread(&w.client, sa(VIP, 80), 10),
        all("b1:8080", 10),
        "unready pod of a publishNotReadyAddresses Service"
    );
    w.wait_backends(&format!("{VIP}:80"), 1, 1);

    // From here each step changes what ferryctl shows (active, all
    // backends), so each wait proves the step was applied.

    // Not ready, serving, not terminating (written by hand; kube-proxy
    // would not use it): kept for its flows, no new ones: refused.
    w.agent.write("web-eps.yaml", &eps(w.ep_with(0, false, true, false)));
    w.wait_backends(&format!("{VIP}:80"), 0, 1);
    assert_eq!(connect_once(&w.client, sa(VIP, 80)), Err(ErrorKind::ConnectionRefused));

    // A terminating pod that stopped serving: ready: true, serving: false,
    // terminating: true.
    w.agent.write("web-eps.yaml", &eps(w.ep_with(0, true, false, true)));
    w.wait_backends(&format!("{VIP}:80"), 1, 1);
    assert_eq!(spread(&w.client, sa(VIP, 80), 10), all("b1:8080", 10), "terminating pod that says ready");

    // Neither ready, serving nor terminating: gone, refused.
    w.agent.write("web-eps.yaml", &eps(w.ep_with(0, false, false, false)));
    w.wait_backends(&format!("{VIP}:80"), 0, 0);
    assert_eq!(connect_once(&w.client, sa(VIP, 80)), Err(ErrorKind::ConnectionRefused));

    // Graceful termination with nothing ready: the fallback takes new flows.
    w.agent.write("web-eps.yaml", &eps(w.ep_with(0, false, true, true)));
    w.wait_backends(&format!("{VIP}:80"), 1, 1);
    assert_eq!(spread(&w.client, sa(VIP, 80), 10), all("b1:8080", 10), "serving-terminating fallback");
}

/// Not programmed: ferryctl shows no frontend, and a client's connection
/// does not reach any pod (the VIP is not translated, so the node has no
/// route for it; not Ferry's RST either, which would mean a frontend).
fn assert_not_served(w: &World, vip_port: &str, addr: SocketAddr) {
    let r = connect_once(&w.client, addr);
    assert!(matches!(&r, Err(k) if *k != ErrorKind::ConnectionRefused), "{addr}: expected no answer, got {r:?}");
    assert_eq!(w.row(vip_port), None, "{vip_port} programmed:\n{}", w.agent.ferryctl(&["service", "list"]));
}

/// service.go "should implement service.kubernetes.io/service-proxy-name"
/// and "should implement service.kubernetes.io/headless", with an agent
/// that has no --service-proxy-name: a Service carrying either label is not
/// programmed; removing the label makes it reachable, adding it again takes
/// it away.
#[test]
fn semantics_labels_hand_a_service_to_another_proxy() {
    let mut w = World::new(1, &[]);
    w.serve(0, 8080);
    let web = || service("web", &[VIP], &[("http", "TCP", 80, "8080")], "");
    w.agent.write("web-svc.yaml", &labelled(web(), "service.kubernetes.io/service-proxy-name: foo-bar"));
    w.agent.write("web-eps.yaml", &slice("web-1", "web", &[("http", "TCP", 8080)], &[w.ep(0)]));
    let hl_vip = "10.96.0.22";
    w.agent.write(
        "hl-svc.yaml",
        &labelled(service("hl", &[hl_vip], &[("http", "TCP", 80, "8080")], ""), "service.kubernetes.io/headless: ''"),
    );
    w.agent.write("hl-eps.yaml", &slice("hl-1", "hl", &[("http", "TCP", 8080)], &[w.ep(0)]));
    // Written last: once it is programmed, the labelled ones have been seen.
    w.canary();
    w.wait_active(&format!("{CANARY_VIP}:80"), 1);
    assert_eq!(spread(&w.client, sa(CANARY_VIP, 80), 5), all("b1:8080", 5));
    assert_not_served(&w, &format!("{VIP}:80"), sa(VIP, 80));
    assert_not_served(&w, &format!("{hl_vip}:80"), sa(hl_vip, 80));

    // The label goes: Ferry is the proxy again.
    w.agent.write("web-svc.yaml", &web());
    w.wait_active(&format!("{VIP}:80"), 1);
    assert_eq!(spread(&w.client, sa(VIP, 80), 10), all("b1:8080", 10));

    // And comes back: handed away again.
    w.agent.write("web-svc.yaml", &labelled(web(), "service.kubernetes.io/service-proxy-name: foo-bar"));
    assert_eventually!(
        w.active_of(&format!("{VIP}:80")).is_none(),
        Duration::from_secs(3),
        "{}",
        w.agent.ferryctl(&["service", "list"])
    );
    assert_not_served(&w, &format!("{VIP}:80"), sa(VIP, 80));
}

/// `--service-proxy-name ferry`: only the Services labelled
/// `service.kubernetes.io/service-proxy-name: ferry` are programmed; another
/// proxy's and unlabelled ones are not.
#[test]
fn semantics_service_proxy_name_flag_selects_its_services() {
    let mut w = World::new(1, &["--service-proxy-name", "ferry"]);
    w.serve(0, 8080);
    let svc = |name: &str, vip: &str| service(name, &[vip], &[("http", "TCP", 80, "8080")], "");
    let eps = |name: &str| slice(&format!("{name}-1"), name, &[("http", "TCP", 8080)], &[w.ep(0)]);
    let (mine, other, plain) = ("10.96.0.30", "10.96.0.31", "10.96.0.32");
    w.agent.write("other-svc.yaml", &labelled(svc("other", other), "service.kubernetes.io/service-proxy-name: other"));
    w.agent.write("other-eps.yaml", &eps("other"));
    w.agent.write("plain-svc.yaml", &svc("plain", plain));
    w.agent.write("plain-eps.yaml", &eps("plain"));
    w.agent.write("mine-eps.yaml", &eps("mine"));
    // Written last: once it is programmed, the others have been seen.
    w.agent.write("mine-svc.yaml", &labelled(svc("mine", mine), "service.kubernetes.io/service-proxy-name: ferry"));
    w.wait_active(&format!("{mine}:80"), 1);
    assert_eq!(spread(&w.client, sa(mine, 80), 10), all("b1:8080", 10));
    assert_not_served(&w, &format!("{other}:80"), sa(other, 80));
    assert_not_served(&w, &format!("{plain}:80"), sa(plain, 80));
}
