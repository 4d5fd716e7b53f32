-- Records driftd was asked to fetch from the producer: one row per key, which
-- is also that key's lease and backoff, so a key is fetched by one process at
-- a time and repeated asks coalesce. `asked` counts the asks; a fetch that
-- finishes deletes the row only if no ask came while it ran.
CREATE TABLE fetches (
    producer     TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    asked        INTEGER NOT NULL DEFAULT 1,
    first_asked  INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    locked_by    TEXT,
    locked_until INTEGER,
    PRIMARY KEY (producer, key)
);
CREATE INDEX fetches_due ON fetches (run_at);
-- Which deltas wait on which fetch: an inbox row is `fetching` until every
-- fetch it asked for is done, then `fetched`.
CREATE TABLE fetch_asks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    producer TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    inbox_id INTEGER NOT NULL
);
CREATE INDEX fetch_asks_by_key ON fetch_asks (producer, key, id);
CREATE INDEX fetch_asks_by_inbox ON fetch_asks (inbox_id);
-- Incremental pulls between keyframes: where the next one starts, and how
-- the last one went.
CREATE TABLE catchups (
    producer    TEXT    PRIMARY KEY,
    since       INTEGER,
    last_at     INTEGER,
    last_ok     INTEGER,
    last_error  TEXT,
    records     INTEGER NOT NULL DEFAULT 0,
    applied     INTEGER NOT NULL DEFAULT 0,
    -- The last tick a replica claimed (one catch-up per tick across replicas).
    tick        INTEGER NOT NULL DEFAULT 0
);
