//! The pacing of adaptive producers: the interval the last keyframe chose and when the next is due, shared by replicas.

use serde::Serialize;

use super::sql::{query, At};
use super::{db, now_ms, Store, StoreError};
use crate::pacing::{Pace, Reason};

/// A producer's stored pacing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pacing {
    #[serde(flatten)]
    pub pace: Pace,
    /// When the next keyframe is due (ms since the epoch).
    pub next_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// The pacing of `producer`, if a keyframe set one.
    pub async fn pacing(&self, producer: &str) -> Result<Option<Pacing>, StoreError> {
        let row = query(
            "SELECT interval_ms, rate, reason, next_at, updated_at FROM pacing WHERE producer = $1",
        )
        .bind(producer)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a pacing"))?;
        let Some(r) = row else { return Ok(None) };
        let get = db("read a pacing");
        let interval_ms: i64 = r.try_get(0).map_err(get)?;
        let reason: String = r.try_get(2).map_err(get)?;
        Ok(Some(Pacing {
            pace: Pace {
                interval_secs: interval_ms as f64 / 1000.0,
                rate: r.try_get(1).map_err(get)?,
                reason: Reason::parse(&reason).ok_or_else(|| StoreError::Corrupt {
                    table: "pacing",
                    reason: format!("unknown reason {reason:?}"),
                })?,
            },
            next_at: r.try_get(3).map_err(get)?,
            updated_at: r.try_get(4).map_err(get)?,
        }))
    }

    /// Records `pace` for `producer`, the next keyframe due at `next_at` (ms).
    pub async fn record_pacing(
        &self,
        producer: &str,
        pace: &Pace,
        next_at: i64,
    ) -> Result<(), StoreError> {
        query(
            "INSERT INTO pacing (producer, interval_ms, rate, reason, next_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (producer) DO UPDATE SET interval_ms = excluded.interval_ms,
               rate = excluded.rate, reason = excluded.reason, next_at = excluded.next_at,
               updated_at = excluded.updated_at",
        )
        .bind(producer)
        .bind((pace.interval_secs * 1000.0).round() as i64)
        .bind(pace.rate)
        .bind(pace.reason.as_str())
        .bind(At(next_at))
        .bind(At(now_ms()))
        .execute(&self.pool)
        .await
        .map_err(db("record a pacing"))?;
        Ok(())
    }
}
