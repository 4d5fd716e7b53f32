//! The verdict: the local rows compared record for record with the vendor's orders.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::churn::Stats;
use super::reporter::{Kind, Reporter};
use super::run::{drain, keyframe_now};
use super::vendor::Vendor;
use super::{DemoArgs, Outcome, FINAL_ROUNDS, FLUSH_TIMEOUT, PRODUCER};
use crate::config::Producer;
use crate::keyframe::run::Keyframer;
use crate::state::{RunState, WorkState};

/// Record-for-record comparison of local rows with the vendor's orders.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Comparison {
    pub local: usize,
    pub vendor: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<String>,
}

impl Comparison {
    pub(super) fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// Compares `local` (key, document) rows with the vendor's `records`.
pub(super) fn compare(
    local: &[(String, Option<Value>)],
    records: &BTreeMap<String, Value>,
) -> Comparison {
    let mut c = Comparison {
        local: local.len(),
        vendor: records.len(),
        ..Comparison::default()
    };
    let local_keys: BTreeMap<&str, Option<&Value>> = local
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_ref()))
        .collect();
    for (k, doc) in records {
        match local_keys.get(k.as_str()) {
            None => c.missing.push(k.clone()),
            Some(d) if *d != Some(doc) => c.different.push(k.clone()),
            Some(_) => {}
        }
    }
    for k in local_keys.keys() {
        if !records.contains_key(*k) {
            c.extra.push(k.to_string());
        }
    }
    c
}

/// Stops the churn, waits for in-flight webhooks, runs the final keyframe(s),
/// drains the work, compares, and prints the summary.
pub(super) async fn finish(
    r: &mut Reporter,
    keyframer: &Keyframer,
    p: &Producer,
    vendor: &Vendor,
    churn_task: JoinHandle<()>,
    churn_stop: &CancellationToken,
    args: &DemoArgs,
) -> anyhow::Result<Outcome> {
    r.console.say(format!(
        "{}s are up: the vendor stops changing; waiting for in-flight webhooks",
        args.duration
    ));
    churn_stop.cancel();
    if tokio::time::timeout(FLUSH_TIMEOUT, churn_task)
        .await
        .is_err()
    {
        anyhow::bail!("the webhook sender did not stop within {FLUSH_TIMEOUT:?}");
    }
    let work_limit = Duration::from_secs(60 + args.records / 20);
    drain(r, "before the final keyframe", work_limit).await?;
    r.console.done();

    let mut final_drift = None;
    for round in 0..FINAL_ROUNDS {
        let kind = if round == 0 { Kind::Final } else { Kind::Check };
        let s = keyframe_now(r, keyframer, p, kind).await?;
        let open = drain(r, "applying the final corrections", work_limit).await?;
        r.console.done();
        if open > 0 {
            r.console.say(format!(
                "{open} corrections still open after {work_limit:?}"
            ));
        }
        if s.state == RunState::Ok && s.drift() == 0 {
            final_drift = Some((0, s.run_id.unwrap_or_default()));
            break;
        }
        final_drift = Some((s.drift(), s.run_id.unwrap_or_default()));
    }
    r.runs().await?;

    let local: Vec<(String, Option<Value>)> = r
        .store
        .entities(PRODUCER)
        .await?
        .into_iter()
        .map(|e| (e.key, e.doc))
        .collect();
    let records = vendor.lock().records().clone();
    let cmp = compare(&local, &records);
    let work = r.store.work_counts().await?;
    let done = r
        .metrics
        .work_completed
        .with_label_values(&[PRODUCER, "apply", "done"])
        .get();

    let s = &r.stats;
    let t = &r.totals;
    let changes = Stats::get(&s.changes);
    let lost = Stats::get(&s.lost);
    let pct = |n: u64| {
        if changes == 0 {
            0.0
        } else {
            n as f64 * 100.0 / changes as f64
        }
    };
    let mut out = vec![String::new(), "summary".to_string()];
    out.push(format!(
        "  vendor      {} orders at the start, {} at the end; {changes} changes",
        args.records,
        records.len()
    ));
    out.push(format!(
        "  webhooks    {} sent, {lost} lost ({:.1}%), {} duplicated, {} reordered",
        Stats::get(&s.sent),
        pct(lost),
        Stats::get(&s.duplicated),
        Stats::get(&s.reordered)
    ));
    if Stats::get(&s.accepted) == 0 && Stats::get(&s.not_found) > 0 {
        out.push(
            "  driftd      answered 404 to every webhook (no /hooks endpoint in this build): \
             keyframes alone corrected the drift"
                .into(),
        );
    } else {
        out.push(format!("  driftd      {}", r.driftd_deltas()));
    }
    out.push(format!(
        "  keyframes   {} run ({} failed, {} guarded); after the bootstrap ({} missing) they found \
         drift {} (missing {}, extra {}, changed {})",
        t.keyframes,
        t.failed,
        t.guarded,
        t.bootstrap_missing,
        t.missing + t.extra + t.changed,
        t.missing,
        t.extra,
        t.changed
    ));
    if Stats::get(&s.accepted) > 0 && lost > 0 {
        out.push(format!(
            "              ({lost} webhooks were lost; a lost change that a later delivered one \
             overtook leaves no drift)"
        ));
    }
    if r.last_catchup.is_some() {
        out.push(format!(
            "  catch-ups   applied {} changes between keyframes that no delta had brought",
            t.catchup_applied
        ));
    }
    out.push(format!(
        "  corrected   {done} apply work items done; {} open, {} dead",
        work.get(&WorkState::Pending).copied().unwrap_or(0)
            + work.get(&WorkState::Running).copied().unwrap_or(0),
        work.get(&WorkState::Dead).copied().unwrap_or(0)
    ));
    match final_drift {
        Some((d, id)) => out.push(format!("  final drift {d} (keyframe run {id})")),
        None => out.push("  final drift unknown (no final keyframe ran)".into()),
    }
    let equal = cmp.equal();
    if equal {
        out.push(format!(
            "  equal: yes ({} local orders match the vendor's {} records, document for document)",
            cmp.local, cmp.vendor
        ));
    } else {
        let sample = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        out.push(format!(
            "  equal: no ({} local rows, {} vendor records; missing {} [{}], extra {} [{}], different {} [{}])",
            cmp.local,
            cmp.vendor,
            cmp.missing.len(),
            sample(&cmp.missing),
            cmp.extra.len(),
            sample(&cmp.extra),
            cmp.different.len(),
            sample(&cmp.different)
        ));
    }
    r.console.done();
    for line in out {
        super::reporter::print_wrapped(&line, "              ");
    }
    Ok(if equal {
        Outcome::Equal
    } else {
        Outcome::Different
    })
}
