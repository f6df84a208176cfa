//! The deployment manifest: Azure IoT Edge's `deployment.json` shape, parsed into a typed
//! [`Deployment`] and validated as a whole.
//!
//! `parse` turns text into a [`Deployment`] or a list of every [`Problem`], each located by
//! JSON pointer (and line/column where the text gives one). Fields Azure defines that this
//! runtime does not use are accepted and listed as [`Notice`]s; fields nobody defines are
//! problems. A module `type` this runtime cannot run (e.g. `docker`) is kept as
//! [`ModuleKind::Unsupported`] and reported per module, not refused.
//!
//! Layout:
//! - `model`: the typed [`Deployment`] the agent, the hub and edgectl consume, plus
//!   [`Problem`], [`Notice`] and [`ManifestError`] (with Azure's deployment status code).
//! - `parse`: [`parse`] / [`parse_file`] walk the JSON value by hand so that every problem is
//!   found with its pointer.
//! - `binaries`: [`resolve_binary`] / [`check_binaries`] find process modules' binaries.
//! - `locate`: RFC 6901 pointer escaping and a small walker that finds a pointer's line and
//!   column in the text.

mod binaries;
mod locate;
mod model;
mod parse;

pub use binaries::{check_binaries, resolve_binary};
pub use model::*;
pub use parse::{DEFAULT_STORE_TTL, parse, parse_file, sha256_hex};
