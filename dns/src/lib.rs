//! ferry-dns: the Kubernetes cluster DNS zone answered from the ferry-state
//! catalog, and every other name forwarded to the node's resolvers.
//!
//! Layout: [`wire`] reads queries and patches pre-encoded answers (the hot
//! path), [`zone`] turns a catalog into those answers per the Kubernetes DNS
//! specification, [`answer`] is the request path, [`forward`] the upstream
//! client and cache, [`server`] the UDP/TCP listeners and catalog follower,
//! [`metrics`] Prometheus and health endpoints.

pub mod answer;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod udp;
pub mod wire;
pub mod zone;

#[cfg(test)]
mod fuzz_tests;
