//! The objects, their change history and the list snapshots behind
//! continue tokens. One `Store` sits behind one mutex; every method is a
//! short critical section that clones `Arc`s, never bytes.
//!
//! Resource versions are one global counter (as etcd's revision is), bumped
//! by every write of any kind. Each kind keeps the events after its
//! `compacted` revision: a watch or an `Exact` list from a revision at or
//! after it can be served from history, an older one gets 410 Gone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::object::{key_of, now_rfc3339, Obj, Stamp};
use crate::resource::{by_api_version_kind, TYPES};
use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write as watchers see it.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub ty: EventType,
    /// The new state; for `Deleted`, the last state at the deletion's
    /// resourceVersion.
    pub obj: Arc<Obj>,
    /// The state before (`Modified`, `Deleted`): selector transitions and
    /// reconstructing older states need it.
    pub prev: Option<Arc<Obj>>,
}

#[derive(Debug, Default)]
pub(crate) struct Kind {
    pub objects: BTreeMap<Box<str>, Arc<Obj>>,
    history: VecDeque<Arc<Event>>,
    /// Every event with a larger resourceVersion is in `history`.
    pub compacted: u64,
}

impl Kind {
    /// The current objects of one namespace (or all), in key order.
    fn range(&self, namespace: Option<&str>) -> impl Iterator<Item = &Arc<Obj>> {
        let (lo, hi) = match namespace {
            // `ns/` up to `ns0`: '0' is the byte after '/'.
            Some(ns) => (Bound::Included(format!("{ns}/")), Bound::Excluded(format!("{ns}0"))),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let lo = bound_ref(&lo);
        let hi = bound_ref(&hi);
        self.objects.range::<str, _>((lo, hi)).map(|(_, o)| o)
    }
}

fn bound_ref(b: &Bound<String>) -> Bound<&str> {
    match b {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// How a write treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Create, or replace whatever is there (the Rust API's `apply`).
    Apply,
    /// POST: the object must not exist.
    Create,
    /// PUT/PATCH: the object must exist, at `expect_rv` if given.
    Update { expect_rv: Option<u64> },
}

/// A list's items, shared between its pages.
pub(crate) type Items = Arc<[Arc<Obj>]>;

/// The items of a paged list, kept so later pages come from the same state.
struct ListSnapshot {
    ty: usize,
    namespace: Option<String>,
    rv: u64,
    items: Items,
    used: Instant,
}

/// Paged lists kept at once; the least recently used goes first.
const MAX_SNAPSHOTS: usize = 64;

pub(crate) struct Store {
    pub rv: u64,
    pub kinds: Vec<Kind>,
    snapshots: HashMap<u64, ListSnapshot>,
    next_snapshot: u64,
    pub rng: Rng,
    history_limit: usize,
    continue_ttl: Duration,
}

impl Store {
    pub fn new(history_limit: usize, continue_ttl: Duration, seed: u64) -> Store {
        Store {
            rv: 0,
            kinds: TYPES.iter().map(|_| Kind::default()).collect(),
            snapshots: HashMap::new(),
            next_snapshot: 1,
            rng: Rng(seed),
            history_limit: history_limit.max(1),
            continue_ttl,
        }
    }

    /// Resolves the type of a whole object from its `apiVersion` and `kind`.
    pub fn type_of(value: &Value) -> Result<usize, ApiError> {
        let field = |f: &str| value.get(f).and_then(Value::as_str).unwrap_or("");
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if api_version.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request("Object 'Kind' or 'apiVersion' is missing"));
        }
        by_api_version_kind(api_version, kind).ok_or_else(|| {
            ApiError::new(404, format!("no kind \"{kind}\" is registered for version \"{api_version}\""))
        })
    }

    /// Writes one object; returns the stored state and the event it made.
    pub fn write(&mut self, mut value: Value, mode: WriteMode) -> Result<(Arc<Obj>, EventType), ApiError> {
        let ty = Store::type_of(&value)?;
        let t = &TYPES[ty];
        let meta = value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::invalid(format!("{} is invalid: metadata: Required value", t.kind)))?;
        let named = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        if !named && mode == WriteMode::Create {
            if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
                // As the real server does: five random characters after the prefix.
                let suffix: String =
                    (0..5).map(|_| b"bcdfghjklmnpqrstvwxz2456789"[(self.rng.next() % 27) as usize] as char).collect();
                let name = format!("{prefix}{suffix}");
                meta.insert("name".into(), Value::String(name));
            }
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let namespace = t.namespaced.then(|| {
            meta.get("namespace").and_then(Value::as_str).filter(|ns| !ns.is_empty()).unwrap_or("default").to_string()
        });
        let key = key_of(namespace.as_deref(), &name);
        let existing = self.kinds[ty].objects.get(key.as_str()).cloned();
        match (mode, &existing) {
            (WriteMode::Create, Some(_)) => {
                return Err(ApiError::new(409, format!("{} \"{name}\" already exists", t.plural))
                    .with_reason("AlreadyExists")
                    .with_details(json!({"name": name, "kind": t.plural})))
            }
            (WriteMode::Update { .. }, None) if !name.is_empty() => return Err(ApiError::not_found(t.plural, &name)),
            (WriteMode::Update { expect_rv: Some(want) }, Some(old)) if old.rv != want => {
                return Err(ApiError::new(
                    409,
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                         please apply your changes to the latest version and try again",
                        t.plural
                    ),
                )
                .with_details(json!({"name": name, "kind": t.plural})))
            }
            _ => {}
        }
        let rv = self.rv + 1;
        let (uid, creation) = match &existing {
            Some(old) => (old.uid.to_string(), old.creation.to_string()),
            None => (self.rng.uid(), now_rfc3339()),
        };
        let obj = Arc::new(Obj::build(ty, value, Stamp { rv, uid: &uid, creation: &creation })?);
        self.rv = rv;
        let event_type = if existing.is_some() { EventType::Modified } else { EventType::Added };
        self.kinds[ty].objects.insert(obj.key.clone(), obj.clone());
        self.record(ty, Event { rv, ty: event_type, obj: obj.clone(), prev: existing });
        Ok((obj, event_type))
    }

    /// Deletes one object; returns its last state at the deletion's
    /// resourceVersion.
    pub fn delete(&mut self, ty: usize, key: &str) -> Option<Arc<Obj>> {
        let old = self.kinds[ty].objects.remove(key)?;
        self.rv += 1;
        let gone = Arc::new(old.with_rv(self.rv));
        self.record(ty, Event { rv: self.rv, ty: EventType::Deleted, obj: gone.clone(), prev: Some(old) });
        Some(gone)
    }

    fn record(&mut self, ty: usize, event: Event) {
        let kind = &mut self.kinds[ty];
        kind.history.push_back(Arc::new(event));
        while kind.history.len() > self.history_limit {
            if let Some(old) = kind.history.pop_front() {
                kind.compacted = old.rv;
            }
        }
    }

    /// Forgets all history: every kind is compacted at the current revision
    /// and every continue token is void.
    pub fn compact(&mut self) {
        for kind in &mut self.kinds {
            kind.history.clear();
            kind.compacted = self.rv;
        }
        self.snapshots.clear();
    }

    pub fn get(&self, ty: usize, key: &str) -> Option<Arc<Obj>> {
        self.kinds[ty].objects.get(key).cloned()
    }

    /// The current objects of one namespace (or all), in key order.
    pub fn current(&self, ty: usize, namespace: Option<&str>) -> Vec<Arc<Obj>> {
        self.kinds[ty].range(namespace).cloned().collect()
    }

    /// The objects as they were at `rv`, rebuilt from the current state by
    /// undoing the newer events.
    pub fn state_at(&self, ty: usize, namespace: Option<&str>, rv: u64) -> Result<Vec<Arc<Obj>>, ApiError> {
        let kind = &self.kinds[ty];
        if rv < kind.compacted {
            return Err(ApiError::expired(format!("too old resource version: {rv} ({})", kind.compacted)));
        }
        let mut state: BTreeMap<&str, Arc<Obj>> = kind.range(namespace).map(|o| (&*o.key, o.clone())).collect();
        for event in kind.history.iter().rev().take_while(|e| e.rv > rv) {
            if namespace.is_some() && event.obj.namespace.as_deref() != namespace {
                continue;
            }
            match (&event.ty, &event.prev) {
                (EventType::Added, _) => {
                    state.remove(&*event.obj.key);
                }
                (EventType::Modified | EventType::Deleted, Some(prev)) => {
                    state.insert(&prev.key, prev.clone());
                }
                (_, None) => unreachable!("updates and deletes keep the previous state"),
            }
        }
        Ok(state.into_values().collect())
    }

    /// The events of one kind after `cursor`, at most `max`, and the
    /// revision the reader has then seen everything up to.
    pub fn events_after(&self, ty: usize, cursor: u64, max: usize) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        let kind = &self.kinds[ty];
        if cursor < kind.compacted {
            return Err(ApiError::expired(format!("too old resource version: {cursor} ({})", kind.compacted)));
        }
        let start = kind.history.partition_point(|e| e.rv <= cursor);
        let events: Vec<Arc<Event>> = kind.history.range(start..).take(max).cloned().collect();
        let seen = if start + events.len() == kind.history.len() {
            self.rv.max(cursor)
        } else {
            events.last().map_or(cursor, |e| e.rv)
        };
        Ok((events, seen))
    }

    /// Keeps a paged list's items for its later pages; returns the id its
    /// continue tokens carry.
    pub fn keep_snapshot(&mut self, ty: usize, namespace: Option<&str>, rv: u64, items: Items) -> u64 {
        let now = Instant::now();
        let ttl = self.continue_ttl;
        self.snapshots.retain(|_, s| now.duration_since(s.used) < ttl);
        while self.snapshots.len() >= MAX_SNAPSHOTS {
            let oldest = self.snapshots.iter().min_by_key(|(_, s)| s.used).map(|(id, _)| *id);
            match oldest {
                Some(id) => self.snapshots.remove(&id),
                None => break,
            };
        }
        let id = self.next_snapshot;
        self.next_snapshot += 1;
        self.snapshots.insert(id, ListSnapshot { ty, namespace: namespace.map(str::to_string), rv, items, used: now });
        id
    }

    /// The items behind a continue token: the kept snapshot, or the state
    /// rebuilt from history if it was evicted; 410 once compacted.
    pub fn snapshot(&mut self, id: u64, ty: usize, namespace: Option<&str>, rv: u64) -> Result<(u64, Items), ApiError> {
        if rv < self.kinds[ty].compacted {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ));
        }
        if let Some(s) = self.snapshots.get_mut(&id) {
            if s.ty == ty && s.rv == rv && s.namespace.as_deref() == namespace {
                s.used = Instant::now();
                return Ok((id, s.items.clone()));
            }
        }
        let items: Items = self.state_at(ty, namespace, rv)?.into();
        let id = self.keep_snapshot(ty, namespace, rv, items.clone());
        Ok((id, items))
    }

    pub fn forget_snapshot(&mut self, id: u64) {
        self.snapshots.remove(&id);
    }
}

/// splitmix64 (<https://prng.di.unimi.it/splitmix64.c>): uids, generated
/// names and timeout jitter need no better.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random (version 4) UUID.
    pub fn uid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, port: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "a"},
               "spec": {"ports": [{"port": port}]}})
    }

    fn names(items: &[Arc<Obj>]) -> Vec<(String, u64)> {
        items.iter().map(|o| (o.name.to_string(), o.rv)).collect()
    }

    #[test]
    fn older_states_are_rebuilt_from_history() {
        let mut s = Store::new(100, Duration::from_secs(60), 1);
        let ty = Store::type_of(&svc("x", 1)).unwrap();
        s.write(svc("web", 80), WriteMode::Apply).unwrap(); // rv 1
        s.write(svc("db", 5432), WriteMode::Apply).unwrap(); // rv 2
        s.write(svc("web", 8080), WriteMode::Apply).unwrap(); // rv 3
        s.delete(ty, "a/db").unwrap(); // rv 4
        s.write(svc("new", 1), WriteMode::Apply).unwrap(); // rv 5
        let rows: &[(u64, &[(&str, u64)])] = &[
            (0, &[]),
            (1, &[("web", 1)]),
            (2, &[("db", 2), ("web", 1)]),
            (3, &[("db", 2), ("web", 3)]),
            (4, &[("web", 3)]),
            (5, &[("new", 5), ("web", 3)]),
        ];
        for (rv, want) in rows {
            let got = names(&s.state_at(ty, Some("a"), *rv).unwrap());
            let want: Vec<_> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
            assert_eq!(got, want, "at rv {rv}");
        }
        // another namespace saw none of it
        assert!(s.state_at(ty, Some("b"), 3).unwrap().is_empty());
        s.compact();
        assert_eq!(s.state_at(ty, None, 4).unwrap_err().code, 410);
        assert_eq!(names(&s.state_at(ty, None, 5).unwrap()).len(), 2);
    }

    #[test]
    fn history_limit_compacts_the_oldest() {
        let mut s = Store::new(2, Duration::from_secs(60), 1);
        let ty = Store::type_of(&svc("x", 1)).unwrap();
        for port in 1..=4 {
            s.write(svc("web", port), WriteMode::Apply).unwrap();
        }
        // events 3 and 4 are kept: a reader at 2 is served, one at 1 is not
        assert_eq!(s.events_after(ty, 2, 10).unwrap().0.len(), 2);
        assert_eq!(s.events_after(ty, 1, 10).unwrap_err().code, 410);
        let (events, seen) = s.events_after(ty, 3, 10).unwrap();
        assert_eq!((events.len(), seen), (1, 4));
    }

    #[test]
    fn write_modes() {
        let mut s = Store::new(10, Duration::from_secs(60), 1);
        assert_eq!(s.write(svc("web", 1), WriteMode::Update { expect_rv: None }).unwrap_err().code, 404);
        s.write(svc("web", 1), WriteMode::Create).unwrap();
        assert_eq!(s.write(svc("web", 1), WriteMode::Create).unwrap_err().reason, "AlreadyExists");
        let conflict = s.write(svc("web", 2), WriteMode::Update { expect_rv: Some(7) });
        assert_eq!(conflict.unwrap_err().code, 409);
        let (obj, ty) = s.write(svc("web", 2), WriteMode::Update { expect_rv: Some(1) }).unwrap();
        assert_eq!((obj.rv, ty), (2, EventType::Modified));
        let mut gen = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "web-"}});
        let (obj, _) = s.write(gen.take(), WriteMode::Create).unwrap();
        assert!(obj.name.starts_with("web-") && obj.name.len() == 9, "{}", obj.name);
        assert_eq!(obj.namespace.as_deref(), Some("default"));
        // a failed write takes no resourceVersion
        assert_eq!(s.rv, 3);
    }
}
