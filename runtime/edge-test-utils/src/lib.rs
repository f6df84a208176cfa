//! Test helpers: fakes with failure switches, process harnesses, fixture loaders.
