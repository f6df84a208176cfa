//! Files the agent keeps across restarts of edged: the last good deployment
//! (`last-good.json`, the typed model as JSON) and one identity file per module
//! (`keys/<id>.json`, mode 0600).

use edge_core::ModuleId;
use edge_core::sas::ModuleKey;
use edge_manifest::{
    Deployment, DesiredStatus, ModuleKind, ModuleSpec, ProcessSettings, RestartPolicy, RouteSpec,
    StoreAndForward,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct StoredDeployment {
    schema_version: String,
    hash: String,
    modules: Vec<StoredModule>,
    routes: Vec<StoredRoute>,
    #[serde(with = "humantime_serde")]
    time_to_live: Duration,
    max_size_bytes: Option<u64>,
    twins: BTreeMap<ModuleId, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct StoredModule {
    id: ModuleId,
    version: String,
    kind: StoredKind,
    running: bool,
    restart_policy: String,
    startup_order: u32,
    env: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StoredKind {
    Process {
        path: PathBuf,
        args: Vec<String>,
        working_dir: Option<PathBuf>,
    },
    Unsupported {
        kind: String,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredRoute {
    name: String,
    text: String,
    priority: u8,
    #[serde(with = "humantime_serde")]
    time_to_live: Option<Duration>,
}

fn policy_from_str(s: &str) -> Option<RestartPolicy> {
    [
        RestartPolicy::Never,
        RestartPolicy::OnFailure,
        RestartPolicy::OnUnhealthy,
        RestartPolicy::Always,
    ]
    .into_iter()
    .find(|p| p.as_str() == s)
}

/// The deployment as JSON.
pub(crate) fn deployment_to_json(d: &Deployment) -> serde_json::Result<String> {
    let stored = StoredDeployment {
        schema_version: d.schema_version.clone(),
        hash: d.hash.clone(),
        modules: d
            .modules
            .values()
            .map(|m| StoredModule {
                id: m.id.clone(),
                version: m.version.clone(),
                kind: match &m.kind {
                    ModuleKind::Process(p) => StoredKind::Process {
                        path: p.path.clone(),
                        args: p.args.clone(),
                        working_dir: p.working_dir.clone(),
                    },
                    ModuleKind::Unsupported { kind } => {
                        StoredKind::Unsupported { kind: kind.clone() }
                    }
                },
                running: m.status == DesiredStatus::Running,
                restart_policy: m.restart_policy.as_str().to_owned(),
                startup_order: m.startup_order,
                env: m.env.clone(),
            })
            .collect(),
        routes: d
            .routes
            .iter()
            .map(|r| StoredRoute {
                name: r.name.clone(),
                text: r.text.clone(),
                priority: r.priority,
                time_to_live: r.time_to_live,
            })
            .collect(),
        time_to_live: d.store_and_forward.time_to_live,
        max_size_bytes: d.store_and_forward.max_size_bytes,
        twins: d.twins.clone(),
    };
    serde_json::to_string_pretty(&stored)
}

/// Reads back what [`deployment_to_json`] wrote.
pub(crate) fn deployment_from_json(text: &str) -> Result<Deployment, String> {
    let s: StoredDeployment = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut modules = BTreeMap::new();
    for m in s.modules {
        let restart_policy = policy_from_str(&m.restart_policy)
            .ok_or_else(|| format!("unknown restart policy `{}`", m.restart_policy))?;
        let kind = match m.kind {
            StoredKind::Process {
                path,
                args,
                working_dir,
            } => ModuleKind::Process(ProcessSettings {
                path,
                args,
                working_dir,
            }),
            StoredKind::Unsupported { kind } => ModuleKind::Unsupported { kind },
        };
        modules.insert(
            m.id.clone(),
            ModuleSpec {
                id: m.id,
                version: m.version,
                kind,
                status: if m.running {
                    DesiredStatus::Running
                } else {
                    DesiredStatus::Stopped
                },
                restart_policy,
                startup_order: m.startup_order,
                env: m.env,
            },
        );
    }
    Ok(Deployment {
        schema_version: s.schema_version,
        modules,
        routes: s
            .routes
            .into_iter()
            .map(|r| RouteSpec {
                name: r.name,
                text: r.text,
                priority: r.priority,
                time_to_live: r.time_to_live,
            })
            .collect(),
        store_and_forward: StoreAndForward {
            time_to_live: s.time_to_live,
            max_size_bytes: s.max_size_bytes,
        },
        twins: s.twins,
        hash: s.hash,
    })
}

/// Writes `bytes` to `path` atomically (temp file, sync, rename) with `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A module's persisted identity.
#[derive(Clone)]
pub(crate) struct ModuleIdentity {
    pub(crate) key: ModuleKey,
    pub(crate) generation_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredIdentity {
    key: String,
    generation_id: String,
}

/// The identity file of a module.
pub(crate) fn identity_path(keys_dir: &Path, id: &ModuleId) -> PathBuf {
    keys_dir.join(format!("{id}.json"))
}

/// Loads the module's stored identity, `None` when it has none yet.
pub(crate) fn load_identity(keys_dir: &Path, id: &ModuleId) -> io::Result<Option<ModuleIdentity>> {
    match std::fs::read(identity_path(keys_dir, id)) {
        Ok(bytes) => {
            let stored: StoredIdentity =
                serde_json::from_slice(&bytes).map_err(io::Error::other)?;
            let key = ModuleKey::from_base64(&stored.key).map_err(io::Error::other)?;
            Ok(Some(ModuleIdentity {
                key,
                generation_id: stored.generation_id,
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Loads the module's identity, or makes and stores a new one (mode 0600).
pub(crate) fn load_or_create_identity(
    keys_dir: &Path,
    id: &ModuleId,
) -> io::Result<ModuleIdentity> {
    if let Some(identity) = load_identity(keys_dir, id)? {
        return Ok(identity);
    }
    let path = identity_path(keys_dir, id);
    let random = |what: &str| {
        ModuleKey::generate().map_err(|e| io::Error::other(format!("cannot make a {what}: {e}")))
    };
    let key = random("module key")?;
    let generation_id: String = random("generation id")?
        .expose_base64()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    let stored = StoredIdentity {
        key: key.expose_base64().to_owned(),
        generation_id: generation_id.clone(),
    };
    std::fs::create_dir_all(keys_dir)?;
    let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
    write_atomic(&path, &bytes, 0o600)?;
    Ok(ModuleIdentity { key, generation_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let id = ModuleId::new("m").unwrap();
        let a = load_or_create_identity(dir.path(), &id).unwrap();
        let b = load_or_create_identity(dir.path(), &id).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.generation_id, b.generation_id);
        assert_eq!(a.generation_id.len(), 16);
        let mode = std::fs::metadata(identity_path(dir.path(), &id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = load_or_create_identity(dir.path(), &ModuleId::new("n").unwrap()).unwrap();
        assert_ne!(a.key, other.key);
    }
}
