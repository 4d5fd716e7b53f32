-- Indexes for tables that keep every row for the retention period.
-- Work items by producer and state: the gauges count them every two seconds,
-- an index-only scan instead of reading every row.
CREATE INDEX work_by_state ON work (producer, state);
-- A producer's pending deltas, newest first: attribution reads them at every
-- keyframe that finds drift (as `inbox_refused` serves the refused ones).
CREATE INDEX inbox_pending_by_producer ON inbox (producer, id) WHERE outcome = 'pending';
