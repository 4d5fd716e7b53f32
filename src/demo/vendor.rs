//! The demo vendor: mortgage-platform orders, their changes, and the paged snapshot endpoint.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Query, State};
use axum::Json;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::PAGE;

pub(super) const PRODUCTS: &[&str] = &[
    "appraisal",
    "title-search",
    "flood-certificate",
    "credit-report",
    "employment-verification",
];
pub(super) const STATUSES: &[&str] =
    &["ordered", "assigned", "scheduled", "in-review", "delivered"];
pub(super) const STATES: &[&str] = &["CA", "TX", "FL", "NY", "WA", "IL", "CO", "GA"];

/// The vendor's state: orders by id, and the counters that number new ones and versions.
#[derive(Debug, Clone)]
pub(super) struct Orders {
    pub(super) records: BTreeMap<String, Value>,
    pub(super) next_id: u64,
    /// The last version handed out; every change takes the next one.
    pub(super) version: i64,
}

/// One vendor change, as a webhook carries it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Delta {
    /// The full order after a create or an edit.
    Upsert(Value),
    /// The order is gone; `version` orders the deletion among the order's other deltas.
    Delete { key: String, version: i64 },
}

impl Delta {
    pub(super) fn key(&self) -> &str {
        match self {
            Delta::Upsert(doc) => doc["id"].as_str().unwrap_or_default(),
            Delta::Delete { key, .. } => key,
        }
    }

    /// The webhook body: the order itself, or `{"id", "version", "deleted": true}`.
    pub(super) fn body(&self) -> Vec<u8> {
        let v = match self {
            Delta::Upsert(doc) => doc.clone(),
            Delta::Delete { key, version } => {
                json!({ "id": key, "version": version, "deleted": true })
            }
        };
        serde_json::to_vec(&v).expect("JSON values always serialize")
    }
}

pub(super) fn order_key(n: u64) -> String {
    format!("ord-{n:07}")
}

impl Orders {
    /// `n` orders at version 1.
    pub(super) fn new(n: u64, rng: &mut impl Rng, now: &str) -> Self {
        let mut o = Self {
            records: BTreeMap::new(),
            next_id: 1,
            version: 1,
        };
        for _ in 0..n {
            o.create(rng, now, 1);
        }
        o
    }

    pub(super) fn records(&self) -> &BTreeMap<String, Value> {
        &self.records
    }

    pub(super) fn create(&mut self, rng: &mut impl Rng, now: &str, version: i64) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let doc = json!({
            "id": order_key(id),
            "loan_number": format!("LN-{:08}", 20_000_000 + id * 7),
            "product": PRODUCTS[rng.random_range(0..PRODUCTS.len())],
            "status": STATUSES[0],
            "property_state": STATES[rng.random_range(0..STATES.len())],
            "fee_cents": rng.random_range(80..=900) * 100 + 50,
            "version": version,
            "updated_at": now,
        });
        self.records.insert(order_key(id), doc.clone());
        doc
    }

    /// One change: mostly edits (of `prefer` when it still exists), some creates and deletes.
    pub(super) fn change(&mut self, rng: &mut impl Rng, prefer: Option<&str>, now: &str) -> Delta {
        self.version += 1;
        let version = self.version;
        let preferred = prefer.filter(|k| self.records.contains_key(*k));
        let roll = rng.random_range(0..100);
        if self.records.is_empty() || (preferred.is_none() && roll < 10) {
            return Delta::Upsert(self.create(rng, now, version));
        }
        let key = match preferred {
            Some(k) => k.to_string(),
            None => {
                let i = rng.random_range(0..self.records.len());
                self.records.keys().nth(i).cloned().unwrap_or_default()
            }
        };
        if preferred.is_none() && roll < 20 {
            self.records.remove(&key);
            return Delta::Delete { key, version };
        }
        let doc = self
            .records
            .get_mut(&key)
            .expect("the key was taken from the map");
        let status = doc["status"].as_str().unwrap_or_default();
        let next = STATUSES.iter().position(|s| *s == status).map(|i| i + 1);
        match next {
            Some(i) if i < STATUSES.len() && rng.random_bool(0.6) => {
                doc["status"] = json!(STATUSES[i]);
            }
            _ => doc["fee_cents"] = json!(rng.random_range(80..=900) * 100 + 50),
        }
        doc["version"] = json!(version);
        doc["updated_at"] = json!(now);
        Delta::Upsert(doc.clone())
    }

    /// Up to `limit` orders after key `cursor` in key order, and the cursor of the next page.
    ///
    /// A key cursor (rather than an offset) never repeats or skips an order
    /// that exists throughout a pull, however many are created or deleted meanwhile.
    /// With `since`, only the orders at that version or newer (a catch-up).
    pub(super) fn page(
        &self,
        cursor: Option<&str>,
        limit: usize,
        since: Option<i64>,
    ) -> (Vec<Value>, Option<String>) {
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let mut range = self
            .records
            .range::<str, _>((lower, Bound::Unbounded))
            .filter(|(_, v)| since.is_none_or(|s| v["version"].as_i64().unwrap_or(0) >= s));
        let items: Vec<(&String, &Value)> = range.by_ref().take(limit.max(1)).collect();
        let next = match (range.next(), items.last()) {
            (Some(_), Some((last, _))) => Some((*last).clone()),
            _ => None,
        };
        (items.into_iter().map(|(_, v)| v.clone()).collect(), next)
    }
}

/// The vendor's orders, shared by the snapshot endpoint and the churn task.
#[derive(Clone, Debug)]
pub(super) struct Vendor(pub(super) Arc<Mutex<Orders>>);

impl Vendor {
    pub(super) fn lock(&self) -> MutexGuard<'_, Orders> {
        // No code panics while holding the lock; recover the data if one ever did.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    pub(super) cursor: Option<String>,
    pub(super) limit: Option<usize>,
    /// Only orders changed at this version or later.
    pub(super) since: Option<i64>,
}

pub(super) async fn list_orders(
    State(v): State<Vendor>,
    Query(q): Query<PageQuery>,
) -> Json<Value> {
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 1000);
    let (data, next) = v.lock().page(q.cursor.as_deref(), limit, q.since);
    Json(json!({ "data": data, "next_cursor": next }))
}
