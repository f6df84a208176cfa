//! The upstream link of edged and a cloud backend that needs nothing but an MQTT broker.
//!
//! The scheme (topics, retained state, versions) is written down in `docs/UPSTREAM.md`.
//!
//! Layout:
//! - [`config`]: [`UpstreamConfig`] (`[upstream]` in edged's configuration).
//! - [`transport`]: broker URLs and the connection: `mqtt://` over TCP or `mqtts://` over
//!   TLS (rustls) with a CA file and an optional client certificate.
//! - [`topics`]: every topic the device and the backend exchange, built and parsed in one
//!   place (the IoT Hub device profile for telemetry, `edge/{device}/{identity}/…` for twins
//!   and methods).
//! - [`link`]: [`Upstream`], the device side: drains the hub's `$upstream` queue at least
//!   once and in order, syncs reported properties as merged patches, receives desired
//!   deployments, desired patches and method calls through the [`Device`] seam.
//! - [`backend`]: [`Backend`], the cloud side used by `edgectl cloud` and the fleet
//!   benchmark: retained, versioned desired deployments, reported status, method calls.

pub mod backend;
pub mod config;
pub mod link;
pub mod topics;
pub mod transport;

pub use backend::{Backend, BackendError, DeviceStatus};
pub use config::UpstreamConfig;
pub use link::{Device, LinkStats, Upstream, UpstreamError, check_config};
pub use transport::{Broker, TlsError, TlsFiles, UrlError, parse_url};
