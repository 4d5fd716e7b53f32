//! Tests of the demo: its config, vendor, churn and verdict.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::setup::{config_toml, new_secret};
use super::vendor::{Delta, Orders};
use super::verdict::compare;
use super::{schedule_for, validate_args, DemoArgs, PRODUCER};
use crate::config::Config;

fn orders(n: u64) -> Orders {
    Orders::new(n, &mut StdRng::seed_from_u64(7), "2026-01-01T00:00:00.000Z")
}

#[test]
fn the_demo_config_passes_check() {
    let text = config_toml(
        Path::new("/tmp/a dir/$HOME/driftd-demo.db"),
        "127.0.0.1:7070".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        &schedule_for(10).unwrap(),
        &new_secret(),
    );
    let loaded =
        Config::parse("demo.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(
        c.database.url.expose(),
        "sqlite:///tmp/a dir/$HOME/driftd-demo.db"
    );
    let p = c.producer(PRODUCER).unwrap();
    assert_eq!(p.schedule, "*/10 * * * * *");
    assert_eq!(p.work.action, crate::config::Action::Apply);
    let w = p.webhook.as_ref().unwrap();
    assert_eq!(w.scheme, crate::config::SignatureScheme::StandardWebhooks);
    assert!(w.secret.as_ref().unwrap().expose().starts_with("whsec_"));
    assert_eq!(w.version.as_deref(), Some("/version"));
}

#[test]
fn the_demo_config_with_catchup_passes_check() {
    let mut text = config_toml(
        Path::new("/tmp/d.db"),
        "127.0.0.1:7070".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        "*/10 * * * * *",
        &new_secret(),
    );
    text.push_str(&super::setup::catchup_toml("127.0.0.1:9".parse().unwrap()));
    let loaded =
        Config::parse("demo.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let c = loaded
        .config
        .producer(PRODUCER)
        .unwrap()
        .catchup
        .clone()
        .unwrap();
    assert_eq!(c.every_secs, super::CATCHUP_EVERY_SECS);
    assert_eq!(c.url, "http://127.0.0.1:9/orders?since={since}");
}

#[test]
fn catchup_pages_hold_only_orders_changed_since() {
    let mut o = orders(50);
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..10 {
        o.change(&mut rng, None, "t");
    }
    let newest = o
        .records()
        .values()
        .filter_map(|r| r["version"].as_i64())
        .max()
        .unwrap();
    let (changed, next) = o.page(None, 1000, Some(2));
    assert!(next.is_none());
    assert!(
        !changed.is_empty() && changed.len() <= 10,
        "{}",
        changed.len()
    );
    assert!(changed.iter().all(|r| r["version"].as_i64().unwrap() >= 2));
    assert_eq!(o.page(None, 1000, Some(newest + 1)).0, Vec::<Value>::new());
}

#[test]
fn demo_webhooks_verify_under_the_demo_config() {
    let text = config_toml(
        Path::new("/tmp/d.db"),
        "127.0.0.1:7070".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        "*/10 * * * * *",
        &new_secret(),
    );
    let c = Config::parse("demo.toml", &text, &|_| None).unwrap().config;
    let w = c.producer(PRODUCER).unwrap().webhook.clone().unwrap();
    let mut o = orders(10);
    let body = o.change(&mut StdRng::seed_from_u64(1), None, "t").body();
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in crate::ingest::signature::sign(&w, &body, 1_000, "msg_demo_1") {
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    assert_eq!(headers["webhook-id"], "msg_demo_1", "the dedup header");
    crate::ingest::signature::verify(&w, &headers, &body, 1_010).unwrap();
    assert!(crate::ingest::signature::verify(&w, &headers, b"{}", 1_010).is_err());
}

#[test]
fn schedules() {
    assert_eq!(schedule_for(1).unwrap(), "*/1 * * * * *");
    assert_eq!(schedule_for(59).unwrap(), "*/59 * * * * *");
    assert_eq!(schedule_for(120).unwrap(), "0 */2 * * * *");
    assert!(schedule_for(0).is_err());
    assert!(schedule_for(90).is_err());
    for s in [1, 2, 10, 59, 60, 600] {
        crate::config::parse_cron(&schedule_for(s).unwrap()).unwrap();
    }
}

#[test]
fn changes_bump_versions_and_create_and_delete() {
    let mut o = orders(50);
    let mut rng = StdRng::seed_from_u64(1);
    let (mut creates, mut deletes, mut edits) = (0, 0, 0);
    let mut last_version = 1;
    for _ in 0..500 {
        let before = o.records.len();
        let d = o.change(&mut rng, None, "t");
        let body: Value = serde_json::from_slice(&d.body()).unwrap();
        let version = body["version"].as_i64().unwrap();
        assert!(version > last_version, "versions increase: {body}");
        last_version = version;
        assert_eq!(body["id"].as_str(), Some(d.key()));
        match &d {
            Delta::Delete { key, .. } => {
                deletes += 1;
                assert_eq!(body["deleted"], json!(true));
                assert!(!o.records.contains_key(key));
            }
            Delta::Upsert(doc) => {
                assert_eq!(o.records.get(d.key()), Some(doc), "the body is the order");
                if o.records.len() > before {
                    creates += 1;
                } else {
                    edits += 1;
                }
            }
        }
    }
    assert!(
        creates > 10 && deletes > 10 && edits > 300,
        "{creates} {deletes} {edits}"
    );
}

#[test]
fn a_preferred_key_is_edited() {
    let mut o = orders(20);
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..50 {
        let d = o.change(&mut rng, Some("ord-0000005"), "t");
        assert_eq!(d.key(), "ord-0000005");
        assert!(matches!(d, Delta::Upsert(_)));
    }
}

#[test]
fn key_cursor_pages_cover_every_order_once() {
    let mut o = orders(1234);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 100, "pagination does not end");
        let (items, next) = o.page(cursor.as_deref(), 100, None);
        seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        // Deleting an order already served shifts nothing.
        if page == 3 {
            o.records.remove("ord-0000001");
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 1234);
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(dedup, seen, "no order twice, in key order");
    assert_eq!(o.page(None, 5000, None).1, None);
    assert_eq!(orders(0).page(None, 10, None), (vec![], None));
}

#[test]
fn comparison_table() {
    let rec = |k: &str, v: i64| (k.to_string(), json!({ "id": k, "v": v }));
    let vendor: BTreeMap<String, Value> = [rec("a", 1), rec("b", 1), rec("c", 1)].into();
    let local = |rows: &[(&str, i64)]| -> Vec<(String, Option<Value>)> {
        rows.iter()
            .map(|(k, v)| {
                let (k, d) = rec(k, *v);
                (k, Some(d))
            })
            .collect()
    };
    let c = compare(&local(&[("a", 1), ("b", 1), ("c", 1)]), &vendor);
    assert!(c.equal(), "{c:?}");
    let c = compare(&local(&[("a", 1), ("b", 2), ("d", 1)]), &vendor);
    assert_eq!(
        (c.missing, c.extra, c.different),
        (vec!["c".into()], vec!["d".into()], vec!["b".into()])
    );
}

#[test]
fn arguments_are_checked() {
    let ok = DemoArgs {
        duration: 60,
        loss: 0.1,
        records: 3000,
        keyframe_every: 10,
        rate: 30,
        dir: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        seed: None,
        catchup: false,
        adaptive: false,
    };
    assert_eq!(validate_args(&ok), Ok(()));
    for (bad, expected) in [
        (
            DemoArgs {
                loss: 1.5,
                ..ok.clone()
            },
            "--loss 1.5",
        ),
        (
            DemoArgs {
                records: 0,
                ..ok.clone()
            },
            "--records 0",
        ),
        (
            DemoArgs {
                keyframe_every: 0,
                ..ok.clone()
            },
            "--keyframe-every 0",
        ),
        (
            DemoArgs {
                listen: "0.0.0.0:7070".parse().unwrap(),
                ..ok.clone()
            },
            "loopback",
        ),
    ] {
        let e = validate_args(&bad).unwrap_err();
        assert!(e.contains(expected), "{e}");
    }
}

#[test]
fn the_demo_config_with_adaptive_pacing_passes_check() {
    let mut text = config_toml(
        Path::new("/tmp/d.db"),
        "127.0.0.1:7070".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        "adaptive",
        &new_secret(),
    );
    text.push_str(&super::setup::adaptive_toml(10, 30, 0.1));
    let loaded =
        Config::parse("demo.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let a = loaded
        .config
        .producer(PRODUCER)
        .unwrap()
        .adaptive
        .clone()
        .unwrap();
    assert_eq!((a.min_interval_secs, a.max_interval_secs), (2.0, 20.0));
    // At 10% of 30 changes a second lost, the floor's drift-seconds: 3 × 2² / 2.
    assert_eq!(a.target_drift_seconds, 6.0);
}

#[test]
fn lines_wrap_at_spaces_within_the_width() {
    use super::reporter::wrap;
    let text = "[ 12.3s] keyframe run 3 (scheduled): 2997 records, drift found 14 (missing 2, \
                extra 2, changed 10) -> queued as apply work; 4 changed during the pull";
    let lines = wrap(text, 60, "           ");
    assert!(lines.len() > 1, "{lines:?}");
    for l in &lines {
        assert!(l.chars().count() <= 60, "{l:?} of {lines:?}");
    }
    for l in &lines[1..] {
        assert!(
            l.starts_with("           ") && !l.starts_with("            "),
            "{l:?}"
        );
    }
    // Nothing lost or added but the breaks.
    let joined: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
    assert_eq!(joined, text.split_whitespace().collect::<Vec<_>>());
    // Leading and inner runs of spaces are kept on a line that fits.
    assert_eq!(wrap("  a:  b", 60, "    "), vec!["  a:  b"]);
    // A word longer than the width stands alone, unbroken.
    let long = format!("see {} now", "x".repeat(70));
    assert_eq!(
        wrap(&long, 60, "  "),
        vec![
            "see".to_string(),
            format!("  {}", "x".repeat(70)),
            "  now".into()
        ]
    );
}

#[test]
fn open_drift_is_counted_now_and_at_its_peak() {
    use super::reporter::open_and_peak;
    // ms: a keyframe queues three items at 1000, done at 1003, 1005 and
    // 1005; one more item queued at 1010 is still open; one closed before
    // the window began.
    let spans = [
        (1000, Some(1003)),
        (1000, Some(1005)),
        (1000, Some(1005)),
        (1010, None),
        (500, Some(600)),
    ];
    assert_eq!(open_and_peak(&spans, 900, 2000), (1, 3));
    // Window after the batch closed: only the one still open.
    assert_eq!(open_and_peak(&spans, 1006, 2000), (1, 1));
    // Window that starts while the batch is open counts it from the start.
    assert_eq!(open_and_peak(&spans, 1004, 1007), (0, 2));
    // Items done within the millisecond they were queued still count as open then.
    assert_eq!(
        open_and_peak(&[(1000, Some(1000)), (1000, Some(1000))], 900, 2000),
        (0, 2)
    );
    assert_eq!(open_and_peak(&[], 0, 10), (0, 0));
}
