//! The routing task: a thread of its own (ferry-netlink's calls are
//! synchronous and its socket is bound to the namespace it was opened in)
//! that follows the catalog's Nodes and makes the kernel hold [`plan`]'s
//! state, by diff against what the kernel holds each pass.
//!
//! Passes run when a Node changed, and every [`RESYNC`] (a failed request
//! is retried, and a route someone deleted comes back). Before the catalog
//! is ready, or while this node's own Node or underlay device is unknown,
//! nothing is changed: routes from an earlier run keep carrying traffic.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_netlink::{Netlink, Netns, RouteEntry, VxlanSpec};
use ferry_state::{Catalog, Changes, Snapshot};
use ipnetwork::IpNetwork;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    diff_fdb, diff_neighbours, diff_routes, plan, pod_cidrs, pod_mtu, Config, Dev, Family, Mode, PeerMode, RouteOp,
    Underlay,
};

/// How often a pass runs with no Node change.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How soon a pass that failed is retried.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("routing: {0}")]
    Netlink(#[from] ferry_netlink::Error),
    #[error("routing: the underlay device {name:?} does not exist")]
    NoUnderlay { name: String },
}

/// What the task did last, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub mode: Option<Mode>,
    pub underlay: Option<String>,
    pub underlay_mtu: Option<u32>,
    pub pod_mtu: Option<u32>,
    /// Ferry routes in the main table after the last pass.
    pub routes: usize,
    /// Per peer Node: how each family of its pod CIDRs is routed.
    pub peers: BTreeMap<String, BTreeMap<Family, PeerMode>>,
    /// Node data that could not be used, and routes left alone.
    pub issues: Vec<String>,
    pub passes: u64,
    /// Passes in which some request failed (each retried).
    pub failures: u64,
    pub last_error: Option<String>,
}

/// The task's status, shared with the HTTP listener.
#[derive(Debug, Default)]
pub struct Shared(pub Mutex<Status>);

impl Shared {
    pub fn snapshot(&self) -> Status {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The routing metrics, read from [`Shared`] at scrape time.
#[derive(Debug)]
pub struct RoutingCollector(pub Arc<Shared>);

impl Collector for RoutingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let enc = encoder.encode_descriptor(
            "routes_programmed",
            "Routes to other nodes' pod CIDRs (Ferry's route protocol) in the main table",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(s.routes as i64).encode(enc)?;
        let mut counts: BTreeMap<(PeerMode, Family), i64> = BTreeMap::new();
        for m in [PeerMode::HostGw, PeerMode::Vxlan] {
            for f in Family::ALL {
                counts.insert((m, f), 0);
            }
        }
        for modes in s.peers.values() {
            for (f, m) in modes {
                *counts.entry((*m, *f)).or_default() += 1;
            }
        }
        let mut enc = encoder.encode_descriptor(
            "routing_peers",
            "Peer nodes by how their pod CIDR of a family is reached",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((m, f), n) in counts {
            let labels = vec![("mode".to_string(), m.as_str().to_string()), ("family".to_string(), f.as_str().into())];
            ConstGauge::new(n).encode(enc.encode_family(&labels)?)?;
        }
        let enc = encoder.encode_descriptor(
            "routing_failures",
            "Routing passes in which a netlink request failed (retried)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(s.failures).encode(enc)?;
        Ok(())
    }
}

/// Everything the task needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub node_name: String,
    /// The namespace to route in (`--netns`); None: the agent's own.
    pub netns: Option<PathBuf>,
    /// `--cni-mtu`, if given.
    pub cni_mtu: Option<u32>,
    /// The egress masquerade, applied on the uplink each pass finds.
    pub masquerade: Option<(crate::masq::Config, Arc<crate::masq::Shared>)>,
}

/// Starts the routing thread. The pod MTU that fits the paths pods may take
/// is published on `mtu` once this node's Node is known (for the conflist).
pub fn spawn(
    settings: Settings,
    rx: watch::Receiver<Snapshot>,
    shared: Arc<Shared>,
    mtu: watch::Sender<Option<u32>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new().name("ferry-routing".into()).spawn(move || {
        let netns = match settings.netns.as_deref().map(Netns::open).transpose() {
            Ok(ns) => ns,
            Err(e) => {
                warn!(error = %e, "routing: cannot open the namespace; no routes");
                return;
            }
        };
        let _guard = match netns.as_ref().map(Netns::enter).transpose() {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "routing: cannot enter the namespace; no routes");
                return;
            }
        };
        let nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                warn!(error = %e, "routing: no netlink socket; no routes");
                return;
            }
        };
        run(&settings, &nl, rx, &shared, &mtu, &rt);
    })
}

fn run(
    settings: &Settings,
    nl: &Netlink,
    mut rx: watch::Receiver<Snapshot>,
    shared: &Shared,
    mtu: &watch::Sender<Option<u32>>,
    rt: &tokio::runtime::Handle,
) {
    let mut last: Option<Changes> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut masq = settings.masquerade.clone().map(|(cfg, shared)| crate::masq::Masquerade::new(cfg, shared));
    let mut wait = Duration::ZERO;
    loop {
        let woke = rt.block_on(async { tokio::time::timeout(wait, rx.changed()).await });
        if matches!(woke, Ok(Err(_))) {
            return; // the source is gone: the agent is stopping
        }
        let snap = rx.borrow_and_update().clone();
        wait = RESYNC;
        if !snap.ready {
            continue;
        }
        let cat = &snap.catalog;
        // A pass on a Node change, on the timer, and never skipped when the
        // change log cannot tell (None).
        let timer = woke.is_err();
        let nodes_changed =
            last.as_ref().is_none_or(|prev| cat.changes.since(prev).is_none_or(|c| !c.nodes.is_empty()));
        last = Some(cat.changes.clone());
        if !timer && !nodes_changed {
            continue;
        }
        match pass(settings, nl, cat, mtu, masq.as_mut()) {
            Ok(outcome) => {
                for i in outcome.issues.iter().filter(|i| !reported.contains(i)) {
                    warn!("routing: {i}");
                }
                reported = outcome.issues.clone();
                let mut s = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                s.passes += 1;
                s.mode = Some(settings.config.mode);
                if outcome.failed {
                    s.failures += 1;
                    wait = RETRY;
                }
                s.last_error = outcome.last_error.or(if outcome.failed { s.last_error.take() } else { None });
                s.issues = outcome.issues;
                if let Some(applied) = outcome.applied {
                    s.underlay = Some(applied.underlay.name.clone());
                    s.underlay_mtu = Some(applied.underlay.mtu);
                    s.routes = applied.routes;
                    s.peers = applied.peers;
                }
                s.pod_mtu = *mtu.borrow();
            }
            Err(e) => {
                warn!(error = %e, "routing pass failed; retrying");
                let mut s = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                s.failures += 1;
                s.last_error = Some(e.to_string());
                wait = RETRY;
            }
        }
    }
}

/// What a pass did.
struct Outcome {
    issues: Vec<String>,
    /// Some request failed (the rest were still made).
    failed: bool,
    last_error: Option<String>,
    /// None: nothing was planned (no own Node, no underlay): nothing touched.
    applied: Option<Applied>,
}

struct Applied {
    underlay: Underlay,
    routes: usize,
    peers: BTreeMap<String, BTreeMap<Family, PeerMode>>,
}

fn publish_mtu(tx: &watch::Sender<Option<u32>>, v: u32) {
    tx.send_if_modified(|m| {
        let changed = *m != Some(v);
        *m = Some(v);
        changed
    });
}

/// The underlay device: `--underlay-dev`, else the link holding one of this
/// node's addresses. None: not found (yet).
fn find_underlay(nl: &Netlink, cfg: &Config, own_ips: &[IpAddr]) -> Result<Option<Underlay>, Error> {
    let link = match &cfg.underlay_dev {
        Some(name) => Some(nl.link(name)?.ok_or_else(|| Error::NoUnderlay { name: name.clone() })?),
        None => {
            let addrs = nl.addrs(None)?;
            let index = own_ips.iter().find_map(|ip| addrs.iter().find(|a| a.ip == *ip).map(|a| a.index));
            match index {
                Some(i) => nl.links()?.into_iter().find(|l| l.index == i),
                None => None,
            }
        }
    };
    let Some(link) = link else { return Ok(None) };
    let subnets = nl
        .addrs(Some(link.index))?
        .iter()
        .filter(|a| !matches!(a.ip, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80))
        .filter_map(|a| IpNetwork::new(a.ip, a.prefix).ok())
        .filter_map(|n| IpNetwork::new(n.network(), n.prefix()).ok())
        .collect();
    Ok(Some(Underlay { index: link.index, name: link.name, mtu: link.mtu, subnets }))
}

fn pass(
    settings: &Settings,
    nl: &Netlink,
    cat: &Catalog,
    mtu: &watch::Sender<Option<u32>>,
    masq: Option<&mut crate::masq::Masquerade>,
) -> Result<Outcome, Error> {
    let cfg = &settings.config;
    let mut out = Outcome { issues: Vec::new(), failed: false, last_error: None, applied: None };
    let Some(own) = cat.node(&settings.node_name) else {
        out.issues
            .push(format!("this node's Node {} is not in the catalog; routes left as they are", settings.node_name));
        return Ok(out);
    };
    let (own_cidrs, own_issues) = pod_cidrs(own);
    out.issues.extend(own_issues);
    let has_v6 = own_cidrs.contains_key(&Family::Ipv6);
    // The conflist waits for this MTU: it is published even when the
    // underlay cannot be read (then from the 1500 assumed).
    let underlay = find_underlay(nl, cfg, &own.addresses);
    let underlay_mtu = underlay.as_ref().ok().and_then(|u| u.as_ref().map(|u| u.mtu));
    publish_mtu(mtu, pod_mtu(cfg.mode, underlay_mtu, has_v6, settings.cni_mtu));
    let underlay = underlay?;
    // The masquerade needs the uplink, not the routes: it runs in every mode.
    if let (Some(m), Some(u)) = (masq, underlay.as_ref()) {
        m.apply(nl, cat, own, u);
    }
    if cfg.mode == Mode::None {
        return Ok(out);
    }
    let Some(underlay) = underlay else {
        out.issues.push(format!(
            "no device holds this node's ({}) addresses {:?}; routes left as they are (--underlay-dev names one)",
            own.name, own.addresses
        ));
        return Ok(out);
    };
    let plan = plan(cfg, own, &underlay, &cat.nodes);
    out.issues.extend(plan.issues.iter().cloned());
    let fail = |out: &mut Outcome, e: ferry_netlink::Error| {
        warn!(error = %e, "routing request failed");
        out.failed = true;
        out.last_error = Some(e.to_string());
    };

    // 1. Tunnels (created on first need, kept afterwards), then their FDB
    //    and neighbour entries: a route must never point at a gateway the
    //    kernel cannot resolve (it would ARP into the tunnel and drop).
    let mut tunnel_index: BTreeMap<Family, u32> = BTreeMap::new();
    let mut existing: BTreeMap<Family, u32> = BTreeMap::new();
    for f in Family::ALL {
        let spec = plan.tunnels.get(&f).map(|t| VxlanSpec {
            name: f.vxlan_dev().to_string(),
            vni: cfg.vni,
            port: cfg.port,
            local: t.local,
            underlay: underlay.index,
            mtu: t.mtu,
            mac: t.mac,
        });
        match spec {
            Some(spec) => match nl.ensure_vxlan(&spec) {
                Ok((link, created)) => {
                    if created {
                        info!(dev = %spec.name, vni = spec.vni, port = spec.port, local = %spec.local, mtu = spec.mtu, "VXLAN device created");
                    }
                    if let Some(addr) = plan.tunnels[&f].address {
                        let prefix = if addr.is_ipv6() { 128 } else { 32 };
                        if let Err(e) = nl.add_addr(link.index, addr, prefix) {
                            fail(&mut out, e);
                        }
                    }
                    tunnel_index.insert(f, link.index);
                    existing.insert(f, link.index);
                }
                Err(e) => fail(&mut out, e),
            },
            // Not needed now; one left from before still gets its entries
            // cleaned below.
            None => match nl.vxlan(f.vxlan_dev()) {
                Ok(Some((link, _))) => {
                    existing.insert(f, link.index);
                }
                Ok(None) => {}
                Err(e) => fail(&mut out, e),
            },
        }
    }
    let mut fdb_dels = Vec::new();
    let mut neigh_dels = Vec::new();
    for (f, index) in &existing {
        let (no_fdb, no_neigh) = (Default::default(), Default::default());
        let (want_fdb, want_neigh) = plan.tunnels.get(f).map_or((&no_fdb, &no_neigh), |t| (&t.fdb, &t.neighbours));
        match nl.fdb(*index) {
            Ok(current) => {
                let (puts, dels) = diff_fdb(want_fdb, &current);
                for e in puts {
                    debug!(dev = f.vxlan_dev(), mac = %ferry_netlink::fmt_mac(&e.mac), dst = %e.dst, "fdb put");
                    if let Err(err) = nl.put_fdb(*index, &e) {
                        fail(&mut out, err);
                    }
                }
                fdb_dels.extend(dels.into_iter().map(|e| (*index, e)));
            }
            Err(e) => fail(&mut out, e),
        }
        match nl.neighbours(*index) {
            Ok(current) => {
                let (puts, dels) = diff_neighbours(want_neigh, &current);
                for (ip, mac) in puts {
                    debug!(dev = f.vxlan_dev(), %ip, mac = %ferry_netlink::fmt_mac(&mac), "neighbour put");
                    if let Err(err) = nl.put_neighbour(*index, ip, mac) {
                        fail(&mut out, err);
                    }
                }
                neigh_dels.extend(dels.into_iter().map(|ip| (*index, ip)));
            }
            Err(e) => fail(&mut out, e),
        }
    }

    // 2. Routes: adds and in-place replacements, then deletions.
    let mut peers = plan.peers.clone();
    let want: Vec<RouteEntry> = plan
        .routes
        .iter()
        .filter_map(|r| {
            let oif = match r.dev {
                Dev::Underlay => Some(underlay.index),
                Dev::Vxlan(f) => tunnel_index.get(&f).copied(),
            };
            if oif.is_none() {
                // Its tunnel could not be made (reported above).
                if let Some(m) = peers.get_mut(&r.node) {
                    m.remove(&Family::of(r.dst.ip()));
                }
            }
            oif.map(|oif| r.entry(oif))
        })
        .collect();
    peers.retain(|_, m| !m.is_empty());
    let current = nl.route_entries()?;
    let (ops, conflicts) = diff_routes(&want, &current);
    out.issues.extend(conflicts);
    let (dels, puts): (Vec<RouteOp>, Vec<RouteOp>) = ops.into_iter().partition(|o| matches!(o, RouteOp::Delete(_)));
    for op in puts.iter().chain(&dels) {
        let r = match op {
            RouteOp::Add(r) => nl.put_route(r, false).map(|()| info!(route = %r, "route added")),
            RouteOp::Replace(r) => nl.put_route(r, true).map(|()| info!(route = %r, "route replaced")),
            RouteOp::Delete(r) => nl.del_route(r).map(|_| info!(route = %r, "stale route deleted")),
        };
        if let Err(e) = r {
            fail(&mut out, e);
        }
    }

    // 3. Entries no route needs any more.
    for (index, e) in fdb_dels {
        match nl.del_fdb(index, &e) {
            Ok(_) => info!(mac = %ferry_netlink::fmt_mac(&e.mac), dst = %e.dst, "stale fdb entry deleted"),
            Err(err) => fail(&mut out, err),
        }
    }
    for (index, ip) in neigh_dels {
        match nl.del_neighbour(index, ip) {
            Ok(_) => info!(%ip, "stale neighbour entry deleted"),
            Err(err) => fail(&mut out, err),
        }
    }
    let routes = nl.route_entries()?.iter().filter(|r| r.protocol == super::ROUTE_PROTOCOL).count();
    out.applied = Some(Applied { underlay, routes, peers });
    Ok(out)
}
