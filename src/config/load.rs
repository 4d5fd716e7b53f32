//! Loading a config file: TOML, `${VAR}` substitution in every string, unknown keys, and problems named by TOML path.

use std::fmt;
use std::path::Path;

use super::types::ConfigFile;
use super::validate::validate;
use super::{Config, Loaded, Producer};

/// One problem in a config file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem{}",
            self.file,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
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
                message: format!("cannot read config file: {e}"),
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
        let mut tree: toml::Value = match text.parse::<toml::Table>() {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                return Err(fail(
                    vec![Problem {
                        path: String::new(),
                        message: format!("invalid TOML: {}", e.message().trim()),
                    }]
                    .into_iter()
                    .chain(e.span().map(|s| Problem {
                        path: String::new(),
                        message: format!("at line {}", line_of(text, s.start)),
                    }))
                    .collect(),
                ));
            }
        };
        let mut problems = Vec::new();
        substitute_env(&mut tree, &mut String::new(), env, &mut problems);

        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(format_ignored(&path));
        let de = serde_ignored::Deserializer::new(tree, &mut on_unknown);
        let parsed: Result<ConfigFile, _> = serde_path_to_error::deserialize(de);
        for path in unknown {
            problems.push(Problem {
                path,
                message: "unknown key".into(),
            });
        }
        let file_config = match parsed {
            Ok(c) => c,
            Err(e) => {
                problems.push(Problem {
                    path: toml_path(&e.path().to_string()),
                    message: e.inner().to_string(),
                });
                return Err(fail(problems));
            }
        };
        let mut warnings = Vec::new();
        let producers = validate(&file_config, &mut problems, &mut warnings);
        match producers {
            Some(producers) if problems.is_empty() => Ok(Loaded {
                config: Config {
                    server: file_config.server,
                    database: file_config.database,
                    producers,
                },
                warnings,
            }),
            _ => Err(fail(problems)),
        }
    }

    pub fn producer(&self, name: &str) -> Option<&Producer> {
        self.producers.iter().find(|p| p.name == name)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `producer.1.schedule` (serde's path) → `producer[1].schedule`.
fn toml_path(dotted: &str) -> String {
    let mut out = String::new();
    for part in dotted.split('.') {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        P::Map { parent, key } => {
            let p = format_ignored(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            format_ignored(parent)
        }
    }
}

/// Replaces `${NAME}` (or `${NAME:-default}`) in every string of `v`; `$${` stays a literal `${`.
fn substitute_env(
    v: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        toml::Value::String(s) => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(missing) => {
                for name in missing {
                    problems.push(Problem {
                        path: path.clone(),
                        message: format!("environment variable {name:?} is not set"),
                    });
                }
            }
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Expands `${NAME}` references; returns the names that are unset.
pub(super) fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            match tail.find('}') {
                Some(end) => {
                    let reference = &tail[..end];
                    let (name, default) = match reference.split_once(":-") {
                        Some((name, default)) => (name, Some(default)),
                        None => (reference, None),
                    };
                    match (env(name), default) {
                        (Some(value), _) => out.push_str(&value),
                        (None, Some(default)) => out.push_str(default),
                        (None, None) => missing.push(name.to_string()),
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}
