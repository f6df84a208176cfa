//! End-to-end tests: boot edged with deployment.json and real module binaries.
