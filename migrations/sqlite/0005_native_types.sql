-- SQLite keeps its own types (times as INTEGER milliseconds since the Unix
-- epoch, documents as TEXT, flags as INTEGER 0/1). The statements now spell
-- flags `TRUE`/`FALSE` on both backends; the partial index is recreated with
-- the predicate the statements use, so SQLite's planner matches it as written.
DROP INDEX work_to_mirror;
CREATE INDEX work_to_mirror ON work (producer, id) WHERE state = 'done' AND mirrored = FALSE;
