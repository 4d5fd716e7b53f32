//! A loopback vendor for tests: serves its records in every pagination style, with optional page delays and failures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

pub const PAGE: usize = 250;

/// How the vendor misbehaves, for failure tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    ServerError,
    InvalidJson,
    DuplicateKey,
    Empty,
}

#[derive(Clone, Default)]
pub struct Vendor {
    pub records: Arc<Mutex<BTreeMap<String, Value>>>,
    pub delay_ms: Arc<AtomicU64>,
    pub pages_served: Arc<AtomicU64>,
    pub fault: Arc<Mutex<Fault>>,
    /// Serves every object with its members in reverse order and a changing `fetched_at`.
    pub scramble: Arc<std::sync::atomic::AtomicBool>,
}

pub fn record(i: usize, rev: u64) -> (String, Value) {
    let key = format!("ord-{i:05}");
    let doc = json!({
        "id": key,
        "status": if rev == 0 { "open" } else { "updated" },
        "amount": (i * 7 % 1000) as f64 + 0.5,
        "rev": rev,
        "lines": [{"sku": format!("sku-{}", i % 13), "qty": i % 5 + 1}],
    });
    (key, doc)
}

impl Vendor {
    /// A vendor holding `n` records, listening on a loopback port.
    pub async fn start(n: usize) -> (Self, SocketAddr) {
        let v = Self::default();
        {
            let mut r = v.records.lock().unwrap();
            for i in 0..n {
                let (k, d) = record(i, 0);
                r.insert(k, d);
            }
        }
        let app = Router::new()
            .route("/none", get(none))
            .route("/cursor", get(cursor))
            .route("/next", get(next_url))
            .route("/link", get(link))
            .route("/page", get(page))
            .route("/offset", get(offset))
            .route("/after", get(after))
            .with_state(v.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (v, addr)
    }

    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        self.records.lock().unwrap().clone()
    }

    /// Items from position `start`, at most `limit`, and the total count.
    async fn slice(&self, start: usize, limit: usize) -> (Vec<Value>, usize) {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        self.pages_served.fetch_add(1, Ordering::Relaxed);
        let r = self.records.lock().unwrap();
        let total = r.len();
        let mut items: Vec<Value> = r.values().skip(start).take(limit).cloned().collect();
        if *self.fault.lock().unwrap() == Fault::DuplicateKey && start == 0 && !items.is_empty() {
            let first = items[0].clone();
            items.push(first);
        }
        (items, total)
    }

    fn body(&self, v: Value) -> Response {
        let fault = *self.fault.lock().unwrap();
        match fault {
            Fault::ServerError => {
                return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
            }
            Fault::InvalidJson => return (StatusCode::OK, "{\"data\": [").into_response(),
            _ => {}
        }
        let text = if self.scramble.load(Ordering::Relaxed) {
            reversed(&v)
        } else {
            v.to_string()
        };
        ([("content-type", "application/json")], text).into_response()
    }

    fn items_or_empty(&self, items: Vec<Value>) -> Vec<Value> {
        if *self.fault.lock().unwrap() == Fault::Empty {
            Vec::new()
        } else {
            items
        }
    }
}

/// JSON text with every object's members reversed and a volatile `fetched_at` in records.
fn reversed(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut members: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, x)| format!("{}: {}", Value::String(k.clone()), reversed(x)))
                .collect();
            if m.contains_key("id") {
                members.push(format!("\"fetched_at\": \"{}\"", rand_token()));
            }
            format!("{{ {} }}", members.join(",\n  "))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(reversed).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

fn rand_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

type Q = Query<BTreeMap<String, String>>;

fn num(q: &Q, name: &str, default: usize) -> usize {
    q.get(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn none(State(v): State<Vendor>) -> Response {
    let (items, _) = v.slice(0, usize::MAX).await;
    let items = v.items_or_empty(items);
    v.body(json!({ "data": items }))
}

async fn cursor(State(v): State<Vendor>, q: Q) -> Response {
    let start = num(&q, "cursor", 0);
    let (items, total) = v.slice(start, PAGE).await;
    let next = (start + PAGE < total).then(|| (start + PAGE).to_string());
    let items = v.items_or_empty(items);
    v.body(json!({ "data": items, "meta": { "next_cursor": next } }))
}

async fn next_url(State(v): State<Vendor>, q: Q) -> Response {
    let page = num(&q, "page", 0);
    let (items, total) = v.slice(page * PAGE, PAGE).await;
    let next = ((page + 1) * PAGE < total).then(|| format!("/next?page={}", page + 1));
    let items = v.items_or_empty(items);
    v.body(json!({ "data": items, "links": { "next": next } }))
}

async fn link(State(v): State<Vendor>, q: Q) -> Response {
    let page = num(&q, "page", 0);
    let (items, total) = v.slice(page * PAGE, PAGE).await;
    let items = v.items_or_empty(items);
    let mut resp = v.body(Value::Array(items));
    let mut links = vec![format!("</link?page=0>; rel=\"first\"")];
    if (page + 1) * PAGE < total {
        links.push(format!("</link?page={}>; rel=\"next\"", page + 1));
    }
    let mut h = HeaderMap::new();
    h.insert("link", HeaderValue::from_str(&links.join(", ")).unwrap());
    resp.headers_mut().extend(h);
    resp
}

async fn page(State(v): State<Vendor>, q: Q) -> Response {
    let page = num(&q, "page", 1).max(1);
    let per = num(&q, "per_page", PAGE);
    let (items, total) = v.slice((page - 1) * per, per).await;
    let items = v.items_or_empty(items);
    v.body(json!({ "results": items, "total_pages": total.div_ceil(per).max(1) }))
}

async fn offset(State(v): State<Vendor>, q: Q) -> Response {
    let start = num(&q, "offset", 0);
    let limit = num(&q, "limit", PAGE);
    let (items, _) = v.slice(start, limit).await;
    let items = v.items_or_empty(items);
    v.body(json!({ "data": items }))
}

async fn after(State(v): State<Vendor>, q: Q) -> Response {
    let limit = num(&q, "limit", PAGE);
    let start = match q.get("starting_after") {
        None => 0,
        Some(k) => {
            let r = v.records.lock().unwrap();
            r.range::<String, _>((
                std::ops::Bound::Excluded(k.clone()),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .map(|(first, _)| r.keys().position(|x| x == first).unwrap_or(r.len()))
            .unwrap_or(r.len())
        }
    };
    let (items, total) = v.slice(start, limit).await;
    let more = start + items.len() < total;
    let items = v.items_or_empty(items);
    v.body(json!({ "data": items, "has_more": more }))
}

/// The `[producer.snapshot]` TOML for a pagination style served by [`Vendor`].
pub fn snapshot_toml(style: &str, addr: SocketAddr) -> String {
    let base = format!("http://{addr}");
    match style {
        "none" => format!("url = \"{base}/none\"\nitems = \"/data\""),
        "cursor" => format!(
            "url = \"{base}/cursor\"\nitems = \"/data\"\npagination = {{ style = \"cursor\", cursor = \"/meta/next_cursor\" }}"
        ),
        "next_url" => format!(
            "url = \"{base}/next\"\nitems = \"/data\"\npagination = {{ style = \"next_url\", next = \"/links/next\" }}"
        ),
        "link_header" => format!("url = \"{base}/link\"\nitems = \"\"\npagination = {{ style = \"link_header\" }}"),
        "page" => format!(
            "url = \"{base}/page\"\nitems = \"/results\"\npagination = {{ style = \"page\", total_pages = \"/total_pages\", limit = 200, limit_param = \"per_page\" }}"
        ),
        "offset" => format!(
            "url = \"{base}/offset\"\nitems = \"/data\"\npagination = {{ style = \"offset\", limit = 300 }}"
        ),
        "after_key" => format!(
            "url = \"{base}/after\"\nitems = \"/data\"\npagination = {{ style = \"after_key\", limit = 200 }}"
        ),
        other => panic!("unknown style {other}"),
    }
}
