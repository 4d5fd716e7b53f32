//! The daemon's lifecycle: `App::build` connects, migrates and binds; `App::run` owns every task until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::keyframe::holder::Holder;
use crate::keyframe::run::Keyframer;
use crate::metrics::Metrics;
use crate::server::{router, AppState};
use crate::state::{Health, WorkState};
use crate::store::{Backend, Store};
use crate::work::Workers;

/// How long shutdown waits for tasks to finish their current step.
const DRAIN: Duration = Duration::from_secs(10);

/// A built daemon: connected, migrated, bound; nothing running yet.
pub struct App {
    config: Arc<Config>,
    store: Store,
    metrics: Metrics,
    listener: TcpListener,
    client: reqwest::Client,
    /// When this process built the daemon (ms): the last-success gauge of a
    /// producer without any keyframe run counts from here.
    started_ms: i64,
}

impl App {
    /// Connects to the database, applies migrations, and binds `[server].listen`
    /// (or uses `listener`, so tests can bind port 0).
    pub async fn build(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Self> {
        let store = Store::open(
            config.database.url.expose(),
            config.database.max_connections,
        )
        .await?;
        match Self::prepare(&config, &store, listener).await {
            Ok((listener, client)) => {
                let app = Self::assemble(config, store, listener, client);
                // Gauges that mirror the database (the last successful
                // keyframe among them) hold its values before the first scrape.
                if let Err(e) =
                    refresh_once(&app.store, &app.metrics, &app.config, app.started_ms).await
                {
                    warn!(error = %e, "could not refresh gauges");
                }
                Ok(app)
            }
            Err(e) => {
                store.close().await;
                Err(e)
            }
        }
    }

    /// Binds the listener (unless given), builds the HTTP client, and brings
    /// every producer's bucket layout up to date.
    async fn prepare(
        config: &Config,
        store: &Store,
        listener: Option<TcpListener>,
    ) -> anyhow::Result<(TcpListener, reqwest::Client)> {
        let client = crate::client::http_client()?;
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(&config.server.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?,
        };
        for p in &config.producers {
            crate::keyframe::run::log_relayout(
                &p.name,
                store
                    .ensure_layout(&p.name, p.bucket_bits, p.hasher())
                    .await?,
            );
        }
        Ok((listener, client))
    }

    fn assemble(
        config: Config,
        store: Store,
        listener: TcpListener,
        client: reqwest::Client,
    ) -> Self {
        let metrics = Metrics::new();
        let now = chrono::Utc::now();
        for p in &config.producers {
            metrics.init_producer(&p.name);
            if let Some(secs) = crate::schedule::expected_interval_secs(p, now) {
                metrics
                    .keyframe_expected_interval
                    .with_label_values(&[&p.name])
                    .set(secs);
            }
            if p.work.action != crate::config::Action::None {
                metrics.init_action(&p.name, p.work.action.as_str());
            }
        }
        Self {
            config: Arc::new(config),
            store,
            metrics,
            listener,
            client,
            started_ms: now.timestamp_millis(),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs the server, the schedules, the workers and the gauge refresher
    /// until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let wake = Arc::new(Notify::new());
        let keyframer = Keyframer::new(
            self.store.clone(),
            self.client.clone(),
            self.metrics.clone(),
        )
        .with_wake(wake.clone())
        .with_shutdown(shutdown.clone());
        let workers = Workers {
            store: self.store.clone(),
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            wake: wake.clone(),
            id: Holder::current().to_string(),
        };
        for p in &self.config.producers {
            tasks.spawn(crate::schedule::run_schedule(
                keyframer.clone(),
                p.clone(),
                shutdown.clone(),
            ));
            tasks.spawn({
                let workers = workers.clone();
                let p = p.clone();
                let cancel = shutdown.clone();
                async move { workers.run_producer(p, cancel).await }
            });
        }
        if self.store.backend() == Backend::Postgres {
            tasks.spawn(listen_for_work(
                self.config.database.url.expose().to_string(),
                wake.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(refresh_gauges(
            self.store.clone(),
            self.metrics.clone(),
            self.config.clone(),
            self.started_ms,
            shutdown.clone(),
        ));
        if self.config.database.retention_days > 0 {
            tasks.spawn(prune_history(
                self.store.clone(),
                self.config.database.retention_days,
                shutdown.clone(),
            ));
        }
        let pipeline = crate::ingest::pipeline::Pipeline::new(
            self.store.clone(),
            self.metrics.clone(),
            &self.config,
            tasks.clone(),
        );
        let refresher = crate::refresh::Refresher {
            store: self.store.clone(),
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            wake: pipeline.fetch_asked.clone(),
            id: crate::refresh::Refresher::holder_id(),
        };
        tasks.spawn({
            let refresher = refresher.clone();
            let producers = self.config.producers.clone();
            let cancel = shutdown.clone();
            async move { refresher.run(producers, cancel).await }
        });
        for p in self.config.producers.iter().filter(|p| p.catchup.is_some()) {
            tasks.spawn(crate::catchup::run_catchups(
                self.store.clone(),
                self.client.clone(),
                self.metrics.clone(),
                p.clone(),
                shutdown.clone(),
            ));
        }
        let state = AppState {
            tasks: tasks.clone(),
            pipeline,
            refresher,
            config: self.config.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            wake: wake.clone(),
            keyframer: keyframer.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn({
            let store = self.store.clone();
            let cancel = shutdown.clone();
            async move { store.listen_changes(cancel).await }
        });
        tasks.spawn({
            let store = self.store.clone();
            let cancel = shutdown.clone();
            async move { store.run_sealer(cancel).await }
        });
        for task in crate::ingest::background(&state, &shutdown) {
            tasks.spawn(task);
        }
        let listen = self
            .listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        info!(listen = %listen, backend = self.store.backend().name(), producers = self.config.producers.len(), "driftd running");
        let limits = crate::serve::Limits::of(&self.config.server);
        crate::serve::serve(
            self.listener,
            router(state),
            limits,
            shutdown.clone(),
            DRAIN,
        )
        .await;
        shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
            warn!("shutdown: some tasks did not finish within {DRAIN:?}");
        }
        if tokio::time::timeout(DRAIN, self.store.close())
            .await
            .is_err()
        {
            warn!("shutdown: database connections still in use after {DRAIN:?}; exiting anyway");
        }
        Ok(())
    }
}

/// Wakes the workers on PostgreSQL `NOTIFY driftd_work` (emitted by any replica).
async fn listen_for_work(url: String, wake: Arc<Notify>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => {
                if let Err(e) = l.listen("driftd_work").await {
                    warn!(error = %e, "LISTEN driftd_work failed; workers fall back to polling");
                } else {
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            n = l.recv() => match n {
                                Ok(_) => wake.notify_waiters(),
                                Err(e) => {
                                    warn!(error = %e, "LISTEN connection lost; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot open the LISTEN connection; workers poll meanwhile")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Deletes history older than the retention window, hourly.
async fn prune_history(store: Store, days: u32, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let before = crate::store::now_ms() - i64::from(days) * 86_400_000;
        match store.prune(before).await {
            Ok(p) if p != crate::store::Pruned::default() => info!(
                inbox = p.inbox,
                work = p.work,
                runs = p.runs,
                drifts = p.drifts,
                "pruned history older than {days} days"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not prune history; retrying in an hour"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Keeps the gauges that mirror database state current.
async fn refresh_gauges(
    store: Store,
    metrics: Metrics,
    config: Arc<Config>,
    started_ms: i64,
    cancel: CancellationToken,
) {
    loop {
        if let Err(e) = refresh_once(&store, &metrics, &config, started_ms).await {
            warn!(error = %e, "could not refresh gauges");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

pub(crate) async fn refresh_once(
    store: &Store,
    metrics: &Metrics,
    config: &Config,
    started_ms: i64,
) -> anyhow::Result<()> {
    // One scan of the queue gives both the items per state and the open
    // drift (pending and running items).
    let counts = store.work_counts_by_producer().await?;
    let health = store.producer_health().await?;
    let guarded = store.guarded_runs().await?;
    let backlog = store.fetch_backlog().await?;
    for p in &config.producers {
        let count = |state| counts.get(&(p.name.clone(), state)).copied().unwrap_or(0);
        if p.fetch.is_some() {
            metrics
                .fetch_backlog
                .with_label_values(&[&p.name])
                .set(backlog.get(&p.name).copied().unwrap_or(0));
        }
        metrics
            .keyframe_guarded
            .with_label_values(&[&p.name])
            .set(i64::from(guarded.contains_key(&p.name)));
        metrics
            .entities
            .with_label_values(&[&p.name])
            .set(store.count_entities(&p.name).await?);
        metrics
            .drift_open
            .with_label_values(&[&p.name])
            .set(count(WorkState::Pending) + count(WorkState::Running));
        // From the database, so a restart (or another replica's keyframe)
        // shows the real last success, never 0 or nothing.
        let succeeded = store.keyframe_succeeded_at(&p.name).await?;
        metrics
            .keyframe_last_success
            .with_label_values(&[&p.name])
            .set(succeeded.unwrap_or(started_ms) as f64 / 1000.0);
        let current = health
            .get(&p.name)
            .map(|(h, _)| *h)
            .unwrap_or(Health::Healthy);
        for h in Health::ALL {
            metrics
                .producer_state
                .with_label_values(&[&p.name, h.as_str()])
                .set(i64::from(*h == current));
        }
        for state in [WorkState::Pending, WorkState::Running, WorkState::Dead] {
            metrics
                .work_items
                .with_label_values(&[&p.name, state.as_str()])
                .set(count(state));
        }
    }
    Ok(())
}
