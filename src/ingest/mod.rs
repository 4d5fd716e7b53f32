//! Deltas: webhook signature checks, email parsing and rules.

pub mod email;
pub mod signature;
