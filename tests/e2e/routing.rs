//! Issue 13, routing between nodes: the agent turns Node objects into
//! host-gw routes and VXLAN tunnels, with no route added by the test.
//!
//! ```text
//!  segment 1:  node a  .11 ─┐                       ┌─ node c  .11   segment 2
//!              node b  .12 ─┴── router .1 ─── .1 ───┘
//!  a <-> b: host-gw (same segment);  a, b <-> c: VXLAN (ferry.vxlan, ferry.vxlan6)
//!  each node: ferry-agent --node-name <n> --write-cni-conf (its conflist makes the pods)
//! ```
//!
//! The topology is the harness's [`Cluster`] (shared with the
//! remote-backend tests). The only routes the test adds are the underlay's
//! (each node to the other segment via the router): what a real network's
//! gateway gives nodes. Every wait is bounded; every namespace, veth and
//! pin dir goes on drop.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::assert_eventually;
use ferry_tests::harness::cluster::{conflist_path, node_yaml, Cluster, NODES, PORT, SETTLE};
use ferry_tests::harness::{tcp_id, udp_id, util, Node, Proc};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(3);

/// What these tests read of a node's kernel state, beside the shared
/// [`Cluster`].
trait RoutingView {
    fn ferry_routes(&self, i: usize, family: &str) -> Vec<String>;
    fn kernel_state(&self, i: usize) -> BTreeSet<String>;
}

impl RoutingView for Cluster {
    /// `ip route show proto 70` of one family on node `i`, one line each.
    fn ferry_routes(&self, i: usize, family: &str) -> Vec<String> {
        self.nodes[i].ip(&[family, "route", "show", "proto", "70"]).lines().map(str::to_string).collect()
    }

    /// Everything routing could touch on node `i`: every route of every
    /// table (but link-local ones), the FDB and the permanent neighbours of
    /// the tunnels.
    fn kernel_state(&self, i: usize) -> BTreeSet<String> {
        let n = &self.nodes[i];
        let mut out = BTreeSet::new();
        for fam in ["-4", "-6"] {
            // Less the kernel's link-local routes: a pod's host veth gets
            // its `local fe80::..` route when its DAD ends, a second or so
            // after the pod was made, whatever routing does.
            let routes = n.ip(&[fam, "route", "show", "table", "all"]);
            out.extend(routes.lines().filter(|l| !l.contains("fe80::")).map(|l| format!("route {l}")));
        }
        for dev in ["ferry.vxlan", "ferry.vxlan6"] {
            if util::sh_ok(&["ip", "-n", n.name(), "link", "show", dev]).is_err() {
                continue;
            }
            let fdb = util::sh(&["ip", "netns", "exec", n.name(), "bridge", "fdb", "show", "dev", dev]);
            out.extend(fdb.lines().map(|l| format!("fdb {dev} {l}")));
            let neigh = n.ip(&["neigh", "show", "dev", dev, "nud", "permanent"]);
            out.extend(neigh.lines().map(|l| format!("neigh {dev} {l}")));
        }
        out
    }
}

fn has_route(routes: &[String], dst: &str, via: &str, dev: &str) -> bool {
    routes.iter().any(|l| {
        l.starts_with(&format!("{dst} ")) && l.contains(&format!("via {via} ")) && l.contains(&format!("dev {dev}"))
    })
}

/// Sends `len` bytes through a TCP id server's echo and reads them back.
fn echo(addr: SocketAddr, len: usize) -> std::io::Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, T)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut id = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        c.read_exact(&mut b)?;
        id.push(b[0]);
    }
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut w = c.try_clone()?;
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; len];
    c.read_exact(&mut back)?;
    writer.join().map_err(|_| std::io::Error::other("writer panicked"))??;
    if back != data {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

#[test]
fn routing_pods_on_every_pair_of_nodes_talk_host_gw_on_the_segment_vxlan_across_the_router() {
    let started = Instant::now();
    let c = Cluster::new();
    let (s1, s2) = (c.segments[0].segment(), c.segments[1].segment());
    let a4 = c.ferry_routes(0, "-4");
    let a6 = c.ferry_routes(0, "-6");
    // a: b by host-gw via its InternalIP, c through the tunnel, onlink
    assert!(has_route(&a4, "10.244.2.0/24", &c.addrs[1].ipv4.to_string(), "eth0"), "{a4:?}");
    assert!(has_route(&a6, "fd00:10:244:2::/64", &c.addrs[1].ipv6.to_string(), "eth0"), "{a6:?}");
    assert!(has_route(&a4, "10.244.3.0/24", "10.244.3.0", "ferry.vxlan"), "{a4:?}");
    assert!(has_route(&a6, "fd00:10:244:3::/64", "fd00:10:244:3::", "ferry.vxlan6"), "{a6:?}");
    assert!(a4.iter().chain(&a6).filter(|l| l.contains("ferry.vxlan")).all(|l| l.contains("onlink")), "{a4:?} {a6:?}");
    // c: everyone through the tunnel
    let c4 = c.ferry_routes(2, "-4");
    assert!(has_route(&c4, "10.244.1.0/24", "10.244.1.0", "ferry.vxlan"), "{c4:?}");
    assert!(has_route(&c4, "10.244.2.0/24", "10.244.2.0", "ferry.vxlan"), "{c4:?}");
    assert!(!c4.iter().any(|l| l.contains(&format!("192.168.{s1}."))), "no host-gw from c: {c4:?}");
    // the tunnel's FDB sends c's VTEP MAC to c's underlay address (not via a gateway)
    let fdb = util::sh(&["ip", "netns", "exec", c.nodes[0].name(), "bridge", "fdb", "show", "dev", "ferry.vxlan"]);
    assert!(fdb.contains(&format!("dst 192.168.{s2}.11")) && fdb.contains("permanent"), "{fdb}");
    let neigh = c.nodes[0].ip(&["neigh", "show", "dev", "ferry.vxlan"]);
    assert!(neigh.contains("10.244.3.0 lladdr 0e:46:c0:a8") && neigh.contains("PERMANENT"), "{neigh}");
    // /status says the same, per peer and family
    let st = c.routing_status(0);
    assert_eq!(
        st["peers"],
        json!({"b": {"ipv4": "host-gw", "ipv6": "host-gw"}, "c": {"ipv4": "vxlan", "ipv6": "vxlan"}}),
        "{st}"
    );
    let metrics = c.agents[0].http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(metrics.contains("ferry_routes_programmed 4"), "{metrics}");
    assert!(metrics.contains("ferry_routing_peers{mode=\"vxlan\",family=\"ipv6\"} 1"), "{metrics}");

    let failures = c.talk_all(T);
    assert!(failures.is_empty(), "{failures:#?}");

    // 4. The MTU: tunnels are the underlay's minus 50 (IPv4) and 70 (IPv6);
    // the conflist (and so every pod) has the smaller, which fits both.
    let mtu = |i: usize, dev: &str| -> u32 {
        let out = c.nodes[i].ip(&["-o", "link", "show", dev]);
        let after = out.split(" mtu ").nth(1).unwrap_or_default();
        after.split_whitespace().next().unwrap_or_default().parse().unwrap_or(0)
    };
    assert_eq!((mtu(0, "eth0"), mtu(0, "ferry.vxlan"), mtu(0, "ferry.vxlan6")), (1500, 1450, 1430));
    for (i, node) in c.nodes.iter().enumerate() {
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(conflist_path(node)).unwrap()).unwrap();
        assert_eq!(conf["plugins"][0]["mtu"], 1430, "conflist of {}", NODES[i].0);
    }
    let pod_mtu = c.pods[0].ip(&["-o", "link", "show", "eth0"]);
    assert!(pod_mtu.contains(" mtu 1430 "), "{pod_mtu}");
    // full-size segments cross both tunnels whole (no fragmentation, no PMTU loss)
    let (v4, v6) = (c.pods[2].ipv4(), c.pods[2].ipv6());
    let bulk = c.pods[0].run(move || {
        (echo(SocketAddr::new(v4.into(), PORT), 1 << 20), echo(SocketAddr::new(v6.into(), PORT), 1 << 20))
    });
    assert!(bulk.0.is_ok() && bulk.1.is_ok(), "1 MiB echo a -> c over ferry.vxlan / ferry.vxlan6: {bulk:?}");
    eprintln!("routing: three nodes talking in {:?}", started.elapsed());
}

#[test]
fn routing_a_node_removed_takes_away_exactly_its_routes_fdb_and_neighbour_entries() {
    let c = Cluster::new();
    let s2 = c.segments[1].segment();
    let before = c.kernel_state(0);
    c.agents[0].remove("node-c.yaml");
    c.wait_routes(0, 2);
    // the agent's pass finishes with the FDB and neighbours after the routes
    assert_eventually!(
        !c.kernel_state(0).iter().any(|l| l.starts_with("neigh ") || l.starts_with("fdb ")),
        SETTLE,
        "c's FDB and neighbour entries go: {:?}",
        c.kernel_state(0)
    );
    let after = c.kernel_state(0);
    let added: Vec<&String> = after.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    assert!(added.is_empty(), "nothing new: {added:#?}");
    let c_mac4 = "0e:46:c0:a8"; // 192.168.<s2>.11 follows
    let is_c = |l: &str| {
        l.contains("10.244.3.0")
            || l.contains("fd00:10:244:3::")
            || l.contains(&format!("dst 192.168.{s2}.11"))
            || l.contains(&format!("dst {}", c.addrs[2].ipv6))
    };
    assert!(removed.iter().all(|l| is_c(l)), "only c's entries go: {removed:#?}");
    // its two routes, two FDB entries, two neighbours
    assert_eq!(removed.len(), 6, "{removed:#?}");
    assert!(removed.iter().any(|l| l.starts_with("fdb ferry.vxlan ") && l.contains(c_mac4)), "{removed:#?}");
    // b is still reached; c comes back when its Node does
    let (b4, b6) = (c.pods[1].ipv4(), c.pods[1].ipv6());
    let got = c.pods[0]
        .run(move || (tcp_id(SocketAddr::new(b4.into(), PORT), T), udp_id(SocketAddr::new(b6.into(), PORT), T)));
    assert_eq!((got.0.ok().as_deref(), got.1.ok().as_deref()), (Some("pb"), Some("pb")));
    c.agents[0].write("node-c.yaml", &node_yaml("c", c.addrs[2], 3));
    c.wait_routes(0, 4);
    assert_eventually!(c.kernel_state(0) == before, SETTLE, "c's entries are back as they were: {:#?}", {
        let now = c.kernel_state(0);
        (before.difference(&now).cloned().collect::<Vec<_>>(), now.difference(&before).cloned().collect::<Vec<_>>())
    });
}

#[test]
fn routing_agent_kill9_and_restart_leaves_ferry_routes_untouched_and_removes_only_stale_ones() {
    let mut c = Cluster::new();
    let s1 = c.segments[0].segment();
    let a = c.nodes[0].clone();
    let vxlan_index =
        |n: &Node| n.ip(&["-o", "link", "show", "ferry.vxlan"]).split(':').next().unwrap_or("").to_string();
    let index_before = vxlan_index(&a);
    let routes_before = (c.ferry_routes(0, "-4"), c.ferry_routes(0, "-6"));
    let tunnels_before: BTreeSet<String> = c.kernel_state(0).into_iter().filter(|l| !l.starts_with("route ")).collect();
    c.agents[0].kill9();

    // Watch every route change on a from here on.
    let log = a.scratch().join("ip-monitor.log");
    let out = std::fs::File::create(&log).expect("monitor log");
    let mut monitor = util::timeout_command(Duration::from_secs(60), "ip");
    monitor.args(["monitor", "route"]).stdout(Stdio::from(out)).stderr(Stdio::null());
    let mut monitor: Proc = a.spawn(&mut monitor);
    let seen = |what: &str| std::fs::read_to_string(&log).unwrap_or_default().contains(what);
    // `ip monitor` subscribes a moment after it starts (longer on a loaded
    // machine): a probe route is replaced until the monitor shows it, so
    // every change from here on is seen.
    let gw = format!("192.168.{s1}.13");
    let probe = "10.253.0.0/24";
    assert_eventually!(
        {
            a.ip(&["route", "replace", probe, "via", &gw, "dev", "eth0", "proto", "static"]);
            std::thread::sleep(Duration::from_millis(50));
            seen(probe)
        },
        Duration::from_secs(15),
        "ip monitor is listening"
    );
    a.ip(&["route", "del", probe]);
    // Another protocol's route (static), then a stale one with Ferry's.
    a.ip(&["route", "add", "10.252.0.0/24", "via", &gw, "dev", "eth0", "proto", "static"]);
    a.ip(&["route", "add", "10.250.0.0/24", "via", &gw, "dev", "eth0", "proto", "70"]);
    assert_eventually!(seen("10.252.0.0/24") && seen("10.250.0.0/24"), T, "the monitor saw both routes");

    // Connections a -> c (VXLAN) and a -> b (host-gw), new ones all along.
    let stop = Arc::new(AtomicBool::new(false));
    let targets: Vec<SocketAddr> = vec![
        SocketAddr::new(c.pods[2].ipv4().into(), PORT),
        SocketAddr::new(c.pods[2].ipv6().into(), PORT),
        SocketAddr::new(c.pods[1].ipv4().into(), PORT),
    ];
    let stop2 = stop.clone();
    let pod_ns = c.pods[0].netns_path().to_path_buf();
    let load = std::thread::spawn(move || {
        util::run_in(&pod_ns, move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(40);
            for n in 0..20_000usize {
                if stop2.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let t = targets[n % targets.len()];
                match tcp_id(t, T) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{t}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    });

    let restarted = Instant::now();
    c.agents[0].restart();
    assert_eventually!(
        seen("Deleted 10.250.0.0/24"),
        SETTLE,
        "the stale Ferry route is removed:\n{}",
        c.agents[0].log_text()
    );
    c.wait_routes(0, 4);
    // Let the load run on past the new agent's first pass.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    monitor.kill();
    eprintln!("routing: restart + first pass in {:?}, {ok} connections", restarted.elapsed());
    assert!(failed.is_empty(), "{} of {} connections failed across the restart: {failed:?}", failed.len(), ok);
    assert!(ok > 50, "the load ran ({ok} connections)");

    let events = std::fs::read_to_string(&log).unwrap_or_default();
    let ours: Vec<&str> = events.lines().filter(|l| l.contains("10.244.") || l.contains("fd00:10:244:")).collect();
    assert!(ours.is_empty(), "no Ferry route deleted and re-added by the restart: {ours:#?}");
    assert_eq!((c.ferry_routes(0, "-4"), c.ferry_routes(0, "-6")), routes_before, "the same routes");
    assert_eq!(vxlan_index(&a), index_before, "the tunnel device was kept, not re-created");
    let tunnels_after: BTreeSet<String> = c.kernel_state(0).into_iter().filter(|l| !l.starts_with("route ")).collect();
    assert_eq!(tunnels_after, tunnels_before, "FDB and neighbours untouched");
    let foreign = a.ip(&["route", "show", "10.252.0.0/24"]);
    assert!(foreign.contains("proto static"), "another protocol's route is left alone: {foreign:?}");
}
