//! Module SDK: connect to the hub, outputs, inputs, twin, methods, heartbeat, graceful stop.
