//! Parsing and validation: walks the `serde_json::Value` by hand so that every problem is
//! found (not just the first) and carries the JSON pointer of the value it is about.

use crate::locate::{child, duplicate_keys, locate};
use crate::{
    Deployment, DeploymentCode, DesiredStatus, ManifestError, ModuleKind, ModuleSpec, Notice,
    Problem, ProcessSettings, RestartPolicy, RouteSpec, StoreAndForward,
};
use edge_core::ModuleId;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Azure's store-and-forward time to live when the manifest sets none.
pub const DEFAULT_STORE_TTL: Duration = Duration::from_secs(7200);

const AGENT: &str = "$edgeAgent";
const HUB: &str = "$edgeHub";
const DESIRED: &str = "properties.desired";

/// `$edgeAgent` schema versions: major 1, minor 0 to 1.
const AGENT_MINOR_MAX: u64 = 1;
/// `$edgeHub` schema versions: major 1, minor 0 to 3.
const HUB_MINOR_MAX: u64 = 3;

/// Twin metadata IoT Hub adds to every `properties.desired`; accepted silently.
const TWIN_METADATA: &[&str] = &["$version", "$metadata"];

/// Fields of a module under `$edgeAgent…modules.<id>` this runtime uses.
const MODULE_FIELDS: &[&str] = &[
    "version",
    "type",
    "status",
    "restartPolicy",
    "startupOrder",
    "settings",
    "env",
];
const MODULE_IGNORED: &[(&str, &str)] =
    &[("imagePullPolicy", "this runtime runs processes, not images")];
const PROCESS_SETTINGS_FIELDS: &[&str] = &["path", "args", "workingDir"];
const PROCESS_SETTINGS_IGNORED: &[(&str, &str)] = &[
    ("image", "process modules run `settings.path`"),
    (
        "createOptions",
        "docker create options do not apply to processes",
    ),
];
const AGENT_FIELDS: &[&str] = &["schemaVersion", "modules"];
const AGENT_IGNORED: &[(&str, &str)] = &[
    (
        "runtime",
        "it configures the docker runtime, which this runtime does not use",
    ),
    (
        "systemModules",
        "edgeAgent and edgeHub are built into edged",
    ),
];
const RUNTIME_FIELDS: &[&str] = &["type", "settings"];
const HUB_FIELDS: &[&str] = &["schemaVersion", "routes", "storeAndForwardConfiguration"];
const HUB_IGNORED: &[(&str, &str)] = &[
    (
        "mqttBroker",
        "edged's broker is configured in edged's own config",
    ),
    ("integrity", "signed deployments are not supported"),
];
const ROUTE_FIELDS: &[&str] = &["route", "priority", "timeToLiveSecs"];
const STORE_FIELDS: &[&str] = &["timeToLiveSecs", "storeLimits"];
const STORE_LIMITS_FIELDS: &[&str] = &["maxSizeBytes"];
const ENV_FIELDS: &[&str] = &["value"];
const SECTION_FIELDS: &[&str] = &[DESIRED];
/// Keys of an `az iot edge deployment` file around `content.modulesContent`.
const DEPLOYMENT_META: &[&str] = &[
    "id",
    "labels",
    "targetCondition",
    "priority",
    "metrics",
    "etag",
    "createdTimeUtc",
    "lastUpdatedTimeUtc",
    "systemMetrics",
    "$schema-template",
];

const STATUSES: &[(&str, DesiredStatus)] = &[
    ("running", DesiredStatus::Running),
    ("stopped", DesiredStatus::Stopped),
];
const RESTART_POLICIES: &[(&str, RestartPolicy)] = &[
    ("never", RestartPolicy::Never),
    ("on-failure", RestartPolicy::OnFailure),
    ("on-unhealthy", RestartPolicy::OnUnhealthy),
    ("always", RestartPolicy::Always),
];

/// Parses and validates manifest text. `source_name` names it in errors. A leading byte-order
/// mark is skipped (positions count from after it); the hash covers the text as given.
///
/// Every problem is reported at once, in document order, each with its JSON pointer and
/// position. Azure fields this runtime does not use, and modules of a type it cannot run, are
/// accepted and listed in the returned [`Notice`]s (also in document order), as are modules
/// that share a `startupOrder` (Azure allows that; they start in id order here).
///
/// # Errors
/// [`ManifestError`] with every problem found; its [`ManifestError::status_code`] is 417 for an
/// empty manifest (no text, no `modulesContent` or no `$edgeAgent`), 412 for a missing or
/// unsupported `schemaVersion`, and 400 otherwise.
pub fn parse(text: &str, source_name: &str) -> Result<(Deployment, Vec<Notice>), ManifestError> {
    let mut cx = Ctx::default();
    // Editors on Windows like to start JSON with a byte-order mark; serde_json does not.
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let deployment = if body.trim().is_empty() {
        cx.fail(DeploymentCode::ConfigEmptyError, "", "manifest is empty");
        None
    } else {
        match serde_json::from_str::<Value>(body) {
            Ok(root) => {
                for p in duplicate_keys(body) {
                    let key = p.rsplit('/').next().unwrap_or_default().to_owned();
                    cx.problem(&p, format!("duplicate key `{}`", unescape_token(&key)));
                }
                document(&mut cx, &root, text)
            }
            Err(e) => {
                let message = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let message = message.strip_suffix(&suffix).unwrap_or(&message);
                return Err(ManifestError {
                    source_name: source_name.to_owned(),
                    code: DeploymentCode::ConfigFormatError,
                    problems: vec![Problem {
                        pointer: String::new(),
                        position: Some((e.line(), e.column())),
                        message: format!("invalid json: {message}"),
                    }],
                });
            }
        }
    };
    cx.finish(body, source_name, deployment)
}

/// Reads and parses a manifest file.
///
/// # Errors
/// [`ManifestError`] when the file cannot be read (code 400) or is invalid (see [`parse`]).
pub fn parse_file(path: &Path) -> Result<(Deployment, Vec<Notice>), ManifestError> {
    let source_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        source_name: source_name.clone(),
        code: DeploymentCode::ConfigFormatError,
        problems: vec![Problem {
            pointer: String::new(),
            position: None,
            message: format!("cannot read the manifest: {e}"),
        }],
    })?;
    parse(&text, &source_name)
}

/// The pointer of `modulesContent` in the usual (unwrapped) manifest shape.
pub(crate) fn base_pointer() -> String {
    child("", "modulesContent")
}

pub(crate) fn module_pointer(base: &str, id: &str) -> String {
    child(&child(&child(&child(base, AGENT), DESIRED), "modules"), id)
}

fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Problems and notices collected while walking the manifest.
#[derive(Default)]
struct Ctx {
    problems: Vec<(String, String)>,
    notices: Vec<(String, String)>,
    code: Option<DeploymentCode>,
}

impl Ctx {
    fn fail(&mut self, code: DeploymentCode, pointer: &str, message: impl Into<String>) {
        self.code = self.code.max(Some(code));
        self.problems.push((pointer.to_owned(), message.into()));
    }

    fn problem(&mut self, pointer: &str, message: impl Into<String>) {
        self.fail(DeploymentCode::ConfigFormatError, pointer, message);
    }

    fn notice(&mut self, pointer: &str, message: impl Into<String>) {
        self.notices.push((pointer.to_owned(), message.into()));
    }

    /// Reports every key of `obj` that is neither in `known` nor in `ignored`; notes the
    /// ignored ones. `$version`/`$metadata` pass silently when `twin_metadata` is set.
    fn fields(
        &mut self,
        obj: &Map<String, Value>,
        pointer: &str,
        known: &[&str],
        ignored: &[(&str, &str)],
        twin_metadata: bool,
    ) {
        for key in obj.keys() {
            let p = child(pointer, key);
            if known.contains(&key.as_str())
                || (twin_metadata && TWIN_METADATA.contains(&key.as_str()))
            {
                continue;
            }
            if let Some((_, why)) = ignored.iter().find(|(k, _)| k == key) {
                self.notice(&p, format!("`{key}` is ignored: {why}"));
                continue;
            }
            let expected: Vec<String> = known
                .iter()
                .copied()
                .chain(ignored.iter().map(|(k, _)| *k))
                .map(|k| format!("`{k}`"))
                .collect();
            self.problem(
                &p,
                format!(
                    "unknown field `{key}`, expected one of {}",
                    expected.join(", ")
                ),
            );
        }
    }

    /// An object, or a problem `"{what} must be an object"`.
    fn object<'v>(
        &mut self,
        v: &'v Value,
        pointer: &str,
        what: &str,
    ) -> Option<&'v Map<String, Value>> {
        let obj = v.as_object();
        if obj.is_none() {
            self.problem(
                pointer,
                format!("{what} must be an object, not {}", shown(v)),
            );
        }
        obj
    }

    fn finish(
        self,
        text: &str,
        source_name: &str,
        deployment: Option<Deployment>,
    ) -> Result<(Deployment, Vec<Notice>), ManifestError> {
        let located = |(pointer, message): (String, String)| {
            let position = locate(text, &pointer);
            Problem {
                pointer,
                position,
                message,
            }
        };
        let mut problems: Vec<Problem> = self.problems.into_iter().map(located).collect();
        problems.sort_by_key(|p| p.position.unwrap_or((usize::MAX, usize::MAX)));
        match (deployment, self.code) {
            (Some(d), None) => {
                let mut notices: Vec<Problem> = self.notices.into_iter().map(located).collect();
                notices.sort_by_key(|p| p.position.unwrap_or((usize::MAX, usize::MAX)));
                let notices = notices
                    .into_iter()
                    .map(|p| Notice {
                        pointer: p.pointer,
                        message: p.message,
                    })
                    .collect();
                Ok((d, notices))
            }
            (_, code) => Err(ManifestError {
                source_name: source_name.to_owned(),
                code: code.unwrap_or(DeploymentCode::ConfigFormatError),
                problems,
            }),
        }
    }
}

/// A value as shown after "not" in a message: scalars as written (strings in backticks),
/// blank or long strings, arrays and objects by kind.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) if s.trim().is_empty() => "an empty string".to_owned(),
        Value::String(s) if s.chars().count() > 40 => "a string".to_owned(),
        Value::String(s) => format!("`{s}`"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        Value::Null | Value::Bool(_) | Value::Number(_) => v.to_string(),
    }
}

fn hex_sha256(text: &str) -> String {
    sha256_hex(text.as_bytes())
}

/// Hex SHA-256 of `bytes` (how deployments are identified in history).
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The whole document: finds `modulesContent` and hands its sections out.
fn document(cx: &mut Ctx, root: &Value, text: &str) -> Option<Deployment> {
    let obj = cx.object(root, "", "the manifest")?;
    let (content, base) = if let Some(mc) = obj.get("modulesContent") {
        let allowed: Vec<&str> = ["modulesContent"]
            .into_iter()
            .chain(DEPLOYMENT_META.iter().copied())
            .collect();
        cx.fields(obj, "", &allowed, &[], false);
        (mc, base_pointer())
    } else if let Some(wrapper) = obj.get("content") {
        // `az iot edge deployment` shape: `{"id": …, "content": {"modulesContent": …}}`.
        let allowed: Vec<&str> = ["content"]
            .into_iter()
            .chain(DEPLOYMENT_META.iter().copied())
            .collect();
        cx.fields(obj, "", &allowed, &[], false);
        let wp = child("", "content");
        let w = cx.object(wrapper, &wp, "`content`")?;
        cx.fields(w, &wp, &["modulesContent"], &[], false);
        let Some(mc) = w.get("modulesContent") else {
            cx.fail(
                DeploymentCode::ConfigEmptyError,
                &wp,
                "missing `modulesContent`",
            );
            return None;
        };
        (mc, child(&wp, "modulesContent"))
    } else {
        cx.fail(
            DeploymentCode::ConfigEmptyError,
            "",
            "missing `modulesContent`",
        );
        return None;
    };
    let content = cx.object(content, &base, "`modulesContent`")?;

    let agent = match content.get(AGENT) {
        Some(section) => {
            desired(cx, section, &child(&base, AGENT), true).and_then(|(d, p)| agent(cx, d, &p))
        }
        None => {
            cx.fail(
                DeploymentCode::ConfigEmptyError,
                &base,
                format!("missing `{AGENT}`"),
            );
            None
        }
    };
    // Module names as written (valid or not), so that routes and twins are checked against
    // them without repeating the module's own problems.
    let names: Option<BTreeSet<&str>> = content
        .get(AGENT)
        .and_then(|s| s.get(DESIRED))
        .and_then(Value::as_object)
        .and_then(|d| match d.get("modules") {
            None => Some(BTreeSet::new()),
            Some(m) => m
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect()),
        });

    let hub = match content.get(HUB) {
        Some(section) => desired(cx, section, &child(&base, HUB), false)
            .and_then(|(d, p)| hub(cx, d, &p, names.as_ref())),
        None => {
            cx.problem(&base, format!("missing `{HUB}`"));
            None
        }
    };

    let mut twins = BTreeMap::new();
    let mut twins_ok = true;
    for (key, section) in content {
        if key == AGENT || key == HUB {
            continue;
        }
        let p = child(&base, key);
        if names.as_ref().is_some_and(|n| !n.contains(key.as_str())) {
            cx.problem(
                &p,
                format!("twin section `{key}` names no module of `{AGENT}` modules"),
            );
            twins_ok = false;
            continue;
        }
        match (desired(cx, section, &p, false), ModuleId::new(key.as_str())) {
            (Some((d, _)), Ok(id)) => {
                twins.insert(id, Value::Object(d.clone()));
            }
            _ => twins_ok = false,
        }
    }

    let (schema_version, modules) = agent?;
    let (routes, store_and_forward) = hub?;
    if !twins_ok {
        return None;
    }
    for id in modules.keys() {
        twins
            .entry(id.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Some(Deployment {
        schema_version,
        modules,
        routes,
        store_and_forward,
        twins,
        hash: hex_sha256(text),
    })
}

/// `section["properties.desired"]` as an object, with its pointer. A missing `$edgeAgent`
/// desired section is an empty configuration (417).
fn desired<'v>(
    cx: &mut Ctx,
    section: &'v Value,
    pointer: &str,
    is_agent: bool,
) -> Option<(&'v Map<String, Value>, String)> {
    let obj = cx.object(section, pointer, "a `modulesContent` section")?;
    cx.fields(obj, pointer, SECTION_FIELDS, &[], false);
    let p = child(pointer, DESIRED);
    match obj.get(DESIRED) {
        Some(d) => cx.object(d, &p, &format!("`{DESIRED}`")).map(|d| (d, p)),
        None => {
            let code = if is_agent {
                DeploymentCode::ConfigEmptyError
            } else {
                DeploymentCode::ConfigFormatError
            };
            cx.fail(code, pointer, format!("missing `{DESIRED}`"));
            None
        }
    }
}

/// A `schemaVersion` `1.<minor>` (optionally `.patch`) with minor up to `max_minor`; the
/// minor version is returned.
fn schema_version(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    pointer: &str,
    max_minor: u64,
) -> Option<(String, u64)> {
    let code = DeploymentCode::InvalidSchemaVersion;
    let accepted = (0..=max_minor)
        .map(|m| format!("1.{m}"))
        .collect::<Vec<_>>()
        .join(", ");
    let p = child(pointer, "schemaVersion");
    let Some(v) = obj.get("schemaVersion") else {
        cx.fail(code, pointer, "missing `schemaVersion`");
        return None;
    };
    let Some(s) = v.as_str() else {
        cx.fail(
            code,
            &p,
            format!(
                "`schemaVersion` must be a string such as \"1.1\", not {}",
                shown(v)
            ),
        );
        return None;
    };
    let parts: Vec<Option<u64>> = s.split('.').map(|n| n.parse().ok()).collect();
    match parts.as_slice() {
        [Some(1), Some(minor)] | [Some(1), Some(minor), Some(_)] if *minor <= max_minor => {
            Some((s.to_owned(), *minor))
        }
        _ => {
            cx.fail(
                code,
                &p,
                format!("unsupported schemaVersion `{s}`; this runtime accepts {accepted}"),
            );
            None
        }
    }
}

/// `$edgeAgent.properties.desired`.
fn agent(
    cx: &mut Ctx,
    d: &Map<String, Value>,
    pointer: &str,
) -> Option<(String, BTreeMap<ModuleId, ModuleSpec>)> {
    cx.fields(d, pointer, AGENT_FIELDS, AGENT_IGNORED, true);
    let schema = schema_version(cx, d, pointer, AGENT_MINOR_MAX);
    let runtime_ok = d
        .get("runtime")
        .is_none_or(|r| runtime(cx, r, &child(pointer, "runtime")));
    let system_ok = match d.get("systemModules") {
        Some(s) => cx
            .object(s, &child(pointer, "systemModules"), "`systemModules`")
            .is_some(),
        None => true,
    };
    let modules_pointer = child(pointer, "modules");
    let modules = match d.get("modules") {
        None => Some(BTreeMap::new()),
        Some(m) => cx
            .object(m, &modules_pointer, "`modules`")
            .and_then(|m| modules(cx, m, &modules_pointer)),
    };
    let (schema, _) = schema?;
    let modules = modules?;
    (runtime_ok && system_ok).then_some((schema, modules))
}

/// `$edgeAgent…runtime`: checked for shape only; its settings are Azure's and ignored.
fn runtime(cx: &mut Ctx, v: &Value, pointer: &str) -> bool {
    let Some(obj) = cx.object(v, pointer, "`runtime`") else {
        return false;
    };
    cx.fields(obj, pointer, RUNTIME_FIELDS, &[], false);
    let mut ok = true;
    if let Some(t) = obj.get("type")
        && !t.is_string()
    {
        cx.problem(&child(pointer, "type"), "`type` must be a string");
        ok = false;
    }
    if let Some(s) = obj.get("settings") {
        ok &= cx
            .object(s, &child(pointer, "settings"), "`settings`")
            .is_some();
    }
    ok
}

/// Every module, then the note about modules that share a `startupOrder`.
///
/// Equal `startupOrder` values are not a problem: Azure allows them and starts such modules
/// together. This runtime starts them one after the other in id order (see
/// [`Deployment::start_order`]), which is one of the orders Azure could produce, so a manifest
/// that works on Azure works here. Because an operator who typed the same number twice may have
/// meant a sequence, the sharing is reported as a notice.
fn modules(
    cx: &mut Ctx,
    m: &Map<String, Value>,
    pointer: &str,
) -> Option<BTreeMap<ModuleId, ModuleSpec>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    let mut by_order: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (name, v) in m {
        let p = child(pointer, name);
        match module(cx, name, v, &p) {
            Some((spec, explicit_order)) => {
                if explicit_order {
                    by_order.entry(spec.startup_order).or_default().push(name);
                }
                out.insert(spec.id.clone(), spec);
            }
            None => ok = false,
        }
    }
    for (order, mut names) in by_order {
        if names.len() < 2 {
            continue;
        }
        names.sort_unstable();
        let listed = match names.split_last() {
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => continue,
        };
        let first = names.first().copied().unwrap_or_default();
        cx.notice(
            &child(&child(pointer, first), "startupOrder"),
            format!("modules {listed} share startupOrder {order}; they start in name order"),
        );
    }
    ok.then_some(out)
}

/// One module; the flag says whether `startupOrder` was written.
fn module(cx: &mut Ctx, name: &str, v: &Value, pointer: &str) -> Option<(ModuleSpec, bool)> {
    let id = match ModuleId::new(name) {
        Ok(_) if name.starts_with('$') => {
            cx.problem(
                pointer,
                format!("invalid module name `{name}`: names starting with `$` are reserved for system modules"),
            );
            None
        }
        Ok(id) => Some(id),
        Err(e) => {
            cx.problem(pointer, format!("invalid module name: {e}"));
            None
        }
    };
    let obj = cx.object(v, pointer, "a module")?;
    cx.fields(obj, pointer, MODULE_FIELDS, MODULE_IGNORED, false);

    let version = match obj.get("version") {
        None => {
            cx.problem(pointer, "missing `version`");
            None
        }
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(other) => {
            cx.problem(
                &child(pointer, "version"),
                format!("`version` must be a non-empty string, not {}", shown(other)),
            );
            None
        }
    };

    let kind = match obj.get("type") {
        None => {
            cx.problem(pointer, "missing `type`");
            None
        }
        Some(Value::String(t)) if t == "process" => {
            let sp = child(pointer, "settings");
            match obj.get("settings") {
                None => {
                    cx.problem(
                        pointer,
                        "missing `settings` (a process module needs `settings.path`)",
                    );
                    None
                }
                Some(s) => process_settings(cx, s, &sp).map(ModuleKind::Process),
            }
        }
        Some(Value::String(t)) if !t.is_empty() => {
            cx.notice(
                &child(pointer, "type"),
                format!("module `{name}` has type `{t}`, which this runtime cannot run; it is reported as unsupported"),
            );
            Some(ModuleKind::Unsupported { kind: t.clone() })
        }
        Some(other) => {
            cx.problem(
                &child(pointer, "type"),
                format!(
                    "`type` must be a non-empty string such as `process`, not {}",
                    shown(other)
                ),
            );
            None
        }
    };

    let status = one_of(cx, obj, pointer, "status", STATUSES, DesiredStatus::Running);
    let restart_policy = one_of(
        cx,
        obj,
        pointer,
        "restartPolicy",
        RESTART_POLICIES,
        RestartPolicy::OnUnhealthy,
    );

    let startup_order = match obj.get("startupOrder") {
        None => Some(u32::MAX),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                cx.problem(
                    &child(pointer, "startupOrder"),
                    format!(
                        "`startupOrder` must be an integer from 0 to {}, not {}",
                        u32::MAX,
                        shown(v)
                    ),
                );
                None
            }
        },
    };

    let env = match obj.get("env") {
        None => Some(BTreeMap::new()),
        Some(e) => env(cx, e, &child(pointer, "env")),
    };

    Some((
        ModuleSpec {
            id: id?,
            version: version?,
            kind: kind?,
            status: status?,
            restart_policy: restart_policy?,
            startup_order: startup_order?,
            env: env?,
        },
        obj.contains_key("startupOrder"),
    ))
}

/// An optional field with a fixed set of string values.
fn one_of<T: Copy>(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    pointer: &str,
    field: &str,
    values: &[(&str, T)],
    default: T,
) -> Option<T> {
    let Some(v) = obj.get(field) else {
        return Some(default);
    };
    if let Some((_, t)) = values.iter().find(|(name, _)| v.as_str() == Some(*name)) {
        return Some(*t);
    }
    let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    cx.problem(
        &child(pointer, field),
        format!(
            "`{field}` must be one of {}, not {}",
            names.join(", "),
            shown(v)
        ),
    );
    None
}

fn process_settings(cx: &mut Ctx, v: &Value, pointer: &str) -> Option<ProcessSettings> {
    let obj = cx.object(v, pointer, "`settings`")?;
    cx.fields(
        obj,
        pointer,
        PROCESS_SETTINGS_FIELDS,
        PROCESS_SETTINGS_IGNORED,
        false,
    );
    let path = match obj.get("path") {
        None => {
            cx.problem(pointer, "missing `path` (the module's binary)");
            None
        }
        Some(Value::String(s)) if !s.is_empty() => Some(PathBuf::from(s)),
        Some(other) => {
            cx.problem(
                &child(pointer, "path"),
                format!("`path` must be a non-empty string, not {}", shown(other)),
            );
            None
        }
    };
    let args = match obj.get("args") {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => {
            let ap = child(pointer, "args");
            let mut args = Some(Vec::with_capacity(items.len()));
            for (i, item) in items.iter().enumerate() {
                match (item, args.as_mut()) {
                    (Value::String(s), Some(a)) => a.push(s.clone()),
                    (Value::String(_), None) => {}
                    (other, _) => {
                        cx.problem(
                            &child(&ap, &i.to_string()),
                            format!("each of `args` must be a string, not {}", shown(other)),
                        );
                        args = None;
                    }
                }
            }
            args
        }
        Some(other) => {
            cx.problem(
                &child(pointer, "args"),
                format!("`args` must be an array of strings, not {}", shown(other)),
            );
            None
        }
    };
    let working_dir = match obj.get("workingDir") {
        None => Some(None),
        Some(Value::String(s)) if !s.is_empty() => Some(Some(PathBuf::from(s))),
        Some(other) => {
            cx.problem(
                &child(pointer, "workingDir"),
                format!(
                    "`workingDir` must be a non-empty string, not {}",
                    shown(other)
                ),
            );
            None
        }
    };
    Some(ProcessSettings {
        path: path?,
        args: args?,
        working_dir: working_dir?,
    })
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn env(cx: &mut Ctx, v: &Value, pointer: &str) -> Option<BTreeMap<String, String>> {
    let obj = cx.object(v, pointer, "`env`")?;
    let mut out = Some(BTreeMap::new());
    for (name, entry) in obj {
        let p = child(pointer, name);
        let mut ok = true;
        if !is_env_name(name) {
            cx.problem(
                &p,
                format!("invalid environment variable name `{name}`: use letters, digits and `_`, not starting with a digit"),
            );
            ok = false;
        }
        let value = match entry {
            Value::Object(e) => {
                cx.fields(e, &p, ENV_FIELDS, &[], false);
                match e.get("value") {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        cx.problem(
                            &child(&p, "value"),
                            format!("`value` of `{name}` must be a string, not {}", shown(other)),
                        );
                        None
                    }
                    None => {
                        cx.problem(&p, format!("env `{name}` has no `value`"));
                        None
                    }
                }
            }
            other => {
                cx.problem(
                    &p,
                    format!(
                        "env `{name}` must be an object such as {{\"value\": \"…\"}}, not {}",
                        shown(other)
                    ),
                );
                None
            }
        };
        match (value, out.as_mut()) {
            (Some(value), Some(map)) if ok => {
                map.insert(name.clone(), value);
            }
            _ => out = None,
        }
    }
    out
}

/// `$edgeHub.properties.desired`. `names` are the module names as written, `None` when
/// `$edgeAgent` gives none to check route endpoints against.
fn hub(
    cx: &mut Ctx,
    d: &Map<String, Value>,
    pointer: &str,
    names: Option<&BTreeSet<&str>>,
) -> Option<(Vec<RouteSpec>, StoreAndForward)> {
    cx.fields(d, pointer, HUB_FIELDS, HUB_IGNORED, true);
    let schema = schema_version(cx, d, pointer, HUB_MINOR_MAX);
    let minor = schema.as_ref().map(|(_, m)| *m);
    // Azure: route objects need 1.1, mqttBroker 1.2, integrity 1.3.
    for (field, need) in [("mqttBroker", 2), ("integrity", 3)] {
        if d.contains_key(field) && minor.is_some_and(|m| m < need) {
            cx.problem(
                &child(pointer, field),
                format!("`{field}` needs schemaVersion 1.{need} or later"),
            );
        }
    }
    let routes_pointer = child(pointer, "routes");
    let routes = match d.get("routes") {
        None => Some(Vec::new()),
        Some(r) => cx
            .object(r, &routes_pointer, "`routes`")
            .and_then(|r| routes(cx, r, &routes_pointer, minor, names)),
    };
    let store = match d.get("storeAndForwardConfiguration") {
        None => Some(StoreAndForward {
            time_to_live: DEFAULT_STORE_TTL,
            max_size_bytes: None,
        }),
        Some(s) => store(cx, s, &child(pointer, "storeAndForwardConfiguration")),
    };
    schema?;
    Some((routes?, store?))
}

fn routes(
    cx: &mut Ctx,
    r: &Map<String, Value>,
    pointer: &str,
    minor: Option<u64>,
    names: Option<&BTreeSet<&str>>,
) -> Option<Vec<RouteSpec>> {
    let mut out = Some(Vec::new());
    for (name, v) in r {
        let p = child(pointer, name);
        let spec = route(cx, name, v, &p, minor, names);
        match (spec, out.as_mut()) {
            (Some(spec), Some(list)) => list.push(spec),
            _ => out = None,
        }
    }
    if let Some(list) = out.as_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

fn route(
    cx: &mut Ctx,
    name: &str,
    v: &Value,
    pointer: &str,
    minor: Option<u64>,
    names: Option<&BTreeSet<&str>>,
) -> Option<RouteSpec> {
    if name.is_empty() {
        cx.problem(pointer, "a route name must not be empty");
    }
    let (text, text_pointer, priority, ttl) = match v {
        Value::String(s) => (Some(s.as_str()), pointer.to_owned(), Some(0), Some(None)),
        Value::Object(o) => {
            if minor.is_some_and(|m| m < 1) {
                cx.problem(
                    pointer,
                    "route objects need schemaVersion 1.1 or later; use a string",
                );
            }
            cx.fields(o, pointer, ROUTE_FIELDS, &[], false);
            let tp = child(pointer, "route");
            let text = match o.get("route") {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    cx.problem(
                        &tp,
                        format!("`route` must be a string, not {}", shown(other)),
                    );
                    None
                }
                None => {
                    cx.problem(pointer, "missing `route`");
                    None
                }
            };
            let priority = match o.get("priority") {
                None => Some(0),
                Some(p) => match p
                    .as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .filter(|n| *n <= 9)
                {
                    Some(n) => Some(n),
                    None => {
                        cx.problem(
                            &child(pointer, "priority"),
                            format!(
                                "`priority` must be an integer from 0 (highest) to 9, not {}",
                                shown(p)
                            ),
                        );
                        None
                    }
                },
            };
            let ttl = match o.get("timeToLiveSecs") {
                None => Some(None),
                Some(t) => ttl_secs(cx, t, &child(pointer, "timeToLiveSecs")).map(Some),
            };
            (text, tp, priority, ttl)
        }
        other => {
            cx.problem(
                pointer,
                format!(
                    "a route must be a string or an object with `route`, not {}",
                    shown(other)
                ),
            );
            (None, pointer.to_owned(), None, None)
        }
    };
    let text = text?;
    let endpoints_ok = match route_facts(text) {
        Err(e) => {
            cx.problem(&text_pointer, format!("invalid route: {e}"));
            false
        }
        Ok(facts) => {
            let names = names?;
            let mut ok = true;
            if let Some(m) = facts.source_module.filter(|m| !names.contains(m.as_str())) {
                cx.problem(
                    &text_pointer,
                    format!("route reads from module `{m}`, which is not in `{AGENT}` modules"),
                );
                ok = false;
            }
            if let Some(m) = facts.sink_module.filter(|m| !names.contains(m.as_str())) {
                cx.problem(
                    &text_pointer,
                    format!("route sends to module `{m}`, which is not in `{AGENT}` modules"),
                );
                ok = false;
            }
            ok
        }
    };
    if name.is_empty() || !endpoints_ok {
        return None;
    }
    Some(RouteSpec {
        name: name.to_owned(),
        text: text.to_owned(),
        priority: priority?,
        time_to_live: ttl?,
    })
}

fn ttl_secs(cx: &mut Ctx, v: &Value, pointer: &str) -> Option<Duration> {
    match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
        Some(n) => Some(Duration::from_secs(u64::from(n))),
        None => {
            cx.problem(
                pointer,
                format!(
                    "`timeToLiveSecs` must be an integer from 0 to {}, not {}",
                    u32::MAX,
                    shown(v)
                ),
            );
            None
        }
    }
}

fn store(cx: &mut Ctx, v: &Value, pointer: &str) -> Option<StoreAndForward> {
    let obj = cx.object(v, pointer, "`storeAndForwardConfiguration`")?;
    cx.fields(obj, pointer, STORE_FIELDS, &[], false);
    let ttl = match obj.get("timeToLiveSecs") {
        None => Some(DEFAULT_STORE_TTL),
        Some(t) => ttl_secs(cx, t, &child(pointer, "timeToLiveSecs")),
    };
    let max = match obj.get("storeLimits") {
        None => Some(None),
        Some(l) => {
            let lp = child(pointer, "storeLimits");
            match cx.object(l, &lp, "`storeLimits`") {
                None => None,
                Some(l) => {
                    cx.fields(l, &lp, STORE_LIMITS_FIELDS, &[], false);
                    match l.get("maxSizeBytes") {
                        None => Some(None),
                        Some(m) => match m.as_u64() {
                            Some(n) => Some(Some(n)),
                            None => {
                                cx.problem(
                                    &child(&lp, "maxSizeBytes"),
                                    format!(
                                        "`maxSizeBytes` must be a non-negative integer, not {}",
                                        shown(m)
                                    ),
                                );
                                None
                            }
                        },
                    }
                }
            }
        }
    };
    Some(StoreAndForward {
        time_to_live: ttl?,
        max_size_bytes: max?,
    })
}

/// What validation needs to know about one route's text.
struct RouteFacts {
    /// `FROM /messages/modules/<m>/…`: the module it reads from.
    source_module: Option<String>,
    /// `INTO BrokeredEndpoint("/modules/<m>/inputs/…")`: the module it sends to.
    sink_module: Option<String>,
}

/// Parses a route with edge-route and pulls out its endpoint modules.
fn route_facts(text: &str) -> Result<RouteFacts, edge_route::ParseError> {
    let route = edge_route::parse(text)?;
    // `source` is the path with trailing `/*` trimmed: `/messages/modules/<m>[/…]`.
    let source_module = route
        .source
        .strip_prefix("/messages/modules/")
        .and_then(|rest| rest.split('/').next())
        .filter(|m| !m.is_empty() && *m != "*")
        .map(str::to_owned);
    let sink_module = match route.sink {
        edge_route::Sink::ModuleInput { module, .. } => Some(module),
        edge_route::Sink::Upstream => None,
    };
    Ok(RouteFacts {
        source_module,
        sink_module,
    })
}
