//! The `opcua-writer` module binary.

fn main() -> std::process::ExitCode {
    edge_sdk::run(opcua_writer::module::WriterModule)
}
