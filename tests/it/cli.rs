//! The command line as a user runs it: `check`, `verify`, `migrate` through the real binary.

use std::process::Command;

use crate::support::{driftd_bin, repo_root, TestDb};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(driftd_bin())
        .args(args)
        .env_remove("DRIFTD_CONFIG")
        .output()
        .expect("run driftd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_config() {
    let example = repo_root().join("config/example.toml");
    let (code, stdout, stderr) = run(&["check", "--config", example.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok (2 producers)"), "{stdout}");
}

#[test]
fn a_missing_config_file_is_named_once_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let path = path.to_str().unwrap();
    for cmd in ["check", "status", "migrate", "run"] {
        let (code, _, stderr) = run(&[cmd, "--config", path]);
        assert_eq!(code, 64, "{cmd}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot read config file {path}: No such file")),
            "{cmd}: {stderr}"
        );
    }
    assert!(!std::path::Path::new(path).exists());
}

#[test]
fn check_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[database]
url = "sqlite://x.db"
pool_size = 3

[[producer]]
name = "orders"
schedule = "*/5 * *"
[producer.snapshot]
url = "http://127.0.0.1:9/orders"
headers = { Authorization = "Bearer ${DRIFTD_TEST_SURELY_UNSET_TOKEN}" }
"#,
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("database.pool_size: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("producer[0].schedule: invalid cron expression \"*/5 * *\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "producer[0].snapshot.headers.Authorization: environment variable \"DRIFTD_TEST_SURELY_UNSET_TOKEN\" is not set"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("3 problems"), "{stderr}");
    // check never opens a connection: the database file must not exist.
    assert!(!std::path::Path::new("x.db").exists());
}

/// `driftd check` on a file with mistakes of four kinds (a type error, an
/// unknown key, a number out of range, a URL that is not one) and a secret of
/// the wrong type reports the five, each with its line, column and a caret
/// under the value, then exits 64 having opened nothing; the values that may
/// be secret are masked on the printed lines.
#[test]
fn check_reports_every_kind_of_mistake_with_its_line_and_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let path = dir.path().join("driftd.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "localhost:7070"

[database]
url = "sqlite://{}"

[[producer]]
name = "orders"
shedule = "0 */5 * * * *"
schedule = "0 */5 * * * *"
bucket_bits = "16"
max_drift_ratio = 0.5
unhealthy_after = 0

[producer.snapshot]
url = "htp//vendor.example/orders"
headers = {{ Authorization = "Bearer sk_live_cli1" }}

[producer.webhook]
scheme = "github"
secret = 42
"#,
            db.display()
        ),
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", file]);
    assert_eq!(code, 64, "stdout: {stdout}\nstderr: {stderr}");
    let want = format!(
        "error: producer[0].shedule: unknown key `shedule`, did you mean `schedule`?
  --> {file}:9:1
   |
 9 | shedule = \"***\"
   | ^^^^^^^

error: producer[0].bucket_bits: expected an integer, found a string \"16\"
  --> {file}:11:15
   |
11 | bucket_bits = \"16\"
   |               ^^^^

error: producer[0].unhealthy_after: must be at least 1, not 0
  --> {file}:13:19
   |
13 | unhealthy_after = 0
   |                   ^

error: producer[0].snapshot.url: invalid URL \"htp//vendor.example/orders\": relative URL without a base
  --> {file}:16:7
   |
16 | url = \"htp//vendor.example/orders\"
   |       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^

error: producer[0].webhook.secret: expected a string, found an integer
  --> {file}:21:10
   |
21 | secret = ***
   |          ^^^

error: {file}: 5 problems
"
    );
    assert_eq!(stderr, want);
    assert!(!stderr.contains("sk_live_cli1") && !stderr.contains("= 42"));
    assert!(!stderr.contains('\x1b'), "no colour without a terminal");
    assert!(!db.exists(), "check opened the database");
}

/// README's "Configuration" shows a file and what `driftd check` prints for
/// it: the binary, run on that file, prints exactly that.
#[test]
fn the_readme_shows_what_check_prints() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Configuration").expect("the section")..];
    let block = |fence: &str| {
        let start = section.find(fence).expect("the block") + fence.len();
        let len = section[start..].find("```").expect("its end");
        section[start..start + len].to_string()
    };
    let (toml, shown) = (block("```toml\n"), block("exits 64:\n\n```\n"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("driftd.toml"), &toml).unwrap();
    let out = Command::new(driftd_bin())
        .args(["check", "--config", "driftd.toml"])
        .current_dir(dir.path())
        .env_remove("DRIFTD_CONFIG")
        .env_remove("DRIFTD_ADMIN_TOKEN")
        .output()
        .expect("run driftd");
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(String::from_utf8_lossy(&out.stderr), shown);
    for secret in ["hunter2", "k_live_123", "whsec_live_123"] {
        assert!(toml.contains(secret) && !shown.contains(secret), "{secret}");
    }
}

/// A TOML syntax error is one problem, with its place, not a cascade.
#[test]
fn check_reports_a_syntax_error_once_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftd.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:7070\"\n\n[[producer]\nname = \"orders\"\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let (code, _, stderr) = run(&["check", "--config", file]);
    assert_eq!(code, 64, "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 2, "{stderr}");
    assert!(stderr.starts_with("error: invalid TOML: "), "{stderr}");
    assert!(
        stderr.contains(&format!(" --> {file}:4:")) && stderr.contains("4 | [[producer]\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!("error: {file}: 1 problem\n")),
        "{stderr}"
    );
}

crate::limited_test! {
/// `listen` may name a host: `driftd run` resolves it when it binds.
async fn run_listens_on_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("driftd.db");
    let config = |addr: &str| {
        let listen = addr.replace("127.0.0.1", "localhost");
        format!(
            "[server]\nlisten = \"{listen}\"\n[database]\nurl = \"sqlite://{}\"\n",
            db.display()
        )
    };
    let mut daemon = crate::support::DaemonProcess::spawn(dir.path(), "driftd", config, |_| {});
    daemon.ready().await;
    let config = std::fs::read_to_string(dir.path().join("driftd.toml")).unwrap();
    assert!(config.contains("listen = \"localhost:"), "{config}");
}
}

crate::limited_test! {
async fn verify_fails_naming_the_altered_row() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let hasher = driftd::canonical::RecordHasher::default();
    let writes: Vec<_> = (0..4)
        .map(|i| driftd::entity::EntityWrite {
            key: format!("k{i}"),
            change: driftd::entity::Change::Replace(serde_json::json!({"i": i})),
            version: None,
            source: driftd::entity::Source::Webhook,
            rule: driftd::entity::WriteRule::IfNewer,
        })
        .collect();
    store
        .write_entities("orders", 16, &hasher, &writes)
        .await
        .unwrap();
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
    let cfg = config.to_str().unwrap();

    let (code, stdout, stderr) = run(&["verify", "--config", cfg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("4 rows verified"), "{stdout}");

    let store = db.store().await;
    driftd::store::sql::query("UPDATE changes SET source = 'forged' WHERE seq = 2")
        .execute(store.pool())
        .await
        .unwrap();
    let id: i64 = driftd::store::sql::query_scalar("SELECT id FROM changes WHERE seq = 2")
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.close().await;

    let (code, _, stderr) = run(&["verify", "--config", cfg]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "broken at row id {id} (producer \"orders\", seq 2)"
        )),
        "{stderr}"
    );
}
}

pub(crate) async fn run_async(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(driftd_bin())
        .args(args)
        .env_remove("DRIFTD_CONFIG")
        .output()
        .await
        .expect("run driftd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

crate::limited_test! {
async fn keyframe_guard_approve_and_status_through_the_binary() {
    let (vendor, addr) = crate::support::Vendor::start(120).await;
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{}\n",
            db.url,
            crate::support::snapshot_toml("none", addr)
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (code, _, stderr) = run_async(&["migrate", "--config", cfg]).await;
    assert_eq!(code, 0, "{stderr}");

    // A dry run compares and records nothing.
    let (code, stdout, stderr) =
        run_async(&["keyframe", "--config", cfg, "orders", "--dry-run", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let dry: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (dry["run_id"].clone(), dry["missing"].as_u64()),
        (serde_json::Value::Null, Some(120))
    );

    // The first keyframe fills the empty table: a first sync loads the
    // records into the mirror instead of emitting one apply item each.
    let (code, stdout, stderr) =
        run_async(&["keyframe", "--config", cfg, "orders", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for field in [
        "run_id",
        "state",
        "records",
        "buckets_compared",
        "buckets_mismatched",
        "missing",
        "extra",
        "changed",
        "loaded",
        "duration_ms",
    ] {
        assert!(s.get(field).is_some(), "summary lacks {field}: {s}");
    }
    assert_eq!(
        (
            s["state"].as_str(),
            s["records"].as_u64(),
            s["missing"].as_u64(),
            s["loaded"].as_u64()
        ),
        (Some("ok"), Some(120), Some(120), Some(120))
    );
    let (code, stdout, _) = run_async(&[
        "work", "list", "--config", cfg, "--state", "pending", "--limit", "1000", "--json",
    ])
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout)
            .unwrap()
            .len(),
        0,
        "a first sync emits no work"
    );

    // Carry the work out in process, then the producer suddenly returns nothing.
    let store = db.store().await;
    let p = crate::keyframe::producer(&crate::support::snapshot_toml("none", addr), "");
    crate::keyframe::drain_work(&store, &p).await;
    store.close().await;
    *vendor.fault.lock().unwrap() = crate::support::Fault::Empty;
    let (code, stdout, _) = run_async(&["keyframe", "--config", cfg, "orders"]).await;
    assert_eq!(code, 3, "a guarded run exits 3: {stdout}");
    assert!(
        stdout.contains("guarded") && stdout.contains("driftd approve"),
        "{stdout}"
    );
    let run_id: i64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("run id in {stdout}"));

    let (code, stdout, _) = run_async(&["status", "--config", cfg, "--json"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let orders = &status["producers"][0];
    assert_eq!(orders["entities"], 120);
    assert_eq!(orders["runs"][0]["state"], "guarded");
    assert_eq!(orders["runs"][0]["extra"], 120);
    assert_eq!(orders["guarded_run"], run_id, "{orders}");
    let (code, stdout, _) = run_async(&["status", "--config", cfg]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("GUARDED: run {run_id} "))
            && stdout.contains(&format!("driftd approve {run_id}")),
        "{stdout}"
    );

    let (code, stdout, stderr) =
        run_async(&["approve", "--config", cfg, &run_id.to_string()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("120 work items emitted"), "{stdout}");
    // Each item's spec is printed as the JSON document it is.
    let (code, stdout, _) = run_async(&[
        "work", "list", "--config", cfg, "--state", "pending", "--limit", "5", "--json",
    ])
    .await;
    assert_eq!(code, 0);
    let items: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(items.len(), 5, "{stdout}");
    for item in &items {
        assert_eq!(item["spec"]["kind"], "extra", "{item}");
        assert_eq!(item["spec"]["cause"], "deleted_upstream", "{item}");
        assert_eq!(item["spec"]["key"], item["key"], "{item}");
    }
    let (_, stdout, _) = run_async(&["status", "--config", cfg, "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        status["producers"][0]["guarded_run"],
        serde_json::Value::Null
    );
    let (code, _, stderr) = run_async(&["approve", "--config", cfg, &run_id.to_string()]).await;
    assert_ne!(code, 0);
    assert_eq!(
        stderr,
        format!("error: keyframe run {run_id} is already approved\n"),
        "{stderr}"
    );
    let (code, _, stderr) = run_async(&["keyframe", "--config", cfg, "nope"]).await;
    assert_eq!(code, 64);
    assert!(stderr.contains("unknown producer \"nope\""), "{stderr}");
}
}

crate::limited_test! {
async fn check_probe_points_at_the_wrong_pointers() {
    let (_vendor, addr) = crate::support::Vendor::start(600).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, snapshot: String| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[database]\nurl = \"sqlite://{}/never.db\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 * * * *\"\n[producer.snapshot]\n{snapshot}\n", dir.path().display()),
        )
        .unwrap();
        path
    };
    let good = write(
        "good.toml",
        format!(
            "{}\nversion = \"/rev\"",
            crate::support::snapshot_toml("cursor", addr)
        ),
    );
    let (code, stdout, stderr) =
        run_async(&["check", "--probe", "--config", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok: producer[0].snapshot.items: pointer \"/data\" finds 250 records"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: producer[0].snapshot.key: pointer \"/id\" finds key \"ord-00000\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: producer[0].snapshot.pagination.cursor"),
        "{stdout}"
    );

    let bad_items = write(
        "bad-items.toml",
        format!("url = \"http://{addr}/cursor\"\nitems = \"/results\"\npagination = {{ style = \"cursor\", cursor = \"/meta/next_cursor\" }}"),
    );
    let (code, stdout, _) =
        run_async(&["check", "--probe", "--config", bad_items.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{stdout}");
    assert!(
        stdout.contains("problem: producer[0].snapshot.items: pointer \"/results\" finds nothing, not an array; arrays on the page: /data"),
        "{stdout}"
    );
    let bad_key = write(
        "bad-key.toml",
        format!("url = \"http://{addr}/none\"\nitems = \"/data\"\nkey = \"/order_id\"\nversion = \"/status\""),
    );
    let (code, stdout, _) =
        run_async(&["check", "--probe", "--config", bad_key.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{stdout}");
    assert!(stdout.contains("problem: producer[0].snapshot.key: pointer \"/order_id\" finds nothing in the first record; its members: /amount, /id,"), "{stdout}");
    assert!(
        stdout.contains("problem: producer[0].snapshot.version"),
        "{stdout}"
    );
    let unreachable = write("down.toml", "url = \"http://127.0.0.1:9/orders\"".into());
    let (code, stdout, _) = run_async(&[
        "check",
        "--probe",
        "--config",
        unreachable.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 64);
    assert!(
        stdout.contains("problem: producer[0].snapshot.url: GET http://127.0.0.1:9/orders failed"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("never.db").exists(),
        "the probe opens no database"
    );
}
}

/// Only `run` and `migrate` create or migrate a database: every other command
/// fails clearly on a missing or unmigrated one and leaves nothing behind.
async fn read_only_commands_never_create_a_database(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    let cfg = config.to_str().unwrap();
    let commands: &[&[&str]] = &[
        &["status", "--config", cfg],
        &["verify", "--config", cfg],
        &["work", "list", "--config", cfg],
        &["replay", "--config", cfg],
        &["approve", "--config", cfg, "1"],
    ];
    let url = if db.url.starts_with("sqlite:") {
        // A mistyped path: the file must not appear.
        let missing = dir.path().join("mistyped.db");
        format!("sqlite://{}", missing.display())
    } else {
        // An existing PostgreSQL database that nothing migrated.
        db.url.clone()
    };
    std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n")).unwrap();
    for args in commands {
        let (code, stdout, stderr) = run_async(args).await;
        assert_ne!(code, 0, "{args:?} must fail: {stdout}{stderr}");
        assert!(
            stderr.contains("run `driftd migrate`"),
            "{args:?} says what to do: {stderr}"
        );
        assert!(
            stderr.contains("does not exist") || stderr.contains("has no driftd tables"),
            "{args:?} says what is wrong: {stderr}"
        );
        assert_eq!(stderr.matches("error").count(), 1, "printed once: {stderr}");
    }
    if db.url.starts_with("sqlite:") {
        assert!(!dir.path().join("mistyped.db").exists(), "no file created");
    } else {
        let store = driftd::store::Store::connect(&db.url, 2).await.unwrap();
        let tables: i64 = driftd::store::sql::query_scalar(
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        store.close().await;
        assert_eq!(tables, 0, "nothing migrated");
    }
    // `migrate` creates and migrates; then `status` and `verify` work.
    let (code, stdout, stderr) = run_async(&["migrate", "--config", cfg]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = run_async(&["verify", "--config", cfg]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("intact: 0 rows"), "{stdout}");
    let (code, stdout, stderr) = run_async(&["status", "--config", cfg]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
}

crate::on_both_backends!(read_only_commands_never_create_a_database);

/// A loopback port nothing listens on: bound, then closed, so connecting is refused.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

crate::limited_test! {
async fn an_unreachable_database_is_named_and_refused_without_its_password() {
    let port = refused_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"postgres://u:secret@127.0.0.1:{port}/db\"\n"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    for args in [
        &["status", "--config", cfg][..],
        &["migrate", "--config", cfg],
        &["work", "list", "--config", cfg],
    ] {
        let (code, stdout, stderr) = run_async(args).await;
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot connect to the postgres database at 127.0.0.1:{port}: connection refused"
            )),
            "{args:?}: {stderr}"
        );
        // The pool's own words would mean the cause was hidden behind its 10 s wait.
        assert!(!stderr.contains("pool timed out"), "{args:?}: {stderr}");
        assert!(!stderr.contains("secret") && !stdout.contains("secret"), "{args:?}: {stderr}");
    }
    // A SQLite file that cannot be opened is named too.
    let path = dir.path().join("no-such-dir").join("driftd.db");
    std::fs::write(&config, format!("[database]\nurl = \"sqlite://{}\"\n", path.display())).unwrap();
    let (code, _, stderr) = run_async(&["migrate", "--config", cfg]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        format!("error: cannot connect to the sqlite database at {:?}: unable to open database file\n", path.display().to_string()),
    );
}
}

/// `driftd migrate` on PostgreSQL with `RUST_LOG` as given (unset if `None`): (exit code, stdout, stderr).
async fn migrate_with_log(cfg: &str, rust_log: Option<&str>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(driftd_bin());
    cmd.args(["migrate", "--config", cfg])
        .env_remove("DRIFTD_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let out = cmd.output().await.expect("run driftd migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

crate::limited_test! {
async fn migrate_twice_on_postgres_prints_no_notice() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
    let cfg = config.to_str().unwrap();
    // The first creates the tables; the later ones find them, which is
    // what makes PostgreSQL send `relation ... already exists, skipping`.
    for rust_log in [None, None, Some("info"), Some("debug")] {
        let (ok, stdout, stderr) = migrate_with_log(cfg, rust_log).await;
        assert!(ok, "{stdout}{stderr}");
        assert_eq!(stdout, "migrations applied (postgres)\n", "RUST_LOG={rust_log:?}");
        for text in [&stdout, &stderr] {
            assert!(
                !text.contains("already exists, skipping") && !text.contains("postgres::notice"),
                "RUST_LOG={rust_log:?}: a PostgreSQL notice reached the user:\n{text}"
            );
        }
    }
    // Asked for by name, the notices are there: the check above can see them.
    let (ok, _, stderr) =
        migrate_with_log(cfg, Some("info,sqlx::postgres::notice=info")).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("already exists, skipping"), "{stderr}");
}
}

crate::limited_test! {
async fn piped_output_carries_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"postgres://u:secret@127.0.0.1:{}/db\"\n", refused_port()),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    for args in [
        &["--help"][..],
        &["status", "--help"],
        &["status", "--no-such-flag"],
        &["status", "--config", cfg],
        &["--log-format", "text", "run", "--config", cfg],
        &["--log-format", "json", "run", "--config", cfg],
    ] {
        let mut cmd = tokio::process::Command::new(driftd_bin());
        let out = cmd
            .args(args)
            .env_remove("DRIFTD_CONFIG")
            .env_remove("NO_COLOR")
            .env_remove("DRIFTD_LOG_FORMAT")
            .env("RUST_LOG", "info")
            .output()
            .await
            .expect("run driftd");
        let all = [out.stdout, out.stderr].concat();
        let text = String::from_utf8_lossy(&all);
        assert!(!text.trim().is_empty(), "{args:?} printed something");
        assert!(!text.contains('\u{1b}'), "{args:?} printed a colour code into a pipe:\n{text:?}");
    }
}
}

/// Where `word` starts in `line` (a column's left edge), and where it ends (a right-aligned column's edge).
fn span_of(line: &str, word: &str) -> (usize, usize) {
    let start = line
        .find(word)
        .unwrap_or_else(|| panic!("{word:?} not in {line:?}"));
    (start, start + word.len())
}

crate::limited_test! {
async fn status_lines_up_producers_of_different_name_lengths() {
    let (_short, short_addr) = crate::support::Vendor::start(7).await;
    let (_long, long_addr) = crate::support::Vendor::start(1200).await;
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n\
             [[producer]]\nname = \"a\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{}\n\
             [[producer]]\nname = \"shipments-eu\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{}\n",
            db.url,
            crate::support::snapshot_toml("none", short_addr),
            crate::support::snapshot_toml("none", long_addr),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (code, _, stderr) = run_async(&["migrate", "--config", cfg]).await;
    assert_eq!(code, 0, "{stderr}");
    for producer in ["a", "shipments-eu"] {
        // JSON logs: the first sync's run id is a number, not `Some(..)`.
        let (code, stdout, stderr) = run_async(&[
            "--log-format", "json", "keyframe", "--config", cfg, producer, "--json",
        ])
        .await;
        assert_eq!(code, 0, "{stderr}");
        let run_id = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["run_id"].clone();
        let first_sync: Vec<serde_json::Value> = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "first sync: records loaded into the mirror")
            .collect();
        assert_eq!(first_sync.len(), 1, "{stderr}");
        assert_eq!(first_sync[0]["fields"]["run_id"], run_id, "{stderr}");
        assert!(run_id.is_u64(), "{stdout}");
        assert!(!stderr.contains("Some(") && !stderr.contains("None"), "{stderr}");
    }

    let (code, stdout, stderr) = run_async(&["status", "--config", cfg]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines[0];
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
    };
    let (short, long) = (row("a"), row("shipments-eu"));
    // Text columns start under their heading, numbers end under theirs.
    let health = span_of(header, "health").0;
    let entities = span_of(header, "entities").1;
    let open = span_of(header, "open drift").1;
    for (line, count) in [(short, "7"), (long, "1200")] {
        assert_eq!(&line[health..health + "healthy".len()], "healthy", "{stdout}");
        assert_eq!(&line[entities - count.len()..entities], count, "{stdout}");
        assert_eq!(line.as_bytes()[entities - count.len() - 1], b' ', "{stdout}");
        assert_eq!(&line[open - 1..open], "0", "{stdout}");
    }
    // Each producer's runs, in columns of their own.
    let runs_header: Vec<&&str> = lines.iter().filter(|l| l.trim_start().starts_with("run  state")).collect();
    assert_eq!(runs_header.len(), 2, "{stdout}");
    let records = span_of(runs_header[1], "records").1;
    let long_run = lines
        .iter()
        .skip_while(|l| !l.starts_with("shipments-eu:"))
        .find(|l| l.contains(" ok "))
        .unwrap_or_else(|| panic!("a run line of shipments-eu:\n{stdout}"));
    assert_eq!(&long_run[records - 4..records], "1200", "{stdout}");
    assert!(!stdout.contains("null") && !stdout.contains("Some("), "{stdout}");
}
}

crate::limited_test! {
async fn approving_or_steering_in_the_wrong_state_says_why_in_words() {
    let (_vendor, addr) = crate::support::Vendor::start(3).await;
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{}\n[producer.work]\naction = \"none\"\n",
            db.url,
            crate::support::snapshot_toml("none", addr)
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    assert_eq!(run_async(&["migrate", "--config", cfg]).await.0, 0);
    let (code, stdout, stderr) = run_async(&["keyframe", "--config", cfg, "orders", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let run: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(run["work_emitted"], 3, "{run}");
    let run_id = run["run_id"].to_string();
    let (_, stdout, _) = run_async(&["work", "list", "--config", cfg, "--json"]).await;
    let ids: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&stdout)
        .unwrap()
        .iter()
        .map(|w| w["id"].to_string())
        .collect();
    let [a, b, c] = &ids[..] else { panic!("three items: {stdout}") };

    // (command, exit code, what it prints on stdout or stderr)
    let steps: Vec<(Vec<&str>, i32, String)> = vec![
        (vec!["approve", &run_id], 1, format!("error: keyframe run {run_id} finished ok and was never guarded: nothing to approve\n")),
        (vec!["work", "done", a], 0, format!("work item {a} done: ")),
        (vec!["work", "done", a], 1, format!("error: work item {a} is already done\n")),
        (vec!["work", "retry", a], 1, format!("error: work item {a} is done: only dead or pending items can be retried\n")),
        (vec!["work", "cancel", a], 1, format!("error: work item {a} is done: only pending or running items can be cancelled\n")),
        (vec!["work", "cancel", b], 0, format!("work item {b} cancelled\n")),
        (vec!["work", "done", b], 1, format!("error: work item {b} was cancelled: only pending, running or dead items can be marked done\n")),
        (vec!["work", "retry", b], 1, format!("error: work item {b} was cancelled: only dead or pending items can be retried\n")),
        (vec!["work", "cancel", b], 1, format!("error: work item {b} is already cancelled\n")),
        (vec!["work", "retry", c], 0, format!("work item {c} is pending again\n")),
        (vec!["work", "retry", "999999"], 1, "error: work item 999999 does not exist\n".to_string()),
    ];
    for (args, expected_code, expected) in steps {
        // `approve --config F ID`, `work SUB --config F ID`
        let (command, id) = args.split_at(args.len() - 1);
        let full = [command, &["--config", cfg], id].concat();
        let (code, stdout, stderr) = run_async(&full).await;
        assert_eq!(code, expected_code, "{args:?}: {stdout}{stderr}");
        let shown = if code == 0 { &stdout } else { &stderr };
        assert!(shown.starts_with(&expected), "{args:?}: {shown:?}, expected {expected:?}");
        assert!(!stderr.contains("transition"), "{args:?}: {stderr}");
    }
}
}

crate::limited_test! {
async fn refresh_prints_each_key_in_columns() {
    use axum::extract::Path;
    use axum::http::StatusCode;
    let shop = crate::support::serve_loopback(axum::Router::new().route(
        "/orders/{key}",
        axum::routing::get(|Path(key): Path<String>| async move {
            if key == "k-1" {
                Ok(axum::Json(serde_json::json!({"order": {"id": key, "status": "paid"}})))
            } else {
                Err(StatusCode::NOT_FOUND)
            }
        }),
    ))
    .await;
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n\
             [producer.snapshot]\nurl = \"http://{shop}/orders\"\nitems = \"/data\"\n\
             [producer.fetch]\nurl = \"http://{shop}/orders/{{key}}\"\nitem = \"/order\"\n",
            db.url
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    assert_eq!(run_async(&["migrate", "--config", cfg]).await.0, 0);
    let long = "a-much-longer-key-than-the-other-one";
    let (code, stdout, stderr) = run_async(&["refresh", "--config", cfg, "orders", "k-1", long]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let outcome = span_of(lines[0], "outcome").0;
    let error = span_of(lines[0], "error").0;
    let row = |key: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no row for {key}:\n{stdout}"))
    };
    assert_eq!(&row("k-1")[outcome..], "applied    -", "{stdout}");
    assert_eq!(&row(long)[outcome..], "not_found  -", "{stdout}");
    assert_eq!(&row(long)[error..], "-", "{stdout}");

    let (code, stdout, _) = run_async(&["refresh", "--config", cfg, "orders", "k-1", "--json"]).await;
    assert_eq!(code, 0);
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["outcome"], "unchanged", "{stdout}");
}
}

crate::limited_test! {
/// A statement that takes over a second (here, waiting on a lock the test
/// holds) is not logged with its SQL unless `RUST_LOG` asks for sqlx's lines.
async fn a_slow_statement_is_not_logged_unless_asked() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    db.store().await.close().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
    let cfg = config.to_str().unwrap();
    for (rust_log, shown) in [(None, false), (Some("info,sqlx::query=warn"), true)] {
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let watcher = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect(&db.url)
            .await
            .unwrap();
        let mut tx = holder.begin().await.unwrap();
        sqlx::query("LOCK TABLE work IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut cmd = tokio::process::Command::new(driftd_bin());
        cmd.args(["work", "list", "--config", cfg])
            .env_remove("DRIFTD_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd.spawn().unwrap();
        crate::support::eventually("driftd waiting on the lock", || {
            let conn = watcher.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&conn)
                .await
                .unwrap();
                (waiting > 0).then_some(())
            }
        })
        .await;
        // Held past sqlx's one-second threshold for a slow statement.
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        tx.commit().await.unwrap();
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            stderr.contains("slow statement") && stderr.contains("FROM work"),
            shown,
            "RUST_LOG={rust_log:?}:\n{stderr}"
        );
        holder.close().await.unwrap();
        watcher.close().await;
    }
}
}
