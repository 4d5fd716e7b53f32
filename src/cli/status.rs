//! `driftd status` as text: a table of producers, then each producer's details and its runs in columns, then the fetch backlog and the work queue.

use serde_json::Value;

use super::table::{cell, Align, Table};
use crate::store::FetchRow;

/// The text of `driftd status`, from the report `/admin/status` serves,
/// the oldest keys waiting to be fetched, and the time (ms).
pub(crate) fn render(report: &Value, waiting: &[FetchRow], now: i64) -> String {
    let mut out: Vec<String> = Vec::new();
    let producers = report["producers"].as_array().cloned().unwrap_or_default();
    let mut overview = Table::new(
        &["producer", "health", "entities", "open drift", "last run"],
        &[
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
    );
    for p in &producers {
        let last = p["runs"].get(0).map_or_else(
            || "-".to_string(),
            |r| {
                format!(
                    "{} {}, {}",
                    cell(&r["id"]),
                    cell(&r["state"]),
                    ago(r["started_at"].as_i64(), now)
                )
            },
        );
        overview.row(vec![
            cell(&p["producer"]),
            cell(&p["health"]),
            cell(&p["entities"]),
            cell(&p["open_drift"]),
            last,
        ]);
    }
    out.extend(overview.lines(""));
    for p in &producers {
        out.push(String::new());
        out.push(format!("{}:", cell(&p["producer"])));
        details(p, now, &mut out);
        let runs = p["runs"].as_array().cloned().unwrap_or_default();
        if runs.is_empty() {
            out.push("  no keyframe run yet".to_string());
            continue;
        }
        let mut t = Table::new(
            &[
                "run", "state", "started", "records", "missing", "extra", "changed", "why",
            ],
            &[
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Left,
            ],
        );
        for r in &runs {
            let mut why: Vec<String> = r["causes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(cause, n)| format!("{cause} {n}"))
                .collect();
            if let Some(e) = r["error"].as_str() {
                why.push(format!("error: {e}"));
            }
            t.row(vec![
                cell(&r["id"]),
                cell(&r["state"]),
                ago(r["started_at"].as_i64(), now),
                cell(&r["records"]),
                cell(&r["missing"]),
                cell(&r["extra"]),
                cell(&r["changed"]),
                if why.is_empty() {
                    "-".to_string()
                } else {
                    why.join(", ")
                },
            ]);
        }
        out.extend(t.lines("  "));
    }
    if !waiting.is_empty() {
        out.push(String::new());
        out.push("waiting to be fetched (oldest first):".to_string());
        let mut t = Table::new(
            &[
                "producer",
                "key",
                "asked",
                "first asked",
                "attempts",
                "last error",
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Left,
            ],
        );
        for f in waiting {
            t.row(vec![
                f.producer.clone(),
                f.key.clone(),
                f.asked.to_string(),
                ago(Some(f.first_asked), now),
                f.attempts.to_string(),
                f.last_error.clone().unwrap_or_else(|| "-".to_string()),
            ]);
        }
        out.extend(t.lines("  "));
    }
    out.push(String::new());
    let counts: Vec<String> = report["work"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    out.push(if counts.is_empty() {
        "work: none".to_string()
    } else {
        format!("work: {}", counts.join("  "))
    });
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// A producer's lines above its runs: a guarded run, the fetch backlog,
/// adaptive pacing, catch-ups.
fn details(p: &Value, now: i64, out: &mut Vec<String>) {
    if let Some(run) = p["guarded_run"].as_i64() {
        out.push(format!(
            "  GUARDED: run {run} found more deletions/overwrites than max_drift_ratio/max_drift_rows allow; \
             nothing is corrected until `driftd approve {run}` (or a later keyframe finds less)"
        ));
    }
    if let Some(n) = p["fetch"]["waiting"].as_i64() {
        out.push(format!("  fetch: {n} keys waiting"));
    }
    if p["pacing"].is_object() {
        let last = &p["pacing"]["last"];
        out.push(match last["next_at"].as_i64() {
            None => "  adaptive: no keyframe paced yet".to_string(),
            Some(at) => format!(
                "  adaptive: every {:.1}s ({}; drift rate {:.4}/s)  next in {}s",
                last["interval_secs"].as_f64().unwrap_or_default(),
                cell(&last["reason"]),
                last["rate"].as_f64().unwrap_or_default(),
                ((at - now) / 1000).max(0)
            ),
        });
    }
    if p["catchup"].is_object() {
        let every = cell(&p["catchup"]["every_secs"]);
        let last = &p["catchup"]["last"];
        out.push(match last["last_at"].as_i64() {
            None => format!("  catch-up every {every}s: not run yet"),
            Some(at) => format!(
                "  catch-up every {every}s: last {} {}  records {}  applied {}  since {}{}",
                ago(Some(at), now),
                if last["last_ok"].as_bool() == Some(true) {
                    "ok"
                } else {
                    "failed"
                },
                cell(&last["records"]),
                cell(&last["applied"]),
                cell(&last["since"]),
                last["last_error"]
                    .as_str()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            ),
        });
    }
}

/// `12s ago`, or `-` for no time.
fn ago(at: Option<i64>, now: i64) -> String {
    at.map_or_else(
        || "-".to_string(),
        |at| format!("{}s ago", ((now - at) / 1000).max(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn producers_and_runs_line_up_and_absent_values_are_dashes() {
        let now = 1_000_000;
        let report = json!({
            "producers": [
                {"producer": "a", "health": "healthy", "entities": 1234567, "open_drift": 0,
                 "runs": [{"id": 7, "state": "ok", "started_at": now - 5000, "records": 1234567,
                           "missing": 0, "extra": 0, "changed": 0, "causes": {}, "error": null}],
                 "catchup": {"every_secs": 60, "last": {"last_at": now - 2000, "last_ok": true,
                             "records": 3, "applied": 1, "since": null, "last_error": null}}},
                {"producer": "shipments-eu", "health": "unhealthy", "entities": 3, "open_drift": 17,
                 "runs": [{"id": 12, "state": "failed", "started_at": now - 65000, "records": 0,
                           "missing": 0, "extra": 0, "changed": 0, "causes": {},
                           "error": "GET http://vendor/x answered 503"}]},
            ],
            "work": {"pending": 17},
        });
        let text = render(&report, &[], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[..3],
            [
                "producer      health     entities  open drift  last run",
                "a             healthy     1234567           0  7 ok, 5s ago",
                "shipments-eu  unhealthy         3          17  12 failed, 65s ago",
            ]
        );
        assert!(
            text.contains("  catch-up every 60s: last 2s ago ok  records 3  applied 1  since -\n"),
            "{text}"
        );
        assert!(
            text.contains("   12  failed  65s ago        0        0      0        0  error: GET http://vendor/x answered 503\n"),
            "{text}"
        );
        assert!(!text.contains("null") && !text.contains("Some("), "{text}");
        assert!(text.ends_with("\nwork: pending 17\n"), "{text}");
    }
}
