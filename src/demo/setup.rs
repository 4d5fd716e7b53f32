//! Setup: the demo directory, its config file and secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{DB_FILE, DEMO_READ_TOKEN, PAGE, PRODUCER};

/// The config the demo runs with; `driftd check` accepts it.
pub(super) fn config_toml(
    db_path: &Path,
    listen: SocketAddr,
    vendor: SocketAddr,
    schedule: &str,
    secret: &str,
) -> String {
    let db_url = toml_string(&format!("sqlite://{}", db_path.display()));
    format!(
        r#"# Written by `driftd demo`. Its vendor lived inside the demo process at {vendor}
# and is gone, but `driftd status --config THIS_FILE` still shows what happened.
# Copy from it: every key is documented in config/example.toml.

[server]
listen = "{listen}"
# The application's API (/v1: change feed, entities); a real config reads its token from the environment.
read_token = "{DEMO_READ_TOKEN}"

[database]
url = {db_url}

[[producer]]
name = "{PRODUCER}"
schedule = "{schedule}"
# A keyframe that finds more drift than this share of the records corrects nothing
# until `driftd approve RUN_ID` (never on an empty table: the first keyframe bootstraps).
max_drift_ratio = 0.5

[producer.snapshot]
url = "http://{vendor}/orders"
items = "/data"
key = "/id"
version = "/version"
timeout_secs = 10
retries = 2
retry_backoff_ms = 100

[producer.snapshot.pagination]
style = "cursor"
cursor = "/next_cursor"
param = "cursor"
limit = {PAGE}
limit_param = "limit"

[producer.webhook]
scheme = "standard-webhooks"
secret = "${{DRIFTD_DEMO_WEBHOOK_SECRET:-{secret}}}"
items = ""
key = "/id"
version = "/version"
mode = "replace"
deleted = "/deleted"
dedup_header = "webhook-id"

[producer.work]
action = "apply"
concurrency = 8
backoff_base_ms = 200
backoff_max_ms = 5000
"#
    )
}

/// The `[producer.catchup]` table `driftd demo --catchup` appends: every
/// [`super::CATCHUP_EVERY_SECS`] seconds, the orders changed since the newest
/// version the previous catch-up saw (versions are the vendor's change counter).
pub(super) fn catchup_toml(vendor: SocketAddr) -> String {
    format!(
        r#"
# Between keyframes, every few seconds: the orders changed since the newest
# version the previous catch-up saw. A lost webhook waits seconds, not a keyframe.
[producer.catchup]
url = "http://{vendor}/orders?since={{since}}"
every_secs = {every}
since_format = "integer"
overlap = 0
"#,
        every = super::CATCHUP_EVERY_SECS
    )
}

/// The `[producer.adaptive]` table `driftd demo --adaptive` appends: between
/// a fifth of `every` (at least 1 s) and twice it, with a target that puts the
/// interval at its floor when `loss` of `rate` changes a second are lost.
pub(super) fn adaptive_toml(every: u64, rate: u32, loss: f64) -> String {
    let min = (every as f64 / 5.0).max(1.0);
    let max = every as f64 * 2.0;
    // Drift-seconds of an interval at the floor when the loss is at its worst.
    let target = (f64::from(rate) * loss * min * min / 2.0).max(0.5);
    format!(
        r#"
# Keyframes paced by the drift they find: the next one after
# sqrt(2 * target_drift_seconds / drift rate), within these bounds.
[producer.adaptive]
min_interval_secs = {min}
max_interval_secs = {max}
target_drift_seconds = {target:.2}
"#
    )
}

/// A TOML basic string holding `s` literally (`${` escaped against substitution).
pub(super) fn toml_string(s: &str) -> String {
    toml::Value::String(s.replace("${", "$${")).to_string()
}

/// A fresh Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
pub(super) fn new_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The demo directory (created, or a kept temporary one) with any previous demo database removed.
pub(super) fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create directory {}", d.display()))?;
            d.canonicalize()
                .with_context(|| format!("cannot resolve directory {}", d.display()))?
        }
        None => tempfile::Builder::new()
            .prefix("driftd-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?
            .keep(),
    };
    for suffix in ["", "-wal", "-shm"] {
        let f = dir.join(format!("{DB_FILE}{suffix}"));
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", f.display())),
        }
    }
    Ok(dir)
}
