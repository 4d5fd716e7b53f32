//! The store: one interface over SQLite and PostgreSQL. Only this module contains SQL.
//!
//! Each backend runs on its own sqlx driver (`SqlitePool`, `PgPool`) through
//! [`sql`], which binds times, documents and arrays as each backend's own
//! types. Most statements are one SQL text for both (`$1` placeholders work
//! on both); where the dialects differ, the operation spells both side by
//! side in a `match` on [`Backend`]. Migrations are per backend under
//! `migrations/`: PostgreSQL keeps `timestamptz`, `jsonb` and `boolean`,
//! SQLite `INTEGER` and `TEXT`.
//!
//! SQLite is the embedded, single-replica default: its pool holds one
//! connection, so writes are serialized in the process and no code path may
//! hold a connection while acquiring another.
//!
//! **Transactions and cancellation.** Every transaction starts through
//! [`Store::begin_write`], which runs the `BEGIN` in a task of its own: sqlx
//! 0.8 leaves a connection inside a transaction it no longer tracks when the
//! future opening it is dropped at the wrong moment (SQLite: after the worker
//! ran `BEGIN` but before the `Transaction` exists; PostgreSQL: after `BEGIN`
//! was sent but before the depth was counted), and that connection would go
//! back to the pool still in the transaction. Once a `Transaction` exists,
//! dropping it queues a rollback that runs before the connection is reused.
//! As a last line, the pool never hands out a connection that is still inside
//! a transaction (`before_acquire` closes it instead).
//!
//! **Shutdown.** Pools run no maintenance task (no idle timeout, no maximum
//! lifetime, no minimum size): sqlx's maintenance task can spin at 100% CPU
//! when the runtime is dropped, and nothing here needs it. Every owner closes
//! its store ([`Store::close`]) on every exit path.

mod catchups;
mod entities;
mod feed;
mod fetches;
mod inbox;
mod pacing;
mod runs;
mod seal;
pub mod sql;
mod work;

use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tracing::warn;

use sql::{query, query_scalar};
pub use sql::{Pool, Tx};

pub use catchups::CatchupState;
pub use entities::{ChainBreak, Entity, Relayout};
pub use feed::FeedChange;
pub use fetches::{FetchClaim, FetchResult, FetchRow, FetchSettled};
pub use inbox::{Channel, InboxEffect, InboxEntry, InboxFilter, InboxOutcome, InboxRow, Settled};
pub(crate) use inbox::{LockOrder, SettleMode};
pub use pacing::Pacing;
pub use runs::{DriftRow, Pruned, RunCounts, RunRow};
pub use work::{Emitted, NewWork, WorkRow};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Rows per statement of a batch. SQLite binds every value, and finding
    /// a numbered parameter's name walks the statement's list of them, so
    /// binding costs the square of the values per statement (500 rows of 7
    /// values spent half a first sync there): 64 rows keep that under 1%
    /// for little more per statement. PostgreSQL binds one array per column,
    /// so a batch is one statement with one text whatever its size.
    pub(crate) fn batch(self) -> usize {
        match self {
            Self::Sqlite => 64,
            Self::Postgres => 10_000,
        }
    }

    /// A membership test for `n` values bound from `$first` on:
    /// `IN ($2, $3, …)` on SQLite, `= ANY($2)` (one array) on PostgreSQL.
    /// Bind the values with [`Backend::bind_any`].
    pub(crate) fn any(self, first: usize, n: usize) -> String {
        match self {
            Self::Sqlite => format!("IN ({})", placeholders(n, first, "?")),
            Self::Postgres => format!("= ANY(${first})"),
        }
    }

    /// Binds the values of an [`Backend::any`] test.
    pub(crate) fn bind_any<'q, T>(self, q: sql::Query<'q>, values: Vec<T>) -> sql::Query<'q>
    where
        T: Into<sql::Arg<'q>>,
        sql::Arr<T>: Into<sql::Arg<'q>>,
    {
        match self {
            Self::Sqlite => values.into_iter().fold(q, |q, v| q.bind(v)),
            Self::Postgres => q.bind(sql::Arr(values)),
        }
    }

    /// Row-lock suffix for a `SELECT` inside a write transaction. SQLite needs
    /// none: a write transaction already excludes every other writer.
    fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }
}

/// Errors from the store. Messages name the operation; they never carry the
/// database URL or any document content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot connect to the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        source: sqlx::Error,
    },
    /// The server did not take a connection; `at` is its host and port only.
    #[error("cannot connect to the {backend} database at {at}: {reason}")]
    Unreachable {
        backend: &'static str,
        at: String,
        reason: String,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while trying to {op}: {source}")]
    Db {
        op: &'static str,
        source: sqlx::Error,
    },
    /// A database that is missing or behind, with what to run about it.
    #[error("{0}")]
    NotCreated(String),
    #[error("{0}")]
    Invalid(String),
    #[error("work item {id} not retried: entity {producer}/{key} already has open item {open}; cancel it first or let it finish")]
    EntityHasOpenWork {
        id: i64,
        producer: String,
        key: String,
        open: String,
    },
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

impl StoreError {
    /// Whether retrying later may succeed (connection trouble, pool exhaustion).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Unreachable { .. } => true,
            Self::Db { source, .. } => matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }
}

/// Wraps an sqlx error with the operation that failed.
pub(crate) fn db(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError + Copy {
    move |source| StoreError::Db { op, source }
}

/// Anonymous placeholders for a multi-row statement on SQLite: `rows`
/// copies of `template` (all `?`, bound in the order they appear), joined by
/// `, `. SQLite finds an anonymous parameter at once, while finding a
/// numbered one walks the statement's list of names, which makes binding
/// the square of the values; so the hottest statements (entity, digest and
/// log writes) repeat the producer in every row rather than bind `$1` once.
pub(crate) fn anonymous_rows(rows: usize, template: &str) -> String {
    vec![template; rows].join(", ")
}

/// Numbered placeholders for a multi-row statement: `rows` copies of
/// `template`, each `?` in it replaced by the next placeholder from `$first`
/// on (fixed ones such as `$1` stay as written), joined by `, `.
/// `placeholders(2, 3, "($1, ?, ?)")` is `($1, $3, $4), ($1, $5, $6)`;
/// `placeholders(3, 2, "?")` is `$2, $3, $4`, for an `IN (...)` list.
/// `('a', 'b')`: states as an SQL list, spelled by their enum so the two cannot disagree.
pub(crate) fn sql_list(states: impl IntoIterator<Item = &'static str>) -> String {
    let quoted: Vec<String> = states.into_iter().map(|s| format!("'{s}'")).collect();
    format!("({})", quoted.join(", "))
}

pub(crate) fn placeholders(rows: usize, first: usize, template: &str) -> String {
    let mut next = first;
    let mut out = String::new();
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        for ch in template.chars() {
            if ch == '?' {
                out.push_str(&format!("${next}"));
                next += 1;
            } else {
                out.push(ch);
            }
        }
    }
    out
}

/// Milliseconds since the Unix epoch, the unit of every time column.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    backend: Backend,
    /// Wake-ups of change-feed consumers, shared by every clone.
    signals: std::sync::Arc<feed::Signals>,
    /// The sealer task's inbox (PostgreSQL), shared by every clone.
    sealer: std::sync::Arc<seal::Sealer>,
    /// Producers whose `layouts` row is known to be committed.
    layouts: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Store {
    /// Connects to `url` (creating a SQLite file if missing). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, max_connections, Create::IfMissing).await
    }

    async fn connect_with(
        url: &str,
        max_connections: u32,
        create: Create,
    ) -> Result<Self, StoreError> {
        let backend = Backend::from_url(url).ok_or_else(|| {
            StoreError::UnsupportedUrl(url.split(':').next().unwrap_or_default().to_string())
        })?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let mode = match create {
                    Create::IfMissing => "rwc",
                    Create::Never => "rw",
                };
                format!("{url}{sep}mode={mode}")
            }
            _ => url.to_string(),
        };
        let connect = |source| StoreError::Connect {
            backend: backend.name(),
            source,
        };
        let pool = match backend {
            Backend::Sqlite => {
                let options: SqliteConnectOptions = url.parse().map_err(connect)?;
                let options = options.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                let path = sqlite_path(&url).to_string();
                Pool::Sqlite(pool_options(1).connect_with(options).await.map_err(|e| {
                    StoreError::Unreachable {
                        backend: backend.name(),
                        at: format!("{path:?}"),
                        reason: connect_failure(&e),
                    }
                })?)
            }
            Backend::Postgres => {
                let options: PgConnectOptions = url.parse().map_err(connect)?;
                // The pool retries a refused connection until its acquire
                // timeout and then reports only that it timed out: one
                // direct connection first says why, at once.
                reach_postgres(&options).await?;
                Pool::Postgres(
                    pool_options(max_connections.max(2))
                        .connect_with(options)
                        .await
                        .map_err(connect)?,
                )
            }
        };
        Ok(Self {
            pool,
            backend,
            signals: feed::Signals::new(),
            sealer: std::sync::Arc::default(),
            layouts: std::sync::Arc::default(),
        })
    }

    /// Connects and applies pending migrations (creating a SQLite file if
    /// missing): for `driftd run` and `driftd migrate`.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to a database that `driftd migrate` (or `driftd run`) already
    /// created and migrated; creates and migrates nothing. Every command other
    /// than those two opens the store this way, so a mistyped path is an
    /// error instead of a new, empty database.
    pub(crate) async fn open_existing(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        require_sqlite_file(url)?;
        let store = Self::connect_with(url, max_connections, Create::Never).await?;
        let applied = match store.applied_migrations().await {
            Ok(n) => n,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let expected = store.expected_migrations();
        if applied < expected {
            store.close().await;
            return Err(StoreError::NotCreated(if applied == 0 {
                "the database has no driftd tables; run `driftd migrate` (or `driftd run`) to \
                 create them"
                    .to_string()
            } else {
                format!(
                    "the database schema is behind: {applied} of {expected} migrations applied; \
                     run `driftd migrate` (or `driftd run`) to apply the rest"
                )
            }));
        }
        Ok(store)
    }

    /// Connects to a database that already exists and applies pending
    /// migrations, as `driftd run` does, but creates no SQLite file: for
    /// `driftd sync`, which a scheduler runs unattended, so a mistyped path
    /// fails instead of filling a new database nobody reads.
    pub(crate) async fn open_and_upgrade(
        url: &str,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        require_sqlite_file(url)?;
        let store = Self::connect_with(url, max_connections, Create::Never).await?;
        if let Err(e) = store.migrate().await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Migrations recorded as applied; 0 when the database has no migration table.
    async fn applied_migrations(&self) -> Result<usize, StoreError> {
        let table = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations'"
            }
        };
        let exists: i64 = query_scalar(table)
            .fetch_one(&self.pool)
            .await
            .map_err(db("look for the migration table"))?;
        if exists == 0 {
            return Ok(0);
        }
        query_scalar(APPLIED_MIGRATIONS)
            .fetch_one(&self.pool)
            .await
            .map(|n: i64| n as usize)
            .map_err(db("read the applied migrations"))
    }

    /// Migrations this build of driftd knows.
    fn expected_migrations(&self) -> usize {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").iter().count(),
            Backend::Postgres => sqlx::migrate!("migrations/postgres").iter().count(),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await?,
            Pool::Postgres(p) => sqlx::migrate!("migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for tests and the benchmark harness.
    #[doc(hidden)]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Opens a write transaction. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`) so a read-then-write transaction never fails to
    /// upgrade. The `BEGIN` runs in a task of its own, so a caller dropped
    /// meanwhile cannot leave the connection inside a transaction nobody
    /// holds: the task finishes, and the `Tx` it made rolls back when dropped.
    pub(crate) async fn begin_write(&self) -> Result<Tx, StoreError> {
        let pool = self.pool.clone();
        let begin = async move {
            match pool {
                Pool::Sqlite(p) => p.begin_with("BEGIN IMMEDIATE").await.map(Tx::sqlite),
                Pool::Postgres(p) => p.begin().await.map(Tx::postgres),
            }
        };
        let begun = match tokio::spawn(begin).await {
            Ok(begun) => begun,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down.
            Err(_) => Err(sqlx::Error::PoolClosed),
        };
        begun.map_err(db("begin a write transaction"))
    }

    /// Whether the database answers, every migration has been applied, and a
    /// write transaction can begin and commit (the path every delta takes).
    ///
    /// While the server refuses connections the pool keeps retrying until its
    /// acquire timeout (10 s), which outlasts `/readyz`'s bound and says
    /// nothing about why. So a pooled connection is awaited for
    /// [`READINESS_ACQUIRE`] only; then one direct connection, as long again,
    /// answers the question (or tells why it cannot) and is closed.
    pub async fn readiness(&self) -> Result<(), String> {
        let unreachable = |e: sqlx::Error| format!("database unreachable: {}", connect_failure(&e));
        let pooled = query_scalar(APPLIED_MIGRATIONS).fetch_one::<i64>(&self.pool);
        let direct = async {
            match &self.pool {
                Pool::Sqlite(p) => {
                    let mut conn = p.connect_options().connect().await?;
                    let applied = sqlx::query_scalar::<_, i64>(APPLIED_MIGRATIONS)
                        .fetch_one(&mut conn)
                        .await;
                    let _ = conn.close().await;
                    applied
                }
                Pool::Postgres(p) => {
                    let mut conn = p.connect_options().connect().await?;
                    let applied = sqlx::query_scalar::<_, i64>(APPLIED_MIGRATIONS)
                        .fetch_one(&mut conn)
                        .await;
                    let _ = conn.close().await;
                    applied
                }
            }
        };
        let applied = match tokio::time::timeout(READINESS_ACQUIRE, pooled).await {
            Ok(applied) => applied,
            Err(_) => tokio::time::timeout(READINESS_ACQUIRE, direct)
                .await
                .map_err(|_| {
                    format!(
                        "database unreachable: no connection within {}s",
                        2 * READINESS_ACQUIRE.as_secs()
                    )
                })?,
        }
        .map_err(unreachable)?;
        let expected = self.expected_migrations();
        if (applied as usize) < expected {
            return Err(format!(
                "database migrations pending: {applied} of {expected} applied"
            ));
        }
        tokio::time::timeout(READINESS_WRITE, self.probe_write())
            .await
            .map_err(|_| {
                format!(
                    "write path unavailable: no write transaction within {:.1}s (is another process holding the database's write lock?)",
                    READINESS_WRITE.as_secs_f32()
                )
            })?
            .map_err(|e| format!("write path unavailable: {e}"))
    }

    /// Begins a write transaction, runs a write that changes nothing, commits.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Refused wherever writing is (a read-only database or session).
        query("UPDATE inbox SET outcome = outcome WHERE 1 = 0")
            .execute(&mut tx)
            .await
            .map_err(db("probe the write path"))?;
        tx.commit().await.map_err(db("commit the write probe"))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The pool settings of both backends: `size` connections, no maintenance
/// task (see "Shutdown" above), and never a connection still inside a
/// transaction (see "Transactions and cancellation").
fn pool_options<DB: sqlx::Database>(size: u32) -> PoolOptions<DB> {
    PoolOptions::new()
        .before_acquire(|conn: &mut DB::Connection, _meta| {
            Box::pin(async move {
                // Unreachable through `begin_write`; a connection left in a
                // transaction would make every later `BEGIN` fail.
                let clean = !conn.is_in_transaction();
                if !clean {
                    warn!(
                        "a pooled database connection was still inside a transaction; closing it"
                    );
                }
                Ok(clean)
            })
        })
        .max_connections(size)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(CONNECT_TIMEOUT)
}

/// Opens and closes one connection to the PostgreSQL server of `options`;
/// an error names the server (host and port, never the credentials) and
/// the reason: refused, no answer, authentication, a missing database.
async fn reach_postgres(options: &PgConnectOptions) -> Result<(), StoreError> {
    let host = options.get_host();
    let at = if host.starts_with('/') {
        format!("{host} (port {})", options.get_port())
    } else {
        format!("{host}:{}", options.get_port())
    };
    let unreachable = |reason: String| StoreError::Unreachable {
        backend: Backend::Postgres.name(),
        at: at.clone(),
        reason,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Err(_) => Err(unreachable(format!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(unreachable(connect_failure(&e))),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
    }
}

/// Why a connection failed, in words: the server's own message (a wrong
/// password, a missing database), or what the network said.
fn connect_failure(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            _ => io.to_string(),
        },
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// How long a connection may take: a direct one, or one from the pool.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether connecting may create a missing SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    IfMissing,
    Never,
}

/// Refuses a `sqlite:` URL whose file does not exist (other URLs pass).
fn require_sqlite_file(url: &str) -> Result<(), StoreError> {
    if Backend::from_url(url) == Some(Backend::Sqlite) {
        let path = sqlite_path(url);
        if !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).exists() {
            return Err(StoreError::NotCreated(format!(
                "the SQLite database {path:?} does not exist; run `driftd migrate` (or `driftd \
                 run`) to create it"
            )));
        }
    }
    Ok(())
}

/// The file path of a `sqlite:` URL (`sqlite://PATH?opts`, `sqlite:PATH`).
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}

/// How long [`Store::readiness`] waits for a pooled connection, and then for a direct one.
const READINESS_ACQUIRE: Duration = Duration::from_secs(1);
/// How long [`Store::readiness`] waits for its write transaction to commit.
const READINESS_WRITE: Duration = Duration::from_millis(1500);

const APPLIED_MIGRATIONS: &str = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE";

#[cfg(test)]
mod tests {
    use super::{placeholders, sql_list, sqlite_path};
    use crate::entity::Source;
    use crate::state::{Health, RunState, WorkState};
    use crate::store::InboxOutcome;

    /// The words the store's SQL and the migrations may quote: every state
    /// and outcome of the enums, sources, and the few names that are not states.
    fn quotable() -> Vec<&'static str> {
        let mut words: Vec<&'static str> = WorkState::ALL.iter().map(|s| s.as_str()).collect();
        words.extend(RunState::ALL.iter().map(|s| s.as_str()));
        words.extend(Health::ALL.iter().map(|s| s.as_str()));
        words.extend(InboxOutcome::ALL.iter().map(|s| s.as_str()));
        words.extend(
            [
                Source::Webhook,
                Source::Email,
                Source::Keyframe,
                Source::Replay,
            ]
            .map(Source::as_str),
        );
        words.extend(["table", "_sqlx_migrations", "driftd_work", "inbox", "id"]);
        words
    }

    /// Every `'word'` quoted in `text` (two or more of a-z and `_`).
    fn quoted_words(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find('\'') {
            let after = &rest[i + 1..];
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
            if len >= 2 && after[len..].starts_with('\'') {
                words.push(&after[..len]);
                rest = &after[len + 1..];
            } else {
                rest = after;
            }
        }
        words
    }

    /// The SQL stays plain SQL (partial indexes need the literal, and a reader
    /// sees the statement as the database runs it); this test keeps each
    /// quoted state equal to a state of its enum, so the two cannot disagree.
    #[test]
    fn every_state_the_sql_quotes_is_one_its_enum_knows() {
        let code = |text: &'static str| text.split("#[cfg(test)]").next().unwrap_or(text);
        let sources = [
            ("store/mod.rs", code(include_str!("mod.rs"))),
            ("store/entities.rs", code(include_str!("entities.rs"))),
            ("store/feed.rs", code(include_str!("feed.rs"))),
            ("store/inbox.rs", code(include_str!("inbox.rs"))),
            ("store/runs.rs", code(include_str!("runs.rs"))),
            ("store/work.rs", code(include_str!("work.rs"))),
            (
                "postgres 0001",
                include_str!("../../migrations/postgres/0001_init.sql"),
            ),
            (
                "postgres 0004",
                include_str!("../../migrations/postgres/0004_work_mirrored.sql"),
            ),
            (
                "sqlite 0001",
                include_str!("../../migrations/sqlite/0001_init.sql"),
            ),
            (
                "sqlite 0004",
                include_str!("../../migrations/sqlite/0004_work_mirrored.sql"),
            ),
            (
                "postgres 0005",
                include_str!("../../migrations/postgres/0005_native_types.sql"),
            ),
            (
                "sqlite 0005",
                include_str!("../../migrations/sqlite/0005_native_types.sql"),
            ),
            ("store/sql.rs", code(include_str!("sql.rs"))),
        ];
        let known = quotable();
        let mut seen = 0;
        for (file, text) in sources {
            for word in quoted_words(text) {
                assert!(
                    known.contains(&word),
                    "{file} quotes {word:?}, which no state enum knows"
                );
                seen += 1;
            }
        }
        assert!(seen > 40, "the scan found the SQL's states ({seen})");
        assert_eq!(
            quoted_words("state = 'pending' AND x IN ('a', 'dead')"),
            ["pending", "dead"]
        );
    }

    #[test]
    fn sql_lists_spell_the_states() {
        assert_eq!(
            sql_list(RunState::COMPARED.map(RunState::as_str)),
            "('ok', 'guarded', 'approved')"
        );
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite:///var/lib/d.db"), "/var/lib/d.db");
        assert_eq!(sqlite_path("sqlite://d.db?mode=rw"), "d.db");
        assert_eq!(sqlite_path("sqlite:d.db"), "d.db");
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(
            placeholders(2, 3, "($1, ?, ?)"),
            "($1, $3, $4), ($1, $5, $6)"
        );
        assert_eq!(placeholders(3, 2, "?"), "$2, $3, $4");
        assert_eq!(placeholders(1, 4, "(?, $2, ?)"), "($4, $2, $5)");
        assert_eq!(placeholders(0, 1, "?"), "");
    }
}
