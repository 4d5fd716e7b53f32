-- The latest schedule tick a keyframe served, per producer: claimed with a
-- conditional update, so one tick produces one run across replicas.
CREATE TABLE schedule_ticks (
    producer TEXT    PRIMARY KEY,
    tick     INTEGER NOT NULL
);
-- The schedule tick a run served (milliseconds, a whole second); NULL for a
-- keyframe started by hand.
ALTER TABLE keyframe_runs ADD COLUMN scheduled_for INTEGER;
