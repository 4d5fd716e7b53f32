//! Keyframes: pull a producer's full state, compare bucket digests, classify drift.

pub mod approval;
pub mod compare;
pub mod fetch;
mod holder;
pub mod run;
