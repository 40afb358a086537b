//! One row per rule of the Kubernetes DNS specification (schema 1.1.0) and
//! of the RFCs it relies on, run through the whole synchronous request path
//! (`answer_fast`) against a fixed catalog, answers decoded with hickory.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferry_state::Catalog;
use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::answer::{answer_fast, Fast, Transport};
use crate::zone::{Zone, ZoneCache, ZoneConfig};

pub const FIXTURE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
---
apiVersion: v1
kind: Service
metadata: {name: single, namespace: default}
spec:
  clusterIP: 10.96.0.11
  ports:
  - {port: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec:
  clusterIP: None
  ports:
  - {name: pg, port: 5432, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-v4
  namespace: prod
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.0.5]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.0.6]
  conditions: {ready: true}
- addresses: [10.244.0.7]
  hostname: db-2
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-v6
  namespace: prod
  labels: {kubernetes.io/service-name: db}
addressType: IPv6
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: ["fd00:244::5"]
  hostname: db-0
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: prod}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: warmup, namespace: prod}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: warmup-a
  namespace: prod
  labels: {kubernetes.io/service-name: warmup}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.1]
  hostname: w-0
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: www.example.com
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: default}
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
"#;

pub fn fixture_zone(pods_insecure: bool) -> Zone {
    let cat = Catalog::from_yaml(FIXTURE).expect("fixture parses");
    Zone::build(&cat, ZoneConfig { zone: "cluster.local".into(), ttl: 5, pods_insecure }).expect("zone builds")
}

pub fn query_bytes(name: &str, qt: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), qt));
    if let Some(size) = edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Ask the zone over UDP and decode the answer; `None` for a query that
/// needs the network (forwarding / ExternalName chase).
fn ask_with(z: &Zone, ready: bool, bytes: &[u8], t: Transport) -> Option<Message> {
    let mut out = Vec::new();
    match answer_fast(z, ready, bytes, t, &mut out) {
        Fast::Done { .. } => Some(Message::from_vec(&out).expect("answer decodes")),
        Fast::Drop => panic!("dropped"),
        Fast::Slow(_) => None,
    }
}

fn ask(z: &Zone, name: &str, qt: RecordType) -> Message {
    ask_with(z, true, &query_bytes(name, qt, None), Transport::Udp).expect("answered from the zone")
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ips(s: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = s.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

fn srv(m: &Message) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ptr(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect()
}

/// A negative answer must be authoritative and carry the zone SOA
/// (RFC 2308 §2.1/§2.2), so resolvers can cache it.
fn assert_negative(m: &Message, rcode: ResponseCode, soa_owner: &str) {
    assert_eq!(m.metadata.response_code, rcode);
    assert!(m.answers.is_empty(), "{:?}", m.answers);
    assert!(m.metadata.authoritative);
    let soa = m.authorities.iter().find(|r| r.record_type() == RecordType::SOA).expect("SOA in authority");
    assert_eq!(soa.name.to_ascii().to_lowercase(), soa_owner);
}

#[test]
fn schema_version_txt() {
    // §2.2: dns-version.<zone>. TXT <schema version>
    let m = ask(&fixture_zone(false), "dns-version.cluster.local.", RecordType::TXT);
    let txt: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(txt, vec!["1.1.0".to_string()]);
}

#[test]
fn cluster_ip_a_and_aaaa() {
    let z = fixture_zone(false);
    // §2.3.1: A for the IPv4 ClusterIP, AAAA for the IPv6 one (dual-stack).
    let m = ask(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.96.0.10"]));
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers[0].ttl, 5, "default TTL 5 s");
    let m = ask(&z, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(addrs(&m), ips(&["fd00:96::10"]));
    // A single-stack Service has no AAAA: the name exists, so NODATA.
    let m = ask(&z, "single.default.svc.cluster.local.", RecordType::AAAA);
    assert_negative(&m, ResponseCode::NoError, "cluster.local.");
}

#[test]
fn cluster_ip_srv_named_ports_only() {
    let z = fixture_zone(false);
    // §2.3.2: _<port>._<proto>.<svc>.<ns>.svc.<zone> SRV -> <svc>.<ns>.svc.<zone>
    let m = ask(&z, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(srv(&m), vec![(80, "web.default.svc.cluster.local.".to_string())]);
    // the Additional section may carry the Service's addresses
    let glue: Vec<_> = m.additionals.iter().map(|r| r.record_type()).collect();
    assert!(glue.contains(&RecordType::A) && glue.contains(&RecordType::AAAA), "{glue:?}");
    let m = ask(&z, "_dns._udp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(srv(&m), vec![(53, "web.default.svc.cluster.local.".to_string())]);
    // wrong protocol label: no such name
    let m = ask(&z, "_http._udp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    // "Unnamed ports do not have an SRV record."
    let m = ask(&z, "_tcp.single.default.svc.cluster.local.", RecordType::SRV);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    // _tcp.web... exists only as an empty non-terminal: NODATA (RFC 8020)
    let m = ask(&z, "_tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_negative(&m, ResponseCode::NoError, "cluster.local.");
}

#[test]
fn cluster_ip_ptr_v4_and_v6() {
    let z = fixture_zone(false);
    // §2.3.3: <d>.<c>.<b>.<a>.in-addr.arpa PTR <svc>.<ns>.svc.<zone>
    let m = ask(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptr(&m), vec!["web.default.svc.cluster.local."]);
    // IPv6: nibbles under ip6.arpa (RFC 3596 §2.5)
    let rev = super::reverse_name("fd00:96::10".parse().unwrap());
    let m = ask(&z, &rev, RecordType::PTR);
    assert_eq!(ptr(&m), vec!["web.default.svc.cluster.local."]);
    // An address in a private range with no Service: authoritative NXDOMAIN
    // under that range's reverse zone.
    let m = ask(&z, "99.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_negative(&m, ResponseCode::NXDomain, "10.in-addr.arpa.");
    // A public address is not ours: forwarded.
    let q = query_bytes("8.8.8.8.in-addr.arpa.", RecordType::PTR, None);
    assert!(ask_with(&z, true, &q, Transport::Udp).is_none());
}

#[test]
fn headless_a_per_ready_endpoint() {
    let z = fixture_zone(false);
    // §2.4.1: one A per ready endpoint; not-ready 10.244.0.7 is left out.
    let m = ask(&z, "db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.0.5", "10.244.0.6"]));
    let m = ask(&z, "db.prod.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(addrs(&m), ips(&["fd00:244::5"]));
    // hostname records, one per IP of the hostname (both families)
    let m = ask(&z, "db-0.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.0.5"]));
    let m = ask(&z, "db-0.db.prod.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(addrs(&m), ips(&["fd00:244::5"]));
    // an endpoint without hostname gets a system-assigned one
    let m = ask(&z, "10-244-0-6.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.0.6"]));
    // the not-ready endpoint's hostname does not exist
    let m = ask(&z, "db-2.db.prod.svc.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    // "If there are no ready endpoints ... the answer should be NXDOMAIN."
    let m = ask(&z, "empty.prod.svc.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    let m = ask(&z, "_pg._tcp.empty.prod.svc.cluster.local.", RecordType::SRV);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
}

#[test]
fn headless_srv_per_endpoint_hostname() {
    let z = fixture_zone(false);
    // §2.4.2: N ready endpoints x M named ports, targets <hostname>.<svc>...
    let m = ask(&z, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        srv(&m),
        vec![
            (5432, "10-244-0-6.db.prod.svc.cluster.local.".to_string()),
            (5432, "db-0.db.prod.svc.cluster.local.".to_string()),
        ]
    );
    let mut g = m.clone();
    g.answers = m.additionals.clone();
    let glue = addrs(&g);
    assert_eq!(glue, ips(&["10.244.0.5", "10.244.0.6", "fd00:244::5"]));
}

#[test]
fn headless_ptr_to_hostname() {
    let z = fixture_zone(false);
    // §2.4.3: PTR of a ready endpoint's address -> its hostname record
    let m = ask(&z, "5.0.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptr(&m), vec!["db-0.db.prod.svc.cluster.local."]);
    let m = ask(&z, &super::reverse_name("fd00:244::5".parse().unwrap()), RecordType::PTR);
    assert_eq!(ptr(&m), vec!["db-0.db.prod.svc.cluster.local."]);
    let m = ask(&z, "6.0.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptr(&m), vec!["10-244-0-6.db.prod.svc.cluster.local."]);
    // not ready: no PTR
    let m = ask(&z, "7.0.244.10.in-addr.arpa.", RecordType::PTR);
    assert_negative(&m, ResponseCode::NXDomain, "10.in-addr.arpa.");
}

#[test]
fn publish_not_ready_addresses() {
    let z = fixture_zone(false);
    // the specification's tolerate-unready: not-ready endpoints count as ready
    let m = ask(&z, "warmup.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.1.1"]));
    let m = ask(&z, "w-0.warmup.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.1.1"]));
}

/// The labels that hand a Service to another service proxy
/// (`service.kubernetes.io/service-proxy-name`, `service.kubernetes.io/headless`)
/// concern the proxy only: CoreDNS answers for such Services as for any
/// other, and so does ferry-dns (the agent is what skips them).
#[test]
fn proxy_labels_do_not_change_dns() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: other
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: foo-bar}
spec: {clusterIP: 10.96.0.40, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata:
  name: hl
  namespace: default
  labels: {service.kubernetes.io/headless: ""}
spec: {clusterIP: None, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hl-a
  namespace: default
  labels: {kubernetes.io/service-name: hl, service.kubernetes.io/headless: ""}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
- addresses: [10.244.3.1]
  hostname: hl-0
"#;
    let cat = Catalog::from_yaml(yaml).expect("fixture parses");
    let cfg = ZoneConfig { zone: "cluster.local".into(), ttl: 5, pods_insecure: false };
    let z = Zone::build(&cat, cfg).expect("zone builds");
    let m = ask(&z, "other.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.96.0.40"]));
    let m = ask(&z, "_http._tcp.other.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(srv(&m).len(), 1);
    let m = ask(&z, "hl.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.3.1"]));
    let m = ask(&z, "hl-0.hl.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.3.1"]));
}

#[test]
fn external_name_cname() {
    let z = fixture_zone(false);
    // §2.5: CNAME <extname>; the CNAME question is answered from the zone
    let m = ask(&z, "ext.default.svc.cluster.local.", RecordType::CNAME);
    let t: Vec<_> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(t, vec!["www.example.com."]);
    // an A question needs the target resolved: the slow path does that
    let q = query_bytes("ext.default.svc.cluster.local.", RecordType::A, None);
    assert!(ask_with(&z, true, &q, Transport::Udp).is_none());
}

#[test]
fn case_insensitive_and_case_preserving() {
    let z = fixture_zone(false);
    let m = ask(&z, "WeB.DeFault.SVC.Cluster.LOCAL.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.96.0.10"]));
    // the answer echoes the question's spelling (RFC 4343 §4.1)
    assert_eq!(m.queries[0].name().to_ascii(), "WeB.DeFault.SVC.Cluster.LOCAL.");
    assert_eq!(m.answers[0].name.to_ascii(), "WeB.DeFault.SVC.Cluster.LOCAL.");
}

#[test]
fn nxdomain_vs_nodata() {
    let z = fixture_zone(false);
    // empty non-terminals exist: NODATA
    for n in ["svc.cluster.local.", "default.svc.cluster.local.", "cluster.local."] {
        let m = ask(&z, n, RecordType::A);
        assert_negative(&m, ResponseCode::NoError, "cluster.local.");
    }
    // names that do not exist: NXDOMAIN
    for n in ["nosuch.default.svc.cluster.local.", "nosuchns.svc.cluster.local.", "x.web.default.svc.cluster.local."] {
        let m = ask(&z, n, RecordType::A);
        assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    }
    // search-path expansions that can never exist
    let m = ask(&z, "web.default.svc.cluster.local.svc.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    let m = ask(&z, "web.default.svc.cluster.local.corp.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "answered here, not forwarded");
    // apex SOA and NS exist
    assert_eq!(ask(&z, "cluster.local.", RecordType::SOA).answers.len(), 1);
    assert_eq!(ask(&z, "cluster.local.", RecordType::NS).answers.len(), 1);
}

#[test]
fn pod_records_only_in_insecure_mode() {
    // §2.6 (deprecated), off by default as in CoreDNS
    let off = fixture_zone(false);
    let m = ask(&off, "10-244-3-4.default.pod.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    let on = fixture_zone(true);
    let m = ask(&on, "10-244-3-4.default.pod.cluster.local.", RecordType::A);
    assert_eq!(addrs(&m), ips(&["10.244.3.4"]));
    let m = ask(&on, "fd00--1.default.pod.cluster.local.", RecordType::AAAA);
    assert_eq!(addrs(&m), ips(&["fd00::1"]));
    let m = ask(&on, "10-244-3-4.default.pod.cluster.local.", RecordType::AAAA);
    assert_negative(&m, ResponseCode::NoError, "cluster.local.");
    let m = ask(&on, "not-an-ip.default.pod.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    let m = ask(&on, "default.pod.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NoError, "cluster.local.");
}

#[test]
fn servfail_before_ready() {
    // Before the first full load, absence proves nothing (STYLE.md §8).
    let z = Zone::empty(ZoneConfig::default()).unwrap();
    let q = query_bytes("web.default.svc.cluster.local.", RecordType::A, None);
    let m = ask_with(&z, false, &q, Transport::Udp).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let q = query_bytes("example.com.", RecordType::A, None);
    assert!(ask_with(&z, false, &q, Transport::Udp).is_none(), "other names still forwarded");
}

/// A headless Service `name` with `n` ready endpoints `h-<i>`.
fn headless_yaml(name: &str, n: usize, net: u8) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: None, ports: [{{name: p, port: 1}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-a, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: p, port: 1, protocol: TCP}}]\nendpoints:\n"
    );
    for i in 0..n {
        y.push_str(&format!("- addresses: [10.244.{net}.{i}]\n  hostname: h-{i}\n"));
    }
    y
}

#[test]
fn edns_echo_and_truncation() {
    // big: 30 A records (~530 bytes) exceed 512. mid: its 20 SRV records
    // (targets are never compressed, RFC 2782) fit in 1232, not with glue.
    let yaml = format!("{}---\n{}", headless_yaml("big", 30, 9), headless_yaml("mid", 20, 8));
    let z = Zone::build(&Catalog::from_yaml(&yaml).unwrap(), ZoneConfig::default()).unwrap();
    let name = "big.default.svc.cluster.local.";
    // no EDNS: 512-byte limit, TC set, no partial RRset
    let m = ask_with(&z, true, &query_bytes(name, RecordType::A, None), Transport::Udp).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    // EDNS 1232: fits
    let m = ask_with(&z, true, &query_bytes(name, RecordType::A, Some(1232)), Transport::Udp).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 30);
    assert!(m.edns.is_some(), "OPT echoed (RFC 6891 §6.1.1)");
    // SRV over UDP at 1232: glue dropped, answers complete, no TC (RFC 2181 §9)
    let srvq = query_bytes("_p._tcp.mid.default.svc.cluster.local.", RecordType::SRV, Some(4096));
    let m = ask_with(&z, true, &srvq, Transport::Udp).unwrap();
    assert_eq!((m.answers.len(), m.additionals.len()), (20, 0));
    assert!(!m.metadata.truncation);
    // too large even without glue: TC; over TCP everything, glue included
    let srvq = query_bytes("_p._tcp.big.default.svc.cluster.local.", RecordType::SRV, Some(4096));
    assert!(ask_with(&z, true, &srvq, Transport::Udp).unwrap().metadata.truncation);
    let m = ask_with(&z, true, &srvq, Transport::Tcp).unwrap();
    assert_eq!((m.answers.len(), m.additionals.len()), (30, 30));
}

#[test]
fn bad_input_gets_error_rcodes() {
    let z = fixture_zone(false);
    let base = query_bytes("web.default.svc.cluster.local.", RecordType::A, None);
    let rcode = |b: &[u8]| ask_with(&z, true, b, Transport::Udp).map(|m| m.metadata.response_code);
    // wrong class: CHAOS
    let mut q = Message::from_vec(&base).unwrap();
    q.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(rcode(&q.to_vec().unwrap()), Some(ResponseCode::Refused));
    // unsupported opcode (NOTIFY = 4)
    let mut b = base.clone();
    b[2] = (b[2] & 0x87) | (4 << 3);
    assert_eq!(rcode(&b), Some(ResponseCode::NotImp));
    // zone transfer
    let b = query_bytes("cluster.local.", RecordType::AXFR, None);
    assert_eq!(rcode(&b), Some(ResponseCode::Refused));
    // EDNS version 1: BADVERS (extended rcode 16)
    let mut q = Message::from_vec(&query_bytes("web.default.svc.cluster.local.", RecordType::A, Some(1232))).unwrap();
    q.edns.as_mut().unwrap().set_version(1);
    let m = ask_with(&z, true, &q.to_vec().unwrap(), Transport::Udp).unwrap();
    assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
    // ANY: one RRset (RFC 8482), not the whole name
    let m = ask(&z, "web.default.svc.cluster.local.", RecordType::ANY);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.iter().map(|r| r.record_type()).collect::<std::collections::BTreeSet<_>>().len(), 1);
    // garbage: too short to answer
    let mut out = Vec::new();
    assert!(matches!(answer_fast(&z, true, &[1, 2, 3], Transport::Udp, &mut out), Fast::Drop));
    // truncated question: FORMERR with the ID echoed
    let m = ask_with(&z, true, &base[..base.len() - 3], Transport::Udp).unwrap();
    assert_eq!((m.metadata.id, m.metadata.response_code), (0xbeef, ResponseCode::FormErr));
}

#[test]
fn rebuild_is_whole_and_independent() {
    // A new catalog gives a new zone; the old one still answers as before.
    let old = fixture_zone(false);
    let mut cat = Catalog::from_yaml(FIXTURE).unwrap();
    cat.services.retain(|k, _| &*k.name != "web");
    let new = Zone::build(&cat, ZoneConfig::default()).unwrap();
    assert_eq!(addrs(&ask(&old, "web.default.svc.cluster.local.", RecordType::A)), ips(&["10.96.0.10"]));
    let m = ask(&new, "web.default.svc.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain, "cluster.local.");
    let m = ask(&new, "10.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_negative(&m, ResponseCode::NXDomain, "10.in-addr.arpa.");
}

/// Every name and what it holds, to compare zones built different ways.
fn dump(z: &Zone) -> BTreeMap<Vec<u8>, String> {
    z.names
        .iter()
        .flat_map(|s| s.iter())
        .map(|(k, e)| {
            let mut e = (**e).clone();
            e.rrsets.sort_by_key(|(t, _)| *t);
            (k.to_vec(), format!("{e:?}"))
        })
        .collect()
}

/// The hot path's lookup layout holds exactly what the patchable shards
/// hold, and nothing else.
fn assert_lookup_matches(z: &Zone) {
    for (k, e) in z.names.iter().flat_map(|s| s.iter()) {
        let hit = z.lookup(k).unwrap_or_else(|| panic!("{k:?} not found"));
        assert_eq!(hit.is_alias(), e.cname.is_some());
        assert!(std::ptr::eq(hit.entry(), &**e));
        for (t, p) in &e.rrsets {
            let r = hit.rrset(Some(*t)).expect("rrset");
            assert_eq!((r.bytes, r.prefix_len, r.additionals), (&p.bytes[..], p.prefix_len, p.additionals));
        }
        let first = hit.rrset(None).map(|r| r.bytes.to_vec());
        assert_eq!(first, e.rrsets.first().map(|(_, p)| p.bytes.to_vec()));
        assert!(hit.rrset(Some(999)).is_none());
        let mut other = k.to_vec();
        other.insert(0, b'x');
        other.insert(0, 1);
        if z.get(&other).is_none() {
            assert!(z.lookup(&other).is_none());
        }
    }
}

#[test]
fn patched_zone_equals_a_fresh_build() {
    // The cache patches the last zone; after every kind of change the result
    // must be exactly what a build from scratch gives, and the zone handed
    // out before must not have moved.
    let base = Catalog::from_yaml(FIXTURE).unwrap();
    let with = |extra: &str| {
        let mut c = base.clone();
        let more = Catalog::from_yaml(extra).unwrap();
        c.services.extend(more.services);
        c.slices.extend(more.slices);
        c
    };
    // Two headless Services over the same addresses: one merged PTR RRset.
    let shared = format!("{}---\n{}", headless_yaml("h1", 3, 7), headless_yaml("h2", 2, 7));
    let mut no_web = base.clone();
    no_web.services.retain(|k, _| &*k.name != "web");
    let mut no_ns = base.clone();
    no_ns.services.retain(|k, _| &*k.namespace != "prod");
    let steps = [
        base.clone(),
        with(&shared),
        with(&headless_yaml("h1", 3, 7)),
        no_web,
        no_ns,
        Catalog::default(),
        with(&shared),
        base.clone(),
    ];
    for pods_insecure in [false, true] {
        let config = ZoneConfig { pods_insecure, ..ZoneConfig::default() };
        let mut cache = ZoneCache::new(config.clone());
        let mut prev: Option<(Zone, BTreeMap<Vec<u8>, String>)> = None;
        for (i, cat) in steps.iter().enumerate() {
            let z = cache.build(cat).unwrap();
            let fresh = Zone::build(cat, config.clone()).unwrap();
            assert_eq!(dump(&z), dump(&fresh), "step {i}, pods {pods_insecure}");
            assert_lookup_matches(&z);
            assert_eq!(z.len(), fresh.len());
            if let Some((old, before)) = &prev {
                assert_eq!(&dump(old), before, "step {i}: the served zone changed");
            }
            let d = dump(&z);
            prev = Some((z, d));
        }
    }
    // Removing the last Service of a namespace removes the namespace name.
    let z = Zone::build(&steps[4], ZoneConfig::default()).unwrap();
    assert_negative(&ask(&z, "prod.svc.cluster.local.", RecordType::A), ResponseCode::NXDomain, "cluster.local.");
}

#[test]
fn patching_only_the_named_changes_equals_a_fresh_build() {
    // Catalogs from a store name the Services changed since the previous
    // one; the cache then looks at those alone. A generation it did not see
    // makes it compare everything again.
    let steps = [
        FIXTURE.to_string(),
        format!("{FIXTURE}---\n{}", headless_yaml("h1", 3, 7)),
        format!("{FIXTURE}---\n{}---\n{}", headless_yaml("h1", 2, 7), headless_yaml("h2", 2, 7)),
        // Not built (skipped): the next build's changes do not follow.
        headless_yaml("h2", 1, 8),
        String::new(),
        format!("{FIXTURE}---\n{}", headless_yaml("h2", 1, 8)),
        FIXTURE.replace("10.96.0.10", "10.96.0.11"),
    ];
    let mut store = ferry_state::Store::new();
    let rx = store.subscribe();
    let mut cache = ZoneCache::new(ZoneConfig::default());
    for (i, text) in steps.iter().enumerate() {
        let (objects, errors) = ferry_state::parse_documents(text, "steps");
        assert!(errors.is_empty(), "{errors:?}");
        store.replace_origin("steps", objects);
        store.set_ready();
        store.publish();
        let cat = rx.borrow().catalog.clone();
        if i == 3 {
            continue;
        }
        let z = cache.build(&cat).unwrap();
        let fresh = Zone::build(&cat, ZoneConfig::default()).unwrap();
        assert_eq!(dump(&z), dump(&fresh), "step {i}");
        assert_lookup_matches(&z);
    }
}
