//! `edgectl cloud …`: a fleet backend on any MQTT broker (see docs/UPSTREAM.md).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use edge_upstream::Backend;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `edgectl cloud`.
#[derive(Debug, Args)]
pub struct CloudArgs {
    /// The broker, `mqtt://host:port` or `mqtts://host:port` (TLS).
    #[arg(
        long,
        env = "EDGE_CLOUD_BROKER",
        default_value = "mqtt://127.0.0.1:1883",
        global = true
    )]
    broker: String,
    /// MQTT user name.
    #[arg(long, env = "EDGE_CLOUD_USERNAME", global = true)]
    username: Option<String>,
    /// MQTT password.
    #[arg(long, env = "EDGE_CLOUD_PASSWORD", global = true)]
    password: Option<String>,
    /// With mqtts://: PEM file of the CA that signs the broker's certificate (default: the
    /// system trust store).
    #[arg(long, env = "EDGE_CLOUD_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// With mqtts://: PEM client certificate, for brokers that authenticate by certificate.
    #[arg(
        long,
        env = "EDGE_CLOUD_CERT_FILE",
        global = true,
        requires = "key_file"
    )]
    cert_file: Option<PathBuf>,
    /// With mqtts://: the client certificate's private key (PEM).
    #[arg(
        long,
        env = "EDGE_CLOUD_KEY_FILE",
        global = true,
        requires = "cert_file"
    )]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: CloudCommand,
}

#[derive(Debug, Subcommand)]
enum CloudCommand {
    /// Publish a deployment as the device's retained desired state (next version). Repeat
    /// `--device` to push to several devices at once (concurrently).
    Deploy {
        /// The device id (repeatable).
        #[arg(long, required = true)]
        device: Vec<String>,
        /// The manifest file.
        file: PathBuf,
        /// The version (default: the retained one + 1).
        #[arg(long)]
        version: Option<u64>,
    },
    /// What the device reports it runs: modules, versions, status, last deployment outcome.
    Status {
        /// The device id.
        #[arg(long)]
        device: String,
        /// Print every reported document instead of the summary.
        #[arg(long)]
        full: bool,
    },
    /// Call a direct method of a module on the device.
    Invoke {
        /// The device id.
        #[arg(long)]
        device: String,
        /// Module id.
        module: String,
        /// Method name.
        method: String,
        /// JSON payload.
        #[arg(default_value = "null")]
        payload: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn print_json(v: &serde_json::Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Runs `edgectl cloud …`.
pub async fn run(args: CloudArgs) -> Result<ExitCode> {
    let creds = args
        .username
        .map(|u| (u, args.password.unwrap_or_default()));
    let id = format!("edgectl-{}", std::process::id());
    let tls = edge_upstream::TlsFiles {
        ca_file: args.ca_file,
        cert_file: args.cert_file,
        key_file: args.key_file,
    };
    let backend = Backend::connect_tls(&args.broker, &id, creds, &tls, true)
        .await
        .with_context(|| format!("cannot reach {}", args.broker))?;
    match args.command {
        CloudCommand::Deploy {
            device,
            file,
            version,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let manifest: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let outcomes = futures::future::join_all(
                device.iter().map(|d| backend.deploy(d, &manifest, version)),
            )
            .await;
            let mut failed = 0usize;
            for (d, outcome) in device.iter().zip(outcomes) {
                match outcome {
                    Ok(v) => print_json(&serde_json::json!({"device": d, "version": v})),
                    Err(e) => {
                        failed += 1;
                        print_json(&serde_json::json!({"device": d, "error": format!("{e:#}")}));
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        CloudCommand::Status { device, full } => {
            let st = backend.status(&device).await?;
            if full {
                print_json(&serde_json::to_value(&st.reported)?);
            } else {
                print_json(&st.summary());
            }
            Ok(ExitCode::SUCCESS)
        }
        CloudCommand::Invoke {
            device,
            module,
            method,
            payload,
            timeout,
        } => {
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("payload is not JSON")?;
            let (status, answer) = backend
                .invoke(
                    &device,
                    &module,
                    &method,
                    &payload,
                    Duration::from_secs(timeout),
                )
                .await?;
            print_json(&serde_json::json!({"status": status, "payload": answer}));
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
