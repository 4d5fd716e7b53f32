//! Integration tests, one binary: store conformance on both backends, the CLI, ingest, keyframes end to end, the demo.

mod admin;
mod cli;
mod converge;
mod demo;
mod feed;
mod ingest;
mod keyframe;
mod leases;
mod lifecycle;
mod logs;
mod observe;
mod readyz;
mod replicas;
mod store;
mod support;
mod tidy;
mod work;
