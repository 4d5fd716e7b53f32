//! Integration tests, one binary: store conformance on both backends, the CLI, keyframes end to end.

mod cli;
mod keyframe;
mod observe;
mod producer;
mod replicas;
mod store;
mod support;
mod work;
