//! Synthetic Services and EndpointSlices, for benchmarks and manual runs
//! (`ferry-fake-api --generate services=N,endpoints=M`).
//!
//! Service `i` is `svc-{i}` in namespace `ns-{i % namespaces}`, ClusterIP
//! the `i+1`-th address of 10.96.0.0/12, one TCP port 80 -> 8080.
//! EndpointSlice `j` belongs to Service `j % services` and holds one ready
//! endpoint, the `j+1`-th address of 10.128.0.0/10.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

fn nth(base: Ipv4Addr, n: usize) -> String {
    Ipv4Addr::from(u32::from(base).wrapping_add(n as u32 + 1)).to_string()
}

fn namespace(i: usize, namespaces: usize) -> String {
    format!("ns-{}", i % namespaces.max(1))
}

/// `n` Services spread over `namespaces` namespaces.
pub fn services(n: usize, namespaces: usize) -> impl Iterator<Item = Value> {
    (0..n).map(move |i| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": namespace(i, namespaces)},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": nth(Ipv4Addr::new(10, 96, 0, 0), i),
                "selector": {"app": format!("svc-{i}")},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        })
    })
}

/// `n` EndpointSlices for the first `services` Services (round robin).
pub fn endpoint_slices(n: usize, services: usize, namespaces: usize) -> impl Iterator<Item = Value> {
    let services = services.max(1);
    (0..n).map(move |j| {
        let svc = j % services;
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("svc-{svc}-{j:x}"),
                "namespace": namespace(svc, namespaces),
                "labels": {"kubernetes.io/service-name": format!("svc-{svc}")},
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": [nth(Ipv4Addr::new(10, 128, 0, 0), j)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            }],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    })
}
