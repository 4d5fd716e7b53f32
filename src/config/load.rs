//! Loading a config file: TOML with spans, `${VAR}` substitution in every string, reading and validating with every problem collected, and the report.

use std::fmt;
use std::path::Path;

use super::de::{self, Found, Read};
use super::report::{self, locate, Location, Mask, Paint};
use super::tree::{self, Node};
use super::types::ConfigFile;
use super::validate::validate;
use super::{Config, Loaded};

/// One problem in a config file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The TOML path of the bad value (`producer[1].schedule`); empty for the file as a whole.
    pub path: String,
    pub message: String,
    /// The line holding the bad value (or the table that misses it), when the file has one.
    pub at: Option<Location>,
}

impl Problem {
    /// The problem as cargo prints one: `level: path: message`, then where it is.
    pub fn render(&self, level: &str, file: &str, colour: bool) -> String {
        self.render_in(level, file, colour, 0)
    }

    /// As [`Problem::render`], line numbers in at least `width` columns.
    fn render_in(&self, level: &str, file: &str, colour: bool, width: usize) -> String {
        let mut out = String::new();
        report::render(
            &mut out,
            level,
            Paint::new(colour),
            file,
            &self.to_string(),
            self.at.as_ref(),
            width,
        );
        out
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// Every problem as cargo prints one, then their count; coloured for a terminal.
    pub fn render(&self, colour: bool) -> String {
        let mut out = String::new();
        let width = self
            .problems
            .iter()
            .filter_map(|p| p.at.as_ref())
            .map(|at| at.line.to_string().len())
            .max()
            .unwrap_or(0);
        for p in &self.problems {
            out.push_str(&p.render_in("error", &self.file, colour, width));
            out.push('\n');
        }
        let n = self.problems.len();
        let summary = format!(
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        );
        report::render(
            &mut out,
            "error",
            Paint::new(colour),
            &self.file,
            &summary,
            None,
            0,
        );
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render(false).trim_end())
    }
}

impl Config {
    /// Reads, substitutes and validates the file at `path` with the process environment.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read config file {file}: {e}"),
                at: None,
            }],
        })?;
        Self::parse(&file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses TOML text, taking `${VAR}` values from `env`.
    pub fn parse(
        file: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_string(),
            problems,
        };
        let mut root = match tree::parse(text) {
            Ok(root) => root,
            Err(e) => {
                // One mistake in the syntax is one problem: nothing after it is read.
                return Err(fail(vec![Problem {
                    path: String::new(),
                    message: format!("invalid TOML: {}", e.message),
                    at: e.span.map(|s| report::locate_unparsed(text, &s)),
                }]));
            }
        };
        let mut unset = Vec::new();
        tree::substitute_env(&mut root, "", env, &mut unset);
        let (parsed, mut read) = de::read::<ConfigFile>(&root);
        for u in unset {
            // A variable in a value already found wrong adds nothing.
            if !read.is_poisoned(&u.path) {
                read.poison(
                    u.path,
                    format!("environment variable {:?} is not set", u.name),
                    u.span,
                );
            }
        }
        let Some(file_config) = parsed else {
            return Err(fail(located(text, &root, &read, read.found.clone())));
        };
        let mut found = std::mem::take(&mut read.found);
        let mut warnings = Vec::new();
        let producers = validate(&file_config, &read, &mut found, &mut warnings);
        let warnings = located(text, &root, &read, warnings);
        match producers {
            Some(producers) if found.is_empty() => Ok(Loaded {
                config: Config {
                    server: file_config.server,
                    database: file_config.database,
                    producers,
                },
                warnings,
            }),
            _ => Err(fail(located(text, &root, &read, found))),
        }
    }

    pub fn producer(&self, name: &str) -> Option<&super::Producer> {
        self.producers.iter().find(|p| p.name == name)
    }
}

/// Problems with their lines, in the order of the file.
fn located(text: &str, root: &Node, read: &Read, found: Vec<Found>) -> Vec<Problem> {
    let mut masks: Vec<Mask> = read
        .hidden
        .iter()
        .map(|span| Mask {
            span: span.clone(),
            whole: true,
        })
        .collect();
    // A URL of any setting may carry credentials or a token in its query.
    root.each_string(&mut |value, span| {
        if value.contains("://") {
            masks.push(Mask {
                span: span.clone(),
                whole: false,
            });
        }
    });
    let mut problems: Vec<(usize, Problem)> = found
        .into_iter()
        .map(|f| {
            let span = f.span.clone().or_else(|| {
                // Validation names a path: the value there, its key, or the
                // table that should hold it.
                let (node, exact) = root.find(&f.path);
                match (exact && f.on_key, &node.key, &node.span) {
                    (true, Some(key), _) => Some(key.clone()),
                    (_, _, Some(span)) => Some(span.clone()),
                    (_, key, None) => key.clone(),
                }
            });
            let order = span.as_ref().map_or(usize::MAX, |s| s.start);
            let at = span.map(|s| locate(text, &s, &masks));
            (
                order,
                Problem {
                    path: f.path,
                    message: f.message,
                    at,
                },
            )
        })
        .collect();
    problems.sort_by_key(|(order, _)| *order);
    problems.into_iter().map(|(_, p)| p).collect()
}
