//! The module SDK: a module is a few lines of Rust on top of a client that never loses what it
//! was given.
//!
//! ```no_run
//! use edge_sdk::{Module, ModuleConfig, ModuleContext, ModuleError};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { prefix: String }
//! impl ModuleConfig for Config {}
//!
//! struct Echo;
//! impl Module for Echo {
//!     type Config = Config;
//!     async fn run(self, ctx: ModuleContext<Config>) -> Result<(), ModuleError> {
//!         let mut input = ctx.input("in");
//!         while let Some(d) = ctx.next(&mut input).await {
//!             let mut out = d.message.clone();
//!             out.set_property("prefix", ctx.config().prefix.clone());
//!             ctx.send("out", out).await?;
//!             d.ack().await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode { edge_sdk::run(Echo) }
//! ```
//!
//! [`run`] reads the identity the agent put in the environment ([`ModuleEnv`]), sets up
//! tracing (to stderr, which the agent captures), connects to the hub with rumqttc
//! ([`ModuleClient`]), fetches the twin and turns its desired properties into the module's
//! typed [`ModuleConfig`] (an invalid document is reported in the twin's reported properties
//! under `configStatus`; the module keeps its last good config, or exits with code 78 when it
//! never had one), handles SIGTERM/SIGINT by cancelling [`ModuleContext::stopped`], waits for
//! the hub to acknowledge what was sent, and maps the result to an exit code
//! (0 ok, 1 error, 78 configuration).
//!
//! Modules count what they do through [`ModuleClient::metrics`] (counters, gauges, small
//! histograms; one atomic operation per update); the client reports them to the hub every
//! few seconds and edged serves them on `/metrics` with a `module` label ([`metrics`]).
//!
//! Layout: `env` (identity from the environment), `client` (connection, dispatch, reconnect),
//! `context` (what a module's `run` gets), [`metrics`], `error`.

mod client;
mod context;
mod env;
mod error;
pub mod metrics;

pub use client::{ClientOptions, Delivery, Input, ModuleClient};
pub use context::{ModuleContext, parse_config, run_with_client};
pub use edge_core::message::SysProp;
pub use edge_core::{Message, PropStr};
pub use env::{EnvError, ModuleEnv};
pub use error::{MethodError, ModuleError, SendError, TwinError};
pub use metrics::{Counter, Gauge, Histogram, Metrics};

use std::future::Future;
use std::process::ExitCode;

/// A module's typed configuration, read from its twin's desired properties.
pub trait ModuleConfig: serde::de::DeserializeOwned + Send + Sync + 'static {
    /// Checks what serde cannot (ranges, cross-field rules). The error names the field.
    ///
    /// # Errors
    /// A message naming what is wrong; the document is then rejected.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl ModuleConfig for serde_json::Value {}

/// What a module implements.
pub trait Module: Send + 'static {
    /// Its configuration type.
    type Config: ModuleConfig;

    /// Runs until [`ModuleContext::stopped`] fires (SIGTERM) or the work is done.
    fn run(
        self,
        ctx: ModuleContext<Self::Config>,
    ) -> impl Future<Output = Result<(), ModuleError>> + Send;
}

/// Exit code for a configuration error (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// Runs a module: the whole `main` of a module is `edge_sdk::run(MyModule)`.
pub fn run<M: Module>(module: M) -> ExitCode {
    init_tracing();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(context::run_module(module, options_from_env()))
}

/// The default options, with `EDGE_METRICS_INTERVAL` (e.g. `1s`, `500ms`) applied when set.
fn options_from_env() -> ClientOptions {
    let mut opts = ClientOptions::default();
    if let Ok(v) = std::env::var("EDGE_METRICS_INTERVAL") {
        match humantime::parse_duration(&v) {
            Ok(d) if !d.is_zero() => opts.metrics_interval = d,
            _ => tracing::warn!(value = %v, "EDGE_METRICS_INTERVAL is not a duration; ignored."),
        }
    }
    opts
}

/// Sets up `tracing` to stderr with `RUST_LOG` (default `info`), once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        // When edged is gone, stderr is a pipe nobody reads and every write fails. Reporting
        // that failure is itself a write to stderr (`eprintln!`), which panics there: the
        // task that logged dies, and the one that stops the module on SIGTERM was one of them,
        // which left orphans running after a kill -9 of edged.
        .log_internal_errors(false)
        .try_init();
}
