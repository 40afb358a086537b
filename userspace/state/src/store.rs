//! The store: objects from any source, merged by `(kind, namespace/name)` into
//! one [`Catalog`], published as [`Snapshot`]s on a `tokio::sync::watch`
//! channel. Sources (the YAML directory now, the Kubernetes API later) only
//! say "origin X now holds these objects" or "this object changed"; joining,
//! conflict resolution, readiness and publishing live here, once.
//!
//! How a source drives it (the contract the Kubernetes API source will keep):
//! - a full listing of one origin -> [`Store::replace_origin`] (a directory
//!   file re-read; an API relist after `410 Gone`, origin e.g. `kube:services`),
//!   which also removes whatever that origin no longer declares;
//! - single events -> [`Store::upsert`] / [`Store::delete`];
//! - first complete view of every origin -> [`Store::set_ready`];
//! - after a batch -> [`Store::publish`].
//!
//! Publishing moves the working catalog into the snapshot; it is not copied.
//! The store gets a working copy back when the next change comes, by
//! recycling the catalog published before (once its consumers have let go
//! of it) and applying to it only what the last batch changed: a copy
//! rebuilds every map node (the values are shared `Arc`s, so not the
//! objects), a recycled one costs a few microseconds per changed Service.
//! (Both figures of this module were measured when a copy still copied the
//! objects too: ~30 ms at 10,000 Services, ~300 ms at 100,000; a copy is
//! cheaper now, and not re-measured.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::mem;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use crate::convert::{Kind, Object, ObjectId};
use crate::model::{Catalog, Changes, EndpointSlice, ObjectKey, Snapshot, Step};

/// How long a change waits for consumers to release the catalog published
/// before the last one, so it can be recycled rather than copied: a copy
/// rebuilds every map node of the catalog.
const RECYCLE_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Mutable merge of every source's objects. Not shared: one task owns it and
/// publishes; consumers only see the immutable snapshots.
#[derive(Debug)]
pub struct Store {
    /// Who declares every object. The same object declared by two origins
    /// (two files) is a conflict: the one from the origin that sorts last
    /// wins, deterministically, and a warning names both.
    decls: HashMap<ObjectId, Decls>,
    by_origin: HashMap<Arc<str>, BTreeSet<ObjectId>>,
    /// Which Service group of `catalog.slices` holds each slice.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    /// The working catalog; meaningless while `detached` is set.
    catalog: Catalog,
    /// Set by a publish until the next change: the working catalog is then
    /// the published one, not yet copied back.
    detached: Option<Detached>,
    /// Service keys changed since the last publish (-> `Catalog::changes`).
    touched: BTreeSet<ObjectKey>,
    /// Node names changed since the last publish.
    touched_nodes: BTreeSet<String>,
    /// The change log of the last publish, which the next one extends.
    last_changes: Changes,
    /// The kinds whose first full listing readiness waits for.
    required: BTreeSet<Kind>,
    /// The kinds whose first full listing is done.
    listed: BTreeSet<Kind>,
    ready: bool,
    generation: u64,
    dirty: bool,
    tx: watch::Sender<Snapshot>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty, not-ready store. Its first snapshot (generation 0, not
    /// ready) is already on the channel.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Snapshot::default());
        Self {
            decls: HashMap::new(),
            by_origin: HashMap::new(),
            slice_owner: HashMap::new(),
            catalog: Catalog::default(),
            detached: None,
            touched: BTreeSet::new(),
            touched_nodes: BTreeSet::new(),
            last_changes: Changes::default(),
            required: Kind::ALL.into_iter().collect(),
            listed: BTreeSet::new(),
            ready: false,
            generation: 0,
            dirty: false,
            tx,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    /// Completes when every receiver of the snapshots has been dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// The merged catalog as of the last change (published or not).
    pub fn catalog(&self) -> &Catalog {
        match &self.detached {
            Some(d) => &d.published,
            None => &self.catalog,
        }
    }

    pub fn into_catalog(mut self) -> Catalog {
        self.attach();
        mem::take(&mut self.catalog)
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// `origin` now declares exactly `objects` (a file was (re)read, or a
    /// Kubernetes list completed). Objects it declared before and no longer
    /// does are removed. Returns whether the catalog changed.
    pub fn replace_origin(&mut self, origin: &str, objects: Vec<Object>) -> bool {
        self.attach();
        let origin: Arc<str> = Arc::from(origin);
        let old_ids = self.by_origin.remove(&origin).unwrap_or_default();
        let mut new_ids = BTreeSet::new();
        let mut changed = false;
        let declared = objects.len();
        for obj in objects {
            new_ids.insert(obj.id());
            changed |= self.declare(&origin, obj.id(), obj);
        }
        if new_ids.len() != declared {
            // The later document wins, as with `kubectl apply -f` of such a file.
            warn!(%origin, duplicates = declared - new_ids.len(), "objects declared twice in the same file; the later one wins");
        }
        for id in old_ids {
            if !new_ids.contains(&id) {
                changed |= self.undeclare(&origin, &id);
            }
        }
        if !new_ids.is_empty() {
            self.by_origin.insert(origin, new_ids);
        }
        changed
    }

    /// `origin` is gone (file deleted): everything it declared is removed.
    pub fn remove_origin(&mut self, origin: &str) -> bool {
        self.replace_origin(origin, Vec::new())
    }

    /// One object added or changed (watch event of an API source).
    pub fn upsert(&mut self, origin: &str, object: Object) -> bool {
        self.attach();
        let origin: Arc<str> = Arc::from(origin);
        let id = object.id();
        self.by_origin.entry(origin.clone()).or_default().insert(id.clone());
        self.declare(&origin, id, object)
    }

    /// One object deleted (watch event of an API source).
    pub fn delete(&mut self, origin: &str, id: &ObjectId) -> bool {
        self.attach();
        let origin: Arc<str> = Arc::from(origin);
        if let Some(ids) = self.by_origin.get_mut(&origin) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_origin.remove(&origin);
            }
        }
        self.undeclare(&origin, id)
    }

    /// Readiness waits for the first full listing of these kinds only (all
    /// three by default): ferry-dns needs no Nodes.
    pub fn require(&mut self, kinds: impl IntoIterator<Item = Kind>) {
        self.required = kinds.into_iter().collect();
        self.update_ready();
    }

    /// The first full listing of `kind` is done. The catalog is ready once
    /// every required kind is listed: before that, absence proves nothing
    /// (a Service whose slices are not listed yet has no endpoints only in
    /// appearance).
    pub fn set_listed(&mut self, kind: Kind) {
        self.listed.insert(kind);
        self.update_ready();
    }

    /// Every kind is listed (a directory scanned whole).
    pub fn set_ready(&mut self) {
        self.listed.extend(Kind::ALL);
        self.update_ready();
    }

    fn update_ready(&mut self) {
        let ready = self.required.is_subset(&self.listed);
        if ready && !self.ready {
            self.ready = true;
            self.dirty = true;
        }
    }

    /// Publish a new snapshot if anything changed since the last one. Returns
    /// the generation now on the channel. The working catalog moves into the
    /// snapshot (module docs); nothing is copied here.
    pub fn publish(&mut self) -> u64 {
        if !self.dirty {
            return self.generation;
        }
        // Only a readiness change can be dirty while detached.
        self.attach();
        self.dirty = false;
        self.generation += 1;
        let step = Step {
            generation: self.generation,
            services: mem::take(&mut self.touched),
            nodes: mem::take(&mut self.touched_nodes),
        };
        self.catalog.changes = Changes::next(&self.last_changes, step);
        self.last_changes = self.catalog.changes.clone();
        let published = Arc::new(mem::take(&mut self.catalog));
        let replaced = self.tx.send_replace(Snapshot {
            catalog: published.clone(),
            ready: self.ready,
            generation: self.generation,
        });
        self.detached = Some(Detached { published, previous: replaced.catalog });
        self.generation
    }

    /// Get the working catalog back without copying it, if possible: when
    /// nobody holds the catalog published before the last one any more, it
    /// is brought up to date with the last batch's changes and reused.
    /// Otherwise the published catalog must be copied: it is returned for
    /// the caller to copy where the time does not matter (a blocking
    /// thread) and hand back with [`restore`](Self::restore). A change made
    /// before that copies it in place.
    pub fn recycle(&mut self) -> Option<Arc<Catalog>> {
        let d = self.detached.take()?;
        match Arc::try_unwrap(d.previous) {
            Ok(mut old) if old.changes.generation + 1 == d.published.changes.generation => {
                let new = &*d.published;
                let step = new.changes.last_step().expect("a published catalog has its step");
                for key in &step.services {
                    sync_entry(&mut old.services, &new.services, key);
                    sync_entry(&mut old.slices, &new.slices, key);
                }
                for name in &step.nodes {
                    sync_entry(&mut old.nodes, &new.nodes, name);
                }
                debug_assert!(old == *new, "a recycled catalog equals the published one");
                self.catalog = old;
                None
            }
            _ => Some(d.published),
        }
    }

    /// Get the working copy back before changing the store: the catalog
    /// published before the last one, recycled once its consumers let go
    /// (they do as they take the last one, within milliseconds), or else a
    /// copy made off the runtime's threads (every map node rebuilt).
    /// False if copying failed (a panic: nothing sane is left).
    pub async fn working_copy(&mut self) -> bool {
        let waited = tokio::time::Instant::now();
        while self.previous_in_use() && waited.elapsed() < RECYCLE_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let Some(published) = self.recycle() else {
            return true;
        };
        tracing::debug!("the previous catalog is still in use: copying the published one");
        match tokio::task::spawn_blocking(move || (*published).clone()).await {
            Ok(copy) => {
                self.restore(copy);
                true
            }
            Err(e) => {
                warn!(error = %e, "catalog copy failed");
                false
            }
        }
    }

    /// Whether a consumer still holds the catalog [`recycle`](Self::recycle)
    /// would reuse. Consumers only ever let go of it: once false, it stays so.
    pub fn previous_in_use(&self) -> bool {
        self.detached.as_ref().is_some_and(|d| Arc::strong_count(&d.previous) > 1)
    }

    /// Hand back the working copy: an equal copy of the catalog
    /// [`recycle`](Self::recycle) returned.
    pub fn restore(&mut self, catalog: Catalog) {
        self.catalog = catalog;
    }

    /// Make the working catalog mutable again, copying it if it cannot be
    /// recycled.
    fn attach(&mut self) {
        if let Some(published) = self.recycle() {
            self.catalog = (*published).clone();
        }
    }

    fn declare(&mut self, origin: &Arc<str>, id: ObjectId, obj: Object) -> bool {
        let winner = match self.decls.get_mut(&id) {
            None => {
                self.decls.insert(id.clone(), Decls::One(origin.clone()));
                obj
            }
            Some(Decls::One(only)) if only == origin => {
                if self.holds(&id, &obj) {
                    return false;
                }
                obj
            }
            Some(Decls::One(other)) => {
                let other = other.clone();
                let theirs = self.entry(&id).expect("a declared object is in the catalog");
                let many = BTreeMap::from([(other, theirs), (origin.clone(), obj)]);
                let winner = many.values().next_back().cloned().expect("two declarations");
                warn_conflict(&id, &many);
                self.decls.insert(id.clone(), Decls::Many(many));
                winner
            }
            Some(Decls::Many(many)) => {
                if many.get(origin) == Some(&obj) {
                    return false;
                }
                many.insert(origin.clone(), obj);
                warn_conflict(&id, many);
                many.values().next_back().cloned().expect("declared")
            }
        };
        self.set_entry(&id, Some(winner))
    }

    fn undeclare(&mut self, origin: &Arc<str>, id: &ObjectId) -> bool {
        let winner = match self.decls.get_mut(id) {
            None => return false,
            Some(Decls::One(only)) => {
                if only != origin {
                    return false;
                }
                self.decls.remove(id);
                None
            }
            Some(Decls::Many(many)) => {
                if many.remove(origin).is_none() {
                    return false;
                }
                if many.len() == 1 {
                    let (only, obj) = many.pop_first().expect("one left");
                    self.decls.insert(id.clone(), Decls::One(only));
                    Some(obj)
                } else {
                    many.values().next_back().cloned()
                }
            }
        };
        self.set_entry(id, winner)
    }

    /// The catalog's entry for `id`, as an object.
    fn entry(&self, id: &ObjectId) -> Option<Object> {
        let cat = &self.catalog;
        match id {
            ObjectId::Service(key) => cat.services.get(key).cloned().map(Object::Service),
            ObjectId::Node(name) => cat.nodes.get(name).cloned().map(Object::Node),
            ObjectId::EndpointSlice(key) => self.slice(key).cloned().map(Object::EndpointSlice),
        }
    }

    /// Whether the catalog's entry for `id` is `obj` (no copy made).
    fn holds(&self, id: &ObjectId, obj: &Object) -> bool {
        let cat = &self.catalog;
        match (id, obj) {
            (ObjectId::Service(key), Object::Service(s)) => cat.services.get(key) == Some(s),
            (ObjectId::Node(name), Object::Node(n)) => cat.nodes.get(name) == Some(n),
            (ObjectId::EndpointSlice(key), Object::EndpointSlice(s)) => self.slice(key) == Some(s),
            _ => false,
        }
    }

    fn slice(&self, key: &ObjectKey) -> Option<&Arc<EndpointSlice>> {
        let group = self.catalog.slices.get(self.slice_owner.get(key)?)?;
        group.binary_search_by(|s| s.key.cmp(key)).ok().map(|i| &group[i])
    }

    /// Make the catalog entry for `id` this declaration (`None`: none left).
    fn set_entry(&mut self, id: &ObjectId, winner: Option<Object>) -> bool {
        let cat = &mut self.catalog;
        let changed = match (id, winner) {
            (ObjectId::Service(key), Some(Object::Service(svc))) => {
                let changed = put(&mut cat.services, key, svc);
                if changed {
                    self.touched.insert(key.clone());
                }
                changed
            }
            (ObjectId::Service(key), None) => {
                let changed = cat.services.remove(key).is_some();
                if changed {
                    self.touched.insert(key.clone());
                }
                changed
            }
            (ObjectId::Node(name), winner) => {
                let changed = match winner {
                    Some(Object::Node(node)) => put(&mut cat.nodes, name, node),
                    _ => cat.nodes.remove(name).is_some(),
                };
                if changed {
                    self.touched_nodes.insert(name.clone());
                }
                changed
            }
            (ObjectId::EndpointSlice(key), winner) => {
                let new = match winner {
                    Some(Object::EndpointSlice(s)) => Some(s),
                    _ => None,
                };
                let old_owner = self.slice_owner.remove(key);
                let old = old_owner.as_ref().and_then(|svc| remove_slice(cat, svc, key));
                let changed = old != new;
                if changed {
                    // Both groups: a relabelled slice leaves one Service for another.
                    self.touched.extend(old_owner);
                    if let Some(slice) = &new {
                        self.touched.insert(slice.service.clone());
                    }
                }
                if let Some(slice) = new {
                    self.slice_owner.insert(key.clone(), slice.service.clone());
                    let group = cat.slices.entry(slice.service.clone()).or_default();
                    let pos = group.binary_search_by(|s| s.key.cmp(&slice.key)).unwrap_or_else(|p| p);
                    group.insert(pos, slice);
                }
                changed
            }
            // An ObjectId's variant always matches its object's.
            _ => false,
        };
        self.dirty |= changed;
        changed
    }
}

/// Take slice `key` out of the group of Service `svc`, dropping the group
/// when it empties.
fn remove_slice(cat: &mut Catalog, svc: &ObjectKey, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
    let group = cat.slices.get_mut(svc)?;
    let pos = group.binary_search_by(|s| s.key.cmp(key)).ok()?;
    let slice = group.remove(pos);
    if group.is_empty() {
        cat.slices.remove(svc);
    }
    Some(slice)
}

/// What the last batch published for the detached working copy to catch up
/// (what changed between the two is `published.changes`' last step).
#[derive(Debug)]
struct Detached {
    published: Arc<Catalog>,
    /// The catalog published before `published`: recycled when unshared.
    previous: Arc<Catalog>,
}

/// Who declares an object. Most objects have one origin (an API list, one
/// file); the catalog's entry is then the declaration and no second copy is
/// kept: at 100,000 Services a copy of every object is ~40% of the
/// source's memory.
#[derive(Debug)]
enum Decls {
    One(Arc<str>),
    /// Several origins (two files): every declaration; the last origin's is
    /// the catalog's entry.
    Many(BTreeMap<Arc<str>, Object>),
}

fn warn_conflict(id: &ObjectId, decls: &BTreeMap<Arc<str>, Object>) {
    let origins: Vec<&str> = decls.keys().map(|o| &**o).collect();
    warn!(object = %id, ?origins, "object declared in several files; the last one (by name) wins");
}

/// Make `map[key]` what it is in `from`.
fn sync_entry<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, from: &BTreeMap<K, V>, key: &K) {
    match from.get(key) {
        Some(v) => {
            map.insert(key.clone(), v.clone());
        }
        None => {
            map.remove(key);
        }
    }
}

/// Insert unless equal; whether the map changed.
fn put<K: Ord + Clone, V: PartialEq>(map: &mut std::collections::BTreeMap<K, V>, key: &K, value: V) -> bool {
    if map.get(key) == Some(&value) {
        return false;
    }
    map.insert(key.clone(), value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Changed, LOG_STEPS};
    use crate::parse::parse_documents;

    fn objs(text: &str) -> Vec<Object> {
        let (objs, errs) = parse_documents(text, "test");
        assert!(errs.is_empty(), "{errs:?}");
        objs
    }

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {{clusterIP: {ip}}}\n---\n"
        )
    }

    fn slice(name: &str, service: &str, addr: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [{addr}]}}]\n---\n"
        )
    }

    fn vip(store: &Store, name: &str) -> Option<String> {
        store.catalog().service("x", name).map(|s| s.cluster_ips[0].to_string())
    }

    #[test]
    fn replacing_an_origin_adds_changes_and_removes() {
        let mut st = Store::new();
        assert!(st.replace_origin("f1", objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2")))));
        assert!(st.replace_origin("f1", objs(&svc("a", "10.96.0.9"))));
        assert_eq!(vip(&st, "a").as_deref(), Some("10.96.0.9"));
        assert_eq!(vip(&st, "b"), None, "b left the file, so it left the catalog");
        // Same content again: no change.
        assert!(!st.replace_origin("f1", objs(&svc("a", "10.96.0.9"))));
        assert!(st.remove_origin("f1"));
        assert!(st.catalog().services.is_empty());
    }

    #[test]
    fn conflicting_origins_last_by_name_wins_and_the_other_takes_over() {
        let mut st = Store::new();
        st.replace_origin("b.yaml", objs(&svc("a", "10.96.0.2")));
        st.replace_origin("a.yaml", objs(&svc("a", "10.96.0.1")));
        assert_eq!(vip(&st, "a").as_deref(), Some("10.96.0.2"));
        st.remove_origin("b.yaml");
        assert_eq!(vip(&st, "a").as_deref(), Some("10.96.0.1"), "the remaining declaration takes over");
    }

    #[test]
    fn a_snapshot_names_the_services_changed_since_the_previous_one() {
        let mut st = Store::new();
        let rx = st.subscribe();
        st.replace_origin(
            "f",
            objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "a", "10.0.0.1"))),
        );
        st.set_ready();
        st.publish();
        let first = rx.borrow().catalog.changes.clone();
        let names = |c: Changed<'_>| c.services.iter().map(|k| k.name.to_string()).collect::<Vec<_>>();
        // One endpoint of a: only a. A file re-read with equal content adds nothing.
        st.replace_origin(
            "f",
            objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "a", "10.0.0.9"))),
        );
        st.publish();
        let second = rx.borrow().catalog.changes.clone();
        assert_eq!(second.since(&first).map(names), Some(vec!["a".to_string()]));
        // The slice relabelled to b: both groups changed.
        st.replace_origin(
            "f",
            objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "b", "10.0.0.9"))),
        );
        st.publish();
        let third = rx.borrow().catalog.changes.clone();
        assert_eq!(third.since(&second).map(names), Some(vec!["a".to_string(), "b".to_string()]));
        // A consumer that skipped a generation gets both steps' changes.
        assert_eq!(third.since(&first).map(names), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(third.since(&third).map(names), Some(vec![]), "nothing since itself");
        assert_eq!(first.since(&third), None, "not a later catalog");
        assert_eq!(third.since(&Changes::default()), None, "not a store's catalog");
        // Nodes are named too.
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n";
        st.upsert("g", objs(node).remove(0));
        st.publish();
        let fourth = rx.borrow().catalog.changes.clone();
        let changed = fourth.since(&second).unwrap();
        assert_eq!(changed.nodes.into_iter().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(changed.services.len(), 2, "a and b, from the third step");
    }

    #[test]
    fn the_change_log_is_bounded_and_then_unknown() {
        let mut st = Store::new();
        let rx = st.subscribe();
        st.upsert("f", objs(&svc("a", "10.96.0.1")).remove(0));
        st.publish();
        let first = rx.borrow().catalog.changes.clone();
        for i in 0..LOG_STEPS + 1 {
            st.upsert("f", objs(&svc("a", &format!("10.96.{}.{}", i / 250, i % 250 + 2))).remove(0));
            st.publish();
        }
        let last = rx.borrow().catalog.changes.clone();
        assert_eq!(last.since(&first), None, "further behind than the log: rebuild");
        assert!(last.since(&rx.borrow().catalog.changes).is_some());
    }

    #[test]
    fn readiness_waits_for_every_required_kind() {
        let mut st = Store::new();
        let rx = st.subscribe();
        st.require([Kind::Service, Kind::EndpointSlice]);
        st.set_listed(Kind::Service);
        st.publish();
        assert!(!rx.borrow().ready, "Services alone: a Service's endpoints are not known yet");
        st.set_listed(Kind::EndpointSlice);
        st.publish();
        assert!(rx.borrow().ready, "Nodes are not required here");
        let mut st = Store::new();
        st.set_listed(Kind::Service);
        st.set_listed(Kind::EndpointSlice);
        assert!(!st.is_ready(), "all three kinds by default");
        st.set_listed(Kind::Node);
        assert!(st.is_ready());
    }

    #[test]
    fn the_working_copy_after_a_publish_is_the_published_catalog() {
        // Publishing moves the catalog out; the next change works on the
        // recycled previous catalog (nobody holds it) or on a copy (a
        // consumer still does). Either way every snapshot is exactly the
        // store's content, nodes included.
        let node = |name: &str, ip: &str| {
            format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n")
        };
        let mut st = Store::new();
        let rx = st.subscribe();
        let mut held = Vec::new();
        let steps = [
            svc("a", "10.96.0.1") + &slice("a-1", "a", "10.0.0.1") + &node("n1", "192.168.0.1"),
            svc("a", "10.96.0.2") + &slice("a-1", "a", "10.0.0.1") + &node("n1", "192.168.0.2"),
            svc("b", "10.96.0.3") + &slice("a-1", "b", "10.0.0.3"),
            svc("b", "10.96.0.3") + &node("n2", "192.168.0.3"),
            String::new(),
            svc("c", "10.96.0.4"),
        ];
        for (i, text) in steps.iter().enumerate() {
            st.replace_origin("f", objs(text));
            st.publish();
            let published = rx.borrow().catalog.clone();
            let expect = catalog_of(text);
            assert_eq!(*published, expect, "step {i}: published");
            assert_eq!(*st.catalog(), expect, "step {i}: the store's view");
            // Every other step a consumer keeps the snapshot: no recycling.
            if i % 2 == 0 {
                held.push(published);
            }
        }
        // A change on top of the last one, then the whole history is intact.
        st.upsert("g", objs(&svc("d", "10.96.0.5")).remove(0));
        st.publish();
        assert_eq!(rx.borrow().catalog.services.len(), 2);
        assert_eq!(*held[0], catalog_of(&steps[0]), "held snapshots never change");
        assert_eq!(*held[2], catalog_of(&steps[4]));
    }

    #[test]
    fn recycled_working_copies_stay_exact_over_random_changes() {
        // Several origins changing at random, snapshots held for random
        // spans: every published catalog must equal a store built from
        // scratch from the same files.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut st = Store::new();
        let rx = st.subscribe();
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        let mut held: Vec<Arc<Catalog>> = Vec::new();
        for step in 0..400 {
            for _ in 0..=rand(3) {
                let origin = format!("f{}", rand(4));
                let mut text = String::new();
                for _ in 0..rand(4) {
                    let (s, ip) = (rand(6), rand(3));
                    text += &svc(&format!("s{s}"), &format!("10.96.0.{ip}"));
                    if rand(2) == 0 {
                        text += &slice(
                            &format!("s{s}-{}", rand(2)),
                            &format!("s{}", rand(6)),
                            &format!("10.0.0.{}", rand(3)),
                        );
                    }
                }
                st.replace_origin(&origin, objs(&text));
                files.insert(origin, text);
            }
            st.publish();
            if rand(3) == 0 {
                held.push(rx.borrow().catalog.clone());
            }
            if rand(2) == 0 {
                held.clear();
            }
            if rand(4) == 0 {
                if let Some(published) = st.recycle() {
                    st.restore((*published).clone());
                }
            }
            let mut fresh = Store::new();
            for (origin, text) in &files {
                fresh.replace_origin(origin, objs(text));
            }
            assert_eq!(*rx.borrow().catalog, fresh.into_catalog(), "step {step}");
        }
    }

    fn catalog_of(text: &str) -> Catalog {
        let mut st = Store::new();
        st.replace_origin("f", objs(text));
        st.into_catalog()
    }

    #[test]
    fn slices_group_by_service_and_follow_a_relabel() {
        let mut st = Store::new();
        st.replace_origin("f", objs(&(slice("s2", "web", "10.0.0.2") + &slice("s1", "web", "10.0.0.1"))));
        let web = ObjectKey::new("x", "web");
        let keys: Vec<_> = st.catalog().slices_of(&web).iter().map(|s| s.key.name.to_string()).collect();
        assert_eq!(keys, ["s1", "s2"], "sorted by slice name");
        // s1 moves to another Service.
        st.replace_origin("f", objs(&(slice("s2", "web", "10.0.0.2") + &slice("s1", "api", "10.0.0.1"))));
        assert_eq!(st.catalog().slices_of(&web).len(), 1);
        assert_eq!(st.catalog().slices_of(&ObjectKey::new("x", "api")).len(), 1);
        st.remove_origin("f");
        assert!(st.catalog().slices.is_empty(), "empty groups are dropped");
    }

    #[test]
    fn generations_count_published_changes_and_ready_is_explicit() {
        let mut st = Store::new();
        let rx = st.subscribe();
        assert!(!rx.borrow().ready);
        st.replace_origin("f", objs(&svc("a", "10.96.0.1")));
        assert_eq!(st.publish(), 1);
        assert!(!rx.borrow().ready, "not ready until the source says so");
        assert_eq!(st.publish(), 1, "nothing changed, nothing published");
        st.set_ready();
        assert_eq!(st.publish(), 2);
        let snap = rx.borrow().clone();
        assert!(snap.ready && snap.generation == 2 && snap.catalog.services.len() == 1);
        st.replace_origin("f", objs(&svc("a", "10.96.0.1")));
        assert_eq!(st.publish(), 2, "identical content is no change");
    }

    #[test]
    fn upsert_and_delete_single_objects() {
        let mut st = Store::new();
        let a = objs(&svc("a", "10.96.0.1")).remove(0);
        let id = a.id();
        assert!(st.upsert("api", a.clone()));
        assert!(!st.upsert("api", a));
        assert!(st.delete("api", &id));
        assert!(!st.delete("api", &id));
        assert!(st.catalog().services.is_empty());
    }
}
