//! The Kubernetes API source: one kube-runtime watcher per kind (a paged
//! list, then a watch with bookmarks; on `410 Gone` or any restart of the
//! watch, a relist), folded into the [`Store`] by one task.
//!
//! The rules it keeps:
//! - **A relist is one swap.** The objects of a listing are collected until
//!   the listing is complete (`InitDone`) and then replace that kind's
//!   objects at once ([`Store::replace_origin`]), which also removes every
//!   object the listing no longer has: a delete made while the watch was
//!   down is applied then (cilium/cilium#48050 lost exactly these).
//!   Consumers never see a catalog flushed and not yet refilled.
//! - **Never flush on failure.** A failing list or watch is retried with
//!   jittered exponential backoff (250 ms doubling to 10 s, reset after a
//!   minute of health); the catalog keeps the last good state meanwhile, and
//!   the kind's state says `retrying`.
//! - **Only the catalog's values are kept.** Each object is converted as it
//!   arrives (the API server's object is dropped at once), so memory is the
//!   catalog's own, not the API objects'.
//! - **Bad objects are reported and skipped**: an object the catalog cannot
//!   take (an unsupported field value) is logged with its name and reason,
//!   and is absent from the catalog; the rest keeps working.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::convert::{self, Kind, Object, ObjectId};
use crate::error::{ConvertError, ObjectError, SourceError};
use crate::source::{KindState, KubeConfig, Source, SourceStatus};
use crate::store::Store;

/// Updates queued between the watchers and the store task: enough to
/// absorb a burst; a full queue makes the watchers wait (backpressure), it
/// loses nothing.
const QUEUE: usize = 4096;
/// Updates folded into one publish at most, so a long burst still
/// publishes regularly.
const BATCH_MAX: usize = 4096;
/// How long an idle source waits for consumers to release the previous
/// catalog before copying the current one for its next change.
const PREPARE_WAIT: Duration = Duration::from_secs(1);
/// How often a kind that is retrying checks whether the API answers again
/// (the watcher itself reports nothing until an object changes).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a watcher tells the store task.
enum Update {
    Listing(Kind),
    Listed(Kind, Vec<Object>),
    Apply(Kind, Object),
    Delete(Kind, ObjectId),
    Failed(Kind, String),
    /// The API answered a probe for this kind.
    Answered(Kind),
}

impl Update {
    fn kind(&self) -> Kind {
        match self {
            Update::Listing(k)
            | Update::Listed(k, _)
            | Update::Apply(k, _)
            | Update::Delete(k, _)
            | Update::Failed(k, _)
            | Update::Answered(k) => *k,
        }
    }
}

pub(crate) async fn start(config: KubeConfig, kinds: &[Kind]) -> Result<Source, SourceError> {
    let client = client(&config).await?;
    info!(kinds = ?kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(), "following the Kubernetes API");
    let mut store = Store::new();
    store.require(kinds.iter().copied());
    let snapshots = store.subscribe();
    let (status_tx, status) = watch::channel(SourceStatus::new("kubernetes", kinds));
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut watchers = Vec::new();
    for &kind in kinds {
        let (client, tx) = (client.clone(), tx.clone());
        watchers.push(match kind {
            Kind::Service => tokio::spawn(follow(
                Api::<core::Service>::all(client),
                kind,
                |o| convert::service(o).map(Object::from),
                tx,
            )),
            Kind::EndpointSlice => tokio::spawn(follow(
                Api::<discovery::EndpointSlice>::all(client),
                kind,
                |o| convert::endpoint_slice(o).map(Object::from),
                tx,
            )),
            Kind::Node => {
                tokio::spawn(follow(Api::<core::Node>::all(client), kind, |o| convert::node(o).map(Object::Node), tx))
            }
        });
    }
    drop(tx);
    let task = tokio::spawn(async move {
        fold(store, rx, status_tx).await;
        for w in watchers {
            w.abort();
        }
    });
    Ok(Source { snapshots, status, task })
}

/// The client: a kubeconfig, else the in-cluster configuration; the API
/// server address replaced by `api_server` when given.
async fn client(config: &KubeConfig) -> Result<Client, SourceError> {
    let url = match &config.api_server {
        Some(s) => Some(s.parse::<http::Uri>().map_err(|e| kube_error(format!("--api-server {s:?} is not a URL"), e))?),
        None => None,
    };
    let mut cfg = match (&config.kubeconfig, &url) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| kube_error(format!("reading kubeconfig {}", path.display()), e))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| kube_error(format!("kubeconfig {}", path.display()), e))?
        }
        (None, url) => match kube::Config::incluster() {
            Ok(c) => c,
            // Outside a pod, with only an address: talk to it without
            // credentials (a local or test API server).
            Err(e) => match url {
                Some(url) => {
                    debug!(error = %e, "no in-cluster configuration; using --api-server alone");
                    kube::Config::new(url.clone())
                }
                None => {
                    return Err(kube_error(
                        "no --kubeconfig, and no in-cluster configuration (KUBERNETES_SERVICE_HOST and the \
                         service account token)",
                        e,
                    ))
                }
            },
        },
    };
    if let Some(url) = url {
        cfg.cluster_url = url;
    }
    // A dead API server is noticed in seconds, not after the 30 s default;
    // the watch itself stays open as long as the server keeps it.
    cfg.connect_timeout = Some(Duration::from_secs(5));
    Client::try_from(cfg).map_err(|e| kube_error("building the API client", e))
}

fn kube_error(context: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> SourceError {
    SourceError::Kube { context: context.into(), source: Box::new(e) }
}

/// The origin a kind's objects are declared under in the store.
fn origin(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "kubernetes/services",
        Kind::EndpointSlice => "kubernetes/endpointslices",
        Kind::Node => "kubernetes/nodes",
    }
}

/// The catalog identity of an object from its metadata alone (a deleted
/// object need not convert).
fn id_of(kind: Kind, meta: &ObjectMeta) -> Option<ObjectId> {
    match kind {
        Kind::Node => meta.name.clone().filter(|n| !n.is_empty()).map(ObjectId::Node),
        Kind::Service => convert::object_key(meta).ok().map(ObjectId::Service),
        Kind::EndpointSlice => convert::object_key(meta).ok().map(ObjectId::EndpointSlice),
    }
}

fn report(kind: Kind, meta: &ObjectMeta, error: ConvertError) {
    let key = convert::object_key(meta).ok();
    let e = ObjectError { origin: "kubernetes".into(), kind: kind_name(kind).into(), key, error };
    warn!(error = %e, "object skipped");
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "Service",
        Kind::EndpointSlice => "EndpointSlice",
        Kind::Node => "Node",
    }
}

/// Follow one kind until the store task is gone.
async fn follow<K>(api: Api<K>, kind: Kind, conv: fn(&K) -> Result<Object, ConvertError>, tx: mpsc::Sender<Update>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    // The backoff is applied here, not with kube-runtime's StreamBackoff:
    // that one resets on any Ok item, and the watcher yields `Init` (Ok)
    // before every list attempt, so a failing list was retried every
    // 250 ms forever. Here only progress (a listing done, an event) resets
    // it. client-go's reflector backs off from 800 ms to 30 s; a node agent
    // wants its Services back sooner after an API restart, and one request
    // per kind every 10 s from each node is still kind to an API server.
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut delays = backon::BackoffBuilder::build(backoff);
    let stream = watcher::watcher(api.clone(), watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    let mut listing: Option<Vec<Object>> = None;
    let mut failing = false;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = probe.tick(), if failing => {
                // Is the API back? The watcher says nothing until an object
                // changes, so ask for one object's worth.
                if api.list_metadata(&ListParams::default().limit(1)).await.is_ok() {
                    failing = false;
                    if tx.send(Update::Answered(kind)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        let Some(ev) = ev else { return };
        let update = match ev {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                Update::Listing(kind)
            }
            Ok(Event::InitApply(o)) => {
                match conv(&o) {
                    Ok(obj) => listing.get_or_insert_with(Vec::new).push(obj),
                    Err(e) => report(kind, o.meta(), e),
                }
                continue;
            }
            Ok(Event::InitDone) => Update::Listed(kind, listing.take().unwrap_or_default()),
            Ok(Event::Apply(o)) => match conv(&o) {
                Ok(obj) => Update::Apply(kind, obj),
                Err(e) => {
                    // What the catalog held of it (an earlier, valid
                    // version) goes: a Service whose new form cannot be
                    // served must not keep serving the old one.
                    let id = id_of(kind, o.meta());
                    report(kind, o.meta(), e);
                    match id {
                        Some(id) => Update::Delete(kind, id),
                        None => continue,
                    }
                }
            },
            Ok(Event::Delete(o)) => match id_of(kind, o.meta()) {
                Some(id) => Update::Delete(kind, id),
                None => continue,
            },
            Err(e) => Update::Failed(kind, e.to_string()),
        };
        let failed = matches!(update, Update::Failed(..));
        if !failed && !matches!(update, Update::Listing(_)) {
            delays = backon::BackoffBuilder::build(backoff);
        }
        if tx.send(update).await.is_err() {
            return;
        }
        if failed {
            failing = true;
            probe.reset();
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tokio::time::sleep(delay).await;
        }
    }
}

/// The store task: apply updates in batches, publish after each.
async fn fold(mut store: Store, mut rx: mpsc::Receiver<Update>, status: watch::Sender<SourceStatus>) {
    loop {
        let first = tokio::select! {
            u = rx.recv() => u,
            _ = store.closed() => None,
        };
        let Some(first) = first else { return };
        if !store.working_copy().await {
            return;
        }
        let mut next = Some(first);
        let mut n = 0;
        while let Some(u) = next.take() {
            apply(&mut store, &status, u);
            n += 1;
            if n < BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        let generation = store.publish();
        debug!(generation, updates = n, "API changes applied");
        // The working copy for the next change is got back now, while
        // nothing waits for it. Consumers let go of the catalog before this
        // one when they finish syncing this one (tens of ms at 100,000
        // Services): wait for that while idle, and only copy (every map
        // node of the catalog) if they still hold it after a second (the first sync
        // after start can take that long).
        let idle = tokio::time::Instant::now();
        while store.previous_in_use() && rx.is_empty() && idle.elapsed() < PREPARE_WAIT {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if rx.is_empty() && !store.working_copy().await {
            return;
        }
    }
}

fn apply(store: &mut Store, status: &watch::Sender<SourceStatus>, u: Update) {
    let kind = u.kind();
    let mut recovered = true;
    match u {
        Update::Listing(_) => {
            status.send_if_modified(|s| set_state(s, kind, KindState::Listing));
            return;
        }
        Update::Listed(_, objects) => {
            let count = objects.len();
            store.replace_origin(origin(kind), objects);
            store.set_listed(kind);
            info!(kind = kind.as_str(), objects = count, "listed");
            status.send_modify(|s| {
                if let Some(k) = s.kind_mut(kind) {
                    k.listed = true;
                    k.lists += 1;
                }
            });
        }
        Update::Apply(_, obj) => {
            store.upsert(origin(kind), obj);
        }
        Update::Delete(_, id) => {
            store.delete(origin(kind), &id);
        }
        Update::Answered(_) => {}
        Update::Failed(_, error) => {
            recovered = false;
            status.send_modify(|s| {
                if let Some(k) = s.kind_mut(kind) {
                    // Once per outage at warn; every retry at debug.
                    if k.state == KindState::Retrying {
                        debug!(kind = kind.as_str(), %error, "API request failed again");
                    } else {
                        warn!(kind = kind.as_str(), %error, "API request failed; keeping the last state, retrying");
                    }
                    k.errors += 1;
                    k.state = KindState::Retrying;
                    k.last_error = Some(error);
                }
            });
        }
    }
    if recovered {
        status.send_if_modified(|s| {
            let changed = set_state(s, kind, KindState::Watching);
            match s.kind_mut(kind) {
                Some(k) if k.last_error.is_some() => {
                    info!(kind = kind.as_str(), "API answering again");
                    k.last_error = None;
                    true
                }
                _ => changed,
            }
        });
    }
}

fn set_state(s: &mut SourceStatus, kind: Kind, state: KindState) -> bool {
    match s.kind_mut(kind) {
        Some(k) if k.state != state => {
            k.state = state;
            true
        }
        _ => false,
    }
}
