-- driftd schema, PostgreSQL. Times are milliseconds since the Unix epoch (UTC);
-- hashes are 32-byte blake3 digests; JSON documents are text.

CREATE TABLE entities (
    producer   TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    doc        TEXT,
    hash       BYTEA,
    bucket     BIGINT  NOT NULL,
    version    BIGINT,
    deleted    BIGINT  NOT NULL DEFAULT 0,
    source     TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (producer, key)
);
CREATE INDEX entities_by_bucket ON entities (producer, bucket);

CREATE TABLE buckets (
    producer TEXT   NOT NULL,
    bucket   BIGINT NOT NULL,
    rows     BIGINT NOT NULL,
    l0       BIGINT NOT NULL,
    l1       BIGINT NOT NULL,
    l2       BIGINT NOT NULL,
    l3       BIGINT NOT NULL,
    PRIMARY KEY (producer, bucket)
);

CREATE TABLE chain_heads (
    producer TEXT   PRIMARY KEY,
    seq      BIGINT NOT NULL,
    chain    BYTEA  NOT NULL
);

CREATE TABLE changes (
    id       BIGSERIAL PRIMARY KEY,
    producer TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    key      TEXT   NOT NULL,
    op       TEXT   NOT NULL,
    hash     BYTEA,
    version  BIGINT,
    source   TEXT   NOT NULL,
    at       BIGINT NOT NULL,
    chain    BYTEA  NOT NULL,
    UNIQUE (producer, seq)
);
CREATE INDEX changes_by_time ON changes (producer, at);

-- Every delta as it arrived (raw body and a few headers), kept for replay and
-- audit. outcome: pending | applied | stale | duplicate | rejected | unmatched.
-- A redelivery is stored with duplicate_of = the first delivery's id; at most
-- one non-duplicate row exists per (producer, channel, dedup_key).
CREATE TABLE inbox (
    id           BIGSERIAL PRIMARY KEY,
    producer     TEXT   NOT NULL,
    channel      TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    dedup_key    TEXT,
    duplicate_of BIGINT,
    headers      TEXT   NOT NULL,
    body         BYTEA  NOT NULL,
    outcome      TEXT   NOT NULL DEFAULT 'pending',
    error        TEXT,
    applied_at   BIGINT
);
CREATE UNIQUE INDEX inbox_dedup ON inbox (producer, channel, dedup_key)
    WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL;
CREATE INDEX inbox_pending ON inbox (id) WHERE outcome = 'pending';
CREATE INDEX inbox_by_producer ON inbox (producer, id);

CREATE TABLE keyframe_runs (
    id                 BIGSERIAL PRIMARY KEY,
    producer           TEXT   NOT NULL,
    started_at         BIGINT NOT NULL,
    finished_at        BIGINT,
    state              TEXT   NOT NULL,
    records            BIGINT NOT NULL DEFAULT 0,
    buckets_compared   BIGINT NOT NULL DEFAULT 0,
    buckets_mismatched BIGINT NOT NULL DEFAULT 0,
    rows_read          BIGINT NOT NULL DEFAULT 0,
    missing            BIGINT NOT NULL DEFAULT 0,
    extra              BIGINT NOT NULL DEFAULT 0,
    changed            BIGINT NOT NULL DEFAULT 0,
    skipped_races      BIGINT NOT NULL DEFAULT 0,
    error              TEXT,
    approved_at        BIGINT
);
CREATE INDEX keyframe_runs_by_producer ON keyframe_runs (producer, id);

CREATE TABLE drifts (
    run_id      BIGINT NOT NULL,
    producer    TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    remote_hash BYTEA,
    local_hash  BYTEA,
    doc         TEXT,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE work (
    id           BIGSERIAL PRIMARY KEY,
    time         BIGINT NOT NULL,
    spec         TEXT   NOT NULL,
    producer     TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    action       TEXT   NOT NULL,
    state        TEXT   NOT NULL DEFAULT 'pending',
    run_at       BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    last_error   TEXT,
    locked_by    TEXT,
    locked_until BIGINT,
    dedup_key    TEXT   NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX work_one_open_per_entity ON work (producer, key) WHERE state IN ('pending', 'running');
CREATE INDEX work_claimable ON work (run_at) WHERE state = 'pending';

CREATE TABLE producers (
    name         TEXT   PRIMARY KEY,
    health       TEXT   NOT NULL DEFAULT 'healthy',
    health_since BIGINT NOT NULL,
    failures     BIGINT NOT NULL DEFAULT 0
);

-- Named leases: one keyframe per producer at a time, across replicas.
CREATE TABLE leases (
    name   TEXT   PRIMARY KEY,
    holder TEXT   NOT NULL,
    until  BIGINT NOT NULL
);

-- The bucket layout the stored bucket numbers and digests were computed with.
CREATE TABLE layouts (
    producer    TEXT   PRIMARY KEY,
    bucket_bits BIGINT NOT NULL
);
