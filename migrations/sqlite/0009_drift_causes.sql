-- Why each drift happened (`keyframe::cause`): one of lost_delta,
-- late_delta, rejected_delta, silent_change, deleted_upstream,
-- created_upstream. NULL for drift found before causes were kept.
ALTER TABLE drifts ADD COLUMN cause TEXT;
-- Refused deltas of a producer, newest first, for attribution: few rows,
-- never a scan of the whole inbox.
CREATE INDEX inbox_refused ON inbox (producer, id) WHERE outcome = 'rejected';
