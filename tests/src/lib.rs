//! Helpers for the end-to-end tests: manifests written for a temporary directory, and SDK
//! clients that speak as a deployed module (using the key the agent issued to it).

#![allow(clippy::missing_errors_doc, clippy::missing_panics_doc)]

use anyhow::{Context, Result};
use edge_core::sas::ModuleKey;
use edge_core::{DeviceId, ModuleId};
use edge_sdk::{ClientOptions, ModuleClient, ModuleEnv};
use serde_json::{Value, json};
use std::path::Path;

/// A process module spec running `program args…`.
#[must_use]
pub fn process_module(program: &Path, args: &[&str], order: u32, policy: &str) -> Value {
    json!({
        "version": "1.0",
        "type": "process",
        "status": "running",
        "restartPolicy": policy,
        "startupOrder": order,
        "settings": {"path": program, "args": args},
    })
}

/// A module that only holds an identity (a `sleep`), so a test can connect as it. The sleep is
/// bounded (10 min, far longer than any test) so that one orphaned by a test that kills edged
/// with SIGKILL ends by itself; while edged runs, `always` restarts it.
#[must_use]
pub fn identity_module(order: u32) -> Value {
    process_module(Path::new("/bin/sleep"), &["600"], order, "always")
}

/// A whole manifest from modules, routes and twins.
#[must_use]
pub fn manifest(modules: Value, routes: Value, twins: &[(&str, Value)]) -> Value {
    let mut content = json!({
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes,
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
    });
    for (m, t) in twins {
        content[*m] = json!({"properties.desired": t});
    }
    json!({"modulesContent": content})
}

/// Writes a manifest to `dir/name`.
pub fn write_manifest(dir: &Path, name: &str, m: &Value) -> Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(m)?)?;
    Ok(p)
}

/// Connects as deployed module `module`, with the key the agent stored in `data_dir/keys`.
pub fn connect_as(data_dir: &Path, hub_addr: &str, module: &str) -> Result<ModuleClient> {
    let key_file = data_dir.join("keys").join(format!("{module}.json"));
    let v: Value = serde_json::from_slice(
        &std::fs::read(&key_file).with_context(|| format!("no key file {}", key_file.display()))?,
    )?;
    let key = ModuleKey::from_base64(v["key"].as_str().context("key")?)?;
    let env = ModuleEnv {
        device_id: DeviceId::new("edge-device")?,
        module_id: ModuleId::new(module)?,
        iothub_hostname: "edge.local".into(),
        hub_addr: hub_addr.to_owned(),
        hub_socket: None,
        key,
        data_dir: None,
    };
    Ok(ModuleClient::start(env, ClientOptions::default())?)
}
