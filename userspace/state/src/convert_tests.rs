//! One row per conversion rule: every default the API server would apply,
//! every rejection its validation would make.

use std::net::IpAddr;
use std::time::Duration;

use super::*;

/// A Service in the `default` namespace with the given spec (YAML, indented
/// under `spec:`), converted.
fn svc(spec: &str) -> Result<Service, ConvertError> {
    svc_doc(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{}", indent(spec)))
}

/// A ClusterIP Service with one label (`key: value` YAML).
fn svc_labelled(label: &str) -> Result<Service, ConvertError> {
    svc_doc(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {{{label}}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80}}]\n"
    ))
}

fn svc_doc(doc: &str) -> Result<Service, ConvertError> {
    let raw: core::Service = serde_yaml::from_str(doc).expect("test YAML parses");
    service(&raw)
}

/// An EndpointSlice labelled for Service `web`, with the given body (YAML,
/// top-level fields after metadata).
fn eps(body: &str) -> Result<EndpointSlice, ConvertError> {
    eps_doc(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc\n  namespace: shop\n  labels: {{kubernetes.io/service-name: web}}\n{body}"
    ))
}

fn eps_doc(doc: &str) -> Result<EndpointSlice, ConvertError> {
    let raw: discovery::EndpointSlice = serde_yaml::from_str(doc).expect("test YAML parses");
    endpoint_slice(&raw)
}

fn node_doc(doc: &str) -> Result<Node, ConvertError> {
    let raw: core::Node = serde_yaml::from_str(doc).expect("test YAML parses");
    node(&raw)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A row of accepted input: description, conversion result, what must hold.
type Accepted<'a, T> = (&'a str, Result<T, ConvertError>, &'a dyn Fn(&T) -> bool);

/// Run accepted rows: each check must hold.
fn accept<T: std::fmt::Debug>(rows: &[Accepted<'_, T>]) {
    for (desc, got, check) in rows {
        match got {
            Ok(v) => assert!(check(v), "{desc}: unexpected result {v:#?}"),
            Err(e) => panic!("{desc}: rejected: {e}"),
        }
    }
}

/// Run rejected rows: the error message must name the field.
fn reject<T: std::fmt::Debug>(rows: &[(&str, Result<T, ConvertError>, &str)]) {
    for (desc, got, field) in rows {
        match got {
            Ok(v) => panic!("{desc}: accepted: {v:#?}"),
            Err(e) => assert!(e.to_string().contains(field), "{desc}: error {e:?} does not name {field}"),
        }
    }
}

const PORT: &str = "ports: [{port: 80}]";

#[test]
fn service_defaults() {
    accept::<Service>(&[
        // namespace absent -> "default"
        ("namespace default", svc(PORT), &|s| s.key == ObjectKey::new("default", "web")),
        // type absent -> ClusterIP
        ("type default", svc(PORT), &|s| s.service_type == ServiceType::ClusterIp),
        // protocol absent -> TCP
        ("protocol default", svc(PORT), &|s| s.ports[0].protocol == Protocol::Tcp),
        // targetPort absent -> port
        ("targetPort default", svc(PORT), &|s| s.ports[0].target_port == TargetPort::Number(80)),
        // a single port may be unnamed
        ("single unnamed port", svc(PORT), &|s| s.ports[0].name.is_empty()),
        // sessionAffinity absent -> None
        ("no affinity", svc(PORT), &|s| s.session_affinity.is_none()),
        // ClientIP without a config -> 10800 s
        ("affinity timeout default", svc("sessionAffinity: ClientIP"), &|s| {
            s.session_affinity == Some(Duration::from_secs(10_800))
        }),
        // ClientIP with an explicit timeout
        (
            "affinity timeout",
            svc("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
            &|s| s.session_affinity == Some(Duration::from_secs(60)),
        ),
        // clusterIPs wins (dual-stack, in order)
        (
            "clusterIPs dual-stack",
            svc("clusterIP: 10.96.0.10\nclusterIPs: [10.96.0.10, 'fd00::a']\nipFamilies: [IPv4, IPv6]"),
            &|s| *s.cluster_ips == [ip("10.96.0.10"), ip("fd00::a")],
        ),
        // clusterIPs absent -> clusterIP
        ("clusterIP fallback", svc("clusterIP: 10.96.0.11"), &|s| *s.cluster_ips == [ip("10.96.0.11")] && !s.headless),
        // "None" -> headless, no VIP
        ("headless", svc("clusterIP: None"), &|s| s.headless && s.cluster_ips.is_empty()),
        ("headless clusterIPs", svc("clusterIPs: [None]"), &|s| s.headless),
        // no clusterIP at all: not headless, no VIP (nothing allocates one here)
        ("unassigned", svc(PORT), &|s| !s.headless && s.cluster_ips.is_empty()),
        // ExternalName: target lowercased, trailing dot dropped, no VIP even if one is written
        ("external name", svc("type: ExternalName\nexternalName: DB.Example.com.\nclusterIP: 10.96.0.12"), &|s| {
            s.service_type == ServiceType::ExternalName
                && s.external_name.as_deref() == Some("db.example.com")
                && s.cluster_ips.is_empty()
        }),
        // named targetPort
        ("named targetPort", svc("ports: [{port: 80, targetPort: http}]"), &|s| {
            s.ports[0].target_port == TargetPort::Name("http".into())
        }),
        // numeric string targetPort is a number
        ("string number targetPort", svc("ports: [{port: 80, targetPort: '8080'}]"), &|s| {
            s.ports[0].target_port == TargetPort::Number(8080)
        }),
        // UDP and SCTP
        ("udp", svc("ports: [{port: 53, protocol: UDP}]"), &|s| s.ports[0].protocol == Protocol::Udp),
        ("sctp", svc("ports: [{port: 9, protocol: SCTP}]"), &|s| s.ports[0].protocol == Protocol::Sctp),
        // same port number, two protocols (DNS): allowed
        ("tcp+udp same port", svc("ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]"), &|s| {
            s.ports.len() == 2
        }),
        // nodePort on a NodePort Service; 0 means unset
        ("nodePort", svc("type: NodePort\nports: [{port: 80, nodePort: 30080}]"), &|s| {
            s.ports[0].node_port == Some(30080)
        }),
        ("nodePort 0", svc("ports: [{port: 80, nodePort: 0}]"), &|s| s.ports[0].node_port.is_none()),
        // traffic policies
        ("itp local", svc("internalTrafficPolicy: Local"), &|s| s.internal_traffic_local && !s.external_traffic_local),
        ("etp local", svc("type: LoadBalancer\nexternalTrafficPolicy: Local"), &|s| s.external_traffic_local),
        ("policies default", svc(PORT), &|s| !s.internal_traffic_local && !s.external_traffic_local),
        // publishNotReadyAddresses default false
        ("pnra default", svc(PORT), &|s| !s.publish_not_ready_addresses),
        ("pnra", svc("publishNotReadyAddresses: true"), &|s| s.publish_not_ready_addresses),
        // proxy-handing labels: absent by default
        ("no proxy labels", svc(PORT), &|s| s.proxy_name.is_none() && !s.headless_label),
        // service-proxy-name: its value is kept (the agent compares it to its flag)
        ("proxy name", svc_labelled("service.kubernetes.io/service-proxy-name: other"), &|s| {
            s.proxy_name.as_deref() == Some("other")
        }),
        // an empty value is still the label (kube-proxy selects on existence)
        ("proxy name empty", svc_labelled("service.kubernetes.io/service-proxy-name: ''"), &|s| {
            s.proxy_name.as_deref() == Some("")
        }),
        // service.kubernetes.io/headless: presence, any value
        ("headless label", svc_labelled("service.kubernetes.io/headless: ''"), &|s| {
            s.headless_label && s.proxy_name.is_none() && !s.headless
        }),
        // other labels change nothing
        ("other labels", svc_labelled("app: web"), &|s| s.proxy_name.is_none() && !s.headless_label),
        // externalIPs
        ("externalIPs", svc("externalIPs: [192.0.2.1, '2001:db8::1']"), &|s| {
            *s.external_ips == [ip("192.0.2.1"), ip("2001:db8::1")]
        }),
        // ipFamilies alone (headless dual-stack) is fine
        ("ipFamilies headless", svc("clusterIP: None\nipFamilies: [IPv6, IPv4]"), &|s| s.headless),
        // a Service with no spec at all: ClusterIP, no ports
        ("no spec", svc_doc("kind: Service\napiVersion: v1\nmetadata: {name: bare, namespace: x}"), &|s| {
            s.service_type == ServiceType::ClusterIp && s.ports.is_empty()
        }),
    ]);
}

#[test]
fn service_load_balancer_status() {
    let s = svc_doc(
        "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec: {type: LoadBalancer, clusterIP: 10.96.1.1, loadBalancerIP: 198.51.100.9}\n\
         status: {loadBalancer: {ingress: [{ip: 203.0.113.7}, {hostname: lb.example.com}]}}",
    )
    .unwrap();
    // Only what the load balancer reported; spec.loadBalancerIP is a request.
    assert_eq!(*s.load_balancer_ips, [ip("203.0.113.7")]);
}

#[test]
fn service_rejections() {
    reject::<Service>(&[
        // metadata.name is required
        ("no name", svc_doc("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}"), "metadata.name"),
        // unknown type
        ("bad type", svc("type: Magic"), "spec.type"),
        // invalid IPs
        ("bad clusterIP", svc("clusterIP: 10.96.0.300"), "spec.clusterIP[0]"),
        ("bad clusterIPs", svc("clusterIPs: [10.96.0.1, 'zz::1::2']"), "spec.clusterIPs[1]"),
        ("bad externalIP", svc("externalIPs: [nope]"), "spec.externalIPs[0]"),
        (
            "bad lb ip",
            svc_doc("apiVersion: v1\nkind: Service\nmetadata: {name: w}\nstatus: {loadBalancer: {ingress: [{ip: x}]}}"),
            "status.loadBalancer.ingress[0].ip",
        ),
        // clusterIP must equal clusterIPs[0]
        ("clusterIP mismatch", svc("clusterIP: 10.96.0.1\nclusterIPs: [10.96.0.2]"), "spec.clusterIPs[0]"),
        // two addresses of one family
        ("two v4", svc("clusterIPs: [10.96.0.1, 10.96.0.2]"), "spec.clusterIPs"),
        // None with another address
        ("None plus ip", svc("clusterIPs: [None, 10.96.0.1]"), "spec.clusterIPs"),
        // ipFamilies must match the cluster IPs and be IPv4/IPv6
        ("family mismatch", svc("clusterIP: 10.96.0.1\nipFamilies: [IPv6]"), "spec.ipFamilies[0]"),
        ("bad family", svc("ipFamilies: [IPv5]"), "spec.ipFamilies[0]"),
        ("family twice", svc("ipFamilies: [IPv4, IPv4]"), "spec.ipFamilies[1]"),
        // ports out of range
        ("port 0", svc("ports: [{port: 0}]"), "spec.ports[0].port"),
        ("port missing", svc("ports: [{name: a}]"), "spec.ports[0].port"),
        ("port 65536", svc("ports: [{port: 65536}]"), "spec.ports[0].port"),
        ("port negative", svc("ports: [{port: -1}]"), "spec.ports[0].port"),
        ("targetPort 70000", svc("ports: [{port: 80, targetPort: 70000}]"), "spec.ports[0].targetPort"),
        ("nodePort 99999", svc("type: NodePort\nports: [{port: 80, nodePort: 99999}]"), "spec.ports[0].nodePort"),
        // nodePort on a ClusterIP Service
        ("nodePort on ClusterIP", svc("ports: [{port: 80, nodePort: 30001}]"), "spec.ports[0].nodePort"),
        // unknown protocol
        ("bad protocol", svc("ports: [{port: 80, protocol: QUIC}]"), "spec.ports[0].protocol"),
        // several ports need names, unique ones
        ("unnamed of two", svc("ports: [{name: a, port: 80}, {port: 81}]"), "spec.ports[1].name"),
        ("duplicate name", svc("ports: [{name: a, port: 80}, {name: a, port: 81}]"), "spec.ports[1].name"),
        ("duplicate port", svc("ports: [{name: a, port: 80}, {name: b, port: 80}]"), "spec.ports[1].port"),
        ("bad port name", svc("ports: [{name: Web_1, port: 80}]"), "spec.ports[0].name"),
        // named targetPort must be an IANA service name
        (
            "targetPort name too long",
            svc("ports: [{port: 80, targetPort: abcdefghijklmnop}]"),
            "spec.ports[0].targetPort",
        ),
        ("targetPort name caps", svc("ports: [{port: 80, targetPort: HTTP}]"), "spec.ports[0].targetPort"),
        // affinity
        ("bad affinity", svc("sessionAffinity: Cookie"), "spec.sessionAffinity"),
        (
            "affinity timeout 0",
            svc("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}"),
            "timeoutSeconds",
        ),
        (
            "affinity timeout > 1 day",
            svc("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}"),
            "timeoutSeconds",
        ),
        // traffic policies
        ("bad itp", svc("internalTrafficPolicy: Global"), "spec.internalTrafficPolicy"),
        ("bad etp", svc("externalTrafficPolicy: Nearest"), "spec.externalTrafficPolicy"),
        // ExternalName needs a valid DNS name
        ("external name missing", svc("type: ExternalName"), "spec.externalName"),
        ("external name invalid", svc("type: ExternalName\nexternalName: 'bad name!'"), "spec.externalName"),
    ]);
}

#[test]
fn slice_defaults() {
    let one = |cond: &str| eps(&format!("addressType: IPv4\nendpoints: [{{addresses: [10.0.0.1]{cond}}}]"));
    accept::<EndpointSlice>(&[
        // the slice belongs to the Service named by the label, in its namespace
        ("service label", one(""), &|s| {
            s.service == ObjectKey::new("shop", "web") && s.key == ObjectKey::new("shop", "web-abc")
        }),
        // ready absent -> true; serving absent -> true; terminating absent -> false
        ("conditions absent", one(""), &|s| {
            let e = &s.endpoints[0];
            e.ready && e.serving && !e.terminating
        }),
        // serving absent is true even when ready is false: kube-proxy reads
        // it so (endpointslicecache.go `newEndpointSliceInfo`), not as "ready"
        ("ready false, serving absent", one(", conditions: {ready: false}"), &|s| {
            let e = &s.endpoints[0];
            !e.ready && e.serving && !e.terminating
        }),
        ("terminating but serving", one(", conditions: {ready: false, serving: true, terminating: true}"), &|s| {
            s.endpoints[0].is_serving_terminating()
        }),
        // endpoint port: protocol default TCP, name default ""
        ("port defaults", eps("addressType: IPv4\nports: [{port: 8080}]\nendpoints: []"), &|s| {
            s.ports == [EndpointPort { name: String::new(), protocol: Protocol::Tcp, port: 8080 }]
        }),
        // a port without a number ("all ports") is left out
        ("port without number", eps("addressType: IPv4\nports: [{name: x}]\nendpoints: []"), &|s| s.ports.is_empty()),
        // hostname, nodeName, zone, targetRef Pod
        (
            "endpoint details",
            one(", hostname: pod-0, nodeName: n1, zone: z1, targetRef: {kind: Pod, name: web-0}"),
            &|s| {
                let e = &s.endpoints[0];
                e.hostname() == Some("pod-0") && e.node_name.as_deref() == Some("n1") && e.zone.as_deref() == Some("z1")
            },
        ),
        // topology hints: zones and nodes (trafficDistribution PreferClose / PreferSameNode)
        ("hints", one(", hints: {forZones: [{name: a}, {name: b}], forNodes: [{name: n1}]}"), &|s| {
            let names = |h: &[std::sync::Arc<str>]| h.iter().map(|n| n.to_string()).collect::<Vec<_>>();
            names(s.endpoints[0].zone_hints()) == ["a", "b"] && names(s.endpoints[0].node_hints()) == ["n1"]
        }),
        // no hints: empty lists
        ("no hints", one(""), &|s| s.endpoints[0].extra.is_none()),
        // IPv6 slice
        ("ipv6", eps("addressType: IPv6\nendpoints: [{addresses: ['fd00::1']}]"), &|s| {
            s.endpoints[0].addresses().collect::<Vec<_>>() == [ip("fd00::1")]
        }),
        // FQDN slice: kept, endpoints without addresses
        ("fqdn", eps("addressType: FQDN\nendpoints: [{addresses: [db.example.com]}]"), &|s| {
            s.address_type == AddressType::Fqdn && s.endpoints[0].addresses().next().is_none()
        }),
        // endpoints absent -> none
        ("no endpoints", eps("addressType: IPv4"), &|s| s.endpoints.is_empty()),
    ]);
}

#[test]
fn slice_rejections() {
    let no_label = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: orphan}\naddressType: IPv4\nendpoints: []";
    reject::<EndpointSlice>(&[
        // the service-name label is required
        ("no label", eps_doc(no_label), "kubernetes.io/service-name"),
        // addressType required and known
        ("no addressType", eps("endpoints: []"), "addressType"),
        ("bad addressType", eps("addressType: IPX\nendpoints: []"), "addressType"),
        // addresses: present, valid, of the slice's family
        ("no addresses", eps("addressType: IPv4\nendpoints: [{addresses: []}]"), "endpoints[0].addresses"),
        (
            "bad address",
            eps("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.999]}]"),
            "endpoints[1].addresses[0]",
        ),
        (
            "family mismatch",
            eps("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]"),
            "endpoints[0].addresses[0]",
        ),
        // ports
        ("port 0", eps("addressType: IPv4\nports: [{port: 0}]\nendpoints: []"), "ports[0].port"),
        ("port too big", eps("addressType: IPv4\nports: [{port: 65536}]\nendpoints: []"), "ports[0].port"),
        (
            "bad protocol",
            eps("addressType: IPv4\nports: [{port: 1, protocol: ICMP}]\nendpoints: []"),
            "ports[0].protocol",
        ),
        // hostname must be a DNS label (it becomes one)
        (
            "bad hostname",
            eps("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], hostname: Pod_0}]"),
            "endpoints[0].hostname",
        ),
    ]);
}

#[test]
fn node_rules() {
    accept::<Node>(&[
        // InternalIP and ExternalIP are addresses; Hostname is not; podCIDRs wins over podCIDR
        ("addresses and cidrs", node_doc(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:1::/64']}\n\
             status: {addresses: [{type: InternalIP, address: 192.168.1.10}, {type: Hostname, address: n1}, {type: ExternalIP, address: '2001:db8::10'}]}",
        ), &|n| {
            n.name == "n1"
                && n.addresses == [ip("192.168.1.10"), ip("2001:db8::10")]
                && n.pod_cidrs == ["10.244.1.0/24", "fd00:1::/64"]
        }),
        // the zone label is the node's zone, for topology hints
        // an ExternalIP listed first still comes after the InternalIPs
        ("internal first", node_doc(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
             status: {addresses: [{type: ExternalIP, address: 203.0.113.5}, {type: InternalIP, address: 192.168.1.10}, {type: InternalIP, address: 'fd00::10'}]}",
        ), &|n| n.addresses == [ip("192.168.1.10"), ip("fd00::10"), ip("203.0.113.5")]),
        ("zone label", node_doc("apiVersion: v1\nkind: Node\nmetadata: {name: n3, labels: {topology.kubernetes.io/zone: z1}}"), &|n| {
            n.zone.as_deref() == Some("z1")
        }),
        ("no zone label", node_doc("apiVersion: v1\nkind: Node\nmetadata: {name: n4}"), &|n| n.zone.is_none()),
        // podCIDRs absent -> podCIDR
        ("podCIDR fallback", node_doc("apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nspec: {podCIDR: 10.244.2.0/24}"), &|n| {
            n.pod_cidrs == ["10.244.2.0/24"]
        }),
    ]);
    reject::<Node>(&[
        ("no name", node_doc("apiVersion: v1\nkind: Node\nmetadata: {}"), "metadata.name"),
        ("bad address", node_doc("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: ten}]}"), "status.addresses[0].address"),
        ("bad cidr", node_doc("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.244.0.0/33}"), "spec.podCIDR[0]"),
        ("cidr without prefix", node_doc("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDRs: [10.244.0.0]}"), "spec.podCIDRs[0]"),
    ]);
}
