//! The ingest scenario: signed webhooks through the real daemon (`App`) against single-row durable `INSERT`s into an equivalent table, closed loop per client count, then open loop at 80% of the best rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use driftd::app::App;
use driftd::config::Config;
use driftd::ingest::signature;
use driftd::store::now_ms;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::BackendArg;
use crate::db::{baseline_pool, with_db, PG_POOL};
use crate::load::{load, Load};
use crate::report::{note, ratio};
use driftd::store::sql::query;

/// The webhook secret of the ingest and feed producers.
const WEBHOOK_SECRET: &str = "bench-webhook-s3cret";

#[derive(Args, Clone)]
pub(super) struct IngestKnobs {
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_values = ["1", "16", "64"])]
    clients: Vec<usize>,
    /// Seconds per level and side.
    #[arg(long, default_value_t = 3.0)]
    ingest_secs: f64,
    /// Requests per level and side, at most.
    #[arg(long, default_value_t = 50_000)]
    ingest_max: u64,
}

#[derive(Debug, Clone, Serialize)]
struct IngestLevel {
    clients: usize,
    driftd: Load,
    insert_baseline: Load,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct IngestReport {
    backend: BackendArg,
    levels: Vec<IngestLevel>,
    /// Open-loop run at 80% of the best driftd rate, with the clients of that level.
    paced: Option<PacedRun>,
}

#[derive(Debug, Clone, Serialize)]
struct PacedRun {
    target_per_sec: f64,
    load: Load,
}

fn ingest_config(url: &str, backend: BackendArg) -> Result<Config> {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{url}"
max_connections = {PG_POOL}
{}"#,
        webhook_producer("hooks")
    );
    let _ = backend;
    Ok(Config::parse("bench.toml", &text, &|_| None)
        .map_err(|e| anyhow!("{e}"))?
        .config)
}

/// A producer named `name` that takes webhooks signed with HMAC-SHA256 and
/// [`WEBHOOK_SECRET`] and never pulls, as TOML.
pub(super) fn webhook_producer(name: &str) -> String {
    format!(
        r#"
[[producer]]
name = "{name}"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/unused"
[producer.webhook]
scheme = "hmac-sha256"
secret = "{WEBHOOK_SECRET}"
header = "X-Signature"
prefix = "sha256="
key = "/id"
version = "/version"
[producer.work]
action = "none"
"#
    )
}

fn delta_body(seq: u64, side: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{side}-{seq:09}","version":1,"status":"paid","amount_cents":{},"customer":"customer{}@example.test","note":"a delta of about two hundred bytes, padded for realism"}}"#,
        seq * 7 % 100_000,
        seq % 5_000
    )
    .into_bytes()
}

/// Per client count, the `INSERT` baseline then driftd, closed loop; then
/// driftd open loop at 80% of its best rate.
pub(super) async fn scenario(backend: BackendArg, k: &IngestKnobs) -> Result<IngestReport> {
    let k = k.clone();
    with_db(backend, "ingest", |url| async move {
        note(format!("ingest/{}: starting the daemon", backend.name()));
        let config = ingest_config(&url, backend)?;
        let wcfg = config.producers[0]
            .webhook
            .clone()
            .ok_or_else(|| anyhow!("the bench producer has a webhook"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = App::build(config, Some(listener)).await?;
        let addr = app.local_addr()?;
        let shutdown = CancellationToken::new();
        let daemon = tokio::spawn(app.run(shutdown.clone()));

        let pool = baseline_pool(&url, backend).await?;
        let create = match backend {
            BackendArg::Sqlite => {
                "CREATE TABLE bench_inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, producer TEXT NOT NULL,
                 channel TEXT NOT NULL, received_at INTEGER NOT NULL, dedup_key TEXT, duplicate_of INTEGER,
                 headers TEXT NOT NULL, body BLOB NOT NULL, outcome TEXT NOT NULL DEFAULT 'pending',
                 error TEXT, applied_at INTEGER)"
            }
            BackendArg::Postgres => {
                "CREATE TABLE bench_inbox (id BIGSERIAL PRIMARY KEY, producer TEXT NOT NULL,
                 channel TEXT NOT NULL, received_at BIGINT NOT NULL, dedup_key TEXT, duplicate_of BIGINT,
                 headers TEXT NOT NULL, body BYTEA NOT NULL, outcome TEXT NOT NULL DEFAULT 'pending',
                 error TEXT, applied_at BIGINT)"
            }
        };
        query(create).execute(&pool).await?;
        query(
            "CREATE UNIQUE INDEX bench_inbox_dedup ON bench_inbox (producer, channel, dedup_key)
             WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL",
        )
        .execute(&pool)
        .await?;
        query("CREATE INDEX bench_inbox_by_producer ON bench_inbox (producer, id)")
            .execute(&pool)
            .await?;

        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let hook_url = Arc::new(format!("http://{addr}/hooks/hooks"));
        let wcfg = Arc::new(wcfg);
        let dur = Duration::from_secs_f64(k.ingest_secs);
        let run_id = Arc::new(AtomicU64::new(0));

        let webhook_call = {
            let client = client.clone();
            let hook_url = hook_url.clone();
            let wcfg = wcfg.clone();
            let run_id = run_id.clone();
            move |seq: u64| {
                let client = client.clone();
                let hook_url = hook_url.clone();
                let wcfg = wcfg.clone();
                let side = format!("d{}", run_id.load(Ordering::Relaxed));
                async move {
                    let body = delta_body(seq, &side);
                    let id = format!("msg-{side}-{seq}");
                    let headers =
                        signature::sign(&wcfg, &body, chrono::Utc::now().timestamp(), &id);
                    let mut req = client
                        .post(hook_url.as_str())
                        .header("content-type", "application/json");
                    for (h, v) in headers {
                        req = req.header(h, v);
                    }
                    let resp = req.body(body).send().await?;
                    if !resp.status().is_success() {
                        bail!("webhook answered {}", resp.status());
                    }
                    Ok(())
                }
            }
        };
        let insert_call = {
            let pool = pool.clone();
            let run_id = run_id.clone();
            move |seq: u64| {
                let pool = pool.clone();
                let side = format!("b{}", run_id.load(Ordering::Relaxed));
                async move {
                    let body = delta_body(seq, &side);
                    query(
                        "INSERT INTO bench_inbox (producer, channel, received_at, dedup_key, headers, body)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind("hooks")
                    .bind("webhook")
                    .bind(now_ms())
                    .bind(format!("msg-{side}-{seq}"))
                    .bind("{}")
                    .bind(body)
                    .execute(&pool)
                    .await?;
                    Ok(())
                }
            }
        };

        let mut levels = Vec::new();
        for &clients in &k.clients {
            run_id.fetch_add(1, Ordering::Relaxed);
            let insert_baseline =
                load(clients, dur, k.ingest_max, None, insert_call.clone()).await;
            let driftd = load(clients, dur, k.ingest_max, None, webhook_call.clone()).await;
            note(format!(
                "  {clients} clients: driftd {:.0}/s p99 {:.1} ms ({} errors); INSERT {:.0}/s p99 {:.1} ms",
                driftd.per_sec, driftd.p99_ms, driftd.errors, insert_baseline.per_sec, insert_baseline.p99_ms
            ));
            levels.push(IngestLevel {
                clients,
                driftd,
                insert_baseline,
            });
        }
        let paced = match levels
            .iter()
            .max_by(|a, b| a.driftd.per_sec.total_cmp(&b.driftd.per_sec))
        {
            Some(best) if best.driftd.per_sec > 0.0 => {
                run_id.fetch_add(1, Ordering::Relaxed);
                let target = best.driftd.per_sec * 0.8;
                // Open loop: as many client slots as the largest level, so the
                // clients never cap the offered rate.
                let slots = k.clients.iter().copied().max().unwrap_or(best.clients);
                let load = load(
                    slots,
                    dur,
                    k.ingest_max,
                    Some(target),
                    webhook_call.clone(),
                )
                .await;
                note(format!(
                    "  paced at {target:.0}/s with {slots} client slots: {:.0}/s p99 {:.1} ms",
                    load.per_sec, load.p99_ms
                ));
                Some(PacedRun {
                    target_per_sec: target,
                    load,
                })
            }
            _ => None,
        };
        pool.close().await;
        shutdown.cancel();
        daemon
            .await
            .map_err(|e| anyhow!("the daemon task panicked: {e}"))??;
        Ok(IngestReport {
            backend,
            levels,
            paced,
        })
    })
    .await
}

/// The ingest sections of the table.
pub(super) fn table(reports: &[IngestReport], s: &mut String) {
    use std::fmt::Write as _;
    for r in reports {
        let _ = writeln!(
            s,
            "\n### Webhook ingest, {} (HMAC-SHA256, through App; baseline: single-row INSERT via sqlx)\n",
            r.backend.name()
        );
        let _ = writeln!(
            s,
            "| clients | driftd deltas/s | p50 ms | p99 ms | errors | INSERT/s | INSERT p99 ms | × INSERT |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for l in &r.levels {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} |",
                l.clients,
                l.driftd.per_sec,
                l.driftd.p50_ms,
                l.driftd.p99_ms,
                l.driftd.errors,
                l.insert_baseline.per_sec,
                l.insert_baseline.p99_ms,
                ratio(l.driftd.per_sec, l.insert_baseline.per_sec)
            );
        }
        if let Some(p) = &r.paced {
            let _ = writeln!(
                s,
                "\npaced at 80% of peak ({:.0}/s, {} client slots, open loop): achieved {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
                p.target_per_sec,
                p.load.clients,
                p.load.per_sec,
                p.load.p50_ms,
                p.load.p99_ms,
                p.load.max_ms,
                p.load.errors
            );
        }
    }
}

/// The ingest targets.
pub(super) fn targets(
    reports: &[IngestReport],
    push: &mut impl FnMut(BackendArg, &str, f64, &str, f64, bool),
) {
    for i in reports {
        if let Some(l) = i.levels.iter().find(|l| l.clients == 16) {
            push(
                i.backend,
                "ingest / INSERT baseline at 16 clients",
                ratio(l.driftd.per_sec, l.insert_baseline.per_sec),
                "×",
                1.0,
                false,
            );
        }
        if let Some(p) = &i.paced {
            push(
                i.backend,
                "ingest p99 at 80% of peak",
                p.load.p99_ms,
                " ms",
                20.0,
                true,
            );
        }
    }
}
