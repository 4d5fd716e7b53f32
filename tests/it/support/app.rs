//! A loopback application that receives driftd's `http` work calls: scripted answers and delays, and a record of every call.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// The secret an application stand-in expects `X-Driftd-Signature` under.
pub const APP_SECRET: &str = "app-shared-secret";

/// How the application answers.
#[derive(Clone)]
pub struct Answers {
    /// Status codes to answer in order; 200 once exhausted.
    pub script: Vec<u16>,
    /// How long call number `n` (from 0) of key `key` takes before answering.
    pub delay: fn(n: usize, key: &str) -> Duration,
}

impl Default for Answers {
    fn default() -> Self {
        Self {
            script: Vec::new(),
            delay: |_, _| Duration::ZERO,
        }
    }
}

impl Answers {
    /// Answers the scripted status codes in order, at once.
    pub fn script(codes: Vec<u16>) -> Self {
        Self {
            script: codes,
            ..Self::default()
        }
    }

    /// Answers 200 after `delay`.
    pub fn after(delay: fn(n: usize, key: &str) -> Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

/// What the application saw. Cheap to clone; every clone sees the same calls.
#[derive(Clone, Default)]
pub struct AppStandIn {
    pub calls: Arc<AtomicUsize>,
    /// Each call's `Idempotency-Key`, in arrival order.
    pub keys: Arc<Mutex<Vec<String>>>,
    /// Each call's body, in arrival order.
    pub bodies: Arc<Mutex<Vec<Value>>>,
    /// Whether each call's `X-Driftd-Signature` was the HMAC-SHA256 of its body under [`APP_SECRET`].
    pub signed: Arc<Mutex<Vec<bool>>>,
    /// (spec key, started, answered) per call, in the order the calls were answered.
    pub answered: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
    /// Idempotency keys whose call was answered (the application's effects).
    pub effects: Arc<Mutex<BTreeSet<String>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    script: Arc<Mutex<Vec<u16>>>,
}

impl AppStandIn {
    /// Starts the application on a loopback port; returns it and the URL to configure as `work.url`.
    pub async fn start(answers: Answers) -> (Self, String) {
        let app = AppStandIn {
            script: Arc::new(Mutex::new(answers.script)),
            ..AppStandIn::default()
        };
        let state = app.clone();
        let delay = answers.delay;
        let router = Router::new().route(
            "/driftd",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let s = state.clone();
                async move { s.answer(&headers, &body, delay).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/driftd", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (app, url)
    }

    async fn answer(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        delay: fn(usize, &str) -> Duration,
    ) -> (StatusCode, String) {
        let started = Instant::now();
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let idempotency = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.keys.lock().unwrap().push(idempotency.clone());
        let spec: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let key = spec["key"].as_str().unwrap_or_default().to_string();
        self.bodies.lock().unwrap().push(spec);
        let expected = {
            use hmac::Mac;
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        };
        let given = headers
            .get("x-driftd-signature")
            .and_then(|v| v.to_str().ok());
        self.signed
            .lock()
            .unwrap()
            .push(given == Some(expected.as_str()));
        tokio::time::sleep(delay(n, &key)).await;
        let code = {
            let mut script = self.script.lock().unwrap();
            if script.is_empty() {
                200
            } else {
                script.remove(0)
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.answered
            .lock()
            .unwrap()
            .push((key, started, Instant::now()));
        self.effects.lock().unwrap().insert(idempotency);
        (
            StatusCode::from_u16(code).unwrap(),
            format!("answer {code}"),
        )
    }
}
