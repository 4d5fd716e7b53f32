-- Records driftd was asked to fetch from the producer: one row per key, which
-- is also that key's lease and backoff, so a key is fetched by one process at
-- a time and repeated asks coalesce. `asked` counts the asks; a fetch that
-- finishes deletes the row only if no ask came while it ran.
CREATE TABLE fetches (
    producer     TEXT        NOT NULL,
    key          TEXT        NOT NULL,
    asked        BIGINT      NOT NULL DEFAULT 1,
    first_asked  TIMESTAMPTZ NOT NULL,
    run_at       TIMESTAMPTZ NOT NULL,
    attempts     BIGINT      NOT NULL DEFAULT 0,
    last_error   TEXT,
    locked_by    TEXT,
    locked_until TIMESTAMPTZ,
    PRIMARY KEY (producer, key)
);
CREATE INDEX fetches_due ON fetches (run_at);
-- Which deltas wait on which fetch: an inbox row is `fetching` until every
-- fetch it asked for is done, then `fetched`.
CREATE TABLE fetch_asks (
    id       BIGSERIAL PRIMARY KEY,
    producer TEXT   NOT NULL,
    key      TEXT   NOT NULL,
    inbox_id BIGINT NOT NULL
);
CREATE INDEX fetch_asks_by_key ON fetch_asks (producer, key, id);
CREATE INDEX fetch_asks_by_inbox ON fetch_asks (inbox_id);
-- Incremental pulls between keyframes: where the next one starts, and how
-- the last one went.
CREATE TABLE catchups (
    producer    TEXT        PRIMARY KEY,
    since       BIGINT,
    last_at     TIMESTAMPTZ,
    last_ok     BOOLEAN,
    last_error  TEXT,
    records     BIGINT      NOT NULL DEFAULT 0,
    applied     BIGINT      NOT NULL DEFAULT 0,
    -- The last tick a replica claimed (one catch-up per tick across replicas).
    tick        TIMESTAMPTZ NOT NULL DEFAULT 'epoch'
);
