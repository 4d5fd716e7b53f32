//! Integration tests, one binary: store conformance on both backends, the CLI, ingest, keyframes end to end, the demo.

mod cli;
mod demo;
mod ingest;
mod keyframe;
mod producer;
mod store;
mod support;
