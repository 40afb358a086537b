//! The socket LB (cgroup connect/sendmsg/recvmsg/getpeername) seen from a
//! host-network process: a client in the node's own namespace, inside a
//! cgroup this test makes (never the machine's root cgroup), reaching
//! ClusterIPs that kube-proxy would serve for it.
//!
//! ```text
//!  node netns ── ferry-agent --socket-lb-cgroup <cgroup2>/ferry-test-…
//!      │  client: python3 in that cgroup, in the node netns (hostNetwork)
//!      ├── b1 pod  (TCP 8080 / UDP 5353 id servers)
//!      └── b2 pod
//! ```

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::assert_eventually;
use ferry_tests::harness::lb::{lb_node, service, slice, Agent, Ep};
use ferry_tests::harness::{util, IdServer, Node, Pod};
use serde_json::Value;

const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
/// The agent's node name (endpoints name it or another node).
const NODE: &str = "node-a";

/// A cgroup v2 directory of this test's own under the cgroup2 mount;
/// removed on drop (its processes have exited by then).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| PathBuf::from(f[1]))
            .expect("a cgroup2 mount");
        let dir = root.join(util::unique("cg"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestCgroup(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // rmdir fails while a process is inside: wait (bounded) for ours to go.
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("TestCgroup: could not remove {}", self.0.display());
    }
}

/// The client: one JSON line per call. `tcp ADDR PORT N` (N connections:
/// peer as getpeername reports it, and the server's id), `udp ADDR PORT N`
/// (unconnected sendto/recvfrom: the reply's source and id), `udpc ADDR
/// PORT` (connected UDP: getpeername, recv), `refused ADDR PORT` (the
/// connect's errno).
const CLIENT: &str = r#"
import json, socket, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
def out(**kw): print(json.dumps(kw), flush=True)
if mode == "tcp":
    for _ in range(int(sys.argv[4])):
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.connect((addr, port)); peer = s.getpeername()[:2]
        s.sendall(b"x"); ident = s.recv(100).decode().split("\n")[0]; s.close()
        out(peer=[peer[0], peer[1]], id=ident)
elif mode == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    for _ in range(int(sys.argv[4])):
        s.sendto(b"x", (addr, port)); data, src = s.recvfrom(100)
        out(peer=[src[0], src[1]], id=data.decode().split("\n")[0])
elif mode == "udpc":
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    s.connect((addr, port)); s.send(b"x"); data = s.recv(100); peer = s.getpeername()[:2]
    out(peer=[peer[0], peer[1]], id=data.decode().split("\n")[0])
elif mode == "refused":
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try:
        s.connect((addr, port)); out(errno=0)
    except OSError as e:
        out(errno=e.errno or -1)
"#;

/// Runs the client in the node namespace, inside `cgroup` when given.
fn client(node: &Node, cgroup: Option<&Path>, args: &[&str]) -> Vec<Value> {
    try_client(node, cgroup, args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_client(node: &Node, cgroup: Option<&Path>, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = util::timeout_command(Duration::from_secs(20), "python3");
    cmd.arg("-c").arg(CLIENT).args(args);
    if let Some(cg) = cgroup {
        // Join the cgroup between fork and exec (before entering the node
        // namespace: DESIGN.md's order). The file is opened here, so the
        // child only write(2)s, which is async-signal-safe.
        let procs = OpenOptions::new().write(true).open(cg.join("cgroup.procs")).expect("cgroup.procs");
        // SAFETY: the closure only calls write(2) on an fd it owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    util::in_netns(&mut cmd, node.netns_path());
    let out = cmd.output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("client {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr)));
    }
    stdout.lines().map(|l| serde_json::from_str(l).map_err(|e| format!("{l}: {e}"))).collect()
}

struct World {
    agent: Agent,
    cgroup: TestCgroup,
    backends: Vec<Pod>,
    _servers: Vec<IdServer>,
    node: Node,
}

impl World {
    fn new() -> Self {
        let cgroup = TestCgroup::new();
        let (node, pin) = lb_node();
        let cg = cgroup.path().to_str().expect("utf-8").to_string();
        let agent = Agent::start_with(&node, pin, &["--socket-lb-cgroup", &cg, "--node-name", NODE]);
        let mut backends = vec![];
        let mut servers = vec![];
        for i in 1..=2 {
            let pod = node.add_pod(&format!("b{i}"));
            servers.push(IdServer::tcp(pod.netns_path(), 8080, &format!("b{i}")));
            servers.push(IdServer::udp(pod.netns_path(), 5353, &format!("b{i}")));
            backends.push(pod);
        }
        let eps4: Vec<Ep> = backends.iter().map(|p| Ep::ready(p.ipv4())).collect();
        let eps6: Vec<Ep> = backends.iter().map(|p| Ep::ready(p.ipv6())).collect();
        let ports = [("http", "TCP", 80, "8080"), ("dns", "UDP", 53, "5353")];
        agent.write("web-svc.yaml", &service("web", &[VIP, VIP6], &ports, ""));
        let slice_ports = [("http", "TCP", 8080), ("dns", "UDP", 5353)];
        agent.write("web-eps4.yaml", &slice("web-4", "web", &slice_ports, &eps4));
        agent.write("web-eps6.yaml", &slice("web-6", "web", &slice_ports, &eps6));
        let w = World { agent, cgroup, backends, _servers: servers, node };
        // Both backends behind every frontend, not only the frontends: a
        // Service synced before its slices has none yet.
        for fe in ["10.96.0.10:80", "10.96.0.10:53", "[fd00:96::10]:80", "[fd00:96::10]:53"] {
            w.wait_active(fe, 2);
        }
        w
    }

    fn wait_active(&self, frontend: &str, active: u32) {
        assert_eventually!(
            self.agent.frontend_row(frontend).map(|(a, _)| a) == Some(active),
            Duration::from_secs(5),
            "{frontend} with {active} active backends: {}",
            self.agent.ferryctl(&["service", "list"])
        );
    }

    fn global(&self, name: &str) -> u64 {
        let stats: Value = serde_json::from_str(&self.agent.ferryctl(&["-o", "json", "stats"])).expect("stats json");
        stats["global"][name].as_u64().unwrap_or_else(|| panic!("{name} in {stats}"))
    }

    fn stats(&self) -> Value {
        serde_json::from_str(&self.agent.ferryctl(&["-o", "json", "stats"])).expect("stats json")
    }
}

fn ids(rows: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in rows {
        *m.entry(r["id"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn socklb_host_process_reaches_cluster_ips_translated_at_connect() {
    let w = World::new();
    let cg = Some(w.cgroup.path());

    // TCP, IPv4: every connection completes, getpeername shows the VIP,
    // and connections spread over both backends.
    let rows = client(&w.node, cg, &["tcp", VIP, "80", "24"]);
    assert_eq!(rows.len(), 24);
    for r in &rows {
        assert_eq!(r["peer"], serde_json::json!([VIP, 80]), "getpeername names the VIP: {r}");
    }
    let spread = ids(&rows);
    assert_eq!(spread.keys().cloned().collect::<Vec<_>>(), ["b1", "b2"], "{spread:?}");

    // IPv6 the same.
    let rows = client(&w.node, cg, &["tcp", VIP6, "80", "8"]);
    assert!(rows.iter().all(|r| r["peer"] == serde_json::json!([VIP6, 80]) && r["id"].as_str().is_some_and(|i| i.starts_with('b'))), "{rows:?}");

    // UDP, unconnected: replies come from the VIP (recvmsg), IPv4 and IPv6.
    for vip in [VIP, VIP6] {
        let rows = client(&w.node, cg, &["udp", vip, "53", "6"]);
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r["peer"] == serde_json::json!([vip, 53])), "{vip}: {rows:?}");
    }
    // UDP, connected: getpeername shows the VIP too.
    let rows = client(&w.node, cg, &["udpc", VIP, "53"]);
    assert_eq!(rows[0]["peer"], serde_json::json!([VIP, 53]), "{rows:?}");

    // Translated once, at connect: no per-packet NAT state at all.
    let stats = w.stats();
    assert!(w.global("sock_translated") > 24 + 8 + 12, "{stats}");
    assert_eq!(stats["conntrack_entries"], 0, "no conntrack entry for socket-LB flows: {stats}");

    // Closed sockets take their entries with them (sock_release): of the
    // 45 sockets above only the two unconnected UDP ones leave theirs (one
    // backend each) to the LRU.
    let dump = util::sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &format!("{}/maps/FERRY_SOCK_REVNAT", w.agent.pin.path().display()),
    ]);
    let entries = serde_json::from_str::<Value>(&dump).map(|v| v.as_array().map_or(0, Vec::len)).unwrap_or(usize::MAX);
    assert!(entries <= 2, "{entries} socket-LB entries left after every socket closed: {dump}");

    // A pod address is not a frontend: untouched.
    let b1 = w.backends[0].ipv4().to_string();
    let rows = client(&w.node, cg, &["tcp", &b1, "8080", "1"]);
    assert_eq!(rows[0]["peer"], serde_json::json!([b1, 8080]));
    assert_eq!(rows[0]["id"], "b1");

    // Outside the cgroup nothing is translated (the node netns has no
    // route to the VIP, so the connect fails at once).
    let rows = client(&w.node, None, &["refused", VIP, "80"]);
    assert_ne!(rows[0]["errno"], 0, "a process outside the cgroup is not served: {rows:?}");
}

#[test]
fn socklb_service_without_endpoints_refuses_connect_and_affinity_holds() {
    let w = World::new();
    let cg = Some(w.cgroup.path());
    w.agent.write("empty-svc.yaml", &service("empty", &["10.96.0.20"], &[("http", "TCP", 80, "8080")], ""));
    w.agent.write("empty-eps.yaml", &slice("empty-1", "empty", &[("http", "TCP", 8080)], &[]));
    w.wait_active("10.96.0.20:80", 0);
    let rows = client(&w.node, cg, &["refused", "10.96.0.20", "80"]);
    assert_eq!(rows[0]["errno"], libc::ECONNREFUSED, "connect to a Service without endpoints: {rows:?}");
    assert!(w.global("sock_refused") >= 1);

    // sessionAffinity: ClientIP: every connection of this client on one backend.
    let ports = [("http", "TCP", 80, "8080"), ("dns", "UDP", 53, "5353")];
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n";
    w.agent.write("web-svc.yaml", &service("web", &[VIP, VIP6], &ports, affinity));
    assert_eventually!(
        w.agent.ferryctl(&["service", "list"]).contains("60s"),
        Duration::from_secs(5),
        "affinity programmed: {}",
        w.agent.ferryctl(&["service", "list"])
    );
    let rows = client(&w.node, cg, &["tcp", VIP, "80", "16"]);
    assert_eq!(ids(&rows).len(), 1, "affinity keeps one backend: {:?}", ids(&rows));

    // internalTrafficPolicy: Local: a host process reaches only the
    // endpoints of its own node, as pods do.
    let on = |i: usize, node: &str| Ep { node: Some(node.to_string()), ..Ep::ready(w.backends[i].ipv4()) };
    let itp = "  internalTrafficPolicy: Local\n";
    w.agent.write("local-svc.yaml", &service("local", &["10.96.0.30"], &[("http", "TCP", 80, "8080")], itp));
    w.agent
        .write("local-eps.yaml", &slice("local-1", "local", &[("http", "TCP", 8080)], &[on(0, "node-b"), on(1, NODE)]));
    w.wait_active("10.96.0.30:80", 1);
    let rows = client(&w.node, cg, &["tcp", "10.96.0.30", "80", "16"]);
    assert_eq!(ids(&rows), [("b2".to_string(), 16)].into(), "only this node's endpoint");
}

#[test]
fn socklb_survives_an_agent_restart_and_detaches_when_unconfigured() {
    let mut w = World::new();
    let cg = Some(w.cgroup.path().to_path_buf());
    w.agent.kill9();
    // No agent at all: the pinned links keep translating.
    let diag = |w: &World, e: String| panic!("{e}\nstats: {}\nagent log:\n{}", w.stats(), w.agent.log_text());
    let rows = try_client(&w.node, cg.as_deref(), &["tcp", VIP, "80", "4"]).unwrap_or_else(|e| diag(&w, e));
    assert!(rows.iter().all(|r| r["peer"] == serde_json::json!([VIP, 80])), "{rows:?}");
    w.agent.restart();
    let rows = try_client(&w.node, cg.as_deref(), &["tcp", VIP, "80", "4"]).unwrap_or_else(|e| diag(&w, e));
    assert!(rows.iter().all(|r| r["id"].as_str().is_some_and(|i| i.starts_with('b'))), "{rows:?}");
    // Restarted without the flag: the socket LB goes away.
    w.agent.kill9();
    w.agent.extra_args.clear();
    w.agent.restart();
    let rows = client(&w.node, cg.as_deref(), &["refused", VIP, "80"]);
    assert_ne!(rows[0]["errno"], 0, "no socket LB without --socket-lb-cgroup: {rows:?}");
}
