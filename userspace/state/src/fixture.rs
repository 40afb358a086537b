//! The fixture source: a file loaded once as the whole catalog (what the
//! shared DNS benchmark feeds every server, and tools' one-shot input).
//!
//! A large JSON `List` is split into its items before parsing, so only one
//! object at a time is ever held as a `serde_json::Value` tree: the 21,000
//! item benchmark cluster otherwise peaks at over 100 MB in parse trees
//! alone, far more than the zone built from it.

use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{ObjectError, SourceError};
use crate::model::Catalog;
use crate::parse::parse_documents;
use crate::store::Store;

#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

/// The catalog a file declares, with the store's merge rules (a later
/// declaration of the same object wins, slices grouped by Service), and
/// every object skipped.
pub fn load_fixture(path: &Path) -> Result<(Catalog, Vec<ObjectError>), SourceError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::ReadFile { path: path.into(), source })?;
    let (objects, errors) = match serde_json::from_str::<RawList<'_>>(&text) {
        Ok(list) => {
            let mut objects = Vec::with_capacity(list.items.len());
            let mut errors = Vec::new();
            for item in list.items {
                let (o, e) = parse_documents(item.get(), &origin);
                objects.extend(o);
                errors.extend(e);
            }
            (objects, errors)
        }
        // YAML, or JSON that is not a List: the catalog's own parser.
        Err(_) => parse_documents(&text, &origin),
    };
    let mut store = Store::new();
    store.replace_origin(&origin, objects);
    Ok((store.into_catalog(), errors))
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
