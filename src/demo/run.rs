//! The run: vendor, daemon and churn started, watched, stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::routing::get;
use axum::Router;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::churn::{churn, Sender, Stats};
use super::reporter::{driftd_command, print_wrapped, Console, Kind, Reporter, Totals};
use super::setup::{adaptive_toml, catchup_toml, config_toml, new_secret, prepare_dir};
use super::vendor::{list_orders, Orders, Vendor};
use super::verdict::finish;
use super::{
    schedule_for, DemoArgs, Outcome, CONFIG_FILE, DB_FILE, DEMO_READ_TOKEN, FLUSH_TIMEOUT,
    KEYFRAME_TIMEOUT, PRODUCER, SHUTDOWN_TIMEOUT,
};
use crate::app::App;
use crate::config::{Config, Producer};
use crate::keyframe::run::{KeyframeError, Keyframer, Summary};
use crate::state::RunState;
use crate::work::Workers;

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let schedule = if args.adaptive {
        "adaptive".to_string()
    } else {
        schedule_for(args.keyframe_every).map_err(anyhow::Error::msg)?
    };
    let dir = prepare_dir(args.dir.as_deref())?;
    let config_path = dir.join(CONFIG_FILE);

    // The vendor and its orders.
    let mut rng = StdRng::seed_from_u64(seed);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let vendor = Vendor(Arc::new(Mutex::new(Orders::new(
        args.records,
        &mut rng,
        &now,
    ))));
    let vendor_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo vendor on 127.0.0.1")?;
    let vendor_addr = vendor_listener.local_addr()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listen = listener.local_addr()?;

    // The config, written and loaded exactly as `driftd check` and `driftd run` would.
    let mut text = config_toml(
        &dir.join(DB_FILE),
        listen,
        vendor_addr,
        &schedule,
        &new_secret(),
    );
    if args.catchup {
        text.push_str(&catchup_toml(vendor_addr));
    }
    if args.adaptive {
        text.push_str(&adaptive_toml(args.keyframe_every, args.rate, args.loss));
    }
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let loaded = Config::load(&config_path)?;
    let producer = loaded
        .config
        .producer(PRODUCER)
        .cloned()
        .context("the demo config has no demo producer")?;
    let webhook = producer
        .webhook
        .clone()
        .context("the demo config has no webhook")?;

    let console = Console::new();
    let pace = if args.adaptive {
        format!(
            "{:.1}% -> {:.0}% -> {:.1}% of webhooks lost (a third of the run each), \
             keyframes paced by the drift they find",
            args.loss,
            args.loss * 100.0,
            args.loss
        )
    } else {
        format!(
            "{:.0}% of webhooks lost, a keyframe every {}s",
            args.loss * 100.0,
            args.keyframe_every
        )
    };
    print_wrapped(
        &format!(
            "driftd demo: {} mortgage orders at a simulated vendor, ~{} changes/s for {}s,",
            args.records, args.rate, args.duration,
        ),
        "  ",
    );
    print_wrapped(&format!("  {pace} (seed {seed})"), "  ");
    print_wrapped(
        &format!(
            "  config:  {}  (passes `driftd check`; copy from it)",
            config_path.display()
        ),
        "           ",
    );
    println!("  vendor:  http://{vendor_addr}/orders  (cursor pagination)");
    println!("  metrics: http://{listen}/metrics");
    println!("  webhook: POST http://{listen}/hooks/{PRODUCER}  (standard-webhooks, signed)");
    println!(
        "  feed:    curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer {DEMO_READ_TOKEN}' \\\n             'http://{listen}/v1/changes?producer={PRODUCER}'"
    );

    let tasks = TaskTracker::new();
    let root = CancellationToken::new();
    let vendor_stop = root.child_token();
    let app_stop = root.child_token();
    let churn_stop = root.child_token();
    tasks.spawn({
        let router = Router::new()
            .route("/orders", get(list_orders))
            .with_state(vendor.clone());
        let stop = vendor_stop.clone();
        async move {
            if let Err(e) = axum::serve(vendor_listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "demo vendor server failed");
            }
        }
    });

    let app = App::build(loaded.config.clone(), Some(listener)).await?;
    let store = app.store().clone();
    let metrics = app.metrics().clone();
    let client = crate::client::http_client()?;
    let mut reporter = Reporter {
        console,
        store: store.clone(),
        metrics: metrics.clone(),
        stats: Arc::new(Stats::default()),
        config_path: config_path.clone(),
        driftd: driftd_command(),
        last_status_ms: crate::store::now_ms(),
        last_run: 0,
        kinds: BTreeMap::new(),
        totals: Totals::default(),
        warned_not_found: false,
        correcting: None,
        last_catchup: None,
        adaptive: args.adaptive,
        loss_steps: Vec::new(),
        loss_shown: 0,
        last_paced: None,
    };
    let keyframer = Keyframer::new(store.clone(), client.clone(), metrics.clone());
    let mut app_task = None;

    let story = async {
        bootstrap(&mut reporter, &keyframer, &producer, &client).await?;
        app_task = Some(tasks.spawn(app.run(app_stop.clone())));
        reporter.console.say(format!(
            "driftd is running: keyframes on schedule {schedule:?}, apply workers, metrics at http://{listen}/metrics"
        ));
        let sender = Sender {
            client: client.clone(),
            url: format!("http://{listen}/hooks/{PRODUCER}"),
            webhook,
            stats: reporter.stats.clone(),
        };
        let start = Instant::now();
        let third = Duration::from_secs(args.duration) / 3;
        let steps = if args.adaptive {
            vec![
                (start, args.loss / 100.0),
                (start + third, args.loss),
                (start + third * 2, args.loss / 100.0),
            ]
        } else {
            vec![(start, args.loss)]
        };
        reporter.loss_steps = steps.clone();
        let churn_task = tasks.spawn(churn(
            vendor.clone(),
            sender,
            steps,
            args.rate,
            seed ^ 0x5eed,
            Instant::now() + Duration::from_secs(args.duration) + FLUSH_TIMEOUT,
            churn_stop.clone(),
        ));
        reporter.console.say(format!(
            "the vendor starts changing orders; each change is a signed webhook, {:.0}% of them dropped, \
             some duplicated or reordered",
            args.loss * 100.0
        ));
        watch(&mut reporter, Duration::from_secs(args.duration)).await?;
        finish(
            &mut reporter,
            &keyframer,
            &producer,
            &vendor,
            churn_task,
            &churn_stop,
            &args,
        )
        .await
    };
    let outcome = tokio::select! {
        r = story => r,
        _ = tokio::signal::ctrl_c() => {
            println!();
            println!("interrupted: shutting down");
            Ok(Outcome::Interrupted)
        }
    };

    // Shut down in order: the churn, the daemon (it drains its own tasks), then
    // the vendor, so no scheduled keyframe sees the vendor vanish mid-pull.
    churn_stop.cancel();
    app_stop.cancel();
    if let Some(task) = app_task {
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("warning: the daemon stopped with an error: {e:#}"),
            Ok(Err(e)) => eprintln!("warning: the daemon task failed: {e}"),
            Err(_) => eprintln!("warning: the daemon did not stop within {SHUTDOWN_TIMEOUT:?}"),
        }
    }
    root.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        eprintln!("warning: some demo tasks did not stop within {SHUTDOWN_TIMEOUT:?}");
    }
    // The daemon closes it when it ran; not when the story ended before.
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, store.close())
        .await
        .is_err()
    {
        eprintln!("warning: database connections still in use after {SHUTDOWN_TIMEOUT:?}");
    }
    print_wrapped(
        &format!("files kept in {}; to look at them:", dir.display()),
        "  ",
    );
    // The driftd that ran the demo, as a path that works from here (after
    // `cargo run` no `driftd` need be on PATH).
    print_wrapped(
        &format!(
            "  {} status --config {}",
            reporter.driftd,
            config_path.display()
        ),
        "    ",
    );
    outcome
}

/// The first keyframe into the empty table, and the workers that carry out its
/// work, before the daemon (and its schedule) starts.
pub(super) async fn bootstrap(
    r: &mut Reporter,
    keyframer: &Keyframer,
    p: &Producer,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    r.console.say(
        "bootstrap: the local table is empty, so the first keyframe pulls the vendor's full state \
         (the drift guard never trips on an empty table)",
    );
    let s = keyframe_now(r, keyframer, p, Kind::Bootstrap).await?;
    if s.state != RunState::Ok {
        anyhow::bail!(
            "the bootstrap keyframe ended {}; see the line above",
            s.state
        );
    }
    let workers = Workers {
        store: r.store.clone(),
        client: client.clone(),
        metrics: r.metrics.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
        id: format!("demo-bootstrap-{}", std::process::id()),
    };
    let total = s.work_emitted;
    // Generous: a debug build on a busy machine applies a few hundred items a second.
    let deadline = Instant::now() + Duration::from_secs(60 + total / 20);
    let mut shown = Instant::now();
    loop {
        let claimed = workers.tick(p).await?;
        let open = r.open_drift().await?;
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("bootstrap work did not drain in time: {open} items still open");
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            r.console.status(
                format!(
                    "bootstrap: applying corrections, {} of {total} done",
                    total.saturating_sub(open as u64)
                ),
                true,
            );
        }
        if claimed == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let n = r.store.count_entities(PRODUCER).await?;
    r.console
        .say(format!("bootstrap done: {n} orders stored, open drift 0"));
    Ok(())
}

/// Runs a keyframe now, waiting while a scheduled one holds the lease; prints it.
pub(super) async fn keyframe_now(
    r: &mut Reporter,
    keyframer: &Keyframer,
    p: &Producer,
    kind: Kind,
) -> anyhow::Result<Summary> {
    let deadline = Instant::now() + KEYFRAME_TIMEOUT;
    r.console.status(
        format!("{} keyframe: pulling the vendor's orders", kind.name()),
        false,
    );
    loop {
        match keyframer.run(p, false).await {
            Ok(s) => {
                if let Some(id) = s.run_id {
                    r.kinds.insert(id, kind);
                }
                r.runs().await?;
                return Ok(s);
            }
            Err(KeyframeError::Busy(_)) if Instant::now() < deadline => {
                // A scheduled keyframe is running; print it when it ends, then go.
                r.runs().await?;
                r.console.status(
                    format!(
                        "{} keyframe: waiting for a scheduled keyframe to end",
                        kind.name()
                    ),
                    false,
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints keyframes as they finish and the status once a second, for `duration`.
pub(super) async fn watch(r: &mut Reporter, duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now();
    while Instant::now() < end {
        tick.tick().await;
        r.runs().await?;
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            r.status().await?;
        }
    }
    r.runs().await?;
    r.console.done();
    Ok(())
}

/// Waits (bounded) until no corrective work is open, showing progress.
pub(super) async fn drain(r: &mut Reporter, what: &str, limit: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + limit;
    let mut shown = Instant::now();
    loop {
        r.runs().await?;
        let open = r.open_drift().await?;
        if open == 0 || Instant::now() > deadline {
            return Ok(open);
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            r.console.status(
                format!("{what}: open drift {open}, waiting for the workers"),
                true,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
