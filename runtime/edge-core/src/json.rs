//! JSON merge patches (RFC 7386), as twins use them: `merge` applies a patch, `diff` computes
//! the patch that turns one document into another.

use serde_json::{Map, Value};

/// Applies `patch` to `target` (RFC 7386): objects merge recursively, `null` deletes a
/// member, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        merge_object(t, patch);
    }
}

/// [`merge`] for a target and patch that are known to be objects (twin documents).
pub fn merge_object(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge patch that turns `old` into `new`: `merge(&mut old.clone(), &diff(old, new)) == new`
/// for documents without `null` values (merge patches cannot express a stored `null`).
#[must_use]
pub fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => Value::Object(diff_object(o, n)),
        _ => new.clone(),
    }
}

/// [`diff`] of two objects: members missing from `new` become `null`, changed objects recurse,
/// other changed values are copied; empty when nothing changed. A `null` member of `new` that
/// `old` lacks changes nothing and is left out.
#[must_use]
pub fn diff_object(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, nv) in new {
        match (old.get(k), nv) {
            (Some(ov), _) if ov == nv => {}
            (Some(Value::Object(a)), Value::Object(b)) => {
                out.insert(k.clone(), Value::Object(diff_object(a, b)));
            }
            (None, Value::Null) => {}
            _ => {
                out.insert(k.clone(), nv.clone());
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1]});
        merge(&mut t, &json!({"a": {"b": "c"}}));
        assert_eq!(t, json!({"a": {"b": "c"}}));
        let mut t = json!(["x"]);
        merge(&mut t, &json!({"a": 1}));
        assert_eq!(t, json!({"a": 1}));
    }

    #[test]
    fn diff_then_merge_gives_the_new_document() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "gone": true});
        let new = json!({"a": 1, "b": {"c": 5}, "e": [2], "added": {"x": "y"}});
        let p = diff(&old, &new);
        assert_eq!(
            p,
            json!({"b": {"c": 5, "d": null}, "e": [2], "added": {"x": "y"}, "gone": null})
        );
        let mut t = old.clone();
        merge(&mut t, &p);
        assert_eq!(t, new);
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn rfc7386_appendix_a_vectors() {
        // The test vectors of RFC 7386 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut t = target.clone();
            merge(&mut t, &patch);
            assert_eq!(t, expected, "{target} + {patch}");
        }
    }

    #[test]
    fn diff_then_merge_reaches_the_new_document() {
        let old = obj(json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2], "gone": true}));
        let new =
            obj(json!({"a": 1, "b": {"x": 1, "y": 3, "z": {"deep": 1}}, "c": [2], "d": "new"}));
        let patch = diff_object(&old, &new);
        assert_eq!(
            Value::Object(patch.clone()),
            json!({"gone": null, "b": {"y": 3, "z": {"deep": 1}}, "c": [2], "d": "new"})
        );
        let mut doc = Value::Object(old);
        merge(&mut doc, &Value::Object(patch));
        assert_eq!(doc, Value::Object(new));
    }

    #[test]
    fn diff_of_equal_documents_is_empty() {
        let a = obj(json!({"a": {"b": [1, {"c": 2}]}}));
        assert!(diff_object(&a, &a.clone()).is_empty());
    }

    #[test]
    fn diff_replaces_an_object_by_a_scalar_and_back() {
        let old = obj(json!({"a": {"b": 1}, "s": 1}));
        let new = obj(json!({"a": 5, "s": {"t": 1}}));
        let patch = diff_object(&old, &new);
        let mut doc = Value::Object(old);
        merge(&mut doc, &Value::Object(patch));
        assert_eq!(doc, Value::Object(new));
    }
}
