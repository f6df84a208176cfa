//! Module twins: desired and reported JSON documents with versions, kept durably.
//!
//! Each twin lives in `data_dir/twins/<id>.json` (`{"desired", "desiredVersion", "reported",
//! "reportedVersion"}`), written as a temporary file, fsynced, renamed over the old one and
//! the directory fsynced, so a crash leaves either the old or the new twin, never a torn one.
//! Writes are small and rare (a deployment, a reported patch) and happen synchronously while
//! the twin map is locked, so two updates of one twin can never be persisted out of order.
//!
//! # Invariants
//! - A version only ever grows; it moves by exactly one per accepted change.
//! - The in-memory twin equals the file on disk after every successful update; on a failed
//!   write the in-memory twin is left unchanged.
//! - Documents never hold a top-level `$version`; it is added when the twin is shown.

use edge_core::json::{diff_object as diff, merge_object};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// One twin as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Twin {
    desired: Map<String, Value>,
    desired_version: u64,
    reported: Map<String, Value>,
    reported_version: u64,
}

impl Default for Twin {
    fn default() -> Self {
        Self {
            desired: Map::new(),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
        }
    }
}

impl Twin {
    /// `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`, the shape IoT
    /// Hub answers a twin GET with.
    pub(crate) fn to_json(&self) -> Value {
        let mut desired = self.desired.clone();
        desired.insert("$version".into(), self.desired_version.into());
        let mut reported = self.reported.clone();
        reported.insert("$version".into(), self.reported_version.into());
        let mut doc = Map::new();
        doc.insert("desired".into(), Value::Object(desired));
        doc.insert("reported".into(), Value::Object(reported));
        Value::Object(doc)
    }
}

/// Why a twin update was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TwinError {
    /// The patch is not a JSON object.
    #[error("patch is not a JSON object")]
    NotObject,
    /// Writing the twin file failed.
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A desired change to send to a connected module.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredChange {
    /// The new desired version.
    pub version: u64,
    /// The merge patch from the old desired document to the new one, with `$version` inside.
    pub patch: Value,
}

/// All twins, in memory and on disk.
#[derive(Debug)]
pub(crate) struct Twins {
    dir: PathBuf,
    map: Mutex<BTreeMap<String, Twin>>,
}

impl Twins {
    /// Loads every twin file of `dir` (creating the directory). A file that does not parse is
    /// logged and skipped: the twin starts afresh rather than keeping the hub down.
    pub(crate) fn load(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut map = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let text = fs::read(entry.path())?;
            match serde_json::from_slice::<Twin>(&text) {
                Ok(twin) => {
                    map.insert(id.to_owned(), twin);
                }
                Err(error) => {
                    tracing::error!(twin = %id, %error, "Twin file does not parse; starting this twin afresh.");
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            map: Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Twin>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The twin of `id` as JSON, if it exists.
    pub(crate) fn get(&self, id: &str) -> Option<Value> {
        self.lock().get(id).map(Twin::to_json)
    }

    /// The twin of `id` as JSON; a module without a twin gets an empty one (version 1), which
    /// is not persisted until something changes.
    pub(crate) fn get_or_default(&self, id: &str) -> Value {
        self.lock().get(id).cloned().unwrap_or_default().to_json()
    }

    /// Merges `patch` into the reported document of `id` and returns the new reported version.
    /// A top-level `$version` in the patch is ignored.
    pub(crate) fn patch_reported(&self, id: &str, patch: &Value) -> Result<u64, TwinError> {
        let Value::Object(patch) = patch else {
            return Err(TwinError::NotObject);
        };
        let mut patch = patch.clone();
        patch.remove("$version");
        let mut map = self.lock();
        let mut twin = map.get(id).cloned().unwrap_or_default();
        merge_object(&mut twin.reported, &patch);
        twin.reported_version += 1;
        self.persist(id, &twin)?;
        let version = twin.reported_version;
        map.insert(id.to_owned(), twin);
        Ok(version)
    }

    /// Replaces the desired document of `id` by `new` (top-level `$`-keys dropped). Returns the
    /// change to send, or `None` when the document did not change.
    pub(crate) fn set_desired(
        &self,
        id: &str,
        new: &Map<String, Value>,
    ) -> Result<Option<DesiredChange>, TwinError> {
        let mut map = self.lock();
        self.replace_desired(&mut map, id, new.clone())
    }

    /// Merges `patch` (a JSON merge patch; top-level `$`-keys dropped) into the desired
    /// document of `id`, as one step under the lock. Returns the change to send, or `None`
    /// when nothing changed.
    pub(crate) fn patch_desired(
        &self,
        id: &str,
        patch: &Value,
    ) -> Result<Option<DesiredChange>, TwinError> {
        let Value::Object(patch) = patch else {
            return Err(TwinError::NotObject);
        };
        let mut map = self.lock();
        let mut next = map.get(id).map(|t| t.desired.clone()).unwrap_or_default();
        let mut patch = patch.clone();
        patch.retain(|k, _| !k.starts_with('$'));
        merge_object(&mut next, &patch);
        self.replace_desired(&mut map, id, next)
    }

    fn replace_desired(
        &self,
        map: &mut BTreeMap<String, Twin>,
        id: &str,
        mut new: Map<String, Value>,
    ) -> Result<Option<DesiredChange>, TwinError> {
        new.retain(|k, _| !k.starts_with('$'));
        let existing = map.get(id).cloned();
        let mut twin = existing.clone().unwrap_or_default();
        let patch = diff(&twin.desired, &new);
        if patch.is_empty() && existing.is_some() {
            return Ok(None);
        }
        merge_object(&mut twin.desired, &patch);
        if !patch.is_empty() {
            twin.desired_version += 1;
        }
        self.persist(id, &twin)?;
        let version = twin.desired_version;
        map.insert(id.to_owned(), twin);
        if patch.is_empty() {
            return Ok(None);
        }
        let mut body = patch;
        body.insert("$version".into(), version.into());
        Ok(Some(DesiredChange {
            version,
            patch: Value::Object(body),
        }))
    }

    /// Writes a twin durably: temporary file, fsync, rename, fsync of the directory.
    fn persist(&self, id: &str, twin: &Twin) -> Result<(), TwinError> {
        let path = self.dir.join(format!("{id}.json"));
        let tmp = self.dir.join(format!("{id}.json.tmp"));
        let io_err = |source| TwinError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(twin).map_err(|e| io_err(io::Error::other(e)))?;
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(&text).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(())
    }
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
    fn reported_patches_bump_the_version_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::load(dir.path()).unwrap();
        assert_eq!(twins.get("m"), None);
        assert_eq!(
            twins.get_or_default("m"),
            json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
        );
        assert_eq!(
            twins
                .patch_reported("m", &json!({"a": 1, "b": {"c": 2}}))
                .unwrap(),
            2
        );
        assert_eq!(
            twins
                .patch_reported("m", &json!({"b": {"c": null}, "$version": 9}))
                .unwrap(),
            3
        );
        assert!(matches!(
            twins.patch_reported("m", &json!([1])),
            Err(TwinError::NotObject)
        ));
        let expected =
            json!({"desired": {"$version": 1}, "reported": {"a": 1, "b": {}, "$version": 3}});
        assert_eq!(twins.get("m"), Some(expected.clone()));
        let again = Twins::load(dir.path()).unwrap();
        assert_eq!(again.get("m"), Some(expected));
    }

    #[test]
    fn desired_changes_produce_patches_with_version_inside() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::load(dir.path()).unwrap();
        let first = twins
            .set_desired("m", &obj(json!({"w": 10, "x": {"y": 1}})))
            .unwrap()
            .unwrap();
        assert_eq!(first.version, 2);
        assert_eq!(first.patch, json!({"w": 10, "x": {"y": 1}, "$version": 2}));
        assert_eq!(
            twins
                .set_desired("m", &obj(json!({"w": 10, "x": {"y": 1}})))
                .unwrap(),
            None
        );
        let second = twins
            .set_desired("m", &obj(json!({"x": {"y": 2}, "$version": 77})))
            .unwrap()
            .unwrap();
        assert_eq!(
            second.patch,
            json!({"w": null, "x": {"y": 2}, "$version": 3})
        );
        assert_eq!(
            twins.get("m").unwrap()["desired"],
            json!({"x": {"y": 2}, "$version": 3})
        );
    }

    #[test]
    fn an_empty_desired_document_creates_the_twin_without_a_patch() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::load(dir.path()).unwrap();
        assert_eq!(twins.set_desired("m", &Map::new()).unwrap(), None);
        assert!(twins.get("m").is_some());
        assert!(dir.path().join("m.json").exists());
    }

    #[test]
    fn desired_patches_merge_into_the_document_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::load(dir.path()).unwrap();
        twins
            .set_desired("m", &obj(json!({"keep": 1, "x": {"y": 1, "z": 2}})))
            .unwrap();
        let change = twins
            .patch_desired("m", &json!({"x": {"y": null, "n": 3}, "$version": 99}))
            .unwrap()
            .unwrap();
        assert_eq!(change.version, 3);
        assert_eq!(
            change.patch,
            json!({"x": {"y": null, "n": 3}, "$version": 3})
        );
        let expected = json!({"keep": 1, "x": {"z": 2, "n": 3}, "$version": 3});
        assert_eq!(twins.get("m").unwrap()["desired"], expected);
        assert_eq!(twins.patch_desired("m", &json!({"keep": 1})).unwrap(), None);
        assert!(matches!(
            twins.patch_desired("m", &json!([1])),
            Err(TwinError::NotObject)
        ));
        let again = Twins::load(dir.path()).unwrap();
        assert_eq!(again.get("m").unwrap()["desired"], expected);
    }
}
