//! Keyframes: pull a producer's full state, compare bucket digests, classify drift.

pub(crate) mod approval;
pub mod cause;
pub(crate) mod compare;
pub mod fetch;
pub(crate) mod holder;
pub mod run;
