//! Catalog -> desired frontends: what the maps should hold, computed without
//! touching them.
//!
//! One frontend per (Service, port, VIP): the ClusterIPs (one per family for
//! dual-stack), ExternalIPs and LoadBalancer ingress IPs. Backends come from
//! the Service's EndpointSlices of the VIP's family, with the EndpointSlice
//! conditions applied the way kube-proxy applies them
//! (pkg/proxy/topology.go, `CategorizeEndpoints`):
//! - ready endpoints take new flows;
//! - serving-and-terminating endpoints take new flows only when no endpoint
//!   is ready, and otherwise stay in the map (state TERMINATING) so the flows
//!   they already have keep their backend;
//! - endpoints that are not serving are gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ferry_state::{AddressType, Catalog, EndpointSlice, ObjectKey, Protocol, Service, ServicePort, ServiceType, TargetPort};

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

/// What the translation needs to know about this node.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// `--node-name`: endpoints whose `nodeName` equals it are local.
    /// Without it, no endpoint is local, so a Local-policy Service has no
    /// backends here (the Kubernetes behaviour for a node without local
    /// endpoints) rather than silently becoming Cluster.
    pub node_name: Option<String>,
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
                Some(existing) => conflicts.push(Conflict {
                    frontend: fe,
                    kept: existing.service.clone(),
                    ignored: svc.key.clone(),
                }),
                None => {
                    out.insert(fe, d);
                }
            }
        }
    }
    (out, conflicts)
}

/// The frontends of one Service. Headless and ExternalName Services have
/// none (DNS serves them); NodePorts are the uplink program's business.
pub fn service_frontends(
    svc: &Service,
    slices: &[EndpointSlice],
    node: &NodeContext,
) -> Vec<(Frontend, DesiredFrontend)> {
    if svc.headless || svc.service_type == ServiceType::ExternalName {
        return Vec::new();
    }
    let affinity_timeout_s = svc
        .session_affinity
        .map(|d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1));
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
            let backends = by_family[fam]
                .get_or_insert_with(|| backends_for(svc, port, slices, vip.is_ipv6(), node))
                .clone();
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

fn backends_for(
    svc: &Service,
    port: &ServicePort,
    slices: &[EndpointSlice],
    v6: bool,
    node: &NodeContext,
) -> BTreeMap<BackendAddr, BackendState> {
    let want = if v6 { AddressType::IPv6 } else { AddressType::IPv4 };
    // Candidates and whether each is ready; a backend listed twice (two
    // slices during a rollover) counts as ready if either says so.
    let mut ready: BTreeMap<BackendAddr, bool> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == want) {
        let Some(target) = resolve_port(port, slice) else {
            continue;
        };
        for ep in &slice.endpoints {
            if !ep.serving {
                continue;
            }
            if svc.internal_traffic_local
                && (node.node_name.is_none() || ep.node_name != node.node_name)
            {
                continue;
            }
            // A ready endpoint is serving; a serving one that is neither
            // ready nor terminating (publishNotReadyAddresses aside) is not
            // used for new flows either, but keeps its existing ones.
            let usable_now = ep.ready && !ep.terminating;
            for ip in ep.addresses.iter().filter(|ip| ip.is_ipv6() == v6) {
                let r = ready.entry(BackendAddr { ip: *ip, port: target }).or_insert(false);
                *r |= usable_now;
            }
        }
    }
    let any_ready = ready.values().any(|r| *r);
    ready
        .into_iter()
        .map(|(addr, r)| {
            // No ready endpoint at all: fall back to the serving-terminating
            // ones for new flows (KEP-1669 "ProxyTerminatingEndpoints").
            let state = if r || !any_ready { BackendState::Active } else { BackendState::Terminating };
            (addr, state)
        })
        .collect()
}

/// The port a slice's endpoints listen on for this Service port.
/// The EndpointSlice controller names each slice port after the Service port
/// and puts the per-pod resolved number in it, so that is looked up first;
/// a hand-written slice may instead name the target port itself. A numeric
/// targetPort with no matching slice port is used as is. A named targetPort
/// the slice cannot resolve skips the slice's endpoints: guessing a number
/// would send traffic to a port nothing listens on.
fn resolve_port(port: &ServicePort, slice: &EndpointSlice) -> Option<u16> {
    let by_name = |name: &str| {
        slice
            .ports
            .iter()
            .find(|p| p.name == name && p.protocol == port.protocol)
            .map(|p| p.port)
    };
    if let Some(p) = by_name(&port.name) {
        return Some(p);
    }
    match &port.target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => by_name(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_state::{Endpoint, EndpointPort};

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
            external_ips: vec![],
            load_balancer_ips: vec![],
            session_affinity: None,
            internal_traffic_local: false,
            external_traffic_local: false,
            publish_not_ready_addresses: false,
        }
    }

    /// (address, ready, serving, terminating, node)
    type Ep<'a> = (&'a str, bool, bool, bool, &'a str);

    fn slice(svc: &str, family: AddressType, ports: &[(&str, u16)], eps: &[Ep<'_>]) -> EndpointSlice {
        EndpointSlice {
            key: ObjectKey::new("default", format!("{svc}-x")),
            service: ObjectKey::new("default", svc),
            address_type: family,
            ports: ports
                .iter()
                .map(|(n, p)| EndpointPort { name: n.to_string(), protocol: Protocol::Tcp, port: *p })
                .collect(),
            endpoints: eps
                .iter()
                .map(|(a, r, s, t, n)| Endpoint {
                    addresses: vec![ip(a)],
                    ready: *r,
                    serving: *s,
                    terminating: *t,
                    hostname: None,
                    node_name: (!n.is_empty()).then(|| n.to_string()),
                    zone: None,
                    target_pod: None,
                })
                .collect(),
        }
    }

    fn backends(d: &DesiredFrontend) -> Vec<String> {
        d.backends
            .iter()
            .map(|(a, s)| format!("{a} {}", if *s == BackendState::Active { "A" } else { "T" }))
            .collect()
    }

    fn run(s: &Service, slices: &[EndpointSlice], node: Option<&str>) -> Vec<(String, Vec<String>)> {
        let ctx = NodeContext { node_name: node.map(str::to_string) };
        service_frontends(s, slices, &ctx)
            .into_iter()
            .map(|(fe, d)| (format!("{}:{}/{}", fe.vip, fe.port, fe.proto.as_str()), backends(&d)))
            .collect()
    }

    const TCP: Protocol = Protocol::Tcp;
    const V4: AddressType = AddressType::IPv4;
    const V6: AddressType = AddressType::IPv6;

    #[test]
    fn endpoint_conditions_and_ports() {
        let http = || svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Number(8080))]);
        let named = || svc("web", &["10.96.0.10"], &[("http", TCP, 80, TargetPort::Name("web".into()))]);
        struct Case<'a> {
            what: &'a str,
            svc: Service,
            slices: Vec<EndpointSlice>,
            node: Option<&'a str>,
            want: Vec<(&'a str, Vec<&'a str>)>,
        }
        let cases = vec![
            // Plain: ready endpoints, slice port named after the Service port.
            Case {
                what: "ready endpoints take new flows",
                svc: http(),
                slices: vec![slice("web", V4, &[("http", 8080)], &[
                    ("10.244.0.2", true, true, false, ""),
                    ("10.244.0.3", true, true, false, ""),
                ])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.3:8080 A"])],
            },
            // A terminating (still serving) endpoint keeps its flows but gets
            // no new ones while another is ready.
            Case {
                what: "terminating kept as TERMINATING while one is ready",
                svc: http(),
                slices: vec![slice("web", V4, &[("http", 8080)], &[
                    ("10.244.0.2", true, true, false, ""),
                    ("10.244.0.3", false, true, true, ""),
                ])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.3:8080 T"])],
            },
            // Nothing ready: serving-terminating endpoints take new flows.
            Case {
                what: "terminating used when none is ready",
                svc: http(),
                slices: vec![slice("web", V4, &[("http", 8080)], &[
                    ("10.244.0.3", false, true, true, ""),
                    ("10.244.0.4", false, false, true, ""),
                ])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.3:8080 A"])],
            },
            // Not serving: removed from the maps entirely.
            Case {
                what: "not serving is gone",
                svc: http(),
                slices: vec![slice("web", V4, &[("http", 8080)], &[("10.244.0.5", false, false, false, "")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // No slices at all: the frontend exists with no backends (reject).
            Case {
                what: "no endpoints",
                svc: http(),
                slices: vec![],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec![])],
            },
            // Named targetPort, resolved per slice: the slice port carries the
            // Service port's name, each slice its own number.
            Case {
                what: "named target port resolved per slice",
                svc: named(),
                slices: vec![
                    slice("web", V4, &[("http", 8080)], &[("10.244.0.2", true, true, false, "")]),
                    slice("web", V4, &[("http", 9090)], &[("10.244.0.3", true, true, false, "")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A", "10.244.0.3:9090 A"])],
            },
            // Hand-written slice naming the target port instead.
            Case {
                what: "named target port matched by target name",
                svc: named(),
                slices: vec![slice("web", V4, &[("web", 7070)], &[("10.244.0.2", true, true, false, "")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:7070 A"])],
            },
            // A slice that cannot resolve the name: its endpoints are skipped.
            Case {
                what: "unresolvable named port skips the slice",
                svc: named(),
                slices: vec![
                    slice("web", V4, &[("metrics", 9100)], &[("10.244.0.2", true, true, false, "")]),
                    slice("web", V4, &[("http", 8080)], &[("10.244.0.3", true, true, false, "")]),
                ],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.3:8080 A"])],
            },
            // Numeric targetPort with a port-less slice: the number is used.
            Case {
                what: "numeric target port without slice ports",
                svc: http(),
                slices: vec![slice("web", V4, &[], &[("10.244.0.2", true, true, false, "")])],
                node: None,
                want: vec![("10.96.0.10:80/tcp", vec!["10.244.0.2:8080 A"])],
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
            // The same endpoint in two slices (rollover) appears once.
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
        ];
        for c in cases {
            let got = run(&c.svc, &c.slices, c.node);
            let want: Vec<(String, Vec<String>)> = c
                .want
                .iter()
                .map(|(f, b)| (f.to_string(), b.iter().map(|s| s.to_string()).collect()))
                .collect();
            assert_eq!(got, want, "case: {}", c.what);
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
        ext.external_ips = vec![ip("192.0.2.10"), ip("10.96.0.10")];
        ext.load_balancer_ips = vec![ip("198.51.100.7")];
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
        headless.cluster_ips.clear();
        assert!(run(&headless, &slices, None).is_empty());
        let mut en = base();
        en.service_type = ServiceType::ExternalName;
        assert!(run(&en, &slices, None).is_empty());

        // UDP and TCP on the same port number are two frontends.
        let dns = svc("dns", &["10.96.0.53"], &[
            ("dns", Protocol::Udp, 53, TargetPort::Number(53)),
            ("dns-tcp", TCP, 53, TargetPort::Number(53)),
        ]);
        let fes: Vec<String> = run(&dns, &[], None).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fes, vec!["10.96.0.53:53/udp", "10.96.0.53:53/tcp"]);
    }

    #[test]
    fn conflicting_vips_keep_the_first_service() {
        let mut cat = Catalog::default();
        let a = svc("a", &["10.96.0.10"], &[("", TCP, 80, TargetPort::Number(80))]);
        let b = svc("b", &["10.96.0.10"], &[("", TCP, 80, TargetPort::Number(80))]);
        cat.services.insert(a.key.clone(), a);
        cat.services.insert(b.key.clone(), b);
        let (fes, conflicts) = desired(&cat, &NodeContext::default());
        assert_eq!(fes.len(), 1);
        assert_eq!(fes.values().next().unwrap().service.name, "a");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].ignored.name, "b");
    }
}
