//! `feature-pipeline`: samples in, feature vectors out.

fn main() -> std::process::ExitCode {
    edge_sdk::run(feature_pipeline::FeaturePipelineModule)
}
