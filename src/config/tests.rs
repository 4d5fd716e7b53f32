//! Tests of loading and validating config files.

use super::tree::expand;
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
            .contains("producer[0].bucket_bits: expected an integer, found a string \"x\""),
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
            "producer[0].bucket_bits: must be between 0 and 24, not 30",
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

/// A producer with `extra` lines after its name and schedule, and a snapshot table.
fn producer(extra: &str) -> String {
    format!(
        "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n{extra}\n\
         [producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n"
    )
}

fn problems(text: &str) -> Vec<Problem> {
    Config::parse("t.toml", text, &env).unwrap_err().problems
}

fn shown(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

#[test]
fn paths_split_into_keys_and_indexes() {
    use super::tree::{join, steps, Step};
    assert_eq!(
        steps(r#"producer[1].email.rule[0].set."/a.b""#).unwrap(),
        vec![
            Step::Key("producer".into()),
            Step::Index(1),
            Step::Key("email".into()),
            Step::Key("rule".into()),
            Step::Index(0),
            Step::Key("set".into()),
            Step::Key("/a.b".into()),
        ]
    );
    assert_eq!(join("a", "X-Key"), "a.X-Key");
    assert_eq!(join("a", "X Key"), r#"a."X Key""#);
}

/// A type error no longer hides the rest: four mistakes of four kinds are four problems.
#[test]
fn four_mistakes_of_four_kinds_are_four_problems() {
    let text = r#"[[producer]]
name = "a"
shedule = "* * * * * *"
schedule = "* * * * * *"
bucket_bits = "x"
unhealthy_after = 0
[producer.snapshot]
url = "not a url"
"#;
    let p = problems(text);
    assert_eq!(
        shown(&p),
        [
            "producer[0].shedule: unknown key `shedule`, did you mean `schedule`?",
            "producer[0].bucket_bits: expected an integer, found a string \"x\"",
            "producer[0].unhealthy_after: must be at least 1, not 0",
            "producer[0].snapshot.url: invalid URL \"not a url\": relative URL without a base",
        ]
    );
}

/// Values of the wrong type anywhere (a string for a table, for an array, for a
/// number, for a secret) are each one problem, and the checks that would read
/// them say nothing more.
#[test]
fn every_type_error_is_reported_once() {
    let text = r#"[server]
max_connections = "many"
read_token = 7
[[producer]]
name = 5
schedule = "* * * * * *"
webhook = "hmac"
email = { maildir = "/tmp/m", rule = "subject" }
[producer.snapshot]
url = "http://127.0.0.1:9/"
ignore = "/updated_at"
headers = "Bearer abc"
"#;
    let p = problems(text);
    assert_eq!(
        shown(&p),
        [
            "server.max_connections: expected an integer, found a string \"many\"",
            "server.read_token: expected a string, found an integer",
            "producer[0].name: expected a string, found an integer 5",
            "producer[0].webhook: expected a table, found a string",
            "producer[0].email.rule: expected an array, found a string",
            "producer[0].snapshot.ignore: expected an array, found a string",
            "producer[0].snapshot.headers: expected a table, found a string",
        ]
    );
    // Where a table was expected the value may be a secret: never shown.
    let rendered = Config::parse("t.toml", text, &env).unwrap_err().to_string();
    assert!(!rendered.contains("Bearer abc"), "{rendered}");
    assert!(rendered.contains("headers = \"***\""), "{rendered}");
}

#[test]
fn a_missing_key_is_one_problem_at_its_table() {
    let text = "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\nkey = \"/id\"\n[producer.webhook]\nsecret = \"s\"\n";
    let p = problems(text);
    assert_eq!(
        shown(&p),
        [
            "producer[0].snapshot: missing key `url`",
            "producer[0].webhook: missing key `scheme`",
        ]
    );
    let at = p[0].at.as_ref().unwrap();
    assert_eq!((at.line, at.source.as_str()), (4, "[producer.snapshot]"));
}

/// Each problem carries its line, column and the line with a caret under the value.
#[test]
fn problems_point_at_the_line_and_column() {
    let text = producer("bucket_bits = 300\nshedule = \"0 * * * * *\"");
    let p = problems(&text);
    let at = p[0].at.as_ref().unwrap();
    assert_eq!((at.line, at.column), (4, 15));
    assert_eq!(at.source, "bucket_bits = 300");
    assert_eq!(at.caret, 14..17);
    let at = p[1].at.as_ref().unwrap();
    assert_eq!((at.line, at.column, at.caret.clone()), (5, 1, 0..7));
    assert_eq!(
        p[1].render("error", "driftd.toml", false),
        "error: producer[0].shedule: unknown key `shedule`, did you mean `schedule`?\n \
         --> driftd.toml:5:1\n  |\n5 | shedule = \"***\"\n  | ^^^^^^^\n"
    );
    // A problem found by validation is located through its path.
    let p = problems(&producer("timezone = \"Mars/Base\""));
    let at = p[0].at.as_ref().unwrap();
    assert_eq!((at.line, at.column, at.caret.clone()), (4, 12, 11..22));
    // Without a terminal there is no colour; with one, ANSI codes.
    assert!(!p[0].render("error", "t.toml", false).contains('\x1b'));
    assert!(p[0]
        .render("error", "t.toml", true)
        .contains("\x1b[1;31merror"));
}

/// A valid key in the wrong table names the tables it belongs in.
#[test]
fn a_key_in_the_wrong_table_says_where_it_belongs() {
    let text = "listen = \"127.0.0.1:1\"\n".to_string()
        + &producer("lease_secs = 30\ntimeout_secs = 5")
        + "[producer.work]\naction = \"apply\"\nitems = \"/data\"\n";
    assert_eq!(
        shown(&problems(&text)),
        [
            "listen: unknown key `listen` here, it belongs in [server]",
            "producer[0].lease_secs: unknown key `lease_secs` here, it belongs in [producer.work]",
            "producer[0].timeout_secs: unknown key `timeout_secs` here, it belongs in \
             [producer.snapshot], [producer.work] or [producer.fetch]",
            "producer[0].work.items: unknown key `items` here, it belongs in \
             [producer.snapshot] or [producer.webhook]",
        ]
    );
    // Every table's keys are read from its type.
    for (table, keys) in super::types::tables() {
        assert!(!keys.is_empty(), "{table}");
    }
}

#[test]
fn unknown_keys_and_values_suggest_the_nearest() {
    let text = "[server]\nlistn = \"127.0.0.1:1\"\n[databse]\n".to_string()
        + &producer("bukcet_bits = 3\nzzz = 1")
        + "[producer.webhook]\nscheme = \"Github\"\nsecret = \"s\"\n";
    assert_eq!(
        shown(&problems(&text)),
        [
            "server.listn: unknown key `listn`, did you mean `listen`?",
            "databse: unknown key `databse`, did you mean `database`?",
            "producer[0].bukcet_bits: unknown key `bukcet_bits`, did you mean `bucket_bits`?",
            "producer[0].zzz: unknown key `zzz`",
            "producer[0].webhook.scheme: unknown value \"Github\", expected one of `hmac-sha256`, \
             `github`, `stripe`, `standard-webhooks`, `none`; did you mean `github`?",
        ]
    );
}

/// One mistake is one problem: what a bad value makes other checks see is not reported.
#[test]
fn one_mistake_is_one_problem() {
    let webhook = |scheme: &str, secret: &str| {
        producer("") + &format!("[producer.webhook]\nscheme = \"{scheme}\"\n{secret}\n")
    };
    let email = |rule: &str| {
        producer("") + &format!("[producer.email]\nmaildir = \"/tmp/m\"\n[[producer.email.rule]]\nname = \"r\"\n{rule}\n")
    };
    let cases = [
        // An unset variable, not also "must be base64".
        (
            webhook("standard-webhooks", "secret = \"whsec_${UNSET}\""),
            "producer[0].webhook.secret: environment variable \"UNSET\" is not set",
        ),
        // A bad regex, not also a missing group for key, version and set.
        (
            email("subject = \"(?P<id>[0-9+\"\nkey = \"id\"\nversion = \"v\"\nset = { \"/s\" = \"id\" }"),
            "producer[0].email.rule[0].subject: invalid regex",
        ),
        // An unknown scheme, not also "secret required" or "header required".
        (
            webhook("hmac", ""),
            "producer[0].webhook.scheme: unknown value \"hmac\"",
        ),
        // A schedule of the wrong type, not also "[producer.adaptive] only read with ...".
        (
            "[[producer]]\nname = \"a\"\nschedule = 5\n[producer.adaptive]\nmin_interval_secs = 1\n\
             max_interval_secs = 2\ntarget_drift_seconds = 1\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n"
                .to_string(),
            "producer[0].schedule: expected a string, found an integer 5",
        ),
        // A negative backoff_max_ms, not also "backoff_base_ms exceeds it".
        (
            producer("") + "[producer.work]\nbackoff_max_ms = -1\n",
            "producer[0].work.backoff_max_ms: must be at least 0, not -1",
        ),
        // request_timeout_secs of the wrong type, not also a comparison with its stand-in.
        (
            "[server]\nrequest_timeout_secs = \"30\"\nidle_timeout_secs = 5\n".to_string() + &producer(""),
            "server.request_timeout_secs: expected an integer, found a string \"30\"",
        ),
        // A min_interval_secs of 0: not positive, not also "below 0.1".
        (
            "[[producer]]\nname = \"a\"\nschedule = \"adaptive\"\n[producer.adaptive]\nmin_interval_secs = 0\n\
             max_interval_secs = 60\ntarget_drift_seconds = 1\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n"
                .to_string(),
            "producer[0].adaptive.min_interval_secs: min_interval_secs 0 must be a positive number",
        ),
        // A variable in an unknown key's value: the key is the mistake.
        (
            producer("secrt = \"${UNSET}\""),
            "producer[0].secrt: unknown key `secrt`",
        ),
        // A value of the wrong type holding a variable.
        (
            producer("bucket_bits = \"${UNSET}\""),
            "producer[0].bucket_bits: expected an integer, found a string \"${UNSET}\"",
        ),
    ];
    for (text, want) in cases {
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{text}\n{:#?}", shown(&p));
        assert!(p[0].to_string().starts_with(want), "{text}\n{}", p[0]);
    }
}

/// RFC 6901: `~` is followed by 0 or 1; the problem names the key and the pointer.
#[test]
fn pointers_with_bad_tilde_escapes_are_refused() {
    for (pointer, ok) in [
        ("/a~0b/c~1d", true),
        ("/a~2", false),
        ("/a~", false),
        ("/~/x", false),
    ] {
        let text = producer("").replace(
            "[producer.snapshot]\n",
            &format!("[producer.snapshot]\nkey = \"{pointer}\"\n"),
        );
        match Config::parse("t.toml", &text, &env) {
            Ok(_) => assert!(ok, "{pointer} accepted"),
            Err(e) => {
                assert!(!ok, "{pointer}: {e}");
                assert_eq!(
                    shown(&e.problems),
                    [format!(
                        "producer[0].snapshot.key: invalid JSON pointer {pointer:?}: '~' must be \
                         followed by 0 or 1 (write ~0 for '~' and ~1 for '/')"
                    )]
                );
            }
        }
    }
}

/// A number out of range says the range, whether or not its type can hold it.
#[test]
fn out_of_range_numbers_say_the_range() {
    let cases = [
        (
            "bucket_bits = 25",
            "producer[0].bucket_bits: must be between 0 and 24, not 25",
        ),
        (
            "bucket_bits = 300",
            "producer[0].bucket_bits: must be between 0 and 24, not 300",
        ),
        (
            "bucket_bits = -1",
            "producer[0].bucket_bits: must be between 0 and 24, not -1",
        ),
        (
            "unhealthy_after = 0",
            "producer[0].unhealthy_after: must be at least 1, not 0",
        ),
        (
            "unhealthy_after = -3",
            "producer[0].unhealthy_after: must be at least 1, not -3",
        ),
        (
            "unhealthy_after = 5000000000",
            "producer[0].unhealthy_after: must be at most 4294967295, not 5000000000",
        ),
        (
            "max_drift_rows = -1",
            "producer[0].max_drift_rows: must be at least 0, not -1",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(shown(&problems(&producer(line))), [want], "{line}");
    }
    let server = |line: &str| format!("[server]\n{line}\n") + &producer("");
    for (line, want) in [
        (
            "max_connections = 0",
            "server.max_connections: must be at least 1, not 0",
        ),
        (
            "max_connections = -2",
            "server.max_connections: must be at least 1, not -2",
        ),
        (
            "body_limit_bytes = -1",
            "server.body_limit_bytes: must be at least 1, not -1",
        ),
    ] {
        assert_eq!(shown(&problems(&server(line))), [want], "{line}");
    }
    let snapshot = |line: &str| {
        producer("").replace(
            "[producer.snapshot]\n",
            &format!("[producer.snapshot]\n{line}\n"),
        )
    };
    for (line, want) in [
        (
            "retries = -1",
            "producer[0].snapshot.retries: must be at least 0, not -1",
        ),
        (
            "max_pages = 0",
            "producer[0].snapshot.max_pages: must be at least 1, not 0",
        ),
        (
            "timeout_secs = -5",
            "producer[0].snapshot.timeout_secs: must be at least 1, not -5",
        ),
    ] {
        assert_eq!(shown(&problems(&snapshot(line))), [want], "{line}");
    }
}

/// A syntax error is one problem, with its place.
#[test]
fn a_syntax_error_is_one_problem_with_its_place() {
    for (text, line) in [
        ("[server]\nlisten = \"127.0.0.1:1\n[[producer]]\n", 2),
        ("[server]\n\n[[producer]\nname = \"a\"\n", 3),
        ("[server]\nlisten = \"a\"\nlisten = \"b\"\n", 3),
    ] {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{text}: {:?}", shown(&p));
        assert!(p[0].message.starts_with("invalid TOML: "), "{}", p[0]);
        let at = p[0].at.as_ref().expect("a place");
        assert_eq!(at.line, line, "{text}: {}", p[0]);
        assert!(!at.caret.is_empty());
    }
}

/// `listen` takes a host name, resolved when the server binds: `check` only reads its form.
#[test]
fn listen_takes_a_host_name_or_an_address() {
    let listen = |addr: &str| {
        Config::parse(
            "t.toml",
            &format!("[server]\nlisten = \"{addr}\"\n{}", producer("")),
            &env,
        )
    };
    for ok in [
        "localhost:7070",
        "driftd.internal.example:80",
        "127.0.0.1:7070",
        "[::1]:7070",
        "0.0.0.0:0",
    ] {
        assert!(listen(ok).is_ok(), "{ok}: {:?}", listen(ok).err());
    }
    for (bad, why) in [
        ("localhost", "expected HOST:PORT"),
        (
            "localhost:70700",
            "port \"70700\" must be a number from 0 to 65535",
        ),
        (
            "local host:7070",
            "\"local host\" is not a host name or an IP address",
        ),
        ("::1:7070", "an IPv6 address is written in brackets"),
        ("[::g]:7070", "\"::g\" is not an IPv6 address"),
        (
            "300.1.1.1:7070",
            "\"300.1.1.1\" is not a host name or an IP address",
        ),
        (":7070", "\"\" is not a host name"),
    ] {
        let p = listen(bad).unwrap_err().problems;
        assert_eq!(p.len(), 1, "{bad}");
        assert!(
            p[0].to_string().starts_with(&format!(
                "server.listen: invalid listen address {bad:?}: {why}"
            )),
            "{}",
            p[0]
        );
    }
}

/// No secret is ever printed: not in a message, not in a source line, whether
/// the problem is the secret's or another's on the same line.
#[test]
fn secrets_never_appear_in_the_printed_lines() {
    let env = |name: &str| match name {
        "TOKEN" => Some("envtoken1".to_string()),
        _ => None,
    };
    let text = r#"[server]
admin_token = "adm1n"
read_token = "adm1n"
[database]
url = "mysql://driftd:pgpass1@db/driftd"
[[producer]]
name = "a"
schedule = "* * * * * *"
[producer.snapshot]
url = "ftp://bob:urlpass1@vendor/x?token=query1"
headers = { Authorization = "Bearer sk_live_lit1 ${TOKEN}", "Bad Name" = "hv1" }
[producer.webhook]
scheme = "standard-webhooks"
secret = "whsec_!!lit2"
previous_secret = 5
secrte = "typo1"
[producer.work]
action = "http"
url = "http://127.0.0.1:9/w"
secret = { x = "nested1" }
"#;
    let err = Config::parse("t.toml", text, &env).unwrap_err();
    let rendered = err.to_string();
    for secret in [
        "adm1n",
        "pgpass1",
        "urlpass1",
        "query1",
        "sk_live_lit1",
        "envtoken1",
        "hv1",
        "lit2",
        "typo1",
        "nested1",
        "bob",
    ] {
        assert!(!rendered.contains(secret), "{secret} in\n{rendered}");
    }
    // Each of those lines is printed, masked.
    for line in [
        "read_token = \"***\"",
        "url = \"***\"",
        "url = \"ftp://***@vendor/x?***\"",
        "headers = { Authorization = \"***${TOKEN}\", \"Bad Name\" = \"***\" }",
        "secret = \"***\"",
        "previous_secret = ***",
        "secrte = \"***\"",
        "secret = { x = \"***\" }",
    ] {
        assert!(
            rendered.contains(&format!(" | {line}\n")),
            "{line} in\n{rendered}"
        );
    }
    assert_eq!(err.problems.len(), 8, "{rendered}");
}

/// A line printed for a TOML syntax error shows no value (nothing is known of
/// which are secret), and no printed line shows a comment's text.
#[test]
fn syntax_errors_and_comments_show_no_value() {
    let p = problems("[server]\nadmin_token = s3cret1 # was s3cret2\n");
    assert_eq!(p.len(), 1);
    let at = p[0].at.as_ref().unwrap();
    assert_eq!(at.source, "admin_token = *** # ***");
    assert_eq!((at.line, at.column, at.caret.clone()), (2, 15, 14..17));
    let p =
        problems("[server]\nadmin_token = \"s3cret1\"\nread_token = \"s3cret1\" # old: s3cret2\n");
    let at = p[0].at.as_ref().unwrap();
    assert_eq!(at.source, "read_token = \"***\" # ***");
    // A `#` inside a string starts no comment.
    let p = problems(&producer("timezone = \"Mars#Base\" # Mars"));
    assert_eq!(
        p[0].at.as_ref().unwrap().source,
        "timezone = \"Mars#Base\" # ***"
    );
}

#[test]
fn a_table_where_an_array_of_tables_belongs_says_how_to_write_it() {
    let text = "[producer]\nname = \"a\"\n";
    assert_eq!(
        shown(&problems(text)),
        ["producer: expected an array, found a table (each table of an array is headed [[producer]])"]
    );
}
