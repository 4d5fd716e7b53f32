//! What a delta asks for: the payload mapping of webhooks, the rules of emails, dedup keys and the headers kept. Pure: no IO, no clock.
//!
//! A webhook body holds one record (`items = ""`) or an array of records (at
//! the `items` pointer). Per record, `key`, `version` and `deleted` are read
//! relative to the record; `event` is read from the record, else from the
//! whole body (where envelopes such as `{"type": …, "data": […]}` keep it). A
//! record becomes a deletion when `deleted` is `true` or the event is one of
//! `delete_events`; otherwise a full record (`replace`) or a merge patch.
//! An absent or null version means none: arrival order decides for that record.

use axum::http::HeaderMap;
use serde_json::Value;

use crate::canonical::{key_string, type_name, version_value};
use crate::config::{DeltaMode, SignatureScheme, WebhookConfig};
use crate::entity::{Change, EntityWrite, Source, WriteRule};
use crate::ingest::email::{self, RuleMatch, Rules};

/// Longest accepted entity key, in bytes (keys are indexed).
pub(crate) const MAX_KEY_BYTES: usize = 512;
/// Dedup keys longer than this are stored as their blake3 digest.
const MAX_DEDUP_BYTES: usize = 200;
/// Longest reason kept for a rejected or unmatched delta.
const MAX_REASON_CHARS: usize = 500;
/// Longest header value kept in the inbox.
const MAX_HEADER_CHARS: usize = 512;

/// What a delta asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Entity writes, in the body's order.
    Writes(Vec<EntityWrite>),
    /// Records to fetch from the producer (a thin delta names only keys).
    Fetch(Vec<String>),
    /// Not a usable delta; the reason.
    Rejected(String),
    /// An email no rule matched; the reason, rule by rule.
    Unmatched(String),
}

/// The entity writes a webhook body asks for under `w`'s mapping.
pub(crate) fn webhook_plan(w: &WebhookConfig, body: &[u8], source: Source) -> Plan {
    match webhook_writes(w, body, source) {
        Ok(writes) if w.mode == DeltaMode::Fetch => {
            let mut keys: Vec<String> = writes.into_iter().map(|w| w.key).collect();
            keys.sort_unstable();
            keys.dedup();
            Plan::Fetch(keys)
        }
        Ok(writes) => Plan::Writes(writes),
        Err(reason) => Plan::Rejected(bounded(reason)),
    }
}

fn webhook_writes(
    w: &WebhookConfig,
    body: &[u8],
    source: Source,
) -> Result<Vec<EntityWrite>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if w.items.is_empty() {
        return Ok(vec![record_write(w, &doc, &doc, source)?]);
    }
    let records = match doc.pointer(&w.items) {
        Some(Value::Array(records)) => records,
        Some(other) => {
            return Err(format!(
                "items pointer {:?} holds {}, not an array",
                w.items,
                type_name(other)
            ))
        }
        None => return Err(format!("no array at items pointer {:?}", w.items)),
    };
    records
        .iter()
        .enumerate()
        .map(|(i, r)| record_write(w, &doc, r, source).map_err(|e| format!("record {i}: {e}")))
        .collect()
}

fn record_write(
    w: &WebhookConfig,
    doc: &Value,
    record: &Value,
    source: Source,
) -> Result<EntityWrite, String> {
    let key = match record.pointer(&w.key) {
        Some(v) => key_string(v).ok_or_else(|| {
            format!(
                "key at {:?} is {}, not a string or an integer",
                w.key,
                type_name(v)
            )
        })?,
        None => return Err(format!("no key at {:?}", w.key)),
    };
    check_key(&key)?;
    let version = match w.version.as_deref().and_then(|p| record.pointer(p)) {
        None | Some(Value::Null) => None,
        Some(v) => Some(version_value(v)?),
    };
    let deleted = w
        .deleted
        .as_deref()
        .is_some_and(|p| record.pointer(p) == Some(&Value::Bool(true)));
    let event = w
        .event
        .as_deref()
        .and_then(|p| record.pointer(p).or_else(|| doc.pointer(p)))
        .and_then(Value::as_str);
    let delete_event = event.is_some_and(|e| w.delete_events.iter().any(|d| d == e));
    let change = if deleted || delete_event {
        Change::Delete
    } else {
        match w.mode {
            DeltaMode::Replace | DeltaMode::Fetch => Change::Replace(record.clone()),
            DeltaMode::MergePatch => Change::MergePatch(record.clone()),
        }
    };
    Ok(EntityWrite {
        key,
        change,
        version,
        source,
        rule: WriteRule::IfNewer,
    })
}

/// The keys a webhook body names under `w`'s mapping, read leniently: the
/// records whose key can be read, whatever else is wrong with the body (to
/// say which keys a refused delta was about).
pub(crate) fn keys_named(w: &WebhookConfig, body: &[u8]) -> Vec<String> {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let records = if w.items.is_empty() {
        std::slice::from_ref(&doc)
    } else {
        match doc.pointer(&w.items) {
            Some(Value::Array(records)) => records.as_slice(),
            _ => &[],
        }
    };
    records
        .iter()
        .filter_map(|r| key_string(r.pointer(&w.key)?))
        .filter(|k| check_key(k).is_ok())
        .collect()
}

/// The write a raw email asks for under `rules`, and its `Message-ID`.
pub(crate) fn email_plan(rules: &Rules, raw: &[u8], source: Source) -> (Plan, Option<String>) {
    let parsed = match email::parse(raw) {
        Ok(p) => p,
        Err(e) => return (Plan::Rejected(e.to_string()), None),
    };
    let plan = match rules.apply(&parsed) {
        RuleMatch::Matched {
            key,
            version,
            patch,
            fetch,
            ..
        } => match check_key(&key) {
            Ok(()) if fetch => Plan::Fetch(vec![key]),
            Ok(()) => Plan::Writes(vec![EntityWrite {
                key,
                change: Change::MergePatch(patch),
                version,
                source,
                rule: WriteRule::IfNewer,
            }]),
            Err(reason) => Plan::Rejected(reason),
        },
        RuleMatch::Unmatched { reason } => Plan::Unmatched(bounded(reason)),
    };
    (plan, parsed.message_id)
}

/// Keys are stored and indexed: non-empty, bounded, no control characters.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key of {} bytes exceeds {MAX_KEY_BYTES} bytes",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains a control character".into());
    }
    Ok(())
}

/// A reason cut to a length fit for a response and a column.
fn bounded(reason: String) -> String {
    if reason.chars().count() <= MAX_REASON_CHARS {
        return reason;
    }
    let mut cut: String = reason.chars().take(MAX_REASON_CHARS).collect();
    cut.push('…');
    cut
}

/// The delivery id of a webhook: the `dedup_header` value, else the value at
/// `dedup_pointer` in the body, else (`standard-webhooks`) the `webhook-id`.
pub(crate) fn webhook_dedup_key(
    w: &WebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let from_body = || {
        let pointer = w.dedup_pointer.as_deref()?;
        let doc: Value = serde_json::from_slice(body).ok()?;
        doc.pointer(pointer).and_then(key_string)
    };
    w.dedup_header
        .as_deref()
        .and_then(header)
        .or_else(from_body)
        .or_else(|| {
            (w.scheme == SignatureScheme::StandardWebhooks)
                .then(|| header("webhook-id"))
                .flatten()
        })
        .and_then(|k| dedup_key(&k))
}

/// A delivery id as stored: trimmed; `None` when empty; a long or odd one
/// (over 200 bytes, control characters) as `b3:` and its blake3 digest.
pub(crate) fn dedup_key(raw: &str) -> Option<String> {
    let k = raw.trim();
    if k.is_empty() {
        None
    } else if k.len() > MAX_DEDUP_BYTES || k.chars().any(char::is_control) {
        Some(format!("b3:{}", blake3::hash(k.as_bytes()).to_hex()))
    } else {
        Some(k.to_string())
    }
}

/// Headers that carry signatures or credentials: never kept.
fn is_secret_header(name: &str, w: Option<&WebhookConfig>) -> bool {
    const SIGNATURES: &[&str] = &[
        "authorization",
        "cookie",
        "webhook-signature",
        "stripe-signature",
        "x-hub-signature",
        "x-hub-signature-256",
    ];
    SIGNATURES.contains(&name)
        || w.and_then(|w| w.header.as_deref())
            .is_some_and(|h| h.eq_ignore_ascii_case(name))
}

/// The headers kept with a delta, as a JSON object: content type, user agent,
/// and the delivery id headers (`dedup_header`, `webhook-id`); never a
/// signature or a credential.
pub(crate) fn kept_headers(headers: &HeaderMap, w: Option<&WebhookConfig>) -> String {
    let mut names: Vec<String> = vec!["content-type".into(), "user-agent".into()];
    if let Some(w) = w {
        if let Some(h) = &w.dedup_header {
            names.push(h.to_ascii_lowercase());
        }
        if w.scheme == SignatureScheme::StandardWebhooks {
            names.push("webhook-id".into());
        }
    }
    let mut kept = serde_json::Map::new();
    for name in names {
        if is_secret_header(&name, w) || kept.contains_key(&name) {
            continue;
        }
        if let Some(v) = headers.get(name.as_str()) {
            let v: String = String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(MAX_HEADER_CHARS)
                .collect();
            kept.insert(name, Value::String(v));
        }
    }
    Value::Object(kept).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};
    use serde_json::json;

    fn cfg(extra: Value) -> WebhookConfig {
        let mut base = json!({"scheme": "none", "key": "/id", "version": "/v"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn put(key: &str, doc: Value, version: Option<i64>) -> EntityWrite {
        EntityWrite {
            key: key.into(),
            change: Change::Replace(doc),
            version,
            source: Source::Webhook,
            rule: WriteRule::IfNewer,
        }
    }

    fn with(change: Change, key: &str, version: Option<i64>) -> EntityWrite {
        EntityWrite {
            change,
            ..put(key, json!(null), version)
        }
    }

    #[test]
    fn webhook_mapping_table() {
        let one = cfg(json!({}));
        let many = cfg(json!({"items": "/data", "event": "/type",
            "delete_events": ["order.deleted"], "deleted": "/gone"}));
        let patch = cfg(json!({"mode": "merge-patch"}));
        let cases: Vec<(&str, &WebhookConfig, Value, Plan)> = vec![
            (
                "one record",
                &one,
                json!({"id": "a", "v": 3}),
                Plan::Writes(vec![put("a", json!({"id": "a", "v": 3}), Some(3))]),
            ),
            (
                "integer key, RFC 3339 version",
                &one,
                json!({"id": 7, "v": "1970-01-01T00:00:01Z"}),
                Plan::Writes(vec![put(
                    "7",
                    json!({"id": 7, "v": "1970-01-01T00:00:01Z"}),
                    Some(1_000_000_000),
                )]),
            ),
            (
                "no version",
                &one,
                json!({"id": "a"}),
                Plan::Writes(vec![put("a", json!({"id": "a"}), None)]),
            ),
            (
                "merge patch",
                &patch,
                json!({"id": "a", "v": 1, "s": null}),
                Plan::Writes(vec![with(
                    Change::MergePatch(json!({"id": "a", "v": 1, "s": null})),
                    "a",
                    Some(1),
                )]),
            ),
            (
                "array, envelope delete event",
                &many,
                json!({"type": "order.deleted", "data": [{"id": "a", "v": 2}, {"id": "b", "v": 2}]}),
                Plan::Writes(vec![
                    with(Change::Delete, "a", Some(2)),
                    with(Change::Delete, "b", Some(2)),
                ]),
            ),
            (
                "array, per-record flags",
                &many,
                json!({"type": "order.updated", "data": [{"id": "a", "v": 2, "gone": true}, {"id": "b", "v": 2, "gone": false}]}),
                Plan::Writes(vec![
                    with(Change::Delete, "a", Some(2)),
                    put("b", json!({"id": "b", "v": 2, "gone": false}), Some(2)),
                ]),
            ),
            (
                "record event wins over the envelope",
                &many,
                json!({"type": "order.updated", "data": [{"id": "a", "type": "order.deleted"}]}),
                Plan::Writes(vec![with(Change::Delete, "a", None)]),
            ),
            (
                "empty array",
                &many,
                json!({"data": []}),
                Plan::Writes(vec![]),
            ),
            (
                "no key",
                &one,
                json!({"v": 1}),
                Plan::Rejected("no key at \"/id\"".into()),
            ),
            (
                "key of the wrong type",
                &one,
                json!({"id": 1.5}),
                Plan::Rejected("key at \"/id\" is a number, not a string or an integer".into()),
            ),
            (
                "empty key",
                &one,
                json!({"id": ""}),
                Plan::Rejected("key is empty".into()),
            ),
            (
                "control character in key",
                &one,
                json!({"id": "a\u{0}b"}),
                Plan::Rejected("key contains a control character".into()),
            ),
            (
                "bad version",
                &one,
                json!({"id": "a", "v": true}),
                Plan::Rejected(
                    "version true is neither an integer nor an RFC 3339 timestamp".into(),
                ),
            ),
            (
                "items not an array",
                &many,
                json!({"data": {"id": "a"}}),
                Plan::Rejected("items pointer \"/data\" holds an object, not an array".into()),
            ),
            (
                "items absent",
                &many,
                json!({"id": "a"}),
                Plan::Rejected("no array at items pointer \"/data\"".into()),
            ),
            (
                "bad record in an array",
                &many,
                json!({"data": [{"id": "a"}, {"x": 1}]}),
                Plan::Rejected("record 1: no key at \"/id\"".into()),
            ),
        ];
        for (name, w, body, expected) in cases {
            let got = webhook_plan(w, body.to_string().as_bytes(), Source::Webhook);
            assert_eq!(got, expected, "{name}");
        }
        let long = json!({"id": "k".repeat(MAX_KEY_BYTES + 1)});
        assert_eq!(
            webhook_plan(&one, long.to_string().as_bytes(), Source::Webhook),
            Plan::Rejected(format!(
                "key of {} bytes exceeds {MAX_KEY_BYTES} bytes",
                MAX_KEY_BYTES + 1
            ))
        );
    }

    #[test]
    fn malformed_json_is_rejected_with_the_parser_reason() {
        let Plan::Rejected(reason) = webhook_plan(&cfg(json!({})), b"{\"id\": ", Source::Webhook)
        else {
            panic!("not rejected")
        };
        assert!(reason.starts_with("body is not JSON: "), "{reason}");
        let huge = format!("{{\"id\": \"a\", \"v\": \"{}\"}}", "x".repeat(5000));
        let Plan::Rejected(reason) =
            webhook_plan(&cfg(json!({})), huge.as_bytes(), Source::Webhook)
        else {
            panic!("not rejected")
        };
        assert!(reason.chars().count() <= MAX_REASON_CHARS + 1, "{reason}");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn dedup_keys() {
        let sw = cfg(json!({"scheme": "standard-webhooks", "secret": "whsec_c2VjcmV0"}));
        let by_header = cfg(json!({"dedup_header": "X-Delivery", "dedup_pointer": "/event_id"}));
        let by_pointer = cfg(json!({"dedup_pointer": "/event_id"}));
        let body = br#"{"event_id": 42}"#;
        type Case<'a> = (
            &'a str,
            &'a WebhookConfig,
            HeaderMap,
            &'a [u8],
            Option<String>,
        );
        let cases: Vec<Case> = vec![
            (
                "header wins",
                &by_header,
                headers(&[("x-delivery", " d-1 ")]),
                body,
                Some("d-1".into()),
            ),
            (
                "pointer when the header is absent",
                &by_header,
                headers(&[]),
                body,
                Some("42".into()),
            ),
            (
                "pointer",
                &by_pointer,
                headers(&[]),
                body,
                Some("42".into()),
            ),
            (
                "pointer, body not JSON",
                &by_pointer,
                headers(&[]),
                b"{",
                None,
            ),
            (
                "webhook-id",
                &sw,
                headers(&[("webhook-id", "msg_1")]),
                b"{}",
                Some("msg_1".into()),
            ),
            (
                "no webhook-id for other schemes",
                &by_pointer,
                headers(&[("webhook-id", "msg_1")]),
                b"{}",
                None,
            ),
            (
                "empty header",
                &by_header,
                headers(&[("x-delivery", " ")]),
                b"{}",
                None,
            ),
        ];
        for (name, w, h, body, expected) in cases {
            assert_eq!(webhook_dedup_key(w, &h, body), expected, "{name}");
        }
        let long = "x".repeat(300);
        let digest = dedup_key(&long).unwrap();
        assert!(digest.starts_with("b3:") && digest.len() == 67, "{digest}");
        assert_eq!(dedup_key(&long), Some(digest));
    }

    #[test]
    fn kept_headers_never_hold_signatures() {
        let w = cfg(
            json!({"scheme": "hmac-sha256", "secret": "s", "header": "X-Sig",
            "dedup_header": "X-Sig"}),
        );
        let h = headers(&[
            ("content-type", "application/json"),
            ("user-agent", "vendor/1"),
            ("x-sig", "deadbeef"),
            ("authorization", "Bearer t"),
            ("x-other", "1"),
        ]);
        let kept: Value = serde_json::from_str(&kept_headers(&h, Some(&w))).unwrap();
        assert_eq!(
            kept,
            json!({"content-type": "application/json", "user-agent": "vendor/1"})
        );
        let sw = cfg(json!({"scheme": "standard-webhooks", "secret": "whsec_c2VjcmV0"}));
        let h = headers(&[("webhook-id", "m1"), ("webhook-signature", "v1,x")]);
        let kept: Value = serde_json::from_str(&kept_headers(&h, Some(&sw))).unwrap();
        assert_eq!(kept, json!({"webhook-id": "m1"}));
    }

    #[test]
    fn email_plans() {
        let rules = Rules::new(
            &serde_json::from_value(json!({"secret": "s", "rule": [{
                "name": "r", "subject": r"Order (?P<k>\S+)", "body": r"Status: (?P<s>\w+)",
                "key": "k", "set": {"/status": "s"}}]}))
            .unwrap(),
        )
        .unwrap();
        let (plan, id) = email_plan(
            &rules,
            b"Subject: Order A-1\r\nMessage-ID: <m1@x>\r\n\r\nStatus: shipped\r\n",
            Source::Email,
        );
        assert_eq!(
            plan,
            Plan::Writes(vec![EntityWrite {
                key: "A-1".into(),
                change: Change::MergePatch(json!({"status": "shipped"})),
                version: None,
                source: Source::Email,
                rule: WriteRule::IfNewer,
            }])
        );
        assert_eq!(id.as_deref(), Some("m1@x"));
        let (plan, _) = email_plan(&rules, b"Subject: Hello\r\n\r\nhi", Source::Email);
        assert_eq!(
            plan,
            Plan::Unmatched("rule \"r\": subject did not match".into())
        );
        let (plan, id) = email_plan(&rules, b"", Source::Email);
        assert_eq!(
            plan,
            Plan::Rejected("not an email: no header found in 0 bytes".into())
        );
        assert_eq!(id, None);
    }
}
