//! The catalog's own types: what the agent and DNS need of Services and
//! EndpointSlices, already validated. Sources (YAML directory, Kubernetes API)
//! translate Kubernetes objects into these; consumers never see raw objects.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// `namespace/name` of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as the data path keys on it.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    /// Lowercase name, as used in SRV labels (`_tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// `targetPort` of a Service port: a number, or the name of a container port.
/// Either way the EndpointSlice controller resolves it per pod into the slice
/// ports; the data path takes backend ports from there
/// ([`EndpointSlice::port_for`]), never from this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty when the Service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub key: ObjectKey,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (dual-stack: one per family). Empty for headless
    /// (`clusterIP: None`) and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.externalName` for ExternalName Services.
    pub external_name: Option<String>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` with its timeout (default 10800 s).
    pub session_affinity: Option<Duration>,
    /// `internalTrafficPolicy: Local`.
    pub internal_traffic_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_local: bool,
    pub publish_not_ready_addresses: bool,
    /// Value of the `service.kubernetes.io/service-proxy-name` label, if the
    /// label is present (even empty): the Service is handed to the proxy of
    /// that name, and a service proxy that is not it leaves it alone
    /// (kubernetes docs/dev/sig-network/service-proxy.md, "Ignored
    /// Services/Endpoints"). DNS still answers for it.
    pub proxy_name: Option<String>,
    /// The `service.kubernetes.io/headless` label is present (any value):
    /// kube-proxy's informers select `!service.kubernetes.io/headless`
    /// (cmd/kube-proxy/app/server.go), so a labelled Service is never
    /// proxied. DNS still answers for it.
    pub headless_label: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; absent means true (discovery/v1 API). This is the
    /// condition new flows follow: with `publishNotReadyAddresses` the
    /// EndpointSlice controller sets it on unready and terminating pods too.
    pub ready: bool,
    /// `conditions.serving`; absent means true, as kube-proxy reads it
    /// (pkg/proxy/endpointslicecache.go, `newEndpointSliceInfo`) and as the
    /// discovery/v1 API documents it ("A nil value should be interpreted as
    /// true").
    pub serving: bool,
    /// `conditions.terminating`; absent means false.
    pub terminating: bool,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `hints.forZones[].name`: the zones whose nodes should send this
    /// endpoint traffic (topology-aware routing, `trafficDistribution:
    /// PreferClose`). Empty: no zone hints.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name` (`trafficDistribution: PreferSameNode`).
    pub node_hints: Vec<String>,
    /// Name of the Pod in `targetRef`, if any.
    pub target_pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
    Fqdn,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    /// `kubernetes.io/service-name` label: the Service this slice belongs to.
    pub service: ObjectKey,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<String>,
    /// The `topology.kubernetes.io/zone` label: where topology hints are
    /// matched (kube-proxy reads the same label of its own Node).
    pub zone: Option<String>,
}

/// One consistent view of the cluster: every Service with the EndpointSlices
/// that name it. Immutable; a new one is published on every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub services: BTreeMap<ObjectKey, Service>,
    /// Slices grouped by the Service they belong to (which may not exist yet).
    pub slices: BTreeMap<ObjectKey, Vec<EndpointSlice>>,
    pub nodes: BTreeMap<String, Node>,
    /// What changed since the previous publish (set by the store).
    pub changes: Changes,
}

/// The Service keys whose object or EndpointSlice group changed between the
/// catalog published as `generation - 1` and this one (`generation`), so a
/// consumer that saw the previous one need not compare 10,000 Services to
/// find one changed endpoint. `generation == 0`: unknown, compare. Not part
/// of the catalog's content: ignored by equality.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub generation: u64,
    pub services: std::collections::BTreeSet<ObjectKey>,
}

impl PartialEq for Changes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Changes {
    /// The changed Service keys from `prev` to `self`'s catalog, when
    /// `prev` is exactly the catalog published before it.
    pub fn since(&self, prev: &Changes) -> Option<&std::collections::BTreeSet<ObjectKey>> {
        (self.generation != 0 && prev.generation + 1 == self.generation).then_some(&self.services)
    }
}

impl Catalog {
    pub fn slices_of(&self, service: &ObjectKey) -> &[EndpointSlice] {
        self.slices.get(service).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// What consumers receive: the catalog, whether the source has completed its
/// first full load (before that, absence proves nothing — no NXDOMAIN, no
/// deleting map entries), and a generation that increases on every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    pub ready: bool,
    pub generation: u64,
}

impl Catalog {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&ObjectKey::new(namespace, name))
    }

    /// Services of one namespace, by name.
    pub fn services_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .range(ObjectKey::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, s)| s)
    }

    /// Namespaces that hold at least one Service, sorted, each once.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for k in self.services.keys() {
            if out.last() != Some(&k.namespace.as_str()) {
                out.push(&k.namespace);
            }
        }
        out
    }

    /// Every endpoint of a Service across its slices, with the slice it
    /// came from (for port resolution and the address type).
    pub fn endpoints_of<'a>(
        &'a self,
        service: &ObjectKey,
    ) -> impl Iterator<Item = (&'a EndpointSlice, &'a Endpoint)> + 'a {
        self.slices_of(service).iter().flat_map(|s| s.endpoints.iter().map(move |e| (s, e)))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
}

impl EndpointSlice {
    /// The backend port of this slice's endpoints for `port` of the Service,
    /// or `None` when this slice contributes no endpoints to that port.
    ///
    /// The one definition of this lookup (the agent's translation uses it).
    /// kube-proxy takes an endpoint's port only from the slice that holds
    /// it, keyed by the slice port's name and protocol
    /// (pkg/proxy/endpointslicecache.go, `endpointInfoByServicePort`: the
    /// key is `ServicePortName{service, port.Name, port.Protocol}`). The
    /// EndpointSlice controller names each slice port after the Service port
    /// and sets its number to the target port it resolved for the pods of
    /// that slice, so pods whose container port differs (a rolling update)
    /// sit in different slices with different numbers. Neither a numeric
    /// `targetPort` nor the name of a named one is consulted: a slice that
    /// lacks the port has no endpoints for it, and guessing a number would
    /// send traffic where nothing listens.
    pub fn port_for(&self, port: &ServicePort) -> Option<u16> {
        self.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol).map(|p| p.port)
    }
}

impl Endpoint {
    /// Terminating but still serving: used only when no endpoint is ready.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}
