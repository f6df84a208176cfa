//! The deployment manifest: Azure IoT Edge's `deployment.json` shape, parsed into a typed
//! [`Deployment`] and validated as a whole.
//!
//! `parse` turns text into a [`Deployment`] or a list of every [`Problem`], each located by
//! JSON pointer (and line/column where the text gives one). Fields Azure defines that this
//! runtime does not use are accepted and listed as [`Notice`]s; fields nobody defines are
//! problems. A module `type` this runtime cannot run (e.g. `docker`) is kept as
//! [`ModuleKind::Unsupported`] and reported per module, not refused.

mod model;
mod parse;

pub use model::*;
pub use parse::{check_binaries, parse, parse_file};
