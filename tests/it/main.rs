//! Integration tests, one binary: store conformance on both backends, the CLI, ingest, keyframes end to end, the demo.

#![allow(
    unreachable_pub,
    reason = "a test binary has no public surface: `pub` here only shares helpers between its modules"
)]
#![allow(
    clippy::cast_possible_wrap,
    reason = "test counts and versions are small; a cast here cannot wrap"
)]

mod admin;
mod attribution;
mod catchup;
mod cli;
mod converge;
mod demo;
mod feed;
mod fetch;
mod ingest;
mod keyframe;
mod leases;
mod lifecycle;
mod logs;
mod observe;
mod pacing;
mod readyz;
mod replicas;
mod store;
mod support;
mod sync;
mod tidy;
mod upgrade;
mod work;
