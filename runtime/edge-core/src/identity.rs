//! The module identities the agent issues and the hub checks.
//!
//! The agent inserts a [`ModuleKey`] per module when it deploys it; the hub looks the key up
//! when a client connects. The registry is a cloneable handle over a shared map.

use crate::ModuleId;
use crate::sas::ModuleKey;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// Shared map from module id to its key.
#[derive(Debug, Clone, Default)]
pub struct IdentityRegistry {
    inner: Arc<RwLock<HashMap<String, ModuleKey>>>,
}

impl IdentityRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the key of a module (replacing an older one).
    pub fn insert(&self, id: ModuleId, key: ModuleKey) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.as_str().to_owned(), key);
    }

    /// Removes a module's identity; its clients can no longer connect.
    pub fn remove(&self, id: &ModuleId) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id.as_str());
    }

    /// The key of a module, if it has an identity.
    #[must_use]
    pub fn key(&self, id: &str) -> Option<ModuleKey> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}
