//! `--fixture`: a file loaded once as the whole catalog (what the shared
//! benchmark feeds every server).
//!
//! A large JSON `List` is split into its items before parsing, so only one
//! object at a time is ever held as a `serde_json::Value` tree: the 21,000
//! item benchmark cluster otherwise peaks at over 100 MB in parse trees
//! alone, far more than the zone built from it.

use std::path::Path;

use std::collections::HashMap;

use ferry_state::{catalog_from_objects, parse_documents, Catalog, Object, ObjectError, ObjectKey};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("reading fixture {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

pub fn load_fixture(path: &Path) -> Result<(Catalog, Vec<ObjectError>), FixtureError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read { path: origin.clone(), source })?;
    match serde_json::from_str::<RawList<'_>>(&text) {
        Ok(list) => {
            // Items are folded into the catalog as they are parsed, with the
            // store's rules (a later declaration wins, slices grouped by
            // Service and ordered by name), so no second copy of the
            // objects is ever held.
            let mut cat = Catalog::default();
            let mut slice_owner: HashMap<ObjectKey, ObjectKey> = HashMap::new();
            let mut errors = Vec::new();
            for item in list.items {
                let (objects, e) = parse_documents(item.get(), &origin);
                errors.extend(e);
                for o in objects {
                    fold(&mut cat, &mut slice_owner, o);
                }
            }
            for slices in cat.slices.values_mut() {
                slices.sort_by(|a, b| a.key.cmp(&b.key));
            }
            Ok((cat, errors))
        }
        // YAML, or JSON that is not a List: the catalog's own parser.
        Err(_) => {
            let (objects, errors) = parse_documents(&text, &origin);
            Ok((catalog_from_objects(objects), errors))
        }
    }
}

fn fold(cat: &mut Catalog, slice_owner: &mut HashMap<ObjectKey, ObjectKey>, o: Object) {
    match o {
        Object::Service(s) => {
            cat.services.insert(s.key.clone(), s);
        }
        Object::EndpointSlice(e) => {
            if let Some(prev) = slice_owner.insert(e.key.clone(), e.service.clone()) {
                if let Some(v) = cat.slices.get_mut(&prev) {
                    v.retain(|x| x.key != e.key);
                    if v.is_empty() {
                        cat.slices.remove(&prev);
                    }
                }
            }
            cat.slices.entry(e.service.clone()).or_default().push(e);
        }
        Object::Node(n) => {
            cat.nodes.insert(n.name.clone(), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_list_and_yaml_give_the_same_catalog() {
        let dir = std::env::temp_dir().join(format!("ferry-dns-fixture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}},
          {"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"a"},
           "spec":{"clusterIP":"10.96.0.1","clusterIPs":["10.96.0.1"],"ports":[{"name":"http","port":80}]}},
          {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s-b","namespace":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4","ports":[{"name":"http","port":80,"protocol":"TCP"}],"endpoints":[{"addresses":["10.0.0.2"]}]},
          {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s-a","namespace":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4","ports":[{"name":"http","port":80,"protocol":"TCP"}],"endpoints":[{"addresses":["10.0.0.9"]}]},
          {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s-a","namespace":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4","ports":[{"name":"http","port":80,"protocol":"TCP"}],"endpoints":[{"addresses":["10.0.0.1"]}]},
          {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad","namespace":"a"},"spec":{"clusterIP":"nope"}}]}"#;
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec:\n  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.1]\n  ports: [{name: http, port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-a, namespace: a, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{name: http, port: 80, protocol: TCP}]\nendpoints: [{addresses: [10.0.0.1]}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-b, namespace: a, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{name: http, port: 80, protocol: TCP}]\nendpoints: [{addresses: [10.0.0.2]}]\n";
        std::fs::write(dir.join("c.json"), json).unwrap();
        std::fs::write(dir.join("c.yaml"), yaml).unwrap();
        let (from_json, errors) = load_fixture(&dir.join("c.json")).unwrap();
        let (from_yaml, _) = load_fixture(&dir.join("c.yaml")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(from_json, from_yaml);
        assert_eq!(from_json.services.len(), 1);
        assert_eq!(errors.len(), 1, "the bad Service is reported, the good one kept");
        assert!(load_fixture(Path::new("/nonexistent/x.json")).is_err());
    }
}
