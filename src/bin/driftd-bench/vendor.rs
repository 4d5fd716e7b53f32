//! The loopback vendor of the keyframe scenarios: records generated from (index, revision), served in cursor pages, nothing stored.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Result;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Records per vendor page.
pub(super) const PAGE: u64 = 2_000;

/// One record's JSON (about 500 bytes), deterministic in `(i, rev)`.
pub(super) fn record_json(i: u64, rev: u64) -> String {
    let status = if rev == 0 { "open" } else { "updated" };
    let mut s = format!(
        concat!(
            r#"{{"id":"rec-{i:08}","rev":{rev},"status":"{status}","amount_cents":{amount},"currency":"EUR","#,
            r#""customer":{{"id":"cus-{cus:06}","name":"Customer {cus}","email":"customer{cus}@example.test","#,
            r#""address":{{"line1":"{street} Benchmark Street","city":"City {city}","postcode":"{post:05}","country":"DE"}}}},"#,
            r#""lines":[{{"sku":"sku-{sku1}","qty":{q1},"price_cents":{p1}}},{{"sku":"sku-{sku2}","qty":{q2},"price_cents":{p2}}}],"#,
            r#""tags":["bench","tier-{tier}"],"note":""#
        ),
        i = i,
        rev = rev,
        status = status,
        amount = (i * 7919) % 100_000 + rev,
        cus = i % 50_000,
        street = i % 997 + 1,
        city = i % 101,
        post = (i * 31) % 100_000,
        sku1 = i % 13,
        q1 = i % 5 + 1,
        p1 = (i * 17) % 10_000,
        sku2 = i % 29,
        q2 = i % 3 + 1,
        p2 = (i * 23) % 10_000,
        tier = i % 4,
    );
    const TARGET: usize = 498;
    const FILL: &[u8] =
        b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";
    let mut k = (i as usize) % FILL.len();
    while s.len() < TARGET {
        s.push(FILL[k % FILL.len()] as char);
        k += 1;
    }
    s.push_str("\"}");
    s
}

#[derive(Clone, Copy)]
pub(super) struct Generator {
    pub(super) records: u64,
    /// Records whose index is a multiple of this are at revision
    /// `drift_rev` (0: none); the rest at revision 0.
    pub(super) drift_every: u64,
    pub(super) drift_rev: u64,
}

impl Generator {
    pub(super) fn rev(&self, i: u64) -> u64 {
        if self.drift_every > 0 && i.is_multiple_of(self.drift_every) {
            self.drift_rev
        } else {
            0
        }
    }
}

/// `GET /records?cursor=&limit=[&updated_since=]`: one page of records and
/// the next cursor; with `updated_since`, only the records whose `rev` is at
/// least that (the changed records are found by index, not by a scan).
async fn vendor_page(
    State(g): State<Generator>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let start: u64 = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: u64 = q
        .get("limit")
        .and_then(|c| c.parse().ok())
        .unwrap_or(PAGE)
        .clamp(1, 10_000);
    if let Some(since) = q.get("updated_since").and_then(|s| s.parse::<u64>().ok()) {
        return (
            [("content-type", "application/json")],
            changed_page(g, since, start, limit),
        );
    }
    let end = (start + limit).min(g.records);
    let mut body = String::with_capacity(((end.saturating_sub(start)) as usize + 1) * 520);
    body.push_str("{\"data\":[");
    for i in start..end {
        if i > start {
            body.push(',');
        }
        body.push_str(&record_json(i, g.rev(i)));
    }
    body.push_str("],\"next_cursor\":");
    if end < g.records {
        body.push_str(&format!("\"{end}\"}}"));
    } else {
        body.push_str("null}");
    }
    ([("content-type", "application/json")], body)
}

/// The records at revision `since` or later, from index `start` on.
fn changed_page(g: Generator, since: u64, start: u64, limit: u64) -> String {
    let mut body = String::from("{\"data\":[");
    let mut next = None;
    if g.drift_every > 0 && g.drift_rev >= since.max(1) {
        let first = start.div_ceil(g.drift_every) * g.drift_every;
        let mut i = first;
        let mut n = 0;
        while i < g.records {
            if n == limit {
                next = Some(i);
                break;
            }
            if n > 0 {
                body.push(',');
            }
            body.push_str(&record_json(i, g.rev(i)));
            n += 1;
            i += g.drift_every;
        }
    }
    body.push_str("],\"next_cursor\":");
    match next {
        Some(i) => body.push_str(&format!("\"{i}\"}}")),
        None => body.push_str("null}"),
    }
    body
}

/// Starts the vendor on a loopback port; it stops when `stop` is cancelled.
pub(super) async fn start_vendor(g: Generator, stop: CancellationToken) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/records", get(vendor_page))
        .with_state(g);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(addr)
}
