//! Logs of a child `driftd run`: JSON lines on stderr (by flag or `DRIFTD_LOG_FORMAT`), keyframe span fields present, config secrets absent even from failures.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::DaemonProcess;

/// Values that only the config's `${VAR}`s hold; no log line may contain them.
const SNAPSHOT_TOKEN: &str = "snaptok-5b1f0c9e7d3a4e21";
const WEBHOOK_SECRET: &str = "hooksec-8c2d7e4f1a9b3c60";

/// How the JSON format is asked for.
enum Ask {
    Flag,
    Env,
}

/// A child `driftd run` with producer `orders`: a keyframe every second
/// against a closed loopback port (so each one fails), an `Authorization`
/// header and a webhook secret that come from the environment.
fn start(dir: &Path, ask: Ask) -> DaemonProcess {
    let config = |listen: &str| {
        let closed = std::iter::repeat_with(crate::support::free_port)
            .find(|p| !listen.ends_with(&format!(":{p}")))
            .unwrap();
        format!(
            "[server]\nlisten = \"{listen}\"\n\
             [database]\nurl = \"sqlite://{db}\"\n\
             [[producer]]\nname = \"orders\"\nschedule = \"* * * * * *\"\n\
             [producer.snapshot]\nurl = \"http://127.0.0.1:{closed}/orders\"\nitems = \"/data\"\n\
             headers = {{ Authorization = \"Bearer ${{LOGS_SNAPSHOT_TOKEN}}\" }}\n\
             retries = 1\nretry_backoff_ms = 1\n\
             [producer.webhook]\nscheme = \"github\"\nsecret = \"${{LOGS_WEBHOOK_SECRET}}\"\n\
             [producer.work]\naction = \"apply\"\n",
            db = dir.join("driftd.db").display(),
        )
    };
    DaemonProcess::spawn(dir, "driftd", config, |cmd| {
        match ask {
            Ask::Flag => {
                cmd.args(["--log-format", "json"]);
                cmd.env_remove("DRIFTD_LOG_FORMAT");
            }
            Ask::Env => {
                cmd.env("DRIFTD_LOG_FORMAT", "json");
            }
        }
        cmd.env("RUST_LOG", "debug")
            .env("LOGS_SNAPSHOT_TOKEN", SNAPSHOT_TOKEN)
            .env("LOGS_WEBHOOK_SECRET", WEBHOOK_SECRET);
    })
}

/// Whether `event` was logged inside a `keyframe` span of producer `orders` with a run id.
fn in_keyframe_span(event: &Value) -> bool {
    let span = &event["span"];
    span["name"] == "keyframe" && span["producer"] == "orders" && span["run_id"].is_u64()
}

fn parse_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}\nlog:\n{log}"));
            assert!(v.is_object(), "log line is not a JSON object: {l:?}");
            for field in ["timestamp", "level", "target", "fields"] {
                assert!(v.get(field).is_some(), "log line has no {field:?}: {l:?}");
            }
            v
        })
        .collect()
}

async fn json_logs_carry_span_fields_and_no_secret(ask: Ask) {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(dir.path(), ask);

    // A scheduled keyframe fails against the closed port, inside its span.
    daemon
        .wait_for_log("a failed keyframe logged in its span", |log| {
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| {
                    in_keyframe_span(&v)
                        && v["fields"]["message"] == "keyframe failed: no drift emitted"
                })
        })
        .await;

    // Webhooks with a wrong and with a malformed signature are refused.
    let client = reqwest::Client::new();
    let url = format!("http://{}/hooks/orders", daemon.addr);
    let wrong = format!("sha256={}", "ab".repeat(32));
    for signature in [wrong.as_str(), "sha256=not-hex"] {
        let r = client
            .post(&url)
            .header("X-Hub-Signature-256", signature)
            .header("content-type", "application/json")
            .body(r#"{"id":"ord_1","status":"paid"}"#)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("POST /hooks/orders");
        assert_eq!(r.status().as_u16(), 401, "{signature}");
    }
    daemon
        .wait_for_log("both refusals logged", |log| {
            log.matches("webhook refused").count() >= 2
        })
        .await;

    let log = daemon.stop();
    let stdout = std::fs::read_to_string(dir.path().join("driftd.stdout")).unwrap();
    assert_eq!(stdout, "", "logs go to stderr only");
    let events = parse_lines(&log);
    assert!(events.len() >= 4, "too few log lines:\n{log}");
    assert!(
        events
            .iter()
            .any(|v| v["fields"]["message"] == "driftd running"),
        "no start-up line:\n{log}"
    );
    assert!(
        events
            .iter()
            .any(|v| in_keyframe_span(v) && v["level"] == "WARN"),
        "no keyframe warning in its span:\n{log}"
    );
    let refused: Vec<&Value> = events
        .iter()
        .filter(|v| v["fields"]["message"] == "webhook refused")
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(refused.iter().all(|v| v["fields"]["producer"] == "orders"));
    for (i, line) in log.lines().enumerate() {
        for secret in [SNAPSHOT_TOKEN, WEBHOOK_SECRET] {
            assert!(
                !line.contains(secret),
                "log line {} leaks a config secret: {line}",
                i + 1
            );
        }
    }
}

crate::limited_test! {
async fn log_format_flag_json() {
    json_logs_carry_span_fields_and_no_secret(Ask::Flag).await;
}
}

crate::limited_test! {
async fn log_format_env_json() {
    json_logs_carry_span_fields_and_no_secret(Ask::Env).await;
}
}

/// `driftd run` against a database that refuses connections, its output
/// piped or through a pseudo-terminal (`script`): (output, exit status).
fn run_refused(dir: &Path, terminal: bool) -> (String, std::process::ExitStatus) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("refused.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"postgres://u:pw@127.0.0.1:{port}/db\"\n"),
    )
    .unwrap();
    let bin = crate::support::driftd_bin();
    let mut cmd = if terminal {
        let mut c = std::process::Command::new("script");
        c.args(["-qec"]).arg(format!(
            "{} run --config {}",
            bin.display(),
            config.display()
        ));
        c.arg("/dev/null");
        c
    } else {
        let mut c = std::process::Command::new(bin);
        c.args(["run", "--config", config.to_str().unwrap()]);
        c
    };
    let out = cmd
        .env_remove("DRIFTD_CONFIG")
        .env_remove("DRIFTD_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run driftd");
    (
        String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
        out.status,
    )
}

#[test]
fn text_logs_are_coloured_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let (piped, status) = run_refused(dir.path(), false);
    assert!(!status.success(), "{piped}");
    assert!(
        piped.contains("ERROR")
            && piped.contains("cannot start")
            && piped.contains("connection refused"),
        "{piped}"
    );
    assert!(
        !piped.contains('\u{1b}'),
        "colour codes in a pipe: {piped:?}"
    );
    let (on_terminal, _) = run_refused(dir.path(), true);
    assert!(on_terminal.contains("cannot start"), "{on_terminal}");
    assert!(
        on_terminal.contains("\u{1b}["),
        "no colour on a terminal: {on_terminal:?}"
    );
}

crate::limited_test! {
async fn a_running_daemons_text_logs_carry_no_colour_codes_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("driftd.db");
    let mut daemon = DaemonProcess::spawn(
        dir.path(),
        "driftd",
        |listen| format!("[server]\nlisten = \"{listen}\"\n[database]\nurl = \"sqlite://{}\"\n", db.display()),
        |cmd| {
            cmd.env_remove("DRIFTD_LOG_FORMAT").env_remove("NO_COLOR");
        },
    );
    daemon.ready().await;
    let log = daemon.stop();
    assert!(log.contains(" INFO ") && log.contains("driftd running"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in the log file: {log:?}");
}
}
