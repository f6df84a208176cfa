//! `health-monitor`: watches every module and the device, reports health.

fn main() -> std::process::ExitCode {
    edge_sdk::run(health_monitor::HealthMonitor)
}
