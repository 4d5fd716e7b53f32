//! The load generator: client loops calling a request until a count or a deadline, closed or open loop, and their latency quantiles.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

/// One load run: calls done and failed, throughput, latency quantiles.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Load {
    pub(super) clients: usize,
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) secs: f64,
    pub(super) per_sec: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
}

/// Runs `clients` loops calling `call(seq)` until `max_total` calls or `dur`
/// elapsed. With `rate`, calls are scheduled open-loop at that total rate and
/// latency counts from the scheduled time (queueing included).
pub(super) async fn load<F, Fut>(
    clients: usize,
    dur: Duration,
    max_total: u64,
    rate: Option<f64>,
    call: F,
) -> Load
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let seq = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let deadline = start + dur;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let call = call.clone();
        let seq = seq.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
            let mut k = 0u64;
            loop {
                let scheduled = match interval {
                    Some(iv) => {
                        let at = start + iv.mul_f64(k as f64 + c as f64 / clients as f64);
                        k += 1;
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                        at
                    }
                    None => tokio::time::Instant::now(),
                };
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                if n >= max_total {
                    break;
                }
                match call(n).await {
                    Ok(()) => lat.push(scheduled.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        if let Ok((l, e)) = r {
            lat.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let q = |f: f64| -> f64 {
        if lat.is_empty() {
            0.0
        } else {
            let i = ((lat.len() as f64 * f).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i].as_secs_f64() * 1000.0
        }
    };
    Load {
        clients,
        ok: lat.len() as u64,
        errors,
        secs,
        per_sec: lat.len() as f64 / secs,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: q(1.0),
    }
}
