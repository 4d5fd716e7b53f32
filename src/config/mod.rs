//! The TOML configuration: its types, `${VAR}` substitution, whole-file validation, and producers compiled once.
//!
//! Loading (`load.rs`) runs in passes so every problem is reported at once:
//! 1. substitute `${VAR}` in every string of the parsed TOML tree, collecting
//!    each unset variable with its path;
//! 2. deserialize into the file's types (`types.rs`), collecting every unknown
//!    key (through `serde_ignored`, which sees all of them where
//!    `deny_unknown_fields` would stop at the first);
//! 3. validate the file as a whole (`validate.rs`: cron, time zones, URLs,
//!    pointers, regexes, cross-field rules), keeping what each check parsed.
//!
//! What validation parsed it hands on: a [`Config`] holds [`Producer`]s
//! (`compile.rs`) with their [`Schedule`], hasher and email rules ready, so
//! nothing downstream parses a setting again or meets a setting it cannot
//! use. Every problem names its TOML path (`producer[1].schedule`) and the
//! bad value. Secrets live in [`Secret`], whose `Debug` prints `***`.

mod compile;
mod load;
mod schedule;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use compile::Producer;
pub use load::{ConfigError, Problem};
pub(crate) use schedule::{parse_cron, Schedule};
pub use types::*;

/// A validated config: the server and database settings, and the producers compiled.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub producers: Vec<Producer>,
}

/// A loaded config and the warnings `driftd check` prints (such as unsigned webhooks).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}
