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

#[test]
fn vxlan_device_fdb_neighbours_and_protocol_tagged_routes() {
    use ferry_netlink::{FdbEntry, RouteEntry, VxlanSpec, ROUTE_PROTOCOL};
    let node = fresh_netns();
    std::thread::spawn(move || {
        let _g = node.enter().unwrap();
        let nl = Netlink::open().unwrap();
        // an underlay: a bridge with an address stands in for eth0
        let (ul, _) = nl.ensure_bridge("ul-test", 1500, [2, 0, 0, 0, 1, 1]).unwrap();
        nl.add_addr(ul.index, "192.168.77.1".parse().unwrap(), 24).unwrap();
        let spec = VxlanSpec {
            name: "vx-test".into(),
            vni: 7,
            port: 8472,
            local: "192.168.77.1".parse().unwrap(),
            underlay: ul.index,
            mtu: 1450,
            mac: [0x0e, 0x46, 192, 168, 77, 1],
        };
        let (vx, created) = nl.ensure_vxlan(&spec).unwrap();
        assert!(created && vx.up && vx.mtu == 1450);
        let (_, found) = nl.vxlan("vx-test").unwrap().unwrap();
        assert_eq!(found, spec, "read back as created");
        // same spec: kept (same index); another MTU: corrected in place
        let (again, created) = nl.ensure_vxlan(&VxlanSpec { mtu: 1400, ..spec.clone() }).unwrap();
        assert!(!created && again.index == vx.index && again.mtu == 1400);
        // another VNI cannot be changed in place: re-created
        let (other, created) = nl.ensure_vxlan(&VxlanSpec { vni: 8, ..spec.clone() }).unwrap();
        assert!(created && other.index != vx.index);
        let vx = other;

        let mac = [0x0e, 0x46, 192, 168, 78, 11];
        let fdb = FdbEntry { mac, dst: "192.168.78.11".parse().unwrap() };
        nl.put_fdb(vx.index, &fdb).unwrap();
        nl.put_fdb(vx.index, &fdb).unwrap(); // a replace: idempotent
        assert_eq!(nl.fdb(vx.index).unwrap(), [fdb]);
        let gw: IpAddr = "10.244.3.0".parse().unwrap();
        nl.put_neighbour(vx.index, gw, mac).unwrap();
        let n = nl.neighbours(vx.index).unwrap();
        assert!(n.iter().any(|n| n.ip == gw && n.mac == mac && n.permanent), "{n:?}");

        let route = RouteEntry {
            dst: "10.244.3.0".parse().unwrap(),
            prefix: 24,
            gateway: gw,
            oif: vx.index,
            onlink: true,
            protocol: ROUTE_PROTOCOL,
        };
        nl.put_route(&route, false).unwrap();
        assert!(nl.route_entries().unwrap().contains(&route), "read back as added (onlink, protocol)");
        // replaced in place: host-gw instead
        let hostgw = RouteEntry { gateway: "192.168.77.9".parse().unwrap(), oif: ul.index, onlink: false, ..route };
        nl.put_route(&hostgw, true).unwrap();
        let now = nl.route_entries().unwrap();
        assert!(now.contains(&hostgw) && !now.contains(&route), "{now:?}");
        // a delete with Ferry's protocol never removes another protocol's route
        let theirs = RouteEntry { dst: "10.244.9.0".parse().unwrap(), protocol: 4, ..hostgw };
        nl.put_route(&theirs, false).unwrap();
        assert!(!nl.del_route(&RouteEntry { protocol: ROUTE_PROTOCOL, ..theirs }).unwrap());
        assert!(nl.route_entries().unwrap().contains(&theirs));
        assert!(nl.del_route(&hostgw).unwrap());
        assert!(!nl.del_route(&hostgw).unwrap(), "ESRCH is a value");

        assert!(nl.del_neighbour(vx.index, gw).unwrap());
        assert!(!nl.del_neighbour(vx.index, gw).unwrap());
        assert!(nl.del_fdb(vx.index, &fdb).unwrap());
        assert!(!nl.del_fdb(vx.index, &fdb).unwrap());
        assert!(nl.fdb(vx.index).unwrap().is_empty());
    })
    .join()
    .unwrap();
}
