//! JSON merge patches (RFC 7386): apply one ([`merge`]) and compute one ([`diff`]).
//!
//! Twins use them both ways: a module's reported PATCH is merged into its reported document,
//! and a new deployment's desired document is turned into the patch sent to the module.
//! A merge patch cannot set a member to `null` (null means "delete"), so documents produced
//! by [`merge`] never hold null members at the top of an object that a patch touched.

use serde_json::{Map, Value};

/// Applies `patch` to `target` as RFC 7386 says: an object patch merges member by member
/// (a `null` member deletes, an object member recurses), anything else replaces the target.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(obj) = target {
        merge_object(obj, patch);
    }
}

/// [`merge`] for a target that is known to be an object.
pub fn merge_object(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else if let Some(slot) = target.get_mut(key) {
            merge(slot, value);
        } else {
            let mut fresh = Value::Null;
            merge(&mut fresh, value);
            target.insert(key.clone(), fresh);
        }
    }
}

/// The merge patch that turns object `old` into object `new`: members missing from `new`
/// become `null`, changed objects recurse, other changed values are copied. The result is
/// empty when nothing changed. Members of `new` that are `null` come out as deletions, since
/// a merge patch cannot express a null value.
#[must_use]
pub fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new_value) in new {
        match (old.get(key), new_value) {
            (Some(Value::Object(a)), Value::Object(b)) => {
                let sub = diff(a, b);
                if !sub.is_empty() {
                    patch.insert(key.clone(), Value::Object(sub));
                }
            }
            (Some(old_value), _) if old_value == new_value => {}
            (None, Value::Null) => {}
            _ => {
                patch.insert(key.clone(), new_value.clone());
            }
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn rfc7386_examples() {
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
        let patch = diff(&old, &new);
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
        assert!(diff(&a, &a.clone()).is_empty());
    }

    #[test]
    fn diff_replaces_an_object_by_a_scalar_and_back() {
        let old = obj(json!({"a": {"b": 1}, "s": 1}));
        let new = obj(json!({"a": 5, "s": {"t": 1}}));
        let patch = diff(&old, &new);
        let mut doc = Value::Object(old);
        merge(&mut doc, &Value::Object(patch));
        assert_eq!(doc, Value::Object(new));
    }
}
