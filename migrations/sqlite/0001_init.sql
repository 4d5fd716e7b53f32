-- driftd schema, SQLite. Times are milliseconds since the Unix epoch (UTC);
-- hashes are 32-byte blake3 digests; JSON documents are text.

CREATE TABLE entities (
    producer   TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    doc        TEXT,
    hash       BLOB,
    bucket     INTEGER  NOT NULL,
    version    INTEGER,
    deleted    INTEGER  NOT NULL DEFAULT 0,
    source     TEXT    NOT NULL,
    updated_at INTEGER  NOT NULL,
    PRIMARY KEY (producer, key)
);
CREATE INDEX entities_by_bucket ON entities (producer, bucket);

CREATE TABLE buckets (
    producer TEXT   NOT NULL,
    bucket   INTEGER NOT NULL,
    rows     INTEGER NOT NULL,
    l0       INTEGER NOT NULL,
    l1       INTEGER NOT NULL,
    l2       INTEGER NOT NULL,
    l3       INTEGER NOT NULL,
    PRIMARY KEY (producer, bucket)
);

CREATE TABLE chain_heads (
    producer TEXT   PRIMARY KEY,
    seq      INTEGER NOT NULL,
    chain    BLOB  NOT NULL
);

CREATE TABLE changes (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    producer TEXT   NOT NULL,
    seq      INTEGER NOT NULL,
    key      TEXT   NOT NULL,
    op       TEXT   NOT NULL,
    hash     BLOB,
    version  INTEGER,
    source   TEXT   NOT NULL,
    at       INTEGER NOT NULL,
    chain    BLOB  NOT NULL,
    UNIQUE (producer, seq)
);
CREATE INDEX changes_by_time ON changes (producer, at);

-- Every delta as it arrived (raw body and a few headers), kept for replay and
-- audit. outcome: pending | applied | stale | duplicate | rejected | unmatched.
-- A redelivery is stored with duplicate_of = the first delivery's id; at most
-- one non-duplicate row exists per (producer, channel, dedup_key).
CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    producer     TEXT   NOT NULL,
    channel      TEXT   NOT NULL,
    received_at  INTEGER NOT NULL,
    dedup_key    TEXT,
    duplicate_of INTEGER,
    headers      TEXT   NOT NULL,
    body         BLOB  NOT NULL,
    outcome      TEXT   NOT NULL DEFAULT 'pending',
    error        TEXT,
    applied_at   INTEGER
);
CREATE UNIQUE INDEX inbox_dedup ON inbox (producer, channel, dedup_key)
    WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL;
CREATE INDEX inbox_pending ON inbox (id) WHERE outcome = 'pending';
CREATE INDEX inbox_by_producer ON inbox (producer, id);

CREATE TABLE keyframe_runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    producer           TEXT   NOT NULL,
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    state              TEXT   NOT NULL,
    records            INTEGER NOT NULL DEFAULT 0,
    buckets_compared   INTEGER NOT NULL DEFAULT 0,
    buckets_mismatched INTEGER NOT NULL DEFAULT 0,
    rows_read          INTEGER NOT NULL DEFAULT 0,
    missing            INTEGER NOT NULL DEFAULT 0,
    extra              INTEGER NOT NULL DEFAULT 0,
    changed            INTEGER NOT NULL DEFAULT 0,
    skipped_races      INTEGER NOT NULL DEFAULT 0,
    error              TEXT,
    approved_at        INTEGER
);
CREATE INDEX keyframe_runs_by_producer ON keyframe_runs (producer, id);

CREATE TABLE drifts (
    run_id      INTEGER NOT NULL,
    producer    TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    remote_hash BLOB,
    local_hash  BLOB,
    doc         TEXT,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE work (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    time         INTEGER NOT NULL,
    spec         TEXT   NOT NULL,
    producer     TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    action       TEXT   NOT NULL,
    state        TEXT   NOT NULL DEFAULT 'pending',
    run_at       INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    last_error   TEXT,
    locked_by    TEXT,
    locked_until INTEGER,
    dedup_key    TEXT   NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX work_one_open_per_entity ON work (producer, key) WHERE state IN ('pending', 'running');
CREATE INDEX work_claimable ON work (run_at) WHERE state = 'pending';

CREATE TABLE producers (
    name         TEXT   PRIMARY KEY,
    health       TEXT   NOT NULL DEFAULT 'healthy',
    health_since INTEGER NOT NULL,
    failures     INTEGER NOT NULL DEFAULT 0
);

-- Named leases: one keyframe per producer at a time, across processes.
CREATE TABLE leases (
    name   TEXT    PRIMARY KEY,
    holder TEXT    NOT NULL,
    until  INTEGER NOT NULL
);

-- The bucket layout the stored bucket numbers and digests were computed with.
CREATE TABLE layouts (
    producer    TEXT   PRIMARY KEY,
    bucket_bits INTEGER NOT NULL
);
