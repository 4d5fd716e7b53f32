//! The work scenario: driftd's queue (`Store::claim_work`, `finish_work`) against the textbook raw SQL claim-and-complete loop on an equivalent table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use driftd::state::WorkState;
use driftd::store::{now_ms, NewWork, Store};
use serde::Serialize;

use crate::cli::BackendArg;
use crate::db::{baseline_pool, with_db, PG_POOL};
use crate::report::{note, ratio};
use driftd::store::sql::query;

#[derive(Args, Clone)]
pub(super) struct WorkKnobs {
    /// Items per side.
    #[arg(long, default_value_t = 10_000)]
    work_items: u64,
    /// Concurrent claimers per side.
    #[arg(long, default_value_t = 4)]
    work_workers: usize,
    /// Items claimed per claim statement (driftd's workers claim `concurrency`, default 4).
    #[arg(long, default_value_t = 4)]
    work_batch: u32,
    /// Seconds per side, at most.
    #[arg(long, default_value_t = 30.0)]
    work_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
struct QueueRun {
    items: u64,
    secs: f64,
    per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct WorkReport {
    backend: BackendArg,
    workers: usize,
    batch: u32,
    driftd: QueueRun,
    raw_sql: QueueRun,
}

/// The same number of no-op items through driftd's queue, then through the
/// raw SQL loop.
pub(super) async fn scenario(backend: BackendArg, k: &WorkKnobs) -> Result<WorkReport> {
    let k = k.clone();
    with_db(backend, "work", |url| async move {
        let store = Store::open(&url, PG_POOL).await?;
        let dur = Duration::from_secs_f64(k.work_secs);
        let producer = "queue";
        note(format!(
            "work/{}: emitting {} no-op items",
            backend.name(),
            k.work_items
        ));
        let items: Vec<NewWork> = (0..k.work_items)
            .map(|i| NewWork {
                key: format!("key-{i:08}"),
                action: "none".into(),
                spec: format!(r#"{{"producer":"queue","key":"key-{i:08}"}}"#),
                dedup_key: format!("dedup-{i}"),
            })
            .collect();
        // One call: `emit_work` closes pending items of keys it is not given.
        let emitted = store.emit_work(producer, &items, 5, i64::MAX).await?;
        if emitted.inserted != k.work_items {
            bail!("emitted {} of {} work items", emitted.inserted, k.work_items);
        }
        drop(items);

        // driftd: Store::claim_work + finish_work, as `Workers::tick` does.
        let done = Arc::new(AtomicU64::new(0));
        let clock = Instant::now();
        let deadline = clock + dur;
        let mut set = tokio::task::JoinSet::new();
        for w in 0..k.work_workers {
            let store = store.clone();
            let done = done.clone();
            let max = k.work_items;
            let batch = k.work_batch;
            set.spawn(async move {
                let worker = format!("bench-{w}");
                while Instant::now() < deadline && done.load(Ordering::Relaxed) < max {
                    let claimed = store
                        .claim_work(producer, &worker, batch, 60_000, now_ms())
                        .await?;
                    if claimed.is_empty() {
                        break;
                    }
                    for item in claimed {
                        if store
                            .finish_work(item.id, &worker, WorkState::Done, now_ms(), None)
                            .await?
                        {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let secs = clock.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let driftd = QueueRun {
            items: n,
            secs,
            per_sec: n as f64 / secs,
        };
        store.pool().close().await;

        // Raw SQL: an equivalent table and the textbook claim-and-complete loop.
        let pool = baseline_pool(&url, backend).await?;
        let create = match backend {
            BackendArg::Sqlite => {
                "CREATE TABLE bench_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, spec TEXT NOT NULL,
                 state TEXT NOT NULL DEFAULT 'pending', run_at INTEGER NOT NULL, locked_by TEXT)"
            }
            BackendArg::Postgres => {
                "CREATE TABLE bench_queue (id BIGSERIAL PRIMARY KEY, spec TEXT NOT NULL,
                 state TEXT NOT NULL DEFAULT 'pending', run_at BIGINT NOT NULL, locked_by TEXT)"
            }
        };
        query(create).execute(&pool).await?;
        query("CREATE INDEX bench_queue_claimable ON bench_queue (run_at) WHERE state = 'pending'")
            .execute(&pool)
            .await?;
        let mut i = 0;
        while i < k.work_items {
            let end = (i + 500).min(k.work_items);
            let values: Vec<String> = (i..end)
                .map(|j| format!("('{{\"key\":\"key-{j:08}\"}}', {j})"))
                .collect();
            query(&format!(
                "INSERT INTO bench_queue (spec, run_at) VALUES {}",
                values.join(",")
            ))
            .execute(&pool)
            .await?;
            i = end;
        }
        let claim = match backend {
            BackendArg::Sqlite => {
                "UPDATE bench_queue SET state = 'running', locked_by = $1
                 WHERE id IN (SELECT id FROM bench_queue WHERE state = 'pending' ORDER BY run_at, id LIMIT $2)
                 RETURNING id"
            }
            BackendArg::Postgres => {
                "UPDATE bench_queue SET state = 'running', locked_by = $1
                 WHERE id IN (SELECT id FROM bench_queue WHERE state = 'pending' ORDER BY run_at, id LIMIT $2
                              FOR UPDATE SKIP LOCKED)
                 RETURNING id"
            }
        };
        let done = Arc::new(AtomicU64::new(0));
        let clock = Instant::now();
        let deadline = clock + dur;
        let mut set = tokio::task::JoinSet::new();
        for w in 0..k.work_workers {
            let pool = pool.clone();
            let done = done.clone();
            let max = k.work_items;
            let batch = k.work_batch;
            set.spawn(async move {
                let worker = format!("raw-{w}");
                while Instant::now() < deadline && done.load(Ordering::Relaxed) < max {
                    let ids: Vec<i64> = query(claim)
                        .bind(&worker)
                        .bind(i64::from(batch))
                        .fetch_all(&pool)
                        .await?
                        .iter()
                        .map(|r| r.try_get(0))
                        .collect::<Result<_, _>>()?;
                    if ids.is_empty() {
                        break;
                    }
                    for id in ids {
                        query(
                            "UPDATE bench_queue SET state = 'done', locked_by = NULL WHERE id = $1 AND locked_by = $2",
                        )
                        .bind(id)
                        .bind(&worker)
                        .execute(&pool)
                        .await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let secs = clock.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let raw_sql = QueueRun {
            items: n,
            secs,
            per_sec: n as f64 / secs,
        };
        pool.close().await;
        note(format!(
            "work/{}: driftd {:.0} items/s, raw SQL {:.0} items/s",
            backend.name(),
            driftd.per_sec,
            raw_sql.per_sec
        ));
        Ok(WorkReport {
            backend,
            workers: k.work_workers,
            batch: k.work_batch,
            driftd,
            raw_sql,
        })
    })
    .await
}

/// The work-queue section of the table.
pub(super) fn table(reports: &[WorkReport], s: &mut String) {
    use std::fmt::Write as _;
    if !reports.is_empty() {
        let _ = writeln!(s, "\n### Work queue (no-op items)\n");
        let _ = writeln!(
            s,
            "| backend | workers × batch | driftd items/s | raw SQL items/s | × raw |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for r in reports {
            let _ = writeln!(
                s,
                "| {} | {} × {} | {:.0} ({} in {:.1} s) | {:.0} ({} in {:.1} s) | {:.2} |",
                r.backend.name(),
                r.workers,
                r.batch,
                r.driftd.per_sec,
                r.driftd.items,
                r.driftd.secs,
                r.raw_sql.per_sec,
                r.raw_sql.items,
                r.raw_sql.secs,
                ratio(r.driftd.per_sec, r.raw_sql.per_sec)
            );
        }
    }
}

/// The work-queue targets.
pub(super) fn targets(
    reports: &[WorkReport],
    push: &mut impl FnMut(BackendArg, &str, f64, &str, f64, bool),
) {
    for w in reports {
        push(
            w.backend,
            "work queue / raw SQL",
            ratio(w.driftd.per_sec, w.raw_sql.per_sec),
            "×",
            1.0,
            false,
        );
    }
}
