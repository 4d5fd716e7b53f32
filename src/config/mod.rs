//! The TOML configuration: its types, `${VAR}` substitution, whole-file validation, and producers compiled once.
//!
//! Loading (`load.rs`) runs in passes so every problem is reported at once:
//! 1. parse the TOML into a tree whose values keep their place in the text
//!    (`tree.rs`), and substitute `${VAR}` in every string, collecting each
//!    unset variable with its path;
//! 2. read the tree into the file's types (`de.rs`), collecting every value of
//!    the wrong type, unknown key (with the nearest valid one), integer out of
//!    its type's range and missing key; a bad value gets a stand-in and its
//!    path is poisoned, so the rest is still read;
//! 3. validate the file as a whole (`validate.rs`: cron, time zones, URLs,
//!    pointers, regexes, ranges, cross-field rules), keeping what each check
//!    parsed; no check reports again what an earlier pass found (a poisoned
//!    path), and a rule that depends on a bad value is skipped;
//! 4. print (`report.rs`) each problem as cargo does: its TOML path and
//!    message, `--> file:line:column`, and the line with a caret under the
//!    bad value, every secret on the line masked.
//!
//! What validation parsed it hands on: a [`Config`] holds [`Producer`]s
//! (`compile.rs`) with their [`Schedule`], hasher and email rules ready, so
//! nothing downstream parses a setting again or meets a setting it cannot
//! use. Every problem names its TOML path (`producer[1].schedule`) and the
//! bad value. Secrets live in [`Secret`], whose `Debug` prints `***`.

mod compile;
mod de;
mod load;
mod report;
mod schedule;
#[cfg(test)]
mod tests;
mod tree;
mod types;
mod validate;

pub use compile::Producer;
pub use load::{ConfigError, Problem};
pub use report::Location;
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
