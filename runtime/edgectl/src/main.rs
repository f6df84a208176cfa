//! `edgectl`: see and steer a running `edged`, and check manifests and routes offline.
//!
//! It finds edged through `--data-dir` (or `EDGE_DATA_DIR`): the management socket is
//! `{data_dir}/edged.sock`.

mod cloud;
mod commands;
mod top;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
