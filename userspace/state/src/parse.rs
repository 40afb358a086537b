//! Text -> objects: YAML streams (several `---` documents), JSON, and
//! `kind: List` documents as `kubectl get -o yaml|json` prints them. Each
//! document becomes a `serde_json::Value` first, so the kind and name are
//! known (and reported) even when the object does not fit its schema.

use serde::Deserialize;
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
pub fn parse_text(text: &str, format: Format, origin: &str) -> Result<(Vec<Object>, Vec<ObjectError>), ObjectError> {
    let syntax = |msg: String| ObjectError {
        origin: origin.to_string(),
        kind: "document".into(),
        key: None,
        error: ConvertError::Syntax(msg),
    };
    let mut docs = Vec::new();
    match format {
        Format::Json => {
            // A JSON file may also hold several concatenated values.
            for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
                docs.push(v.map_err(|e| syntax(e.to_string()))?);
            }
        }
        Format::Yaml => {
            for doc in serde_yaml::Deserializer::from_str(text) {
                docs.push(Value::deserialize(doc).map_err(|e| syntax(e.to_string()))?);
            }
        }
    }
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for doc in docs {
        collect(doc, origin, 0, &mut objects, &mut errors);
    }
    Ok((objects, errors))
}

fn collect(doc: Value, origin: &str, depth: u8, objects: &mut Vec<Object>, errors: &mut Vec<ObjectError>) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let err = |error: ConvertError, doc: &Value| ObjectError {
        origin: origin.to_string(),
        kind: if kind.is_empty() { "document".into() } else { kind.clone() },
        key: key_of(doc),
        error,
    };
    let result = match kind.as_str() {
        // An empty document (`---` at the end of a file) is nothing.
        _ if doc.is_null() => return,
        // `kubectl get -o yaml` wraps objects in a List (kind `List` or
        // `<Kind>List`); Lists do not nest in practice, one level is enough.
        k if (k == "List" || k.ends_with("List")) && depth == 0 => {
            let Value::Object(mut map) = doc else { return };
            match map.remove("items") {
                Some(Value::Array(items)) => {
                    for item in items {
                        collect(item, origin, depth + 1, objects, errors);
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => errors.push(err(ConvertError::invalid("items", "must be a list"), &Value::Null)),
            }
            return;
        }
        "Service" => serde_json::from_value(doc.clone())
            .map_err(ConvertError::Schema)
            .and_then(|s| convert::service(&s))
            .map(Object::Service),
        "EndpointSlice" => serde_json::from_value(doc.clone())
            .map_err(ConvertError::Schema)
            .and_then(|s| convert::endpoint_slice(&s))
            .map(Object::EndpointSlice),
        "Node" => serde_json::from_value(doc.clone())
            .map_err(ConvertError::Schema)
            .and_then(|n| convert::node(&n))
            .map(Object::Node),
        "" => Err(ConvertError::Missing { field: "kind".into() }),
        other => {
            debug!(origin, kind = other, "ignoring object of a kind the catalog does not hold");
            return;
        }
    };
    match result {
        Ok(obj) => objects.push(obj),
        Err(e) => errors.push(err(e, &doc)),
    }
}

/// Best-effort `namespace/name` of a raw document, for error messages.
fn key_of(doc: &Value) -> Option<ObjectKey> {
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("default");
    Some(ObjectKey::new(ns, name))
}
