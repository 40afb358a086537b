//! The fake API server against real clients: kube-rs unchanged
//! (`kube_client`), and raw HTTP for the protocol details kube hides
//! (`raw_http`). Every wait is bounded.

mod kube_client;
mod raw_http;

use std::time::Duration;

use serde_json::{json, Value};

/// The longest any single step may take.
pub const STEP: Duration = Duration::from_secs(5);

pub fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    })
}

pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
    })
}

pub fn endpoint_slice(ns: &str, name: &str, service: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}
