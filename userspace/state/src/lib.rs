//! ferry-state: Kubernetes sources folded into one catalog.
//!
//! Sources (the YAML directory now, the Kubernetes API later) publish
//! [`Snapshot`]s on a `tokio::sync::watch` channel; the agent and ferry-dns
//! both subscribe to the same channel, so they always agree on what exists.

pub mod model;

pub use model::*;
