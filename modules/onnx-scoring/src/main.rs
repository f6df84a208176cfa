//! The `onnx-scoring` module binary.

fn main() -> std::process::ExitCode {
    edge_sdk::run(onnx_scoring::OnnxScoring)
}
