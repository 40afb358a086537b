//! Kubernetes objects (k8s-openapi types) -> catalog model, with the API
//! server's defaults applied and its validation repeated: in standalone mode
//! nobody else has validated the YAML, and the agent and DNS must be able to
//! trust every field of the catalog.
//!
//! Defaults and rules follow the Kubernetes API reference (core/v1 Service,
//! discovery.k8s.io/v1 EndpointSlice, core/v1 Node) and the validation in
//! kubernetes `pkg/apis/core/validation` and `pkg/apis/discovery/validation`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::ConvertError;
use crate::model::*;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service carrying this label belongs to the service proxy it names
/// (`apis.LabelServiceProxyName`, kubernetes pkg/proxy/apis/well_known_labels.go).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// `v1.IsHeadlessService`: set by the controllers on the EndpointSlices of
/// headless Services; kube-proxy selects it out of Services and slices alike.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default (3 hours) and
/// maximum (1 day), per the core/v1 API.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// One converted object, as the store keeps it. Shared: the catalog entry
/// is this very value, and copies of the catalog share it.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Node),
}

impl From<Service> for Object {
    fn from(s: Service) -> Self {
        Object::Service(Arc::new(s))
    }
}

impl From<EndpointSlice> for Object {
    fn from(s: EndpointSlice) -> Self {
        Object::EndpointSlice(Arc::new(s))
    }
}

/// What the store merges objects by: two files declaring the same
/// `(kind, namespace/name)` describe the same object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectId {
    Service(ObjectKey),
    EndpointSlice(ObjectKey),
    Node(String),
}

/// The kinds a source lists, each with its own readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }
}

impl ObjectId {
    pub fn kind(&self) -> Kind {
        match self {
            ObjectId::Service(_) => Kind::Service,
            ObjectId::EndpointSlice(_) => Kind::EndpointSlice,
            ObjectId::Node(_) => Kind::Node,
        }
    }
}

impl Object {
    pub fn id(&self) -> ObjectId {
        match self {
            Object::Service(s) => ObjectId::Service(s.key.clone()),
            Object::EndpointSlice(s) => ObjectId::EndpointSlice(s.key.clone()),
            Object::Node(n) => ObjectId::Node(n.name.clone()),
        }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectId::Service(k) => write!(f, "Service {k}"),
            ObjectId::EndpointSlice(k) => write!(f, "EndpointSlice {k}"),
            ObjectId::Node(n) => write!(f, "Node {n}"),
        }
    }
}

/// `metadata.namespace` defaults to `default`, as `kubectl apply` does for a
/// namespaced object without one.
pub fn object_key(meta: &ObjectMeta) -> Result<ObjectKey, ConvertError> {
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(ConvertError::Missing { field: "metadata.name".into() });
    }
    let namespace = match meta.namespace.as_deref() {
        None | Some("") => "default",
        Some(ns) => ns,
    };
    Ok(ObjectKey::interned(namespace, name))
}

pub fn service(svc: &core::Service) -> Result<Service, ConvertError> {
    let key = object_key(&svc.metadata)?;
    // A Service without a spec is a ClusterIP Service with every default.
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    let service_type = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(ConvertError::Unsupported {
                field: "spec.type".into(),
                value: other.into(),
                expected: "ClusterIP, NodePort, LoadBalancer or ExternalName",
            })
        }
    };

    let (cluster_ips, headless, external_name) = if service_type == ServiceType::ExternalName {
        let name = spec.external_name.as_deref().unwrap_or_default();
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(ConvertError::Missing { field: "spec.externalName".into() });
        }
        validate_dns_subdomain("spec.externalName", name)?;
        // The API server clears clusterIP(s) of an ExternalName Service.
        (Vec::new(), false, Some(name.to_ascii_lowercase()))
    } else {
        let (ips, headless) = cluster_ips(spec)?;
        (ips, headless, None)
    };

    validate_ip_families(spec, &cluster_ips)?;
    let ports = service_ports(spec, service_type)?;
    let external_ips: Box<[IpAddr]> = parse_ips("spec.externalIPs", spec.external_ips.as_deref().unwrap_or_default())?;

    // Only the ingress IPs the load balancer reported (status), as kube-proxy
    // does; `spec.loadBalancerIP` is a request, not a fact. Hostname-only
    // ingress entries have nothing for the data path.
    let mut load_balancer_ips = Vec::new();
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) {
            load_balancer_ips.push(parse_ip(&format!("status.loadBalancer.ingress[{i}].ip"), ip)?);
        }
    }

    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_S,
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S as i32).contains(&t) => t as u32,
                Some(t) => {
                    return Err(ConvertError::invalid(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} is out of range 1-{MAX_AFFINITY_TIMEOUT_S}"),
                    ))
                }
            };
            Some(Duration::from_secs(timeout.into()))
        }
        Some(other) => {
            return Err(ConvertError::Unsupported {
                field: "spec.sessionAffinity".into(),
                value: other.into(),
                expected: "None or ClientIP",
            })
        }
    };

    Ok(Service {
        key,
        service_type,
        cluster_ips: cluster_ips.into(),
        headless,
        external_name: external_name.map(String::into_boxed_str),
        ports: ports.into(),
        external_ips,
        load_balancer_ips: load_balancer_ips.into(),
        session_affinity,
        internal_traffic_local: traffic_policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?,
        external_traffic_local: traffic_policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref())?,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        // Presence is what counts (kube-proxy's selectors are DoesNotExist
        // requirements), so an empty value is still a label.
        proxy_name: label(&svc.metadata, SERVICE_PROXY_NAME_LABEL).map(Box::from),
        headless_label: label(&svc.metadata, HEADLESS_LABEL).is_some(),
    })
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// `clusterIPs` (dual-stack, primary first) falling back to the older
/// single `clusterIP`; `None` means headless; empty means no VIP was assigned
/// (standalone mode has no allocator: such a Service simply has no VIP).
fn cluster_ips(spec: &core::ServiceSpec) -> Result<(Vec<IpAddr>, bool), ConvertError> {
    let single = spec.cluster_ip.as_deref().filter(|s| !s.is_empty());
    let (field, raw): (&str, Vec<&str>) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            // The API requires clusterIP == clusterIPs[0] when both are set.
            if let Some(single) = single {
                if single != list[0] {
                    return Err(ConvertError::invalid(
                        "spec.clusterIPs[0]",
                        format!("{:?} must equal spec.clusterIP {single:?}", list[0]),
                    ));
                }
            }
            ("spec.clusterIPs", list.iter().map(String::as_str).collect())
        }
        _ => ("spec.clusterIP", single.into_iter().collect()),
    };
    if raw.first() == Some(&"None") {
        if raw.len() > 1 {
            return Err(ConvertError::invalid(field, "\"None\" must be the only value"));
        }
        return Ok((Vec::new(), true));
    }
    if raw.len() > 2 {
        return Err(ConvertError::invalid(field, "at most two addresses (one per family)"));
    }
    let ips =
        raw.iter().enumerate().map(|(i, s)| parse_ip(&format!("{field}[{i}]"), s)).collect::<Result<Vec<_>, _>>()?;
    if ips.len() == 2 && ips[0].is_ipv4() == ips[1].is_ipv4() {
        return Err(ConvertError::invalid(field, "dual-stack addresses must be one IPv4 and one IPv6"));
    }
    Ok((ips, false))
}

/// `ipFamilies` values must be IPv4/IPv6, at most one of each, and in the same
/// order as the cluster IPs they describe.
fn validate_ip_families(spec: &core::ServiceSpec, cluster_ips: &[IpAddr]) -> Result<(), ConvertError> {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if families.len() > 2 {
        return Err(ConvertError::invalid("spec.ipFamilies", "at most two families"));
    }
    for (i, fam) in families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        let v4 = match fam.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            other => return Err(ConvertError::Unsupported { field, value: other.into(), expected: "IPv4 or IPv6" }),
        };
        if families[..i].contains(fam) {
            return Err(ConvertError::invalid(field, format!("{fam} listed twice")));
        }
        if let Some(ip) = cluster_ips.get(i) {
            if ip.is_ipv4() != v4 {
                return Err(ConvertError::invalid(field, format!("{fam} does not match cluster IP {ip}")));
            }
        }
    }
    Ok(())
}

fn service_ports(spec: &core::ServiceSpec, service_type: ServiceType) -> Result<Vec<ServicePort>, ConvertError> {
    let raw = spec.ports.as_deref().unwrap_or_default();
    let mut ports: Vec<ServicePort> = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p.name.clone().unwrap_or_default();
        // The API requires names when there is more than one port, and unique
        // names: SRV records and EndpointSlice ports are matched by name.
        if raw.len() > 1 && name.is_empty() {
            return Err(ConvertError::Missing { field: field("name") });
        }
        if !name.is_empty() {
            validate_dns_label(&field("name"), &name)?;
        }
        if ports.iter().any(|q| q.name == name) {
            return Err(ConvertError::invalid(field("name"), format!("duplicate port name {name:?}")));
        }
        let protocol = protocol(&field("protocol"), p.protocol.as_deref())?;
        let port = port_number(&field("port"), p.port)?;
        if ports.iter().any(|q| q.port == port && q.protocol == protocol) {
            return Err(ConvertError::invalid(field("port"), format!("duplicate port {port}/{}", protocol.as_str())));
        }
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_number(&field("targetPort"), *n)?),
            Some(IntOrString::String(s)) => {
                // A string that is a number is what the API server's defaulting
                // of `targetPort: "8080"` yields; anything else is a named port
                // (IANA_SVC_NAME: at most 15 chars, lowercase alnum and '-',
                // at least one letter).
                match s.parse::<i64>() {
                    Ok(n) => TargetPort::Number(port_number(&field("targetPort"), n)?),
                    Err(_) => {
                        validate_port_name(&field("targetPort"), s)?;
                        TargetPort::Name(s.clone())
                    }
                }
            }
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_number(&field("nodePort"), n)?),
        };
        if node_port.is_some() && !matches!(service_type, ServiceType::NodePort | ServiceType::LoadBalancer) {
            return Err(ConvertError::invalid(
                field("nodePort"),
                "only NodePort and LoadBalancer Services have node ports",
            ));
        }
        ports.push(ServicePort { name, protocol, port, target_port, node_port });
    }
    Ok(ports)
}

fn traffic_policy(field: &str, value: Option<&str>) -> Result<bool, ConvertError> {
    match value {
        None | Some("") | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => {
            Err(ConvertError::Unsupported { field: field.into(), value: other.into(), expected: "Cluster or Local" })
        }
    }
}

pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Result<EndpointSlice, ConvertError> {
    let key = object_key(&slice.metadata)?;
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConvertError::Missing { field: format!("metadata.labels[{SERVICE_NAME_LABEL}]") })?;
    let service = ObjectKey::new(key.namespace.clone(), service_name.as_str());

    let address_type = match slice.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        "" => return Err(ConvertError::Missing { field: "addressType".into() }),
        other => {
            return Err(ConvertError::Unsupported {
                field: "addressType".into(),
                value: other.into(),
                expected: "IPv4, IPv6 or FQDN",
            })
        }
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("ports[{i}].{f}");
        // A port without a number means "all ports" in the API; nothing in
        // Ferry can act on that, so it is left out rather than guessed.
        let Some(port) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(&field("protocol"), p.protocol.as_deref())?,
            port: port_number(&field("port"), port)?,
        });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let field = |f: &str| format!("endpoints[{i}].{f}");
        if ep.addresses.is_empty() {
            return Err(ConvertError::Missing { field: field("addresses") });
        }
        // FQDN slices carry hostnames, not IPs: the data path and DNS have no
        // use for them (kube-proxy ignores them too), so their endpoints are
        // kept without addresses.
        let addresses = if address_type == AddressType::Fqdn {
            Vec::new()
        } else {
            let ips: Vec<IpAddr> = parse_ips(&field("addresses"), &ep.addresses)?;
            let want_v4 = address_type == AddressType::IPv4;
            if let Some((j, ip)) = ips.iter().enumerate().find(|(_, ip)| ip.is_ipv4() != want_v4) {
                return Err(ConvertError::invalid(
                    format!("{}[{j}]", field("addresses")),
                    format!("{ip} does not match addressType {}", slice.address_type),
                ));
            }
            ips
        };
        let cond = ep.conditions.clone().unwrap_or_default();
        // As kube-proxy reads them (pkg/proxy/endpointslicecache.go,
        // `newEndpointSliceInfo`) and the discovery/v1 API defines them:
        // ready absent = true; serving absent = true; terminating absent =
        // false. (Older API text let serving "defer to ready"; kube-proxy
        // never did.)
        let ready = cond.ready.unwrap_or(true);
        let hostname = ep.hostname.clone().filter(|h| !h.is_empty());
        if let Some(h) = &hostname {
            validate_dns_label(&field("hostname"), h)?;
        }
        let (address, more_addresses) = match addresses.split_first() {
            Some((first, more)) => (Some(*first), more.into()),
            None => (None, Box::default()),
        };
        endpoints.push(Endpoint {
            address,
            ready,
            serving: cond.serving.unwrap_or(true),
            terminating: cond.terminating.unwrap_or(false),
            node_name: ep.node_name.as_deref().filter(|n| !n.is_empty()).map(intern),
            zone: ep.zone.as_deref().filter(|z| !z.is_empty()).map(intern),
            extra: EndpointExtra {
                more_addresses,
                hostname: hostname.map(String::into_boxed_str),
                zone_hints: ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.as_str()).filter(|n| !n.is_empty()).map(intern).collect())
                    .unwrap_or_default(),
                node_hints: ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.as_str()).filter(|n| !n.is_empty()).map(intern).collect())
                    .unwrap_or_default(),
            }
            .boxed(),
        });
    }

    Ok(EndpointSlice { key, service, address_type, ports, endpoints })
}

/// The well-known label of a Node's zone (`v1.LabelTopologyZone`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

pub fn node(node: &core::Node) -> Result<Node, ConvertError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ConvertError::Missing { field: "metadata.name".into() });
    }
    let mut addresses = Vec::new();
    let status_addrs = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    // InternalIPs first, then ExternalIPs, each in the listed order: the
    // first address of a family is the one pods are routed through, and the
    // API does not order the list by type. Hostname / DNS entries name the
    // node, they are not addresses.
    for kind in ["InternalIP", "ExternalIP"] {
        for (i, a) in status_addrs.iter().enumerate().filter(|(_, a)| a.type_ == kind) {
            let ip = parse_ip(&format!("status.addresses[{i}].address"), &a.address)?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    let spec = node.spec.as_ref();
    let (field, cidrs): (&str, Vec<String>) = match spec.and_then(|s| s.pod_cidrs.clone()).filter(|c| !c.is_empty()) {
        Some(list) => ("spec.podCIDRs", list),
        None => ("spec.podCIDR", spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty()).into_iter().collect()),
    };
    for (i, c) in cidrs.iter().enumerate() {
        validate_cidr(&format!("{field}[{i}]"), c)?;
    }
    let zone = node.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).filter(|z| !z.is_empty()).cloned();
    Ok(Node { name, addresses, pod_cidrs: cidrs, zone })
}

fn protocol(field: &str, value: Option<&str>) -> Result<Protocol, ConvertError> {
    match value {
        None | Some("") | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => {
            Err(ConvertError::Unsupported { field: field.into(), value: other.into(), expected: "TCP, UDP or SCTP" })
        }
    }
}

fn port_number(field: &str, value: impl Into<i64>) -> Result<u16, ConvertError> {
    let value = value.into();
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConvertError::PortRange { field: field.into(), value }),
    }
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, ConvertError> {
    value.parse().map_err(|_| ConvertError::InvalidIp { field: field.into(), value: value.into() })
}

fn parse_ips<C: FromIterator<IpAddr>>(field: &str, values: &[String]) -> Result<C, ConvertError> {
    values.iter().enumerate().map(|(i, v)| parse_ip(&format!("{field}[{i}]"), v)).collect()
}

fn validate_cidr(field: &str, value: &str) -> Result<(), ConvertError> {
    let bad = || ConvertError::invalid(field, format!("{value:?} is not a CIDR (address/prefix)"));
    let (addr, len) = value.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > if addr.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok(())
}

/// RFC 1123 label, as the API requires for port names and endpoint hostnames
/// (they become DNS labels): 1-63 chars of `[a-z0-9-]`, alphanumeric at both ends.
fn validate_dns_label(field: &str, value: &str) -> Result<(), ConvertError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ConvertError::invalid(field, format!("{value:?} is not a DNS label (lowercase a-z, 0-9, '-', at most 63)")))
    }
}

/// A DNS name of RFC 1123 labels, at most 253 chars (ExternalName targets).
/// Case is not enforced: DNS names are case-insensitive and the name is
/// lowercased on the way in.
fn validate_dns_subdomain(field: &str, value: &str) -> Result<(), ConvertError> {
    let lower = value.to_ascii_lowercase();
    if lower.len() > 253 || lower.split('.').any(|l| validate_dns_label(field, l).is_err()) {
        return Err(ConvertError::invalid(field, format!("{value:?} is not a DNS name")));
    }
    Ok(())
}

/// IANA_SVC_NAME (RFC 6335): a DNS label of at most 15 chars with at least
/// one letter and no double hyphen.
fn validate_port_name(field: &str, value: &str) -> Result<(), ConvertError> {
    let ok = validate_dns_label(field, value).is_ok()
        && value.len() <= 15
        && value.bytes().any(|b| b.is_ascii_lowercase())
        && !value.contains("--");
    if ok {
        Ok(())
    } else {
        Err(ConvertError::invalid(field, format!("{value:?} is not a port name (IANA_SVC_NAME)")))
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
