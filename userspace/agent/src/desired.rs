//! Catalog -> desired frontends: what the maps should hold, computed without
//! touching them.
//!
//! One frontend per (Service, port, VIP): the ClusterIPs (one per family for
//! dual-stack), ExternalIPs and LoadBalancer ingress IPs. Services handed to
//! another proxy by label get none ([`is_ours`]). Backends come from the
//! Service's EndpointSlices of the VIP's family, each at the port its own
//! slice gives for the Service port ([`EndpointSlice::port_for`]), with the
//! EndpointSlice conditions applied the way kube-proxy applies them
//! (pkg/proxy/topology.go, `CategorizeEndpoints`; the conditions as
//! pkg/proxy/endpoint.go `IsReady` / `IsServing` / `IsTerminating` report
//! them, straight from the slice):
//! - `ready` endpoints take new flows, whatever `serving` and `terminating`
//!   say (with `publishNotReadyAddresses` the EndpointSlice controller sets
//!   `ready` on unready and terminating pods, and kube-proxy uses them);
//! - when no endpoint is ready, the `serving && terminating` ones take new
//!   flows instead (KEP-1669, "ProxyTerminatingEndpoints");
//! - every other endpoint that is still serving or terminating takes no new
//!   flow but stays in the map (state TERMINATING), so the flows it already
//!   has keep their backend, as conntrack keeps them for kube-proxy;
//! - an endpoint neither ready, serving nor terminating is gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_state::{
    AddressType, Catalog, Endpoint, EndpointSlice, ObjectKey, Protocol, Service, ServicePort, ServiceType,
};

/// The key of a frontend, in host order; `Ord` so that syncs walk frontends
/// deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

/// One backend address of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl BackendAddr {
    /// The bytes its Maglev permutation is derived from: stable across
    /// agents, independent of the id allocated to it.
    pub fn identity(&self) -> Vec<u8> {
        let mut v = match self.ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        v.extend_from_slice(&self.port.to_be_bytes());
        v
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// Whether a backend takes new flows (it is in the Maglev table) or only
/// keeps the flows it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    Active,
    Terminating,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// The Service and port name this frontend came from (for names in
    /// ferryctl and metrics).
    pub service: ObjectKey,
    pub port_name: String,
    pub backends: BTreeMap<BackendAddr, BackendState>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
}

impl DesiredFrontend {
    pub fn active_count(&self) -> usize {
        self.backends.values().filter(|s| **s == BackendState::Active).count()
    }
}

/// What the translation needs to know about this node and this agent.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// `--node-name`: endpoints whose `nodeName` equals it are local.
    /// Without it, no endpoint is local, so a Local-policy Service has no
    /// backends here (the Kubernetes behaviour for a node without local
    /// endpoints) rather than silently becoming Cluster.
    pub node_name: Option<String>,
    /// `--service-proxy-name`: the `service.kubernetes.io/service-proxy-name`
    /// value this agent answers to. See [`is_ours`].
    pub service_proxy_name: Option<String>,
    /// This node's `topology.kubernetes.io/zone`, from its Node object
    /// (the reconciler keeps it current); topology hints match against it.
    pub zone: Option<String>,
}

/// Whether this agent programs `svc`, by the labels that hand a Service to
/// someone else (kubernetes docs/dev/sig-network/service-proxy.md, "Ignored
/// Services/Endpoints"):
/// - `service.kubernetes.io/headless` present: never. kube-proxy's informers
///   select `!service.kubernetes.io/headless` (cmd/kube-proxy/app/server.go).
/// - `service.kubernetes.io/service-proxy-name` present: only when its value
///   is this agent's `--service-proxy-name`. kube-proxy has no such flag and
///   selects `!service.kubernetes.io/service-proxy-name`, which is the
///   behaviour without the flag. With the flag, Ferry serves only the
///   Services labelled with its name, as Cilium's `k8s-service-proxy-name`
///   does (pkg/k8s/utils/utils.go, `GetServiceAndEndpointListOptionsModifier`:
///   label `= name` instead of `!label`), so that several proxies can split
///   a cluster's Services between them.
///
/// An empty `--service-proxy-name` counts as unset (an empty environment
/// variable from a ConfigMap means "no name", not "the empty name").
/// DNS is not concerned: it answers for these Services as CoreDNS does.
pub fn is_ours(svc: &Service, service_proxy_name: Option<&str>) -> bool {
    if svc.headless_label {
        return false;
    }
    match (service_proxy_name.filter(|n| !n.is_empty()), svc.proxy_name.as_deref()) {
        (None, label) => label.is_none(),
        (Some(mine), label) => label == Some(mine),
    }
}

/// A frontend claimed by two Services (the same VIP, port and protocol):
/// the first in catalog order keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub frontend: Frontend,
    pub kept: ObjectKey,
    pub ignored: ObjectKey,
}

/// The desired frontends of the whole catalog.
pub fn desired(catalog: &Catalog, node: &NodeContext) -> (BTreeMap<Frontend, DesiredFrontend>, Vec<Conflict>) {
    let mut out: BTreeMap<Frontend, DesiredFrontend> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for svc in catalog.services.values() {
        for (fe, d) in service_frontends(svc, catalog.slices_of(&svc.key), node) {
            match out.get(&fe) {
                Some(existing) => {
                    conflicts.push(Conflict { frontend: fe, kept: existing.service.clone(), ignored: svc.key.clone() })
                }
                None => {
                    out.insert(fe, d);
                }
            }
        }
    }
    (out, conflicts)
}

/// The frontends of one Service. Headless and ExternalName Services have
/// none (DNS serves them), nor have Services labelled for another proxy
/// ([`is_ours`]); NodePorts are the uplink program's business.
pub fn service_frontends(
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    node: &NodeContext,
) -> Vec<(Frontend, DesiredFrontend)> {
    if svc.headless
        || svc.service_type == ServiceType::ExternalName
        || !is_ours(svc, node.service_proxy_name.as_deref())
    {
        return Vec::new();
    }
    let affinity_timeout_s =
        svc.session_affinity.map(|d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1));
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in svc.cluster_ips.iter().chain(&svc.external_ips).chain(&svc.load_balancer_ips) {
        if !vips.contains(ip) {
            vips.push(*ip);
        }
    }
    let mut out = Vec::new();
    for port in &svc.ports {
        // Backends depend on the family only, not on which VIP.
        let mut by_family: [Option<BTreeMap<BackendAddr, BackendState>>; 2] = [None, None];
        for vip in &vips {
            let fam = usize::from(vip.is_ipv6());
            let backends =
                by_family[fam].get_or_insert_with(|| backends_for(svc, port, slices, vip.is_ipv6(), node)).clone();
            out.push((
                Frontend { vip: *vip, port: port.port, proto: port.protocol },
                DesiredFrontend {
                    service: svc.key.clone(),
                    port_name: port.name.clone(),
                    backends,
                    affinity_timeout_s,
                    local_only: svc.internal_traffic_local,
                },
            ));
        }
    }
    out
}

/// How kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go) sees one
/// endpoint; ordered worst to best, so that the best of several listings of
/// one backend wins (`max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    /// Serving or terminating but not ready, and not both: kube-proxy never
    /// sends it new flows, not even as a fallback. Kept for the flows it
    /// already has.
    KeepOnly,
    /// `serving && terminating`: takes new flows only when no endpoint is
    /// ready.
    ServingTerminating,
    /// `ready`: takes new flows.
    Ready,
}

/// `None`: not in the maps at all (neither ready, serving nor terminating).
fn category(ep: &Endpoint) -> Option<Category> {
    if ep.ready {
        // kube-proxy's first filter is `ep.IsReady()` alone: serving and
        // terminating do not matter for a ready endpoint.
        Some(Category::Ready)
    } else if ep.serving && ep.terminating {
        Some(Category::ServingTerminating)
    } else if ep.serving || ep.terminating {
        Some(Category::KeepOnly)
    } else {
        None
    }
}

/// Which endpoints a Service port's new flows may use on this node, from
/// the EndpointSlice hints: kube-proxy's `topologyModeFromHints`
/// (pkg/proxy/topology.go). Hints are followed only when every ready
/// endpoint carries them and some are for this node (or its zone);
/// otherwise every endpoint is used, as a partly hinted or mismatched set
/// means the controller's allocation is not one this node can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    All,
    /// `trafficDistribution: PreferSameNode`: `hints.forNodes`.
    SameNode,
    /// `PreferClose` / topology-aware routing: `hints.forZones`.
    SameZone,
}

fn topology_mode<'a>(ready: impl Iterator<Item = &'a Endpoint>, node: &NodeContext) -> Topology {
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    let mut any = false;
    for ep in ready {
        any = true;
        if ep.node_hints().is_empty() {
            all_node_hints = false;
        } else if node.node_name.as_ref().is_some_and(|n| names(ep.node_hints(), n)) {
            for_node = true;
        }
        if ep.zone_hints().is_empty() {
            all_zone_hints = false;
        } else if node.zone.as_ref().is_some_and(|z| names(ep.zone_hints(), z)) {
            for_zone = true;
        }
    }
    if !any {
        Topology::All
    } else if all_node_hints && for_node {
        Topology::SameNode
    } else if all_zone_hints && for_zone {
        Topology::SameZone
    } else {
        Topology::All
    }
}

/// Whether a hint list names `name`.
fn names(hints: &[Arc<str>], name: &str) -> bool {
    hints.iter().any(|h| &**h == name)
}

/// kube-proxy's `availableForTopology`.
fn available(ep: &Endpoint, mode: Topology, node: &NodeContext) -> bool {
    match mode {
        Topology::All => true,
        Topology::SameNode => node.node_name.as_ref().is_some_and(|n| names(ep.node_hints(), n)),
        Topology::SameZone => node.zone.as_ref().is_some_and(|z| names(ep.zone_hints(), z)),
    }
}

fn backends_for(
    svc: &Service,
    port: &ServicePort,
    slices: &[Arc<EndpointSlice>],
    v6: bool,
    node: &NodeContext,
) -> BTreeMap<BackendAddr, BackendState> {
    let want = if v6 { AddressType::IPv6 } else { AddressType::IPv4 };
    // Candidates by (address, port), as kube-proxy keys endpoints
    // (`IP:port`, endpointslicecache.go `addEndpoints`): the same pod in two
    // slices with two port numbers (a rolling update that changed the
    // container port) is two backends. The same (address, port) listed by
    // two slices (a pod moving between slices) is one backend in the best
    // category either listing gives it; kube-proxy keeps whichever slice it
    // happens to read first, which is not a rule worth copying.
    let mut cands: BTreeMap<BackendAddr, Category> = BTreeMap::new();
    // Topology applies to cluster-wide endpoints; internalTrafficPolicy:
    // Local uses the local ones alone instead (kube-proxy:
    // `UsesClusterEndpoints`).
    let topology = if svc.internal_traffic_local {
        Topology::All
    } else {
        let ready = slices
            .iter()
            .filter(|s| s.address_type == want && s.port_for(port).is_some())
            .flat_map(|s| s.endpoints.iter())
            .filter(|ep| ep.ready);
        topology_mode(ready, node)
    };
    for slice in slices.iter().filter(|s| s.address_type == want) {
        // A slice without this port contributes no endpoints to it.
        let Some(target) = slice.port_for(port) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(mut cat) = category(ep) else {
                continue;
            };
            // Not for this node's topology: no new flows from here, but its
            // flows from here keep it (hints move without breaking them).
            if !available(ep, topology, node) {
                cat = Category::KeepOnly;
            }
            // internalTrafficPolicy: Local applies the same categorisation
            // to the local endpoints alone (CategorizeEndpoints'
            // localEndpoints: local ready, else local serving-terminating).
            if svc.internal_traffic_local
                && (node.node_name.is_none() || ep.node_name.as_deref() != node.node_name.as_deref())
            {
                continue;
            }
            for ip in ep.addresses().filter(|ip| ip.is_ipv6() == v6) {
                let c = cands.entry(BackendAddr { ip, port: target }).or_insert(cat);
                *c = (*c).max(cat);
            }
        }
    }
    let any_ready = cands.values().any(|c| *c == Category::Ready);
    cands
        .into_iter()
        .map(|(addr, c)| {
            let active = match c {
                Category::Ready => true,
                Category::ServingTerminating => !any_ready,
                Category::KeepOnly => false,
            };
            (addr, if active { BackendState::Active } else { BackendState::Terminating })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_state::{Endpoint, EndpointExtra, EndpointPort, TargetPort};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(name: &str, vips: &[&str], ports: &[(&str, Protocol, u16, TargetPort)]) -> Service {
        Service {
            key: ObjectKey::new("default", name),
            service_type: ServiceType::ClusterIp,
            cluster_ips: vips.iter().map(|s| ip(s)).collect(),
            headless: false,
            external_name: None,
            ports: ports
                .iter()
                .map(|(n, proto, p, t)| ServicePort {
                    name: n.to_string(),
                    protocol: *proto,
                    port: *p,
                    target_port: t.clone(),
                    node_port: None,
                })
                .collect(),
            external_ips: Box::default(),
            load_balancer_ips: Box::default(),
            session_affinity: None,
            internal_traffic_local: false,
            external_traffic_local: false,
            publish_not_ready_addresses: false,
            proxy_name: None,
            headless_label: false,
        }
    }

    /// (address, ready, serving, terminating, node)
    type Ep<'a> = (&'a str, bool, bool, bool, &'a str);

    /// A slice whose ports are all TCP: (name, number).
    fn slice(svc: &str, family: AddressType, ports: &[(&str, u16)], eps: &[Ep<'_>]) -> Arc<EndpointSlice> {
        let ports: Vec<(&str, Protocol, u16)> = ports.iter().map(|(n, p)| (*n, TCP, *p)).collect();
        slice_proto(svc, family, &ports, eps)
    }

    /// A slice with ports (name, protocol, number), as the EndpointSlice
    /// controller writes them: the Service port's name and protocol, the
    /// number resolved for this slice's pods.
    fn slice_proto(
        svc: &str,
        family: AddressType,
        ports: &[(&str, Protocol, u16)],
        eps: &[Ep<'_>],
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            key: ObjectKey::new("default", format!("{svc}-x")),
            service: ObjectKey::new("default", svc),
            address_type: family,
            ports: ports
                .iter()
                .map(|(n, proto, p)| EndpointPort { name: n.to_string(), protocol: *proto, port: *p })
                .collect(),
            endpoints: eps
                .iter()
                .map(|(a, r, s, t, n)| Endpoint {
                    ready: *r,
                    serving: *s,
                    terminating: *t,
                    node_name: (!n.is_empty()).then(|| Arc::from(*n)),
                    ..Endpoint::new(ip(a))
                })
                .collect(),
        })
    }

    fn backends(d: &DesiredFrontend) -> Vec<String> {
        d.backends.iter().map(|(a, s)| format!("{a} {}", if *s == BackendState::Active { "A" } else { "T" })).collect()
    }

    fn run(s: &Service, slices: &[Arc<EndpointSlice>], node: Option<&str>) -> Vec<(String, Vec<String>)> {
        let ctx = NodeContext { node_name: node.map(str::to_string), ..NodeContext::default() };
        service_frontends(s, slices, &ctx)
            .into_iter()
            .map(|(fe, d)| (format!("{}:{}/{}", fe.vip, fe.port, fe.proto.as_str()), backends(&d)))
            .collect()
    }

    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;
    const V4: AddressType = AddressType::IPv4;
    const V6: AddressType = AddressType::IPv6;

    struct Case<'a> {
        what: &'a str,
        svc: Service,
        slices: Vec<Arc<EndpointSlice>>,
        node: Option<&'a str>,
        want: Vec<(&'a str, Vec<&'a str>)>,
    }

    fn check(cases: Vec<Case<'_>>) {
        for c in cases {
            let got = run(&c.svc, &c.slices, c.node);
            let want: Vec<(String, Vec<String>)> =
                c.want.iter().map(|(f, b)| (f.to_string(), b.iter().map(|s| s.to_string()).collect())).collect();
            assert_eq!(got, want, "case: {}", c.what);
        }
    }

    #[test]
    fn endpoint_conditions() {
        let http = || svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Number(8080))]);
        check(vec![
            // Plain: ready endpoints, slice port named after the Service port.
            Case {
                what: "ready endpoints take new flows",
                svc: http(),
                slices: vec![slice(
                    "web",
                    V4,
                    &[("http", 8080)],
                    &[("10.244.0.2", true, true, false, ""), ("10.244.0.3", true, true, false, "")],
                )],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.3:8080 A"])],
            },
            // A terminating (still serving) endpoint keeps its flows but gets
            // no new ones while another is ready.
            Case {
                what: "terminating kept as TERMINATING while one is ready",
                svc: http(),
                slices: vec![slice(
                    "web",
                    V4,
                    &[("http", 8080)],
                    &[("10.244.0.2", true, true, false, ""), ("10.244.0.3", false, true, true, "")],
                )],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.3:8080 T"])],
            },
            // Nothing ready: serving-terminating endpoints take new flows; a
            // terminating one that stopped serving only drains.
            Case {
                what: "serving-terminating used when none is ready",
                svc: http(),
                slices: vec![slice(
                    "web",
                    V4,
                    &[("http", 8080)],
                    &[("10.244.0.3", false, true, true, ""), ("10.244.0.4", false, false, true, "")],
                )],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.3:8080 A", "10.244.0.4:8080 T"])],
            },
            // Nothing ready and nothing terminating: a serving-but-unready
            // endpoint is no fallback (kube-proxy rejects), it only keeps
            // its flows; the frontend has no active backend (RST).
            Case {
                what: "serving but not ready nor terminating is no fallback",
                svc: http(),
                slices: vec![slice("web", V4, &[("http", 8080)], &[("10.244.0.3", false, true, false, "")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.3:8080 T"])],
            },
            // Not ready, not serving, not terminating: removed entirely.
            Case {
                what: "unready is gone",
                svc: http(),
                slices: vec![slice("web", V4, &[("http", 8080)], &[("10.244.0.5", false, false, false, "")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // publishNotReadyAddresses: the controller says ready on an
            // unready pod (serving false) and a terminating one; both take
            // new flows (kube-proxy filters on IsReady alone).
            Case {
                what: "ready wins over serving false and terminating",
                svc: http(),
                slices: vec![slice(
                    "web",
                    V4,
                    &[("http", 8080)],
                    &[
                        ("10.244.0.6", true, false, false, ""),
                        ("10.244.0.7", true, false, true, ""),
                        ("10.244.0.8", true, true, true, ""),
                    ],
                )],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.6:8080 A", "10.244.0.7:8080 A", "10.244.0.8:8080 A"])],
            },
            // No slices at all: the frontend exists with no backends (reject).
            Case {
                what: "no endpoints",
                svc: http(),
                slices: vec![],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // IPv6 slices do not feed an IPv4 VIP.
            Case {
                what: "family must match",
                svc: http(),
                slices: vec![slice("web", V6, &[("http", 8080)], &[("fd00::2", true, true, false, "")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // Dual-stack: one frontend per family, each with its own family's endpoints.
            Case {
                what: "dual stack",
                svc: svc("web", &["10.96.0.10", "fd00:96::10"], &[("http", TCP, 80, TargetPort::Number(8080))]),
                slices: vec![
                    slice("web", V4, &[("http", 8080)], &[("10.244.0.2", true, true, false, "")]),
                    slice("web", V6, &[("http", 8080)], &[("fd00::2", true, true, false, "")]),
                ],
                node: None,
                want: vec![
                    ("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A"]),
                    ("fd00:96::10:80/tcp", vec!["[fd00::2]:8080 A"]),
                ],
            },
            // The same endpoint in two slices (rollover) appears once, in the
            // better of its two categories.
            Case {
                what: "duplicate endpoint across slices",
                svc: http(),
                slices: vec![
                    slice("web", V4, &[("http", 8080)], &[("10.244.0.2", false, true, true, "")]),
                    slice("web", V4, &[("http", 8080)], &[("10.244.0.2", true, true, false, "")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A"])],
            },
            // internalTrafficPolicy: Local categorises the local endpoints
            // alone: a local serving-terminating one is used although a
            // remote one is ready (CategorizeEndpoints' localEndpoints).
            Case {
                what: "local policy falls back to local serving-terminating",
                svc: {
                    let mut s = http();
                    s.internal_traffic_local = true;
                    s
                },
                slices: vec![slice(
                    "web",
                    V4,
                    &[("http", 8080)],
                    &[("10.244.0.2", false, true, true, "node-a"), ("10.244.1.2", true, true, false, "node-b")],
                )],
                node: Some("node-a"),
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A"])],
            },
        ]);
    }

    /// Every combination of the three conditions, each true, false or
    /// absent, through the YAML conversion (so the API's defaults for absent
    /// values are part of what is tested), against kube-proxy's
    /// categorisation (pkg/proxy/topology.go `CategorizeEndpoints`, with the
    /// conditions read as pkg/proxy/endpointslicecache.go
    /// `newEndpointSliceInfo` does: ready and serving absent = true,
    /// terminating absent = false):
    /// - `IsReady()`: new flows (A);
    /// - else `IsServing() && IsTerminating()`: new flows only when nothing
    ///   is ready (A alone, T beside a ready peer);
    /// - else serving or terminating: no new flows, existing ones kept (T);
    /// - else gone (-).
    ///
    /// Each row: (ready, serving, terminating), the endpoint's state beside a
    /// ready peer, its state alone.
    #[test]
    fn every_condition_combination_follows_kube_proxy() {
        const T_: Option<bool> = Some(true);
        const F_: Option<bool> = Some(false);
        const N_: Option<bool> = None;
        type Row = (Option<bool>, Option<bool>, Option<bool>, &'static str, &'static str);
        let rows: &[Row] = &[
            // ready: true. kube-proxy's first filter is IsReady() alone, so
            // serving and terminating never matter.
            // A ready, serving, running pod: the normal case.
            (T_, T_, F_, "A", "A"),
            // publishNotReadyAddresses on an unready pod (the controller sets
            // ready: true, serving: false): used, as kube-proxy does.
            (T_, F_, F_, "A", "A"),
            // publishNotReadyAddresses on a terminating pod that still serves.
            (T_, T_, T_, "A", "A"),
            // publishNotReadyAddresses on a terminating pod that stopped
            // serving: still ready, still used.
            (T_, F_, T_, "A", "A"),
            // ready and serving given, terminating absent (= false).
            (T_, T_, N_, "A", "A"),
            // ready, serving false, terminating absent.
            (T_, F_, N_, "A", "A"),
            // ready, serving absent (= true), running.
            (T_, N_, F_, "A", "A"),
            // ready, serving absent, terminating.
            (T_, N_, T_, "A", "A"),
            // only ready given: serving true, terminating false.
            (T_, N_, N_, "A", "A"),
            // ready absent (= true): each of the above again.
            // no conditions at all: a ready endpoint (API default).
            (N_, N_, N_, "A", "A"),
            // ready absent, serving true, running.
            (N_, T_, F_, "A", "A"),
            // ready absent, serving false, running: ready still wins.
            (N_, F_, F_, "A", "A"),
            // ready absent, serving, terminating.
            (N_, T_, T_, "A", "A"),
            // ready absent, not serving, terminating.
            (N_, F_, T_, "A", "A"),
            // ready absent, serving true, terminating absent.
            (N_, T_, N_, "A", "A"),
            // ready absent, serving false, terminating absent.
            (N_, F_, N_, "A", "A"),
            // ready absent, serving absent, running.
            (N_, N_, F_, "A", "A"),
            // ready absent, serving absent, terminating.
            (N_, N_, T_, "A", "A"),
            // ready: false.
            // Graceful termination: serving and terminating. A fallback for
            // new flows only when nothing is ready (KEP-1669).
            (F_, T_, T_, "T", "A"),
            // Serving, terminating absent (= false): not ready, not a
            // fallback; kept for its flows only.
            (F_, T_, N_, "T", "T"),
            // Serving, explicitly not terminating: the same.
            (F_, T_, F_, "T", "T"),
            // Terminating and no longer serving: drains its flows, never new
            // ones.
            (F_, F_, T_, "T", "T"),
            // An unready running pod: gone.
            (F_, F_, F_, "-", "-"),
            // Unready, not serving, terminating absent: gone.
            (F_, F_, N_, "-", "-"),
            // Serving absent (= true) and terminating: a fallback.
            (F_, N_, T_, "T", "A"),
            // Serving absent (= true), running: kept for its flows only.
            (F_, N_, F_, "T", "T"),
            // `conditions: {ready: false}` alone: serving defaults to true,
            // so it is kept for its flows, never a fallback.
            (F_, N_, N_, "T", "T"),
        ];
        assert_eq!(rows.len(), 27, "3 x 3 x 3 combinations");
        let cond = |r: Option<bool>, s: Option<bool>, t: Option<bool>| {
            let parts: Vec<String> = [("ready", r), ("serving", s), ("terminating", t)]
                .iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
                .collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!("\n  conditions: {{{}}}", parts.join(", "))
            }
        };
        let state = |r, s, t, peer: bool| -> String {
            let mut yaml = String::from(
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
                 spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
                 addressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\nendpoints:\n",
            );
            yaml.push_str(&format!("- addresses: [10.244.0.2]{}\n", cond(r, s, t)));
            if peer {
                yaml.push_str("- addresses: [10.244.0.9]\n  conditions: {ready: true}\n");
            }
            let cat = Catalog::from_yaml(&yaml).expect("fixture");
            let (fes, _) = desired(&cat, &NodeContext::default());
            let fe = fes.values().next().expect("one frontend");
            let me = BackendAddr { ip: ip("10.244.0.2"), port: 8080 };
            match fe.backends.get(&me) {
                Some(BackendState::Active) => "A",
                Some(BackendState::Terminating) => "T",
                None => "-",
            }
            .to_string()
        };
        for (r, s, t, beside_ready, alone) in rows {
            let what = format!("ready {r:?}, serving {s:?}, terminating {t:?}");
            assert_eq!(state(*r, *s, *t, true), *beside_ready, "{what}, beside a ready endpoint");
            assert_eq!(state(*r, *s, *t, false), *alone, "{what}, alone");
        }
    }

    /// Ports come from the slice that holds the endpoint, matched by the
    /// Service port's name and protocol (pkg/proxy/endpointslicecache.go,
    /// `endpointInfoByServicePort`), never from `targetPort`.
    #[test]
    fn ports_per_endpoint_slice() {
        let ready = |a| (a, true, true, false, "");
        let two_ports = || {
            svc(
                "example-custom-endpoints",
                &["10.96.0.10"],
                &[("port80", TCP, 80, TargetPort::Number(80)), ("port81", TCP, 81, TargetPort::Number(81))],
            )
        };
        let named = || svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Name("http".into()))]);
        let numeric = || svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Number(8080))]);
        check(vec![
            // test/e2e/network/endpointslice.go "should support a Service with
            // multiple ports specified in multiple EndpointSlices": one pod,
            // one slice per Service port, each with its own number. Port 80
            // reaches 8090 only and port 81 9090 only (a numeric-targetPort
            // fallback put 10.244.0.2:80 and :81 beside them).
            Case {
                what: "e2e: multiple ports in multiple slices",
                svc: two_ports(),
                slices: vec![
                    slice("example-custom-endpoints", V4, &[("port80", 8090)], &[ready("10.244.0.2")]),
                    slice("example-custom-endpoints", V4, &[("port81", 9090)], &[ready("10.244.0.2")]),
                ],
                node: None,
                want: vec![
                    ("10.96.0.10:80/tcp", vec!["10.244.0.2:8090 A"]),
                    ("10.96.0.10:81/tcp", vec!["10.244.0.2:9090 A"]),
                ],
            },
            // endpointslice.go "should support a Service with multiple
            // endpoint IPs specified in multiple EndpointSlices": two pods,
            // each in the slice of one Service port, both on 8090. Each
            // Service port reaches its own pod only.
            Case {
                what: "e2e: multiple IPs in multiple slices",
                svc: two_ports(),
                slices: vec![
                    slice("example-custom-endpoints", V4, &[("port80", 8090)], &[ready("10.244.0.2")]),
                    slice("example-custom-endpoints", V4, &[("port81", 8090)], &[ready("10.244.0.3")]),
                ],
                node: None,
                want: vec![
                    ("10.96.0.10:80/tcp", vec!["10.244.0.2:8090 A"]),
                    ("10.96.0.10:81/tcp", vec!["10.244.0.3:8090 A"]),
                ],
            },
            // A rolling update that changed the pods' container port (named
            // targetPort "http": 8080 before, 9090 after). The controller
            // puts old and new pods in separate slices, each with its number;
            // every pod is reached on its own port, the old terminating one
            // keeps its flows.
            Case {
                what: "rolling update: container port changed",
                svc: named(),
                slices: vec![
                    slice("web", V4, &[("http", 8080)], &[ready("10.244.0.2"), ("10.244.0.3", false, true, true, "")]),
                    slice("web", V4, &[("http", 9090)], &[ready("10.244.0.4")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.3:8080 T", "10.244.0.4:9090 A"])],
            },
            // A numeric targetPort edited from 8080 to 9090 while a slice
            // still says 8080: the slice is what kube-proxy follows until
            // the controller rewrites it, and so does Ferry.
            Case {
                what: "rolling update: numeric targetPort changed",
                svc: svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Number(9090))]),
                slices: vec![
                    slice("web", V4, &[("http", 8080)], &[ready("10.244.0.2")]),
                    slice("web", V4, &[("http", 9090)], &[ready("10.244.0.4")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.4:9090 A"])],
            },
            // One pod listed in both slices of a rollover with two numbers:
            // two backends (kube-proxy keys endpoints by IP:port).
            Case {
                what: "same pod, two port numbers",
                svc: named(),
                slices: vec![
                    slice("web", V4, &[("http", 8080)], &[ready("10.244.0.2")]),
                    slice("web", V4, &[("http", 9090)], &[ready("10.244.0.2")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.2:9090 A"])],
            },
            // A slice without any ports contributes nothing, whatever the
            // numeric targetPort says.
            Case {
                what: "slice without ports: no endpoints",
                svc: numeric(),
                slices: vec![slice("web", V4, &[], &[ready("10.244.0.2")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // A slice port named after the container port instead of the
            // Service port does not match (kube-proxy keys by Service port
            // name).
            Case {
                what: "slice port named after the target port: no match",
                svc: svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Name("web".into()))]),
                slices: vec![slice("web", V4, &[("web", 7070)], &[ready("10.244.0.2")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // A slice that lacks this port skips its endpoints; another
            // slice's still count.
            Case {
                what: "slice without this port is skipped",
                svc: named(),
                slices: vec![
                    slice("web", V4, &[("metrics", 9100)], &[ready("10.244.0.2")]),
                    slice("web", V4, &[("http", 8080)], &[ready("10.244.0.3")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.3:8080 A"])],
            },
            // Name and protocol both: a TCP slice port named like a UDP
            // Service port is not its port.
            Case {
                what: "protocol must match",
                svc: svc(
                    "dns",
                    &["10.96.0.53"],
                    &[("dns", UDP, 53, TargetPort::Number(53)), ("dns-tcp", TCP, 53, TargetPort::Number(53))],
                ),
                slices: vec![
                    slice_proto("dns", V4, &[("dns", TCP, 5300)], &[ready("10.244.0.2")]),
                    slice_proto("dns", V4, &[("dns", UDP, 5353), ("dns-tcp", TCP, 5354)], &[ready("10.244.0.3")]),
                ],
                node: None,
                want: vec![
                    ("10.96.0.53:53/udp", vec!["10.244.0.3:5353 A"]),
                    ("10.96.0.53:53/tcp", vec!["10.244.0.3:5354 A"]),
                ],
            },
            // A single unnamed Service port: the controller writes name "".
            Case {
                what: "unnamed port",
                svc: svc("web", &["10.96.0.10"], &[("", TCP, 80, TargetPort::Number(8080))]),
                slices: vec![slice("web", V4, &[("", 8080)], &[ready("10.244.0.2")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A"])],
            },
        ]);
    }

    /// Labels that hand a Service to someone else, through the YAML
    /// conversion: which Services get frontends, per `--service-proxy-name`.
    /// The Service stays in the catalog either way (DNS answers for it).
    #[test]
    fn labels_that_hand_a_service_elsewhere() {
        // (labels, --service-proxy-name, programmed)
        let rows: &[(&str, Option<&str>, bool)] = &[
            // No label, no flag: an ordinary Service.
            ("", None, true),
            // Another proxy's Service: kube-proxy's `!service-proxy-name`.
            ("service.kubernetes.io/service-proxy-name: other", None, false),
            // The label with an empty value is still the label.
            ("service.kubernetes.io/service-proxy-name: ''", None, false),
            // Without the flag Ferry has no name, so even "ferry" is not it.
            ("service.kubernetes.io/service-proxy-name: ferry", None, false),
            // The flag names Ferry: its Services are programmed...
            ("service.kubernetes.io/service-proxy-name: ferry", Some("ferry"), true),
            // ...another proxy's are not...
            ("service.kubernetes.io/service-proxy-name: other", Some("ferry"), false),
            // ...and neither are unlabelled ones (label = name, as Cilium's
            // k8s-service-proxy-name).
            ("", Some("ferry"), false),
            // An empty flag (empty env var) is no flag.
            ("", Some(""), true),
            ("service.kubernetes.io/service-proxy-name: ''", Some(""), false),
            // service.kubernetes.io/headless: never programmed.
            ("service.kubernetes.io/headless: ''", None, false),
            // Any value of it.
            ("service.kubernetes.io/headless: 'true'", None, false),
            // Not even when it is also labelled with Ferry's name.
            (
                "{service.kubernetes.io/headless: '', service.kubernetes.io/service-proxy-name: ferry}",
                Some("ferry"),
                false,
            ),
            // Unrelated labels change nothing.
            ("app: web", None, true),
        ];
        for (labels, flag, want) in rows {
            let labels = match *labels {
                "" => String::new(),
                l if l.starts_with('{') => format!(", labels: {l}"),
                l => format!(", labels: {{{l}}}"),
            };
            let yaml = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default{labels}}}\n\
                 spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 80}}]\nendpoints: [{{addresses: [10.244.0.2]}}]\n"
            );
            let cat = Catalog::from_yaml(&yaml).expect("fixture");
            assert!(cat.service("default", "web").is_some(), "{labels}: still in the catalog for DNS");
            let ctx = NodeContext { service_proxy_name: flag.map(str::to_string), ..NodeContext::default() };
            let (fes, _) = desired(&cat, &ctx);
            assert_eq!(!fes.is_empty(), *want, "labels {labels:?}, --service-proxy-name {flag:?}");
        }
    }

    #[test]
    fn policies_vips_and_kinds() {
        let eps = [("10.244.0.2", true, true, false, "node-a"), ("10.244.0.3", true, true, false, "node-b")];
        let slices = vec![slice("web", V4, &[("", 8080)], &eps)];
        let base = || svc("web", &["10.96.0.10"], &[("", TCP, 80, TargetPort::Number(8080))]);

        // internalTrafficPolicy: Local keeps only this node's endpoints.
        let mut local = base();
        local.internal_traffic_local = true;
        assert_eq!(run(&local, &slices, Some("node-a"))[0].1, vec!["10.244.0.2:8080 A"]);
        // ... and none when the agent does not know its node name.
        assert!(run(&local, &slices, None)[0].1.is_empty());
        let fe = &service_frontends(&local, &slices, &NodeContext::default())[0].1;
        assert!(fe.local_only);

        // ExternalIPs and LoadBalancer ingress IPs are frontends too; a
        // duplicate VIP is one frontend.
        let mut ext = base();
        ext.external_ips = [ip("192.0.2.10"), ip("10.96.0.10")].into();
        ext.load_balancer_ips = [ip("198.51.100.7")].into();
        let fes: Vec<String> = run(&ext, &slices, None).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fes, vec!["10.96.0.10:80/tcp", "192.0.2.10:80/tcp", "198.51.100.7:80/tcp"]);

        // Session affinity becomes a timeout on every frontend.
        let mut aff = base();
        aff.session_affinity = Some(Duration::from_secs(3));
        let fe = &service_frontends(&aff, &slices, &NodeContext::default())[0].1;
        assert_eq!(fe.affinity_timeout_s, Some(3));

        // Headless and ExternalName Services have no frontend.
        let mut headless = base();
        headless.headless = true;
        headless.cluster_ips = Box::default();
        assert!(run(&headless, &slices, None).is_empty());
        let mut en = base();
        en.service_type = ServiceType::ExternalName;
        assert!(run(&en, &slices, None).is_empty());

        // UDP and TCP on the same port number are two frontends.
        let dns = svc(
            "dns",
            &["10.96.0.53"],
            &[("dns", Protocol::Udp, 53, TargetPort::Number(53)), ("dns-tcp", TCP, 53, TargetPort::Number(53))],
        );
        let fes: Vec<String> = run(&dns, &[], None).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fes, vec!["10.96.0.53:53/udp", "10.96.0.53:53/tcp"]);
    }

    #[test]
    fn conflicting_vips_keep_the_first_service() {
        let mut cat = Catalog::default();
        let a = svc("a", &["10.96.0.10"], &[("", TCP, 80, TargetPort::Number(80))]);
        let b = svc("b", &["10.96.0.10"], &[("", TCP, 80, TargetPort::Number(80))]);
        cat.services.insert(a.key.clone(), Arc::new(a));
        cat.services.insert(b.key.clone(), Arc::new(b));
        let (fes, conflicts) = desired(&cat, &NodeContext::default());
        assert_eq!(fes.len(), 1);
        assert_eq!(&*fes.values().next().unwrap().service.name, "a");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(&*conflicts[0].ignored.name, "b");
    }

    /// Topology hints as kube-proxy follows them (pkg/proxy/topology.go,
    /// `topologyModeFromHints` / `availableForTopology`): this node is `n1`
    /// in zone `a`. Each row: endpoints as (address, zone hints, node
    /// hints), and which get new flows ("A") or only keep theirs ("T").
    #[test]
    fn topology_hints() {
        type Row<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a [&'a str], &'a [&'a str])], &'a [&'a str]);
        let rows: &[Row<'_>] = &[
            // PreferClose: every endpoint hinted, two for zone a -> only those.
            (
                "zone hints for this zone",
                Some("a"),
                &[("10.0.0.1", &["a"], &[]), ("10.0.0.2", &["b"], &[]), ("10.0.0.3", &["a"], &[])],
                &["10.0.0.1:8080 A", "10.0.0.2:8080 T", "10.0.0.3:8080 A"],
            ),
            // One endpoint without hints: hints are ignored, all serve.
            (
                "not every endpoint hinted",
                Some("a"),
                &[("10.0.0.1", &["a"], &[]), ("10.0.0.2", &[], &[])],
                &["10.0.0.1:8080 A", "10.0.0.2:8080 A"],
            ),
            // No hint names this zone: fall back to all.
            (
                "no hint for this zone",
                Some("c"),
                &[("10.0.0.1", &["a"], &[]), ("10.0.0.2", &["b"], &[])],
                &["10.0.0.1:8080 A", "10.0.0.2:8080 A"],
            ),
            // The Node has no zone label: hints cannot be matched, all serve.
            (
                "node without a zone",
                None,
                &[("10.0.0.1", &["a"], &[]), ("10.0.0.2", &["b"], &[])],
                &["10.0.0.1:8080 A", "10.0.0.2:8080 A"],
            ),
            // PreferSameNode: node hints win over zone hints.
            (
                "node hints for this node",
                Some("a"),
                &[("10.0.0.1", &["a"], &["n1"]), ("10.0.0.2", &["a"], &["n2"])],
                &["10.0.0.1:8080 A", "10.0.0.2:8080 T"],
            ),
            // Node hints, none for this node: zone hints still apply.
            (
                "node hints for other nodes, zone hints for this zone",
                Some("a"),
                &[("10.0.0.1", &["a"], &["n3"]), ("10.0.0.2", &["b"], &["n2"])],
                &["10.0.0.1:8080 A", "10.0.0.2:8080 T"],
            ),
        ];
        let s = svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Number(8080))]);
        for (what, zone, eps, want) in rows {
            let mut sl = slice("web", AddressType::IPv4, &[("http", 8080)], &[]);
            Arc::make_mut(&mut sl).endpoints = eps
                .iter()
                .map(|(a, zh, nh)| Endpoint {
                    extra: EndpointExtra {
                        more_addresses: Box::default(),
                        hostname: None,
                        zone_hints: zh.iter().map(|z| Arc::from(*z)).collect(),
                        node_hints: nh.iter().map(|n| Arc::from(*n)).collect(),
                    }
                    .boxed(),
                    ..Endpoint::new(ip(a))
                })
                .collect();
            let ctx =
                NodeContext { node_name: Some("n1".into()), zone: zone.map(str::to_string), ..NodeContext::default() };
            let got: Vec<String> =
                service_frontends(&s, &[sl], &ctx).into_iter().flat_map(|(_, d)| backends(&d)).collect();
            assert_eq!(&got, want, "{what}");
        }
    }
}
