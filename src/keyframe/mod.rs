//! Keyframes: pull a producer's full state, compare bucket digests, classify drift.

pub mod compare;
pub mod fetch;
pub mod run;
