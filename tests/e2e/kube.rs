//! Issue 12 end to end: `ferry-agent` and `ferry-dns` following a Kubernetes
//! API server. The server is `ferry-fake-api`, in process, speaking the real
//! list/watch protocol (kube-rs talks to it unchanged); it listens on the
//! node namespace's loopback, where both binaries run.
//!
//! ```text
//!  node netns:  fake API (127.0.0.1:<port>) <── ferry-agent --api-server ... (pinned maps, attaches pods)
//!                                           <── ferry-dns --api-server ... (0.0.0.0:10053)
//!               ferry0 ── client pod (asks 10.244.0.1:10053, connects to the answer)
//!                     └── pods b1, b2 (IdServer "bN")
//! ```
//!
//! 1. a client pod reaches a Service by name;
//! 2. a create, an update and a delete through the API reach the maps and DNS;
//! 3. deletes made while every watch was down are applied after reconnecting
//!    (by history replay, and by relist after compaction);
//! 4. a forced 410 relists with no failed connection and no NXDOMAIN;
//! 5. API down at start: nothing programmed, SERVFAIL, /readyz failing, then
//!    a normal start; API down after ready: the last state keeps serving;
//! 6. the Node's pod CIDR becomes the conflist, and a pod created with it
//!    gets an address in that range;
//!
//! and the RBAC in manifests/00-rbac.yaml is exactly what the binaries use:
//! every request they make is allowed, and every rule is used.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_fake_api::FakeApi;
use ferry_tests::assert_eventually;
use ferry_tests::harness::lb::{lb_node, Agent, PinDir};
use ferry_tests::harness::{ferry_bin_dir, tcp_id, IdServer, Node, Pod, Proc};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const DNS_PORT: u16 = 10053;
const NAME: &str = "web.default.svc.cluster.local.";

/// The fake API server, started inside the node namespace so that its
/// listener (and every re-listen after `set_reachable(true)`) is there.
fn api_in(node: &Node) -> FakeApi {
    node.run(|| FakeApi::start().expect("fake API server"))
}

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    })
}

fn slice(name: &str, svc: &str, addrs: &[Ipv4Addr]) -> Value {
    let eps: Vec<Value> =
        addrs.iter().map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    })
}

fn node_object(name: &str, cidrs: &[&str]) -> Value {
    let mut spec = json!({});
    if !cidrs.is_empty() {
        spec = json!({"podCIDR": cidrs[0], "podCIDRs": cidrs});
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]},
    })
}

/// ferry-dns in the node namespace, on the API; SIGKILLed on drop.
struct Dns {
    proc: Option<Proc>,
    log: PathBuf,
    metrics: SocketAddr,
    node: Node,
}

impl Dns {
    fn start(node: &Node, api_url: &str) -> Dns {
        let log = node.scratch().join("dns.log");
        let out = std::fs::File::create(&log).expect("log");
        let metrics: SocketAddr = "127.0.0.1:9153".parse().unwrap();
        let mut cmd = Command::new(ferry_bin_dir().join("ferry-dns"));
        cmd.args(["--api-server", api_url, "--listen"])
            .arg(format!("0.0.0.0:{DNS_PORT}"))
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            // Nothing leaves the node namespace: names outside the cluster
            // go to a port nobody listens on.
            .args(["--upstream", "127.0.0.1:9", "--upstream-timeout-ms", "200"])
            .env("RUST_LOG", "info,ferry_state=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        let proc = node.spawn(&mut cmd);
        Dns { proc: Some(proc), log, metrics, node: node.clone() }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn http(&self, path: &str) -> Option<(String, String)> {
        self.node.http_get(self.metrics, path)
    }

    fn ready(&self) -> bool {
        self.http("/readyz").is_some_and(|(s, _)| s.contains(" 200 "))
    }

    /// The answer to `name` A, asked from the node namespace.
    fn ask(&self, name: &str) -> Option<Message> {
        let name = name.to_string();
        self.node.run(move || ask(SocketAddr::from(([127, 0, 0, 1], DNS_PORT)), &name))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        if std::thread::panicking() {
            eprintln!("--- ferry-dns log ---\n{}", self.log_text());
        }
    }
}

/// One A query over UDP, from the calling thread's namespace.
fn ask(server: SocketAddr, name: &str) -> Option<Message> {
    let mut m = Message::new(0x5151, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(&m.to_vec().ok()?, server).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn rcode(m: &Option<Message>) -> Option<ResponseCode> {
    m.as_ref().map(|m| m.metadata.response_code)
}

/// A node with the fake API, the agent and ferry-dns on it, a client pod and
/// two backends b1, b2 serving their names on 8080.
struct World {
    api: FakeApi,
    agent: Agent,
    dns: Dns,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<IdServer>,
    node: Node,
}

impl World {
    /// `before_start` runs on the API before the binaries start.
    fn new(before_start: impl FnOnce(&FakeApi, &[Pod])) -> World {
        let (node, pin) = lb_node();
        let api = api_in(&node);
        let client = node.add_pod("client");
        let backends: Vec<Pod> = (1..=2).map(|i| node.add_pod(&format!("b{i}"))).collect();
        let servers = backends
            .iter()
            .enumerate()
            .map(|(i, p)| IdServer::tcp(p.netns_path(), 8080, &format!("b{}", i + 1)))
            .collect();
        before_start(&api, &backends);
        let agent = start_agent(&node, pin, &api, &[]);
        let dns = Dns::start(&node, &api.url());
        World { api, agent, dns, client, backends, _servers: servers, node }
    }

    fn wait_ready(&mut self) {
        self.agent.wait_ready(Duration::from_secs(20));
        assert_eventually!(self.dns.ready(), Duration::from_secs(20), "ferry-dns ready:\n{}", self.dns.log_text());
        let veths: Vec<String> = std::iter::once(&self.client)
            .chain(&self.backends)
            .map(|p| p.host_veth.clone().expect("host veth"))
            .collect();
        let refs: Vec<&str> = veths.iter().map(String::as_str).collect();
        self.agent.wait_attached(&refs);
    }

    fn addrs(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(Pod::ipv4).collect()
    }

    /// From the client pod: resolve `name` with ferry-dns (via the pod's
    /// gateway) and connect to the answer's port 80.
    fn reach_by_name(&self, name: &str) -> Result<String, String> {
        let name = name.to_string();
        self.client.run(move || {
            let server = SocketAddr::from(([10, 244, 0, 1], DNS_PORT));
            let m = ask(server, &name).ok_or("no DNS answer")?;
            let ip = *a_records(&m).first().ok_or_else(|| format!("no A record: {:?}", m.metadata.response_code))?;
            tcp_id(SocketAddr::from((ip, 80)), Duration::from_secs(2)).map_err(|e| format!("connect {ip}:80: {e}"))
        })
    }

    fn reach(&self, vip: &str) -> std::io::Result<String> {
        let addr: SocketAddr = format!("{vip}:80").parse().unwrap();
        self.client.run(move || tcp_id(addr, Duration::from_secs(2)))
    }
}

fn start_agent(node: &Node, pin: PinDir, api: &FakeApi, extra: &[&str]) -> Agent {
    let mut args = vec!["--iface-pattern", ferry_tests::harness::lb::POD_VETHS];
    args.extend_from_slice(extra);
    Agent::start_on_api(node, pin, &api.url(), &args)
}

fn agent_status(agent: &Agent) -> Value {
    agent.http_get("/status").and_then(|(_, b)| serde_json::from_str(&b).ok()).unwrap_or(Value::Null)
}

/// Sum of `lists` over the kinds of a /status document.
fn lists(status: &Value) -> u64 {
    status["source"]["kinds"].as_array().map_or(0, |k| k.iter().filter_map(|k| k["lists"].as_u64()).sum())
}

/// Every watch must relist: one change per kind that no watch sees (the
/// streams are stalled), the history compacted past them, every watch
/// dropped. Resuming from a resourceVersion before the compaction is 410.
fn force_relist(api: &FakeApi) {
    api.stall_watches(true);
    api.apply(service("unrelated", "10.96.0.59"));
    api.apply(slice("unrelated-1", "unrelated", &[Ipv4Addr::new(10, 244, 0, 99)]));
    api.apply(node_object("node-z", &["10.244.99.0/24"]));
    api.compact();
    api.drop_watches();
    api.stall_watches(false);
}

#[test]
fn api_a_client_pod_reaches_a_service_by_name() {
    let mut w = World::new(|api, b| {
        api.apply(service("web", "10.96.0.30"));
        api.apply(slice("web-1", "web", &[b[0].ipv4(), b[1].ipv4()]));
    });
    w.wait_ready();
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(w.reach_by_name(NAME).expect("web by name"));
    }
    assert_eq!(seen, BTreeSet::from(["b1".to_string(), "b2".to_string()]), "both backends serve");
    let status = agent_status(&w.agent);
    assert_eq!(status["source"]["source"], "kubernetes", "{status}");
    let metrics = w.agent.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.contains("ferry_source_state{source=\"kubernetes\",kind=\"services\",state=\"watching\"} 1"),
        "source state exported:\n{metrics}"
    );
}

#[test]
fn api_create_update_delete_reach_maps_and_dns() {
    let mut w = World::new(|api, _| {
        // Something else, so the first full list is not empty.
        api.apply(service("other", "10.96.0.39"));
    });
    w.wait_ready();
    let addrs = w.addrs();
    assert!(w.agent.frontend_row("10.96.0.31:80").is_none());
    assert_eq!(rcode(&w.dns.ask(NAME)), Some(ResponseCode::NXDomain));

    // Create.
    w.api.apply(service("web", "10.96.0.31"));
    w.api.apply(slice("web-1", "web", &addrs[..1]));
    assert_eventually!(w.agent.frontend_row("10.96.0.31:80") == Some((1, 1)), T, "created: programmed");
    assert_eventually!(w.dns.ask(NAME).map(|m| a_records(&m)) == Some(vec!["10.96.0.31".parse().unwrap()]), T);
    assert_eq!(w.reach("10.96.0.31").expect("web"), "b1");

    // Update: a second endpoint.
    w.api.apply(slice("web-1", "web", &addrs));
    assert_eventually!(w.agent.frontend_row("10.96.0.31:80") == Some((2, 2)), T, "updated: two backends");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(w.reach("10.96.0.31").expect("web"));
    }
    assert_eq!(seen.len(), 2, "both backends after the update: {seen:?}");

    // Delete.
    w.api.delete("Service", Some("default"), "web");
    w.api.delete("EndpointSlice", Some("default"), "web-1");
    assert_eventually!(w.agent.frontend_row("10.96.0.31:80").is_none(), T, "deleted: unprogrammed");
    assert_eventually!(rcode(&w.dns.ask(NAME)) == Some(ResponseCode::NXDomain), T, "deleted: NXDOMAIN");
    assert!(w.agent.frontend_row("10.96.0.39:80").is_some(), "the other Service is untouched");
}

#[test]
fn api_deletes_while_every_watch_was_down_are_applied_after_reconnecting() {
    let mut w = World::new(|api, b| {
        for (i, name) in ["a", "b", "keep"].iter().enumerate() {
            api.apply(service(name, &format!("10.96.0.4{i}")));
            api.apply(slice(&format!("{name}-1"), name, &[b[0].ipv4()]));
        }
    });
    w.wait_ready();
    assert_eventually!(w.agent.frontend_row("10.96.0.40:80").is_some(), T);

    // The API goes away (every watch cut, connections refused); "a" is
    // deleted meanwhile, with its history kept: the watches resume from
    // their resourceVersion and replay the DELETED event.
    w.api.set_reachable(false);
    w.api.delete("Service", Some("default"), "a");
    w.api.delete("EndpointSlice", Some("default"), "a-1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(w.agent.frontend_row("10.96.0.40:80").is_some(), "nothing changes while the API is away");
    w.api.set_reachable(true);
    assert_eventually!(w.agent.frontend_row("10.96.0.40:80").is_none(), Duration::from_secs(15), "a replayed delete");
    assert_eventually!(
        rcode(&w.dns.ask("a.default.svc.cluster.local.")) == Some(ResponseCode::NXDomain),
        Duration::from_secs(15)
    );

    // Again for "b", but the history is compacted while the API is away:
    // the watches get 410 Gone and relist, and the relist's swap removes
    // what it no longer holds.
    let lists_before = lists(&agent_status(&w.agent));
    w.api.set_reachable(false);
    w.api.delete("Service", Some("default"), "b");
    w.api.delete("EndpointSlice", Some("default"), "b-1");
    w.api.compact();
    w.api.set_reachable(true);
    assert_eventually!(w.agent.frontend_row("10.96.0.41:80").is_none(), Duration::from_secs(15), "a relisted delete");
    assert_eventually!(
        rcode(&w.dns.ask("b.default.svc.cluster.local.")) == Some(ResponseCode::NXDomain),
        Duration::from_secs(15)
    );
    assert!(lists(&agent_status(&w.agent)) > lists_before, "the agent relisted: {}", agent_status(&w.agent));
    assert!(w.agent.frontend_row("10.96.0.42:80").is_some(), "what still exists stays programmed");
    assert_eq!(w.reach("10.96.0.42").expect("keep"), "b1");
}

#[test]
fn api_a_forced_410_relists_with_no_failed_request_and_no_nxdomain() {
    let mut w = World::new(|api, b| {
        api.apply(service("web", "10.96.0.50"));
        api.apply(slice("web-1", "web", &[b[0].ipv4(), b[1].ipv4()]));
    });
    w.wait_ready();
    let stop = Arc::new(AtomicBool::new(false));
    let (conns, conn_failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (answers, bad_answers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let conn_loop = {
        let (stop, ok, bad) = (stop.clone(), conns.clone(), conn_failures.clone());
        let addr: SocketAddr = "10.96.0.50:80".parse().unwrap();
        let client = w.client.netns_path().to_path_buf();
        std::thread::spawn(move || {
            ferry_tests::harness::util::run_in(&client, move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match tcp_id(addr, Duration::from_secs(2)) {
                        Ok(id) if id.starts_with('b') => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
    };
    let dns_loop = {
        let (stop, ok, bad) = (stop.clone(), answers.clone(), bad_answers.clone());
        let node = w.node.netns_path().to_path_buf();
        std::thread::spawn(move || {
            ferry_tests::harness::util::run_in(&node, move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match ask(SocketAddr::from(([127, 0, 0, 1], DNS_PORT)), NAME) {
                        Some(m) if a_records(&m) == [Ipv4Addr::new(10, 96, 0, 50)] => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let lists_before = lists(&agent_status(&w.agent));
    let dns_lists_before =
        w.dns.http("/status").and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok()).map(|s| lists(&s));
    // Changes the watches have not seen, then history compacted and every
    // watch dropped: resuming gets 410 Gone, and both binaries relist.
    force_relist(&w.api);
    assert_eventually!(lists(&agent_status(&w.agent)) > lists_before, Duration::from_secs(15), "the agent relisted");
    assert_eventually!(
        w.dns.http("/status").and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok()).map(|s| lists(&s))
            > dns_lists_before,
        Duration::from_secs(15),
        "ferry-dns relisted"
    );
    assert_eventually!(w.agent.frontend_row("10.96.0.59:80").is_some(), T, "the relist's new Service");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    conn_loop.join().unwrap();
    dns_loop.join().unwrap();
    let (ok, bad) = (conns.load(Ordering::Relaxed), conn_failures.load(Ordering::Relaxed));
    let (dok, dbad) = (answers.load(Ordering::Relaxed), bad_answers.load(Ordering::Relaxed));
    assert!(ok > 50 && bad == 0, "connections through the relist: {ok} ok, {bad} failed");
    assert!(dok > 100 && dbad == 0, "DNS answers through the relist: {dok} right, {dbad} wrong or NXDOMAIN");
}

#[test]
fn api_down_at_start_then_up_and_down_after_ready_keeps_serving() {
    let (node, pin) = lb_node();
    let api = api_in(&node);
    let client = node.add_pod("client");
    let b1 = node.add_pod("b1");
    let _s = IdServer::tcp(b1.netns_path(), 8080, "b1");
    api.apply(service("web", "10.96.0.60"));
    api.apply(slice("web-1", "web", &[b1.ipv4()]));
    api.set_reachable(false);
    let mut agent = start_agent(&node, pin, &api, &[]);
    let dns = Dns::start(&node, &api.url());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!agent.ready(), "the agent is not ready without the API");
    assert!(agent.frontend_row("10.96.0.60:80").is_none(), "nothing programmed without the API");
    assert_eventually!(dns.http("/readyz").is_some(), T, "ferry-dns probes answer");
    assert!(!dns.ready(), "ferry-dns /readyz fails without the API");
    assert_eq!(rcode(&dns.ask(NAME)), Some(ResponseCode::ServFail), "cluster names: SERVFAIL until listed");
    let status = agent_status(&agent);
    assert_eq!(status["source"]["kinds"][0]["state"], "retrying", "{status}");

    api.set_reachable(true);
    agent.wait_ready(Duration::from_secs(20));
    assert_eventually!(dns.ready(), Duration::from_secs(20), "ferry-dns ready:\n{}", dns.log_text());
    assert_eventually!(agent.frontend_row("10.96.0.60:80") == Some((1, 1)), T);
    agent.wait_attached(&[client.host_veth.as_deref().unwrap(), b1.host_veth.as_deref().unwrap()]);
    let reach = || client.run(|| tcp_id("10.96.0.60:80".parse().unwrap(), Duration::from_secs(2)));
    assert_eq!(reach().expect("web"), "b1");

    // Down after ready: the last state keeps serving, and says so.
    api.set_reachable(false);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(reach().expect("web while the API is down"), "b1");
        assert_eq!(dns.ask(NAME).map(|m| a_records(&m)), Some(vec![Ipv4Addr::new(10, 96, 0, 60)]));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.ready() && dns.ready(), "still ready: what is served is the last good state");
    assert_eventually!(
        agent_status(&agent)["source"]["kinds"].as_array().is_some_and(|k| k.iter().any(|k| k["state"] == "retrying")),
        Duration::from_secs(10),
        "the source says it is retrying"
    );
    api.set_reachable(true);
    assert_eventually!(
        agent_status(&agent)["source"]["kinds"].as_array().is_some_and(|k| k.iter().all(|k| k["state"] == "watching")),
        Duration::from_secs(20),
        "watching again: {}",
        agent_status(&agent)
    );
}

#[test]
fn api_the_nodes_pod_cidr_becomes_the_conflist_and_pods_get_addresses_in_it() {
    let (node, pin) = lb_node();
    let api = api_in(&node);
    api.apply(node_object("node-a", &[]));
    let conflist = node.scratch().join("net.d/10-ferry.conflist");
    let path = conflist.display().to_string();
    let mut agent = start_agent(&node, pin, &api, &["--node-name", "node-a", "--write-cni-conf", &path]);
    agent.wait_ready(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!conflist.exists(), "no pod CIDR yet: no conflist (the kubelet reports the network not ready)");

    api.apply(node_object("node-a", &["10.244.7.0/24", "fd00:10:244:7::/64"]));
    assert_eventually!(conflist.exists(), T, "the conflist is written:\n{}", agent.log_text());
    let text = std::fs::read_to_string(&conflist).unwrap();
    let conf: Value = serde_json::from_str(&text).expect("the conflist is JSON");
    let plugin = &conf["plugins"][0];
    assert_eq!(plugin["type"], "ferry");
    assert_eq!(
        plugin["ipam"]["ranges"],
        json!([[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244:7::/64"}]]),
        "{text}"
    );
    let names: Vec<_> =
        std::fs::read_dir(conflist.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "nothing but the conflist in the directory: {names:?}");

    // A runtime (libcni) hands each plugin its part of the conflist with
    // the list's name and version; the IPAM store is the test's own.
    let mut netconf = plugin.clone();
    netconf["name"] = conf["name"].clone();
    netconf["cniVersion"] = conf["cniVersion"].clone();
    netconf["ipam"]["dataDir"] = json!(node.ipam_dir());
    let pod = node.add_pod_with("p1", &netconf, "").expect("ADD with the written conflist");
    let ip = pod.ipv4();
    assert!(ip.octets()[..3] == [10, 244, 7], "the pod's address {ip} is in the Node's pod CIDR");
    assert!(pod.ipv6().segments()[..4] == [0xfd00, 0x10, 0x244, 0x7], "and its IPv6 address {}", pod.ipv6());

    // The same content is not rewritten.
    let before = std::fs::metadata(&conflist).unwrap().modified().unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.70"}}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::metadata(&conflist).unwrap().modified().unwrap(), before);
}

/// One RBAC rule, flattened: (API group, resource, verb).
type Grant = (String, String, String);

/// The ClusterRole `role` of manifests/00-rbac.yaml, as grants.
fn cluster_role(role: &str) -> BTreeSet<Grant> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/00-rbac.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/00-rbac.yaml");
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("YAML");
        if v["kind"] != "ClusterRole" || v["metadata"]["name"] != role {
            continue;
        }
        for rule in v["rules"].as_array().expect("rules") {
            let strs = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for verb in strs("verbs") {
                        out.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    assert!(!out.is_empty(), "ClusterRole {role} in {path}");
    out
}

/// What a server recorded, as grants.
fn used(api: &FakeApi) -> BTreeSet<Grant> {
    api.requests().iter().map(|r| (r.api_group.clone(), r.resource.clone(), r.verb.clone())).collect()
}

#[test]
fn api_rbac_allows_every_request_made_and_grants_nothing_unused() {
    // Each binary on its own API server, so requests are attributed; both
    // through start, changes, a dropped watch, and a relist after 410.
    let (node, pin) = lb_node();
    let agent_api = api_in(&node);
    let dns_api = api_in(&node);
    for api in [&agent_api, &dns_api] {
        api.apply(service("web", "10.96.0.80"));
        api.apply(slice("web-1", "web", &[Ipv4Addr::new(10, 244, 0, 9)]));
        api.apply(node_object("node-a", &["10.244.0.0/24"]));
    }
    let conflist = node.scratch().join("net.d/10-ferry.conflist").display().to_string();
    let mut agent = start_agent(&node, pin, &agent_api, &["--node-name", "node-a", "--write-cni-conf", &conflist]);
    let dns = Dns::start(&node, &dns_api.url());
    agent.wait_ready(Duration::from_secs(20));
    assert_eventually!(dns.ready(), Duration::from_secs(20));
    for api in [&agent_api, &dns_api] {
        api.apply(service("web2", "10.96.0.81"));
        api.drop_watches();
    }
    assert_eventually!(agent.frontend_row("10.96.0.81:80").is_some(), T);
    for api in [&agent_api, &dns_api] {
        force_relist(api);
    }
    assert_eventually!(
        lists(&agent_status(&agent)) >= 6,
        Duration::from_secs(15),
        "relisted: {}",
        agent_status(&agent)
    );
    std::thread::sleep(Duration::from_millis(500));

    for (name, api) in [("ferry-agent", &agent_api), ("ferry-dns", &dns_api)] {
        let granted = cluster_role(name);
        let used = used(api);
        let denied: Vec<_> = used.difference(&granted).collect();
        assert!(denied.is_empty(), "{name} made requests its ClusterRole does not allow: {denied:?}");
        let unused: Vec<_> = granted.difference(&used).collect();
        assert!(unused.is_empty(), "{name}'s ClusterRole grants what it never uses: {unused:?}");
        assert!(api.requests().iter().all(|r| r.status < 400 || r.status == 410), "no request refused");
    }
}
