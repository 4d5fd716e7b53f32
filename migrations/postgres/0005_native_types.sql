-- PostgreSQL's own types: every time is a timestamptz, every document (a
-- record, a work item's spec, a delta's kept headers) is jsonb, every flag a
-- boolean. Existing rows are converted in place: a time of N milliseconds
-- since the Unix epoch becomes the instant N ms after it, exactly (no
-- rounding), so the hash chain over `changes.at` still verifies.
CREATE FUNCTION pg_temp.at(ms BIGINT) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT timestamptz '1970-01-01 00:00:00+00' + ms * interval '1 millisecond' $$;

ALTER TABLE entities
    ALTER COLUMN doc TYPE jsonb USING doc::jsonb,
    ALTER COLUMN deleted DROP DEFAULT,
    ALTER COLUMN deleted TYPE boolean USING deleted <> 0,
    ALTER COLUMN deleted SET DEFAULT FALSE,
    ALTER COLUMN updated_at TYPE timestamptz USING pg_temp.at(updated_at);

ALTER TABLE changes
    ALTER COLUMN at TYPE timestamptz USING pg_temp.at(at);

ALTER TABLE inbox
    ALTER COLUMN received_at TYPE timestamptz USING pg_temp.at(received_at),
    ALTER COLUMN headers TYPE jsonb USING headers::jsonb,
    ALTER COLUMN applied_at TYPE timestamptz USING pg_temp.at(applied_at);

ALTER TABLE keyframe_runs
    ALTER COLUMN started_at TYPE timestamptz USING pg_temp.at(started_at),
    ALTER COLUMN finished_at TYPE timestamptz USING pg_temp.at(finished_at),
    ALTER COLUMN approved_at TYPE timestamptz USING pg_temp.at(approved_at),
    ALTER COLUMN scheduled_for TYPE timestamptz USING pg_temp.at(scheduled_for);

ALTER TABLE drifts
    ALTER COLUMN doc TYPE jsonb USING doc::jsonb;

DROP INDEX work_to_mirror;
ALTER TABLE work
    ALTER COLUMN time TYPE timestamptz USING pg_temp.at(time),
    ALTER COLUMN spec TYPE jsonb USING spec::jsonb,
    ALTER COLUMN run_at TYPE timestamptz USING pg_temp.at(run_at),
    ALTER COLUMN locked_until TYPE timestamptz USING pg_temp.at(locked_until),
    ALTER COLUMN updated_at TYPE timestamptz USING pg_temp.at(updated_at),
    ALTER COLUMN mirrored DROP DEFAULT,
    ALTER COLUMN mirrored TYPE boolean USING mirrored <> 0,
    ALTER COLUMN mirrored SET DEFAULT FALSE;
CREATE INDEX work_to_mirror ON work (producer, id) WHERE state = 'done' AND mirrored = FALSE;

ALTER TABLE producers
    ALTER COLUMN health_since TYPE timestamptz USING pg_temp.at(health_since);

ALTER TABLE leases
    ALTER COLUMN until TYPE timestamptz USING pg_temp.at(until);

ALTER TABLE schedule_ticks
    ALTER COLUMN tick TYPE timestamptz USING pg_temp.at(tick);
