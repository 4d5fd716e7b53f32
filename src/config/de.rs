//! Reading the parsed tree into the file's types while collecting every problem (a value of the wrong type, an unknown key or value, an integer its type cannot hold, a missing key), each bad value given a stand-in so the rest is still read and validated.
//!
//! serde's derived code stops at the first error, so the deserializer never
//! returns one for a bad value: it records the problem and hands the visitor
//! a stand-in of the type asked for (`0`, `""`, the first variant, a table of
//! stand-ins), and marks the path poisoned so no later check reports the same
//! mistake again. A missing required key is only known once the derived code
//! asks for it; the read then starts over with a stand-in for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::value::{StrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::tree::{join, Kind, Node, Span};

/// A problem found in the file, located by TOML path and, when known, span.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) path: String,
    pub(super) message: String,
    pub(super) span: Option<Span>,
    /// Whether the problem is the key itself (unknown, invalid) rather than its value.
    pub(super) on_key: bool,
}

/// An integer its field's type cannot hold (`bucket_bits = 300` for a `u8`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Overflow {
    pub(super) value: i64,
    pub(super) min: i128,
    pub(super) max: i128,
}

/// What a read of the tree found besides the values.
#[derive(Debug, Default)]
pub(super) struct Read {
    pub(super) found: Vec<Found>,
    /// Paths whose value was replaced by a stand-in after a problem was
    /// reported there: checks of these paths, and below, report nothing more.
    pub(super) poisoned: BTreeSet<String>,
    /// Integers out of their type's range, left for the range checks to report.
    pub(super) overflows: BTreeMap<String, Overflow>,
    /// Values never to print: secrets, unknown keys' values, values where a table was expected.
    pub(super) hidden: Vec<Span>,
    /// Required keys found missing by an earlier pass: `(table path, key)`.
    fill: BTreeSet<(String, &'static str)>,
}

impl Read {
    /// Whether `path`, or a table or array holding it, was poisoned.
    pub(super) fn is_poisoned(&self, path: &str) -> bool {
        under(&self.poisoned, path)
    }

    pub(super) fn poison(&mut self, path: String, message: String, span: Option<Span>) {
        self.found.push(Found {
            path: path.clone(),
            message,
            span,
            on_key: false,
        });
        self.poisoned.insert(path);
    }
}

/// Whether `path` is one of `roots` or lies under one.
fn under(roots: &BTreeSet<String>, path: &str) -> bool {
    let mut end = path.len();
    loop {
        if roots.contains(&path[..end]) {
            return true;
        }
        match path[..end].rfind(['.', '[']) {
            Some(i) => end = i,
            None => return false,
        }
    }
}

/// Reads `root` into `T`, collecting every problem.
pub(super) fn read<T: DeserializeOwned>(root: &Node) -> (Option<T>, Read) {
    let mut fill = BTreeSet::new();
    loop {
        let mut read = Read {
            fill: fill.clone(),
            ..Read::default()
        };
        let de = De {
            node: Some(root),
            path: String::new(),
            secret: false,
            read: &mut read,
        };
        match T::deserialize(de) {
            Ok(value) => return (Some(value), read),
            Err(Error {
                missing: Some(key),
                path: Some(path),
                ..
            }) if fill.insert((path.clone(), key)) => continue,
            Err(e) => {
                // The types have no error of their own besides missing keys;
                // should one appear, it is reported rather than hidden.
                read.found.push(Found {
                    path: e.path.unwrap_or_default(),
                    message: e.message,
                    span: None,
                    on_key: false,
                });
                return (None, read);
            }
        }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The field names serde's derived `Deserialize` of `T` reads, if `T` is
/// a struct (else none): asked by a deserializer that only records them.
pub(super) fn fields_of<'de, T: de::Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The nearest of `candidates` to `word`, when one is close enough to be what was meant.
pub(super) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = word.chars().count().max(3) / 3;
    candidates
        .iter()
        .map(|c| {
            let d = if c.eq_ignore_ascii_case(word) {
                0
            } else {
                distance(word, c)
            };
            (d, *c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance (insertions, deletions, substitutions, adjacent swaps).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![(0..=b.len()).collect::<Vec<_>>()];
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (rows[i - 1][j] + 1)
                .min(row[j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(rows[i - 2][j - 2] + 1);
            }
        }
        rows.push(row);
    }
    rows[a.len()][b.len()]
}

/// `one of `a`, `b``, and the nearest when one is close.
fn expected_one_of(word: &str, candidates: &[&str]) -> String {
    let list = candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match suggest(word, candidates) {
        Some(s) => format!("expected one of {list}; did you mean `{s}`?"),
        None => format!("expected one of {list}"),
    }
}

/// Only the derived code's own errors travel up; bad values never do.
#[derive(Debug)]
pub(super) struct Error {
    missing: Option<&'static str>,
    message: String,
    path: Option<String>,
}

impl Error {
    fn at(mut self, path: &str) -> Self {
        self.path.get_or_insert_with(|| path.to_string());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            missing: None,
            message: msg.to_string(),
            path: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            missing: Some(field),
            message: format!("missing key `{field}`"),
            path: None,
        }
    }
}

/// One value of the tree being read, or a stand-in (`node: None`).
struct De<'n, 'r> {
    node: Option<&'n Node>,
    path: String,
    /// Inside a [`super::Secret`]: the value is never named.
    secret: bool,
    read: &'r mut Read,
}

impl<'n, 'r> De<'n, 'r> {
    /// Reports a value of the wrong type and poisons its path.
    fn wrong(&mut self, expected: &str) {
        let Some(node) = self.node else { return };
        let container = matches!(expected, "a table" | "an array");
        let shown = match &node.kind {
            _ if self.secret || container => String::new(),
            Kind::Str(s) => format!(" {s:?}"),
            Kind::Int(i) => format!(" {i}"),
            Kind::Float(f) => format!(" {f}"),
            Kind::Bool(b) => format!(" {b}"),
            Kind::Datetime(d) => format!(" {d}"),
            Kind::Array(_) | Kind::Table(_) => String::new(),
        };
        if self.secret || container {
            node.leaf_spans(&mut self.read.hidden);
        }
        let mut message = format!("expected {expected}, found {}{shown}", node.kind.describe());
        if expected == "an array" && matches!(node.kind, Kind::Table(_)) {
            // `[producer]` for `[[producer]]`, the likeliest slip of all.
            let mut header = String::new();
            let mut skip = false;
            for c in self.path.chars() {
                match c {
                    '[' => skip = true,
                    ']' => skip = false,
                    c if !skip => header.push(c),
                    _ => {}
                }
            }
            message.push_str(&format!(" (each table of an array is headed [[{header}]])"));
        }
        self.read.poison(
            self.path.clone(),
            message,
            node.span.clone().or(node.key.clone()),
        );
    }

    fn kind(&self) -> Option<&'n Kind> {
        self.node.map(|n| &n.kind)
    }

    fn integer(&mut self, min: i128, max: i128) -> Option<i128> {
        match self.kind() {
            Some(Kind::Int(i)) => {
                let i = *i;
                if (min..=max).contains(&i128::from(i)) {
                    Some(i128::from(i))
                } else {
                    self.read
                        .overflows
                        .insert(self.path.clone(), Overflow { value: i, min, max });
                    None
                }
            }
            Some(_) => {
                self.wrong("an integer");
                None
            }
            None => None,
        }
    }

    fn string(&mut self) -> String {
        match self.kind() {
            Some(Kind::Str(s)) => s.clone(),
            Some(_) => {
                self.wrong("a string");
                String::new()
            }
            None => String::new(),
        }
    }

    fn map(self, members: Vec<(String, Option<&'n Node>)>) -> Map<'n, 'r> {
        Map {
            members: members.into_iter(),
            value: None,
            path: self.path,
            read: self.read,
        }
    }
}

macro_rules! integer {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
            let min = i128::try_from(<$ty>::MIN).unwrap_or(i128::MIN);
            let max = i128::try_from(<$ty>::MAX).unwrap_or(i128::MAX);
            let value = self
                .integer(min, max)
                .and_then(|i| <$ty>::try_from(i).ok())
                .unwrap_or(0);
            visitor.$visit(value)
        }
    };
}

impl<'de> de::Deserializer<'de> for De<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.kind() {
            None => visitor.visit_unit(),
            Some(Kind::Str(s) | Kind::Datetime(s)) => visitor.visit_string(s.clone()),
            Some(Kind::Int(i)) => visitor.visit_i64(*i),
            Some(Kind::Float(f)) => visitor.visit_f64(*f),
            Some(Kind::Bool(b)) => visitor.visit_bool(*b),
            Some(Kind::Array(_)) => self.deserialize_seq(visitor),
            Some(Kind::Table(_)) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        match self.kind() {
            Some(Kind::Bool(b)) => visitor.visit_bool(*b),
            Some(_) => {
                self.wrong("a boolean");
                visitor.visit_bool(false)
            }
            None => visitor.visit_bool(false),
        }
    }

    integer!(deserialize_i8, visit_i8, i8);
    integer!(deserialize_i16, visit_i16, i16);
    integer!(deserialize_i32, visit_i32, i32);
    integer!(deserialize_i64, visit_i64, i64);
    integer!(deserialize_u8, visit_u8, u8);
    integer!(deserialize_u16, visit_u16, u16);
    integer!(deserialize_u32, visit_u32, u32);
    integer!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        match self.kind() {
            Some(Kind::Float(f)) => visitor.visit_f64(*f),
            // An integer is a number too: `max_interval_secs = 3600`.
            Some(Kind::Int(i)) => visitor.visit_f64(*i as f64),
            Some(_) => {
                self.wrong("a number");
                visitor.visit_f64(0.0)
            }
            None => visitor.visit_f64(0.0),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_string(self.string())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node {
            None => visitor.visit_none(),
            Some(_) => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == super::types::SECRET {
            self.secret = true;
            if let Some(node) = self.node {
                node.leaf_spans(&mut self.read.hidden);
            }
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let items: Vec<&Node> = match self.kind() {
            Some(Kind::Array(items)) => items.iter().collect(),
            Some(_) => {
                self.wrong("an array");
                Vec::new()
            }
            None => Vec::new(),
        };
        let path = self.path.clone();
        visitor
            .visit_seq(Seq {
                items: items.into_iter().enumerate(),
                path: self.path,
                read: self.read,
            })
            .map_err(|e| e.at(&path))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let members: Vec<(String, Option<&Node>)> = match self.node.map(|n| &n.kind) {
            Some(Kind::Table(members)) => {
                members.iter().map(|(k, n)| (k.clone(), Some(n))).collect()
            }
            Some(_) => {
                self.wrong("a table");
                Vec::new()
            }
            None => Vec::new(),
        };
        let path = self.path.clone();
        visitor
            .visit_map(self.map(members))
            .map_err(|e| e.at(&path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let members: Vec<(String, Option<&Node>)> = match self.node.map(|n| (n, &n.kind)) {
            Some((node, Kind::Table(members))) => {
                let mut out = Vec::with_capacity(fields.len());
                for (key, value) in members {
                    if fields.contains(&key.as_str()) {
                        out.push((key.clone(), Some(value)));
                        continue;
                    }
                    let homes: Vec<&str> = super::types::tables()
                        .into_iter()
                        .filter(|(_, keys)| keys.contains(&key.as_str()))
                        .map(|(table, _)| table)
                        .collect();
                    let message = match (homes.as_slice(), suggest(key, fields)) {
                        ([], Some(s)) => format!("unknown key `{key}`, did you mean `{s}`?"),
                        ([], None) => format!("unknown key `{key}`"),
                        (homes, _) => {
                            format!("unknown key `{key}` here, it belongs in {}", one_of(homes))
                        }
                    };
                    // What follows an unknown key may be a mistyped secret.
                    value.leaf_spans(&mut self.read.hidden);
                    let path = join(&self.path, key);
                    self.read.found.push(Found {
                        path: path.clone(),
                        message,
                        span: value.key.clone().or(value.span.clone()),
                        on_key: true,
                    });
                    self.read.poisoned.insert(path);
                }
                for field in fields {
                    let missing = !members.iter().any(|(k, _)| k == field);
                    if missing && self.read.fill.contains(&(self.path.clone(), *field)) {
                        self.read.found.push(Found {
                            path: self.path.clone(),
                            message: format!("missing key `{field}`"),
                            span: node.span.clone().or(node.key.clone()),
                            on_key: false,
                        });
                        self.read.poisoned.insert(join(&self.path, field));
                        out.push((field.to_string(), None));
                    }
                }
                out
            }
            Some(_) => {
                self.wrong("a table");
                fields.iter().map(|f| (f.to_string(), None)).collect()
            }
            None => fields.iter().map(|f| (f.to_string(), None)).collect(),
        };
        let path = self.path.clone();
        visitor
            .visit_map(self.map(members))
            .map_err(|e| e.at(&path))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let first = variants.first().copied().unwrap_or_default();
        let variant = match self.kind() {
            Some(Kind::Str(s)) if variants.contains(&s.as_str()) => s.clone(),
            Some(Kind::Str(s)) => {
                let message = format!("unknown value {s:?}, {}", expected_one_of(s, variants));
                let span = self.node.and_then(|n| n.span.clone());
                self.read.poison(self.path.clone(), message, span);
                first.to_string()
            }
            Some(_) => {
                self.wrong("a string");
                first.to_string()
            }
            None => first.to_string(),
        };
        visitor.visit_enum(StringDeserializer::<Error>::new(variant))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// The members of a table being read, stand-ins included.
struct Map<'n, 'r> {
    members: std::vec::IntoIter<(String, Option<&'n Node>)>,
    value: Option<(String, Option<&'n Node>)>,
    path: String,
    read: &'r mut Read,
}

impl<'de> MapAccess<'de> for Map<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, node)) = self.members.next() else {
            return Ok(None);
        };
        let k = seed.deserialize(StrDeserializer::<Error>::new(&key))?;
        self.value = Some((key, node));
        Ok(Some(k))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (key, node) = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value asked for before its key"))?;
        seed.deserialize(De {
            node,
            path: join(&self.path, &key),
            secret: false,
            read: self.read,
        })
    }
}

/// The items of an array being read.
struct Seq<'n, 'r, I: Iterator<Item = (usize, &'n Node)>> {
    items: I,
    path: String,
    read: &'r mut Read,
}

impl<'de, 'n, I: Iterator<Item = (usize, &'n Node)>> SeqAccess<'de> for Seq<'n, '_, I> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(De {
            node: Some(node),
            path: format!("{}[{i}]", self.path),
            secret: false,
            read: self.read,
        })
        .map(Some)
    }
}
