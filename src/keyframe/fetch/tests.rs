//! `pull` end to end against loopback HTTP servers: every pagination style,
//! retries, timeouts, malformed pages, versions, headers and the rate limit.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, RawQuery};
use axum::http::{header, HeaderMap as Headers, StatusCode as S};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt as _;
use reqwest::Url;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::error::transient_status;
use super::http::MEMORY_BODY_MAX;
use super::{pull, Plan, PullError, Snapshot};
use crate::canonical::{bucket_of, key_string, Digest, RecordHasher};
use crate::config::SnapshotConfig;

const BITS: u8 = 8;

type Params = Query<HashMap<String, String>>;

fn hasher() -> RecordHasher {
    RecordHasher::new(&["/meta/fetched_at"]).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn config(text: &str) -> SnapshotConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn record(i: usize) -> Value {
    json!({
        "id": format!("r{i:05}"),
        "n": i,
        "price": i as f64 * 1.25,
        "name": format!("item \"{i}\" é"),
        "tags": ["a", i % 7],
        "meta": {"fetched_at": i * 3, "ok": i.is_multiple_of(2)},
    })
}

fn records(n: usize) -> Arc<Vec<Value>> {
    Arc::new((0..n).map(record).collect())
}

fn num(q: &HashMap<String, String>, name: &str) -> Option<usize> {
    q.get(name)?.parse().ok()
}

/// Serves the router built from the server's own base URL on a loopback port.
async fn serve_at(app: impl FnOnce(String) -> Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = app(base.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn serve(app: Router) -> String {
    serve_at(|_| app).await
}

/// Plans `cfg` as validation does, then pulls.
async fn pull_planned(cfg: &SnapshotConfig) -> Result<Snapshot, PullError> {
    pull(&client(), &Plan::new(cfg, &hasher(), BITS)?).await
}

async fn pull_ok(cfg: &SnapshotConfig) -> Snapshot {
    pull_planned(cfg)
        .await
        .unwrap_or_else(|e| panic!("pull failed: {e}"))
}

async fn pull_err(cfg: &SnapshotConfig) -> PullError {
    match pull_planned(cfg).await {
        Ok(s) => panic!("pull succeeded with {} records", s.len()),
        Err(e) => e,
    }
}

/// The snapshot holds exactly `served`: same keys, hashes, buckets and documents.
fn check(snap: &Snapshot, served: &[Value]) {
    let h = hasher();
    let by_key: HashMap<String, &Value> = served
        .iter()
        .map(|v| (key_string(&v["id"]).unwrap(), v))
        .collect();
    assert_eq!(by_key.len(), served.len(), "served keys are unique");
    let records = snap.records().unwrap();
    assert_eq!(snap.len(), served.len() as u64);
    assert_eq!(records.len(), served.len());
    for w in records.windows(2) {
        assert!(
            (w[0].bucket, &w[0].key) < (w[1].bucket, &w[1].key),
            "records sorted by (bucket, key) without duplicates"
        );
    }
    let digests: BTreeMap<u32, Digest> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.bucket)
            .or_insert_with(Digest::default)
            .add(&r.key, &r.hash);
        m
    });
    assert_eq!(snap.digests, digests, "bucket digests sum the records");
    for r in &records {
        let v = by_key
            .get(&*r.key)
            .unwrap_or_else(|| panic!("key {:?} was not served", r.key));
        assert_eq!(r.hash, h.hash(v), "hash of {}", r.key);
        assert_eq!(r.bucket, bucket_of(&r.key, BITS));
        assert_eq!(r.version, None);
        assert_eq!(&snap.doc(r).unwrap(), *v, "document of {}", r.key);
    }
}

// -- pagination styles --------------------------------------------------

#[tokio::test]
async fn none_style_reads_one_root_array() {
    let recs = records(2_500);
    let served = recs.clone();
    let base = serve(Router::new().route(
        "/all",
        get(move || {
            let recs = served.clone();
            async move { Json(recs.to_vec()) }
        }),
    ))
    .await;
    let snap = pull_ok(&config(&format!("url = \"{base}/all\"\n"))).await;
    check(&snap, &recs);
    assert_eq!((snap.pages, snap.requests), (1, 1));
    assert!(snap.started_at_ms > 1_600_000_000_000);
}

#[tokio::test]
async fn cursor_style_replaces_the_cursor_and_keeps_other_params() {
    let recs = records(2_300);
    let served = recs.clone();
    let app = Router::new().route(
        "/items",
        get(move |RawQuery(q): RawQuery| {
            let recs = served.clone();
            async move {
                let url = Url::parse(&format!("http://x/?{}", q.unwrap_or_default())).unwrap();
                let one = |name: &str| {
                    let v: Vec<String> = url
                        .query_pairs()
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                        .collect();
                    (v.len() == 1).then(|| v[0].clone())
                };
                let start: Option<usize> =
                    one("cursor").and_then(|c| c.strip_prefix('c')?.parse().ok());
                let (Some("eu"), Some("250"), Some(start)) =
                    (one("region").as_deref(), one("limit").as_deref(), start)
                else {
                    return (S::BAD_REQUEST, Json(json!({"error": "bad query"})));
                };
                let end = (start + 250).min(recs.len());
                let next = if end < recs.len() {
                    json!(format!("c{end}"))
                } else {
                    json!(null)
                };
                let page = json!({"data": &recs[start..end], "meta": {"next": next}});
                (S::OK, Json(page))
            }
        }),
    );
    let base = serve(app).await;
    let cfg = config(&format!(
        r#"url = "{base}/items?cursor=c0&region=eu"
items = "/data"
retry_backoff_ms = 1
[pagination]
style = "cursor"
cursor = "/meta/next"
limit = 250
"#
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!((snap.pages, snap.requests), (10, 10));
}

#[tokio::test]
async fn next_url_style_resolves_relative_urls() {
    let recs = records(2_100);
    let served = recs.clone();
    let base = serve(Router::new().route(
        "/api/n",
        get(move |Query(q): Params| {
            let recs = served.clone();
            async move {
                let page = num(&q, "page").unwrap_or(1);
                let start = ((page - 1) * 250).min(recs.len());
                let end = (start + 250).min(recs.len());
                let next = if end < recs.len() {
                    format!("n?page={}", page + 1)
                } else {
                    String::new()
                };
                Json(json!({"items": &recs[start..end], "links": {"next": next}}))
            }
        }),
    ))
    .await;
    let cfg = config(&format!(
        r#"url = "{base}/api/n?page=1"
items = "/items"
[pagination]
style = "next_url"
next = "/links/next"
"#
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!(snap.pages, 9);
}

#[tokio::test]
async fn link_header_style_finds_rel_next_among_several_links() {
    let recs = records(2_400);
    let served = recs.clone();
    let base = serve_at(move |base| {
        Router::new().route(
            "/l",
            get(move |Query(q): Params| {
                let (recs, base) = (served.clone(), base.clone());
                async move {
                    let p = num(&q, "p").unwrap_or(1);
                    let start = ((p - 1) * 250).min(recs.len());
                    let end = (start + 250).min(recs.len());
                    let mut links = vec![r#"</l?p=1>; rel="first""#.to_string()];
                    if end < recs.len() {
                        links.push(if p.is_multiple_of(2) {
                            format!("<{base}/l?p={}>; rel=next", p + 1)
                        } else {
                            format!(r#"</l?p={}> ; title="a, b; c" ; rel="last NEXT""#, p + 1)
                        });
                    } else if p > 1 {
                        links.push(format!("</l?p={}>; rel=prev", p - 1));
                    }
                    (
                        [(header::LINK, links.join(", "))],
                        Json(recs[start..end].to_vec()),
                    )
                }
            }),
        )
    })
    .await;
    let cfg = config(&format!(
        "url = \"{base}/l\"\n[pagination]\nstyle = \"link_header\"\n"
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!(snap.pages, 10);
}

/// A `page` style server: `{"results": [...], "total_pages": N}`, pages from 1.
fn numbered_pages(recs: Arc<Vec<Value>>, per: usize) -> Router {
    Router::new().route(
        "/pg",
        get(move |Query(q): Params| {
            let recs = recs.clone();
            async move {
                let (Some(page), Some(n)) = (num(&q, "page"), num(&q, "per_page")) else {
                    return (S::BAD_REQUEST, Json(json!({})));
                };
                assert_eq!(n, per, "page size asked for");
                let start = ((page - 1) * n).min(recs.len());
                let end = (start + n).min(recs.len());
                let total = recs.len().div_ceil(n);
                let body = json!({"results": &recs[start..end], "total_pages": total});
                (S::OK, Json(body))
            }
        }),
    )
}

#[tokio::test]
async fn page_style_stops_after_total_pages() {
    let recs = records(2_250);
    let base = serve(numbered_pages(recs.clone(), 250)).await;
    let cfg = config(&format!(
        r#"url = "{base}/pg"
items = "/results"
[pagination]
style = "page"
limit_param = "per_page"
limit = 250
total_pages = "/total_pages"
"#
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!(snap.pages, 9, "no request after the announced last page");
}

#[tokio::test]
async fn page_style_without_total_stops_on_an_empty_page() {
    let recs = records(2_100);
    let served = recs.clone();
    let base = serve(Router::new().route(
        "/pz",
        get(move |Query(q): Params| {
            let recs = served.clone();
            async move {
                let page = num(&q, "page").unwrap_or(usize::MAX / 2);
                let limit = num(&q, "limit").unwrap_or(0);
                let start = page.saturating_mul(limit).min(recs.len());
                let end = (start + limit).min(recs.len());
                Json(recs[start..end].to_vec())
            }
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/pz\"\n[pagination]\nstyle = \"page\"\nstart = 0\nlimit = 300\n"
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!(snap.pages, 8, "7 full pages and the empty one");
}

#[tokio::test]
async fn offset_style_stops_on_a_short_page() {
    let recs = records(2_600);
    let served = recs.clone();
    let base = serve(Router::new().route(
        "/o",
        get(move |Query(q): Params| {
            let recs = served.clone();
            async move {
                let (Some(offset), Some(limit)) = (num(&q, "offset"), num(&q, "limit")) else {
                    return (S::BAD_REQUEST, Json(json!([])));
                };
                let start = offset.min(recs.len());
                let end = (start + limit).min(recs.len());
                (S::OK, Json(json!(&recs[start..end])))
            }
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/o\"\n[pagination]\nstyle = \"offset\"\nlimit = 250\n"
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!(snap.pages, 11);
}

#[tokio::test]
async fn after_key_style_passes_the_last_integer_key() {
    let recs: Arc<Vec<Value>> = Arc::new(
        (0..2_750)
            .map(|i| {
                let mut r = record(i);
                r["id"] = json!(i * 10);
                r
            })
            .collect(),
    );
    let served = recs.clone();
    let base = serve(Router::new().route(
        "/ak",
        get(move |Query(q): Params| {
            let recs = served.clone();
            async move {
                let start = match q.get("starting_after") {
                    None => 0,
                    Some(k) => match recs
                        .iter()
                        .position(|r| key_string(&r["id"]).as_ref() == Some(k))
                    {
                        Some(i) => i + 1,
                        None => return (S::BAD_REQUEST, Json(json!({}))),
                    },
                };
                let end = (start + num(&q, "limit").unwrap_or(10)).min(recs.len());
                let body = json!({"data": &recs[start..end], "has_more": end < recs.len()});
                (S::OK, Json(body))
            }
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/ak\"\nitems = \"/data\"\n[pagination]\nstyle = \"after_key\"\nlimit = 250\n"
    ));
    let snap = pull_ok(&cfg).await;
    check(&snap, &recs);
    assert_eq!(snap.pages, 11);
    assert!(snap.records().unwrap().iter().any(|r| &*r.key == "27490"));
}

#[tokio::test]
async fn a_large_single_document_streams_through_a_temp_file() {
    let recs: Arc<Vec<Value>> = Arc::new(
        (0..50_000)
            .map(|i| {
                let mut r = record(i);
                r["pad"] = json!("x".repeat(40));
                r
            })
            .collect(),
    );
    let body = Arc::new(serde_json::to_vec(&json!({"count": 50_000, "data": &*recs})).unwrap());
    assert!(body.len() > MEMORY_BODY_MAX, "the body must outgrow memory");
    let (sized, chunked) = (body.clone(), body.clone());
    let base = serve(
        Router::new()
            .route(
                "/big",
                get(move || {
                    let body = sized.clone();
                    async move { ([(header::CONTENT_TYPE, "application/json")], body.to_vec()) }
                }),
            )
            .route(
                "/big-chunked",
                get(move || {
                    let body = chunked.clone();
                    async move {
                        let chunks: Vec<Result<Vec<u8>, io::Error>> =
                            body.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
                        axum::body::Body::from_stream(futures::stream::iter(chunks))
                    }
                }),
            ),
    )
    .await;
    for path in ["big", "big-chunked"] {
        let cfg = config(&format!("url = \"{base}/{path}\"\nitems = \"/data\"\n"));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 1, "{path}");
    }
}

// -- failures -------------------------------------------------------------

/// A route answering with `respond(request number)`, counting requests.
fn counted(
    hits: &Arc<AtomicUsize>,
    respond: impl Fn(usize) -> Response + Clone + Send + Sync + 'static,
) -> Router {
    let hits = hits.clone();
    Router::new().route(
        "/x",
        get(move || {
            let n = hits.fetch_add(1, SeqCst);
            let r = respond(n);
            async move { r }
        }),
    )
}

#[tokio::test]
async fn server_errors_are_retried_then_fail_the_pull() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counted(&hits, |_| {
        (S::INTERNAL_SERVER_ERROR, "boom").into_response()
    }))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/x?api_key=zzz-query-token\"\nretries = 2\nretry_backoff_ms = 1\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(
            err,
            PullError::Status {
                status: S::INTERNAL_SERVER_ERROR,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(hits.load(SeqCst), 3, "one request and two retries");
    assert!(
        matches!(&err, PullError::Status { status, .. } if transient_status(*status)),
        "a 5xx is transient"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "page 1 of {base}/x: HTTP 500 Internal Server Error after 3 attempts"
        )),
        "{msg}"
    );
    assert!(
        !msg.contains("zzz") && !format!("{err:?}").contains("zzz"),
        "{msg}"
    );
}

#[tokio::test]
async fn transient_errors_then_success_honour_retry_after() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counted(&hits, |n| match n {
        0 => S::SERVICE_UNAVAILABLE.into_response(),
        1 => (S::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")]).into_response(),
        _ => Json(json!([{"id": "a"}, {"id": "b"}])).into_response(),
    }))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/x\"\nretries = 3\nretry_backoff_ms = 1\n"
    ));
    let began = Instant::now();
    let snap = pull_ok(&cfg).await;
    assert_eq!((snap.requests, snap.pages, snap.len()), (3, 1, 2));
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(hits.load(SeqCst), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counted(&hits, |_| S::NOT_FOUND.into_response())).await;
    let cfg = config(&format!(
        "url = \"{base}/x\"\nretries = 3\nretry_backoff_ms = 1\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(
            err,
            PullError::Status {
                status: S::NOT_FOUND,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        matches!(&err, PullError::Status { status, .. } if !transient_status(*status)),
        "a 404 is not transient"
    );
    assert_eq!(hits.load(SeqCst), 1);
    assert!(
        err.to_string()
            .contains("HTTP 404 Not Found after 1 attempt"),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_response_times_out() {
    let base = serve(Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Json(json!([]))
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/slow\"\ntimeout_secs = 1\nretries = 1\nretry_backoff_ms = 1\n"
    ));
    let began = Instant::now();
    let err = pull_err(&cfg).await;
    assert!(
        matches!(
            err,
            PullError::Timeout {
                timeout_secs: 1,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "a timeout is transient: tried again, 1 s each"
    );
    assert!(
        err.to_string().contains("no complete response within 1 s"),
        "{err}"
    );
}

#[tokio::test]
async fn the_timeout_covers_the_whole_body() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counted(&hits, |_| {
        let head = futures::stream::iter([Ok::<_, io::Error>("[{\"id\": \"a\"},".to_string())]);
        axum::body::Body::from_stream(head.chain(futures::stream::pending())).into_response()
    }))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/x\"\ntimeout_secs = 1\nretries = 1\nretry_backoff_ms = 1\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(err, PullError::Timeout { attempts: 2, .. }),
        "{err:?}"
    );
    assert_eq!(hits.load(SeqCst), 2, "a stalled body is retried");
}

#[tokio::test]
async fn connection_errors_are_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = config(&format!(
        "url = \"http://127.0.0.1:{port}/x?token=qqq\"\nretries = 1\nretry_backoff_ms = 1\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(
            err,
            PullError::Request {
                transient: true,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "page 1 of http://127.0.0.1:{port}/x: request failed after 2 attempts"
        )),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("connection refused"),
        "the cause is named: {msg}"
    );
    assert!(
        !msg.contains("qqq") && !format!("{err:?}").contains("qqq"),
        "{msg}"
    );
}

#[tokio::test]
async fn invalid_json_names_the_page() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let base = serve(Router::new().route(
        "/o",
        get(move |Query(q): Params| async move {
            counter.fetch_add(1, SeqCst);
            match num(&q, "offset") {
                Some(0) => r#"[{"id": "a"}, {"id": "b"}]"#,
                _ => r#"[{"id": "c"}, {"id": "#,
            }
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/o\"\n[pagination]\nstyle = \"offset\"\nlimit = 2\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(err, PullError::InvalidJson { ref at, .. } if at.page == 2),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("page 2 of {base}/o: invalid JSON: ")),
        "{msg}"
    );
    assert!(msg.contains("line 1"), "{msg}");
    assert_eq!(
        hits.load(SeqCst),
        2,
        "invalid JSON is not transient: page 2 is not asked again"
    );
}

#[tokio::test]
async fn the_items_pointer_must_lead_to_an_array() {
    let base = serve(
        Router::new()
            .route(
                "/missing",
                get(|| async { Json(json!({"items": [], "data2": []})) }),
            )
            .route("/object", get(|| async { Json(json!({"data": {"a": 1}})) }))
            .route("/trailing", get(|| async { r#"{"data": []} x"# })),
    )
    .await;
    let cfg = |path: &str| config(&format!("url = \"{base}/{path}\"\nitems = \"/data\"\n"));

    let err = pull_err(&cfg("missing")).await;
    assert!(matches!(err, PullError::ItemsMissing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("page 1 of {base}/missing: items pointer \"/data\" not found")
    );

    let err = pull_err(&cfg("object")).await;
    assert!(
        matches!(
            err,
            PullError::ItemsNotArray {
                found: "an object",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("items pointer \"/data\" holds an object, not an array"),
        "{err}"
    );

    let err = pull_err(&cfg("trailing")).await;
    assert!(matches!(err, PullError::InvalidJson { .. }), "{err:?}");
}

#[tokio::test]
async fn records_need_a_string_or_integer_key() {
    let base = serve(
        Router::new()
            .route(
                "/bool",
                get(|| async { Json(json!([{"id": "a"}, {"id": true}])) }),
            )
            .route("/float", get(|| async { Json(json!([{"id": 1.5}])) }))
            .route(
                "/none",
                get(|| async { Json(json!([{"id": 1}, {"id": 2}, {"name": "x"}])) }),
            ),
    )
    .await;
    let cfg = |path: &str| config(&format!("url = \"{base}/{path}\"\n"));

    let err = pull_err(&cfg("bool")).await;
    assert!(
        matches!(
            err,
            PullError::BadKey {
                index: 1,
                found: "a boolean",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with(": record 1: key at \"/id\" is a boolean, not a string or an integer"),
        "{err}"
    );
    let err = pull_err(&cfg("float")).await;
    assert!(err.to_string().contains("is a non-integer number"), "{err}");
    let err = pull_err(&cfg("none")).await;
    assert!(
        matches!(err, PullError::KeyMissing { index: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("page 1 of"), "{err}");
}

#[tokio::test]
async fn a_duplicate_key_across_pages_fails_the_pull() {
    let base = serve(Router::new().route(
        "/pz",
        get(|Query(q): Params| async move {
            Json(match num(&q, "page") {
                Some(1) => json!([{"id": "a"}, {"id": "dup"}]),
                Some(2) => json!([{"id": "b"}, {"id": "dup", "other": 1}]),
                _ => json!([]),
            })
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/pz\"\n[pagination]\nstyle = \"page\"\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(err, PullError::DuplicateKey { ref key } if key == "dup"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "duplicate key \"dup\" in the snapshot");
}

#[tokio::test]
async fn a_repeated_cursor_is_a_loop() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counted(&hits, |n| {
        Json(json!({"data": [{"id": n}], "next": "abc"})).into_response()
    }))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/x\"\nitems = \"/data\"\n[pagination]\nstyle = \"cursor\"\ncursor = \"/next\"\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(err, PullError::Loop { what: "cursor", .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("page 2 of {base}/x: pagination loop: cursor \"abc\" was already requested")
    );
    assert_eq!(hits.load(SeqCst), 2);
}

#[tokio::test]
async fn more_than_max_pages_fails_the_pull() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counted(&hits, |n| Json(json!([{"id": n}])).into_response())).await;
    let cfg = config(&format!(
        "url = \"{base}/x\"\nmax_pages = 3\n[pagination]\nstyle = \"page\"\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(err, PullError::TooManyPages { max_pages: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("page 3 of {base}/x: more pages follow but max_pages is 3")
    );
    assert_eq!(hits.load(SeqCst), 3, "no request beyond max_pages");
}

#[tokio::test]
async fn an_empty_page_before_the_last_is_a_short_page() {
    let base = serve(Router::new().route(
        "/pg",
        get(|Query(q): Params| async move {
            let page = num(&q, "page").unwrap_or(0);
            let items = if page == 3 {
                json!([])
            } else {
                json!([{"id": page}])
            };
            Json(json!({"results": items, "pages": 5}))
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/pg\"\nitems = \"/results\"\n[pagination]\nstyle = \"page\"\ntotal_pages = \"/pages\"\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(
        matches!(err, PullError::ShortPage { total_pages: 5, ref at, .. } if at.page == 3),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("page 3 of {base}/pg: short page")),
        "{err}"
    );
}

#[tokio::test]
async fn after_key_requires_a_boolean_has_more() {
    let base = serve(Router::new().route(
        "/ak",
        get(|| async { Json(json!({"data": [{"id": 1}], "more": true})) }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/ak\"\nitems = \"/data\"\n[pagination]\nstyle = \"after_key\"\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(matches!(err, PullError::Pagination { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("has_more pointer \"/has_more\" not found"),
        "{err}"
    );
}

#[tokio::test]
async fn next_urls_must_stay_on_the_origin() {
    let base = serve_at(|base| {
        let port = base.rsplit(':').next().unwrap_or_default().to_string();
        Router::new().route(
            "/n",
            get(move || {
                let next = format!("http://localhost:{port}/n?page=2");
                async move { Json(json!({"items": [{"id": 1}], "next": next})) }
            }),
        )
    })
    .await;
    let cfg = config(&format!(
        "url = \"{base}/n\"\nitems = \"/items\"\n[pagination]\nstyle = \"next_url\"\nnext = \"/next\"\n"
    ));
    let err = pull_err(&cfg).await;
    assert!(matches!(err, PullError::Pagination { .. }), "{err:?}");
    assert!(err.to_string().contains("is not on the origin of"), "{err}");
}

// -- versions, headers, rate limit -------------------------------------------

#[tokio::test]
async fn versions_from_integers_and_rfc3339_strings() {
    let base = serve(
        Router::new()
            .route(
                "/v",
                get(|| async {
                    Json(json!([
                        {"id": "a", "v": "2026-01-01T00:00:00Z"},
                        {"id": "b", "v": 42},
                        {"id": "c", "v": null},
                        {"id": "d"},
                        {"id": "e", "v": "2026-01-01T01:00:00.5+01:00"},
                    ]))
                }),
            )
            .route(
                "/bad",
                get(|| async { Json(json!([{"id": "a", "v": "yesterday"}])) }),
            ),
    )
    .await;
    let snap = pull_ok(&config(&format!("url = \"{base}/v\"\nversion = \"/v\"\n"))).await;
    let versions: HashMap<String, Option<i64>> = snap
        .records()
        .unwrap()
        .into_iter()
        .map(|r| (r.key.to_string(), r.version))
        .collect();
    let jan1 = 1_767_225_600_000_000_000;
    assert_eq!(versions["a"], Some(jan1));
    assert_eq!(versions["b"], Some(42));
    assert_eq!(versions["c"], None);
    assert_eq!(versions["d"], None);
    assert_eq!(versions["e"], Some(jan1 + 500_000_000));

    let unversioned = pull_ok(&config(&format!("url = \"{base}/v\"\n"))).await;
    assert!(unversioned
        .records()
        .unwrap()
        .iter()
        .all(|r| r.version.is_none()));

    let err = pull_err(&config(&format!(
        "url = \"{base}/bad\"\nversion = \"/v\"\n"
    )))
    .await;
    assert!(
        matches!(err, PullError::BadVersion { index: 0, ref key, .. } if key == "a"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("record 0 (key \"a\"): bad version at \"/v\"") && msg.contains("yesterday"),
        "{msg}"
    );
}

#[tokio::test]
async fn headers_are_sent_and_never_shown() {
    let app = Router::new()
        .route(
            "/secure",
            get(|h: Headers| async move {
                let auth = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let key = h.get("x-api-key").and_then(|v| v.to_str().ok());
                if auth == Some("Bearer s3cret-token") && key == Some("k3y-value") {
                    Json(json!([{"id": "a"}])).into_response()
                } else {
                    S::UNAUTHORIZED.into_response()
                }
            }),
        )
        .route("/fail", get(|| async { S::INTERNAL_SERVER_ERROR }))
        .route("/deny", get(|| async { S::FORBIDDEN }))
        .route("/garbage", get(|| async { "{" }));
    let base = serve(app).await;
    let env = |name: &str| match name {
        "TOKEN" => Some("s3cret-token".to_string()),
        "KEY" => Some("k3y-value".to_string()),
        _ => None,
    };
    let cfg_for = |path: &str, extra: &str| {
        let text = format!(
            r#"[[producer]]
name = "p"
schedule = "0 * * * * *"
[producer.snapshot]
url = "{base}/{path}"
retries = 1
retry_backoff_ms = 1
headers = {{ Authorization = "Bearer ${{TOKEN}}", X-Api-Key = "${{KEY}}"{extra} }}
"#
        );
        crate::config::Config::parse("t.toml", &text, &env)
            .map(|loaded| loaded.config.producers[0].snapshot.clone())
    };
    let cfg_for = |path: &str, extra: &str| {
        let parsed = cfg_for(path, extra);
        (parsed.as_ref().ok().cloned(), parsed.err())
    };
    let valid = |path: &str| {
        cfg_for(path, "")
            .0
            .unwrap_or_else(|| panic!("{path} parses"))
    };
    let snap = pull_ok(&valid("secure")).await;
    assert_eq!(snap.len(), 1, "the server accepted the headers");

    let mut errors = Vec::new();
    for path in ["fail", "deny", "garbage"] {
        let err = pull_err(&valid(path)).await;
        errors.push(err.to_string());
        errors.push(format!("{err:?}"));
    }
    // A value HTTP cannot carry is refused with the config, before any pull.
    let (_, refused) = cfg_for("secure", r#", X-Bad = "k3y-value\u0001""#);
    let refused = refused.expect("the config is refused");
    assert!(
        refused
            .to_string()
            .contains("not a valid HTTP header value"),
        "{refused}"
    );
    errors.push(refused.to_string());
    errors.push(format!("{refused:?}"));
    for shown in &errors {
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y-value"),
            "secret in {shown}"
        );
    }
}

#[tokio::test]
async fn the_rate_limit_spaces_requests() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let base = serve(Router::new().route(
        "/pz",
        get(move |Query(q): Params| {
            seen.lock().unwrap().push(Instant::now());
            let page = num(&q, "page").unwrap_or(99);
            async move {
                Json(if page <= 4 {
                    json!([{"id": page}])
                } else {
                    json!([])
                })
            }
        }),
    ))
    .await;
    let cfg = config(&format!(
        "url = \"{base}/pz\"\nrate_limit = 20.0\n[pagination]\nstyle = \"page\"\n"
    ));
    let began = Instant::now();
    let snap = pull_ok(&cfg).await;
    assert_eq!((snap.pages, snap.len()), (5, 4));
    assert!(
        began.elapsed() >= Duration::from_millis(200),
        "5 requests at 20/s"
    );
    let arrivals = arrivals.lock().unwrap();
    for w in arrivals.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(40),
            "gap {:?}",
            w[1] - w[0]
        );
    }
}
