//! CHECK: is the attachment still what ADD's result (prevResult) says? The
//! interface in the sandbox, its MAC, addresses and routes, the host end on
//! the bridge, and the IPAM reservations.

use std::net::IpAddr;

use ferry_netlink::Netlink;

use super::open_netns;
use crate::delegate::Delegate;
use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::ipam::{self, cidr::Cidr};
use crate::names;
use crate::netconf::{Config, Ipam};
use crate::result::CniResult;

fn failed(msg: String) -> CniError {
    CniError::new(Code::CheckFailed, msg)
}

pub fn run(cfg: &Config, env: &Env) -> Result<()> {
    let prev = cfg
        .conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult (the result of ADD)"))?;
    let prev = CniResult::from_value(prev)?;
    let netns = open_netns(&env.netns)?;

    // The sandbox interface of this attachment and the addresses on it.
    let pod_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| failed(format!("prevResult has no interface {} in a sandbox", env.ifname)))?;
    let mut ips: Vec<Cidr> = vec![];
    for ip in prev.ips.iter().filter(|i| i.interface == Some(pod_idx)) {
        ips.push(ip.address.parse().map_err(|e| failed(format!("prevResult address {:?}: {e}", ip.address)))?);
    }

    match &cfg.ipam {
        Ipam::Builtin(ic) => {
            let addrs: Vec<IpAddr> = ips.iter().map(|c| c.addr).collect();
            ipam::check(ic, &cfg.conf.name, &env.container_id, &env.ifname, &addrs)?;
        }
        Ipam::Delegated(t) => {
            Delegate::new(t, env, &cfg.version, &cfg.raw)?.exec(Command::Check)?;
        }
    }

    let nl = Netlink::open()?;
    let bridge =
        nl.link(&cfg.conf.bridge)?.ok_or_else(|| failed(format!("bridge {} does not exist", cfg.conf.bridge)))?;
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    let host = nl.link(&host_name)?.ok_or_else(|| failed(format!("host interface {host_name} does not exist")))?;
    if host.controller != Some(bridge.index) {
        return Err(failed(format!("host interface {host_name} is not attached to bridge {}", cfg.conf.bridge)));
    }

    let pod_nl = nl.open_in(&netns)?;
    let pod = pod_nl
        .link(&env.ifname)?
        .ok_or_else(|| failed(format!("interface {} not found in {}", env.ifname, env.netns)))?;
    if !pod.up {
        return Err(failed(format!("interface {} in {} is down", env.ifname, env.netns)));
    }
    if let Some(want) = &prev.interfaces[pod_idx].mac {
        let have = pod.mac.as_ref().map(names::mac_string).unwrap_or_default();
        if !have.eq_ignore_ascii_case(want) {
            return Err(failed(format!("interface {} has MAC {have}, prevResult says {want}", env.ifname)));
        }
    }
    let addrs = pod_nl.addrs(Some(pod.index))?;
    for c in &ips {
        if !addrs.iter().any(|a| a.ip == c.addr && a.prefix == c.prefix) {
            return Err(failed(format!("address {c} is missing from {} in {}", env.ifname, env.netns)));
        }
    }
    let v4 = pod_nl.routes(false)?;
    let v6 = pod_nl.routes(true)?;
    for r in &prev.routes {
        let dst: Cidr = r.dst.parse().map_err(|e| failed(format!("prevResult route {:?}: {e}", r.dst)))?;
        let gw: Option<IpAddr> = r.gw.as_deref().and_then(|g| g.parse().ok());
        let table = if dst.addr.is_ipv6() { &v6 } else { &v4 };
        let found =
            table.iter().any(|t| t.dst == dst.network() && t.prefix == dst.prefix && (gw.is_none() || t.gateway == gw));
        if !found {
            return Err(failed(format!("route {} via {:?} is missing in {}", r.dst, r.gw, env.netns)));
        }
    }
    Ok(())
}
