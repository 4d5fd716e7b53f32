//! The store: one interface over SQLite and PostgreSQL. Only this module contains SQL.
//!
//! Both backends go through sqlx's `Any` driver with the same SQL text
//! (`$1` placeholders work on both); where the dialects differ the difference
//! is one small method on [`Backend`] (`FOR UPDATE`, `BEGIN IMMEDIATE`).
//! Migrations are per backend under `migrations/`.
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

mod entities;
mod feed;
mod inbox;
mod runs;
mod work;

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Row, Transaction};
use tracing::warn;

pub use entities::{ChainBreak, Entity, Relayout};
pub use feed::FeedChange;
pub(crate) use inbox::SettleMode;
pub use inbox::{Channel, InboxEffect, InboxEntry, InboxFilter, InboxOutcome, InboxRow, Settled};
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

    /// Row-lock suffix for a `SELECT` inside a write transaction. SQLite needs
    /// none: a write transaction already excludes every other writer.
    fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }

    /// The statement that opens a write transaction. SQLite takes the write
    /// lock up front so a read-then-write transaction never fails to upgrade.
    fn begin_write(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
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
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while trying to {op}: {source}")]
    Db {
        op: &'static str,
        source: sqlx::Error,
    },
    #[error("{0}; run `driftd migrate` (or `driftd run`) to create it")]
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
            Self::Connect { .. } => true,
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
    pool: AnyPool,
    backend: Backend,
    /// Wake-ups of change-feed consumers, shared by every clone.
    signals: std::sync::Arc<feed::Signals>,
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
        sqlx::any::install_default_drivers();
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
        let options: AnyConnectOptions = url.parse().map_err(|source| StoreError::Connect {
            backend: backend.name(),
            source,
        })?;
        let pool_size = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => max_connections.max(2),
        };
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Postgres {
                        // Batches bind hundreds of keys (`key IN ($2, …)`); a cached
                        // generic plan for those misjudges them and scans the table.
                        sqlx::query("SET plan_cache_mode = force_custom_plan")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .before_acquire(|conn, _meta| {
                Box::pin(async move {
                    // Unreachable through `begin_write`; a connection left in a
                    // transaction would make every later `BEGIN` fail.
                    let clean = !conn.is_in_transaction();
                    if !clean {
                        warn!("a pooled database connection was still inside a transaction; closing it");
                    }
                    Ok(clean)
                })
            })
            .max_connections(pool_size)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                backend: backend.name(),
                source,
            })?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(db("enable SQLite WAL mode"))?;
        }
        Ok(Self {
            pool,
            backend,
            signals: feed::Signals::new(),
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
        if Backend::from_url(url) == Some(Backend::Sqlite) {
            let path = sqlite_path(url);
            if !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).exists() {
                return Err(StoreError::NotCreated(format!(
                    "the SQLite database {path:?} does not exist"
                )));
            }
        }
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
                "the database has no driftd tables".to_string()
            } else {
                format!("the database schema is behind: {applied} of {expected} migrations applied")
            }));
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
        let exists: i64 = sqlx::query(table)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("look for the migration table"))?;
        if exists == 0 {
            return Ok(0);
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("read the applied migrations"))?;
        applied_migrations(&mut conn)
            .await
            .map(|n| n as usize)
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
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Opens a write transaction (SQLite: `BEGIN IMMEDIATE`). The `BEGIN` runs
    /// in a task of its own, so a caller dropped meanwhile cannot leave the
    /// connection inside a transaction nobody holds: the task finishes, and
    /// the `Transaction` it made rolls back when dropped.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let pool = self.pool.clone();
        let statement = self.backend.begin_write();
        let begun = match tokio::spawn(async move { pool.begin_with(statement).await }).await {
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
        use sqlx::{ConnectOptions, Connection};
        let unreachable = |e: sqlx::Error| format!("database unreachable: {e}");
        let applied = match tokio::time::timeout(READINESS_ACQUIRE, self.pool.acquire()).await {
            Ok(conn) => {
                let mut conn = conn.map_err(unreachable)?;
                applied_migrations(&mut conn).await
            }
            Err(_) => {
                let options = self.pool.connect_options();
                let mut conn = tokio::time::timeout(READINESS_ACQUIRE, options.connect())
                    .await
                    .map_err(|_| {
                        format!(
                            "database unreachable: no connection within {}s",
                            2 * READINESS_ACQUIRE.as_secs()
                        )
                    })?
                    .map_err(unreachable)?;
                let applied = applied_migrations(&mut conn).await;
                let _ = conn.close().await;
                applied
            }
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
        sqlx::query("UPDATE inbox SET outcome = outcome WHERE 1 = 0")
            .execute(&mut *tx)
            .await
            .map_err(db("probe the write path"))?;
        tx.commit().await.map_err(db("commit the write probe"))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether connecting may create a missing SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    IfMissing,
    Never,
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

async fn applied_migrations(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
        .fetch_one(conn)
        .await
        .and_then(|r| r.try_get(0))
}

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
        words.extend(["table", "_sqlx_migrations", "driftd_work"]);
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
