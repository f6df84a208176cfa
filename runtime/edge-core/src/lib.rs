//! Shared types for every edge crate: module identities, the [`Message`] model, the IoT Hub
//! module topic profile and its property-bag encoding, and SAS tokens.
//!
//! Layout:
//! - [`ids`]: `DeviceId` / `ModuleId` newtypes, validated on construction.
//! - [`message`]: body + application properties + system properties, and its compact binary
//!   form used by the durable store.
//! - [`topic`]: parse topics a module publishes to, and build topics the hub publishes to a
//!   module (`docs/TOPICS.md` in the repo is the written spec).
//! - [`sas`]: SharedAccessSignature tokens (HMAC-SHA256), made by the SDK and checked by the hub.
//!
//! No tokio and no IO here.

pub mod identity;
pub mod ids;
pub mod json;
pub mod message;
pub mod sas;
pub mod topic;

pub use ids::{DeviceId, IdError, ModuleId};
pub use message::{DecodeError, Message, PropStr, SystemProperties};
