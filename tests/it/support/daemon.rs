//! The daemon under test: [`Daemon`] runs the real `App` in process on a port-0 listener; [`DaemonProcess`] is a child `driftd run` with its log, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use driftd::app::App;
use driftd::config::{Config, WebhookConfig};
use driftd::ingest::signature;
use driftd::store::Store;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{driftd_bin, free_port};

/// Parses a test config (no environment variables); panics on any problem.
pub fn config(text: &str) -> Config {
    Config::parse("t.toml", text, &|_| None)
        .unwrap_or_else(|e| panic!("the test config is invalid: {e}"))
        .config
}

/// The daemon in process on a port-0 listener; cancelled when dropped,
/// drained by [`Daemon::stop`].
pub struct Daemon {
    pub addr: SocketAddr,
    /// `http://{addr}`.
    pub base: String,
    pub config: Config,
    /// The daemon's own store (a clone of its pool).
    pub store: Store,
    pub cancel: CancellationToken,
    /// A client with a 20 s timeout.
    pub http: reqwest::Client,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Builds and runs `App` for `config`, listening on a loopback port 0.
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::build(config.clone(), Some(listener))
            .await
            .expect("build the daemon");
        let addr = app.local_addr().unwrap();
        let store = app.store().clone();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app.run(cancel.clone()));
        Self {
            addr,
            base: format!("http://{addr}"),
            config,
            store,
            cancel,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            task: Some(task),
            _dir: None,
        }
    }

    /// [`Daemon::start`], keeping `dir` (which `config` refers to) until the daemon is dropped.
    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> Self {
        let mut daemon = Self::start(config).await;
        daemon._dir = Some(dir);
        daemon
    }

    /// Whether `App::run` is still running.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Cancels the daemon and waits (at most 30 s) until it stopped cleanly.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let task = self.task.take().expect("the daemon runs");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the daemon stops within 30 s")
            .expect("the daemon task does not panic")
            .expect("the daemon stops cleanly");
    }

    /// The webhook table of `producer`.
    pub fn webhook_config(&self, producer: &str) -> WebhookConfig {
        self.config
            .producer(producer)
            .and_then(|p| p.webhook.clone())
            .expect("producer with a webhook")
    }

    /// POSTs `body` to `path` as JSON: the status and the answer (JSON, or its text as a string).
    pub async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("the daemon answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs `body` to `/hooks/{producer}`, signed now with the producer's secret.
    pub async fn send_raw(&self, producer: &str, body: &[u8], id: &str) -> (u16, Value) {
        let headers = signature::sign(
            &self.webhook_config(producer),
            body,
            chrono::Utc::now().timestamp(),
            id,
        );
        self.post(&format!("/hooks/{producer}"), body.to_vec(), &headers)
            .await
    }

    /// [`Daemon::send_raw`] of `body` as JSON.
    pub async fn send(&self, producer: &str, body: &Value, id: &str) -> (u16, Value) {
        self.send_raw(producer, body.to_string().as_bytes(), id)
            .await
    }

    /// Sends `doc` as a signed webhook of the first producer through `client`; panics unless it is acknowledged.
    pub async fn webhook(&self, client: &reqwest::Client, doc: &Value) {
        let producer = &self.config.producers[0].name;
        let body = serde_json::to_vec(doc).unwrap();
        let mut req = client.post(format!("{}/hooks/{producer}", self.base));
        for (k, v) in signature::sign(
            &self.webhook_config(producer),
            &body,
            chrono::Utc::now().timestamp(),
            "m",
        ) {
            req = req.header(k, v);
        }
        let resp = req.body(body).send().await.unwrap();
        assert!(resp.status().is_success(), "webhook: {}", resp.status());
    }

    /// POSTs a raw message to `/inbound-email/{producer}` with `token` as the bearer token.
    pub async fn email(&self, producer: &str, raw: Vec<u8>, token: Option<&str>) -> (u16, Value) {
        let headers: Vec<(String, String)> = token
            .map(|t| vec![("authorization".to_string(), format!("Bearer {t}"))])
            .unwrap_or_default();
        self.post(&format!("/inbound-email/{producer}"), raw, &headers)
            .await
    }

    /// Runs a keyframe of the first producer through the admin endpoint; its summary.
    pub async fn keyframe(&self, client: &reqwest::Client, admin_token: &str) -> Value {
        let resp = client
            .post(format!(
                "{}/admin/keyframe/{}",
                self.base, self.config.producers[0].name
            ))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "keyframe: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// The `/metrics` exposition; panics unless it is served.
    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        assert!(
            resp.status().is_success(),
            "/metrics answered {}",
            resp.status()
        );
        resp.text().await.unwrap()
    }

    /// The value of one series of `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels)
    }

    /// `driftd_deltas_total` of one producer, channel and outcome.
    pub async fn deltas(&self, producer: &str, channel: &str, outcome: &str) -> f64 {
        self.metric(
            "driftd_deltas_total",
            &[
                ("producer", producer),
                ("channel", channel),
                ("outcome", outcome),
            ],
        )
        .await
    }

    /// `GET /readyz` through `http`: the status and the body.
    pub async fn readyz(&self, http: &reqwest::Client) -> (u16, String) {
        let resp = http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .expect("the daemon answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse().expect("a number"))
        .unwrap_or(0.0)
}

/// Sends `signal` (`TERM`, `INT`, `KILL`, ...) to process `pid` with `kill`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A child `driftd run` on a free loopback port: its config is
/// `{dir}/{name}.toml`, its stderr `{dir}/{name}.log` (see [`DaemonProcess::log`]),
/// its stdout `{dir}/{name}.stdout`. Killed when dropped.
pub struct DaemonProcess {
    child: Child,
    /// `127.0.0.1:{port}`.
    pub addr: String,
    /// `http://{addr}`.
    pub base: String,
    log: PathBuf,
}

impl DaemonProcess {
    /// Writes `config(listen address)` and starts `driftd run` on it with
    /// `RUST_LOG=info` and without `DRIFTD_CONFIG`; `command` adds arguments
    /// or environment before the `--config` argument.
    pub fn spawn(
        dir: &Path,
        name: &str,
        config: impl FnOnce(&str) -> String,
        command: impl FnOnce(&mut Command),
    ) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config(&addr)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let stdout = dir.join(format!("{name}.stdout"));
        let mut cmd = Command::new(driftd_bin());
        cmd.arg("run")
            .env_remove("DRIFTD_CONFIG")
            .env("RUST_LOG", "info");
        command(&mut cmd);
        let child = cmd
            .args(["--config", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start driftd run");
        Self {
            child,
            base: format!("http://{addr}"),
            addr,
            log,
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Panics, with the log, if it exited while the caller waited for `what`.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "driftd exited ({status}) while waiting for {what}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// Polls `/readyz` until it answers 200; panics if it exits first or after 30 s.
    pub async fn ready(&mut self) {
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        let deadline = Instant::now() + super::EVENTUALLY;
        loop {
            self.assert_running("/readyz 200");
            let resp = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if resp.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "driftd not ready within {:?}\nlog:\n{}",
                super::EVENTUALLY,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls the log every 100 ms until `f` finds what it looks for; panics,
    /// with the log, if the process exits first or after 30 s.
    pub async fn wait_for_log(&mut self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if f(&log) {
                return;
            }
            self.assert_running(what);
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nlog:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().unwrap();
    }

    /// Stops it with SIGTERM (so its shutdown lines are logged too), waits
    /// at most 20 s for it to exit, and returns the log.
    pub fn stop(mut self) -> String {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
