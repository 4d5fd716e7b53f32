//! Tests of loading and validating config files.

use super::load::expand;
use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("s3cret".into()),
        _ => None,
    }
}

const MINIMAL: &str = r#"
[[producer]]
name = "orders"
schedule = "0 */5 * * * *"
[producer.snapshot]
url = "http://127.0.0.1:9/orders"
headers = { Authorization = "Bearer ${TOKEN}" }
"#;

#[test]
fn minimal_config_gets_defaults_and_substitution() {
    let loaded = Config::parse("t.toml", MINIMAL, &env).unwrap();
    let c = loaded.config;
    assert_eq!(c.server.listen, "127.0.0.1:7070");
    assert_eq!(c.database.url.expose(), "sqlite://driftd.db");
    let p = &c.producers[0];
    assert_eq!(p.bucket_bits, 16);
    assert_eq!(p.snapshot.key, "/id");
    assert_eq!(
        p.snapshot.headers["Authorization"].expose(),
        "Bearer s3cret"
    );
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "secret leaked into Debug"
    );
}

#[test]
fn connection_limits_default_and_are_validated() {
    let c = Config::parse("t.toml", MINIMAL, &env).unwrap().config;
    assert_eq!(c.server.header_read_timeout_secs, 10);
    assert_eq!(c.server.idle_timeout_secs, 60);
    assert_eq!(c.server.max_connections, 512);
    let text = format!(
            "[server]\nheader_read_timeout_secs = 0\nrequest_timeout_secs = 30\nidle_timeout_secs = 30\nmax_connections = 0\n{MINIMAL}"
        );
    let shown = Config::parse("t.toml", &text, &env)
        .unwrap_err()
        .to_string();
    for expected in [
        "server.header_read_timeout_secs: must be at least 1",
        "server.idle_timeout_secs: 30 must be greater than server.request_timeout_secs (30)",
        "server.max_connections: must be at least 1",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown}");
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"
[server]
listn = "0.0.0.0:1"
[[producer]]
name = "a"
schedule = "* * * * * *"
[producer.snapshot]
url = "http://127.0.0.1:9/"
[[producer]]
name = "b"
schedule = "*/5 * *"
[producer.snapshot]
url = "http://127.0.0.1:9/"
headers = { X-Key = "${MISSING_VAR}" }
"#;
    let err = Config::parse("t.toml", text, &env).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("server.listn: unknown key"), "{shown}");
    assert!(
        shown.contains("producer[1].schedule: invalid cron expression \"*/5 * *\""),
        "{shown}"
    );
    assert!(
        shown.contains(
            "producer[1].snapshot.headers.X-Key: environment variable \"MISSING_VAR\" is not set"
        ),
        "{shown}"
    );
    assert_eq!(err.problems.len(), 3, "{shown}");
}

#[test]
fn type_errors_name_the_path() {
    let text = "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\nbucket_bits = \"x\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n";
    let err = Config::parse("t.toml", text, &env).unwrap_err();
    assert!(
        err.to_string()
            .contains("producer[0].bucket_bits: invalid type"),
        "{err}"
    );
}

#[test]
fn semantic_checks() {
    let cases: &[(&str, &str)] = &[
        (
            "name = \"Bad Name\"",
            "producer[0].name: invalid producer name \"Bad Name\"",
        ),
        (
            "timezone = \"Mars/Base\"",
            "producer[0].timezone: unknown time zone \"Mars/Base\"",
        ),
        (
            "bucket_bits = 30",
            "producer[0].bucket_bits: bucket_bits 30 is out of range",
        ),
        (
            "max_drift_ratio = 0.0",
            "producer[0].max_drift_ratio: max_drift_ratio 0 must be in (0, 1]",
        ),
    ];
    for (line, expected) in cases {
        let text = format!("[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n{line}\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n");
        let text = text.replacen(
            "name = \"a\"\n",
            if line.starts_with("name") {
                ""
            } else {
                "name = \"a\"\n"
            },
            1,
        );
        let err = Config::parse("t.toml", &text, &env).unwrap_err();
        assert!(err.to_string().contains(expected), "{line}: {err}");
    }
}

#[test]
fn work_checks() {
    let parse = |work: &str| {
        let text = format!("[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n[producer.work]\n{work}\n");
        Config::parse("t.toml", &text, &env).map(|_| ())
    };
    let http = "action = \"http\"\nurl = \"http://127.0.0.1:9/w\"";
    for (lease, timeout) in [(2, 30), (10, 10)] {
        let err = parse(&format!(
            "{http}\nlease_secs = {lease}\ntimeout_secs = {timeout}"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "producer[0].work.lease_secs: {lease} must be greater than timeout_secs {timeout}"
            )),
            "{err}"
        );
    }
    assert!(parse(&format!("{http}\nlease_secs = 11\ntimeout_secs = 10")).is_ok());
    // Only a call can outlast a lease: `apply` items are one transaction.
    assert!(parse("action = \"apply\"\nlease_secs = 1\ntimeout_secs = 10").is_ok());
    // A URL in a problem is shown without its credentials or query.
    let err = parse("action = \"http\"\nurl = \"ftp://bob:hunter2@host/w?token=abc\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("producer[0].work.url: URL \"ftp://host/w\" must be http or https"),
        "{err}"
    );
    for secret in ["bob", "hunter2", "token=abc"] {
        assert!(!err.contains(secret), "{secret} in {err}");
    }
}

#[test]
fn expand_handles_escapes_and_multiple_names() {
    assert_eq!(expand("a${TOKEN}b", &env).unwrap(), "as3cretb");
    assert_eq!(expand("$${TOKEN} $x", &env).unwrap(), "${TOKEN} $x");
    assert_eq!(expand("${A}${B}", &env).unwrap_err(), vec!["A", "B"]);
    assert_eq!(expand("${A:-x}-${TOKEN:-y}", &env).unwrap(), "x-s3cret");
}

#[test]
fn secrets_never_appear_in_errors() {
    let text = "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n[producer.webhook]\nscheme = \"standard-webhooks\"\nsecret = \"whsec_${TOKEN}!!\"\n";
    let err = Config::parse("t.toml", text, &env).unwrap_err();
    assert!(
        err.to_string()
            .contains("producer[0].webhook.secret: must be base64"),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"));
}

/// A header value HTTP cannot carry fails `driftd check`, not every keyframe:
/// the pull's plan is built when the config is validated.
#[test]
fn the_snapshot_plan_is_checked_with_the_config() {
    let text = "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\nheaders = { Authorization = \"Bearer ${TOKEN}\\n\" }\n";
    let err = Config::parse("t.toml", text, &env).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].path, "producer[0].snapshot");
    assert!(
        err.problems[0]
            .message
            .contains("not a valid HTTP header value"),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let ok = Config::parse("t.toml", MINIMAL, &env).unwrap();
    let plan = format!("{:?}", ok.config.producers[0].snapshot_plan());
    assert!(
        plan.contains("127.0.0.1:9") && !plan.contains("s3cret"),
        "{plan}"
    );
}

#[test]
fn adaptive_schedules_need_their_bounds() {
    let producer = |schedule: &str, adaptive: &str| {
        format!(
            "[[producer]]\nname = \"a\"\nschedule = \"{schedule}\"\n{adaptive}\
             [producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n"
        )
    };
    let ok = producer(
        "adaptive",
        "[producer.adaptive]\nmin_interval_secs = 30\nmax_interval_secs = 3600\ntarget_drift_seconds = 600\n",
    );
    let ok = Config::parse("t.toml", &ok, &env).unwrap();
    assert!(ok.config.producers[0].schedule().is_adaptive());
    let cases = [
        (
            producer("adaptive", ""),
            "producer[0].adaptive: schedule = \"adaptive\" needs a [producer.adaptive] table",
        ),
        (
            producer(
                "adaptive",
                "[producer.adaptive]\nmin_interval_secs = 60\nmax_interval_secs = 30\ntarget_drift_seconds = 0\nmax_pulls_per_day = 0\n",
            ),
            "producer[0].adaptive.max_interval_secs: max_interval_secs 30 is below min_interval_secs 60",
        ),
        (
            producer(
                "* * * * * *",
                "[producer.adaptive]\nmin_interval_secs = 1\nmax_interval_secs = 2\ntarget_drift_seconds = 1\n",
            ),
            "producer[0].adaptive: only read with schedule = \"adaptive\"; schedule is \"* * * * * *\"",
        ),
    ];
    for (text, want) in cases {
        let shown = Config::parse("t.toml", &text, &env)
            .unwrap_err()
            .to_string();
        assert!(shown.contains(want), "{shown}");
    }
    let bad = producer(
        "adaptive",
        "[producer.adaptive]\nmin_interval_secs = 60\nmax_interval_secs = 30\ntarget_drift_seconds = 0\nmax_pulls_per_day = 0\n",
    );
    let err = Config::parse("t.toml", &bad, &env).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("target_drift_seconds 0 must be a positive number"),
        "{shown}"
    );
    assert!(
        shown.contains("max_pulls_per_day: must be at least 1"),
        "{shown}"
    );
    assert_eq!(err.problems.len(), 3, "{shown}");
}
