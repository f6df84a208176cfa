//! `edged`: the edge daemon. Runs the agent (modules as supervised processes) and the hub
//! (MQTT endpoint, routes, durable queues, twins, methods) in one process.

mod certs;
mod config;
mod daemon;
mod http;
mod metrics;
mod mgmt;
mod upstream;
mod workload;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = daemon::Cli::parse();
    daemon::init_tracing();
    match daemon::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
