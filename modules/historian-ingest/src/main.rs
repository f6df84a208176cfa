//! `historian-ingest`: replays historian data into the hub, one message per sample.

fn main() -> std::process::ExitCode {
    edge_sdk::run(historian_ingest::HistorianIngest)
}
