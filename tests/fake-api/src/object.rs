//! One stored object: its JSON bytes, written once, plus the few metadata
//! fields the server reads (key, labels, resourceVersion).
//!
//! The bytes are laid out so that every representation the server sends is
//! a slice of them, never a re-encoding:
//!
//! ```text
//! {"kind":"Service","apiVersion":"v1","metadata":{...},"spec":...}
//!                                     ^ body_at    ^^^^^ meta
//! ```
//!
//! A watch event carries the whole object; a list item is `{` followed by
//! the bytes from `body_at` (the real server leaves `kind`/`apiVersion` out
//! of the items of built-in lists); a metadata-only view
//! (`PartialObjectMetadata`) wraps the `meta` range.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::resource::{ResourceType, TYPES};
use crate::status::ApiError;

#[derive(Debug)]
pub(crate) struct Obj {
    /// `namespace/name` for namespaced kinds, `name` otherwise: the order of
    /// lists (etcd's key order) and the key of the store's map.
    pub key: Box<str>,
    pub name: Box<str>,
    pub namespace: Option<Box<str>>,
    pub uid: Box<str>,
    pub creation: Box<str>,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub rv: u64,
    json: Bytes,
    body_at: usize,
    meta: Range<usize>,
}

/// The map key of an object.
pub(crate) fn key_of(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// What a write needs besides the object: the new resourceVersion and the
/// identity a create assigns (kept from the stored object on updates).
pub(crate) struct Stamp<'a> {
    pub rv: u64,
    pub uid: &'a str,
    pub creation: &'a str,
}

impl Obj {
    /// Builds the stored form of `value`, whose type the caller resolved as
    /// `ty` and whose metadata already names it. Sets `resourceVersion`,
    /// `uid` and `creationTimestamp`, defaults the namespace of namespaced
    /// kinds to `default` and drops it from cluster-scoped ones.
    pub fn build(ty: usize, mut value: Value, stamp: Stamp<'_>) -> Result<Obj, ApiError> {
        let t = &TYPES[ty];
        let map = value.as_object_mut().ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
        map.remove("kind");
        map.remove("apiVersion");
        let mut meta = match map.remove("metadata") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(ApiError::bad_request("metadata is not an object")),
        };
        let name = match meta.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "{} is invalid: metadata.name: Required value: name or generateName is required",
                    t.kind
                ))
                .with_reason("Invalid"))
            }
        };
        let namespace = if t.namespaced {
            let ns = match meta.get("namespace") {
                Some(Value::String(ns)) if !ns.is_empty() => ns.clone(),
                _ => "default".to_string(),
            };
            meta.insert("namespace".into(), Value::String(ns.clone()));
            Some(ns)
        } else {
            meta.remove("namespace");
            None
        };
        meta.insert("uid".into(), Value::String(stamp.uid.to_string()));
        meta.insert("resourceVersion".into(), Value::String(stamp.rv.to_string()));
        meta.insert("creationTimestamp".into(), Value::String(stamp.creation.to_string()));
        let labels = match meta.get("labels") {
            Some(Value::Object(l)) => l
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.as_str().into(),
                        other => other.to_string().into_boxed_str(),
                    };
                    (k.as_str().into(), v)
                })
                .collect(),
            _ => Box::default(),
        };
        let (json, body_at, meta_range) = encode(t, &meta, map);
        Ok(Obj {
            key: key_of(namespace.as_deref(), &name).into(),
            name: name.into(),
            namespace: namespace.map(Into::into),
            uid: stamp.uid.into(),
            creation: stamp.creation.into(),
            labels,
            rv: stamp.rv,
            json,
            body_at,
            meta: meta_range,
        })
    }

    /// The whole object, `kind` and `apiVersion` first.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// Appends the list item form (no `kind`/`apiVersion`).
    pub fn write_item(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        out.extend_from_slice(&self.json[self.body_at..]);
    }

    /// Appends `{"kind":"PartialObjectMetadata",...,"metadata":{...}}`.
    pub fn write_partial(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#);
        out.extend_from_slice(&self.json[self.meta.clone()]);
        out.push(b'}');
    }

    /// The object as a JSON tree (for patches and the Rust API's `get`).
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("stored objects are valid JSON")
    }

    /// The same object at another resourceVersion: a DELETED event carries
    /// the last state at the deletion's resourceVersion.
    pub fn with_rv(&self, rv: u64) -> Obj {
        let mut meta: Map<String, Value> =
            serde_json::from_slice(&self.json[self.meta.clone()]).expect("stored metadata is JSON");
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let mut json = Vec::with_capacity(self.json.len() + 8);
        json.extend_from_slice(&self.json[..self.meta.start]);
        serde_json::to_writer(&mut json, &meta).expect("a JSON map serializes");
        let meta_end = json.len();
        json.extend_from_slice(&self.json[self.meta.end..]);
        Obj {
            key: self.key.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            creation: self.creation.clone(),
            labels: self.labels.clone(),
            rv,
            json: json.into(),
            body_at: self.body_at,
            meta: self.meta.start..meta_end,
        }
    }

    #[cfg(test)]
    pub fn for_test(ns: &str, name: &str, labels: Value) -> Obj {
        let ty = crate::resource::by_kind_name("Service").expect("served");
        let value = serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
        });
        Obj::build(ty, value, Stamp { rv: 1, uid: "u", creation: "c" }).expect("valid")
    }
}

fn encode(t: &ResourceType, meta: &Map<String, Value>, rest: &Map<String, Value>) -> (Bytes, usize, Range<usize>) {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(br#"{"kind":"#);
    write(&mut buf, t.kind);
    buf.extend_from_slice(br#","apiVersion":"#);
    write(&mut buf, &t.api_version());
    buf.push(b',');
    let body_at = buf.len();
    buf.extend_from_slice(br#""metadata":"#);
    let meta_start = buf.len();
    write(&mut buf, meta);
    let meta_end = buf.len();
    for (k, v) in rest {
        buf.push(b',');
        write(&mut buf, k);
        buf.push(b':');
        write(&mut buf, v);
    }
    buf.push(b'}');
    (buf.into(), body_at, meta_start..meta_end)
}

fn write<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(buf, value).expect("JSON values serialize");
}

/// RFC 3339 UTC, whole seconds, as `creationTimestamp` is written.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days
    // (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn views_are_slices_of_one_encoding() {
        let ty = crate::resource::by_kind_name("Service").unwrap();
        let value = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"clusterIP": "10.0.0.1"},
        });
        let obj = Obj::build(ty, value, Stamp { rv: 7, uid: "u1", creation: "t" }).unwrap();
        assert_eq!(&*obj.key, "default/web");
        let full: Value = serde_json::from_slice(obj.json()).unwrap();
        assert_eq!(full["kind"], "Service");
        assert_eq!(full["metadata"]["namespace"], "default");
        assert_eq!(full["metadata"]["resourceVersion"], "7");
        assert_eq!(full["spec"]["clusterIP"], "10.0.0.1");

        let mut item = Vec::new();
        obj.write_item(&mut item);
        let item: Value = serde_json::from_slice(&item).unwrap();
        assert!(item.get("kind").is_none());
        assert_eq!(item["spec"], full["spec"]);

        let mut partial = Vec::new();
        obj.write_partial(&mut partial);
        let partial: Value = serde_json::from_slice(&partial).unwrap();
        assert_eq!(partial["kind"], "PartialObjectMetadata");
        assert_eq!(partial["metadata"], full["metadata"]);

        let later = obj.with_rv(9);
        let later_full: Value = serde_json::from_slice(later.json()).unwrap();
        assert_eq!(later_full["metadata"]["resourceVersion"], "9");
        assert_eq!(later_full["spec"], full["spec"]);
        let mut item = Vec::new();
        later.write_item(&mut item);
        serde_json::from_slice::<Value>(&item).unwrap();
    }
}
