//! Privileged tests of ferry-netlink in throw-away network namespaces made
//! with unshare(CLONE_NEWNET) on dedicated threads (the namespace lives as
//! long as a thread is in it or an fd refers to it), so nothing is ever
//! created in the namespace the test started in.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use ferry_netlink::{Netlink, Netns, Route, VethSpec};

fn ns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// A new, empty network namespace held open by an fd.
fn fresh_netns() -> Netns {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (needs root)");
        Netns::current().unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn guard_enters_and_restores_the_thread_namespace() {
    let target = fresh_netns();
    std::thread::spawn(move || {
        let before = ns_inode();
        {
            let _g = target.enter().unwrap();
            assert_ne!(ns_inode(), before, "entered another namespace");
        }
        assert_eq!(ns_inode(), before, "restored on drop");
    })
    .join()
    .unwrap();
}

#[test]
fn open_rejects_paths_that_are_not_network_namespaces() {
    let e = Netns::open("/proc/self/status").unwrap_err();
    assert!(e.to_string().contains("not a network namespace"), "{e}");
    assert!(Netns::open("/run/netns/ferry-definitely-missing").is_err());
}

#[test]
fn bridge_veth_addresses_and_routes_across_two_namespaces() {
    let host = fresh_netns();
    let pod = fresh_netns();
    std::thread::spawn(move || {
        let _g = host.enter().unwrap();
        let nl = Netlink::open().unwrap();
        let (br, created) = nl.ensure_bridge("br-test", 1400, [2, 0, 0, 0, 0, 1]).unwrap();
        assert!(created && br.up && br.kind.as_deref() == Some("bridge"));
        let (again, created) = nl.ensure_bridge("br-test", 1400, [2, 0, 0, 0, 0, 1]).unwrap();
        assert!(!created && again.index == br.index, "idempotent");
        let gw: IpAddr = "10.50.0.1".parse().unwrap();
        assert!(nl.add_addr(br.index, gw, 24).unwrap());
        assert!(!nl.add_addr(br.index, gw, 24).unwrap(), "EEXIST is a value, not an error");

        nl.add_veth(&VethSpec {
            name: "vh-test",
            mac: [2, 0, 0, 0, 0, 2],
            mtu: 1400,
            controller: Some(br.index),
            peer_name: "eth7",
            peer_mac: [2, 0, 0, 0, 0, 3],
            peer_netns: pod.as_fd(),
        })
        .unwrap();
        let vh = nl.link("vh-test").unwrap().unwrap();
        assert_eq!((vh.controller, vh.mtu, vh.up, vh.mac), (Some(br.index), 1400, true, Some([2, 0, 0, 0, 0, 2])));
        nl.set_hairpin(vh.index, true).unwrap();
        assert!(nl.link("eth7").unwrap().is_none(), "the peer went straight into the pod namespace");

        let pod_nl = nl.open_in(&pod).unwrap();
        let eth = pod_nl.link("eth7").unwrap().unwrap();
        assert_eq!(eth.mac, Some([2, 0, 0, 0, 0, 3]));
        pod_nl.set_up(eth.index).unwrap();
        let ip: IpAddr = "10.50.0.2".parse().unwrap();
        let ip6: IpAddr = "fd50::2".parse().unwrap();
        pod_nl.add_addr(eth.index, ip, 24).unwrap();
        pod_nl.add_addr(eth.index, ip6, 64).unwrap();
        let addrs = pod_nl.addrs(Some(eth.index)).unwrap();
        assert!(addrs.iter().any(|a| a.ip == ip && a.prefix == 24), "{addrs:?}");
        assert!(addrs.iter().any(|a| a.ip == ip6 && a.prefix == 64), "{addrs:?}");
        let default = Route { dst: "0.0.0.0".parse().unwrap(), prefix: 0, gateway: Some(gw), oif: Some(eth.index) };
        assert!(pod_nl.add_route(&default).unwrap());
        assert!(!pod_nl.add_route(&default).unwrap());
        let routes = pod_nl.routes(false).unwrap();
        assert!(routes.iter().any(|r| r.prefix == 0 && r.gateway == Some(gw)), "{routes:?}");
        assert!(pod_nl.routes(true).unwrap().iter().any(|r| r.prefix == 64));

        assert!(nl.del_link("vh-test").unwrap());
        assert!(!nl.del_link("vh-test").unwrap(), "ENODEV is a value, not an error");
        assert!(pod_nl.link("eth7").unwrap().is_none(), "deleting one end removes the pair");
        assert!(nl.links().unwrap().iter().any(|l| l.name == "br-test"));
    })
    .join()
    .unwrap();
}
