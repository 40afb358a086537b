//! Text -> objects: YAML streams (several `---` documents), JSON, and
//! `kind: List` documents as `kubectl get -o yaml|json` prints them. Each
//! document becomes a `serde_json::Value` first, so the kind and name are
//! known (and reported) even when the object does not fit its schema.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::debug;

use crate::convert::{self, Object};
use crate::error::{ConvertError, ObjectError};
use crate::model::ObjectKey;

/// The text format of a file. JSON is parsed with serde_json: a 21,000-item
/// `List` loads in tens of milliseconds where a YAML parser takes seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// By extension: `.json` is JSON, `.yaml`/`.yml` YAML, anything else is not
    /// a catalog file.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }

    /// For text of unknown origin: JSON if it starts like a JSON object or
    /// array (JSON is also YAML, but the JSON parser is much faster).
    pub fn sniff(text: &str) -> Format {
        match text.trim_start().as_bytes().first() {
            Some(b'{') | Some(b'[') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Parse every document of `text` (format sniffed). `origin` names the text in
/// errors (a file path). Objects that are invalid are reported and skipped;
/// other kinds (Namespace, Pod, ConfigMap...) are ignored.
pub fn parse_documents(text: &str, origin: &str) -> (Vec<Object>, Vec<ObjectError>) {
    match parse_text(text, Format::sniff(text), origin) {
        Ok(parsed) => parsed,
        Err(e) => (Vec::new(), vec![e]),
    }
}

/// Like [`parse_documents`] with a known format, but a syntax error (the text
/// is not YAML/JSON at all) is an `Err`: the directory source keeps a file's
/// previous objects in that case instead of dropping them.
#[expect(clippy::result_large_err, reason = "one error per file, off any hot path; boxing only adds noise")]
pub fn parse_text(text: &str, format: Format, origin: &str) -> Result<(Vec<Object>, Vec<ObjectError>), ObjectError> {
    let syntax = |msg: String| ObjectError {
        origin: origin.to_string(),
        kind: "document".into(),
        key: None,
        error: ConvertError::Syntax(msg),
    };
    let mut out = Collected { origin, objects: Vec::new(), errors: Vec::new() };
    match format {
        Format::Json => {
            // Syntax first, over the whole text, so a truncated file is one
            // file-level error rather than some objects and a tail error. A
            // JSON file may hold several concatenated values.
            let mut docs = Vec::new();
            for v in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
                docs.push(v.map_err(|e| syntax(e.to_string()))?);
            }
            for raw in docs {
                out.doc(RawDoc::new(raw), 0);
            }
        }
        Format::Yaml => {
            let mut docs = Vec::new();
            for doc in serde_yaml::Deserializer::from_str(text) {
                docs.push(Value::deserialize(doc).map_err(|e| syntax(e.to_string()))?);
            }
            for doc in docs {
                out.doc(doc, 0);
            }
        }
    }
    Ok((out.objects, out.errors))
}

/// One parsed document, whichever parser produced it: its kind and name are
/// readable without knowing its type, and it can be read as its type.
trait Doc: Sized {
    fn is_null(&self) -> bool;
    /// Why the document could not even be dispatched (its kind or name has
    /// the wrong type), if so.
    fn broken(&mut self) -> Option<ConvertError> {
        None
    }
    fn kind(&self) -> &str;
    /// Best-effort `namespace/name`, for error messages.
    fn key(&self) -> Option<ObjectKey>;
    /// The `items` of a List (`None` when absent or null).
    fn into_items(self) -> Result<Option<Vec<Self>>, ConvertError>;
    /// The document as its k8s-openapi type, naming the offending field on
    /// failure.
    fn typed<T: DeserializeOwned>(&self) -> Result<T, ConvertError>;
}

fn schema_error<E: Into<serde_json::Error>>(e: serde_path_to_error::Error<E>) -> ConvertError {
    ConvertError::Schema { field: e.path().to_string(), source: e.into_inner().into() }
}

/// YAML documents go through a `serde_json::Value` (YAML files are small).
impl Doc for Value {
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
    fn kind(&self) -> &str {
        self.get("kind").and_then(Value::as_str).unwrap_or_default()
    }
    fn key(&self) -> Option<ObjectKey> {
        let meta = self.get("metadata")?;
        let name = meta.get("name")?.as_str()?;
        let ns = meta.get("namespace").and_then(Value::as_str);
        Some(key_from(name, ns))
    }
    fn into_items(self) -> Result<Option<Vec<Self>>, ConvertError> {
        let Value::Object(mut map) = self else {
            return Ok(None);
        };
        match map.remove("items") {
            Some(Value::Array(items)) => Ok(Some(items)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(ConvertError::invalid("items", "must be a list")),
        }
    }
    fn typed<T: DeserializeOwned>(&self) -> Result<T, ConvertError> {
        serde_path_to_error::deserialize(self).map_err(schema_error)
    }
}

/// JSON documents stay unparsed text until their kind is known: no
/// `Value` tree is built, which makes the 21,000-item benchmark List load
/// about twice as fast and keeps its peak memory near the file's size.
struct RawDoc<'a> {
    raw: &'a RawValue,
    head: Head<'a>,
    broken: Option<ConvertError>,
}

/// The part of any document needed to dispatch it.
#[derive(Deserialize, Default)]
struct Head<'a> {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

impl<'a> RawDoc<'a> {
    fn new(raw: &'a RawValue) -> Self {
        if raw.get() == "null" {
            return Self { raw, head: Head::default(), broken: None };
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        match serde_path_to_error::deserialize(&mut de) {
            Ok(head) => Self { raw, head, broken: None },
            Err(e) => Self { raw, head: Head::default(), broken: Some(schema_error(e)) },
        }
    }
}

impl Doc for RawDoc<'_> {
    fn is_null(&self) -> bool {
        self.raw.get() == "null"
    }
    fn broken(&mut self) -> Option<ConvertError> {
        self.broken.take()
    }
    fn kind(&self) -> &str {
        self.head.kind.as_deref().unwrap_or_default()
    }
    fn key(&self) -> Option<ObjectKey> {
        let meta = self.head.metadata.as_ref()?;
        Some(key_from(meta.name.as_deref()?, meta.namespace.as_deref()))
    }
    fn into_items(self) -> Result<Option<Vec<Self>>, ConvertError> {
        Ok(self.head.items.map(|items| items.into_iter().map(RawDoc::new).collect()))
    }
    fn typed<T: DeserializeOwned>(&self) -> Result<T, ConvertError> {
        let mut de = serde_json::Deserializer::from_str(self.raw.get());
        serde_path_to_error::deserialize(&mut de).map_err(schema_error)
    }
}

fn key_from(name: &str, namespace: Option<&str>) -> ObjectKey {
    ObjectKey::interned(namespace.filter(|s| !s.is_empty()).unwrap_or("default"), name)
}

struct Collected<'o> {
    origin: &'o str,
    objects: Vec<Object>,
    errors: Vec<ObjectError>,
}

impl Collected<'_> {
    fn error(&mut self, kind: &str, key: Option<ObjectKey>, error: ConvertError) {
        let kind = if kind.is_empty() { "document" } else { kind };
        self.errors.push(ObjectError { origin: self.origin.to_string(), kind: kind.to_string(), key, error });
    }

    fn doc<D: Doc>(&mut self, mut doc: D, depth: u8) {
        // An empty document (`---` at the end of a file) is nothing.
        if doc.is_null() {
            return;
        }
        if let Some(e) = doc.broken() {
            return self.error("document", None, e);
        }
        let kind = doc.kind().to_string();
        let result = match kind.as_str() {
            // `kubectl get -o yaml` wraps objects in a List (kind `List` or
            // `<Kind>List`); Lists do not nest in practice, one level is enough.
            k if (k == "List" || k.ends_with("List")) && depth == 0 => {
                let key = doc.key();
                match doc.into_items() {
                    Ok(items) => {
                        for item in items.into_iter().flatten() {
                            self.doc(item, depth + 1);
                        }
                    }
                    Err(e) => self.error(&kind, key, e),
                }
                return;
            }
            "Service" => doc.typed().and_then(|o| convert::service(&o)).map(Object::from),
            "EndpointSlice" => doc.typed().and_then(|o| convert::endpoint_slice(&o)).map(Object::from),
            "Node" => doc.typed().and_then(|o| convert::node(&o)).map(Object::Node),
            "" => Err(ConvertError::Missing { field: "kind".into() }),
            other => {
                debug!(origin = self.origin, kind = other, "ignoring object of a kind the catalog does not hold");
                return;
            }
        };
        match result {
            Ok(obj) => self.objects.push(obj),
            Err(e) => self.error(&kind, doc.key(), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceType;

    fn names(objs: &[Object]) -> Vec<String> {
        objs.iter().map(|o| o.id().to_string()).collect()
    }

    const SVC_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}";

    #[test]
    fn yaml_stream_with_several_documents_and_other_kinds() {
        let text = format!(
            "---\n{SVC_A}\n---\n# a comment-only document\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ignored}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a-1, namespace: x, labels: {{kubernetes.io/service-name: a}}}}\n\
             addressType: IPv4\nports: [{{name: '', port: 80, protocol: TCP}}]\nendpoints: [{{addresses: [10.0.0.1]}}]\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n---\n"
        );
        let (objs, errs) = parse_documents(&text, "f.yaml");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(names(&objs), ["Service x/a", "EndpointSlice x/a-1", "Node n1"]);
    }

    #[test]
    fn kubectl_list_yaml() {
        // As `kubectl get svc,endpointslices -o yaml` prints it.
        let text = "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: \"\"}\nitems:\n\
                    - apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: x, uid: \"1234\"}\n  spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1], ports: [{port: 80, protocol: TCP, targetPort: 8080}], type: ClusterIP}\n  status: {loadBalancer: {}}\n\
                    - apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: x}\n  spec: {clusterIP: None}\n";
        let (objs, errs) = parse_documents(text, "list.yaml");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(names(&objs), ["Service x/a", "Service x/b"]);
    }

    #[test]
    fn typed_list_and_json() {
        // `kubectl get svc -o json` prints a List; ServiceList from the API.
        let json = r#"{"apiVersion":"v1","kind":"ServiceList","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"x"},"spec":{"type":"ExternalName","externalName":"db.example.com"}}]}
            {"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}"#;
        let (objs, errs) = parse_documents(json, "list.json");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(names(&objs), ["Service x/a", "Node n2"]);
        let Object::Service(s) = &objs[0] else { panic!() };
        assert_eq!(s.service_type, ServiceType::ExternalName);
    }

    #[test]
    fn bad_object_is_reported_and_skipped_others_load() {
        let text = format!(
            "{SVC_A}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken, namespace: x}}\nspec: {{clusterIP: 10.96.0.999}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: typed-wrong, namespace: x}}\nspec: {{ports: [{{port: eighty}}]}}\n---\n\
             metadata: {{name: kindless}}\n---\n\
             apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {{name: old}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: c, namespace: x}}\n"
        );
        let (objs, errs) = parse_documents(&text, "mixed.yaml");
        assert_eq!(names(&objs), ["Service x/a", "Service x/c"]);
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        // Each error names the file, the kind, the object and the field.
        assert!(msgs[0].starts_with("mixed.yaml: Service x/broken: spec.clusterIP[0]"), "{}", msgs[0]);
        assert!(
            msgs[1].starts_with("mixed.yaml: Service x/typed-wrong: spec.ports[0].port: does not match the schema"),
            "{}",
            msgs[1]
        );
        assert!(msgs[2].contains("document default/kindless: kind: required"), "{}", msgs[2]);
        assert!(msgs[3].contains("EndpointSlice default/old"), "{}", msgs[3]);
        assert!(errs.iter().all(|e| !e.is_syntax()));
    }

    #[test]
    fn bad_json_object_names_its_field() {
        let json = r#"{"kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"ok","namespace":"x"}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad","namespace":"x"},"spec":{"ports":[{"port":"eighty"}]}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":7}},
            null]}"#;
        let (objs, errs) = parse_documents(json, "l.json");
        assert_eq!(names(&objs), ["Service x/ok"]);
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("l.json: Service x/bad: spec.ports[0].port: does not match the schema"),
            "{}",
            msgs[0]
        );
        assert!(msgs[1].contains("metadata.name"), "{}", msgs[1]);
    }

    #[test]
    fn syntax_error_is_one_file_error() {
        for (text, format) in
            [("kind: Service\n  bad: [indent", Format::Yaml), ("{\"kind\": \"Service\",", Format::Json)]
        {
            let err = parse_text(text, format, "broken").unwrap_err();
            assert!(err.is_syntax(), "{err}");
            assert!(err.to_string().starts_with("broken: document"), "{err}");
        }
        // parse_documents reports it like any other error.
        let (objs, errs) = parse_documents("{", "x");
        assert!(objs.is_empty() && errs.len() == 1);
    }

    #[test]
    fn empty_text_is_no_objects() {
        for text in ["", "\n", "---\n", "# only a comment\n"] {
            let (objs, errs) = parse_documents(text, "empty.yaml");
            assert!(objs.is_empty() && errs.is_empty(), "{text:?}");
        }
    }
}
