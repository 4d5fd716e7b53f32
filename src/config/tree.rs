//! The file as parsed: a tree of values that keep their place in the text, `${VAR}` substitution in it, and TOML paths to find a value again.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// Byte offsets in the file's text.
pub(super) type Span = Range<usize>;

/// A value of the file and where it is written.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) kind: Kind,
    /// The value's bytes; a `[table]`'s run from its header.
    pub(super) span: Option<Span>,
    /// The key's bytes, for a member of a table.
    pub(super) key: Option<Span>,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Members in the order written.
    Table(Vec<(String, Node)>),
}

impl Kind {
    /// What a value is, as an error message names it: `a string`, `an array`.
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// A TOML syntax error: its message and where.
#[derive(Debug)]
pub(super) struct SyntaxError {
    pub(super) message: String,
    pub(super) span: Option<Span>,
}

/// Parses `text` into a tree of spanned values.
pub(super) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let doc = ImDocument::parse(text).map_err(|e| SyntaxError {
        // The parser's message is a description and an "expected ..." line.
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        span: e.span(),
    })?;
    Ok(Node {
        kind: table(doc.as_table()),
        span: None,
        key: None,
    })
}

fn table(t: &Table) -> Kind {
    Kind::Table(
        t.iter()
            .filter_map(|(name, item)| {
                let key = t.key(name).and_then(|k| k.span());
                item_node(item, key).map(|n| (name.to_string(), n))
            })
            .collect(),
    )
}

fn item_node(item: &Item, key: Option<Span>) -> Option<Node> {
    let (kind, span) = match item {
        Item::None => return None,
        Item::Value(v) => return Some(value_node(v, key)),
        Item::Table(t) => (table(t), t.span()),
        Item::ArrayOfTables(a) => (
            Kind::Array(
                a.iter()
                    .map(|t| Node {
                        kind: table(t),
                        span: t.span(),
                        key: None,
                    })
                    .collect(),
            ),
            a.span(),
        ),
    };
    Some(Node { kind, span, key })
}

fn value_node(v: &Value, key: Option<Span>) -> Node {
    let kind = match v {
        Value::String(s) => Kind::Str(s.value().clone()),
        Value::Integer(i) => Kind::Int(*i.value()),
        Value::Float(f) => Kind::Float(*f.value()),
        Value::Boolean(b) => Kind::Bool(*b.value()),
        Value::Datetime(d) => Kind::Datetime(d.value().to_string()),
        Value::Array(a) => Kind::Array(a.iter().map(|v| value_node(v, None)).collect()),
        Value::InlineTable(t) => Kind::Table(
            t.iter()
                .map(|(name, v)| {
                    let key = t.key(name).and_then(|k| k.span());
                    (name.to_string(), value_node(v, key))
                })
                .collect(),
        ),
    };
    Node {
        kind,
        span: v.span(),
        key,
    }
}

/// `parent.key`, the key quoted when it is not a bare TOML key.
pub(super) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// One step of a TOML path.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// `producer[1].snapshot.headers."X Key"` → its steps; `None` when it is not such a path.
pub(super) fn steps(path: &str) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '.' => {
                chars.next();
            }
            '[' => {
                chars.next();
                let digits: String = chars.by_ref().take_while(|&c| c != ']').collect();
                out.push(Step::Index(digits.parse().ok()?));
            }
            '"' => {
                chars.next();
                let mut key = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => key.push(chars.next()?),
                        c => key.push(c),
                    }
                }
                out.push(Step::Key(key));
            }
            _ => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                out.push(Step::Key(key));
            }
        }
    }
    Some(out)
}

impl Node {
    /// The node at `path`, or the deepest one written on the way to it
    /// (a table whose key is missing), with whether it is the node itself.
    pub(super) fn find(&self, path: &str) -> (&Node, bool) {
        let Some(steps) = steps(path) else {
            return (self, false);
        };
        let mut node = self;
        for step in &steps {
            let next = match (step, &node.kind) {
                (Step::Key(k), Kind::Table(members)) => {
                    members.iter().find(|(name, _)| name == k).map(|(_, n)| n)
                }
                (Step::Index(i), Kind::Array(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return (node, false),
            }
        }
        (node, true)
    }

    /// Calls `f` with every string under this node that has a span, with the span.
    pub(super) fn each_string(&self, f: &mut dyn FnMut(&str, &Span)) {
        match &self.kind {
            Kind::Str(s) => {
                if let Some(span) = &self.span {
                    f(s, span);
                }
            }
            Kind::Array(items) => items.iter().for_each(|n| n.each_string(f)),
            Kind::Table(members) => members.iter().for_each(|(_, n)| n.each_string(f)),
            _ => {}
        }
    }

    /// Every scalar's span under this node (the node's own, for a scalar).
    pub(super) fn leaf_spans(&self, out: &mut Vec<Span>) {
        match &self.kind {
            Kind::Array(items) => items.iter().for_each(|n| n.leaf_spans(out)),
            Kind::Table(members) => members.iter().for_each(|(_, n)| n.leaf_spans(out)),
            _ => out.extend(self.span.clone()),
        }
    }
}

/// Where `${VAR}` could not be substituted: the string's path, the variable, the string's span.
pub(super) struct Unset {
    pub(super) path: String,
    pub(super) name: String,
    pub(super) span: Option<Span>,
}

/// Replaces `${NAME}` (or `${NAME:-default}`) in every string of `node`; `$${` stays a literal `${`.
pub(super) fn substitute_env(
    node: &mut Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<Unset>,
) {
    match &mut node.kind {
        Kind::Str(s) => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(missing) => unset.extend(missing.into_iter().map(|name| Unset {
                path: path.to_string(),
                name,
                span: node.span.clone(),
            })),
        },
        Kind::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{path}[{i}]"), env, unset);
            }
        }
        Kind::Table(members) => {
            for (k, item) in members.iter_mut() {
                substitute_env(item, &join(path, k), env, unset);
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
