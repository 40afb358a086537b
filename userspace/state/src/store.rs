//! The store: objects from any source, merged by `(kind, namespace/name)` into
//! one [`Catalog`], published as [`Snapshot`]s on a `tokio::sync::watch`
//! channel. Sources (the YAML directory now, the Kubernetes API later) only
//! say "origin X now holds these objects" or "this object changed"; joining,
//! conflict resolution, readiness and publishing live here, once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use crate::convert::{Object, ObjectId};
use crate::model::{Catalog, EndpointSlice, ObjectKey, Snapshot};

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
        if self.dirty {
            self.dirty = false;
            self.generation += 1;
            self.tx.send_replace(Snapshot {
                catalog: Arc::new(self.catalog.clone()),
                ready: self.ready,
                generation: self.generation,
            });
        }
        self.generation
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
        let Some(decls) = self.decls.get_mut(id) else { return false };
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
        let winner = self.decls.get(id).and_then(|d| d.values().next_back()).cloned();
        let cat = &mut self.catalog;
        let changed = match (id, winner) {
            (ObjectId::Service(key), Some(Object::Service(svc))) => cat.services.insert(key.clone(), svc.clone()) != Some(svc),
            (ObjectId::Service(key), None) => cat.services.remove(key).is_some(),
            (ObjectId::Node(name), Some(Object::Node(node))) => cat.nodes.insert(name.clone(), node.clone()) != Some(node),
            (ObjectId::Node(name), None) => cat.nodes.remove(name).is_some(),
            (ObjectId::EndpointSlice(key), winner) => {
                let new = match winner {
                    Some(Object::EndpointSlice(s)) => Some(s),
                    _ => None,
                };
                let old = self.slice_owner.remove(key).and_then(|svc| remove_slice(cat, &svc, key));
                let changed = old != new;
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
fn remove_slice(cat: &mut Catalog, svc: &ObjectKey, key: &ObjectKey) -> Option<EndpointSlice> {
    let group = cat.slices.get_mut(svc)?;
    let pos = group.binary_search_by(|s| s.key.cmp(key)).ok()?;
    let slice = group.remove(pos);
    if group.is_empty() {
        cat.slices.remove(svc);
    }
    Some(slice)
}
