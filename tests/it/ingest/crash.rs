//! Crash safety: a `driftd run` killed mid-stream loses no acknowledged delta, and the vendor's retries converge.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftd::config::WebhookConfig;
use driftd::ingest::signature;
use driftd::store::InboxOutcome;

use super::{config_text, inbox, orders_doc};
use crate::support::{config, eventually, DaemonProcess, TestDb, EVENTUALLY};

/// A `driftd run` child on `db_url`, ready; `run` names its config and log files in `dir`.
async fn spawn(db_url: &str, dir: &Path, run: &str) -> DaemonProcess {
    let maildir = dir.join("Maildir");
    let config = |listen: &str| config_text(db_url, listen, &maildir);
    let mut daemon = DaemonProcess::spawn(dir, run, config, |cmd| {
        cmd.env("RUST_LOG", "warn");
    });
    daemon.ready().await;
    daemon
}

async fn acknowledged_deltas_survive_a_crash(db: &TestDb) {
    const TOTAL: usize = 300;
    const CLIENTS: usize = 4;
    const KILL_AFTER: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let w = config(&config_text(&db.url, "127.0.0.1:1", dir.path()))
        .producer("orders")
        .and_then(|p| p.webhook.clone())
        .unwrap();
    let mut child = spawn(&db.url, dir.path(), "run1").await;

    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let send = |i: usize, base: String, http: reqwest::Client, w: WebhookConfig| async move {
        let body = orders_doc(&format!("c{i}"), i as i64 + 1).to_string();
        let mut req = http.post(format!("{base}/hooks/orders")).body(body.clone());
        for (k, v) in signature::sign(
            &w,
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
            &format!("crash-{i}"),
        ) {
            req = req.header(k, v);
        }
        matches!(req.send().await, Ok(r) if r.status().is_success())
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, acked, kill_tx) = (next.clone(), acked.clone(), kill_tx.clone());
            let (base, http, w) = (child.base.clone(), http.clone(), w.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= TOTAL {
                        return;
                    }
                    if send(i, base.clone(), http.clone(), w.clone()).await {
                        let n = {
                            let mut a = acked.lock().unwrap();
                            a.push(i);
                            a.len()
                        };
                        if n == KILL_AFTER {
                            if let Some(tx) = kill_tx.lock().unwrap().take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(EVENTUALLY, kill_rx)
        .await
        .expect("enough deltas acknowledged before the deadline")
        .unwrap();
    child.kill();
    for c in clients {
        c.await.unwrap();
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER && acked.len() < TOTAL,
        "the kill was not mid-stream: {} of {TOTAL} acknowledged",
        acked.len()
    );

    let restarted = spawn(&db.url, dir.path(), "run2").await;
    let store = db.store().await;
    eventually("every acknowledged delta applied after the restart", || {
        let store = &store;
        let acked = &acked;
        async move {
            for i in acked {
                let e = store.entity("orders", &format!("c{i}")).await.ok()??;
                if e.version != Some(*i as i64 + 1) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let rows = inbox(&store).await;
    for i in &acked {
        let key = format!("crash-{i}");
        let row = rows
            .iter()
            .find(|r| r.dedup_key.as_deref() == Some(key.as_str()))
            .unwrap_or_else(|| panic!("acknowledged delta {key} not in the inbox"));
        assert_eq!(row.outcome, InboxOutcome::Applied, "{key}");
    }

    // The vendor retries what was not acknowledged: everything converges,
    // and the acknowledged ones come back as duplicates.
    for i in 0..TOTAL {
        assert!(
            send(i, restarted.base.clone(), http.clone(), w.clone()).await,
            "retry {i} refused: {}",
            restarted.log()
        );
    }
    assert_eq!(store.count_entities("orders").await.unwrap(), TOTAL as i64);
    let rows = inbox(&store).await;
    let applied = rows
        .iter()
        .filter(|r| r.outcome == InboxOutcome::Applied)
        .count();
    assert_eq!(applied, TOTAL, "each delivery applied exactly once");
    let (_, broken) = store.verify_chain().await.unwrap();
    assert_eq!(broken, None);
    store.close().await;
    drop(restarted);
}

crate::on_both_backends!(acknowledged_deltas_survive_a_crash,);
