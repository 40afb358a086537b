//! ferry-state: Kubernetes sources folded into one catalog.
//!
//! Sources (the YAML directory now, the Kubernetes API later) feed a
//! [`Store`], which merges objects by `(kind, namespace/name)` and publishes
//! [`Snapshot`]s on a `tokio::sync::watch` channel; the agent and ferry-dns
//! both subscribe to the same channel, so they always agree on what exists.
//!
//! # Public API
//!
//! ```text
//! // Live: load a directory, then follow it (inotify). The receiver already
//! // holds a ready snapshot; every change publishes a new generation.
//! watch_dir(path).await -> Result<(watch::Receiver<Snapshot>, JoinHandle<()>), SourceError>
//!
//! // One-shot, for tools and tests: the catalog plus every skipped object.
//! load_dir(path) -> Result<(Catalog, Vec<ObjectError>), SourceError>
//!
//! // Text -> objects (YAML streams with `---`, JSON, `kind: List`).
//! parse_documents(text, origin) -> (Vec<Object>, Vec<ObjectError>)
//! catalog_from_objects(objects) -> Catalog
//!
//! // Fixtures for other crates' tests: all-or-nothing.
//! Catalog::from_yaml(text) -> Result<Catalog, SourceError>
//!
//! // Lookups: Catalog::service(ns, name), services_in(ns), namespaces(),
//! // endpoints_of(&key), node(name), EndpointSlice::port_for(&ServicePort),
//! // Endpoint::is_serving_terminating() ... see `model`.
//! ```
//!
//! Readiness (STYLE.md principle 8): `Snapshot::ready` is false until the
//! source's first full load; before that, absence proves nothing.
//!
//! Bad input never takes good input down with it: an invalid object is
//! reported ([`ObjectError`]: file, kind, namespace/name, field, reason) and
//! skipped. See [`yaml_dir`] for what happens to a file that stops parsing.
#![forbid(unsafe_code)]

pub mod convert;
pub mod error;
pub mod fixture;
mod intern;
mod kube_source;
pub mod model;
pub mod parse;
pub mod source;
pub mod store;
pub mod yaml_dir;

pub use convert::{Kind, Object, ObjectId};
pub use error::{ConvertError, ObjectError, SourceError};
pub use fixture::load_fixture;
pub use model::*;
pub use parse::{parse_documents, Format};
#[cfg(feature = "cli")]
pub use source::SourceArgs;
pub use source::{start, KindState, KindStatus, KubeConfig, Source, SourceConfig, SourceStatus};
pub use store::Store;
pub use yaml_dir::{load_dir, watch_dir};

/// Merge objects into a catalog (later declarations of the same object win).
pub fn catalog_from_objects(objects: impl IntoIterator<Item = Object>) -> Catalog {
    let mut store = Store::new();
    store.replace_origin("objects", objects.into_iter().collect());
    store.into_catalog()
}

impl Catalog {
    /// Every object of the catalog (copies), as a source would declare them.
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        let services = self.services.values().cloned().map(Object::Service);
        let slices = self.slices.values().flatten().cloned().map(Object::EndpointSlice);
        let nodes = self.nodes.values().cloned().map(Object::Node);
        services.chain(slices).chain(nodes)
    }
}

/// Whole catalogs in, snapshots out as a store publishes them (with their
/// change log): for consumers' tests that build catalogs by hand.
pub struct Feed {
    store: Store,
    rx: tokio::sync::watch::Receiver<Snapshot>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        let mut store = Store::new();
        store.set_ready();
        let rx = store.subscribe();
        Self { store, rx }
    }

    /// The store now holds exactly `catalog`; the catalog it publishes.
    pub fn publish(&mut self, catalog: &Catalog) -> std::sync::Arc<Catalog> {
        self.store.replace_origin("feed", catalog.objects().collect());
        self.store.publish();
        self.rx.borrow().catalog.clone()
    }
}

impl Catalog {
    /// Build a catalog from YAML or JSON text (several documents, Lists).
    /// Any invalid object is an error: fixtures should be exactly what the
    /// test means.
    pub fn from_yaml(text: &str) -> Result<Catalog, SourceError> {
        let (objects, errors) = parse_documents(text, "from_yaml");
        if errors.is_empty() {
            Ok(catalog_from_objects(objects))
        } else {
            Err(SourceError::Objects(errors))
        }
    }
}
