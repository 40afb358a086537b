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
//! - after a batch -> [`Store::publish`] (or `publish_detached` + `restore`
//!   from an async task, to keep the catalog copy off the latency path).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use crate::convert::{Object, ObjectId};
use crate::model::{Catalog, Changes, EndpointSlice, ObjectKey, Snapshot};

/// Mutable merge of every source's objects. Not shared: one task owns it and
/// publishes; consumers only see the immutable snapshots.
#[derive(Debug)]
pub struct Store {
    /// Every declaration of every object, by origin. The same object declared
    /// by two origins (two files) is a conflict: the one from the origin that
    /// sorts last wins, deterministically, and a warning names both.
    decls: HashMap<ObjectId, BTreeMap<Arc<str>, Object>>,
    by_origin: HashMap<Arc<str>, Vec<ObjectId>>,
    /// Which Service group of `catalog.slices` holds each slice.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    catalog: Catalog,
    /// Service keys changed since the last publish (-> `Catalog::changes`).
    touched: BTreeSet<ObjectKey>,
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
            touched: BTreeSet::new(),
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
        &self.catalog
    }

    pub fn into_catalog(self) -> Catalog {
        self.catalog
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// `origin` now declares exactly `objects` (a file was (re)read, or a
    /// Kubernetes list completed). Objects it declared before and no longer
    /// does are removed. Returns whether the catalog changed.
    pub fn replace_origin(&mut self, origin: &str, objects: Vec<Object>) -> bool {
        let origin: Arc<str> = Arc::from(origin);
        let old_ids = self.by_origin.remove(&origin).unwrap_or_default();
        let mut new_ids = Vec::with_capacity(objects.len());
        let mut changed = false;
        for obj in objects {
            new_ids.push(obj.id());
            changed |= self.declare(&origin, obj.id(), obj);
        }
        new_ids.sort();
        let declared = new_ids.len();
        new_ids.dedup();
        if new_ids.len() != declared {
            // The later document wins, as with `kubectl apply -f` of such a file.
            warn!(%origin, duplicates = declared - new_ids.len(), "objects declared twice in the same file; the later one wins");
        }
        for id in old_ids {
            if new_ids.binary_search(&id).is_err() {
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
        let origin: Arc<str> = Arc::from(origin);
        let id = object.id();
        let ids = self.by_origin.entry(origin.clone()).or_default();
        if let Err(pos) = ids.binary_search(&id) {
            ids.insert(pos, id.clone());
        }
        self.declare(&origin, id, object)
    }

    /// One object deleted (watch event of an API source).
    pub fn delete(&mut self, origin: &str, id: &ObjectId) -> bool {
        let origin: Arc<str> = Arc::from(origin);
        if let Some(ids) = self.by_origin.get_mut(&origin) {
            if let Ok(pos) = ids.binary_search(id) {
                ids.remove(pos);
            }
            if ids.is_empty() {
                self.by_origin.remove(&origin);
            }
        }
        self.undeclare(&origin, id)
    }

    /// The source has delivered its first complete view: from now on absence
    /// from the catalog means the object does not exist.
    pub fn set_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.dirty = true;
        }
    }

    /// Publish a new snapshot if anything changed since the last one. Returns
    /// the generation now on the channel.
    pub fn publish(&mut self) -> u64 {
        if let Some((published, replaced)) = self.publish_detached() {
            drop(replaced);
            self.restore((*published).clone());
        }
        self.generation
    }

    /// Publish, moving the working catalog into the snapshot instead of
    /// cloning it first: the copy the store keeps working on costs ~30 ms at
    /// 10,000 Services, and consumers should not wait for it. The caller must
    /// [`restore`](Self::restore) a copy of the returned catalog before the
    /// next change; it also gets the replaced snapshot, whose drop (if it was
    /// the last reference) costs about as much, to do off the hot path too.
    pub fn publish_detached(&mut self) -> Option<(Arc<Catalog>, Snapshot)> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.generation += 1;
        self.catalog.changes = Changes { generation: self.generation, services: std::mem::take(&mut self.touched) };
        let published = Arc::new(std::mem::take(&mut self.catalog));
        let replaced = self.tx.send_replace(Snapshot {
            catalog: published.clone(),
            ready: self.ready,
            generation: self.generation,
        });
        Some((published, replaced))
    }

    /// Hand back the working copy after [`publish_detached`](Self::publish_detached):
    /// an equal copy of the catalog it returned.
    pub fn restore(&mut self, catalog: Catalog) {
        self.catalog = catalog;
    }

    fn declare(&mut self, origin: &Arc<str>, id: ObjectId, obj: Object) -> bool {
        let decls = self.decls.entry(id.clone()).or_default();
        if decls.get(origin) == Some(&obj) {
            return false;
        }
        decls.insert(origin.clone(), obj);
        if decls.len() > 1 {
            let origins: Vec<&str> = decls.keys().map(|o| &**o).collect();
            warn!(object = %id, ?origins, "object declared in several files; the last one (by name) wins");
        }
        self.refresh(&id)
    }

    fn undeclare(&mut self, origin: &Arc<str>, id: &ObjectId) -> bool {
        let Some(decls) = self.decls.get_mut(id) else {
            return false;
        };
        if decls.remove(origin).is_none() {
            return false;
        }
        if decls.is_empty() {
            self.decls.remove(id);
        }
        self.refresh(id)
    }

    /// Make the catalog entry for `id` match its winning declaration.
    fn refresh(&mut self, id: &ObjectId) -> bool {
        let winner = self
            .decls
            .get(id)
            .and_then(|d| d.values().next_back())
            .cloned();
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
            (ObjectId::Node(name), Some(Object::Node(node))) => put(&mut cat.nodes, name, node),
            (ObjectId::Node(name), None) => cat.nodes.remove(name).is_some(),
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
                    let pos = group
                        .binary_search_by(|s| s.key.cmp(&slice.key))
                        .unwrap_or_else(|p| p);
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
fn remove_slice(cat: &mut Catalog, svc: &ObjectKey, key: &ObjectKey) -> Option<EndpointSlice> {
    let group = cat.slices.get_mut(svc)?;
    let pos = group.binary_search_by(|s| s.key.cmp(key)).ok()?;
    let slice = group.remove(pos);
    if group.is_empty() {
        cat.slices.remove(svc);
    }
    Some(slice)
}

/// Insert unless equal; whether the map changed.
fn put<K: Ord + Clone, V: PartialEq>(
    map: &mut std::collections::BTreeMap<K, V>,
    key: &K,
    value: V,
) -> bool {
    if map.get(key) == Some(&value) {
        return false;
    }
    map.insert(key.clone(), value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;

    fn objs(text: &str) -> Vec<Object> {
        let (objs, errs) = parse_documents(text, "test");
        assert!(errs.is_empty(), "{errs:?}");
        objs
    }

    fn svc(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {{clusterIP: {ip}}}\n---\n")
    }

    fn slice(name: &str, service: &str, addr: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [{addr}]}}]\n---\n"
        )
    }

    fn vip(store: &Store, name: &str) -> Option<String> {
        store
            .catalog()
            .service("x", name)
            .map(|s| s.cluster_ips[0].to_string())
    }

    #[test]
    fn replacing_an_origin_adds_changes_and_removes() {
        let mut st = Store::new();
        assert!(st.replace_origin(
            "f1",
            objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2")))
        ));
        assert!(st.replace_origin("f1", objs(&svc("a", "10.96.0.9"))));
        assert_eq!(vip(&st, "a").as_deref(), Some("10.96.0.9"));
        assert_eq!(
            vip(&st, "b"),
            None,
            "b left the file, so it left the catalog"
        );
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
        assert_eq!(
            vip(&st, "a").as_deref(),
            Some("10.96.0.1"),
            "the remaining declaration takes over"
        );
    }

    #[test]
    fn a_snapshot_names_the_services_changed_since_the_previous_one() {
        let mut st = Store::new();
        let rx = st.subscribe();
        st.replace_origin("f", objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "a", "10.0.0.1"))));
        st.set_ready();
        st.publish();
        let first = rx.borrow().catalog.changes.clone();
        let names = |c: &BTreeSet<ObjectKey>| c.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        // One endpoint of a: only a. A file re-read with equal content adds nothing.
        st.replace_origin("f", objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "a", "10.0.0.9"))));
        st.publish();
        let second = rx.borrow().catalog.changes.clone();
        assert_eq!(second.since(&first).map(names), Some(vec!["a".to_string()]));
        // The slice relabelled to b: both groups changed.
        st.replace_origin("f", objs(&(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "b", "10.0.0.9"))));
        st.publish();
        let third = rx.borrow().catalog.changes.clone();
        assert_eq!(third.since(&second).map(names), Some(vec!["a".to_string(), "b".to_string()]));
        // A skipped generation: unknown, the consumer must compare.
        assert_eq!(third.since(&first), None);
    }

    #[test]
    fn slices_group_by_service_and_follow_a_relabel() {
        let mut st = Store::new();
        st.replace_origin(
            "f",
            objs(&(slice("s2", "web", "10.0.0.2") + &slice("s1", "web", "10.0.0.1"))),
        );
        let web = ObjectKey::new("x", "web");
        let keys: Vec<_> = st
            .catalog()
            .slices_of(&web)
            .iter()
            .map(|s| s.key.name.clone())
            .collect();
        assert_eq!(keys, ["s1", "s2"], "sorted by slice name");
        // s1 moves to another Service.
        st.replace_origin(
            "f",
            objs(&(slice("s2", "web", "10.0.0.2") + &slice("s1", "api", "10.0.0.1"))),
        );
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
