//! The reconciler: catalog snapshots in, map ops out.
//!
//! Only Services whose object or EndpointSlices changed since the previous
//! snapshot are translated again and diffed (an endpoint change in a
//! 10,000-Service catalog touches one Service, not 10,000); the first sync,
//! and any sync after a failure, is a full one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_state::{Catalog, ObjectKey, Snapshot};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::desired::{desired, service_frontends, DesiredFrontend, Frontend, NodeContext};
use crate::diff::{plan, Limits, PlanError, Programmed, Scope};
use crate::maps::{ApplyError, MapWriter, PinnedMaps};
use crate::metrics::Metrics;
use crate::names::{self, FrontendName, Names};

pub struct Reconciler {
    node: NodeContext,
    programmed: Programmed,
    desired: BTreeMap<Frontend, DesiredFrontend>,
    by_service: HashMap<ObjectKey, Vec<Frontend>>,
    prev: Option<Arc<Catalog>>,
    /// The catalog a sync replaced, kept until [`Reconciler::release`]:
    /// freeing 10,000 Services is not the sync's work, so it happens after
    /// the sync has been timed.
    retired: Option<Arc<Catalog>>,
}

#[derive(Debug, Default)]
pub struct SyncReport {
    pub ops: usize,
    pub errors: Vec<PlanError>,
    /// Frontends were added or removed (the names file needs rewriting).
    pub frontends_changed: bool,
    pub full: bool,
    /// Time spent finding changed Services and translating them, planning
    /// (diff + Maglev) and writing the maps.
    pub diff_us: u64,
    pub plan_us: u64,
    pub apply_us: u64,
}

impl Reconciler {
    pub fn new(node: NodeContext, programmed: Programmed) -> Self {
        Self { node, programmed, desired: BTreeMap::new(), by_service: HashMap::new(), prev: None, retired: None }
    }

    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    /// After a failed apply the model no longer matches the maps: take the
    /// maps as they are, and make the next sync a full one.
    pub fn reset(&mut self, programmed: Programmed) {
        self.programmed = programmed;
        self.prev = None;
    }

    pub fn sync(&mut self, catalog: &Arc<Catalog>, w: &mut impl MapWriter) -> Result<SyncReport, ApplyError> {
        let t_diff = Instant::now();
        // This node's zone (its Node's topology label) decides which hinted
        // endpoints it uses: when it changes, every Service is translated
        // again.
        let zone = self.node.node_name.as_ref().and_then(|n| catalog.nodes.get(n)).and_then(|n| n.zone.clone());
        if zone != self.node.zone {
            info!(zone = ?zone, was = ?self.node.zone, "this node's zone changed: full sync");
            self.node.zone = zone;
            self.prev = None;
        }
        let (scope_set, full) = match self.prev.take() {
            Some(prev) => {
                let r = match self.update_incrementally(&prev, catalog) {
                    Some(touched) => (touched, false),
                    None => (self.rebuild(catalog), true),
                };
                self.retired = Some(prev);
                r
            }
            None => (self.rebuild(catalog), true),
        };
        let diff_us = t_diff.elapsed().as_micros() as u64;
        let scope = if full { Scope::All } else { Scope::Only(&scope_set) };
        let t_plan = Instant::now();
        let p = plan(&mut self.programmed, &self.desired, scope);
        let plan_us = t_plan.elapsed().as_micros() as u64;
        for e in &p.errors {
            warn!(error = %e, "frontend not programmed");
        }
        let limits = self.programmed.limits;
        let t_apply = Instant::now();
        w.apply(&p.ops, &limits)?;
        let apply_us = t_apply.elapsed().as_micros() as u64;
        self.prev = Some(catalog.clone());
        let frontends_changed = p.frontends_added + p.frontends_removed > 0;
        Ok(SyncReport { ops: p.ops.len(), errors: p.errors, frontends_changed, full, diff_us, plan_us, apply_us })
    }

    fn rebuild(&mut self, catalog: &Catalog) -> BTreeSet<Frontend> {
        let (d, conflicts) = desired(catalog, &self.node);
        for c in conflicts {
            warn!(frontend = ?c.frontend, kept = %c.kept, ignored = %c.ignored, "two Services claim one frontend");
        }
        self.by_service.clear();
        for (fe, f) in &d {
            self.by_service.entry(f.service.clone()).or_default().push(*fe);
        }
        self.desired = d;
        BTreeSet::new()
    }

    /// Re-translates only the Services that changed; `None` when a frontend
    /// conflict makes a full rebuild the simpler correct answer.
    fn update_incrementally(&mut self, prev: &Arc<Catalog>, cur: &Arc<Catalog>) -> Option<BTreeSet<Frontend>> {
        let mut touched = BTreeSet::new();
        if Arc::ptr_eq(prev, cur) {
            return Some(touched);
        }
        // The store says which Services changed since `prev`; when it cannot
        // (a catalog older than its change log), rebuild.
        let keys = cur.changes.since(&prev.changes)?.services;
        for key in keys {
            for fe in self.by_service.remove(key).unwrap_or_default() {
                if self.desired.get(&fe).is_some_and(|d| &d.service == key) {
                    self.desired.remove(&fe);
                }
                touched.insert(fe);
            }
            let Some(svc) = cur.services.get(key) else {
                continue;
            };
            let mut mine = Vec::new();
            for (fe, d) in service_frontends(svc, cur.slices_of(key), &self.node) {
                if self.desired.contains_key(&fe) {
                    return None;
                }
                self.desired.insert(fe, d);
                touched.insert(fe);
                mine.push(fe);
            }
            self.by_service.insert(key.clone(), mine);
        }
        Some(touched)
    }

    /// Frees the catalog the last sync replaced, and the heap pages freed.
    /// Also after the first sync, whose transient batches (~40 MB of
    /// Maglev slots at 10,000 Services) are freed by then.
    pub fn release(&mut self) {
        self.retired = None;
        trim_heap();
    }

    /// Frontend id -> Kubernetes name, for the names file.
    pub fn names(&self) -> Names {
        self.programmed
            .frontends
            .iter()
            .filter_map(|(fe, p)| {
                let d = self.desired.get(fe)?;
                Some((p.value.id, FrontendName { service: d.service.to_string(), port_name: d.port_name.clone() }))
            })
            .collect()
    }
}

/// Hands freed heap pages back to the kernel: a sync frees a whole catalog
/// and its transient batches, which glibc would otherwise keep as RSS.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often a failed sync is retried when nothing else changes.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the catalog until the channel closes. Nothing is written before
/// the source reports `ready`: an empty catalog during start-up must not
/// delete what a previous agent programmed.
pub async fn run_loop(
    mut rx: watch::Receiver<Snapshot>,
    mut rec: Reconciler,
    mut maps: PinnedMaps,
    metrics: Arc<Metrics>,
    names_file: PathBuf,
) {
    let limits: Limits = rec.programmed().limits;
    let mut failing = false;
    loop {
        let snap = rx.borrow_and_update().clone();
        if snap.ready {
            let started = Instant::now();
            match rec.sync(&snap.catalog, &mut maps) {
                Ok(report) => {
                    let took = started.elapsed();
                    metrics.sync_duration.observe(took.as_secs_f64());
                    metrics.set_programmed(rec.programmed());
                    if report.frontends_changed || report.full {
                        if let Err(e) = names::write(&names_file, &rec.names()) {
                            warn!(path = %names_file.display(), error = %e, "could not write the names file");
                        }
                    }
                    if !metrics.is_ready() {
                        info!(
                            frontends = rec.programmed().frontends.len(),
                            backends = rec.programmed().backend_count(),
                            ops = report.ops,
                            plan_us = report.plan_us,
                            apply_us = report.apply_us,
                            took_ms = took.as_secs_f64() * 1e3,
                            "first full sync done"
                        );
                    } else {
                        debug!(
                            generation = snap.generation,
                            ops = report.ops,
                            full = report.full,
                            diff_us = report.diff_us,
                            plan_us = report.plan_us,
                            apply_us = report.apply_us,
                            took_us = took.as_micros() as u64,
                            "synced"
                        );
                    }
                    // Counted once logged (the bench hook reads the log line
                    // after the count moves), but before the old catalog is
                    // freed (tens of ms at 10,000 Services): housekeeping no
                    // reader of /status should wait for.
                    metrics.synced(snap.generation);
                    metrics.set_ready();
                    rec.release();
                    failing = false;
                }
                Err(e) => {
                    error!(error = %e, "applying the sync failed; re-reading the maps and retrying");
                    metrics.sync_failures.inc();
                    match maps.read_programmed(limits) {
                        Ok(p) => rec.reset(p),
                        Err(e) => error!(error = %e, "re-reading the maps failed"),
                    }
                    failing = true;
                }
            }
        }
        if failing {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(RETRY) => {}
            }
        } else if rx.changed().await.is_err() {
            break;
        }
    }
    info!("catalog source closed; sync loop ends");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Op;
    use ferry_state::{
        AddressType, Endpoint, EndpointPort, EndpointSlice, Protocol, Service, ServicePort, ServiceType, TargetPort,
    };

    /// Records applied ops; can be told to fail once.
    #[derive(Default)]
    struct Recorder {
        batches: Vec<Vec<Op>>,
    }

    impl MapWriter for Recorder {
        fn apply(&mut self, ops: &[Op], _: &Limits) -> Result<(), ApplyError> {
            self.batches.push(ops.to_vec());
            Ok(())
        }
    }

    fn catalog(n: usize, endpoints_of_first: &[&str]) -> Arc<Catalog> {
        let mut c = Catalog::default();
        for i in 0..n {
            let key = ObjectKey::new("default", format!("svc{i}"));
            c.services.insert(
                key.clone(),
                Arc::new(Service {
                    key: key.clone(),
                    service_type: ServiceType::ClusterIp,
                    cluster_ips: [format!("10.96.{}.{}", i / 250, i % 250 + 1).parse().unwrap()].into(),
                    headless: false,
                    external_name: None,
                    ports: [ServicePort {
                        name: String::new(),
                        protocol: Protocol::Tcp,
                        port: 80,
                        target_port: TargetPort::Number(8080),
                        node_port: None,
                    }]
                    .into(),
                    external_ips: Box::default(),
                    load_balancer_ips: Box::default(),
                    session_affinity: None,
                    internal_traffic_local: false,
                    external_traffic_local: false,
                    publish_not_ready_addresses: false,
                    proxy_name: None,
                    headless_label: false,
                }),
            );
            let eps: Vec<String> = if i == 0 {
                endpoints_of_first.iter().map(|s| s.to_string()).collect()
            } else {
                vec![format!("10.244.{}.{}", i / 250, i % 250 + 2)]
            };
            c.slices.insert(
                key.clone(),
                vec![Arc::new(EndpointSlice {
                    key: ObjectKey::new("default", format!("svc{i}-a")),
                    service: key,
                    address_type: AddressType::IPv4,
                    // As the EndpointSlice controller writes it: the Service
                    // port's name and protocol, the resolved target port.
                    ports: vec![EndpointPort { name: String::new(), protocol: Protocol::Tcp, port: 8080 }],
                    endpoints: eps.iter().map(|a| Endpoint::new(a.parse().unwrap())).collect(),
                })]
                .into(),
            );
        }
        Arc::new(c)
    }

    const LIMITS: Limits = Limits { maglev_size: 251, max_tables: 64, max_services: 64, max_backends: 256 };

    #[test]
    fn an_endpoint_change_touches_only_its_service() {
        let mut rec = Reconciler::new(NodeContext::default(), Programmed::new(LIMITS));
        let mut w = Recorder::default();
        let mut feed = ferry_state::Feed::new();
        let r = rec.sync(&feed.publish(&catalog(20, &["10.0.0.1"])), &mut w).unwrap();
        assert!(r.full && r.frontends_changed);
        assert_eq!(rec.programmed().frontends.len(), 20);
        // Same content, new snapshot: nothing written.
        let r = rec.sync(&feed.publish(&catalog(20, &["10.0.0.1"])), &mut w).unwrap();
        assert_eq!((r.ops, r.full), (0, false));
        // One endpoint added to svc0: its backend, its table, its entry.
        let r = rec.sync(&feed.publish(&catalog(20, &["10.0.0.1", "10.0.0.2"])), &mut w).unwrap();
        assert!(!r.full && !r.frontends_changed);
        let kinds: Vec<&str> = w
            .batches
            .last()
            .unwrap()
            .iter()
            .map(|op| match op {
                Op::PutBackend { .. } => "backend",
                Op::WriteTable { .. } => "table",
                Op::PutService { .. } => "service",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["backend", "table", "service"]);
        // A Service removed: its frontend goes, names change.
        let r = rec.sync(&feed.publish(&catalog(19, &["10.0.0.1", "10.0.0.2"])), &mut w).unwrap();
        assert!(r.frontends_changed);
        assert_eq!(rec.programmed().frontends.len(), 19);
        assert_eq!(rec.names().len(), 19);
        assert_eq!(rec.names().values().next().unwrap().service, "default/svc0");
    }

    /// A Service labelled for another proxy after it was programmed loses
    /// its frontends in an incremental sync (its object changed), and gets
    /// them back when the label goes.
    #[test]
    fn a_service_proxy_name_label_toggles_its_frontends() {
        let mut rec = Reconciler::new(NodeContext::default(), Programmed::new(LIMITS));
        let mut w = Recorder::default();
        let mut feed = ferry_state::Feed::new();
        let first = catalog(3, &["10.0.0.1"]);
        rec.sync(&feed.publish(&first), &mut w).unwrap();
        assert_eq!(rec.programmed().frontends.len(), 3);
        let svc0 = ObjectKey::new("default", "svc0");
        let mut c = (*first).clone();
        Arc::make_mut(c.services.get_mut(&svc0).unwrap()).proxy_name = Some("other".into());
        let r = rec.sync(&feed.publish(&c), &mut w).unwrap();
        assert!(!r.full && r.frontends_changed);
        assert_eq!(rec.programmed().frontends.len(), 2);
        assert!(rec.names().values().all(|n| n.service != "default/svc0"));
        Arc::make_mut(c.services.get_mut(&svc0).unwrap()).proxy_name = None;
        let r = rec.sync(&feed.publish(&c), &mut w).unwrap();
        assert!(!r.full && r.frontends_changed);
        assert_eq!(rec.programmed().frontends.len(), 3);
    }
}
