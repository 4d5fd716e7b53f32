//! The walker on a hand-written document, and a property test against `serde_json::Value::pointer`.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::canonical::parse_pointer;

#[test]
fn the_walker_streams_items_and_captures_in_one_pass() {
    let paths = Paths {
        items: parse_pointer("/pages/1/rows").unwrap(),
        captures: vec![
            parse_pointer("/meta/next").unwrap(),
            parse_pointer("/pages/0/x").unwrap(),
        ],
    };
    let text = r#"{"skip": {"deep": [1, {"a": null}]}, "pages": [{"x": 7}, {"rows": [{"id": 1}, {"id": 2}]}],
                   "meta": {"next": "c2", "other": [true]}}"#;
    let mut seen = Vec::new();
    let mut walk = Walk::new(&paths, |v: Value| {
        seen.push(v);
        Ok::<(), ()>(())
    });
    assert!(walk
        .run(&mut serde_json::Deserializer::from_str(text))
        .is_ok());
    assert!(matches!(walk.items, Found::Array));
    assert_eq!(walk.captured, vec![Some(json!("c2")), Some(json!(7))]);
    assert_eq!(seen, vec![json!({"id": 1}), json!({"id": 2})]);

    // A capture at the items array itself builds the value and still streams the items.
    let paths = Paths {
        items: parse_pointer("/d").unwrap(),
        captures: vec![parse_pointer("/d/1").unwrap()],
    };
    let mut count = 0;
    let mut walk = Walk::new(&paths, |_| {
        count += 1;
        if count > 2 {
            Err("third")
        } else {
            Ok(())
        }
    });
    let r = walk.run(&mut serde_json::Deserializer::from_str(
        r#"{"d": [1, 2, 3]}"#,
    ));
    assert!(matches!(r, Err(WalkError::Item("third"))));
    assert_eq!(walk.captured, vec![Some(json!(2))]);
}
/// One step of a path: an object member or an array index.
#[derive(Debug, Clone)]
enum Step {
    Member(String),
    Index(usize),
}

impl Step {
    /// The step as an RFC 6901 token, escaped.
    fn token(&self) -> String {
        match self {
            Step::Member(k) => k.replace('~', "~0").replace('/', "~1"),
            Step::Index(i) => i.to_string(),
        }
    }
}

fn pointer(path: &[Step]) -> String {
    path.iter().map(|s| format!("/{}", s.token())).collect()
}

/// Member names from a small alphabet, so random paths meet the document;
/// `/`, `~` and leading zeros exercise escaping and the index rule.
fn member() -> impl Strategy<Value = String> {
    prop_oneof!["[ab01/~]{0,2}", "0|1|01"]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        member().prop_map(Step::Member),
        (0usize..3).prop_map(Step::Index)
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-c\"\\\\é ]{0,4}".prop_map(Value::from),
    ];
    scalar.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((member(), inner), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Puts `target` at `path`, each level inside the matching `fillers` value
/// (replaced by an object or an array when it is not one).
fn embed(path: &[Step], fillers: &[Value], target: Value) -> Value {
    let mut inner = target;
    for (step, filler) in path.iter().zip(fillers).rev() {
        let mut outer = filler.clone();
        match step {
            Step::Member(k) => {
                if !outer.is_object() {
                    outer = json!({});
                }
                outer.as_object_mut().unwrap().insert(k.clone(), inner);
            }
            Step::Index(i) => {
                if !outer.is_array() {
                    outer = json!([]);
                }
                let a = outer.as_array_mut().unwrap();
                a.resize(a.len().max(i + 1), Value::Null);
                a[*i] = inner;
            }
        }
        inner = outer;
    }
    inner
}

/// A document with a value (most often an array) at a path, the items
/// pointer (that path, or any other), and a few pointers to capture.
fn case() -> impl Strategy<Value = (Value, String, Vec<String>)> {
    let path = prop::collection::vec(step(), 0..4);
    let target = prop_oneof![
        2 => prop::collection::vec(value(), 0..5).prop_map(Value::Array),
        1 => value(),
    ];
    (path, prop::collection::vec(value(), 4), target).prop_flat_map(|(path, fillers, target)| {
        let doc = embed(&path, &fillers, target);
        let prefixes: Vec<String> = (0..=path.len()).map(|n| pointer(&path[..n])).collect();
        let any_pointer = prop::collection::vec(step(), 0..4)
            .prop_map(|p| pointer(&p))
            .boxed();
        let near = prop_oneof![prop::sample::select(prefixes), any_pointer.clone()].boxed();
        let deeper =
            (prop::sample::select(vec![pointer(&path)]), any_pointer).prop_map(|(a, b)| a + &b);
        let items = prop_oneof![3 => Just(pointer(&path)), 1 => near.clone()];
        let captures = prop::collection::vec(prop_oneof![near, deeper], 0..4);
        (Just(doc), items, captures)
    })
}

/// What the walker found: the items pointer's outcome, the items streamed, the captures.
fn walked<'de, R: serde_json::de::Read<'de>>(
    paths: &Paths,
    mut de: serde_json::Deserializer<R>,
) -> (Found, Vec<Value>, Vec<Option<Value>>) {
    let mut seen = Vec::new();
    let mut walk = Walk::new(paths, |v| {
        seen.push(v);
        Ok::<(), ()>(())
    });
    walk.run(&mut de).unwrap();
    let Walk {
        items, captured, ..
    } = walk;
    (items, seen, captured)
}

proptest! {
    /// The walker agrees with `serde_json::Value::pointer` on the parsed
    /// document, read from a slice or from a reader: the items at the
    /// pointer in order, or why there are none, and each captured value.
    #[test]
    fn the_walker_finds_what_value_pointer_finds((doc, items, captures) in case()) {
        let text = serde_json::to_string(&doc).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let paths = Paths {
            items: parse_pointer(&items).unwrap(),
            captures: captures.iter().map(|c| parse_pointer(c).unwrap()).collect(),
        };
        let (found, streamed) = match parsed.pointer(&items) {
            None => (Found::Missing, Vec::new()),
            Some(Value::Array(a)) => (Found::Array, a.clone()),
            Some(other) => (Found::NotArray(type_name(other)), Vec::new()),
        };
        let captured: Vec<Option<Value>> =
            captures.iter().map(|c| parsed.pointer(c).cloned()).collect();
        let expected = (found, streamed, captured);
        let from_slice = walked(&paths, serde_json::Deserializer::from_slice(text.as_bytes()));
        prop_assert_eq!(&from_slice, &expected);
        let from_reader = walked(&paths, serde_json::Deserializer::from_reader(text.as_bytes()));
        prop_assert_eq!(&from_reader, &expected);
    }
}
