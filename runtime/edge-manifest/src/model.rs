//! The typed deployment model that the agent, the hub and edgectl consume.

use edge_core::ModuleId;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A validated deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// `$edgeAgent.properties.desired.schemaVersion`.
    pub schema_version: String,
    /// Modules by id (sorted by id; use [`Deployment::start_order`] for the start sequence).
    pub modules: BTreeMap<ModuleId, ModuleSpec>,
    /// `$edgeHub` routes, in name order.
    pub routes: Vec<RouteSpec>,
    /// `$edgeHub.storeAndForwardConfiguration`.
    pub store_and_forward: StoreAndForward,
    /// Desired properties per module (`modulesContent.<module>["properties.desired"]`).
    /// Every module in `modules` has an entry (an empty object when the manifest has none).
    pub twins: BTreeMap<ModuleId, serde_json::Value>,
    /// Hex SHA-256 of the manifest text as given; identifies the deployment in history.
    pub hash: String,
}

impl Deployment {
    /// Module ids in start order: by `startup_order`, then by id.
    #[must_use]
    pub fn start_order(&self) -> Vec<&ModuleId> {
        let mut v: Vec<&ModuleSpec> = self.modules.values().collect();
        v.sort_by(|a, b| (a.startup_order, &a.id).cmp(&(b.startup_order, &b.id)));
        v.into_iter().map(|m| &m.id).collect()
    }
}

/// One module of `$edgeAgent.properties.desired.modules`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// The module id (its key in `modules`).
    pub id: ModuleId,
    /// `version`: free text the operator sets; a change means "update".
    pub version: String,
    /// `type` and `settings`.
    pub kind: ModuleKind,
    /// `status`: running or stopped.
    pub status: DesiredStatus,
    /// `restartPolicy` (Azure's default when absent: `on-unhealthy`).
    pub restart_policy: RestartPolicy,
    /// `startupOrder` (absent = `u32::MAX`, as in Azure).
    pub startup_order: u32,
    /// `env.<NAME>.value`, names validated.
    pub env: BTreeMap<String, String>,
}

/// What kind of module and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleKind {
    /// `type: "process"`: an OS process this runtime spawns.
    Process(ProcessSettings),
    /// A type this runtime cannot run (e.g. `docker`): kept, and reported per module.
    Unsupported {
        /// The `type` as written.
        kind: String,
    },
}

/// `settings` of a `process` module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSettings {
    /// `settings.path`: the binary. A bare name (no `/`) is looked up in the agent's module
    /// path; a relative path with `/` is relative to the manifest's directory.
    pub path: PathBuf,
    /// `settings.args`.
    pub args: Vec<String>,
    /// `settings.workingDir`; the module's data directory when absent.
    pub working_dir: Option<PathBuf>,
}

/// `status` of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DesiredStatus {
    /// `running`.
    Running,
    /// `stopped`.
    Stopped,
}

/// `restartPolicy` of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// `never`.
    Never,
    /// `on-failure`: restart after a non-zero exit or a signal.
    OnFailure,
    /// `on-unhealthy`: as on-failure, and also when its heartbeat stops.
    OnUnhealthy,
    /// `always`: restart after any exit.
    Always,
}

impl RestartPolicy {
    /// The manifest spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnUnhealthy => "on-unhealthy",
            RestartPolicy::Always => "always",
        }
    }
}

/// One route of `$edgeHub.properties.desired.routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The route's name (its key).
    pub name: String,
    /// The route text (`FROM … WHERE … INTO …`), already checked to parse.
    pub text: String,
    /// `priority` 0 (highest) to 9; plain-string routes get 0, as in Azure.
    pub priority: u8,
    /// `timeToLiveSecs`; `None` means the global `store_and_forward.time_to_live`.
    pub time_to_live: Option<Duration>,
}

/// `$edgeHub.properties.desired.storeAndForwardConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreAndForward {
    /// `timeToLiveSecs` (Azure's default 7200 s).
    pub time_to_live: Duration,
    /// `storeLimits.maxSizeBytes`, when set.
    pub max_size_bytes: Option<u64>,
}

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON pointer of the offending value (`/modulesContent/$edgeAgent/properties.desired/modules/x/restartPolicy`).
    pub pointer: String,
    /// 1-based line and column in the text, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, in plain words.
    pub message: String,
}

/// `line:col: pointer: message`; the position is left out when unknown, and the pointer when it
/// is the document root (`""`).
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((l, c)) = self.position {
            write!(f, "{l}:{c}: ")?;
        }
        if !self.pointer.is_empty() {
            write!(f, "{}: ", self.pointer)?;
        }
        f.write_str(&self.message)
    }
}

/// Something accepted but worth telling the operator (an Azure field this runtime ignores,
/// a module type it cannot run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// JSON pointer.
    pub pointer: String,
    /// What it means.
    pub message: String,
}

/// Every problem of a refused manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in {source_name}", problems.len())]
pub struct ManifestError {
    /// Where the text came from (a file path, `upstream`, …).
    pub source_name: String,
    /// The deployment status this refusal maps to (the gravest of all problems).
    pub code: DeploymentCode,
    /// All problems, in document order.
    pub problems: Vec<Problem>,
}

impl ManifestError {
    /// Azure's `lastDesiredStatus.code` for this refusal: 400, 412 or 417.
    #[must_use]
    pub fn status_code(&self) -> u16 {
        self.code.status_code()
    }
}

/// Why a deployment was refused, as Azure's edgeAgent reports it in `lastDesiredStatus`.
///
/// Ordered by gravity: an empty configuration outranks a bad schema version, which outranks
/// any other format problem (Azure checks in that order and reports the first that fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeploymentCode {
    /// 400: the manifest is malformed or invalid.
    ConfigFormatError,
    /// 412: a `schemaVersion` is missing or not supported.
    InvalidSchemaVersion,
    /// 417: no manifest, or no `$edgeAgent` configuration in it.
    ConfigEmptyError,
}

impl DeploymentCode {
    /// The numeric status code (400, 412, 417).
    #[must_use]
    pub fn status_code(self) -> u16 {
        match self {
            DeploymentCode::ConfigFormatError => 400,
            DeploymentCode::InvalidSchemaVersion => 412,
            DeploymentCode::ConfigEmptyError => 417,
        }
    }

    /// Azure's name for the code (`ConfigFormatError`, …).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentCode::ConfigFormatError => "ConfigFormatError",
            DeploymentCode::InvalidSchemaVersion => "InvalidSchemaVersion",
            DeploymentCode::ConfigEmptyError => "ConfigEmptyError",
        }
    }
}
