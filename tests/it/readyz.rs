//! `/readyz` follows the database: a child `driftd run` on a throwaway PostgreSQL cluster answers 503 while the cluster is down and 200 again once it is back, without a restart.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::DaemonProcess;

/// How long a request waits for `/readyz` to answer at all: the handler
/// bounds its own checks (3 s), so a request still unanswered after twice
/// that has hung, which is what these tests exist to catch.
const ANSWER_WITHIN: Duration = Duration::from_secs(12);

/// Directory holding `initdb`, `pg_ctl` and `postgres` (the newest installed major version).
fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql are required")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| bin.join(b).is_file())
        })
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("no /usr/lib/postgresql/*/bin with initdb, pg_ctl and postgres")
}

/// A PostgreSQL cluster of its own in a temp dir, on 127.0.0.1 and a free port;
/// stopped (immediately) on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// PostgreSQL refuses to run as root: then every command runs as `postgres`.
    as_postgres: bool,
}

impl Cluster {
    fn init() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = dir.path().metadata().unwrap().uid() == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "chown of the cluster dir to postgres failed"
            );
        }
        let cluster = Self {
            bin,
            dir,
            port: crate::support::free_port(),
            as_postgres,
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    /// Runs a PostgreSQL program to completion; panics with its output on failure.
    fn pg(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn start(&self) {
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let data = self.data();
        let log = self.dir.path().join("server.log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn stop(&self, mode: &str) {
        let data = self.data();
        self.pg(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let data = self.data();
            let _ = self
                .command("pg_ctl")
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A child `driftd run` on `db_url` without producers.
fn start(dir: &Path, db_url: &str) -> DaemonProcess {
    let config = |listen: &str| {
        format!("[server]\nlisten = \"{listen}\"\n[database]\nurl = \"{db_url}\"\nmax_connections = 4\n")
    };
    DaemonProcess::spawn(dir, "driftd", config, |_| {})
}

/// One `GET /readyz`: `None` when nothing answers yet (daemon still starting).
/// Panics when nothing answers within [`ANSWER_WITHIN`] (the handler hung).
async fn readyz(client: &reqwest::Client, d: &DaemonProcess) -> Option<(u16, String)> {
    let asked = Instant::now();
    let r = client
        .get(format!("http://{}/readyz", d.addr))
        .timeout(ANSWER_WITHIN)
        .send()
        .await;
    let took = asked.elapsed();
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            Some((status, r.text().await.unwrap_or_default()))
        }
        Err(e) if e.is_connect() => None,
        Err(e) => panic!(
            "/readyz did not answer after {took:?}: {e}\ndaemon log:\n{}",
            d.log()
        ),
    }
}

/// Polls `/readyz` until `done` holds for its answer; returns that answer.
async fn poll_readyz(
    client: &reqwest::Client,
    d: &mut DaemonProcess,
    what: &str,
    within: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        d.assert_running(what);
        if let Some((status, body)) = readyz(client, d).await {
            if done(status, &body) {
                return (status, body);
            }
            last = Some((status, body));
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last answer {last:?}\ndaemon log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

crate::limited_test! {
async fn readyz_follows_the_database_down_and_back_up() {
    let cluster = Cluster::init();
    cluster.start();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(dir.path(), &cluster.url());
    let client = reqwest::Client::new();

    let (_, body) = poll_readyz(
        &client,
        &mut daemon,
        "/readyz 200 after start",
        Duration::from_secs(60),
        |s, _| s == 200,
    )
    .await;
    assert_eq!(body, "ready\n");

    cluster.stop("fast");
    let (_, body) = poll_readyz(
        &client,
        &mut daemon,
        "/readyz 503 with the database down",
        Duration::from_secs(20),
        |s, _| s == 503,
    )
    .await;
    // The reason, not the handler's 3 s timeout: readiness gives up on the
    // pool (which retries a refused connection for 10 s) and asks directly.
    assert!(
        body.starts_with("not ready: database unreachable: "),
        "503 body should name the database and why: {body:?}"
    );
    assert!(
        !body.contains(&cluster.url()) && !body.contains(&format!(":{}", cluster.port)),
        "503 body leaks the database address: {body:?}"
    );
    // It stays 503 (each answer still within the bound) while the cluster is down.
    for _ in 0..3 {
        let (status, body) = readyz(&client, &daemon).await.expect("daemon answers");
        assert_eq!(status, 503, "{body}");
        assert!(
            body.starts_with("not ready: database unreachable: "),
            "{body}"
        );
    }

    cluster.start();
    let (_, body) = poll_readyz(
        &client,
        &mut daemon,
        "/readyz 200 again once the database is back",
        Duration::from_secs(30),
        |s, _| s == 200,
    )
    .await;
    assert_eq!(body, "ready\n");
    assert!(
        daemon.exited().is_none(),
        "driftd was not restarted"
    );
}
}
