//! The admin endpoints: off without a token, 401 with a wrong one, and status, keyframe and approve with the right one.

use serde_json::Value;

use crate::support::{config, Daemon, TestDb};
use crate::support::{Fault, Vendor};

async fn start(db: &TestDb, snapshot: &str, token: Option<&str>) -> Daemon {
    let server = token
        .map(|t| format!("[server]\nadmin_token = \"{t}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "{server}[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{snapshot}\n",
        db.url
    );
    Daemon::start(config(&text)).await
}

async fn call(method: reqwest::Method, url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

crate::limited_test! {
async fn admin_endpoints_are_off_without_a_token() {
    let db = TestDb::sqlite();
    let (_vendor, addr) = Vendor::start(5).await;
    let daemon = start(&db, &crate::support::snapshot_toml("none", addr), None).await;
    let base = &daemon.base;
    let (status, _) = call(
        reqwest::Method::GET,
        format!("{base}/admin/status"),
        Some("anything"),
    )
    .await;
    assert_eq!(status, 404);
    daemon.stop().await;
}
}

crate::limited_test! {
async fn status_keyframe_and_approve_over_http() {
    let db = TestDb::sqlite();
    let (vendor, addr) = Vendor::start(40).await;
    let token = "adm1n-t0ken";
    let daemon = start(
        &db,
        &crate::support::snapshot_toml("none", addr),
        Some(token),
    )
    .await;
    let base = &daemon.base;
    use reqwest::Method;
    for bad in [None, Some("wrong")] {
        let (status, body) = call(Method::GET, format!("{base}/admin/status"), bad).await;
        assert_eq!(status, 401, "{body}");
        assert!(!body.to_string().contains(token));
    }
    let (status, s) = call(
        Method::POST,
        format!("{base}/admin/keyframe/orders"),
        Some(token),
    )
    .await;
    assert_eq!(
        (status, s["state"].as_str(), s["missing"].as_u64()),
        (200, Some("ok"), Some(40)),
        "{s}"
    );
    let (status, _) = call(
        Method::POST,
        format!("{base}/admin/keyframe/nope"),
        Some(token),
    )
    .await;
    assert_eq!(status, 404);

    // The daemon's workers apply the bootstrap; then the vendor empties and the guard trips.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, st) = call(Method::GET, format!("{base}/admin/status"), Some(token)).await;
        if st["producers"][0]["entities"] == 40 && st["producers"][0]["open_drift"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bootstrap not applied: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    *vendor.fault.lock().unwrap() = Fault::Empty;
    let (_, s) = call(
        Method::POST,
        format!("{base}/admin/keyframe/orders"),
        Some(token),
    )
    .await;
    assert_eq!(s["state"], "guarded", "{s}");
    let run = s["run_id"].as_i64().unwrap();
    let (status, a) = call(
        Method::POST,
        format!("{base}/admin/approve/{run}"),
        Some(token),
    )
    .await;
    assert_eq!((status, a["work_emitted"].as_u64()), (200, Some(40)), "{a}");
    let (status, a) = call(
        Method::POST,
        format!("{base}/admin/approve/{run}"),
        Some(token),
    )
    .await;
    assert_eq!(status, 409, "{a}");
    assert_eq!(
        a["error"],
        format!("keyframe run {run} is already approved"),
        "{a}"
    );
    daemon.stop().await;
}
}
