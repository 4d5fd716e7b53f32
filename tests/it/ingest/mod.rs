//! Deltas end to end against the real daemon on both backends, one file per concern: signed webhooks, version order, emails (maildir and HTTP), pending rows and replay, crash safety, hostile input. Here: the daemon's config and the helpers they share.

use std::path::{Path, PathBuf};

use driftd::canonical::version_value;
use driftd::store::{now_ms, InboxFilter, InboxRow, Store};
use serde_json::{json, Value};

use crate::support::{config, repo_root, Daemon, TestDb};

mod crash;
mod email;
mod hostile;
mod order;
mod replay;
mod webhooks;

const BODY_LIMIT: usize = 65_536;
const MAIL_TOKEN: &str = "mail-s3cret";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SW_SECRET: &str = "whsec_b3RoZXItc2VjcmV0LW5vYm9keS1jb25maWd1cmVk";

/// Four producers: `orders` (Standard Webhooks, one record per body),
/// `batch` (HMAC, arrays of merge patches, delete events, dedup pointer),
/// `acme` (email: maildir and inbound endpoint, the fixtures' rules), and
/// `plain` (neither webhook nor email).
const CONFIG: &str = r#"
[server]
listen = "@LISTEN@"
body_limit_bytes = @LIMIT@

[database]
url = "@DB@"

[[producer]]
name = "orders"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/orders"
ignore = ["/fetched_at"]
[producer.webhook]
scheme = "standard-webhooks"
secret = "@SW_SECRET@"
key = "/id"
version = "/version"
deleted = "/deleted"

[[producer]]
name = "batch"
schedule = "0 0 0 1 1 *"
bucket_bits = 4
[producer.snapshot]
url = "http://127.0.0.1:9/batch"
[producer.webhook]
scheme = "hmac-sha256"
secret = "batch-s3cret"
header = "X-Signature"
prefix = "sha256="
items = "/data"
key = "/id"
version = "/v"
mode = "merge-patch"
event = "/type"
delete_events = ["deleted"]
dedup_pointer = "/event_id"

[[producer]]
name = "acme"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/acme"
[producer.email]
maildir = "@MAILDIR@"
secret = "@MAIL_TOKEN@"
[[producer.email.rule]]
name = "status"
from = ["@acme.example", "Billing@Shop.Example"]
subject = 'Order (?P<order>[A-Z0-9-]+)'
body = '(?s)Status:\s*(?P<status>\w+)(?:.*?(?:Updated|Version):\s*(?P<version>\S+))?'
key = "order"
version = "version"
set = { "/status" = "status" }
[[producer.email.rule]]
name = "eta"
subject = 'ETA for (?P<order>\S+)'
body = 'arrives (?P<eta>\S+)'
key = "order"
set = { "/shipping/eta" = "eta" }

[[producer]]
name = "gh"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/gh"
[producer.webhook]
scheme = "github"
secret = "It's a Secret to Everybody"
previous_secret = "gh-old-secret"
key = "/id"
version = "/version"
dedup_header = "X-GitHub-Delivery"

[[producer]]
name = "stripe"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/stripe"
[producer.webhook]
scheme = "stripe"
secret = "whsec_stripe_test_secret"
key = "/data/id"
version = "/created"
dedup_pointer = "/event_id"

[[producer]]
name = "swvec"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/swvec"
[producer.webhook]
scheme = "standard-webhooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
tolerance_secs = 3153600000
key = "/test"

[[producer]]
name = "plain"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/plain"
"#;

fn config_text(db_url: &str, listen: &str, maildir: &Path) -> String {
    CONFIG
        .replace("@LISTEN@", listen)
        .replace("@LIMIT@", &BODY_LIMIT.to_string())
        .replace("@DB@", db_url)
        .replace("@SW_SECRET@", SW_SECRET)
        .replace("@MAILDIR@", &maildir.display().to_string())
        .replace("@MAIL_TOKEN@", MAIL_TOKEN)
}

/// The daemon on `db` with [`CONFIG`], its maildir in a directory of its own.
async fn start(db: &TestDb) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    let config = config(&config_text(&db.url, "127.0.0.1:0", &maildir));
    Daemon::start_in(dir, config).await
}

/// The maildir of producer `acme`.
fn maildir(d: &Daemon) -> PathBuf {
    let acme = d.config.producer("acme").and_then(|p| p.email.as_ref());
    PathBuf::from(
        acme.and_then(|e| e.maildir.clone())
            .expect("acme's maildir"),
    )
}

async fn inbox(store: &Store) -> Vec<InboxRow> {
    store
        .inbox_page(&InboxFilter::default(), 0, 100_000)
        .await
        .expect("list the inbox")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/email").join(name)).expect("fixture")
}

const FIXTURES: &[&str] = &[
    "multipart-alternative.eml",
    "quoted-printable.eml",
    "base64.eml",
    "latin1.eml",
    "html-only.eml",
    "unmatched.eml",
];

/// The entity each matching fixture patches: key, status, version.
fn fixture_effects() -> Vec<(&'static str, &'static str, Option<i64>)> {
    let v = |s: &str| Some(version_value(&json!(s)).unwrap());
    vec![
        ("ORD-1001", "shipped", v("2026-03-02T09:14:00Z")),
        ("ORD-2002", "delayed", Some(17)),
        ("ORD-3003", "delivered", v("2026-03-04T16:20:00+01:00")),
        ("ORD-4004", "cancelled", v("2026-03-05T08:00:00Z")),
        ("ORD-5005", "returned", None),
    ]
}

async fn assert_fixture_entities(store: &Store) {
    for (key, status, version) in fixture_effects() {
        let e = store
            .entity("acme", key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} not stored"));
        assert_eq!(e.doc, Some(json!({ "status": status })), "{key}");
        assert_eq!(e.version, version, "{key}");
        assert_eq!(e.source, driftd::entity::Source::Email, "{key}");
    }
    assert_eq!(store.entity("acme", "ORD-6006").await.unwrap(), None);
}

fn orders_doc(key: &str, version: i64) -> Value {
    json!({"id": key, "version": version, "status": format!("s{version}"), "fetched_at": now_ms()})
}

/// Delivers `raw` the way an MTA does: written in `tmp/`, renamed into `new/`.
fn deliver(maildir: &Path, name: &str, raw: &[u8]) {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let tmp = maildir.join("tmp").join(name);
    std::fs::write(&tmp, raw).unwrap();
    std::fs::rename(&tmp, maildir.join("new").join(name)).unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
