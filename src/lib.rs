//! driftd keeps an application's local copy of vendor-owned state correct.
//!
//! # Layout
//! - [`config`]: the TOML file, `${VAR}` substitution, whole-file validation.
//! - [`client`]: the HTTP client for producers and applications.
//! - [`canonical`]: canonical JSON, record hashes, buckets, bucket digests (pure).
//! - `patch`: JSON merge patch and pointer helpers (pure).
//! - [`state`]: the state machines, one transition table each.
//! - [`entity`]: entity writes, the version rule, batch plans, the `changes` chain (pure).
//! - [`metrics`]: the Prometheus families, created once and passed down.
//! - [`store`]: SQLite and PostgreSQL behind one type; the only module with SQL.
//! - [`keyframe`]: pulling snapshots, comparing digests, classifying drift.
//! - [`ingest`]: webhooks and emails into the inbox, applied in version order; replay.
//! - [`work`]: work specs, emission from keyframes, the `apply`/`http` workers.
//! - `probe`: `driftd check --probe`, the first page against the pointers.
//! - `redact`: URLs without credentials or query, errors with every cause.
//! - `schedule`: cron next-fire times (pure) and the per-producer schedule loop.
//! - `server`: the axum router, health and metrics endpoints.
//! - `serve`: the accept loop: header-read and idle timeouts, the connection cap.
//! - `admin`: operator endpoints behind the admin bearer token.
//! - `api`: the application's `/v1` API: the change feed and the read API.
//! - [`app`]: `App::build` / `App::run`, the owner of every task.
//! - [`cli`]: the `driftd` command line; `main.rs` only calls `cli::main`.
//! - `tail`: `driftd tail`, the change feed on a terminal.
//! - [`demo`]: `driftd demo`, the real daemon against an in-process vendor with lossy webhooks.

pub(crate) mod admin;
pub(crate) mod api;
pub mod app;
pub mod canonical;
pub mod catchup;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod entity;
pub mod ingest;
pub mod keyframe;
pub mod metrics;
pub mod pacing;
pub(crate) mod patch;
pub(crate) mod probe;
pub(crate) mod redact;
pub mod refresh;
pub(crate) mod schedule;
mod serve;
pub(crate) mod server;
pub mod state;
pub mod store;
pub(crate) mod tail;
pub mod work;
