//! PATCH bodies: JSON merge patch, and strategic merge patch as far as a
//! server without the types' schemas can follow it.
//!
//! A strategic merge patch
//! (<https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md>)
//! merges lists of objects by a per-field merge key the server knows from
//! the Go types. This server does not know them, but the patches kubectl
//! sends carry `$setElementOrder/<field>`: every element's merge key in the
//! final order. With it, a list is rebuilt element by element (patch
//! element merged onto the stored one with the same key values, `$patch:
//! delete` elements dropped); without it, the patch's list replaces the
//! stored one. `$deleteFromPrimitiveList/<field>` and `$patch: replace`
//! are followed; `$retainKeys` is ignored.

use serde_json::{Map, Value};

/// JSON merge patch (RFC 7386 section 2).
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = as_object(target);
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn as_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("made an object")
}

/// The patch without its `$` directives, for values stored as given.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), without_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Strategic merge patch, as described in the module comment.
pub(crate) fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = without_directives(&Value::Object(patch.clone()));
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    let target = as_object(target);
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Array(items) => {
                let order = patch.get(&format!("$setElementOrder/{k}")).and_then(Value::as_array);
                let stored = target.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                target.insert(k.clone(), Value::Array(merge_list(&stored, items, order)));
            }
            Value::Object(_) => {
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                strategic(slot, v);
                if slot.is_null() {
                    target.remove(k);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    for (k, v) in patch {
        if let (Some(field), Some(gone)) = (k.strip_prefix("$deleteFromPrimitiveList/"), v.as_array()) {
            if let Some(Value::Array(items)) = target.get_mut(field) {
                items.retain(|i| !gone.contains(i));
            }
        }
    }
}

/// Does `item` carry every (non-directive) field of `key` with its value?
fn matches_key(item: &Value, key: &Value) -> bool {
    match (item, key) {
        (Value::Object(item), Value::Object(key)) => {
            key.iter().filter(|(k, _)| !k.starts_with('$')).all(|(k, v)| item.get(k) == Some(v))
        }
        (item, key) => item == key,
    }
}

fn merge_list(stored: &[Value], patch: &[Value], order: Option<&Vec<Value>>) -> Vec<Value> {
    let Some(order) = order else {
        return without_directives(&Value::Array(patch.to_vec())).as_array().cloned().unwrap_or_default();
    };
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let patched = patch.iter().find(|p| matches_key(p, key));
        if patched.is_some_and(|p| p.get("$patch").and_then(Value::as_str) == Some("delete")) {
            continue;
        }
        let existing = stored.iter().find(|s| matches_key(s, key));
        match (existing, patched) {
            (Some(e), Some(p)) => {
                let mut merged = e.clone();
                strategic(&mut merged, p);
                out.push(merged);
            }
            (None, Some(p)) => out.push(without_directives(p)),
            (Some(e), None) => out.push(e.clone()),
            (None, None) => out.push(key.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge(&mut doc, &json!({"a": null, "b": {"c": 9}, "l": [3], "n": "x"}));
        assert_eq!(doc, json!({"b": {"c": 9, "d": 3}, "l": [3], "n": "x"}));
    }

    #[test]
    fn strategic_patches_as_kubectl_sends_them() {
        let stored = json!({"spec": {
            "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
            "selector": {"app": "web"},
            "ips": ["a", "b", "c"],
        }});
        // (what, patch, the resulting spec)
        let rows = [
            (
                "change one port, keep the other (kubectl apply)",
                json!({"spec": {
                    "$setElementOrder/ports": [{"port": 8080}, {"port": 443}],
                    "ports": [{"port": 8080, "name": "http"}, {"$patch": "delete", "port": 80}],
                }}),
                json!({"ports": [{"port": 8080, "name": "http"}, {"port": 443, "name": "https"}],
                       "selector": {"app": "web"}, "ips": ["a", "b", "c"]}),
            ),
            (
                "merge into an element by its key",
                json!({"spec": {
                    "$setElementOrder/ports": [{"port": 80}, {"port": 443}],
                    "ports": [{"port": 80, "protocol": "TCP"}],
                }}),
                json!({"ports": [{"port": 80, "name": "http", "protocol": "TCP"}, {"port": 443, "name": "https"}],
                       "selector": {"app": "web"}, "ips": ["a", "b", "c"]}),
            ),
            (
                "no element order: the list is replaced, directives dropped",
                json!({"spec": {"ports": [{"port": 1}, {"$patch": "delete", "port": 80}]}}),
                json!({"ports": [{"port": 1}], "selector": {"app": "web"}, "ips": ["a", "b", "c"]}),
            ),
            (
                "maps merge; null removes; primitive list deletions",
                json!({"spec": {"selector": {"tier": "front", "app": null}, "$deleteFromPrimitiveList/ips": ["b"]}}),
                json!({"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
                       "selector": {"tier": "front"}, "ips": ["a", "c"]}),
            ),
            (
                "$patch: replace",
                json!({"spec": {"selector": {"$patch": "replace", "x": "y"}}}),
                json!({"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
                       "selector": {"x": "y"}, "ips": ["a", "b", "c"]}),
            ),
        ];
        for (what, patch, want) in rows {
            let mut doc = stored.clone();
            strategic(&mut doc, &patch);
            assert_eq!(doc["spec"], want, "{what}");
        }
    }
}
