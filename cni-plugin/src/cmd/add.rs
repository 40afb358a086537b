//! ADD: addresses, bridge, veth pair, pod addresses and routes, result.
//!
//! Netlink round trips are the cost that matters, so: one socket in the host
//! namespace and one opened inside the pod's (no per-request namespace
//! switching), the veth pair created with the peer already inside the pod
//! namespace under its final name, both ends up and the host end enslaved in
//! that same request, and deterministic MACs so nothing has to be read back.
//! Any failure undoes what this invocation created (and only that).
//!
//! A repeated ADD (a kubelet retry, a runtime restart) must never harm the
//! attachment that already exists: it is refused (code 102) before any
//! address is asked for, when the host veth of (container, ifname) or the
//! interface in the sandbox is already there. And a delegated IPAM is only
//! called with DEL when its own ADD succeeded in this invocation, as the
//! reference `bridge` plugin does: for a refused duplicate, host-local's
//! DEL would release the live pod's address, which the next pod then gets.

use std::net::IpAddr;

use ferry_netlink::{Netlink, Netns, Route, VethSpec};

use super::{open_netns, Family};
use crate::delegate::Delegate;
use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::ipam::{self, cidr::Cidr, RouteConf};
use crate::names;
use crate::netconf::{Config, Ipam};
use crate::result::{CniResult, Dns, Interface, IpConfig, RouteEntry};

/// An address for the pod, from whichever IPAM.
#[derive(Debug, Clone, Copy)]
struct PodIp {
    ip: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
}

/// What this invocation created, undone in reverse on failure.
#[derive(Default)]
struct Undo {
    /// Built-in IPAM: the addresses this call reserved.
    leases: Vec<IpAddr>,
    /// The delegated IPAM's ADD succeeded in this call.
    delegated: bool,
    veth: Option<String>,
}

impl Undo {
    fn run(self, cfg: &Config, delegate: Option<&Delegate>, nl: Option<&Netlink>) {
        // Best effort: the original error is what the runtime must see; a
        // leftover here is still removed by the runtime's DEL (same names).
        if let (Some(v), Some(nl)) = (&self.veth, nl) {
            if let Err(e) = nl.del_link(v) {
                eprintln!("ferry: rollback: deleting {v}: {e}");
            }
        }
        match &cfg.ipam {
            Ipam::Builtin(ic) if !self.leases.is_empty() => {
                if let Err(e) = ipam::release_ips(ic, &cfg.conf.name, &self.leases) {
                    eprintln!("ferry: rollback: releasing {:?}: {e}", self.leases);
                }
            }
            Ipam::Delegated(t) if self.delegated => {
                if let Some(Err(e)) = delegate.map(|d| d.exec(Command::Del)) {
                    eprintln!("ferry: rollback: {t} DEL: {e}");
                }
            }
            _ => {}
        }
    }
}

pub fn run(cfg: &Config, env: &Env) -> Result<serde_json::Value> {
    // Everything that can be checked without side effects comes first.
    let netns = open_netns(&env.netns)?;
    let prev = cfg.conf.prev_result.as_ref().map(CniResult::from_value).transpose()?;
    let delegate = match &cfg.ipam {
        Ipam::Delegated(t) => Some(Delegate::new(t, env, &cfg.version, &cfg.raw)?),
        Ipam::Builtin(_) => None,
    };
    let mut undo = Undo::default();
    let mut nl_slot: Option<Netlink> = None;
    match add(cfg, env, &netns, delegate.as_ref(), &mut undo, &mut nl_slot) {
        Ok(ours) => Ok(match prev {
            // A chained ADD: pass the previous result on with ours appended.
            Some(prev) => prev.merged(ours),
            None => ours,
        }
        .to_json(&cfg.version)),
        Err(e) => {
            undo.run(cfg, delegate.as_ref(), nl_slot.as_ref());
            Err(e)
        }
    }
}

fn addresses(
    cfg: &Config,
    env: &Env,
    requested: &[IpAddr],
    delegate: Option<&Delegate>,
    undo: &mut Undo,
) -> Result<(Vec<PodIp>, Vec<RouteConf>, Dns)> {
    match &cfg.ipam {
        Ipam::Builtin(ic) => {
            let leases = ipam::allocate(ic, &cfg.conf.name, &env.container_id, &env.ifname, requested)?;
            undo.leases = leases.iter().map(|l| l.ip).collect();
            let ips = leases.iter().map(|l| PodIp { ip: l.ip, prefix: l.prefix, gateway: Some(l.gateway) }).collect();
            Ok((ips, ic.routes.clone(), Dns::default()))
        }
        Ipam::Delegated(t) => {
            let d = delegate.expect("a delegated IPAM has its Delegate");
            // Only an ADD that succeeded here is undone with DEL: a refused
            // one (a duplicate) must not release what an earlier ADD holds.
            let out = d.exec(Command::Add)?;
            undo.delegated = true;
            let res = CniResult::from_value(
                &out.ok_or_else(|| CniError::new(Code::Delegate, format!("ipam plugin {t} returned no result")))?,
            )?;
            let bad = |what: &str, s: &str| CniError::new(Code::Delegate, format!("ipam plugin {t}: bad {what} {s:?}"));
            let mut ips = vec![];
            for ip in &res.ips {
                let c: Cidr = ip.address.parse().map_err(|_| bad("address", &ip.address))?;
                let gateway = match &ip.gateway {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad("gateway", g))?),
                    None => None,
                };
                ips.push(PodIp { ip: c.addr, prefix: c.prefix, gateway });
            }
            let mut routes = vec![];
            for r in &res.routes {
                let dst: Cidr = r.dst.parse().map_err(|_| bad("route", &r.dst))?;
                let gw = match &r.gw {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad("route gw", g))?),
                    None => None,
                };
                routes.push(RouteConf { dst, gw });
            }
            Ok((ips, routes, res.dns))
        }
    }
}

fn add(
    cfg: &Config,
    env: &Env,
    netns: &Netns,
    delegate: Option<&Delegate>,
    undo: &mut Undo,
    nl_slot: &mut Option<Netlink>,
) -> Result<CniResult> {
    let requested = cfg.requested_ips(env.arg("IP"))?;
    let mac = cfg.requested_mac(env.arg("MAC"))?;
    // An attachment of (container, ifname) that already exists is refused
    // before anything is reserved or created: nothing of it is touched.
    let nl = nl_slot.insert(Netlink::open()?);
    let pod_nl = nl.open_in(netns)?;
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    if pod_nl.link(&env.ifname)?.is_some() {
        return Err(CniError::new(
            Code::InterfaceExists,
            format!("interface {} already exists in {}", env.ifname, env.netns),
        ));
    }
    if nl.link(&host_name)?.is_some() {
        return Err(CniError::new(
            Code::InterfaceExists,
            format!(
                "host interface {host_name} for container {} / {} already exists (ADD without DEL?)",
                env.container_id, env.ifname
            ),
        ));
    }

    let (ips, ipam_routes, ipam_dns) = addresses(cfg, env, &requested, delegate, undo)?;
    if ips.is_empty() {
        return Err(CniError::new(Code::InvalidConfig, "IPAM returned no address"));
    }

    let (bridge, _) = nl.ensure_bridge(&cfg.conf.bridge, cfg.mtu, names::mac(&["bridge", &cfg.conf.bridge]))?;
    if cfg.conf.is_gateway {
        for ip in &ips {
            if let Some(gw) = ip.gateway {
                nl.add_addr(bridge.index, gw, ip.prefix)?;
            }
        }
        super::enable_forwarding(ips.iter().any(|i| i.ip.is_ipv4()), ips.iter().any(|i| i.ip.is_ipv6()))?;
    }

    let host_mac = names::mac(&[&env.container_id, &env.ifname, "host"]);
    let pod_mac = mac.unwrap_or_else(|| names::mac(&[&env.container_id, &env.ifname, "pod"]));
    nl.add_veth(&VethSpec {
        name: &host_name,
        mac: host_mac,
        mtu: cfg.mtu,
        controller: Some(bridge.index),
        peer_name: &env.ifname,
        peer_mac: pod_mac,
        peer_netns: std::os::fd::AsFd::as_fd(netns),
    })
    .map_err(|e| {
        if e.errno() == Some(ferry_netlink::EEXIST) {
            CniError::new(
                Code::InterfaceExists,
                format!(
                    "host interface {host_name} for container {} / {} already exists (ADD without DEL?)",
                    env.container_id, env.ifname
                ),
            )
        } else {
            e.into()
        }
    })?;
    undo.veth = Some(host_name.clone());
    let host = nl
        .link(&host_name)?
        .ok_or_else(|| CniError::new(Code::Netlink, format!("{host_name} vanished after creation")))?;
    if cfg.conf.hairpin_mode {
        nl.set_hairpin(host.index, true)?;
    }

    // The pinned from-pod/to-pod programs under cfg.conf.pin_dir go on
    // `host` now, before any address exists in the pod, so no packet of this
    // pod can bypass the load balancer. A failure undoes the veth (above).
    let pod_ips: Vec<IpAddr> = ips.iter().map(|i| i.ip).collect();
    crate::datapath::attach(&cfg.conf.pin_dir, host.index, &host_name, pod_mac, &pod_ips)?;

    let pod = pod_nl
        .link(&env.ifname)?
        .ok_or_else(|| CniError::new(Code::Netlink, format!("{} vanished from {}", env.ifname, env.netns)))?;
    pod_nl.set_up(pod.index)?;
    for ip in &ips {
        pod_nl.add_addr(pod.index, ip.ip, ip.prefix)?;
    }
    let routes = pod_routes(cfg, &ips, &ipam_routes);
    for r in &routes {
        pod_nl.add_route(&Route { dst: r.dst.addr, prefix: r.dst.prefix, gateway: r.gw, oif: Some(pod.index) })?;
    }

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac.as_ref().map(names::mac_string),
                ..Default::default()
            },
            Interface { name: host_name, mac: Some(names::mac_string(&host_mac)), ..Default::default() },
            Interface {
                name: env.ifname.clone(),
                mac: Some(names::mac_string(&pod_mac)),
                mtu: Some(cfg.mtu),
                sandbox: Some(env.netns.clone()),
                ..Default::default()
            },
        ],
        ips: ips
            .iter()
            .map(|i| IpConfig {
                address: format!("{}/{}", i.ip, i.prefix),
                gateway: i.gateway.map(|g| g.to_string()),
                interface: Some(2),
            })
            .collect(),
        routes: routes
            .iter()
            .map(|r| RouteEntry { dst: r.dst.to_string(), gw: r.gw.map(|g| g.to_string()), extra: Default::default() })
            .collect(),
        dns: cfg.conf.dns.clone().filter(|d| !d.is_empty()).unwrap_or(ipam_dns),
    })
}

/// The pod's routes: a default route per family via its gateway (unless
/// `isDefaultGateway` is false), then the IPAM routes; a route without a
/// gateway uses its family's. Duplicates are dropped.
fn pod_routes(cfg: &Config, ips: &[PodIp], ipam_routes: &[RouteConf]) -> Vec<RouteConf> {
    let gw_of = |v6: bool| ips.iter().find(|i| i.ip.is_ipv6() == v6).and_then(|i| i.gateway);
    let mut out: Vec<RouteConf> = vec![];
    if cfg.conf.is_default_gateway {
        for fam in [Family::V4, Family::V6] {
            if let Some(gw) = gw_of(fam == Family::V6) {
                out.push(RouteConf { dst: fam.default_route(), gw: Some(gw) });
            }
        }
    }
    for r in ipam_routes {
        let v6 = r.dst.addr.is_ipv6();
        if !ips.iter().any(|i| i.ip.is_ipv6() == v6) {
            continue; // no address of that family: the route cannot work
        }
        let route = RouteConf { dst: r.dst, gw: r.gw.or_else(|| gw_of(v6)) };
        if !out.iter().any(|o| o.dst == route.dst) {
            out.push(route);
        }
    }
    out
}
