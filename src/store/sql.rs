//! The store's door to the database: a statement is its SQL text and its arguments, run on SQLite's or PostgreSQL's own driver.
//!
//! The store's Rust side speaks one language on both backends: times are
//! milliseconds since the Unix epoch (`i64`), documents are JSON text, flags
//! are `bool`. The columns speak each backend's own: PostgreSQL keeps
//! `timestamptz`, `jsonb` and `boolean`; SQLite keeps `INTEGER` and `TEXT`.
//! This file converts at the boundary and nowhere else:
//!
//! - an argument says what it is ([`At`] for a time, [`Json`] for a
//!   document) and is encoded as the backend's type for it;
//! - a column is decoded by the type it has: a `timestamptz` read as `i64`
//!   comes back as milliseconds, a `jsonb` read as `String` as its text.
//!
//! Arrays ([`Arr`]) bind as PostgreSQL arrays, for `= ANY($1)` and
//! `UNNEST($1, $2, …)`; SQLite has none, so its statements use numbered
//! placeholders instead (see `placeholders` in `mod.rs`). Every statement is
//! prepared once per connection and cached by its text: batch statements on
//! PostgreSQL have one text whatever the batch size.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Column as _, Postgres, Row as _, Sqlite, Transaction, Type, TypeInfo as _};

/// A connection pool of either backend.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    pub async fn close(&self) {
        match self {
            Self::Sqlite(p) => p.close().await,
            Self::Postgres(p) => p.close().await,
        }
    }
}

/// An open transaction of either backend. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    conn: TxConn,
    /// The advisory locks it holds (PostgreSQL), so a lock is asked for once.
    pub(crate) locks: std::collections::HashSet<i64>,
}

#[derive(Debug)]
enum TxConn {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub(crate) fn sqlite(t: Transaction<'static, Sqlite>) -> Self {
        Self {
            conn: TxConn::Sqlite(t),
            locks: Default::default(),
        }
    }

    pub(crate) fn postgres(t: Transaction<'static, Postgres>) -> Self {
        Self {
            conn: TxConn::Postgres(t),
            locks: Default::default(),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.conn {
            TxConn::Sqlite(t) => t.commit().await,
            TxConn::Postgres(t) => t.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.conn {
            TxConn::Sqlite(t) => t.rollback().await,
            TxConn::Postgres(t) => t.rollback().await,
        }
    }
}

/// Where a statement runs: on a pooled connection, or inside a transaction.
pub enum On<'a> {
    Pool(&'a Pool),
    Tx(&'a mut Tx),
}

impl<'a> From<&'a Pool> for On<'a> {
    fn from(p: &'a Pool) -> Self {
        Self::Pool(p)
    }
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(t: &'a mut Tx) -> Self {
        Self::Tx(t)
    }
}

/// A time argument: milliseconds since the Unix epoch (`timestamptz` on PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(pub i64);

/// A JSON document argument, as text (`jsonb` on PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<'q>(pub Cow<'q, str>);

impl<'q> Json<'q> {
    /// A document already serialized.
    pub fn text(text: &'q str) -> Self {
        Json(Cow::Borrowed(text))
    }

    /// The document `value` serializes to.
    pub fn of(value: &serde_json::Value) -> Json<'static> {
        Json(Cow::Owned(value.to_string()))
    }
}

/// An array argument (PostgreSQL only).
#[derive(Debug, Clone, PartialEq)]
pub struct Arr<T>(pub Vec<T>);

/// One column of `rows` as an array argument, for PostgreSQL's `UNNEST`.
pub fn column<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Arr<U> {
    Arr(rows.iter().map(f).collect())
}

/// One bound argument.
#[derive(Debug, Clone)]
pub enum Arg<'q> {
    Int(Option<i64>),
    Float(Option<f64>),
    Flag(Option<bool>),
    Text(Option<Cow<'q, str>>),
    Bytes(Option<Vec<u8>>),
    Time(Option<i64>),
    Json(Option<Cow<'q, str>>),
    Ints(Vec<i64>),
    OptInts(Vec<Option<i64>>),
    Times(Vec<i64>),
    Texts(Vec<String>),
    OptTexts(Vec<Option<String>>),
    OptBytes(Vec<Option<Vec<u8>>>),
    Byteses(Vec<Vec<u8>>),
    Flags(Vec<bool>),
    OptJsons(Vec<Option<String>>),
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl<'q> From<$t> for Arg<'q> {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}

arg_from! {
    i64 => |v| Arg::Int(Some(v));
    &'q i64 => |v| Arg::Int(Some(*v));
    Option<i64> => |v| Arg::Int(v);
    f64 => |v| Arg::Float(Some(v));
    bool => |v| Arg::Flag(Some(v));
    &'q str => |v| Arg::Text(Some(Cow::Borrowed(v)));
    &'q String => |v| Arg::Text(Some(Cow::Borrowed(v.as_str())));
    String => |v| Arg::Text(Some(Cow::Owned(v)));
    Option<&'q str> => |v| Arg::Text(v.map(Cow::Borrowed));
    Option<String> => |v| Arg::Text(v.map(Cow::Owned));
    &'q [u8] => |v| Arg::Bytes(Some(v.to_vec()));
    Vec<u8> => |v| Arg::Bytes(Some(v));
    Option<Vec<u8>> => |v| Arg::Bytes(v);
    At => |v| Arg::Time(Some(v.0));
    Option<At> => |v| Arg::Time(v.map(|a| a.0));
    Json<'q> => |v| Arg::Json(Some(v.0));
    Option<Json<'q>> => |v| Arg::Json(v.map(|j| j.0));
    Arr<i64> => |v| Arg::Ints(v.0);
    Arr<Option<i64>> => |v| Arg::OptInts(v.0);
    Arr<At> => |v| Arg::Times(v.0.into_iter().map(|a| a.0).collect());
    Arr<String> => |v| Arg::Texts(v.0);
    Arr<Option<Vec<u8>>> => |v| Arg::OptBytes(v.0);
    Arr<Vec<u8>> => |v| Arg::Byteses(v.0);
    Arr<bool> => |v| Arg::Flags(v.0);
    Arr<Option<String>> => |v| Arg::OptTexts(v.0);
    Arr<Option<Json<'static>>> => |v| Arg::OptJsons(v.0.into_iter().map(|j| j.map(|j| j.0.into_owned())).collect());
}

/// `jsonb` in PostgreSQL's binary format: a version byte, then the text.
struct PgJsonb<'q>(Cow<'q, str>);

impl Type<Postgres> for PgJsonb<'_> {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <serde_json::Value as Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for PgJsonb<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        buf.push(1);
        buf.extend_from_slice(without_nul(&self.0).as_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// JSON text with every escaped U+0000 (`\u0000`) in its strings replaced by
/// U+FFFD (`\ufffd`): `jsonb`, like every PostgreSQL text type, cannot hold
/// U+0000 and would refuse the whole document. Only the stored copy changes:
/// the record's hash was computed from the document as received, so a
/// keyframe still sees it in sync.
pub(crate) fn without_nul(text: &str) -> Cow<'_, str> {
    if !text.contains("\\u0000") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let escape = &rest[i..];
        if let Some(after) = escape.strip_prefix("\\u0000") {
            out.push_str("\\ufffd");
            rest = after;
        } else {
            // Any other escape is two characters (`\\`, `\"`, `\n`, `\uXXXX`'s
            // first two): copied whole, so an escaped backslash before
            // `u0000` is never read as the start of an escape.
            let len = escape.chars().take(2).map(char::len_utf8).sum();
            out.push_str(&escape[..len]);
            rest = &escape[len..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `jsonb[]` from document texts.
struct PgJsonbs(Vec<Option<String>>);

impl Type<Postgres> for PgJsonbs {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<serde_json::Value> as Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for PgJsonbs {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        let docs: Vec<Option<PgJsonb<'_>>> = self
            .0
            .iter()
            .map(|d| d.as_deref().map(|t| PgJsonb(Cow::Borrowed(t))))
            .collect();
        docs.encode_by_ref(buf)
    }
}

impl sqlx::postgres::PgHasArrayType for PgJsonb<'_> {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <serde_json::Value as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

/// A time as `timestamptz`. Times beyond what a calendar date can say (a
/// caller's `i64::MAX` for "never") are the farthest instant there is, so
/// they still compare as the farthest.
fn pg_time(ms: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    /// About 4685 BC: PostgreSQL's calendar starts in 4713 BC.
    const EARLIEST: i64 = -210_000_000_000_000;
    let ms = ms.clamp(EARLIEST, DateTime::<Utc>::MAX_UTC.timestamp_millis());
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| sqlx::Error::Encode(format!("time {ms} ms is out of range").into()))
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// A statement and its arguments; built by [`query`], run by one of its `execute`/`fetch` methods.
#[must_use = "a query does nothing until executed"]
pub struct Query<'q> {
    sql: &'q str,
    args: Vec<Arg<'q>>,
    persistent: bool,
}

/// A statement with no arguments bound yet.
pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
        persistent: true,
    }
}

/// What [`Query::execute`] reports.
#[derive(Debug, Clone, Copy)]
pub struct Done(u64);

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.0
    }
}

impl<'q> Query<'q> {
    pub fn bind(mut self, value: impl Into<Arg<'q>>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Plans the statement at each execution, for the values bound and the
    /// table as it is then, instead of preparing it once per connection.
    /// For a lookup whose table grows while the same statement runs page
    /// after page: a plan cached while the table was small (a scan) is
    /// kept by PostgreSQL once it is generic, and costs a scan per key later.
    pub fn planned_each_time(mut self) -> Self {
        self.persistent = false;
        self
    }

    fn sqlite(self) -> Result<SqliteQuery<'q>, sqlx::Error> {
        let mut q = sqlx::query(self.sql).persistent(self.persistent);
        for a in self.args {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::Float(v) => q.bind(v),
                Arg::Flag(v) => q.bind(v),
                Arg::Text(v) | Arg::Json(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                _ => {
                    return Err(sqlx::Error::Encode(
                        format!("arrays are for PostgreSQL only: {}", self.sql).into(),
                    ))
                }
            };
        }
        Ok(q)
    }

    fn postgres(self) -> Result<PgQuery<'q>, sqlx::Error> {
        let mut q = sqlx::query(self.sql).persistent(self.persistent);
        for a in self.args {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::Float(v) => q.bind(v),
                Arg::Flag(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::Time(v) => q.bind(v.map(pg_time).transpose()?),
                Arg::Json(v) => q.bind(v.map(PgJsonb)),
                Arg::Ints(v) => q.bind(v),
                Arg::OptInts(v) => q.bind(v),
                Arg::Times(v) => q.bind(v.into_iter().map(pg_time).collect::<Result<Vec<_>, _>>()?),
                Arg::Texts(v) => q.bind(v),
                Arg::OptTexts(v) => q.bind(v),
                Arg::OptBytes(v) => q.bind(v),
                Arg::Byteses(v) => q.bind(v),
                Arg::Flags(v) => q.bind(v),
                Arg::OptJsons(v) => q.bind(PgJsonbs(v)),
            };
        }
        Ok(q)
    }

    pub async fn execute<'a>(self, on: impl Into<On<'a>>) -> Result<Done, sqlx::Error> {
        Ok(Done(match on.into() {
            On::Pool(Pool::Sqlite(p)) => self.sqlite()?.execute(p).await?.rows_affected(),
            On::Pool(Pool::Postgres(p)) => self.postgres()?.execute(p).await?.rows_affected(),
            On::Tx(Tx {
                conn: TxConn::Sqlite(t),
                ..
            }) => self.sqlite()?.execute(&mut **t).await?.rows_affected(),
            On::Tx(Tx {
                conn: TxConn::Postgres(t),
                ..
            }) => self.postgres()?.execute(&mut **t).await?.rows_affected(),
        }))
    }

    pub async fn fetch_all<'a>(self, on: impl Into<On<'a>>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match on.into() {
            On::Pool(Pool::Sqlite(p)) => rows(self.sqlite()?.fetch_all(p).await?, Row::Sqlite),
            On::Pool(Pool::Postgres(p)) => {
                rows(self.postgres()?.fetch_all(p).await?, Row::Postgres)
            }
            On::Tx(Tx {
                conn: TxConn::Sqlite(t),
                ..
            }) => rows(self.sqlite()?.fetch_all(&mut **t).await?, Row::Sqlite),
            On::Tx(Tx {
                conn: TxConn::Postgres(t),
                ..
            }) => rows(self.postgres()?.fetch_all(&mut **t).await?, Row::Postgres),
        })
    }

    pub async fn fetch_optional<'a>(
        self,
        on: impl Into<On<'a>>,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match on.into() {
            On::Pool(Pool::Sqlite(p)) => self.sqlite()?.fetch_optional(p).await?.map(Row::Sqlite),
            On::Pool(Pool::Postgres(p)) => {
                self.postgres()?.fetch_optional(p).await?.map(Row::Postgres)
            }
            On::Tx(Tx {
                conn: TxConn::Sqlite(t),
                ..
            }) => self
                .sqlite()?
                .fetch_optional(&mut **t)
                .await?
                .map(Row::Sqlite),
            On::Tx(Tx {
                conn: TxConn::Postgres(t),
                ..
            }) => self
                .postgres()?
                .fetch_optional(&mut **t)
                .await?
                .map(Row::Postgres),
        })
    }

    pub async fn fetch_one<'a>(self, on: impl Into<On<'a>>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Rows as they arrive, for reads too large to hold at once.
    pub fn fetch<'e>(self, pool: &'e Pool) -> BoxStream<'e, Result<Row, sqlx::Error>>
    where
        'q: 'e,
    {
        match pool {
            Pool::Sqlite(p) => match self.sqlite() {
                Ok(q) => q.fetch(p).map_ok(Row::Sqlite).boxed(),
                Err(e) => futures::stream::once(async { Err(e) }).boxed(),
            },
            Pool::Postgres(p) => match self.postgres() {
                Ok(q) => q.fetch(p).map_ok(Row::Postgres).boxed(),
                Err(e) => futures::stream::once(async { Err(e) }).boxed(),
            },
        }
    }
}

fn rows<R>(native: Vec<R>, wrap: fn(R) -> Row) -> Vec<Row> {
    native.into_iter().map(wrap).collect()
}

/// A statement whose first column is the answer.
pub fn query_scalar(sql: &str) -> Scalar<'_> {
    Scalar(query(sql))
}

/// See [`query_scalar`].
#[must_use = "a query does nothing until executed"]
pub struct Scalar<'q>(Query<'q>);

impl<'q> Scalar<'q> {
    pub fn bind(self, value: impl Into<Arg<'q>>) -> Self {
        Self(self.0.bind(value))
    }

    pub async fn fetch_one<'a, T: Column>(self, on: impl Into<On<'a>>) -> Result<T, sqlx::Error> {
        self.0.fetch_one(on).await?.try_get(0)
    }

    pub async fn fetch_optional<'a, T: Column>(
        self,
        on: impl Into<On<'a>>,
    ) -> Result<Option<T>, sqlx::Error> {
        self.0
            .fetch_optional(on)
            .await?
            .map(|r| r.try_get(0))
            .transpose()
    }

    pub async fn fetch_all<'a, T: Column>(
        self,
        on: impl Into<On<'a>>,
    ) -> Result<Vec<T>, sqlx::Error> {
        self.0
            .fetch_all(on)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect()
    }
}

/// A result row of either backend.
pub enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    /// Column `i`, decoded as `T` (see the module's note on times and documents).
    pub fn try_get<T: Column>(&self, i: usize) -> Result<T, sqlx::Error> {
        match self {
            Self::Sqlite(r) => T::sqlite(r, i),
            Self::Postgres(r) => T::postgres(r, i),
        }
    }
}

/// A Rust type a column decodes to on both backends.
pub trait Column: Sized {
    fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error>;
    fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error>;
}

/// The PostgreSQL type name of column `i` (`TIMESTAMPTZ`, `JSONB`, …).
fn pg_type(row: &PgRow, i: usize) -> &str {
    row.columns()
        .get(i)
        .map(|c| c.type_info().name())
        .unwrap_or_default()
}

/// An `i64` column, or a `timestamptz` read as milliseconds.
fn pg_int(row: &PgRow, i: usize) -> Result<Option<i64>, sqlx::Error> {
    if pg_type(row, i) == "TIMESTAMPTZ" {
        let t: Option<DateTime<Utc>> = row.try_get(i)?;
        Ok(t.map(|t| t.timestamp_millis()))
    } else {
        row.try_get(i)
    }
}

/// A text column, or a `jsonb` read as its text.
fn pg_text(row: &PgRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    if pg_type(row, i) == "JSONB" {
        let raw = row.try_get_raw(i)?;
        if sqlx::ValueRef::is_null(&raw) {
            return Ok(None);
        }
        let text = match raw.format() {
            sqlx::postgres::PgValueFormat::Binary => {
                let bytes = raw.as_bytes().map_err(decode(i))?;
                match bytes.split_first() {
                    Some((1, text)) => {
                        std::str::from_utf8(text).map_err(|e| decode(i)(e.into()))?
                    }
                    _ => return Err(decode(i)("unknown jsonb format version".into())),
                }
            }
            sqlx::postgres::PgValueFormat::Text => raw.as_str().map_err(decode(i))?,
        };
        Ok(Some(text.to_string()))
    } else {
        row.try_get(i)
    }
}

fn decode(i: usize) -> impl Fn(sqlx::error::BoxDynError) -> sqlx::Error {
    move |source| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source,
    }
}

fn required<T>(i: usize, v: Option<T>) -> Result<T, sqlx::Error> {
    v.ok_or_else(|| decode(i)("unexpected NULL".into()))
}

impl Column for Option<i64> {
    fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
        row.try_get(i)
    }
    fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error> {
        pg_int(row, i)
    }
}

impl Column for i64 {
    fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
        row.try_get(i)
    }
    fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error> {
        required(i, pg_int(row, i)?)
    }
}

impl Column for Option<String> {
    fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
        row.try_get(i)
    }
    fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error> {
        pg_text(row, i)
    }
}

impl Column for String {
    fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
        row.try_get(i)
    }
    fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error> {
        required(i, pg_text(row, i)?)
    }
}

/// Types both drivers decode alike.
macro_rules! plain_column {
    ($($t:ty),*) => {
        $(impl Column for $t {
            fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
                row.try_get(i)
            }
            fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error> {
                row.try_get(i)
            }
        })*
    };
}

plain_column!(bool, Option<bool>, f64, Vec<u8>, Option<Vec<u8>>);

impl<A: Column, B: Column> Column for (A, B) {
    fn sqlite(row: &SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
        Ok((A::sqlite(row, i)?, B::sqlite(row, i + 1)?))
    }
    fn postgres(row: &PgRow, i: usize) -> Result<Self, sqlx::Error> {
        Ok((A::postgres(row, i)?, B::postgres(row, i + 1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::{pg_time, without_nul};

    #[test]
    fn times_beyond_the_calendar_are_its_ends() {
        assert!(pg_time(i64::MAX).unwrap() > pg_time(4_102_444_800_000).unwrap());
        assert!(pg_time(i64::MIN).unwrap() < pg_time(0).unwrap());
        assert_eq!(
            pg_time(1_700_000_000_123).unwrap().timestamp_millis(),
            1_700_000_000_123
        );
    }

    #[test]
    fn nul_escapes_become_replacement_characters_and_nothing_else_changes() {
        let doc = serde_json::json!({"a": "x\u{0}y", "b": "\\u0000", "c": "\u{0}", "\u{0}": 1});
        let text = doc.to_string();
        let stored: serde_json::Value = serde_json::from_str(&without_nul(&text)).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"a": "x\u{fffd}y", "b": "\\u0000", "c": "\u{fffd}", "\u{fffd}": 1})
        );
        let clean = r#"{"a":"\n\"\\","b":"\u00e9"}"#;
        assert!(matches!(without_nul(clean), std::borrow::Cow::Borrowed(_)));
        assert_eq!(without_nul(r#"["\\\u0000"]"#), r#"["\\\ufffd"]"#);
    }
}
