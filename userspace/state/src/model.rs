//! The catalog's own types: what the agent and DNS need of Services and
//! EndpointSlices, already validated. Sources (YAML directory, Kubernetes API)
//! translate Kubernetes objects into these; consumers never see raw objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use smallvec::SmallVec;

pub use crate::intern::intern;

/// `namespace/name` of a Kubernetes object. Shared strings: a key is held
/// by the catalog, the store's indexes, the change log and every consumer's
/// own index, so a copy must cost a reference count, not two allocations
/// (at 100,000 Services a dozen copies of each key add up).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The key of an object a source delivers: its namespace interned
    /// ([`intern`]), as a cluster has few and every object repeats one.
    pub fn interned(namespace: &str, name: &str) -> Self {
        Self { namespace: intern(namespace), name: Arc::from(name) }
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

/// Boxed slices and strings rather than `Vec`/`String`: a Service is
/// never grown in place, and at 100,000 of them the spare capacity fields
/// are megabytes in each binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub key: ObjectKey,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (dual-stack: one per family). Empty for headless
    /// (`clusterIP: None`) and ExternalName Services.
    pub cluster_ips: Box<[IpAddr]>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.externalName` for ExternalName Services.
    pub external_name: Option<Box<str>>,
    pub ports: Box<[ServicePort]>,
    pub external_ips: Box<[IpAddr]>,
    pub load_balancer_ips: Box<[IpAddr]>,
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
    pub proxy_name: Option<Box<str>>,
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

/// One endpoint of a slice. The catalog holds a million of these at
/// 100,000 Services, so it is kept small (64 bytes, no allocation in the
/// common case): one address inline, node and zone names interned, the
/// rarely set fields in one box. Fields the agent and DNS never read
/// (`targetRef`) are not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The first of `addresses` (`None` in FQDN slices, whose addresses
    /// nothing here uses). The EndpointSlice controller writes exactly one;
    /// the API allows up to 100, the rest are in `extra`. Read them all
    /// with [`addresses`](Self::addresses).
    pub address: Option<IpAddr>,
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
    /// Interned ([`intern`]): a cluster has far fewer nodes than endpoints.
    pub node_name: Option<Arc<str>>,
    /// Interned.
    pub zone: Option<Arc<str>>,
    /// Hostname and topology hints, which most endpoints lack: `None`
    /// when all are unset (see the accessors).
    pub extra: Option<Box<EndpointExtra>>,
}

/// The rarely set parts of an [`Endpoint`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointExtra {
    /// `addresses[1..]`.
    pub more_addresses: Box<[IpAddr]>,
    pub hostname: Option<Box<str>>,
    /// `hints.forZones[].name`: the zones whose nodes should send this
    /// endpoint traffic (topology-aware routing, `trafficDistribution:
    /// PreferClose`). Empty: no zone hints.
    pub zone_hints: Box<[Arc<str>]>,
    /// `hints.forNodes[].name` (`trafficDistribution: PreferSameNode`).
    pub node_hints: Box<[Arc<str>]>,
}

impl EndpointExtra {
    /// `None` when nothing is set, so an endpoint without extras stays
    /// unboxed.
    pub fn boxed(self) -> Option<Box<Self>> {
        (self != Self::default()).then(|| Box::new(self))
    }
}

impl Endpoint {
    /// A ready, serving endpoint at `address` with nothing else set: how a
    /// slice lists a running pod without hostname, node or hints.
    pub fn new(address: IpAddr) -> Self {
        Self {
            address: Some(address),
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            extra: None,
        }
    }

    /// Every address, in the slice's order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let more = self.extra.as_ref().map_or(&[][..], |e| &e.more_addresses);
        self.address.into_iter().chain(more.iter().copied())
    }

    pub fn hostname(&self) -> Option<&str> {
        self.extra.as_ref()?.hostname.as_deref()
    }

    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.zone_hints)
    }

    pub fn node_hints(&self) -> &[Arc<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.node_hints)
    }
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
    /// `status.addresses` of type InternalIP, then ExternalIP: the first of
    /// a family is the node's InternalIP of that family when it has one.
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
    /// Values are shared (`Arc`): the store keeps a working copy beside the
    /// published catalog, and copying one must not copy a million endpoints.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// Slices grouped by the Service they belong to (which may not exist
    /// yet), sorted by slice key. Nearly every Service has one slice (up to
    /// 100 endpoints): inline, an allocation fewer per Service per copy.
    pub slices: BTreeMap<ObjectKey, SlicesOf>,
    pub nodes: BTreeMap<String, Node>,
    /// What changed since the previous publish (set by the store).
    pub changes: Changes,
}

/// The EndpointSlices of one Service.
pub type SlicesOf = SmallVec<[Arc<EndpointSlice>; 1]>;

/// What changed between catalogs, as the store published them: a consumer
/// that built its state from the catalog of generation `g` asks the current
/// one [`since`](Changes::since)`(g)` and gets exactly the Services (object
/// or EndpointSlice group) and Nodes that changed after it, so it never
/// compares 100,000 Services to find one changed endpoint, even when the
/// `watch` channel skipped the generations in between. Not part of the
/// catalog's content: ignored by equality.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The generation of the catalog this belongs to (0: not published by a
    /// store, nothing is known).
    pub generation: u64,
    /// The most recent generations' change sets, oldest first, ending with
    /// this one's. Shared between catalogs: a publish copies only the list
    /// of `Arc`s.
    log: Arc<[Arc<Step>]>,
}

/// What one publish changed.
#[derive(Debug, Default)]
pub struct Step {
    pub generation: u64,
    pub services: BTreeSet<ObjectKey>,
    pub nodes: BTreeSet<String>,
}

/// The changes from one catalog to a later one (borrowed from the later).
#[derive(Debug, Default, PartialEq)]
pub struct Changed<'a> {
    pub services: BTreeSet<&'a ObjectKey>,
    pub nodes: BTreeSet<&'a str>,
}

impl PartialEq for Changes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// How much history a catalog carries: enough for a consumer that fell
/// behind by a relist of every kind at 100,000 Services; one further behind
/// rebuilds from scratch (what it would do at start anyway).
pub(crate) const LOG_STEPS: usize = 4096;
const LOG_MAX_KEYS: usize = 400_000;

impl Changes {
    /// The change record of generation `step.generation`, after `prev`'s.
    pub fn next(prev: &Changes, step: Step) -> Changes {
        let generation = step.generation;
        let mut keys = step.services.len() + step.nodes.len();
        let mut kept = 1;
        for s in prev.log.iter().rev() {
            keys += s.services.len() + s.nodes.len();
            if kept >= LOG_STEPS || keys > LOG_MAX_KEYS || s.generation + kept as u64 != generation {
                break;
            }
            kept += 1;
        }
        let older = &prev.log[prev.log.len() + 1 - kept..];
        let log: Arc<[Arc<Step>]> = older.iter().cloned().chain(std::iter::once(Arc::new(step))).collect();
        Changes { generation, log }
    }

    /// What the publish of this generation itself changed.
    pub fn last_step(&self) -> Option<&Step> {
        self.log.last().filter(|s| s.generation == self.generation).map(|s| &**s)
    }

    /// Everything that changed after the catalog of `prev` up to this one;
    /// `None` when that is not known (`prev` is not an earlier catalog of
    /// the same store, or too old for the log): compare everything.
    pub fn since(&self, prev: &Changes) -> Option<Changed<'_>> {
        if self.generation == 0 || prev.generation == 0 || prev.generation > self.generation {
            return None;
        }
        let mut out = Changed::default();
        if prev.generation == self.generation {
            return Some(out);
        }
        let first = self.log.first()?;
        if first.generation > prev.generation + 1 {
            return None;
        }
        for step in self.log.iter().filter(|s| s.generation > prev.generation) {
            out.services.extend(step.services.iter());
            out.nodes.extend(step.nodes.iter().map(String::as_str));
        }
        Some(out)
    }
}

impl Catalog {
    pub fn slices_of(&self, service: &ObjectKey) -> &[Arc<EndpointSlice>] {
        self.slices.get(service).map_or(&[], |g| g.as_slice())
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
        self.services.get(&ObjectKey::new(namespace, name)).map(|s| &**s)
    }

    /// Services of one namespace, by name.
    pub fn services_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .range(ObjectKey::new(namespace, "")..)
            .take_while(move |(k, _)| &*k.namespace == namespace)
            .map(|(_, s)| &**s)
    }

    /// Namespaces that hold at least one Service, sorted, each once.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for k in self.services.keys() {
            if out.last() != Some(&&*k.namespace) {
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
        self.slices_of(service).iter().flat_map(|s| s.endpoints.iter().map(move |e| (&**s, e)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog holds a million endpoints at 100,000 Services: every
    /// byte here is a megabyte in both the agent and ferry-dns.
    #[test]
    fn an_endpoint_stays_small() {
        assert!(std::mem::size_of::<Endpoint>() <= 64, "{} bytes", std::mem::size_of::<Endpoint>());
        assert!(std::mem::size_of::<ObjectKey>() <= 32);
    }

    #[test]
    fn every_address_of_an_endpoint_in_order() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(Endpoint::new(a).addresses().collect::<Vec<_>>(), [a]);
        let two = Endpoint {
            extra: EndpointExtra { more_addresses: [b].into(), ..Default::default() }.boxed(),
            ..Endpoint::new(a)
        };
        assert_eq!(two.addresses().collect::<Vec<_>>(), [a, b]);
        assert_eq!(Endpoint { address: None, ..Endpoint::new(a) }.addresses().count(), 0);
    }
}
