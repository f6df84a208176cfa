//! What a module's `run` gets, and the harness around it.

use crate::client::{ClientOptions, Delivery, Input, ModuleClient};
use crate::env::ModuleEnv;
use crate::error::{MethodError, ModuleError, SendError};
use crate::{EXIT_CONFIG, Module, ModuleConfig};
use edge_core::Message;
use serde_json::{Value, json};
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Handed to [`Module::run`]: the client, the current config and the stop signal.
pub struct ModuleContext<C> {
    client: ModuleClient,
    config: watch::Receiver<Arc<C>>,
    stop: CancellationToken,
}

impl<C> std::fmt::Debug for ModuleContext<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleContext")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<C: ModuleConfig> ModuleContext<C> {
    /// Builds a context (used by [`crate::run`]; also handy in tests).
    #[must_use]
    pub fn new(
        client: ModuleClient,
        config: watch::Receiver<Arc<C>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            client,
            config,
            stop,
        }
    }

    /// The connection to the hub.
    #[must_use]
    pub fn client(&self) -> &ModuleClient {
        &self.client
    }

    /// The module's metrics (see [`crate::metrics`]).
    #[must_use]
    pub fn metrics(&self) -> &crate::Metrics {
        self.client.metrics()
    }

    /// The current (last valid) configuration.
    #[must_use]
    pub fn config(&self) -> Arc<C> {
        self.config.borrow().clone()
    }

    /// A receiver that changes whenever a new valid configuration arrives. A change applies
    /// wherever the module next reads it (e.g. between samples).
    #[must_use]
    pub fn config_changes(&self) -> watch::Receiver<Arc<C>> {
        self.config.clone()
    }

    /// Completes when the module is asked to stop (SIGTERM/SIGINT).
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Whether the module was asked to stop.
    #[must_use]
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The stop token, for tasks the module spawns.
    #[must_use]
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The receiver of input `name`.
    ///
    /// # Panics
    /// Never: a second receiver for the same input is a programming error reported by an
    /// input that yields nothing (and a warning).
    #[must_use]
    pub fn input(&self, name: &str) -> Input {
        if let Some(i) = self.client.input(name) {
            return i;
        }
        warn!(
            input = name,
            "Input requested twice; the second receiver gets nothing."
        );
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        Input::from_receiver(rx)
    }

    /// The next message on `input`, or `None` when stopping or the client is gone.
    pub async fn next(&self, input: &mut Input) -> Option<Delivery> {
        tokio::select! {
            d = input.recv() => d,
            () = self.stop.cancelled() => None,
        }
    }

    /// Sends a message on an output (QoS 1).
    ///
    /// # Errors
    /// See [`ModuleClient::send`].
    pub async fn send(&self, output: &str, msg: Message) -> Result<(), SendError> {
        self.client.send(output, msg).await
    }

    /// Merges a patch into the module's reported properties.
    ///
    /// # Errors
    /// See [`ModuleClient::patch_reported`].
    pub async fn report(&self, patch: &Value) -> Result<(), crate::TwinError> {
        self.client.patch_reported(patch).await
    }

    /// Registers a direct method handler.
    pub fn on_method<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, MethodError>> + Send + 'static,
    {
        self.client.on_method(name, handler);
    }
}

impl Input {
    pub(crate) fn from_receiver(rx: tokio::sync::mpsc::Receiver<Delivery>) -> Self {
        Self::new(rx)
    }
}

/// Turns a desired document into a typed config: `$`-prefixed keys are dropped, the rest is
/// deserialized (errors name the path, e.g. `model.sha256: invalid type …`) and validated.
///
/// # Errors
/// A message naming the offending field.
pub fn parse_config<C: ModuleConfig>(desired: &Value) -> Result<C, String> {
    let mut doc = desired.clone();
    if let Value::Object(m) = &mut doc {
        m.retain(|k, _| !k.starts_with('$'));
    }
    let c: C = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    c.validate()?;
    Ok(c)
}

fn version_of(v: &Value) -> Option<u64> {
    v.get("$version").and_then(Value::as_u64)
}

async fn report_config(client: &ModuleClient, desired: &Value, error: Option<&str>) {
    let status = match error {
        None => {
            json!({"configStatus": {"status": "ok", "desiredVersion": version_of(desired), "error": null}})
        }
        Some(e) => {
            json!({"configStatus": {"status": "rejected", "desiredVersion": version_of(desired), "error": e}})
        }
    };
    if let Err(e) = client.patch_reported(&status).await {
        warn!(error = %e, "Could not report the config status.");
    }
}

pub(crate) async fn run_module<M: Module>(module: M, opts: ClientOptions) -> ExitCode {
    let env = match ModuleEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, "Cannot start.");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let stop = CancellationToken::new();
    let signals = tokio::spawn(wait_for_signal(stop.clone()));
    let result = run_with_client::<M>(module, env, opts, stop).await;
    signals.abort();
    match result {
        Ok(()) => {
            info!("Stopped.");
            ExitCode::SUCCESS
        }
        Err(ModuleError::Config(e)) => {
            error!(error = %e, "Invalid configuration.");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            error!(error = %e, "Module failed.");
            ExitCode::FAILURE
        }
    }
}

/// Connects, resolves the config, runs the module until it returns, then shuts the client
/// down (waiting up to 5 s for the hub to acknowledge what was sent). Public for tests and
/// for embedding a module in another program.
///
/// # Errors
/// The module's error, or [`ModuleError::Config`] when the initial config is invalid.
pub async fn run_with_client<M: Module>(
    module: M,
    env: ModuleEnv,
    opts: ClientOptions,
    stop: CancellationToken,
) -> Result<(), ModuleError> {
    let module_id = env.module_id.clone();
    let client = ModuleClient::start(env, opts).map_err(ModuleError::other)?;
    tokio::select! {
        () = client.wait_connected() => {}
        () = stop.cancelled() => {
            client.shutdown(Duration::from_secs(1)).await;
            return Ok(());
        }
    }
    // The initial desired document.
    let desired = loop {
        match client.get_twin().await {
            Ok(t) => break t.get("desired").cloned().unwrap_or_else(|| json!({})),
            Err(e) => {
                warn!(error = %e, "Twin not available yet; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = stop.cancelled() => {
                        client.shutdown(Duration::from_secs(1)).await;
                        return Ok(());
                    }
                }
            }
        }
    };
    let config: M::Config = match parse_config(&desired) {
        Ok(c) => c,
        Err(e) => {
            report_config(&client, &desired, Some(&e)).await;
            client.shutdown(Duration::from_secs(2)).await;
            return Err(ModuleError::Config(e));
        }
    };
    report_config(&client, &desired, None).await;
    info!(module = %module_id, version = ?version_of(&desired), "Configured.");
    let (cfg_tx, cfg_rx) = watch::channel(Arc::new(config));
    let watcher = {
        let client = client.clone();
        let mut desired_rx = client.desired();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = version_of(&desired);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = desired_rx.changed() => if r.is_err() { break },
                }
                let Some(doc) = desired_rx.borrow_and_update().clone() else {
                    continue;
                };
                if version_of(&doc) == last {
                    continue;
                }
                last = version_of(&doc);
                match parse_config::<M::Config>(&doc) {
                    Ok(c) => {
                        info!(version = ?last, "New configuration applied.");
                        cfg_tx.send_replace(Arc::new(c));
                        report_config(&client, &doc, None).await;
                    }
                    Err(e) => {
                        warn!(version = ?last, error = %e, "Desired configuration rejected; keeping the last good one.");
                        report_config(&client, &doc, Some(&e)).await;
                    }
                }
            }
        })
    };
    let ctx = ModuleContext::new(client.clone(), cfg_rx, stop.clone());
    let result = module.run(ctx).await;
    stop.cancel();
    let _ = watcher.await;
    client.shutdown(Duration::from_secs(5)).await;
    result
}

async fn wait_for_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("Cannot install signal handlers.");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // Stop first: nothing that logging might do can keep the module from stopping.
    stop.cancel();
    info!("{name} received; stopping.");
    // A stop that cannot finish (module code awaiting a hub that is gone, e.g. after edged was
    // killed and the parent-death signal arrived) must not leave an orphan behind: after
    // HARD_STOP, or at a second signal, the process exits. A normal stop ends this task first.
    tokio::select! {
        () = tokio::time::sleep(HARD_STOP) => {
            error!("Did not stop within {HARD_STOP:?} of the signal; exiting.");
        }
        _ = term.recv() => error!("Second SIGTERM; exiting now."),
        _ = int.recv() => error!("Second SIGINT; exiting now."),
    }
    std::process::exit(1);
}

/// How long a module may take to stop after SIGTERM/SIGINT before it exits regardless
/// (below the agent's default 30 s grace, above the SDK's own 5 s flush).
const HARD_STOP: Duration = Duration::from_secs(10);
