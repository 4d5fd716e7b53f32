//! Integration tests, one binary: store conformance on both backends, the CLI, keyframes end to end.

mod cli;
mod ingest;
mod store;
mod support;
