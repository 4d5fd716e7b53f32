//! Keyframes: pull a producer's full state, compare bucket digests, classify drift.

pub mod fetch;
