//! The per-producer keyframe loop: sleeps until the schedule's next tick, runs it, repeats.
//!
//! Each run claims the tick it serves (`Keyframer::run_scheduled`): one tick
//! is one run across replicas. After a run the next time is computed from the
//! current time: a tick missed while the daemon was busy or down is skipped,
//! never run twice.

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Producer;
use crate::keyframe::run::{KeyframeError, Keyframer};

/// Runs `p`'s keyframes on its schedule until `cancel`. A run under way when
/// `cancel` fires is interrupted by the keyframer (recorded `failed`, its
/// lease released), not dropped.
pub(crate) async fn run_schedule(keyframer: Keyframer, p: Producer, cancel: CancellationToken) {
    let mut served: Option<DateTime<Utc>> = None;
    loop {
        let now = Utc::now();
        // Never a tick at or before the last one, even if the clock stepped back.
        let after = served.map_or(now, |t| t.max(now));
        let Some(next) = p.schedule().next_after(after) else {
            warn!(producer = %p.name, schedule = %p.schedule, "schedule has no future fire time");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        debug!(producer = %p.name, next = %next, "next keyframe");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match keyframer.run_scheduled(&p, next.timestamp_millis()).await {
            Ok(_) => {}
            Err(KeyframeError::Busy(_)) => {
                info!(producer = %p.name, "keyframe skipped: another replica or process is running one");
            }
            Err(KeyframeError::TickServed { .. }) => {
                debug!(producer = %p.name, tick = %next, "keyframe skipped: another replica served this tick");
            }
            Err(e) => warn!(producer = %p.name, error = %e, "keyframe could not run"),
        }
        served = Some(next);
        if cancel.is_cancelled() {
            return;
        }
    }
}
