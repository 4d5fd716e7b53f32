//! Parsing inbound emails and matching them against rules.
//!
//! [`parse`] turns a raw RFC 5322 message into a [`ParsedEmail`]: the sender
//! address, the decoded subject and a text body (MIME, transfer encodings and
//! charsets are handled by `mail-parser`; HTML-only mails are converted to
//! text). [`Rules`] compiles the `[[producer.email.rule]]` entries of the
//! config, and [`Rules::apply`] finds the first rule that matches an email and
//! builds the delta it describes: an entity key, an optional version and a
//! JSON merge patch. The module is pure: no IO, no clock.

use std::collections::HashMap;

use mail_parser::MessageParser;
use regex::Regex;
use serde_json::{Map, Value};

use crate::canonical::{check_pointer, version_value, PointerError};
use crate::config::{EmailConfig, EmailRule};
use crate::patch::{merge_patch, patch_at};

/// What the rules need from an email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedEmail {
    /// The first `From` address, lowercased.
    pub from: Option<String>,
    /// The decoded subject; empty when absent.
    pub subject: String,
    /// The text bodies joined by newlines, with `\r\n` turned into `\n`;
    /// HTML-only mails are converted to text.
    pub text: String,
    /// The `Message-ID`, without angle brackets.
    pub(crate) message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum EmailError {
    #[error("not an email: no header found in {len} bytes")]
    NotAnEmail { len: usize },
    #[error("rule {rule:?}: invalid {field} regex {pattern:?}: {source}")]
    Regex {
        rule: String,
        field: &'static str,
        pattern: String,
        source: regex::Error,
    },
    #[error("rule {rule:?}: a rule needs a subject or a body regex")]
    NoRegex { rule: String },
    #[error("rule {rule:?}: no named group {group:?} in the rule's regexes")]
    MissingGroup { rule: String, group: String },
    #[error("rule {rule:?}: set {source}")]
    Pointer { rule: String, source: PointerError },
    #[error("rule {rule:?}: set pointer \"\" would replace the whole entity with a string")]
    EmptyPointer { rule: String },
}

/// Parses a raw RFC 5322 message.
pub(crate) fn parse(raw: &[u8]) -> Result<ParsedEmail, EmailError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(EmailError::NotAnEmail { len: raw.len() })?;
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(|a| a.trim().to_lowercase());
    let subject = message.subject().unwrap_or_default().trim().to_string();
    let text = (0..message.text_body_count())
        .filter_map(|i| message.body_text(i))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\r\n", "\n");
    let message_id = message.message_id().map(str::to_string);
    Ok(ParsedEmail {
        from,
        subject,
        text,
        message_id,
    })
}

/// The outcome of [`Rules::apply`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RuleMatch {
    /// The first rule that matched, and the delta it extracted.
    Matched {
        rule: String,
        key: String,
        /// The version, as [`version_value`] reads it.
        version: Option<i64>,
        /// A JSON merge patch; an empty object when the rule sets nothing.
        patch: Value,
        /// `mode = "fetch"`: the record is fetched rather than patched.
        fetch: bool,
    },
    /// No rule matched; the reason says why, rule by rule.
    Unmatched { reason: String },
}

/// The compiled email rules of a producer, tried in order.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    /// Lowercased full addresses and `@domain` suffixes; anyone when empty.
    from: Vec<String>,
    subject: Option<Regex>,
    body: Option<Regex>,
    key: String,
    version: Option<String>,
    /// JSON pointer → group, in the config's (sorted) order.
    set: Vec<(String, String)>,
    fetch: bool,
}

impl Rules {
    /// Compiles the rules, checking their regexes, groups and pointers.
    pub(crate) fn new(cfg: &EmailConfig) -> Result<Rules, EmailError> {
        let rules = cfg.rule.iter().map(Rule::new).collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    /// The first rule that matches `email`, with what it extracted.
    pub(crate) fn apply(&self, email: &ParsedEmail) -> RuleMatch {
        if self.rules.is_empty() {
            return RuleMatch::Unmatched {
                reason: "no rules configured".into(),
            };
        }
        let mut failures = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            match rule.apply(email) {
                Ok(m) => return m,
                Err(why) => failures.push(format!("rule {:?}: {why}", rule.name)),
            }
        }
        RuleMatch::Unmatched {
            reason: failures.join("; "),
        }
    }
}

impl Rule {
    fn new(r: &EmailRule) -> Result<Rule, EmailError> {
        let compile = |field: &'static str, pattern: &Option<String>| {
            pattern
                .as_deref()
                .map(|p| {
                    Regex::new(p).map_err(|source| EmailError::Regex {
                        rule: r.name.clone(),
                        field,
                        pattern: p.to_string(),
                        source,
                    })
                })
                .transpose()
        };
        let subject = compile("subject", &r.subject)?;
        let body = compile("body", &r.body)?;
        if subject.is_none() && body.is_none() {
            return Err(EmailError::NoRegex {
                rule: r.name.clone(),
            });
        }
        let has_group = |g: &str| {
            [&subject, &body]
                .into_iter()
                .flatten()
                .any(|re| re.capture_names().flatten().any(|n| n == g))
        };
        let groups = std::iter::once(&r.key)
            .chain(&r.version)
            .chain(r.set.values());
        for group in groups {
            if !has_group(group) {
                return Err(EmailError::MissingGroup {
                    rule: r.name.clone(),
                    group: group.clone(),
                });
            }
        }
        for pointer in r.set.keys() {
            if pointer.is_empty() {
                return Err(EmailError::EmptyPointer {
                    rule: r.name.clone(),
                });
            }
            check_pointer(pointer).map_err(|source| EmailError::Pointer {
                rule: r.name.clone(),
                source,
            })?;
        }
        Ok(Rule {
            name: r.name.clone(),
            from: r.from.iter().map(|f| f.trim().to_lowercase()).collect(),
            subject,
            body,
            key: r.key.clone(),
            version: r.version.clone(),
            set: r.set.iter().map(|(p, g)| (p.clone(), g.clone())).collect(),
            fetch: r.mode == crate::config::RuleMode::Fetch,
        })
    }

    fn sender_allowed(&self, from: &str) -> bool {
        self.from.is_empty()
            || self.from.iter().any(|allowed| {
                if allowed.starts_with('@') {
                    from.ends_with(allowed.as_str())
                } else {
                    from == allowed
                }
            })
    }

    /// The match of this rule, or why it does not match.
    fn apply(&self, email: &ParsedEmail) -> Result<RuleMatch, String> {
        if !self.from.is_empty() {
            match &email.from {
                None => return Err("no sender address, and senders are restricted".into()),
                Some(from) if !self.sender_allowed(from) => {
                    return Err(format!("sender {from:?} not allowed"));
                }
                Some(_) => {}
            }
        }
        // Named groups of both regexes, pooled; the subject's win on a clash.
        let mut groups: HashMap<&str, &str> = HashMap::new();
        for (what, re, text) in [
            ("subject", &self.subject, email.subject.as_str()),
            ("body", &self.body, email.text.as_str()),
        ] {
            let Some(re) = re else { continue };
            let caps = re.captures(text).ok_or(format!("{what} did not match"))?;
            for name in re.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    groups.entry(name).or_insert(m.as_str().trim());
                }
            }
        }
        let key = match groups.get(self.key.as_str()) {
            Some(k) if !k.is_empty() => k.to_string(),
            _ => return Err(format!("key group {:?} captured nothing", self.key)),
        };
        let version = match &self.version {
            Some(g) => match groups.get(g.as_str()) {
                Some(v) => Some(version_value(&Value::String(v.to_string()))?),
                None => None,
            },
            None => None,
        };
        let mut patch = Value::Object(Map::new());
        for (pointer, group) in &self.set {
            if let Some(v) = groups.get(group.as_str()) {
                let p = patch_at(pointer, Value::String(v.to_string()))
                    .expect("pointers are checked in Rules::new");
                merge_patch(&mut patch, &p);
            }
        }
        Ok(RuleMatch::Matched {
            rule: self.name.clone(),
            key,
            version,
            patch,
            fetch: self.fetch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn config(rules: Value) -> EmailConfig {
        serde_json::from_value(json!({"secret": "s", "rule": rules})).unwrap()
    }

    /// The rules the fixtures are written for.
    fn fixture_rules() -> Rules {
        Rules::new(&config(json!([
            {
                "name": "status",
                "from": ["@acme.example", "Billing@Shop.Example"],
                "subject": r"Order (?P<order>[A-Z0-9-]+)",
                "body": r"(?s)Status:\s*(?P<status>\w+)(?:.*?(?:Updated|Version):\s*(?P<version>\S+))?",
                "key": "order",
                "version": "version",
                "set": {"/status": "status"},
            },
            {
                "name": "eta",
                "subject": r"ETA for (?P<order>\S+)",
                "body": r"arrives (?P<eta>\S+)",
                "key": "order",
                "set": {"/shipping/eta": "eta"},
            },
        ])))
        .unwrap()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/email/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn version(s: &str) -> Option<i64> {
        Some(version_value(&json!(s)).unwrap())
    }

    fn matched(key: &str, status: &str, version: Option<i64>) -> RuleMatch {
        RuleMatch::Matched {
            rule: "status".into(),
            key: key.into(),
            version,
            patch: json!({"status": status}),
            fetch: false,
        }
    }

    struct Case {
        file: &'static str,
        from: &'static str,
        subject: &'static str,
        message_id: Option<&'static str>,
        contains: &'static [&'static str],
        excludes: &'static [&'static str],
        outcome: RuleMatch,
    }

    #[test]
    fn fixtures_parse_and_match() {
        let cases = [
            Case {
                file: "multipart-alternative.eml",
                from: "notifications@acme.example",
                subject: "Order ORD-1001 has shipped",
                message_id: Some("20260302091500.1001@acme.example"),
                contains: &["Your order ORD-1001 has left our warehouse.\n\nStatus: shipped\n"],
                // The text/plain alternative is used, not the HTML one.
                excludes: &["View in browser", "<b>", "\r"],
                outcome: matched("ORD-1001", "shipped", version("2026-03-02T09:14:00Z")),
            },
            Case {
                file: "quoted-printable.eml",
                from: "suivi@acme.example",
                subject: "Order ORD-2002: delayed",
                message_id: Some("qp-2002.1772532161@acme.example"),
                contains: &[
                    // Soft line breaks joined, =XX escapes decoded as UTF-8.
                    "a été retardée à cause d'une grève au dépôt de Montréal. Nous sommes désolés pour ce contretemps.",
                    "4,90 € (remise 10%=0,49 €)",
                    "\n-- \nAcme Logistique",
                ],
                excludes: &["=C3", "=\n", "=3D"],
                outcome: matched("ORD-2002", "delayed", Some(17)),
            },
            Case {
                file: "base64.eml",
                from: "delivery@acme.example",
                subject: "Order ORD-3003 delivered",
                message_id: Some("CAB64.3003.20260304@acme.example"),
                contains: &["delivered to Zoë at the front desk", "Status: delivered"],
                // The attachment is not part of the text.
                excludes: &["lost", "SGVsbG8"],
                outcome: matched(
                    "ORD-3003",
                    "delivered",
                    version("2026-03-04T16:20:00+01:00"),
                ),
            },
            Case {
                file: "latin1.eml",
                from: "versand@acme.example",
                subject: "Order ORD-4004 für Zürich",
                message_id: Some("4004.latin1@acme.example"),
                contains: &["Grüezi,", "nach Zürich wurde storniert", "Freundliche Grüsse"],
                excludes: &["\u{FFFD}"],
                outcome: matched("ORD-4004", "cancelled", version("2026-03-05T08:00:00Z")),
            },
            Case {
                file: "html-only.eml",
                from: "returns@acme.example",
                subject: "Order ORD-5005 returned",
                message_id: None,
                contains: &[
                    "Order ORD-5005",
                    "We received your return.",
                    "Status: returned",
                    "Refund & restocking: done",
                ],
                excludes: &["<", ">", "&amp;", "color: red", "fake", "Return received"],
                outcome: matched("ORD-5005", "returned", None),
            },
            Case {
                file: "unmatched.eml",
                from: "alerts@acme.example.net",
                subject: "Order ORD-6006 needs your attention",
                message_id: Some("6006.lookalike@acme.example.net"),
                contains: &["Status: held"],
                excludes: &[],
                outcome: RuleMatch::Unmatched {
                    reason: r#"rule "status": sender "alerts@acme.example.net" not allowed; rule "eta": subject did not match"#.into(),
                },
            },
        ];
        let rules = fixture_rules();
        for c in cases {
            let email = parse(&fixture(c.file)).unwrap();
            assert_eq!(email.from.as_deref(), Some(c.from), "{}", c.file);
            assert_eq!(email.subject, c.subject, "{}", c.file);
            assert_eq!(email.message_id.as_deref(), c.message_id, "{}", c.file);
            for s in c.contains {
                assert!(
                    email.text.contains(s),
                    "{}: {s:?} not in {:?}",
                    c.file,
                    email.text
                );
            }
            for s in c.excludes {
                assert!(
                    !email.text.contains(s),
                    "{}: {s:?} in {:?}",
                    c.file,
                    email.text
                );
            }
            assert_eq!(rules.apply(&email), c.outcome, "{}", c.file);
        }
    }

    fn email(from: Option<&str>, subject: &str, text: &str) -> ParsedEmail {
        ParsedEmail {
            from: from.map(str::to_string),
            subject: subject.into(),
            text: text.into(),
            message_id: None,
        }
    }

    #[test]
    fn senders() {
        let rules = Rules::new(&config(json!([{
            "name": "r",
            "from": [" @Acme.Example ", "billing@shop.example"],
            "subject": "(?P<k>.+)",
            "key": "k",
        }])))
        .unwrap();
        let cases = [
            (Some("x@acme.example"), Ok(())),
            (Some("billing@shop.example"), Ok(())),
            (
                Some("x@sub.acme.example"),
                Err("sender \"x@sub.acme.example\" not allowed"),
            ),
            (
                Some("x@notacme.example"),
                Err("sender \"x@notacme.example\" not allowed"),
            ),
            (
                Some("x@acme.example.net"),
                Err("sender \"x@acme.example.net\" not allowed"),
            ),
            (
                Some("other@shop.example"),
                Err("sender \"other@shop.example\" not allowed"),
            ),
            (None, Err("no sender address, and senders are restricted")),
        ];
        for (from, expected) in cases {
            let got = rules.apply(&email(from, "k1", ""));
            match expected {
                Ok(()) => assert!(
                    matches!(got, RuleMatch::Matched { .. }),
                    "{from:?}: {got:?}"
                ),
                Err(why) => assert_eq!(
                    got,
                    RuleMatch::Unmatched {
                        reason: format!("rule \"r\": {why}")
                    },
                    "{from:?}"
                ),
            }
        }
        // No list: anyone, even without a sender.
        let open = Rules::new(&config(
            json!([{"name": "r", "subject": "(?P<k>.+)", "key": "k"}]),
        ))
        .unwrap();
        assert!(matches!(
            open.apply(&email(None, "k1", "")),
            RuleMatch::Matched { .. }
        ));
    }

    #[test]
    fn first_matching_rule_wins_and_groups_are_pooled() {
        let rules = Rules::new(&config(json!([
            {
                "name": "narrow",
                "subject": r"^Invoice (?P<id>\d+)$",
                "key": "id",
            },
            {
                "name": "pooled",
                "subject": r"Shipment (?P<id>\S+)(?: v(?P<v>\d+))?",
                "body": r"(?m)^Carrier: (?P<carrier>.+)$\n^ETA: (?P<eta>.*)$(?:\n^Note: (?P<note>.*)$)?",
                "key": "id",
                "version": "v",
                "set": {"/carrier/name": "carrier", "/carrier/eta": "eta", "/note": "note", "/id": "id"},
            },
            {
                "name": "fallback",
                "subject": r"(?P<id>\S+)",
                "key": "id",
            },
        ])))
        .unwrap();
        let cases = [
            (
                email(
                    None,
                    "Shipment S-1 v3",
                    "Carrier:  DHL Express \nETA: 2026-03-09\n",
                ),
                RuleMatch::Matched {
                    rule: "pooled".into(),
                    key: "S-1".into(),
                    version: Some(3),
                    // Values trimmed; a group that did not take part is left out.
                    patch: json!({"carrier": {"name": "DHL Express", "eta": "2026-03-09"}, "id": "S-1"}),
                    fetch: false,
                },
            ),
            (
                email(None, "Shipment S-2", "Carrier: UPS\nETA: \nNote: fragile"),
                RuleMatch::Matched {
                    rule: "pooled".into(),
                    key: "S-2".into(),
                    version: None,
                    patch: json!({"carrier": {"name": "UPS", "eta": ""}, "id": "S-2", "note": "fragile"}),
                    fetch: false,
                },
            ),
            (
                email(None, "Invoice 42", "Carrier: UPS\nETA: soon"),
                RuleMatch::Matched {
                    rule: "narrow".into(),
                    key: "42".into(),
                    version: None,
                    patch: json!({}),
                    fetch: false,
                },
            ),
            (
                email(None, "Shipment S-3", "no carrier"),
                RuleMatch::Matched {
                    rule: "fallback".into(),
                    key: "Shipment".into(),
                    version: None,
                    patch: json!({}),
                    fetch: false,
                },
            ),
        ];
        for (e, expected) in cases {
            assert_eq!(rules.apply(&e), expected, "{e:?}");
        }
    }

    #[test]
    fn subject_groups_win_on_a_clash() {
        let rules = Rules::new(&config(json!([{
            "name": "r",
            "subject": r"Order (?P<id>\S+)(?: now (?P<status>\w+))?",
            "body": r"(?:Order (?P<id>\S+))?\s*Status: (?P<status>\w+)",
            "key": "id",
            "set": {"/status": "status"},
        }])))
        .unwrap();
        let cases = [
            (
                "Order A-1 now packed",
                "Order B-2\nStatus: shipped",
                "A-1",
                "packed",
            ),
            // A subject group that did not take part leaves the body's value.
            ("Order A-1", "Order B-2\nStatus: shipped", "A-1", "shipped"),
        ];
        for (subject, text, key, status) in cases {
            assert_eq!(
                rules.apply(&email(None, subject, text)),
                RuleMatch::Matched {
                    rule: "r".into(),
                    key: key.into(),
                    version: None,
                    patch: json!({"status": status}),
                    fetch: false,
                },
                "{subject}"
            );
        }
    }

    #[test]
    fn unmatched_reasons() {
        let rules = Rules::new(&config(json!([
            {"name": "a", "subject": r"Order (?P<k>\S*)", "body": r"v=(?P<v>\S+)", "key": "k", "version": "v"},
            {"name": "b", "body": r"Ref:(?P<k>[^\n]*)", "key": "k"},
        ])))
        .unwrap();
        let cases = [
            (
                email(Some("a@b.c"), "Hello", "nothing"),
                r#"rule "a": subject did not match; rule "b": body did not match"#.to_string(),
            ),
            (
                email(None, "Order 7", "v=later\nRef:   "),
                format!(
                    r#"rule "a": {}; rule "b": key group "k" captured nothing"#,
                    version_value(&json!("later")).unwrap_err()
                ),
            ),
            (
                email(None, "Order ", "v=1"),
                r#"rule "a": key group "k" captured nothing; rule "b": body did not match"#
                    .to_string(),
            ),
        ];
        for (e, reason) in cases {
            assert_eq!(rules.apply(&e), RuleMatch::Unmatched { reason }, "{e:?}");
        }
        assert!(
            matches!(rules.apply(&email(None, "Order 7", "v=2026-01-01T00:00:00Z")),
                RuleMatch::Matched { version: Some(v), .. } if v == version("2026-01-01T00:00:00Z").unwrap())
        );
        let none = Rules::new(&config(json!([]))).unwrap();
        assert_eq!(
            none.apply(&email(None, "x", "y")),
            RuleMatch::Unmatched {
                reason: "no rules configured".into()
            }
        );
    }

    #[test]
    fn invalid_rules_are_rejected() {
        let base = json!({"name": "r", "subject": "(?P<k>.+)", "key": "k"});
        let with = |extra: Value| {
            let mut r = base.clone();
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            Rules::new(&config(json!([r]))).unwrap_err().to_string()
        };
        let cases = [
            (
                json!({"subject": "(?P<k>"}),
                r#"rule "r": invalid subject regex "(?P<k>": "#,
            ),
            (
                json!({"body": "["}),
                r#"rule "r": invalid body regex "[": "#,
            ),
            (
                json!({"subject": null}),
                r#"rule "r": a rule needs a subject or a body regex"#,
            ),
            (
                json!({"key": "id"}),
                r#"rule "r": no named group "id" in the rule's regexes"#,
            ),
            (
                json!({"version": "v"}),
                r#"rule "r": no named group "v" in the rule's regexes"#,
            ),
            (
                json!({"set": {"/a": "x"}}),
                r#"rule "r": no named group "x" in the rule's regexes"#,
            ),
            (
                json!({"set": {"a": "k"}}),
                r#"rule "r": set invalid JSON pointer "a""#,
            ),
            (
                json!({"set": {"": "k"}}),
                r#"rule "r": set pointer "" would replace"#,
            ),
        ];
        for (extra, prefix) in cases {
            let err = with(extra.clone());
            assert!(err.starts_with(prefix), "{extra}: {err}");
        }
    }

    #[test]
    fn parse_edge_cases() {
        assert_eq!(parse(b""), Err(EmailError::NotAnEmail { len: 0 }));
        assert_eq!(
            parse(b"").unwrap_err().to_string(),
            "not an email: no header found in 0 bytes"
        );
        let e = parse(b"From: A <A@B.C>\r\n\r\nStatus: ok\r\n").unwrap();
        assert_eq!(e, email(Some("a@b.c"), "", "Status: ok\n"));
        let e = parse(b"Subject: =?UTF-8?B?T3JkZXIgw6k=?=\n\nhi").unwrap();
        assert_eq!(e, email(None, "Order é", "hi"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in prop::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(e) = parse(&raw) {
                let _ = fixture_rules().apply(&e);
            }
        }

        #[test]
        fn mangled_fixtures_never_panic(
            file in 0usize..6,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let names = ["multipart-alternative.eml", "quoted-printable.eml", "base64.eml",
                         "latin1.eml", "html-only.eml", "unmatched.eml"];
            let mut raw = fixture(names[file]);
            for (at, byte) in edits {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
            raw.truncate(cut.index(raw.len() + 1));
            if let Ok(e) = parse(&raw) {
                let _ = fixture_rules().apply(&e);
            }
        }
    }
}
