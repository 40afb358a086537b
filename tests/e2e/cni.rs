//! CNI end-to-end tests: the real `ferry` binary driven as a runtime drives
//! it, in namespaces the harness builds, with real traffic.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::harness::{tcp_id, util, CniOutput, IdServer, Node, NodeConfig, Pod};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(3);

/// Host-side veths ferry created in the node namespace.
fn host_veths(node: &Node) -> Vec<String> {
    node.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("fer") && n != "ferry0")
        .collect()
}

/// Reservation files (named by address) in the node's IPAM dir.
fn reservations(node: &Node) -> Vec<IpAddr> {
    std::fs::read_dir(node.ipam_dir())
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Links in a pod namespace other than lo.
fn pod_links(netns: &str) -> usize {
    util::sh_ok(&["ip", "-n", netns, "-o", "link", "show"])
        .map(|s| s.lines().filter(|l| !l.contains(": lo:")).count())
        .unwrap_or(0)
}

fn assert_cni_error(out: &CniOutput, code: u64) {
    assert!(!out.success(), "expected failure with code {code}, got success: {}", out.stdout);
    let j = out.json();
    assert_eq!(j["code"].as_u64(), Some(code), "wrong code: {}", out.stdout);
    assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()), "no msg: {}", out.stdout);
    assert!(j["cniVersion"].is_string(), "no cniVersion: {}", out.stdout);
}

#[test]
fn two_pods_exchange_tcp_over_ipv4_and_ipv6_and_reach_the_gateway() {
    let node = Node::new();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let _srv = IdServer::tcp(b.netns_path(), 8080, "b");
    let _gw = IdServer::tcp(node.netns_path(), 9090, "node");
    let (b4, b6) = (b.ipv4(), b.ipv6());
    let got = a.run(move || {
        let v4 = tcp_id(SocketAddr::new(b4.into(), 8080), T).expect("tcp to b over IPv4");
        let v6 = tcp_id(SocketAddr::new(b6.into(), 8080), T).expect("tcp to b over IPv6");
        let gw4 = tcp_id("10.244.0.1:9090".parse().unwrap(), T).expect("tcp to the IPv4 gateway");
        let gw6 = tcp_id("[fd00:10:244::1]:9090".parse().unwrap(), T).expect("tcp to the IPv6 gateway");
        (v4, v6, gw4, gw6)
    });
    assert_eq!(got, ("b".into(), "b".into(), "node".into(), "node".into()));
    // hairpin on the bridge port, MTU and MAC as reported
    let veth = a.host_veth.clone().expect("host veth in result");
    let detail = node.ip(&["-d", "link", "show", &veth]);
    assert!(detail.contains("hairpin on"), "{detail}");
    assert!(detail.contains("master ferry0"), "{detail}");
    let eth0 = a.ip(&["link", "show", "eth0"]);
    assert!(eth0.contains("mtu 1500"), "{eth0}");
    let mac = a.result["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert!(eth0.contains(&mac), "result MAC {mac} not on eth0: {eth0}");
}

/// Right after the first ADD on a fresh node, the bridge's IPv6 addresses
/// are usable (no DAD pending): the node can solicit pod neighbours at once,
/// so a pod's first IPv6 connection routed through the node is not held
/// ~1 s (DAD's length).
#[test]
fn fresh_bridge_ipv6_addresses_are_not_tentative() {
    let node = Node::new();
    let a = node.add_pod("a");
    let addrs = node.ip(&["-6", "addr", "show", "dev", "ferry0"]);
    assert!(addrs.contains("fd00:10:244::1/"), "{addrs}");
    assert!(addrs.contains("fe80::"), "a link-local address: {addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");
    // Pod a reaches pod b through the gateway (as a Service flow DNATed
    // by the node is): the node has never heard from b and must solicit it.
    let b = node.add_pod("b");
    let _srv = IdServer::tcp(b.netns_path(), 8080, "b");
    let b6 = b.ipv6();
    a.ip(&["-6", "route", "add", &format!("{b6}/128"), "via", "fd00:10:244::1"]);
    let (got, took) = a.run(move || {
        let t = std::time::Instant::now();
        (tcp_id(SocketAddr::new(b6.into(), 8080), T), t.elapsed())
    });
    assert_eq!(got.expect("first IPv6 connection through the gateway"), "b");
    assert!(took < Duration::from_millis(300), "first IPv6 connection took {took:?}");
}

/// The Result schema of SPEC.md, per version: which keys may appear, which
/// must, and their formats.
fn validate_result(r: &Value, version: &str) {
    let obj = r.as_object().expect("result is an object");
    assert_eq!(r["cniVersion"], version);
    for k in obj.keys() {
        assert!(["cniVersion", "interfaces", "ips", "routes", "dns"].contains(&k.as_str()), "unknown key {k} in {r}");
    }
    let is_mac = |s: &str| s.len() == 17 && s.split(':').all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    let is_ip = |s: &str| s.parse::<IpAddr>().is_ok();
    let is_cidr = |s: &str| s.split_once('/').is_some_and(|(a, p)| is_ip(a) && p.parse::<u8>().is_ok_and(|p| p <= 128));
    let v1_1 = version == "1.1.0";
    let pre_1 = version.starts_with("0.");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    for i in ifaces {
        let allowed: &[&str] =
            if v1_1 { &["name", "mac", "mtu", "sandbox", "socketPath", "pciID"] } else { &["name", "mac", "sandbox"] };
        for k in i.as_object().unwrap().keys() {
            assert!(allowed.contains(&k.as_str()), "{version}: interface key {k} not allowed: {i}");
        }
        assert!(i["name"].as_str().is_some_and(|n| !n.is_empty()));
        assert!(i["mac"].as_str().is_some_and(is_mac), "{i}");
        if let Some(s) = i.get("sandbox") {
            assert!(s.as_str().is_some_and(|s| s.starts_with('/')), "{i}");
        }
        if let Some(m) = i.get("mtu") {
            assert!(m.as_u64().is_some_and(|m| m > 0));
        }
    }
    assert_eq!(ifaces.iter().filter(|i| i.get("sandbox").is_some()).count(), 1, "exactly one sandbox interface");
    let ips = r["ips"].as_array().expect("ips");
    assert!(!ips.is_empty());
    for ip in ips {
        let allowed: &[&str] =
            if pre_1 { &["version", "address", "gateway", "interface"] } else { &["address", "gateway", "interface"] };
        for k in ip.as_object().unwrap().keys() {
            assert!(allowed.contains(&k.as_str()), "{version}: ip key {k} not allowed: {ip}");
        }
        let addr = ip["address"].as_str().expect("address");
        assert!(is_cidr(addr), "{ip}");
        if pre_1 {
            let want = if addr.contains(':') { "6" } else { "4" };
            assert_eq!(ip["version"], want, "{version}: {ip}");
        }
        if let Some(g) = ip.get("gateway") {
            assert!(g.as_str().is_some_and(is_ip), "{ip}");
        }
        let idx = ip["interface"].as_u64().expect("interface index") as usize;
        assert!(ifaces[idx].get("sandbox").is_some(), "ip points at the sandbox interface");
    }
    for rt in r["routes"].as_array().into_iter().flatten() {
        let allowed: &[&str] =
            if v1_1 { &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"] } else { &["dst", "gw"] };
        for k in rt.as_object().unwrap().keys() {
            assert!(allowed.contains(&k.as_str()), "{version}: route key {k}: {rt}");
        }
        assert!(rt["dst"].as_str().is_some_and(is_cidr), "{rt}");
        if let Some(g) = rt.get("gw") {
            assert!(g.as_str().is_some_and(is_ip), "{rt}");
        }
    }
}

#[test]
fn results_validate_against_the_spec_schema_for_every_supported_version() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let node = Node::with_config(NodeConfig {
            cni_version: version.into(),
            extra: json!({"dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}),
            ..Default::default()
        });
        let pod = node.add_pod("p");
        validate_result(&pod.result, version);
        assert_eq!(pod.result["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(pod.result["ips"].as_array().unwrap().len(), 2, "dual-stack");
        // VERSION answers in the asked version and lists every supported one
        let sb = node.new_sandbox("v");
        let mut call = sb.call("VERSION", node.netconf(), "");
        call.stdin = serde_json::to_vec(&json!({"cniVersion": version})).unwrap();
        let v = node.cni(&call).json();
        assert_eq!(v["cniVersion"], version);
        assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    }
}

#[test]
fn del_is_idempotent_even_without_netns_or_a_previous_add() {
    let node = Node::new();
    let mut a = node.add_pod("a");
    a.delete();
    let again = a.cni("DEL");
    assert!(again.success(), "second DEL: {again:?}");
    assert!(again.stdout.trim().is_empty());
    assert_eq!(pod_links(a.netns_name()), 0);

    let mut b = node.add_pod("b");
    b.sandbox.netns.delete(); // the runtime removed the sandbox first
    b.delete();
    b.delete();

    let never = node.new_sandbox("never");
    let out = node.cni(&never.call("DEL", node.netconf(), ""));
    assert!(out.success(), "DEL of an unknown container: {out:?}");
    // DEL without CNI_NETNS is allowed by the spec
    let mut call = never.call("DEL", node.netconf(), "");
    call.netns = "";
    assert!(node.cni(&call).success());

    assert!(host_veths(&node).is_empty(), "{:?}", host_veths(&node));
    assert!(reservations(&node).is_empty(), "{:?}", reservations(&node));
}

#[test]
fn check_fails_when_interface_address_or_route_is_removed() {
    let node = Node::new();
    let a = node.add_pod("a");
    assert!(a.cni("CHECK").success(), "{:?}", a.cni("CHECK"));

    a.ip(&["route", "del", "default"]);
    let out = a.cni("CHECK");
    assert_cni_error(&out, 103);
    assert!(out.json()["msg"].as_str().unwrap().contains("route"), "{}", out.stdout);

    let b = node.add_pod("b");
    b.ip(&["addr", "del", &format!("{}/24", b.ipv4()), "dev", "eth0"]);
    let out = b.cni("CHECK");
    assert_cni_error(&out, 103);
    assert!(out.json()["msg"].as_str().unwrap().contains("address"), "{}", out.stdout);

    let c = node.add_pod("c");
    c.ip(&["link", "del", "eth0"]);
    let out = c.cni("CHECK");
    assert_cni_error(&out, 103);

    // CHECK needs cniVersion >= 0.4.0 and a prevResult
    let mut conf = node.netconf().clone();
    conf["cniVersion"] = "0.3.1".into();
    assert_cni_error(&node.cni(&a.sandbox.call("CHECK", &conf, "")), 1);
    assert_cni_error(&node.cni(&a.sandbox.call("CHECK", node.netconf(), "")), 7);
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let node = Node::new();
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || node.add_pod(&format!("c{i}")))
        })
        .collect();
    let pods: Vec<Pod> = threads.into_iter().map(|t| t.join().expect("ADD thread")).collect();
    let v4: HashSet<_> = pods.iter().map(Pod::ipv4).collect();
    let v6: HashSet<_> = pods.iter().map(Pod::ipv6).collect();
    assert_eq!(v4.len(), 32, "IPv4 handed out twice");
    assert_eq!(v6.len(), 32, "IPv6 handed out twice");
    assert_eq!(reservations(&node).len(), 64);
    assert_eq!(host_veths(&node).len(), 32);
}

#[test]
fn two_hundred_add_del_cycles_leave_nothing_behind() {
    let node = Node::new();
    // IPv4 routes of every table and IPv6 routes other than link-local and
    // multicast (those come and go with the bridge's carrier on their own).
    // The bridge's carrier drops asynchronously after its last port goes:
    // "linkdown" (on v4 and v6 routes alike) is link state, not a route left.
    let routes = |n: &Node| {
        let mut v: Vec<String> = n.ip(&["-4", "route", "show", "table", "all"]).lines().map(str::to_string).collect();
        v.extend(
            n.ip(&["-6", "route", "show", "table", "all"])
                .lines()
                .filter(|l| !l.contains("fe80::") && !l.starts_with("multicast") && !l.contains("ff00::"))
                .map(str::to_string),
        );
        let mut v: Vec<String> = v.into_iter().map(|l| l.replace(" linkdown", "")).collect();
        v.sort();
        v
    };
    // First cycle creates the bridge and its gateway routes: the baseline.
    let sandboxes: Vec<_> = (0..4).map(|i| node.new_sandbox(&format!("s{i}"))).collect();
    let cycle = |sb: &ferry_tests::harness::Sandbox| -> IpAddr {
        let add = node.cni(&sb.call("ADD", node.netconf(), ""));
        assert!(add.success(), "{add:?}");
        let mut conf = node.netconf().clone();
        conf["prevResult"] = add.json();
        let del = node.cni(&sb.call("DEL", &conf, ""));
        assert!(del.success(), "{del:?}");
        add.json()["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
    };
    cycle(&sandboxes[0]);
    let baseline = routes(&node);
    let mut seen = HashSet::new();
    for i in 0..200 {
        seen.insert(cycle(&sandboxes[i % sandboxes.len()]));
    }
    // host-local order: released addresses are not reused until the range wraps
    assert!(seen.len() > 200 - 1 - 56, "addresses cycled through the range: {}", seen.len());
    assert!(host_veths(&node).is_empty(), "{:?}", host_veths(&node));
    assert!(reservations(&node).is_empty(), "{:?}", reservations(&node));
    assert_eq!(routes(&node), baseline, "routes left behind");
    for sb in &sandboxes {
        assert_eq!(pod_links(sb.netns.name()), 0);
    }
}

#[test]
fn kill_during_add_then_del_leaves_nothing() {
    let node = Node::new();
    for (i, delay_us) in [0u64, 300, 1000, 2000, 3000, 5000, 8000].into_iter().enumerate() {
        let sb = node.new_sandbox(&format!("k{i}"));
        let bin = ferry_tests::harness::ferry_bin_dir().join("ferry");
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &sb.container_id)
            .env("CNI_NETNS", sb.netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", ferry_tests::harness::cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        util::in_netns(&mut cmd, node.netns_path());
        // own process group so the kill cannot touch the test process
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("spawn ferry");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(&serde_json::to_vec(node.netconf()).unwrap());
        }
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let del = node.cni(&sb.call("DEL", node.netconf(), ""));
        assert!(del.success(), "DEL after kill at {delay_us}us: {del:?}");
        assert!(host_veths(&node).is_empty(), "veth left after kill at {delay_us}us");
        assert!(reservations(&node).is_empty(), "reservation left after kill at {delay_us}us");
        assert_eq!(pod_links(sb.netns.name()), 0, "pod link left after kill at {delay_us}us");
        let tmp: Vec<_> = std::fs::read_dir(node.ipam_dir())
            .map(|rd| rd.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with(".tmp")).collect())
            .unwrap_or_default();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    }
}

#[test]
fn gc_releases_exactly_the_attachments_not_listed() {
    let node = Node::new();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let c = node.add_pod("c");
    let mut conf = node.netconf().clone();
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": a.container_id(), "ifname": "eth0"},
        {"containerID": c.container_id(), "ifname": "eth0"},
    ]);
    let sb = node.new_sandbox("gc");
    let mut call = sb.call("GC", &conf, "");
    call.container_id = "";
    call.netns = "";
    call.ifname = "";
    let out = node.cni(&call);
    assert!(out.success(), "{out:?}");
    let left: HashSet<IpAddr> = reservations(&node).into_iter().collect();
    let want: HashSet<IpAddr> = [a.ipv4().into(), a.ipv6().into(), c.ipv4().into(), c.ipv6().into()].into();
    assert_eq!(left, want);
    let veths = host_veths(&node);
    assert_eq!(veths.len(), 2, "{veths:?}");
    assert!(!veths.contains(b.host_veth.as_ref().unwrap()));
    assert!(a.cni("CHECK").success());
    // GC below 1.1.0 is refused
    conf["cniVersion"] = "1.0.0".into();
    let mut call = sb.call("GC", &conf, "");
    call.container_id = "";
    assert_cni_error(&node.cni(&call), 1);
}

#[test]
fn bad_inputs_get_documented_error_codes_and_leave_nothing() {
    let node = Node::new();
    let good = node.netconf().clone();
    let with = |patch: Value| {
        let mut c = good.clone();
        ferry_tests::harness::merge(&mut c, &patch);
        c
    };
    let sb = node.new_sandbox("bad");
    let ns_path = sb.netns.path().to_str().unwrap().to_string();
    struct Case<'a> {
        what: &'a str,
        stdin: Vec<u8>,
        command: &'a str,
        netns: String,
        drop_env: Vec<&'static str>,
        ifname: &'a str,
        code: u64,
    }
    let case = |what, stdin: Vec<u8>, code| Case {
        what,
        stdin,
        command: "ADD",
        netns: ns_path.clone(),
        drop_env: vec![],
        ifname: "eth0",
        code,
    };
    let js = |v: Value| serde_json::to_vec(&v).unwrap();
    let cases = vec![
        case("invalid JSON", b"{\"cniVersion\": ".to_vec(), 6),
        case("unknown cniVersion", js(with(json!({"cniVersion": "2.0.0"}))), 1),
        case("pre-0.3 cniVersion", js(with(json!({"cniVersion": "0.2.0"}))), 1),
        case("subnet that does not parse", js(with(json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/99"}]]}}))), 7),
        case(
            "gateway outside subnet",
            js(with(json!({"ipam": {"ranges": [[{"subnet": "10.5.0.0/24", "gateway": "10.6.0.1"}]]}}))),
            7,
        ),
        case("invalid network name", js(with(json!({"name": "-x"}))), 7),
        case("malformed prevResult", js(with(json!({"prevResult": {"ips": "not-a-list"}}))), 7),
        Case {
            netns: "/run/netns/does-not-exist-ferry".into(),
            ..case("netns that does not exist", js(good.clone()), 3)
        },
        Case { drop_env: vec!["CNI_COMMAND"], ..case("missing CNI_COMMAND", js(good.clone()), 4) },
        Case { drop_env: vec!["CNI_CONTAINERID"], ..case("missing CNI_CONTAINERID", js(good.clone()), 4) },
        Case { drop_env: vec!["CNI_NETNS"], ..case("missing CNI_NETNS", js(good.clone()), 4) },
        Case { drop_env: vec!["CNI_IFNAME"], ..case("missing CNI_IFNAME", js(good.clone()), 4) },
        Case { command: "FROB", ..case("unknown CNI_COMMAND", js(good.clone()), 4) },
        Case { ifname: "this-name-is-too-long", ..case("invalid CNI_IFNAME", js(good.clone()), 4) },
    ];
    for c in &cases {
        let mut call = sb.call(c.command, &good, "");
        call.stdin = c.stdin.clone();
        call.netns = &c.netns;
        call.ifname = c.ifname;
        call.drop_env = c.drop_env.clone();
        let out = node.cni(&call);
        assert!(out.code.is_some(), "{}: killed by a signal (panic?): {out:?}", c.what);
        assert!(!out.stderr.contains("panicked"), "{}: {}", c.what, out.stderr);
        assert_cni_error(&out, c.code);
        // SPEC.md: the error carries the cniVersion of the configuration
        if let Ok(v) = serde_json::from_slice::<Value>(&c.stdin) {
            assert_eq!(out.json()["cniVersion"], v["cniVersion"], "{}", c.what);
        }
        assert!(host_veths(&node).is_empty(), "{}: left a veth", c.what);
        assert!(reservations(&node).is_empty(), "{}: left a reservation", c.what);
        assert_eq!(pod_links(sb.netns.name()), 0, "{}: left a pod link", c.what);
    }
}

#[test]
fn exhausted_range_is_code_100_status_50_and_released_addresses_are_reused() {
    // 10.7.0.0/29: .1 is the gateway, .2-.6 are the five usable addresses
    let node = Node::with_config(NodeConfig {
        ipv4_subnet: Some("10.7.0.0/29".into()),
        ipv6_subnet: None,
        ..Default::default()
    });
    let status = |n: &Node| {
        let sb = n.new_sandbox("st");
        let mut call = sb.call("STATUS", n.netconf(), "");
        call.container_id = "";
        call.netns = "";
        call.ifname = "";
        n.cni(&call)
    };
    assert!(status(&node).success(), "{:?}", status(&node));
    let mut pods: Vec<Pod> = (0..5).map(|i| node.add_pod(&format!("e{i}"))).collect();
    let out = node.add_pod_with("full", node.netconf(), "").expect_err("ADD into a full range");
    assert_cni_error(&out, 100);
    assert_cni_error(&status(&node), 50);
    assert!(reservations(&node).len() == 5 && host_veths(&node).len() == 5, "failed ADD left state");
    let freed = pods[2].ipv4();
    pods.remove(2).delete();
    let again = node.add_pod("again");
    assert_eq!(again.ipv4(), freed, "the only free address is the released one");
    // STATUS needs 1.1.0
    let mut conf = node.netconf().clone();
    conf["cniVersion"] = "1.0.0".into();
    let sb = node.new_sandbox("st");
    assert_cni_error(&node.cni(&sb.call("STATUS", &conf, "")), 1);
}

#[test]
fn a_pod_can_request_its_ip_mac_and_ranges_through_cni_args_or_capabilities() {
    let node = Node::new();
    let a = node.add_pod_with("a", node.netconf(), "IgnoreUnknown=1;IP=10.244.0.77").expect("ADD with IP=");
    assert_eq!(a.ipv4().to_string(), "10.244.0.77");
    let taken = node.add_pod_with("b", node.netconf(), "IP=10.244.0.77").expect_err("same IP twice");
    assert_cni_error(&taken, 100);
    let mut conf = node.netconf().clone();
    conf["runtimeConfig"] = json!({"ips": ["10.244.0.88/24", "fd00:10:244::88/64"], "mac": "0a:58:0a:f4:00:58"});
    let c = node.add_pod_with("c", &conf, "").expect("ADD with the ips and mac capabilities");
    assert_eq!(c.ipv4().to_string(), "10.244.0.88");
    assert_eq!(c.ipv6().to_string(), "fd00:10:244::88");
    assert!(c.ip(&["link", "show", "eth0"]).contains("0a:58:0a:f4:00:58"));
    assert_eq!(c.result["interfaces"][2]["mac"], "0a:58:0a:f4:00:58");
    assert!(c.cni("CHECK").success());
    // ipRanges (runtime-provided pod CIDR) replaces the configured ranges
    let mut conf = node.netconf().clone();
    conf["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.200"}]]});
    let d = node.add_pod_with("d", &conf, "").expect("ADD with ipRanges");
    assert_eq!(d.ipv4().to_string(), "10.244.0.200");
    assert!(d.ipv6.is_none(), "ipRanges has no IPv6 range set");
}

#[test]
fn other_ipam_types_are_delegated_to_the_plugin_in_cni_path() {
    let node = Node::new();
    let dir = node.scratch().join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "delegated", "type": "ferry", "pinDir": node.netconf()["pinDir"],
        "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": dir},
    });
    let mut a = node.add_pod_with("a", &conf, "").expect("ADD with host-local IPAM");
    assert!(a.ipv4().to_string().starts_with("10.66.0."));
    let file = dir.join("delegated").join(a.ipv4().to_string());
    assert!(file.exists(), "host-local wrote {}", file.display());
    let b = node.add_pod_with("b", &conf, "").expect("second ADD");
    let _srv = IdServer::tcp(b.netns_path(), 7000, "b");
    let b4 = b.ipv4();
    assert_eq!(a.run(move || tcp_id(SocketAddr::new(b4.into(), 7000), T).unwrap()), "b");
    assert!(a.cni("CHECK").success(), "{:?}", a.cni("CHECK"));
    a.delete();
    assert!(!file.exists(), "host-local released on DEL");
    let missing = json!({"cniVersion": "1.0.0", "name": "delegated", "type": "ferry", "pinDir": node.netconf()["pinDir"], "ipam": {"type": "no-such-ipam"}});
    assert_cni_error(&node.add_pod_with("c", &missing, "").expect_err("unknown ipam plugin"), 7);
}

#[test]
fn chains_with_portmap_and_bandwidth_like_libcni() {
    let node = Node::new();
    let list = json!({
        "cniVersion": "1.0.0", "name": "ferry-test",
        "plugins": [
            node.netconf().clone(),
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ]
    });
    let runtime_config = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
    });
    // libcni: name and cniVersion from the list, runtimeConfig for plugins
    // with the capability, prevResult = the previous plugin's result.
    let plugin_conf = |p: &Value, prev: Option<&Value>| {
        let mut c = p.clone();
        c["name"] = list["name"].clone();
        c["cniVersion"] = list["cniVersion"].clone();
        if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
            let rc: serde_json::Map<String, Value> =
                caps.keys().filter_map(|k| runtime_config.get(k).map(|v| (k.clone(), v.clone()))).collect();
            c["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c
    };
    let sb = node.new_sandbox("chained");
    let plugins = list["plugins"].as_array().unwrap();
    let mut prev: Option<Value> = None;
    for p in plugins {
        let conf = plugin_conf(p, prev.as_ref());
        let out = node.cni(&sb.call("ADD", &conf, ""));
        assert!(out.success(), "{} ADD: {out:?}", p["type"]);
        prev = Some(out.json());
    }
    let result = prev.clone().unwrap();
    validate_result(&result, "1.0.0");
    let pod_ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap().to_string();

    // portmap: the node's port 18080 reaches the pod's port 80
    let _srv = IdServer::tcp(sb.netns.path(), 80, "chained");
    let via_hostport = node.run(|| tcp_id("10.244.0.1:18080".parse().unwrap(), T));
    assert_eq!(via_hostport.expect("connect through the host port"), "chained");
    // bandwidth: a shaping qdisc on the host veth
    let qdisc = node.ip(&["link", "show"]);
    let tc = util::sh(&["ip", "netns", "exec", node.name(), "tc", "qdisc", "show", "dev", &host_veth]);
    assert!(tc.contains("tbf") || tc.contains("ingress"), "no shaping on {host_veth}: {tc}\n{qdisc}");
    // (Debian's portmap 1.1.1 fails its own CHECK on dual-stack results: it
    // looks for the IPv4 DNAT rule in the IPv6 table. So portmap is not
    // CHECKed here; ferry and bandwidth are.)
    for cmd in ["CHECK"] {
        for p in plugins.iter().filter(|p| p["type"] != "portmap") {
            let out = node.cni(&sb.call(cmd, &plugin_conf(p, prev.as_ref()), ""));
            assert!(out.success(), "{} {cmd}: {out:?}", p["type"]);
        }
    }
    // DEL in reverse order with the final result
    for p in plugins.iter().rev() {
        let out = node.cni(&sb.call("DEL", &plugin_conf(p, prev.as_ref()), ""));
        assert!(out.success(), "{} DEL: {out:?}", p["type"]);
    }
    assert!(host_veths(&node).is_empty());
    assert!(reservations(&node).is_empty());
    let rules = util::sh(&["ip", "netns", "exec", node.name(), "iptables-save"]);
    assert!(!rules.contains(&pod_ip), "portmap rules left: {rules}");
}

#[test]
fn an_add_that_fails_halfway_rolls_back_everything_it_created() {
    let node = Node::new();
    let sb = node.new_sandbox("noipv6");
    // IPv6 off in the pod: the veth and the IPv4 address go in, then the
    // IPv6 address is refused by the kernel, after the bridge port exists.
    sb.netns.run(|| {
        util::sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        util::sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    });
    let out = node.cni(&sb.call("ADD", node.netconf(), ""));
    assert_cni_error(&out, 101);
    assert!(host_veths(&node).is_empty(), "veth left: {:?}", host_veths(&node));
    assert!(reservations(&node).is_empty(), "reservation left: {:?}", reservations(&node));
    assert_eq!(pod_links(sb.netns.name()), 0, "pod interface left");
    // and the same sandbox works once IPv6 is back
    sb.netns.run(|| {
        util::sysctl("net.ipv6.conf.all.disable_ipv6", "0");
        util::sysctl("net.ipv6.conf.default.disable_ipv6", "0");
    });
    let pod = node.attach(sb, node.netconf(), "").expect("ADD after fixing the sandbox");
    assert!(pod.ipv6.is_some());
}

#[test]
fn the_harness_cleans_up_after_a_panicking_test() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let node = Node::new();
        let pod = node.add_pod("doomed");
        let _srv = IdServer::tcp(pod.netns_path(), 8080, "doomed");
        tx.send((node.netns_path().to_path_buf(), pod.netns_path().to_path_buf(), node.scratch().to_path_buf()))
            .unwrap();
        panic!("a test failing halfway");
    });
    assert!(outcome.is_err());
    let (node_ns, pod_ns, scratch) = rx.recv().unwrap();
    assert!(!node_ns.exists(), "node netns left: {}", node_ns.display());
    assert!(!pod_ns.exists(), "pod netns left: {}", pod_ns.display());
    assert!(!scratch.exists(), "scratch dir (IPAM state) left: {}", scratch.display());
}

#[test]
fn cni_path_is_optional_unless_ipam_is_delegated() {
    // SPEC.md lists CNI_PATH as an optional parameter of ADD, DEL and CHECK.
    let node = Node::new();
    let sb = node.new_sandbox("nopath");
    let mut call = sb.call("ADD", node.netconf(), "");
    call.drop_env = vec!["CNI_PATH"];
    let out = node.cni(&call);
    assert!(out.success(), "ADD without CNI_PATH: {out:?}");
    let mut conf = node.netconf().clone();
    conf["prevResult"] = out.json();
    for cmd in ["CHECK", "DEL"] {
        let mut call = sb.call(cmd, &conf, "");
        call.drop_env = vec!["CNI_PATH"];
        let out = node.cni(&call);
        assert!(out.success(), "{cmd} without CNI_PATH: {out:?}");
    }
    assert!(reservations(&node).is_empty());
    // a delegated IPAM plugin cannot be found without it: code 4, nothing left
    let delegated = json!({"cniVersion": "1.0.0", "name": "d", "type": "ferry", "pinDir": node.netconf()["pinDir"],
                           "ipam": {"type": "host-local", "subnet": "10.67.0.0/24", "dataDir": node.scratch().join("hl")}});
    let mut call = sb.call("ADD", &delegated, "");
    call.drop_env = vec!["CNI_PATH"];
    let out = node.cni(&call);
    assert_cni_error(&out, 4);
    assert!(out.json()["msg"].as_str().unwrap().contains("CNI_PATH"));
    assert!(host_veths(&node).is_empty());
    // VERSION echoes the version it was asked about (SPEC.md "Version")
    let mut call = sb.call("VERSION", node.netconf(), "");
    call.stdin = br#"{"cniVersion": "0.2.0"}"#.to_vec();
    assert_eq!(node.cni(&call).json()["cniVersion"], "0.2.0");
}

#[test]
fn pods_on_two_nodes_talk_through_host_gw_routes_on_an_underlay() {
    use ferry_tests::harness::underlay::{route_via, Underlay};
    let ul = Underlay::new();
    let cfg = |v4: &str, v6: &str| NodeConfig {
        ipv4_subnet: Some(v4.into()),
        ipv6_subnet: Some(v6.into()),
        ..Default::default()
    };
    let n1 = Node::with_config(cfg("10.244.1.0/24", "fd00:10:244:1::/64"));
    let n2 = Node::with_config(cfg("10.244.2.0/24", "fd00:10:244:2::/64"));
    let a1 = ul.plug_node(&n1, 11);
    let a2 = ul.plug_node(&n2, 12);
    // what the agent does from Node objects: each node's pod CIDR via its IP
    route_via(n1.name(), "10.244.2.0/24", a2.ipv4.into());
    route_via(n2.name(), "10.244.1.0/24", a1.ipv4.into());
    route_via(n1.name(), "fd00:10:244:2::/64", a2.ipv6.into());
    route_via(n2.name(), "fd00:10:244:1::/64", a1.ipv6.into());
    let p1 = n1.add_pod("p1");
    let p2 = n2.add_pod("p2");
    let _srv = IdServer::tcp(p2.netns_path(), 8080, "p2");
    let (v4, v6) = (p2.ipv4(), p2.ipv6());
    let got = p1.run(move || {
        (
            tcp_id(SocketAddr::new(v4.into(), 8080), T).expect("cross-node IPv4"),
            tcp_id(SocketAddr::new(v6.into(), 8080), T).expect("cross-node IPv6"),
        )
    });
    assert_eq!(got, ("p2".to_string(), "p2".to_string()));
    // an outside client on the underlay reaches a pod through the node
    let (client, _) = ul.client(50);
    route_via(client.name(), "10.244.2.0/24", a2.ipv4.into());
    let from_outside = client.run(move || tcp_id(SocketAddr::new(v4.into(), 8080), T));
    assert_eq!(from_outside.expect("client -> pod via node"), "p2");
}

#[test]
fn status_reports_an_unusable_data_dir_or_bridge_name_with_code_50() {
    let node = Node::new();
    let status = |conf: &Value| {
        let sb = node.new_sandbox("st");
        let mut call = sb.call("STATUS", conf, "");
        call.container_id = "";
        call.netns = "";
        call.ifname = "";
        node.cni(&call)
    };
    assert!(status(node.netconf()).success());
    // a data dir that cannot be created (procfs refuses new directories)
    let mut conf = node.netconf().clone();
    conf["ipam"]["dataDir"] = "/proc/ferry-cannot-exist".into();
    assert_cni_error(&status(&conf), 50);
    let add = node.add_pod_with("a", &conf, "").expect_err("ADD with an unusable data dir");
    assert_cni_error(&add, 5);
    assert!(host_veths(&node).is_empty());
    // the bridge name is taken by something that is not a bridge
    node.ip(&["link", "add", "ferry0", "type", "veth", "peer", "name", "ferry0p"]);
    assert_cni_error(&status(node.netconf()), 50);
    let add = node.add_pod_with("b", node.netconf(), "").expect_err("ADD onto a non-bridge");
    assert_cni_error(&add, 101);
    assert!(add.json()["details"].as_str().unwrap().contains("not a bridge"), "{}", add.stdout);
    assert!(reservations(&node).is_empty(), "the failed ADD released its addresses");
}

#[test]
fn a_prev_result_from_an_earlier_plugin_is_passed_through_with_ours_appended() {
    let node = Node::new();
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0", "mac": "02:00:00:00:00:aa"}],
        "ips": [{"address": "192.0.2.10/24", "interface": 0}],
        "routes": [{"dst": "198.51.100.0/24", "gw": "192.0.2.1"}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let mut conf = node.netconf().clone();
    conf["prevResult"] = prev;
    let pod = node.add_pod_with("chained", &conf, "").expect("ADD with a prevResult");
    let r = &pod.result;
    validate_result_loosely(r);
    assert_eq!(r["interfaces"][0]["name"], "dummy0", "previous interfaces first: {r}");
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 4);
    assert_eq!(r["ips"][0]["address"], "192.0.2.10/24");
    assert_eq!(r["ips"][1]["interface"], 3, "our ips point at our (shifted) sandbox interface: {r}");
    assert_eq!(r["routes"][0]["dst"], "198.51.100.0/24");
    assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");
    assert!(pod.ipv4().to_string().starts_with("10.244.0."), "{r}");
}

/// Shape checks that do not assume ferry is the only plugin of the chain.
fn validate_result_loosely(r: &Value) {
    let n = r["interfaces"].as_array().expect("interfaces").len();
    for ip in r["ips"].as_array().expect("ips") {
        if let Some(i) = ip["interface"].as_u64() {
            assert!((i as usize) < n, "interface index {i} out of range: {r}");
        }
    }
}

#[test]
fn one_container_can_have_two_attachments_with_different_ifnames() {
    // An attachment is (CNI_CONTAINERID, CNI_IFNAME) (SPEC.md section 3).
    let node = Node::new();
    let mut sb = node.new_sandbox("multi");
    let eth0 = node.cni(&sb.call("ADD", node.netconf(), ""));
    assert!(eth0.success(), "{eth0:?}");
    sb.ifname = "net1".into();
    let net1 = node.cni(&sb.call("ADD", node.netconf(), ""));
    assert!(net1.success(), "second attachment: {net1:?}");
    assert_ne!(eth0.json()["ips"][0]["address"], net1.json()["ips"][0]["address"]);
    assert_eq!(host_veths(&node).len(), 2);
    let mut conf = node.netconf().clone();
    conf["prevResult"] = net1.json();
    assert!(node.cni(&sb.call("DEL", &conf, "")).success());
    // eth0's attachment is untouched
    sb.ifname = "eth0".into();
    conf["prevResult"] = eth0.json();
    let check = node.cni(&sb.call("CHECK", &conf, ""));
    assert!(check.success(), "{check:?}");
    assert_eq!(reservations(&node).len(), 2);
    assert!(node.cni(&sb.call("DEL", &conf, "")).success());
    assert!(reservations(&node).is_empty() && host_veths(&node).is_empty());
}

/// A small range (a /29: .2-.6 usable), built-in or delegated to Debian's
/// host-local, for the duplicate-ADD tests.
fn small_range_conf(node: &Node, ipam_type: &str) -> Value {
    let ipam = match ipam_type {
        "host-local" => json!({"type": "host-local", "subnet": "10.229.0.0/29", "dataDir": node.scratch().join("hl")}),
        _ => {
            json!({"type": "ferry", "ranges": [[{"subnet": "10.229.0.0/29"}]], "dataDir": node.scratch().join("ipam")})
        }
    };
    json!({"cniVersion": "1.0.0", "name": "small", "type": "ferry", "pinDir": node.netconf()["pinDir"], "ipam": ipam})
}

/// Who holds each address, from the IPAM's own files (host-local's layout,
/// which the built-in allocator shares): address -> container id.
fn holders(node: &Node, ipam_type: &str) -> std::collections::HashMap<IpAddr, String> {
    let dir = node.scratch().join(if ipam_type == "host-local" { "hl" } else { "ipam" }).join("small");
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let ip: IpAddr = e.file_name().to_str()?.parse().ok()?;
                    let owner = std::fs::read_to_string(e.path()).ok()?.lines().next()?.trim().to_string();
                    Some((ip, owner))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_refused_duplicate_add_never_frees_the_live_pods_address() {
    for ipam_type in ["host-local", "ferry"] {
        let node = Node::new();
        let conf = small_range_conf(&node, ipam_type);
        let a = node.add_pod_with("a", &conf, "").unwrap_or_else(|o| panic!("{ipam_type}: ADD a: {o:?}"));
        let a4 = a.ipv4();
        let _srv = IdServer::tcp(a.netns_path(), 7000, "a");

        // The runtime repeats A's ADD (a retry, a restart): refused, and
        // nothing of A is touched.
        let again = node.cni(&a.sandbox.call("ADD", &conf, ""));
        assert!(!again.success(), "{ipam_type}: a second ADD of a live attachment succeeded: {again:?}");
        assert_eq!(
            holders(&node, ipam_type).get(&IpAddr::V4(a4)),
            Some(&a.container_id().to_string()),
            "{ipam_type}: A's lease after the refused ADD"
        );
        assert!(
            a.ip(&["-4", "addr", "show", "eth0"]).contains(&a4.to_string()),
            "{ipam_type}: A's address is still on its interface"
        );

        // Fill the range: every other pod gets an address of its own.
        let mut others = vec![];
        for i in 0.. {
            match node.add_pod_with(&format!("f{i}"), &conf, "") {
                Ok(p) => others.push(p),
                Err(o) => {
                    assert!(o.error_code().is_some(), "{ipam_type}: the range ends with a CNI error: {o:?}");
                    break;
                }
            }
            assert!(i < 10, "{ipam_type}: a /29 cannot hold {i} pods");
        }
        let mut seen: HashSet<Ipv4Addr> = [a4].into();
        for p in &others {
            assert!(seen.insert(p.ipv4()), "{ipam_type}: {} handed out twice (A has {a4})", p.ipv4());
        }
        assert_eq!(others.len(), 4, "{ipam_type}: .2-.6 minus A's: {seen:?}");

        // A still serves: every other pod reaches it on its one address.
        for p in &others {
            let got = p.run(move || tcp_id(SocketAddr::new(a4.into(), 7000), T));
            assert_eq!(got.as_deref().ok(), Some("a"), "{ipam_type}: {} -> A", p.name());
        }
        // And the refused ADD left nothing of its own, and said why.
        assert_eq!(host_veths(&node).len(), 5, "{ipam_type}: one host veth per pod");
        assert_cni_error(&again, 102);
    }
}

#[test]
fn a_failed_add_rolls_back_only_what_it_reserved_with_delegated_ipam() {
    let node = Node::new();
    let conf = small_range_conf(&node, "host-local");
    let a = node.add_pod_with("a", &conf, "").expect("ADD a");
    // A second pod whose ADD fails after host-local reserved its address
    // (IPv6 off in its sandbox cannot matter for an IPv4-only range, so
    // make the route fail instead: a route through a gateway outside the
    // pod's subnet is refused by the kernel).
    let mut bad = conf.clone();
    bad["ipam"]["routes"] = json!([{"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]);
    let out = node.add_pod_with("b", &bad, "").expect_err("a route the kernel refuses");
    assert_cni_error(&out, 101);
    let held = holders(&node, "host-local");
    assert_eq!(held.len(), 1, "b's lease was released, A's kept: {held:?}");
    assert_eq!(held.get(&IpAddr::V4(a.ipv4())), Some(&a.container_id().to_string()));
    assert_eq!(host_veths(&node).len(), 1);
}

#[test]
fn delegated_host_local_works_at_every_cni_version_we_claim() {
    // Debian's host-local speaks CNI up to 1.0.0: ferry speaks to it in the
    // highest version both have, and answers the runtime in the asked one.
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let node = Node::new();
        let dir = node.scratch().join("hl");
        let conf = json!({
            "cniVersion": version, "name": "hl", "type": "ferry", "pinDir": node.netconf()["pinDir"],
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.68.0.0/24"}], [{"subnet": "fd00:68::/64"}]], "dataDir": dir},
        });
        let mut a = node.add_pod_with("a", &conf, "").unwrap_or_else(|o| panic!("{version}: ADD: {o:?}"));
        validate_result(&a.result, version);
        assert_eq!(a.result["ips"].as_array().unwrap().len(), 2, "{version}: dual-stack from host-local");
        let lease = dir.join("hl").join(a.ipv4().to_string());
        assert!(lease.exists(), "{version}: host-local wrote {}", lease.display());
        let b = node.add_pod_with("b", &conf, "").unwrap_or_else(|o| panic!("{version}: ADD b: {o:?}"));
        let _srv = IdServer::tcp(b.netns_path(), 7000, "b");
        let b6 = b.ipv6();
        assert_eq!(a.run(move || tcp_id(SocketAddr::new(b6.into(), 7000), T)).ok().as_deref(), Some("b"), "{version}");

        let check = a.cni("CHECK");
        if version == "0.3.1" {
            assert_cni_error(&check, 1); // CHECK is a 0.4.0 operation
        } else {
            assert!(check.success(), "{version}: CHECK: {check:?}");
        }
        for cmd in ["STATUS", "GC"] {
            let mut c = conf.clone();
            c["cni.dev/valid-attachments"] = json!([{"containerID": a.container_id(), "ifname": "eth0"},
                                                    {"containerID": b.container_id(), "ifname": "eth0"}]);
            let out = node.cni(&a.sandbox.call(cmd, &c, ""));
            if version == "1.1.0" {
                // host-local has no STATUS/GC: not delegated, said on stderr, not an error.
                assert!(out.success(), "{version}: {cmd}: {out:?}");
                assert!(
                    out.stderr.contains("not delegated"),
                    "{version}: {cmd} says what it did not delegate: {out:?}"
                );
            } else {
                assert_cni_error(&out, 1);
            }
        }
        assert!(lease.exists(), "{version}: GC kept a valid attachment's lease");
        a.delete();
        assert!(!lease.exists(), "{version}: host-local released on DEL");
    }
}
