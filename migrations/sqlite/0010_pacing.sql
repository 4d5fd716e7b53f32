-- The pacing of `schedule = "adaptive"` producers (`pacing.rs`): the
-- interval the last keyframe chose, the drift rate it came from and why,
-- and when the next keyframe is due. Shared by replicas, kept over restarts.
CREATE TABLE pacing (
    producer     TEXT    PRIMARY KEY,
    interval_ms  BIGINT  NOT NULL,
    rate         REAL    NOT NULL,
    reason       TEXT    NOT NULL,
    next_at      INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
