//! The churn: vendor changes and their signed webhooks, with loss, duplicates and reordering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::vendor::Vendor;
use super::{DUPLICATE, REORDER, SEND_TIMEOUT};
use crate::config::WebhookConfig;

/// What the vendor did to its webhooks; shared with the reporter.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) changes: AtomicU64,
    pub(super) lost: AtomicU64,
    /// Deltas delivered at least once (excluding redeliveries).
    pub(super) sent: AtomicU64,
    pub(super) duplicated: AtomicU64,
    pub(super) reordered: AtomicU64,
    /// Requests by answer: 2xx, 404, other statuses, no answer.
    pub(super) accepted: AtomicU64,
    pub(super) not_found: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) last_refusal: AtomicU64,
}

impl Stats {
    pub(super) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(super) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One webhook delivery: its message id (the dedup key) and body.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub(super) id: String,
    pub(super) key: String,
    pub(super) body: Vec<u8>,
}

/// Signs and posts deltas to driftd's webhook endpoint.
pub(super) struct Sender {
    pub(super) client: reqwest::Client,
    pub(super) url: String,
    pub(super) webhook: WebhookConfig,
    pub(super) stats: Arc<Stats>,
}

impl Sender {
    pub(super) async fn post(&self, d: &Outgoing) {
        let now = chrono::Utc::now().timestamp();
        let mut req = self
            .client
            .post(&self.url)
            .timeout(SEND_TIMEOUT)
            .header("content-type", "application/json")
            .body(d.body.clone());
        for (name, value) in crate::ingest::signature::sign(&self.webhook, &d.body, now, &d.id) {
            req = req.header(name, value);
        }
        let s = &self.stats;
        match req.send().await {
            Ok(r) if r.status().is_success() => Stats::bump(&s.accepted),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Stats::bump(&s.not_found),
            Ok(r) => {
                s.last_refusal
                    .store(u64::from(r.status().as_u16()), Ordering::Relaxed);
                Stats::bump(&s.refused);
            }
            Err(_) => Stats::bump(&s.failed),
        }
    }

    /// Delivers `d`, and with probability [`DUPLICATE`] delivers it again (same message id).
    pub(super) async fn deliver(&self, d: &Outgoing, rng: &mut StdRng) {
        self.post(d).await;
        if rng.random_bool(DUPLICATE) {
            Stats::bump(&self.stats.duplicated);
            self.post(d).await;
        }
    }
}

/// Changes the vendor `rate` times a second until `stop` (or `deadline`), sending
/// each change as a webhook except the lost ones (the share of `losses` in
/// force); flushes a held-back delta on the way out.
pub(super) async fn churn(
    vendor: Vendor,
    sender: Sender,
    // `(from, share of webhooks lost)`, in order.
    losses: Vec<(Instant, f64)>,
    rate: u32,
    seed: u64,
    deadline: Instant,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<Outgoing> = None;
    let mut prefer: Option<String> = None;
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let delta = vendor
            .lock()
            .change(&mut rng, prefer.take().as_deref(), &now);
        seq += 1;
        let stats = &sender.stats;
        Stats::bump(&stats.changes);
        let now_at = Instant::now();
        let loss = losses
            .iter()
            .rev()
            .find(|(from, _)| *from <= now_at)
            .map_or(0.0, |(_, l)| *l);
        if rng.random_bool(loss) {
            Stats::bump(&stats.lost);
            continue;
        }
        Stats::bump(&stats.sent);
        let out = Outgoing {
            id: format!("msg_demo_{seq:09}"),
            key: delta.key().to_string(),
            body: delta.body(),
        };
        if let Some(earlier) = held.take() {
            // The later change overtakes the earlier one.
            sender.deliver(&out, &mut rng).await;
            sender.deliver(&earlier, &mut rng).await;
        } else if rng.random_bool(REORDER) {
            Stats::bump(&stats.reordered);
            // Half the time the overtaking change is to the same order, so the
            // earlier delta arrives stale.
            if rng.random_bool(0.5) {
                prefer = Some(out.key.clone());
            }
            held = Some(out);
        } else {
            sender.deliver(&out, &mut rng).await;
        }
    }
    if let Some(earlier) = held.take() {
        sender.deliver(&earlier, &mut rng).await;
    }
}
