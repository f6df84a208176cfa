//! The identity and hub address the agent passes to a module in its environment.

use edge_core::sas::ModuleKey;
use edge_core::{DeviceId, ModuleId};
use std::path::PathBuf;

/// What a module learns from its environment.
#[derive(Debug, Clone)]
pub struct ModuleEnv {
    /// `IOTEDGE_DEVICEID`.
    pub device_id: DeviceId,
    /// `IOTEDGE_MODULEID`.
    pub module_id: ModuleId,
    /// `IOTEDGE_IOTHUBHOSTNAME`: the audience of the module's SAS tokens.
    pub iothub_hostname: String,
    /// `EDGE_HUB_ADDR`: `host:port` of the hub's local MQTT listener.
    pub hub_addr: String,
    /// `EDGE_HUB_SOCKET`: the hub's Unix-socket MQTT listener, when it has one. The client
    /// connects there instead of `hub_addr` (cheaper per packet on the same machine).
    pub hub_socket: Option<PathBuf>,
    /// `EDGE_MODULE_KEY`: the module's key (never logged).
    pub key: ModuleKey,
    /// `EDGE_MODULE_DATA_DIR`: a directory the module may keep state in, when set.
    pub data_dir: Option<PathBuf>,
}

/// A required variable is missing or invalid.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {problem} (is this module started by edged?)")]
pub struct EnvError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ModuleEnv {
    /// Reads the environment of the current process.
    ///
    /// # Errors
    /// [`EnvError`] naming the first missing or invalid variable.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (testable without touching the process environment).
    ///
    /// # Errors
    /// [`EnvError`] naming the first missing or invalid variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let req = |name: &'static str| {
            get(name).filter(|v| !v.is_empty()).ok_or(EnvError {
                name,
                problem: "not set".into(),
            })
        };
        let device_id = DeviceId::new(req("IOTEDGE_DEVICEID")?).map_err(|e| EnvError {
            name: "IOTEDGE_DEVICEID",
            problem: e.to_string(),
        })?;
        let module_id = ModuleId::new(req("IOTEDGE_MODULEID")?).map_err(|e| EnvError {
            name: "IOTEDGE_MODULEID",
            problem: e.to_string(),
        })?;
        let key = ModuleKey::from_base64(&req("EDGE_MODULE_KEY")?).map_err(|e| EnvError {
            name: "EDGE_MODULE_KEY",
            problem: e.to_string(),
        })?;
        Ok(Self {
            device_id,
            module_id,
            iothub_hostname: req("IOTEDGE_IOTHUBHOSTNAME")?,
            hub_addr: req("EDGE_HUB_ADDR")?,
            hub_socket: get("EDGE_HUB_SOCKET")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            key,
            data_dir: get("EDGE_MODULE_DATA_DIR").map(PathBuf::from),
        })
    }

    /// The environment variables that describe this identity (what the agent sets).
    #[must_use]
    pub fn to_vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("IOTEDGE_DEVICEID".into(), self.device_id.to_string()),
            ("IOTEDGE_MODULEID".into(), self.module_id.to_string()),
            (
                "IOTEDGE_IOTHUBHOSTNAME".into(),
                self.iothub_hostname.clone(),
            ),
            ("EDGE_HUB_ADDR".into(), self.hub_addr.clone()),
            (
                "EDGE_MODULE_KEY".into(),
                self.key.expose_base64().to_owned(),
            ),
        ];
        if let Some(s) = &self.hub_socket {
            v.push(("EDGE_HUB_SOCKET".into(), s.display().to_string()));
        }
        if let Some(d) = &self.data_dir {
            v.push(("EDGE_MODULE_DATA_DIR".into(), d.display().to_string()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn names_the_missing_variable() {
        let vars: HashMap<&str, &str> = [("IOTEDGE_DEVICEID", "dev")].into();
        let err = ModuleEnv::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap_err();
        assert_eq!(err.name, "IOTEDGE_MODULEID");
    }

    #[test]
    fn round_trips_through_vars() {
        let env = ModuleEnv {
            device_id: DeviceId::new("dev").unwrap(),
            module_id: ModuleId::new("m").unwrap(),
            iothub_hostname: "hub".into(),
            hub_addr: "127.0.0.1:1".into(),
            hub_socket: Some("/run/edged/hub.sock".into()),
            key: ModuleKey::generate().unwrap(),
            data_dir: None,
        };
        let vars: HashMap<String, String> = env.to_vars().into_iter().collect();
        let back = ModuleEnv::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(back.module_id, env.module_id);
        assert_eq!(back.key, env.key);
        assert_eq!(back.hub_socket, env.hub_socket);
    }
}
