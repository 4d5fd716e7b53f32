//! The streaming serde walker: one pass over a JSON document that hands the
//! elements of the items array to a callback, captures a few small values, and
//! skips everything else without building it. Pure.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::canonical::type_name;

/// The pointers a [`Walk`] follows, as unescaped tokens.
pub(super) struct Paths {
    /// Where the array of items is; its elements go to the callback.
    pub(super) items: Vec<String>,
    /// Small values to capture (at most 32).
    pub(super) captures: Vec<Vec<String>>,
}

/// What the items pointer led to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    Missing,
    NotArray(&'static str),
    Array,
}

#[derive(Debug)]
pub(super) enum WalkError<E> {
    /// The callback rejected an item.
    Item(E),
    Json(serde_json::Error),
}

/// One pass over a JSON document: streams the items array to `on_item`, captures
/// the values at `captures`, and skips everything else without building it.
pub(super) struct Walk<'p, F, E> {
    paths: &'p Paths,
    on_item: F,
    pub(super) items: Found,
    pub(super) captured: Vec<Option<Value>>,
    failed: Option<E>,
}

impl<'p, F, E> Walk<'p, F, E>
where
    F: FnMut(Value) -> Result<(), E>,
{
    pub(super) fn new(paths: &'p Paths, on_item: F) -> Self {
        debug_assert!(paths.captures.len() <= 32);
        Self {
            paths,
            on_item,
            items: Found::Missing,
            captured: vec![None; paths.captures.len()],
            failed: None,
        }
    }

    pub(super) fn run<'de, R: serde_json::de::Read<'de>>(
        &mut self,
        de: &mut serde_json::Deserializer<R>,
    ) -> Result<(), WalkError<E>> {
        let active = Active {
            items: true,
            captures: (1u64 << self.paths.captures.len()).wrapping_sub(1) as u32,
        };
        let walked = Node {
            walk: &mut *self,
            depth: 0,
            active,
        }
        .deserialize(&mut *de)
        .and_then(|()| de.end());
        walked.map_err(|e| match self.failed.take() {
            Some(failed) => WalkError::Item(failed),
            None => WalkError::Json(e),
        })
    }

    fn item(&mut self, item: Value) -> Result<(), &'static str> {
        (self.on_item)(item).map_err(|e| {
            self.failed = Some(e);
            "item rejected"
        })
    }

    /// Takes what the active paths want from an already built value.
    fn take_from_value(
        &mut self,
        v: &Value,
        depth: usize,
        active: Active,
    ) -> Result<(), &'static str> {
        let paths = self.paths;
        for (i, tokens) in paths.captures.iter().enumerate() {
            if active.captures & (1 << i) != 0 {
                if let Some(x) = lookup(v, &tokens[depth..]) {
                    self.captured[i] = Some(x.clone());
                }
            }
        }
        if active.items {
            match lookup(v, &paths.items[depth..]) {
                None => {}
                Some(Value::Array(items)) => {
                    self.items = Found::Array;
                    for item in items {
                        self.item(item.clone())?;
                    }
                }
                Some(other) => self.items = Found::NotArray(type_name(other)),
            }
        }
        Ok(())
    }
}

/// The paths still matching at a node: items, and a bit per capture.
#[derive(Clone, Copy)]
struct Active {
    items: bool,
    captures: u32,
}

impl Active {
    fn is_empty(self) -> bool {
        !self.items && self.captures == 0
    }

    fn step(self, paths: &Paths, depth: usize, token: &str) -> Self {
        let mut captures = 0;
        for (i, tokens) in paths.captures.iter().enumerate() {
            if self.captures & (1 << i) != 0 && tokens.get(depth).is_some_and(|t| t == token) {
                captures |= 1 << i;
            }
        }
        Self {
            items: self.items && paths.items.get(depth).is_some_and(|t| t == token),
            captures,
        }
    }

    fn capture_ends(self, paths: &Paths, depth: usize) -> bool {
        paths
            .captures
            .iter()
            .enumerate()
            .any(|(i, t)| self.captures & (1 << i) != 0 && t.len() == depth)
    }
}

/// A node of the document reached along at least one active path.
struct Node<'w, 'p, F, E> {
    walk: &'w mut Walk<'p, F, E>,
    depth: usize,
    active: Active,
}

impl<'de, F, E> DeserializeSeed<'de> for Node<'_, '_, F, E>
where
    F: FnMut(Value) -> Result<(), E>,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let paths = self.walk.paths;
        let items_here = self.active.items && paths.items.len() == self.depth;
        // A capture ending here, or one going on into the items array, needs the
        // value built (it is small in any sensible config).
        if self.active.captures != 0 && (items_here || self.active.capture_ends(paths, self.depth))
        {
            let v = Value::deserialize(d)?;
            return self
                .walk
                .take_from_value(&v, self.depth, self.active)
                .map_err(de::Error::custom);
        }
        d.deserialize_any(NodeVisitor {
            walk: self.walk,
            depth: self.depth,
            active: self.active,
            items_here,
        })
    }
}

struct NodeVisitor<'w, 'p, F, E> {
    walk: &'w mut Walk<'p, F, E>,
    depth: usize,
    active: Active,
    items_here: bool,
}

impl<F, E> NodeVisitor<'_, '_, F, E> {
    fn scalar<X>(self, found: &'static str) -> Result<(), X> {
        if self.items_here {
            self.walk.items = Found::NotArray(found);
        }
        Ok(())
    }
}

impl<'de, F, E> Visitor<'de> for NodeVisitor<'_, '_, F, E>
where
    F: FnMut(Value) -> Result<(), E>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<X: de::Error>(self, _: bool) -> Result<(), X> {
        self.scalar("a boolean")
    }

    fn visit_i64<X: de::Error>(self, _: i64) -> Result<(), X> {
        self.scalar("a number")
    }

    fn visit_u64<X: de::Error>(self, _: u64) -> Result<(), X> {
        self.scalar("a number")
    }

    fn visit_f64<X: de::Error>(self, _: f64) -> Result<(), X> {
        self.scalar("a number")
    }

    fn visit_str<X: de::Error>(self, _: &str) -> Result<(), X> {
        self.scalar("a string")
    }

    fn visit_unit<X: de::Error>(self) -> Result<(), X> {
        self.scalar("null")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.items_here {
            self.walk.items = Found::NotArray("an object");
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let paths = self.walk.paths;
        while let Some(key) = map.next_key::<String>()? {
            let sub = self.active.step(paths, self.depth, &key);
            if sub.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Node {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                    active: sub,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.items_here {
            self.walk.items = Found::Array;
            while let Some(item) = seq.next_element::<Value>()? {
                self.walk.item(item).map_err(de::Error::custom)?;
            }
            return Ok(());
        }
        let paths = self.walk.paths;
        let mut token = String::new();
        for index in 0usize.. {
            token.clear();
            let _ = write!(token, "{index}");
            let sub = self.active.step(paths, self.depth, &token);
            let more = if sub.is_empty() {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Node {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                    active: sub,
                })?
                .is_some()
            };
            if !more {
                break;
            }
        }
        Ok(())
    }
}

/// The value at unescaped pointer `tokens` (array members by decimal index).
pub(super) fn lookup<'v>(v: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    tokens.iter().try_fold(v, |v, t| match v {
        Value::Object(m) => m.get(t),
        // Same rule as the streaming walker: the token is the index in decimal.
        Value::Array(a) => t
            .parse::<usize>()
            .ok()
            .filter(|i| i.to_string() == *t)
            .and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
