//! `labelSelector` and `fieldSelector` query parameters.
//!
//! Label selectors follow "Labels and Selectors"
//! (<https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors>):
//! equality-based (`k=v`, `k==v`, `k!=v`) and set-based (`k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`) requirements, comma meaning AND. As in
//! apimachinery, `k!=v` and `k notin (..)` also match objects without `k`.
//! Field selectors support what every kind supports: `metadata.name` and
//! `metadata.namespace` with `=`, `==`, `!=`.

use crate::object::Obj;
use crate::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    field: Field,
    value: String,
    equal: bool,
}

/// Both selectors of one request; the default selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, ApiError> {
        Ok(Selector {
            labels: match labels {
                Some(text) => parse_labels(text)?,
                None => Vec::new(),
            },
            fields: match fields {
                Some(text) => parse_fields(text)?,
                None => Vec::new(),
            },
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Obj) -> bool {
        self.fields.iter().all(|req| {
            let actual = match req.field {
                Field::Name => &*obj.name,
                Field::Namespace => obj.namespace.as_deref().unwrap_or(""),
            };
            (actual == req.value) == req.equal
        }) && self.labels.iter().all(|req| {
            let label = |key: &str| obj.labels.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v);
            match req {
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
                LabelReq::Equals(k, v) => label(k) == Some(v),
                LabelReq::NotEquals(k, v) => label(k) != Some(v),
                LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
                LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            }
        })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_labels(text: &str) -> Result<Vec<LabelReq>, ApiError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |term: &str| {
        ApiError::bad_request(format!("unable to parse requirement: invalid label selector term {term:?} in {text:?}"))
    };
    let mut reqs = Vec::new();
    for raw in split_terms(text) {
        let term = raw.trim();
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_string())
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::NotEquals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelReq::Equals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, set, negated)) = set_term(term) {
            let values: Vec<String> = set.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().any(|v| !valid_value(v)) {
                return Err(bad(term));
            }
            if negated {
                LabelReq::NotIn(k.to_string(), values)
            } else {
                LabelReq::In(k.to_string(), values)
            }
        } else {
            LabelReq::Exists(term.to_string())
        };
        let (key, value) = match &req {
            LabelReq::Exists(k) | LabelReq::NotExists(k) => (k, None),
            LabelReq::Equals(k, v) | LabelReq::NotEquals(k, v) => (k, Some(v)),
            LabelReq::In(k, _) | LabelReq::NotIn(k, _) => (k, None),
        };
        if !valid_key(key) || value.is_some_and(|v| !valid_value(v)) {
            return Err(bad(term));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

/// `key in (a,b)` / `key notin (a,b)`: the key, the text inside the
/// parentheses, and whether it is `notin`.
fn set_term(term: &str) -> Option<(&str, &str, bool)> {
    let open = term.find('(')?;
    let set = term[open + 1..].strip_suffix(')')?;
    let head = term[..open].trim_end();
    if let Some(key) = head.strip_suffix("notin") {
        Some((key.trim(), set, true))
    } else {
        let key = head.strip_suffix("in")?;
        Some((key.trim(), set, false))
    }
}

fn parse_fields(text: &str) -> Result<Vec<FieldReq>, ApiError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reqs = Vec::new();
    for raw in text.split(',') {
        let term = raw.trim();
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(ApiError::bad_request(format!("invalid selector: '{text}'; can't understand '{term}'")));
        };
        let field = match field.trim() {
            "metadata.name" => Field::Name,
            "metadata.namespace" => Field::Namespace,
            other => return Err(ApiError::bad_request(format!("field label not supported: {other}"))),
        };
        reqs.push(FieldReq { field, value: value.trim().to_string(), equal });
    }
    Ok(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Obj;
    use serde_json::json;

    fn obj(ns: &str, name: &str, labels: serde_json::Value) -> Obj {
        Obj::for_test(ns, name, labels)
    }

    #[test]
    fn label_and_field_selectors() {
        let web = obj("a", "web", json!({"app": "web", "tier": "front"}));
        let db = obj("b", "db", json!({"app": "db"}));
        let bare = obj("a", "bare", json!({}));
        // (labelSelector, fieldSelector, which of [web, db, bare] match)
        let rows: &[(Option<&str>, Option<&str>, [bool; 3])] = &[
            // nothing selects everything
            (None, None, [true, true, true]),
            (Some(""), Some(""), [true, true, true]),
            (Some("app"), None, [true, true, false]),
            (Some("!app"), None, [false, false, true]),
            (Some("app=web"), None, [true, false, false]),
            (Some("app==web"), None, [true, false, false]),
            // != also matches objects without the key
            (Some("app!=web"), None, [false, true, true]),
            // comma is AND
            (Some("app=web,tier=front"), None, [true, false, false]),
            (Some("app=web,tier!=front"), None, [false, false, false]),
            (Some("app in (web,db)"), None, [true, true, false]),
            (Some("app notin (web)"), None, [false, true, true]),
            (Some("app in (web, db),tier"), None, [true, false, false]),
            (None, Some("metadata.name=db"), [false, true, false]),
            (None, Some("metadata.name!=db"), [true, false, true]),
            (None, Some("metadata.namespace==a"), [true, false, true]),
            (Some("app"), Some("metadata.namespace=a"), [true, false, false]),
        ];
        for (labels, fields, want) in rows {
            let sel = Selector::parse(*labels, *fields).unwrap();
            let got = [sel.matches(&web), sel.matches(&db), sel.matches(&bare)];
            assert_eq!(&got, want, "labels {labels:?} fields {fields:?}");
        }
    }

    #[test]
    fn bad_selectors_are_400() {
        for (labels, fields) in [
            (Some("app=web,,x"), None),
            (Some("a b"), None),
            (Some("app in (a b)"), None),
            (None, Some("spec.clusterIP=1.2.3.4")),
            (None, Some("metadata.name")),
        ] {
            let err = Selector::parse(labels, fields).unwrap_err();
            assert_eq!(err.code, 400, "{labels:?} {fields:?}");
        }
    }
}
