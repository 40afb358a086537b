//! Three nodes with their agents, routed by Ferry itself (issue 13): the
//! topology the routing and remote-backend e2e tests share.
//!
//! ```text
//!  segment 1:  node a  .11 ─┐                       ┌─ node c  .11   segment 2
//!              node b  .12 ─┴── router .1 ─── .1 ───┘
//!  a <-> b: host-gw (same segment);  a, b <-> c: VXLAN (ferry.vxlan, ferry.vxlan6)
//!  each node: ferry-agent --node-name <n> --write-cni-conf (its conflist makes the pods)
//!  each node: pod p<n> with TCP and UDP id servers "p<n>" on 8080
//! ```
//!
//! The only routes added are the underlay's (each node to the other
//! segment via the router): what a real network's gateway gives nodes.
//! Every agent reads its own YAML directory, holding the three Node
//! objects; [`Cluster::write_all`] puts a file in all three, as every node
//! of a real cluster watches the same objects. Every wait is bounded; every
//! namespace, veth and pin dir goes on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::lb::{write_atomic, Agent, PinDir};
use super::underlay::{Router, Underlay, UnderlayAddr};
use super::{tcp_id, udp_id, IdServer, Node, Pod};
use crate::assert_eventually;

const T: Duration = Duration::from_secs(3);
/// Routes, tunnels and the conflist are in place this soon after a change.
pub const SETTLE: Duration = Duration::from_secs(15);
/// Where every pod's id servers listen.
pub const PORT: u16 = 8080;

/// (Node name, segment index, host number, pod CIDR number).
pub const NODES: [(&str, usize, u8, u8); 3] = [("a", 0, 11, 1), ("b", 0, 12, 2), ("c", 1, 11, 3)];

/// Three nodes, each with its agent, one pod (TCP and UDP id servers on
/// 8080) made with the conflist the agent wrote. Fields drop in order:
/// servers, pods, agents, nodes, router, segments.
pub struct Cluster {
    pub servers: Vec<IdServer>,
    pub pods: Vec<Pod>,
    pub agents: Vec<Agent>,
    pub nodes: Vec<Node>,
    pub addrs: Vec<UnderlayAddr>,
    _router: Router,
    pub segments: [Underlay; 2],
}

/// Node `name` with underlay address `addr` and pod CIDRs 10.244.<n>.0/24
/// and fd00:10:244:<n>::/64.
pub fn node_yaml(name: &str, addr: UnderlayAddr, n: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: 10.244.{n}.0/24\n  podCIDRs: [10.244.{n}.0/24, \"fd00:10:244:{n}::/64\"]\nstatus:\n  addresses:\n  - {{type: InternalIP, address: \"{}\"}}\n  - {{type: InternalIP, address: \"{}\"}}\n  - {{type: Hostname, address: {name}}}\n",
        addr.ipv4, addr.ipv6
    )
}

/// The conflist the node's agent writes.
pub fn conflist_path(node: &Node) -> PathBuf {
    node.scratch().join("net.d/10-ferry.conflist")
}

/// The plugin's part of the conflist, as a runtime (libcni) hands it over,
/// with the IPAM store in the node's scratch dir.
pub fn netconf_from_conflist(node: &Node) -> Value {
    let conf: Value = serde_json::from_str(&std::fs::read_to_string(conflist_path(node)).expect("conflist"))
        .expect("the conflist is JSON");
    let mut netconf = conf["plugins"][0].clone();
    netconf["name"] = conf["name"].clone();
    netconf["cniVersion"] = conf["cniVersion"].clone();
    netconf["ipam"]["dataDir"] = json!(node.scratch().join("ipam"));
    netconf
}

impl Cluster {
    pub fn new() -> Self {
        let segments = [Underlay::new(), Underlay::new()];
        let router = Router::new(&[&segments[0], &segments[1]]);
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for (_, seg, host, _) in NODES {
            let node = Node::new();
            addrs.push(segments[seg].plug_node(&node, host));
            router.connect(node.name(), &segments[seg]);
            nodes.push(node);
        }
        let mut agents = Vec::new();
        for (i, (name, _, _, _)) in NODES.iter().enumerate() {
            let catalog = nodes[i].scratch().join("catalog");
            std::fs::create_dir_all(&catalog).expect("catalog dir");
            for (j, (peer, _, _, n)) in NODES.iter().enumerate() {
                write_atomic(&catalog, &format!("node-{peer}.yaml"), &node_yaml(peer, addrs[j], *n));
            }
            let conflist = conflist_path(&nodes[i]).display().to_string();
            agents.push(Agent::start_with(
                &nodes[i],
                PinDir::new(),
                &["--node-name", name, "--write-cni-conf", &conflist],
            ));
        }
        let mut c = Cluster { servers: Vec::new(), pods: Vec::new(), agents, nodes, addrs, _router: router, segments };
        for (i, (name, _, _, _)) in NODES.iter().enumerate() {
            c.wait_routes(i, 4);
            assert_eventually!(conflist_path(&c.nodes[i]).exists(), SETTLE, "conflist on {name}");
        }
        for (i, (name, _, _, _)) in NODES.iter().enumerate() {
            let pod = c.add_pod(i, &format!("p{name}"));
            c.servers.push(IdServer::tcp(pod.netns_path(), PORT, &format!("p{name}")));
            c.servers.push(IdServer::udp(pod.netns_path(), PORT, &format!("p{name}")));
            c.pods.push(pod);
        }
        // The namespaces are a second old: for about a second more, IPv6
        // across the router is lost (IPv4, and IPv6 on one segment, work at
        // once; the router forwards the tunnel's packets but solicits no
        // neighbour for c yet: cause not found). Wait, bounded, until every
        // pod reaches every other before measuring anything.
        let quick = Duration::from_millis(200);
        assert_eventually!(c.talk_all(quick).is_empty(), SETTLE, "every pod reaches every other: {:#?}", c.talk_all(T));
        c
    }

    /// A pod on node `i` made through the real plugin with the conflist
    /// that node's agent wrote (so the data path is attached on ADD).
    pub fn add_pod(&self, i: usize, name: &str) -> Pod {
        let netconf = netconf_from_conflist(&self.nodes[i]);
        self.nodes[i].add_pod_with(name, &netconf, "").expect("ADD with the conflist")
    }

    /// Writes one catalog file into every node's YAML directory.
    pub fn write_all(&self, file: &str, yaml: &str) {
        for a in &self.agents {
            a.write(file, yaml);
        }
    }

    /// The agent's routing section of /status.
    pub fn routing_status(&self, i: usize) -> Value {
        let body = self.agents[i].http_get("/status").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str::<Value>(&body).map(|v| v["routing"].clone()).unwrap_or(Value::Null)
    }

    /// Waits until node `i`'s agent reports `n` Ferry routes.
    pub fn wait_routes(&self, i: usize, n: u64) {
        assert_eventually!(
            self.routing_status(i)["routes"].as_u64() == Some(n),
            SETTLE,
            "{} Ferry routes on {}: {}\n{}",
            n,
            NODES[i].0,
            self.routing_status(i),
            self.agents[i].log_text()
        );
    }

    /// Every pod to every other, TCP and UDP, IPv4 and IPv6: the failures.
    pub fn talk_all(&self, timeout: Duration) -> Vec<String> {
        let mut failures = Vec::new();
        for (i, from) in self.pods.iter().enumerate() {
            let targets: Vec<(String, IpAddr)> = self
                .pods
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, p)| [(p.name().to_string(), p.ipv4().into()), (p.name().to_string(), p.ipv6().into())])
                .collect();
            let name = from.name().to_string();
            failures.extend(from.run(move || {
                let mut bad = Vec::new();
                for (id, ip) in targets {
                    let sa = SocketAddr::new(ip, PORT);
                    match tcp_id(sa, timeout) {
                        Ok(got) if got == id => {}
                        other => bad.push(format!("{name} -> {id} tcp {ip}: {other:?}")),
                    }
                    match udp_id(sa, timeout) {
                        Ok(got) if got == id => {}
                        other => bad.push(format!("{name} -> {id} udp {ip}: {other:?}")),
                    }
                }
                bad
            }));
        }
        failures
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}
